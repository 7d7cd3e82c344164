// Network and cli calls run on the addon's call threads and settle on the JS thread in batches:
// many calls at once each get their own result, a pending call keeps the process alive
// and a settled one no longer does, and a worker thread that ends mid-call is harmless.
// Against a real loopback server; the scripts run as child processes.
import test from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { spawn } from 'node:child_process'

import { Engine, codes } from 'utp-runtime'
import { packageDir, rejectsWith } from './helpers.mjs'

/** A loopback server: /echo?x=V answers {"x": V}; /slow?ms=N answers after N ms; else 404. */
async function startServer(t) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1')
    const reply = (body) => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify(body))
    }
    if (url.pathname === '/echo') reply({ x: url.searchParams.get('x') })
    else if (url.pathname === '/slow') setTimeout(() => reply({ slept: Number(url.searchParams.get('ms')) }), Number(url.searchParams.get('ms')))
    else {
      res.statusCode = 404
      res.end('no such page')
    }
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', 128, resolve))
  t.after(() => {
    server.closeAllConnections()
    return new Promise((resolve) => server.close(resolve))
  })
  return `http://127.0.0.1:${server.address().port}`
}

/** The manual of startServer's tools, as a JS expression (for child scripts too). */
function manualSource(base) {
  return `{ tools: [
    { name: 'echo', inputs: { type: 'object', properties: { x: { type: 'string' } }, required: ['x'] },
      tool_call_template: { call_template_type: 'http', url: '${base}/echo', http_method: 'GET' } },
    { name: 'slow', inputs: { type: 'object', properties: { ms: { type: 'integer' } }, required: ['ms'] },
      tool_call_template: { call_template_type: 'http', url: '${base}/slow', http_method: 'GET' } },
    { name: 'missing', tool_call_template: { call_template_type: 'http', url: '${base}/missing', http_method: 'GET' } },
  ] }`
}

/** Run an ES module script in a child node; resolves to { status, signal, stdout, stderr }. */
function runScript(script, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: packageDir })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`the script did not exit by itself within ${timeoutMs} ms: ${stdout} ${stderr}`))
    }, timeoutMs)
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      resolve({ status, signal, stdout, stderr })
    })
  })
}

test('400 HTTP calls at once each resolve with their own result; failures in the same batches reject with their code', async (t) => {
  const base = await startServer(t)
  const engine = new Engine()
  await engine.registerManual(eval(`(${manualSource(base)})`), 'net')
  const calls = Array.from({ length: 400 }, (_, i) => engine.callTool('net.echo', { x: `v${i}` }))
  const failures = Array.from({ length: 40 }, () => rejectsWith(engine.callTool('net.missing'), codes.TOOL_FAILED, /404/))
  const results = await Promise.all(calls)
  results.forEach((r, i) => assert.deepEqual(r, { x: `v${i}` }))
  await Promise.all(failures)
  // And one after another, as a sequential caller makes them.
  for (let i = 0; i < 50; i++) assert.deepEqual(await engine.callTool('net.echo', { x: `s${i}` }), { x: `s${i}` })
  engine.close()
})

test('a pending HTTP call keeps a script alive until it settles; then the script exits by itself', async (t) => {
  const base = await startServer(t)
  const script = `
    import { Engine } from 'utp-runtime'
    const engine = new Engine()
    await engine.registerManual(${manualSource(base)}, 'net')
    // Nothing but the call's promise keeps the event loop alive from here on.
    engine.callTool('net.slow', { ms: 400 }).then((r) => console.log(JSON.stringify(r)))
  `
  const started = Date.now()
  const r = await runScript(script)
  assert.equal(r.signal, null, r.stderr)
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout.trim()), { slept: 400 })
  assert.ok(Date.now() - started >= 400)
})

test('a worker thread that is terminated in the middle of HTTP calls does not disturb the process', async (t) => {
  const base = await startServer(t)
  const script = `
    import { Worker } from 'node:worker_threads'
    import { Engine } from 'utp-runtime'
    const manual = ${manualSource(base)}
    const worker = new Worker(\`
      import { parentPort } from 'node:worker_threads'
      import { Engine } from 'utp-runtime'
      const engine = new Engine()
      engine.registerManual(\${JSON.stringify(manual)}, 'net').then(() => {
        for (let i = 0; i < 20; i++) engine.callTool('net.slow', { ms: 300 })
        parentPort.postMessage('calling')
      })
    \`, { eval: true })
    await new Promise((resolve) => worker.once('message', resolve))
    await worker.terminate()
    // The worker's calls finish on the call threads after its environment is gone.
    await new Promise((resolve) => setTimeout(resolve, 500))
    const engine = new Engine()
    await engine.registerManual(manual, 'net')
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => engine.callTool('net.echo', { x: 'm' + i })))
    console.log(results.every((r, i) => r.x === 'm' + i) ? 'ok' : 'wrong results')
  `
  const r = await runScript(script)
  assert.equal(r.signal, null, r.stderr)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), 'ok')
})

test('cli tools run on the call threads too: results, 20 at once, and a timeout that ends the process', async () => {
  const engine = new Engine()
  await engine.registerManual(
    {
      tools: [
        {
          name: 'hello',
          inputs: { type: 'object', properties: { who: { type: 'string' } }, required: ['who'] },
          tool_call_template: { call_template_type: 'cli', commands: [{ command: 'echo hello UTCP_ARG_who_UTCP_END' }] },
        },
        { name: 'sleepy', tool_call_template: { call_template_type: 'cli', commands: [{ command: 'sleep 5' }] } },
      ],
    },
    'sh',
  )
  assert.equal(await engine.callTool('sh.hello', { who: 'node' }), 'hello node')
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) => engine.callTool('sh.hello', { who: `n${i}` })))
  results.forEach((r, i) => assert.equal(r, `hello n${i}`))
  const started = Date.now()
  await rejectsWith(engine.callTool('sh.sleepy', {}, { timeout: 0.3 }), codes.TIMEOUT, /sleepy/)
  assert.ok(Date.now() - started < 3000, `timed out after ${Date.now() - started} ms`)
  engine.close()
})
