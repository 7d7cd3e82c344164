// engine.callToolStream: `for await` over the items of sse and streamable_http (NDJSON)
// tools served by a real loopback server: items arrive as the server sends them,
// `break` / close() / an AbortSignal close the connection (the server sees it go),
// errors mid-stream reject with a UtpError and its stable code.
import test from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'

import { Engine, ToolStream, UtpError, codes } from 'utp-runtime'
import { rejectsWith } from './helpers.mjs'

const MAX_EVENT_SIZE = 1024

/** A deferred: `{ promise, resolve, settled }`. */
function deferred() {
  let resolve
  const promise = new Promise((r) => (resolve = r))
  const d = { promise, settled: false, resolve: (v) => ((d.settled = true), resolve(v)) }
  return d
}

/**
 * GET /sse/<case> answers text/event-stream, POST /ndjson/<case> application/x-ndjson.
 * `gated`: item 1, then waits for `server.release`, then items 2 and 3 (`server.sentLast`);
 * `endless`: item 1, then nothing until the client goes away (`server.disconnected`);
 * `broken`: item 1, waits for `server.release`, then what the client rejects.
 */
async function startServer(t) {
  const state = { release: deferred(), disconnected: deferred(), sentLast: false }
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1')
    const sse = url.pathname.startsWith('/sse/')
    const item = sse ? (v) => `data: ${JSON.stringify(v)}\n\n` : (v) => `${JSON.stringify(v)}\n`
    const broken = sse ? `data: ${'x'.repeat(2 * MAX_EVENT_SIZE)}\n\n` : 'not json\n'
    res.on('close', () => {
      if (!res.writableFinished) state.disconnected.resolve()
    })
    req.resume()
    res.writeHead(200, { 'content-type': sse ? 'text/event-stream' : 'application/x-ndjson' })
    res.write(item({ n: 1 }))
    const kind = url.pathname.split('/').pop()
    if (kind === 'gated') {
      await state.release.promise
      res.write(item({ n: 2 }))
      res.end(item({ n: 3 }))
      state.sentLast = true
    } else if (kind === 'broken') {
      await state.release.promise
      res.end(broken)
    }
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', 128, resolve))
  t.after(() => {
    state.release.resolve()
    server.closeAllConnections()
    return new Promise((resolve) => server.close(resolve))
  })
  const base = `http://127.0.0.1:${server.address().port}`
  const tools = []
  for (const kind of ['gated', 'endless', 'broken']) {
    tools.push({ name: `sse_${kind}`, tool_call_template: { call_template_type: 'sse', url: `${base}/sse/${kind}` } })
    tools.push({
      name: `http_${kind}`,
      tool_call_template: { call_template_type: 'streamable_http', url: `${base}/ndjson/${kind}`, http_method: 'POST' },
    })
  }
  const engine = new Engine({ calls: { max_event_size: MAX_EVENT_SIZE } })
  await engine.registerManual({ tools }, 'feed')
  t.after(() => engine.close())
  return { engine, state }
}

/** Resolves to true once `promise` settles, false after `ms`. */
function within(promise, ms) {
  let timer
  return Promise.race([
    promise.then(() => true),
    new Promise((resolve) => (timer = setTimeout(() => resolve(false), ms))),
  ]).finally(() => clearTimeout(timer))
}

for (const kind of ['sse', 'http']) {
  test(`${kind}: items arrive as the server sends them`, async (t) => {
    const { engine, state } = await startServer(t)
    const stream = engine.callToolStream(`feed.${kind}_gated`)
    assert.ok(stream instanceof ToolStream)
    const items = []
    for await (const item of stream) {
      items.push(item)
      if (items.length === 1) {
        assert.equal(state.sentLast, false, 'item 1 arrived only after the server sent the last one')
        state.release.resolve()
      }
    }
    assert.deepEqual(items, [{ n: 1 }, { n: 2 }, { n: 3 }])
    assert.deepEqual(await stream.next(), { done: true, value: undefined })
  })

  test(`${kind}: break out of for await closes the connection`, async (t) => {
    const { engine, state } = await startServer(t)
    const stream = engine.callToolStream(`feed.${kind}_endless`)
    for await (const item of stream) {
      assert.deepEqual(item, { n: 1 })
      break
    }
    assert.equal(stream.closed, true)
    assert.ok(await within(state.disconnected.promise, 5000), 'the server never saw the client go away')
    assert.deepEqual(await stream.next(), { done: true, value: undefined })
  })

  test(`${kind}: aborting the signal cancels a waiting next() and closes the connection`, async (t) => {
    const { engine, state } = await startServer(t)
    const controller = new AbortController()
    const stream = engine.callToolStream(`feed.${kind}_endless`, {}, { signal: controller.signal, timeout: 5 })
    assert.deepEqual(await stream.next(), { done: false, value: { n: 1 } })
    const waiting = stream.next() // nothing more comes
    setTimeout(() => controller.abort(), 100)
    await rejectsWith(waiting, codes.CANCELLED, /cancel/i)
    assert.ok(await within(state.disconnected.promise, 5000), 'the server never saw the client go away')
    assert.deepEqual(await stream.next(), { done: true, value: undefined })
  })

  test(`${kind}: an error mid-stream rejects with its code and ends the stream`, async (t) => {
    const { engine, state } = await startServer(t)
    const items = []
    await assert.rejects(
      (async () => {
        for await (const item of engine.callToolStream(`feed.${kind}_broken`)) {
          items.push(item)
          state.release.resolve()
        }
      })(),
      (e) => e instanceof UtpError && e.code === codes.TRANSPORT && e.message.includes(`feed.${kind}_broken`),
    )
    assert.deepEqual(items, [{ n: 1 }])
  })
}

test('close() and async dispose (`await using`) close the connection', async (t) => {
  const { engine, state } = await startServer(t)
  const stream = engine.callToolStream('feed.sse_endless')
  assert.deepEqual(await stream.next(), { done: false, value: { n: 1 } })
  // What `await using` calls at the end of its scope (Node 20 has no `await using` syntax).
  await stream[Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')]()
  assert.ok(await within(state.disconnected.promise, 5000))
  const again = engine.callToolStream('feed.http_endless')
  assert.deepEqual((await again.next()).value, { n: 1 })
  again.close()
  again.close() // idempotent
  assert.deepEqual(await again.next(), { done: true, value: undefined })
})

test('a signal aborted before the first next() cancels the call', async (t) => {
  const { engine } = await startServer(t)
  const stream = engine.callToolStream('feed.sse_gated', null, { signal: AbortSignal.abort() })
  await rejectsWith(stream.next(), codes.CANCELLED, /cancel/i)
})

test('a tool that does not stream yields its one result', async () => {
  const engine = new Engine()
  engine.registerTool('math.add', (args) => args.a + args.b)
  const items = []
  for await (const item of engine.callToolStream('math.add', { a: 2, b: 3 })) items.push(item)
  assert.deepEqual(items, [5])
})

test('bad arguments throw at once; the call errors reject the first next()', async () => {
  const engine = new Engine()
  const throwsWith = (fn, code, pattern) =>
    assert.throws(fn, (e) => e instanceof UtpError && e.code === code && pattern.test(e.message))
  throwsWith(() => engine.callToolStream('m.t', {}, { timeout: -1 }), codes.INVALID_ARGUMENT, /timeout/)
  throwsWith(() => engine.callToolStream('m.t', {}, { timout: 1 }), codes.INVALID_ARGUMENT, /timout/)
  throwsWith(() => engine.callToolStream('m.t', {}, 'fast'), codes.INVALID_ARGUMENT, /options/)
  throwsWith(() => engine.callToolStream('m.t', {}, { signal: 'stop' }), codes.INVALID_ARGUMENT, /AbortSignal/)
  throwsWith(() => engine.callToolStream(5), codes.INVALID_ARGUMENT, /string|name/i)
  await rejectsWith(engine.callToolStream('nope.tool').next(), codes.NOT_FOUND, /nope\.tool/)
  engine.registerTool('m.t', () => 1)
  await rejectsWith(engine.callToolStream('m.t', [1]).next(), codes.VALIDATION_FAILED, /object/)
  engine.close()
  throwsWith(() => engine.callToolStream('m.t'), codes.INVALID_ARGUMENT, /closed/)
})

test('many streams at once', async (t) => {
  const { engine, state } = await startServer(t)
  const read = async (i) => {
    const items = []
    for await (const item of engine.callToolStream(i % 2 ? 'feed.sse_gated' : 'feed.http_gated')) items.push(item)
    return items
  }
  const all = Promise.all(Array.from({ length: 8 }, (_, i) => read(i)))
  setTimeout(() => state.release.resolve(), 100)
  assert.deepEqual(await all, Array(8).fill([{ n: 1 }, { n: 2 }, { n: 3 }]))
})
