// callTool's fast path (src/lib.rs, `call_promise`): the call's future is polled once
// on the JS thread; a call that completes without waiting (a `text` tool, a policy
// denial, an unknown tool...) returns an already settled Promise, with no thread hop;
// one that waits stays on the JS thread and is polled again when woken. A JS tool
// reached in the first poll is called right there, inside callTool (a sync tool's call
// then completes in the poll), and so is a JS business rule; one reached later (after an
// async JS rule made the call wait) is called when the JS thread polls the call again. Either way its result arrives
// through the Promise.
import test from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

import { Engine, UtpError, codes } from 'utp-runtime'
import { rejectsWith } from './helpers.mjs'

const require = createRequire(import.meta.url)
const native = require('../native.js')

const textManual = {
  tools: [
    { name: 'hello', tool_call_template: { call_template_type: 'text', content: 'hello' } },
    { name: 'other', tool_call_template: { call_template_type: 'text', content: 'other' } },
    {
      name: 'strict',
      inputs: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] },
      tool_call_template: { call_template_type: 'text', content: 'strict' },
    },
  ],
}

async function textEngine(config = undefined) {
  const engine = new Engine(config)
  assert.deepEqual(await engine.registerManual(textManual, 'text'), ['text.hello', 'text.other', 'text.strict'])
  return engine
}

/**
 * Whether `promise` settles while only microtasks run, i.e. without a turn of the
 * event loop. A result coming back from another thread (napi's tokio runtime through
 * a threadsafe function) needs one, so only a fast-path call can settle here.
 */
async function settlesWithoutEventLoop(promise, ticks = 50) {
  let settled = false
  promise.then(
    () => (settled = true),
    () => (settled = true),
  )
  for (let i = 0; i < ticks && !settled; i++) await null
  return settled
}

test('fast path: a text tool resolves without a turn of the event loop', async () => {
  const engine = await textEngine()
  const call = engine.callTool('text.hello', {})
  assert.ok(call instanceof Promise)
  assert.equal(await settlesWithoutEventLoop(call), true)
  assert.equal(await call, 'hello')
  // The native method itself returns a real, already resolved Promise too.
  const raw = new native.Engine()
  await raw.registerManual(textManual, 'text')
  const rawCall = raw.callTool('text.other', null, null)
  assert.ok(rawCall instanceof Promise)
  assert.equal(await settlesWithoutEventLoop(rawCall), true)
  assert.equal(await rawCall, 'other')
  raw.close()
  engine.close()
})

test('fast path: errors reject at once with the same codes (NOT_FOUND, VALIDATION_FAILED)', async () => {
  const engine = await textEngine()
  const missing = engine.callTool('text.nope', {})
  assert.equal(await settlesWithoutEventLoop(missing), true)
  await rejectsWith(missing, codes.NOT_FOUND, /text\.nope/)

  const invalid = engine.callTool('text.strict', { n: 'x' })
  assert.equal(await settlesWithoutEventLoop(invalid), true)
  await rejectsWith(invalid, codes.VALIDATION_FAILED)
  assert.equal(await engine.callTool('text.strict', { n: 1 }), 'strict')

  // Argument errors are still thrown by the native method and reject the JS Promise.
  await rejectsWith(engine.callTool('text.hello', {}, { timeout: -1 }), codes.INVALID_ARGUMENT, /timeout/)
  engine.close()
  await rejectsWith(engine.callTool('text.hello', {}), codes.INVALID_ARGUMENT, /closed/)
})

test('fast and slow path reject with the same kind of native error', async () => {
  const raw = new native.Engine()
  await raw.registerManual(textManual, 'text')
  raw.registerTool('js.throws', () => {
    throw new Error('boom')
  }, null)
  const fast = await raw.callTool('text.nope', null, null).then(assert.fail, (e) => e)
  const slow = await raw.callTool('js.throws', null, null).then(assert.fail, (e) => e)
  for (const [error, prefix] of [
    [fast, /^\[NOT_FOUND\] /],
    [slow, /^\[TOOL_FAILED\] .*boom/],
  ]) {
    assert.ok(error instanceof Error)
    assert.equal(Object.getPrototypeOf(error), Error.prototype)
    assert.equal(error.code, 'GenericFailure')
    assert.match(error.message, prefix)
  }
  raw.close()
})

test('fast path: a policy denial (config permissions) rejects at once with ERR_UTP_PERMISSION_DENIED', async () => {
  const engine = await textEngine({ permissions: { text: { enabled: true, allowed_actions: ['hello'] } } })
  assert.equal(await engine.callTool('text.hello', {}), 'hello')
  const denied = engine.callTool('text.other', {})
  assert.equal(await settlesWithoutEventLoop(denied), true)
  await rejectsWith(denied, codes.PERMISSION_DENIED, /'other' is not among the allowed actions of 'text'/)
  await assert.rejects(engine.callTool('text.other', {}), { code: 'ERR_UTP_PERMISSION_DENIED' })
  engine.close()

  const disabled = await textEngine({ permissions: { text: { enabled: false } } })
  const call = disabled.callTool('text.hello', {})
  assert.equal(await settlesWithoutEventLoop(call), true)
  await rejectsWith(call, codes.PERMISSION_DENIED, /'text' is disabled/)
  assert.equal(disabled.metrics().tools['text.hello'].policy_denied, 1)
  disabled.close()
})

test('1000 sequential text-tool calls through the fast path', async () => {
  const engine = await textEngine()
  for (let i = 0; i < 1000; i++) {
    assert.equal(await engine.callTool(i % 2 ? 'text.hello' : 'text.other', {}), i % 2 ? 'hello' : 'other')
  }
  const { tools } = engine.metrics()
  assert.deepEqual(tools['text.hello'].calls, { succeeded: 500, failed: 0 })
  assert.deepEqual(tools['text.other'].calls, { succeeded: 500, failed: 0 })
  engine.close()
})

test('fast-path calls publish their events to subscribers', async () => {
  const engine = await textEngine()
  const seen = []
  engine.eventBus.subscribe('tool.*', (event) => seen.push(event.type))
  assert.equal(await engine.callTool('text.hello', {}), 'hello')
  await engine.callTool('text.nope', {}).catch(() => {})
  assert.equal(await engine.eventBus.flush(5), true)
  assert.ok(seen.includes('tool.succeeded'), JSON.stringify(seen))
  engine.close()
})

/** Registers `js.echo`, which records each call and whether it ran inside callTool. */
function echoProbe(engine) {
  let inCallTool = false
  const calls = []
  engine.registerTool('js.echo', (args) => {
    calls.push({ args, inCallTool })
    return { echoed: args }
  })
  const call = (args) => {
    inCallTool = true
    try {
      return engine.callTool('js.echo', args)
    } finally {
      inCallTool = false
    }
  }
  return { calls, call }
}

test('a sync JS tool is called inside callTool; its result still arrives through the Promise', async () => {
  const engine = new Engine()
  const echo = echoProbe(engine)
  const call = echo.call({ x: 1 })
  assert.deepEqual(echo.calls, [{ args: { x: 1 }, inCallTool: true }])
  assert.ok(call instanceof Promise)
  assert.equal(await settlesWithoutEventLoop(call), true)
  assert.deepEqual(await call, { echoed: { x: 1 } })

  // Async JS tools, throws and rejections keep their results and codes.
  engine.registerTool('js.later', async (args) => {
    await new Promise((resolve) => setTimeout(resolve, 5))
    return args.n * 2
  })
  assert.equal(await engine.callTool('js.later', { n: 21 }), 42)
  engine.registerTool('js.rejects', async () => {
    throw new Error('nope')
  })
  await rejectsWith(engine.callTool('js.rejects', {}), codes.TOOL_FAILED, /rejected: nope/)
  engine.registerTool('js.throws', () => {
    throw new TypeError('bad input')
  })
  await rejectsWith(engine.callTool('js.throws', {}), codes.TOOL_FAILED, /threw: .*bad input/)
  engine.registerTool('js.undefined', () => undefined)
  await rejectsWith(engine.callTool('js.undefined', {}), codes.TOOL_FAILED, /return null for no result/)
  engine.close()
})

test('a sync JS business rule is called inside callTool, and so is the JS tool after it', async () => {
  const engine = new Engine()
  const echo = echoProbe(engine)
  const seen = []
  engine.domainLayer.addBusinessRule('allow', (tool, action, params) => {
    seen.push([tool, action, params])
    return params.x !== 3 || { decision: 'deny', reason: 'no threes' }
  })
  const call = echo.call({ x: 2 })
  assert.deepEqual(seen, [['js', 'echo', { x: 2 }]])
  assert.equal(echo.calls.length, 1)
  assert.equal(await settlesWithoutEventLoop(call), true)
  assert.deepEqual(await call, { echoed: { x: 2 } })
  assert.deepEqual(echo.calls, [{ args: { x: 2 }, inCallTool: true }])
  // Its decisions are the same: a denial, a throw (fail closed), a wrong answer.
  await rejectsWith(echo.call({ x: 3 }), codes.PERMISSION_DENIED, /no threes/)
  engine.domainLayer.addBusinessRule('throws', () => {
    throw new Error('rule broke')
  })
  await rejectsWith(echo.call({ x: 1 }), codes.PERMISSION_DENIED, /throws.*threw: .*rule broke/)
  engine.domainLayer.removeBusinessRule('throws')
  engine.domainLayer.addBusinessRule('sloppy', () => 'yes')
  await rejectsWith(echo.call({ x: 1 }), codes.PERMISSION_DENIED, /sloppy/)
  engine.close()
})

test('a JS tool reached after an async JS business rule is called later, not inside callTool', async () => {
  const engine = new Engine()
  const echo = echoProbe(engine)
  engine.domainLayer.addBusinessRule('allow', async () => true)
  const call = echo.call({ x: 2 })
  assert.equal(echo.calls.length, 0)
  assert.equal(await settlesWithoutEventLoop(call), false)
  assert.deepEqual(await call, { echoed: { x: 2 } })
  assert.deepEqual(echo.calls, [{ args: { x: 2 }, inCallTool: false }])
  engine.close()
})

test('slow path: a timeout armed during the first poll still fires on the runtime', async () => {
  const engine = new Engine()
  engine.registerTool('js.never', () => new Promise(() => {}))
  const started = Date.now()
  await rejectsWith(engine.callTool('js.never', {}, { timeout: 0.2 }), codes.TIMEOUT, /js\.never/)
  assert.ok(Date.now() - started >= 150, `timed out after ${Date.now() - started} ms`)
  engine.close()
})

test('a JS tool that itself awaits engine.callTool (fast and slow path inside)', async () => {
  const engine = await textEngine()
  engine.registerTool('js.inner', (args) => ({ inner: args.v }))
  engine.registerTool('js.outer', async (args) => {
    const text = await engine.callTool('text.hello', {})
    const inner = await engine.callTool('js.inner', { v: args.v })
    let denied = null
    try {
      await engine.callTool('text.nope', {})
    } catch (e) {
      denied = e.code
    }
    return { text, inner, denied }
  })
  // Sync handler that returns callTool's Promise directly.
  engine.registerTool('js.forward', () => engine.callTool('text.other', {}))
  assert.deepEqual(await engine.callTool('js.outer', { v: 7 }), {
    text: 'hello',
    inner: { inner: 7 },
    denied: codes.NOT_FOUND,
  })
  assert.equal(await engine.callTool('js.forward', {}), 'other')
  // Many at once, mixing both paths.
  const results = await Promise.all(
    Array.from({ length: 50 }, (_, i) =>
      i % 2 ? engine.callTool('js.outer', { v: i }) : engine.callTool('text.hello', {}),
    ),
  )
  results.forEach((r, i) =>
    assert.deepEqual(r, i % 2 ? { text: 'hello', inner: { inner: i }, denied: codes.NOT_FOUND } : 'hello'),
  )
  engine.close()
})

test('a JS tool called inside callTool may use the engine re-entrantly', async () => {
  const engine = await textEngine()
  engine.registerTool('js.inner', (args) => args.v * 2)
  engine.registerTool('js.reenter', (args) => {
    const nested = engine.callTool('js.inner', { v: args.v }) // itself called right away
    engine.registerTool('js.late', () => 'late') // a registration in the middle of a call
    return nested
  })
  assert.equal(await engine.callTool('js.reenter', { v: 4 }), 8)
  assert.equal(await engine.callTool('js.late'), 'late')
  engine.registerTool('gone.self', () => {
    engine.deregisterManual('gone')
    return 'still answered'
  })
  assert.equal(await engine.callTool('gone.self'), 'still answered')
  await rejectsWith(engine.callTool('gone.self'), codes.NOT_FOUND)
  // Closing the engine from inside one of its tools: the call still ends.
  engine.registerTool('js.closes', () => {
    engine.close()
    return 'closed'
  })
  assert.equal(await engine.callTool('js.closes'), 'closed')
  assert.equal(engine.closed, true)
})
