// Whole-process behaviour, in child processes: a script that uses an engine exits by
// itself (nothing keeps the event loop alive), and bad input never crashes the process.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'

import { manualsDir, packageDir } from './helpers.mjs'

/** Run `source` as an ESM script in a fresh node, from the package directory. */
function runScript(source, timeout = 30_000) {
  const started = Date.now()
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', source], {
    cwd: packageDir,
    encoding: 'utf8',
    timeout,
    env: { ...process.env, UTP_MANUALS: manualsDir },
  })
  return { ...result, elapsed: Date.now() - started }
}

test('a script that creates an engine exits by itself', () => {
  const r = runScript(`
    import { Engine } from 'utp-runtime'
    const engine = new Engine()
    const manuals = await engine.discover(process.env.UTP_MANUALS)
    const hits = engine.searchTools('forecast', { limit: 1 })
    console.log(JSON.stringify({ manuals, first: hits[0].name }))
  `)
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout), { manuals: ['legacy_notes', 'shop', 'weather'], first: 'weather.get_forecast' })
  assert.ok(r.elapsed < 20_000, `took ${r.elapsed} ms`)
})

test('a script with a pending promise and an unclosed engine still exits', () => {
  const r = runScript(`
    const { Engine } = await import('utp-runtime')
    const engines = Array.from({ length: 4 }, () => new Engine())
    engines.forEach((e) => void e.discover(process.env.UTP_MANUALS))
    console.log('started')
  `)
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), 'started')
})

test('a storm of bad calls ends in errors, never a crash', () => {
  const r = runScript(`
    import { Engine, UtpError } from 'utp-runtime'
    const engine = new Engine()
    const weird = [undefined, null, 0, -1, 1.5, NaN, Infinity, '', ' ', '{', '[]', true, [], [1], {}, { a: () => 1 },
      () => 1, Symbol('s'), 10n, 2n ** 70n, new Date(0), /re/, new Map(), Buffer.from('x'), new Uint8Array(2), { tools: null }]
    let errors = 0, calls = 0
    const note = (e) => { if (!(e instanceof UtpError)) throw new Error('not a UtpError: ' + e); errors++ }
    for (const a of weird) {
      for (const b of weird) {
        for (const fn of ['tool', 'deregisterManual', 'requiredVariables', 'searchTools', 'tools', 'manuals']) {
          calls++
          try { engine[fn](a, b) } catch (e) { note(e) }
        }
        for (const fn of ['discover', 'discoverReport', 'registerManual']) {
          calls++
          await engine[fn](a, b).catch(note)
        }
        calls++
        try { new Engine(a, b) } catch (e) { note(e) }
      }
    }
    console.log(JSON.stringify({ calls, errors, manuals: engine.manuals().length }))
  `, 120_000)
  assert.equal(r.error, undefined, String(r.error))
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.signal, null)
  const out = JSON.parse(r.stdout)
  assert.ok(out.errors > out.calls / 2, r.stdout)
})
