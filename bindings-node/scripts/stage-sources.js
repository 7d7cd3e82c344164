#!/usr/bin/env node
'use strict'
// `prepack` / `postpack` of utp-runtime: a tarball made by `npm pack` in a clone carries
// the Rust sources the addon builds from, so scripts/install.js can build it on a
// platform the tarball has no binary for. `npm pack` can only pack files under
// bindings-node/, so the sources are copied into bindings-node/rust/ before packing
// (a workspace of its own: core/ and bindings-node/, with the clone's Cargo.lock) and
// removed after (`--clean`). Plain Node only: it runs in a clone without node_modules.

const fs = require('node:fs')
const path = require('node:path')

const PACKAGE_DIR = path.resolve(__dirname, '..')
const CLONE_DIR = path.dirname(PACKAGE_DIR)
const STAGE_DIR = path.join(PACKAGE_DIR, 'rust')

// What `cargo build -p utp-node` reads, relative to the clone. core's benches are there
// because core/Cargo.toml names them ([[bench]]); its tests and examples are not.
const SOURCES = [
  'Cargo.lock',
  'core/Cargo.toml',
  'core/src',
  'core/benches',
  'bindings-node/Cargo.toml',
  'bindings-node/build.rs',
  'bindings-node/src',
]
const MEMBERS = ['core', 'bindings-node']

function clean() {
  fs.rmSync(STAGE_DIR, { recursive: true, force: true })
}

// The clone's workspace manifest with only the members the addon needs: the
// [workspace.dependencies], lints and profiles stay as they are.
function workspaceManifest() {
  const text = fs.readFileSync(path.join(CLONE_DIR, 'Cargo.toml'), 'utf8')
  const members = /^members\s*=\s*\[[^\]]*\]/m
  if (!members.test(text)) throw new Error(`no \`members = [...]\` in ${path.join(CLONE_DIR, 'Cargo.toml')}`)
  return text.replace(members, `members = [${MEMBERS.map((m) => JSON.stringify(m)).join(', ')}]`)
}

function stage() {
  if (!fs.existsSync(path.join(CLONE_DIR, 'core', 'Cargo.toml'))) {
    throw new Error(`npm pack runs in bindings-node/ of a clone: no core/Cargo.toml in ${CLONE_DIR}`)
  }
  clean()
  fs.mkdirSync(STAGE_DIR, { recursive: true })
  fs.writeFileSync(path.join(STAGE_DIR, 'Cargo.toml'), workspaceManifest())
  for (const source of SOURCES) {
    fs.cpSync(path.join(CLONE_DIR, source), path.join(STAGE_DIR, source), { recursive: true })
  }
}

try {
  if (process.argv.includes('--clean')) clean()
  else stage()
} catch (error) {
  console.error(`utp-runtime: ${error.message}`)
  process.exit(1)
}
