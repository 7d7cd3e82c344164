// GraphQL subscriptions from Node through `callToolStream`, against a real
// graphql-transport-ws server (the `graphql-ws` package over `ws`, with introspection
// POSTs answered by `graphql` on the same node:http server, 127.0.0.1): discovery lists
// Subscription fields; items arrive in order; `error` and errors in `next` reject with
// ERR_UTP_TOOL_FAILED; `break` sends `complete` (the server sees it); the credential
// reaches `connection_init`; a refused connection_init (4403) and a private address fail.
import test from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'

import { buildSchema, graphql } from 'graphql'
import { useServer } from 'graphql-ws/use/ws'
import { WebSocketServer } from 'ws'

import { Engine, codes } from 'utp-runtime'
import { rejectsWith } from './helpers.mjs'

const schema = buildSchema(`
  type Query { version: String! }
  type Tick { n: Int! label: String! }
  type Subscription {
    "Counts from 1 to to, then completes."
    count(to: Int!): Int!
    "Ticks until the client stops it."
    ticks: Tick!
    "1, then an error."
    failing: Int
    "The credential the connection was initialised with."
    whoami: String!
  }
`)

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const roots = {
  query: { version: () => '1.0' },
  subscription: {
    count: async function* ({ to }) {
      for (let n = 1; n <= to; n++) yield { count: n }
    },
    ticks: async function* () {
      for (let n = 0; ; n++) {
        await sleep(5)
        yield { ticks: { n, label: `tick ${n}` } }
      }
    },
    failing: async function* () {
      yield { failing: 1 }
      yield {
        get failing() {
          throw new Error('the sensor broke')
        },
      }
    },
    whoami: async function* (_args, context) {
      yield { whoami: context.who }
    },
  },
}

/** The server; `seen` records every client message, connection_init payload and handshake. */
async function server(t) {
  const seen = { messages: [], inits: [], handshakes: [] }
  const srv = http.createServer((req, res) => {
    let body = ''
    req.on('data', (chunk) => (body += chunk))
    req.on('end', async () => {
      const request = JSON.parse(body)
      const result = await graphql({
        schema,
        rootValue: roots.query,
        source: request.query,
        variableValues: request.variables,
        operationName: request.operationName,
      })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(result))
    })
  })
  const wss = new WebSocketServer({ server: srv, path: '/graphql' })
  wss.on('connection', (socket, request) => {
    seen.handshakes.push(request.headers)
    socket.on('message', (data) => seen.messages.push(JSON.parse(String(data))))
  })
  useServer(
    {
      schema,
      roots,
      onConnect: (ctx) => {
        seen.inits.push(ctx.connectionParams)
        return ctx.connectionParams?.Authorization !== 'Bearer denied'
      },
      context: (ctx) => ({ who: ctx.connectionParams?.Authorization ?? '' }),
    },
    wss,
  )
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.after(async () => {
    for (const client of wss.clients) client.terminate()
    await new Promise((resolve) => wss.close(resolve))
    srv.closeAllConnections()
    await new Promise((resolve) => srv.close(resolve))
  })
  const ofType = (type) => seen.messages.filter((m) => m.type === type)
  return { url: `http://127.0.0.1:${srv.address().port}/graphql`, seen, ofType }
}

/** Wait up to 10 s (a deadline for a failing test, not a timing assertion). */
async function waitFor(condition) {
  for (let i = 0; i < 1000 && !condition(); i++) await sleep(10)
  return condition()
}

async function collect(stream) {
  const items = []
  for await (const item of stream) items.push(item)
  return items
}

test('subscriptions are discovered and their items arrive in order', async (t) => {
  const { url, seen, ofType } = await server(t)
  const engine = new Engine()
  t.after(() => engine.close())
  const tools = await engine.registerManual({ name: 'live', call_template_type: 'graphql', url })
  assert.deepEqual(tools.sort(), ['live.count', 'live.failing', 'live.ticks', 'live.version', 'live.whoami'])
  const ticks = engine.tool('live.ticks')
  assert.equal(ticks.tool_call_template.operation_type, 'subscription')
  assert.equal(ticks.tool_call_template.selection_set, '{ n label }')

  assert.deepEqual(await collect(engine.callToolStream('live.count', { to: 3 })), [
    { count: 1 },
    { count: 2 },
    { count: 3 },
  ])
  assert.deepEqual(ofType('subscribe').at(-1).payload.variables, { to: 3 })
  // A plain call: every item until the server completes.
  assert.deepEqual(await engine.callTool('live.count', { to: 2 }), [{ count: 1 }, { count: 2 }])
  assert.deepEqual(await engine.callTool('live.version', {}), { version: '1.0' })
  assert.ok(seen.handshakes.every((h) => h['sec-websocket-protocol'] === 'graphql-transport-ws'))
  assert.equal(ofType('complete').length, 0, 'completed subscriptions need no complete from the client')
})

test('break out of for await sends complete', async (t) => {
  const { url, ofType } = await server(t)
  const engine = new Engine()
  t.after(() => engine.close())
  await engine.registerManual({ name: 'live', call_template_type: 'graphql', url })
  const items = []
  for await (const item of engine.callToolStream('live.ticks')) {
    items.push(item)
    if (items.length === 2) break
  }
  assert.deepEqual(items, [{ ticks: { n: 0, label: 'tick 0' } }, { ticks: { n: 1, label: 'tick 1' } }])
  assert.ok(await waitFor(() => ofType('complete').length === 1), 'the server never saw complete')
  assert.equal(ofType('complete')[0].id, ofType('subscribe')[0].id)
})

test('errors in next and error messages reject with ERR_UTP_TOOL_FAILED', async (t) => {
  const { url } = await server(t)
  const engine = new Engine()
  t.after(() => engine.close())
  const tool = (name, extra) => ({
    name,
    tool_call_template: { call_template_type: 'graphql', url, operation_type: 'subscription', ...extra },
  })
  await engine.registerManual({
    name: 'api',
    tools: [tool('failing', {}), tool('bad_doc', { query: 'subscription { nope }' })],
  })
  const stream = engine.callToolStream('api.failing')
  assert.deepEqual(await stream.next(), { done: false, value: { failing: 1 } })
  await rejectsWith(stream.next(), codes.TOOL_FAILED, /the sensor broke/)
  assert.deepEqual(await stream.next(), { done: true, value: undefined })
  // graphql-ws answers a document that does not validate with an `error` message.
  await rejectsWith(collect(engine.callToolStream('api.bad_doc')), codes.TOOL_FAILED, /nope/)
})

test('the credential reaches connection_init, and refusals and private addresses fail', async (t) => {
  const { url, seen } = await server(t)
  const auth = { auth_type: 'api_key', api_key: 'Bearer ${TOKEN}', var_name: 'Authorization', location: 'header' }
  const manual = {
    name: 'api',
    tools: [
      { name: 'whoami', tool_call_template: { call_template_type: 'graphql', url, auth, operation_type: 'subscription' } },
      {
        name: 'private',
        tool_call_template: { call_template_type: 'graphql', url: 'https://10.0.0.1/graphql', query: 'subscription { whoami }' },
      },
    ],
  }
  const engine = new Engine({ variables: { api_TOKEN: 't-1' } })
  t.after(() => engine.close())
  await engine.registerManual(manual)
  assert.deepEqual(await collect(engine.callToolStream('api.whoami')), [{ whoami: 'Bearer t-1' }])
  assert.equal(seen.inits.at(-1).Authorization, 'Bearer t-1')
  assert.equal(seen.inits.at(-1).headers.Authorization, 'Bearer t-1')
  assert.equal(seen.handshakes.at(-1).authorization, 'Bearer t-1')
  await rejectsWith(collect(engine.callToolStream('api.private')), codes.SECURITY)

  // graphql-ws closes with 4403 Forbidden when onConnect says no.
  const denied = new Engine({ variables: { api_TOKEN: 'denied' } })
  t.after(() => denied.close())
  await denied.registerManual(manual)
  await rejectsWith(denied.callTool('api.whoami', {}), codes.TOOL_FAILED, /4403 Forbidden/)
})
