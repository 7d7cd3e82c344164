// tcp and udp tools (python-utcp's utcp-socket fields) called from Node against a
// net/dgram peer on 127.0.0.1 that the test starts and stops.
import test from 'node:test'
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import net from 'node:net'

import { Engine, codes } from 'utp-runtime'
import { rejectsWith } from './helpers.mjs'

/** A TCP peer answering each connection with `serve(socket, firstChunk)`; stopped when `t` ends. */
async function tcpPeer(t, serve) {
  const sockets = new Set()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.once('data', (chunk) => serve(socket, chunk))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => {
    for (const socket of sockets) socket.destroy()
    return new Promise((resolve) => server.close(resolve))
  })
  return server.address().port
}

/** A UDP peer answering each datagram with the datagrams `reply` returns. */
async function udpPeer(t, reply) {
  const socket = dgram.createSocket('udp4')
  socket.on('message', (msg, from) => {
    for (const datagram of reply(msg)) socket.send(datagram, from.port, from.address)
  })
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => socket.close(resolve)))
  return socket.address().port
}

function tool(name, kind, port, fields = {}) {
  return {
    name,
    inputs: { type: 'object' },
    tool_call_template: { call_template_type: kind, host: '127.0.0.1', port, timeout: 5000, ...fields },
  }
}

async function engineWith(t, tools, config) {
  const engine = new Engine(config)
  t.after(() => engine.close())
  await engine.registerManual({ tools }, 'sock')
  return engine
}

test('every TCP framing, and UDP with several datagrams', async (t) => {
  const prefixed = await tcpPeer(t, (socket, chunk) => {
    const body = Buffer.concat([Buffer.from('echo '), chunk.subarray(4, 4 + chunk.readUInt32BE(0))])
    const prefix = Buffer.alloc(4)
    prefix.writeUInt32BE(body.length)
    socket.end(Buffer.concat([prefix, body]))
  })
  const lines = await tcpPeer(t, (socket, chunk) => {
    // The reply's delimiter comes in a second write.
    socket.write(`got ${chunk.toString().trimEnd()}\r`)
    setTimeout(() => socket.end('\nleftover'), 20)
  })
  const fixed = await tcpPeer(t, (socket) => socket.end('0123456789abcdefXYZ'))
  const stream = await tcpPeer(t, (socket, chunk) => socket.end(Buffer.concat([Buffer.from([0xff]), chunk])))
  const udp = await udpPeer(t, (msg) => [Buffer.concat([Buffer.from('1:'), msg]), Buffer.from('|2')])
  const engine = await engineWith(t, [
    tool('prefix', 'tcp', prefixed, { framing_strategy: 'length_prefix' }),
    tool('lines', 'tcp', lines, {
      framing_strategy: 'delimiter',
      message_delimiter: '\\r\\n',
      request_data_format: 'text',
      request_data_template: 'SUM UTCP_ARG_a_UTCP_ARG UTCP_ARG_b_UTCP_ARG',
    }),
    tool('fixed', 'tcp', fixed, { framing_strategy: 'fixed_length', fixed_message_length: 16 }),
    tool('raw', 'tcp', stream, { response_byte_format: null }),
    tool('udp', 'udp', udp, { number_of_response_datagrams: 2 }),
  ])
  assert.equal(await engine.callTool('sock.prefix', { city: 'Zürich', n: [1, 2] }), 'echo {"city": "Z\\u00fcrich", "n": [1, 2]}')
  assert.equal(await engine.callTool('sock.lines', { a: 2, b: 'x' }), 'got SUM 2 x')
  assert.equal(await engine.callTool('sock.fixed', {}), '0123456789abcdef')
  const raw = await engine.callTool('sock.raw', { k: 1 })
  assert.deepEqual(Buffer.from(raw.base64, 'base64'), Buffer.from('\xff{"k": 1}', 'latin1'))
  assert.equal(await engine.callTool('sock.udp', { a: 1 }), '1:{"a": 1}|2')
})

test('peers that close mid-frame, send too much or say nothing', async (t) => {
  const cut = await tcpPeer(t, (socket) => {
    const prefix = Buffer.alloc(4)
    prefix.writeUInt32BE(100)
    socket.end(Buffer.concat([prefix, Buffer.from('only ten..')]))
  })
  const flood = await tcpPeer(t, (socket) => socket.end(Buffer.alloc(5000, 'x')))
  const silent = await tcpPeer(t, () => {})
  const engine = await engineWith(t, [
    tool('cut', 'tcp', cut, { framing_strategy: 'length_prefix' }),
    tool('flood', 'tcp', flood, { max_response_size: 1000 }),
    tool('silent', 'tcp', silent, { framing_strategy: 'delimiter', timeout: 200 }),
    tool('bad', 'tcp', silent, { length_prefix_bytes: 3 }),
    tool('far', 'tcp', 9, { host: '192.0.2.1' }),
  ])
  await rejectsWith(engine.callTool('sock.cut', {}), codes.TRANSPORT, /mid-frame \(10 of 100 bytes\)/)
  await rejectsWith(engine.callTool('sock.flood', {}), codes.TRANSPORT, /1000 byte cap/)
  await rejectsWith(engine.callTool('sock.silent', {}), codes.TIMEOUT)
  await rejectsWith(engine.callTool('sock.bad', {}), codes.INVALID_MANUAL, /`length_prefix_bytes`/)
  await rejectsWith(engine.callTool('sock.far', {}), codes.SECURITY, /calls\.allowed_socket_hosts/)
})
