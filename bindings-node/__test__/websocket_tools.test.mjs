// `websocket` tools through the Node binding, against `ws` servers on 127.0.0.1 that the
// tests start and stop: discovery from a python-utcp-shaped manual call template (server in
// a worker: `new Engine(config)` registers while blocking this thread), calls with and
// without a message template, keep-alive, a silent server (TIMEOUT) and bad template fields.
import test from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'

import { WebSocketServer } from 'ws'
import { Engine } from 'utp-runtime'
import { rejectsWith } from './helpers.mjs'

const wsPath = createRequire(import.meta.url).resolve('ws')

/** Replies `{"got": <message>}` on /echo, never on /silent; counts connections. */
async function echoServer(t) {
  const state = { connections: 0 }
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  server.on('connection', (socket, request) => {
    state.connections += 1
    socket.on('message', (data) => {
      if (request.url === '/echo') socket.send(JSON.stringify({ got: data.toString() }))
    })
  })
  await new Promise((resolve) => server.once('listening', resolve))
  t.after(() => {
    for (const client of server.clients) client.terminate()
    return new Promise((resolve) => server.close(resolve))
  })
  state.base = `ws://127.0.0.1:${server.address().port}`
  return state
}

/** A server answering `{"type":"utcp"}` with a manual of one websocket tool, in a worker. */
async function manualServerInWorker(t) {
  const worker = new Worker(
    `
    const { parentPort, workerData } = require('node:worker_threads')
    const { WebSocketServer } = require(workerData.wsPath)
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 })
    server.on('connection', (socket) => {
      socket.on('message', (data) => {
        const text = data.toString()
        if (text === '{"type":"utcp"}') {
          const url = 'ws://127.0.0.1:' + server.address().port + '/'
          socket.send(JSON.stringify({ tools: [
            { name: 'shout', inputs: { type: 'object', properties: { word: { type: 'string' } } },
              tool_call_template: { call_template_type: 'websocket', url, message: 'SHOUT UTCP_ARG_word_UTCP_ARG' } },
            { name: 'web', tool_call_template: { call_template_type: 'http', url: 'http://127.0.0.1:1/' } },
          ] }))
        } else {
          socket.send(text.toUpperCase())
        }
      })
    })
    server.on('listening', () => parentPort.postMessage(server.address().port))
    `,
    { eval: true, workerData: { wsPath } },
  )
  t.after(() => worker.terminate())
  const port = await new Promise((resolve, reject) => {
    worker.once('message', resolve)
    worker.once('error', reject)
  })
  return `ws://127.0.0.1:${port}`
}

test('a websocket manual call template discovers its tools', async (t) => {
  const base = await manualServerInWorker(t)
  const engine = new Engine({ manual_call_templates: [{ name: 'live', call_template_type: 'websocket', url: base }] })
  t.after(() => engine.close())
  assert.deepEqual(
    engine.tools().map((tool) => tool.name),
    ['live.shout'],
    'a manual discovered over a WebSocket keeps only websocket tools',
  )
  assert.equal(await engine.callTool('live.shout', { word: 'hi' }), 'SHOUT HI')
})

test('websocket tools answer, keep their socket, time out and name bad fields', async (t) => {
  const server = await echoServer(t)
  const engine = new Engine()
  t.after(() => engine.close())
  const ws = (name, fields) => ({ name, tool_call_template: { call_template_type: 'websocket', ...fields } })
  await engine.registerManual(
    {
      tools: [
        ws('echo', { url: `${server.base}/echo`, response_format: 'json' }),
        ws('templated', { url: `${server.base}/echo`, response_format: 'json', message: { q: 'UTCP_ARG_q_UTCP_ARG' } }),
        ws('quiet', { url: `${server.base}/silent`, timeout: 0.3 }),
        ws('bad', { url: `${server.base}/echo`, keep_alive: 'yes' }),
        ws('far', { url: 'ws://example.com/x' }),
      ],
    },
    'ws',
  )
  assert.deepEqual(JSON.parse((await engine.callTool('ws.echo', { a: 1 })).got), { a: 1 })
  assert.deepEqual(await engine.callTool('ws.templated', { q: 'x' }), { got: '{"q":"x"}' })
  const connections = server.connections
  for (let i = 0; i < 3; i++) await engine.callTool('ws.echo', { i })
  assert.equal(server.connections, connections, 'keep_alive: the calls share one socket')
  await rejectsWith(engine.callTool('ws.quiet', {}), 'ERR_UTP_TIMEOUT')
  await rejectsWith(engine.callTool('ws.bad', {}), 'ERR_UTP_INVALID_MANUAL', /`keep_alive`/)
  await rejectsWith(engine.callTool('ws.far', {}), 'ERR_UTP_SECURITY', /wss:\/\//)
})
