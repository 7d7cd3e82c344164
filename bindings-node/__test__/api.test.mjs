// The package surface: the JS layer wraps every native method, index.d.ts declares it
// and type-checks, and `npm pack` ships only the runtime files.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execFileSync, spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'

import { Engine } from 'utp-runtime'
import { packageDir } from './helpers.mjs'

const require = createRequire(import.meta.url)
const native = require('../native.js')
const dts = fs.readFileSync(path.join(packageDir, 'index.d.ts'), 'utf8')

function members(cls) {
  return Object.getOwnPropertyNames(cls.prototype).filter((n) => n !== 'constructor').sort()
}

// The native Engine's members, as the JS layer exposes them: on the Engine, or
// grouped as `engine.domainLayer` / `engine.eventBus` (docs/design.md §4).
const { DomainLayer, EventBus, Subscription, ToolStream } = require('utp-runtime')
const grouped = { Engine, DomainLayer, EventBus }

test('the JS Engine wraps every native Engine member', () => {
  const js = new Set(Object.values(grouped).flatMap(members))
  for (const name of members(native.Engine)) assert.ok(js.has(name), `index.js lacks native member ${name}`)
})

test('index.d.ts declares every Engine member and every module export', () => {
  for (const [cls, impl] of Object.entries({ ...grouped, Subscription, ToolStream })) {
    const decl = new RegExp(`export declare class ${cls} \\{([\\s\\S]*?)\\n\\}`).exec(dts)[1]
    for (const name of members(impl)) {
      assert.match(decl, new RegExp(`\\n  (readonly )?${name}[(:]`), `index.d.ts ${cls} lacks ${name}`)
    }
  }
  for (const name of Object.keys(require('utp-runtime'))) {
    assert.match(dts, new RegExp(`export declare (const|class|function) ${name}\\b`), `index.d.ts lacks export ${name}`)
  }
})

test('index.d.ts lists exactly the native error codes, in order', () => {
  const union = /export type ErrorCodeName =([\s\S]*?)\n\n/.exec(dts)[1]
  const names = [...union.matchAll(/'([A-Z_]+)'/g)].map((m) => m[1])
  assert.deepEqual(names, native.errorCodes())
})

test('index.d.ts and index.d.mts type-check against real use (tsc --strict)', () => {
  const tsc = require.resolve('typescript/bin/tsc')
  try {
    execFileSync(process.execPath, [tsc, '-p', path.join(packageDir, '__test__', 'tsconfig.json')], {
      cwd: packageDir,
      encoding: 'utf8',
      stdio: 'pipe',
    })
  } catch (e) {
    assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`)
  }
})

test('without an addon, loading says how to build one', () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-node-noaddon-'))
  try {
    for (const f of ['package.json', 'index.js', 'native.js']) {
      fs.copyFileSync(path.join(packageDir, f), path.join(scratch, f))
    }
    const env = { ...process.env }
    delete env.NAPI_RS_NATIVE_LIBRARY_PATH
    const run = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(scratch)})`], { encoding: 'utf8', env })
    assert.notEqual(run.status, 0)
    assert.match(run.stderr, /utp-runtime: no native addon loads for .*npm rebuild utp-runtime/s)
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true })
  }
})

test('npm pack ships the runtime files only', () => {
  // Packed from a scratch copy with a stand-in binary: the real debug binary is large
  // and npm compresses everything even for --dry-run.
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-node-pack-'))
  try {
    const shipped = [
      'package.json',
      'index.js',
      'index.mjs',
      'index.d.ts',
      'index.d.mts',
      'native.js',
      'native.d.ts',
      'scripts/install.js',
    ]
    for (const f of shipped) {
      fs.mkdirSync(path.dirname(path.join(scratch, f)), { recursive: true })
      fs.copyFileSync(path.join(packageDir, f), path.join(scratch, f))
    }
    fs.writeFileSync(path.join(scratch, 'utp-runtime.linux-x64-gnu.node'), 'stand-in')
    // Sources and tests that must stay out of the package.
    // (The Rust sources go in as rust/, which `prepack` stages: tests/install/node.sh.)
    const unshipped = ['Cargo.toml', 'build.rs', 'src/lib.rs', '__test__/x.test.mjs', 'package-lock.json']
    for (const f of [...unshipped, 'scripts/stage-sources.js']) {
      fs.mkdirSync(path.dirname(path.join(scratch, f)), { recursive: true })
      fs.writeFileSync(path.join(scratch, f), '')
    }
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
    const out = execFileSync(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: scratch,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
    const files = JSON.parse(out)[0].files.map((f) => f.path).sort()
    assert.deepEqual(files, [...shipped, 'utp-runtime.linux-x64-gnu.node'].sort())
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true })
  }
})
