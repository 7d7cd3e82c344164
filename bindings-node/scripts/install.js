#!/usr/bin/env node
'use strict'
// The `install` script of utp-runtime: makes sure the native addon for this platform
// (utp-runtime.<platform>.node, the file native.js loads) is in the package.
//
// - A binary for the platform is already there (a tarball packed after a build): nothing to do.
// - Otherwise it is built from source with cargo, in release unless UTP_BUILD_PROFILE says
//   otherwise, from the Rust workspace of the clone (installing the folder bindings-node/)
//   or from the sources a packed tarball carries in rust/ (scripts/stage-sources.js).
// - `npm install` inside bindings-node/ itself is development: `npm run build` builds there.
//
// Plain Node only (no devDependencies are installed when this runs). Environment:
//   UTP_BUILD_PROFILE=release|debug|<cargo profile>  (default release)
//   UTP_BUILD_FROM_SOURCE=1   build even when a binary is present
//   CARGO_TARGET_DIR          where cargo builds (default: the workspace's target/; a
//                             tarball's rust/target is removed after the build)
//   CARGO                     the cargo to run (default: cargo on PATH)

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const PACKAGE_DIR = path.resolve(__dirname, '..')
const BINARY_NAME = 'utp-runtime'
const CRATE = 'utp-node'

function log(message) {
  console.error(`utp-runtime: ${message}`)
}

function fail(message) {
  log(message)
  process.exit(1)
}

// The same platform names as the loader napi generates (native.js).
function isMusl() {
  try {
    return fs.readFileSync('/usr/bin/ldd', 'utf8').includes('musl')
  } catch {
    const report = process.report && process.report.getReport ? process.report.getReport() : null
    return !(report && report.header && report.header.glibcVersionRuntime)
  }
}

function platformSuffix() {
  const { platform, arch } = process
  if (platform === 'linux') {
    const musl = isMusl()
    if (arch === 'arm') return musl ? 'linux-arm-musleabihf' : 'linux-arm-gnueabihf'
    return `linux-${arch}-${musl ? 'musl' : 'gnu'}`
  }
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform === 'android') return arch === 'arm' ? 'android-arm-eabi' : `android-${arch}`
  return `${platform}-${arch}`
}

// Development of the package itself: `npm ci` / `npm install` run in bindings-node/.
function isOwnDevelopmentInstall() {
  const initCwd = process.env.INIT_CWD
  if (!initCwd) return false
  try {
    return fs.realpathSync(initCwd) === fs.realpathSync(PACKAGE_DIR)
  } catch {
    return false
  }
}

function isWorkspaceWithNodeCrate(manifest) {
  try {
    const text = fs.readFileSync(manifest, 'utf8')
    return /^\[workspace\]/m.test(text) && /["']bindings-node["']/.test(text)
  } catch {
    return false
  }
}

// Where the Rust sources are: a tarball's rust/ first, then the clone around the package.
function findWorkspace() {
  const staged = path.join(PACKAGE_DIR, 'rust')
  if (isWorkspaceWithNodeCrate(path.join(staged, 'Cargo.toml'))) return { dir: staged, staged: true }
  const clone = path.dirname(PACKAGE_DIR)
  if (isWorkspaceWithNodeCrate(path.join(clone, 'Cargo.toml'))) return { dir: clone, staged: false }
  return null
}

function run(command, args, options = {}) {
  return spawnSync(command, args, { encoding: 'utf8', ...options })
}

function hostTriple(cargo) {
  const rustc = process.env.RUSTC || 'rustc'
  const version = run(rustc, ['-vV'])
  const match = version.status === 0 && /^host: (\S+)$/m.exec(version.stdout)
  if (match) return match[1]
  const cargoVersion = run(cargo, ['-vV'])
  const fromCargo = cargoVersion.status === 0 && /^host: (\S+)$/m.exec(cargoVersion.stdout)
  return fromCargo ? fromCargo[1] : null
}

function profileArgs(profile) {
  if (profile === 'debug' || profile === 'dev') return []
  if (profile === 'release') return ['--release']
  return ['--profile', profile]
}

// The addon cargo built, from its JSON messages (wherever the target dir is configured).
function builtLibrary(jsonLines) {
  let library = null
  for (const line of jsonLines.split('\n')) {
    if (!line.startsWith('{')) continue
    let message
    try {
      message = JSON.parse(line)
    } catch {
      continue
    }
    if (message.reason !== 'compiler-artifact' || !message.target || !message.target.kind.includes('cdylib')) continue
    if (message.target.name !== 'utp_node' && message.target.name !== CRATE) continue
    library = message.filenames.find((file) => /\.(so|dylib|dll)$/.test(file)) || library
  }
  return library
}

const HOW_TO_GET_RUST = 'install Rust (https://rustup.rs) and run npm install again'

function build(binaryPath) {
  const workspace = findWorkspace()
  if (!workspace) {
    fail(
      `no prebuilt ${path.basename(binaryPath)} in this package and no Rust sources to build it from.\n` +
        '  Install from a clone (npm install /path/to/utp-runtime/bindings-node), or from a tarball made\n' +
        '  there with npm pack (it carries the sources, and the addon once built there).',
    )
  }
  const cargo = process.env.CARGO || 'cargo'
  if (run(cargo, ['--version']).status !== 0) {
    fail(`no prebuilt ${path.basename(binaryPath)} for this platform, and building it needs cargo: ${HOW_TO_GET_RUST}.`)
  }
  const triple = hostTriple(cargo)
  if (!triple) fail(`cannot tell the host target from \`rustc -vV\`: ${HOW_TO_GET_RUST}.`)

  const profile = process.env.UTP_BUILD_PROFILE || 'release'
  // An explicit --target builds into <target dir>/<triple>/, the tree `napi build` uses:
  // a clone that already ran `npm run build` recompiles only what changed.
  const args = ['build', '--manifest-path', path.join(workspace.dir, 'Cargo.toml'), '-p', CRATE]
  args.push('--target', triple, ...profileArgs(profile), '--message-format=json-render-diagnostics')
  log(`building the native addon from source (${profile}, ${triple}): ${cargo} ${args.join(' ')}`)
  // Progress and errors go to stderr as usual; stdout carries the JSON messages.
  const built = spawnSync(cargo, args, {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  })
  if (built.status !== 0) {
    fail(`cargo build failed (${built.error ? built.error.message : `exit status ${built.status}`}); see its output above.`)
  }
  const artifact = builtLibrary(built.stdout)
  if (!artifact || !fs.existsSync(artifact)) fail('cargo reported success but named no utp-node library.')
  // Copy then rename: a process that has the old addon loaded keeps a valid file.
  const partial = `${binaryPath}.${process.pid}.tmp`
  fs.copyFileSync(artifact, partial)
  fs.renameSync(partial, binaryPath)
  log(`built ${path.relative(PACKAGE_DIR, binaryPath)}`)

  // A build from a tarball's sources leaves ~1 GB of objects inside node_modules; nothing
  // reuses them (npm replaces the folder on the next install), unless the user chose the dir.
  if (workspace.staged && !process.env.CARGO_TARGET_DIR) {
    fs.rmSync(path.join(workspace.dir, 'target'), { recursive: true, force: true })
  }
}

function checkLoads(binaryPath) {
  try {
    require(path.join(PACKAGE_DIR, 'native.js'))
  } catch (error) {
    fail(`${path.basename(binaryPath)} does not load: ${error.message}`)
  }
}

function main() {
  if (isOwnDevelopmentInstall()) {
    log('installing the package\'s own dependencies: no addon built (`npm run build` builds it here)')
    return
  }
  const binaryPath = path.join(PACKAGE_DIR, `${BINARY_NAME}.${platformSuffix()}.node`)
  const fromSource = ['1', 'true'].includes(process.env.UTP_BUILD_FROM_SOURCE || '')
  if (fs.existsSync(binaryPath) && !fromSource) {
    log(`using the prebuilt ${path.basename(binaryPath)}`)
  } else {
    build(binaryPath)
  }
  checkLoads(binaryPath)
}

main()
