// Errors: every failure is a UtpError with err.code = 'ERR_UTP_<CODE>', the code
// prefix of the native message is removed, async methods reject (never throw), and bad
// argument types are errors, not crashes.
import test from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'

import { Engine, UtpError, codes } from 'utp-runtime'
import { manualsDir, weatherManual } from './helpers.mjs'

/** Assert `fn()` throws synchronously a UtpError with `code`; returns it. */
function throwsCode(fn, code, pattern) {
  let caught
  assert.throws(fn, (e) => {
    caught = e
    return true
  })
  assertUtpError(caught, code, pattern)
  return caught
}

/** Assert `fn()` returns a promise (no sync throw) rejecting with a UtpError with `code`. */
async function rejectsCode(fn, code, pattern) {
  const promise = fn()
  assert.ok(promise instanceof Promise, 'an async method returns a promise even for bad input')
  let caught
  await assert.rejects(promise, (e) => {
    caught = e
    return true
  })
  assertUtpError(caught, code, pattern)
  return caught
}

function assertUtpError(e, code, pattern) {
  assert.ok(e instanceof UtpError, `expected a UtpError, got ${e?.constructor?.name}: ${e?.message}`)
  assert.ok(e instanceof Error)
  assert.equal(e.code, code, e.message)
  assert.doesNotMatch(e.message, /^\[[A-Z_]+\]/, 'the code prefix is lifted off the message')
  assert.ok(e.message.length > 0)
  if (pattern) assert.match(e.message, pattern)
  assert.match(e.stack, /UtpError/)
}

test('registering a manual name twice: ERR_UTP_ALREADY_EXISTS', async () => {
  const engine = new Engine()
  await engine.registerManual(weatherManual(), 'weather')
  const e = await rejectsCode(() => engine.registerManual(weatherManual(), 'weather'), codes.ALREADY_EXISTS, /weather/)
  assert.equal(e.code, 'ERR_UTP_ALREADY_EXISTS')
  // Discovering the same directory twice reports the duplicates as failed files.
  await engine.discover(manualsDir)
  const report = await engine.discoverReport(manualsDir)
  assert.ok(report.files.every((f) => f.status === 'failed' && f.code === 'ALREADY_EXISTS'))
  assert.deepEqual(await engine.discover(manualsDir), [])
})

test('an unknown tool: ERR_UTP_NOT_FOUND', async () => {
  const engine = new Engine()
  throwsCode(() => engine.tool('nope.nothing'), codes.NOT_FOUND, /nope\.nothing/)
  await engine.registerManual(weatherManual(), 'weather')
  throwsCode(() => engine.tool('weather.get_tomorrow'), 'ERR_UTP_NOT_FOUND')
  throwsCode(() => engine.tool('get_current'), 'ERR_UTP_NOT_FOUND')
  throwsCode(() => engine.requiredVariables('nope'), 'ERR_UTP_NOT_FOUND', /nope/)
})

test('a missing discovery path or manual file: ERR_UTP_NOT_FOUND', async () => {
  const engine = new Engine()
  await rejectsCode(() => engine.discover(path.join(manualsDir, 'no-such-dir')), codes.NOT_FOUND, /no-such-dir/)
  await rejectsCode(() => engine.discoverReport('/no/such/path'), codes.NOT_FOUND)
  await rejectsCode(() => engine.registerManual('/no/such/manual.utcp.json'), codes.NOT_FOUND)
})

test('invalid manuals: ERR_UTP_INVALID_MANUAL', async () => {
  const engine = new Engine()
  // Not a manual at all.
  await rejectsCode(() => engine.registerManual({ hello: 'world' }, 'x'), codes.INVALID_MANUAL, /UTCP manual/)
  // A tool without a call template.
  await rejectsCode(() => engine.registerManual({ tools: [{ name: 'a' }] }, 'm'), codes.INVALID_MANUAL, /tool_call_template/)
  // Tools that are not a list.
  await rejectsCode(() => engine.registerManual({ tools: 'many' }, 'm'), codes.INVALID_MANUAL)
  // Broken JSON text.
  await rejectsCode(() => engine.registerManual('{"tools": [', 'm'), codes.INVALID_MANUAL, /JSON/)
  // Nothing was registered by the failures.
  assert.deepEqual(engine.manuals(), [])
})

test('bad argument types are ERR_UTP_INVALID_ARGUMENT errors, not crashes', async () => {
  const engine = new Engine()
  await engine.registerManual(weatherManual(), 'weather')
  const INVALID = codes.INVALID_ARGUMENT

  // Sync methods throw.
  throwsCode(() => engine.tool(42), INVALID)
  throwsCode(() => engine.tool(), INVALID)
  throwsCode(() => engine.tool(null), INVALID)
  throwsCode(() => engine.tool({ name: 'weather.get_current' }), INVALID)
  throwsCode(() => engine.deregisterManual(7), INVALID)
  throwsCode(() => engine.requiredVariables(['weather']), INVALID)
  throwsCode(() => engine.searchTools(1), INVALID)
  throwsCode(() => engine.searchTools('x', 'limit'), INVALID)
  throwsCode(() => engine.searchTools('x', { limit: 'ten' }), INVALID)
  throwsCode(() => engine.searchTools('x', { limit: -1 }), INVALID, /non-negative integer/)
  throwsCode(() => engine.searchTools('x', { limit: 2.5 }), INVALID, /non-negative integer/)
  throwsCode(() => engine.searchTools('x', { limit: NaN }), INVALID)
  throwsCode(() => engine.searchTools('x', { tags: 'weather' }), INVALID)
  throwsCode(() => engine.searchTools('x', { tags: [1, 2] }), INVALID)
  throwsCode(() => engine.searchTools('x', { limt: 3 }), INVALID, /unknown searchTools option 'limt'/)

  // Async methods reject.
  await rejectsCode(() => engine.discover(5), INVALID)
  await rejectsCode(() => engine.discover(), INVALID)
  await rejectsCode(() => engine.discoverReport({}), INVALID)
  await rejectsCode(() => engine.registerManual(5), INVALID, /must be an object/)
  await rejectsCode(() => engine.registerManual(), INVALID)
  await rejectsCode(() => engine.registerManual([weatherManual()]), INVALID, /found an array/)
  await rejectsCode(() => engine.registerManual(weatherManual(), 12), INVALID)
  await rejectsCode(() => engine.registerManual(() => {}), INVALID)
  await rejectsCode(() => engine.registerManual({ tools: [], bad: () => {} }, 'fn'), INVALID)
  await rejectsCode(() => engine.registerManual('   '), INVALID, /empty/)
  await rejectsCode(() => engine.registerManual({ tools: [{ name: 'p', tool_call_template: { call_template_type: 'native' } }] }), INVALID, /needs a name/)

  // The engine is unharmed.
  assert.deepEqual(engine.manuals(), ['weather'])
  assert.equal(engine.tools().length, 2)
})

test('deeply nested input is refused, not a stack overflow', async () => {
  const engine = new Engine()
  let deep = {}
  for (let i = 0; i < 100_000; i++) deep = { a: deep }
  await rejectsCode(() => engine.registerManual({ tools: [], deep }, 'deep'), codes.INVALID_ARGUMENT)
})

test('bad configs and stores: ERR_UTP_INVALID_ARGUMENT / ERR_UTP_NOT_FOUND', () => {
  throwsCode(() => new Engine(42), codes.INVALID_ARGUMENT, /config must be an object/)
  throwsCode(() => new Engine([]), codes.INVALID_ARGUMENT, /found an array/)
  throwsCode(() => new Engine(true), codes.INVALID_ARGUMENT)
  throwsCode(() => new Engine(''), codes.INVALID_ARGUMENT, /empty/)
  throwsCode(() => new Engine('/no/such/utp.yaml'), codes.NOT_FOUND, /utp\.yaml/)
  throwsCode(() => new Engine({ variables: 'not a map' }), codes.INVALID_ARGUMENT, /config/)
  throwsCode(() => new Engine(null, 'memory'), codes.INVALID_ARGUMENT)
  throwsCode(() => new Engine(null, { store: 5 }), codes.INVALID_ARGUMENT)
  throwsCode(() => new Engine(null, { stor: 'memory' }), codes.INVALID_ARGUMENT, /unknown Engine option 'stor'/)
  throwsCode(() => new Engine(null, { store: 'sqlite:' }), codes.INVALID_ARGUMENT, /needs a database path/)
  throwsCode(() => new Engine(null, { store: 'postgres://x' }), codes.INVALID_ARGUMENT, /unknown store/)
})

test('every method of a closed engine throws ERR_UTP_INVALID_ARGUMENT', async () => {
  const engine = new Engine()
  await engine.registerManual(weatherManual(), 'weather')
  engine.close()
  const closed = /engine is closed/
  throwsCode(() => engine.tools(), codes.INVALID_ARGUMENT, closed)
  throwsCode(() => engine.tool('weather.get_current'), codes.INVALID_ARGUMENT, closed)
  throwsCode(() => engine.searchTools('weather'), codes.INVALID_ARGUMENT, closed)
  throwsCode(() => engine.manuals(), codes.INVALID_ARGUMENT, closed)
  throwsCode(() => engine.requiredVariables('weather'), codes.INVALID_ARGUMENT, closed)
  throwsCode(() => engine.deregisterManual('weather'), codes.INVALID_ARGUMENT, closed)
  await rejectsCode(() => engine.discover(manualsDir), codes.INVALID_ARGUMENT, closed)
  await rejectsCode(() => engine.discoverReport(manualsDir), codes.INVALID_ARGUMENT, closed)
  await rejectsCode(() => engine.registerManual(weatherManual(), 'w2'), codes.INVALID_ARGUMENT, closed)
  engine.close()
})

test('a call already running when close() is called finishes', async () => {
  const engine = new Engine()
  const pending = engine.discover(manualsDir)
  engine.close()
  assert.deepEqual(await pending, ['legacy_notes', 'shop', 'weather'])
})
