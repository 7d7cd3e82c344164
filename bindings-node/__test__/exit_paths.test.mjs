// Every way a process can end with engines it never closed: each scenario is a script
// run in child processes (UTP_EXIT_RUNS times, 20 by default, in parallel batches), which
// must end with the status Node gives that path and print no crash text on stderr.
// (fork() is not a Node path: child_process.fork starts a new process.)
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'

import { packageDir } from './helpers.mjs'

const RUNS = Number(process.env.UTP_EXIT_RUNS ?? 20)
const BATCH = Number(process.env.UTP_EXIT_BATCH ?? 5)
const CRASH_TEXT = ['panicked', 'Fatal', 'Aborted', 'not initialized', 'Segmentation fault', 'core dumped', 'FATAL ERROR']

// Shared by the scripts: an engine with a JS tool, a JS rule and subscribers.
const PRELUDE = `
import { Engine } from 'utp-runtime'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
function busyEngine(config = null, subscribers = 2, rule = true) {
  const e = new Engine(config)
  e.registerTool('t.noop', () => 1, { inputs: { type: 'object' } })
  if (rule) e.domainLayer.addBusinessRule('allow-all', () => true)
  for (let i = 0; i < subscribers; i++) e.eventBus.subscribe('*', async () => { await sleep(1) })
  return e
}
`

/** Run `source` (after PRELUDE) as an ESM script; with `interruptOnReady`, send SIGINT
 * once it prints "ready". Resolves to { status, signal, stdout, stderr, ms }. */
function runChild(source, { interruptOnReady = false, timeout = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const child = spawn(process.execPath, ['--input-type=module', '-e', PRELUDE + source], { cwd: packageDir })
    let stdout = ''
    let stderr = ''
    let interrupted = false
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`no exit within ${timeout} ms; stdout: ${stdout}; stderr: ${stderr}`))
    }, timeout)
    child.stdout.on('data', (chunk) => {
      stdout += chunk
      if (interruptOnReady && !interrupted && stdout.includes('ready\n')) {
        interrupted = true
        child.kill('SIGINT')
      }
    })
    child.stderr.on('data', (chunk) => {
      stderr += chunk
    })
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      resolve({ status, signal, stdout, stderr, ms: Date.now() - started })
    })
  })
}

async function runMany(source, options) {
  const results = []
  for (let i = 0; i < RUNS; i += BATCH) {
    const batch = Array.from({ length: Math.min(BATCH, RUNS - i) }, () => runChild(source, options))
    results.push(...(await Promise.all(batch)))
  }
  return results
}

function assertClean(results, { status = 0, signal = null, stdoutHas, stderrHas, within = 30_000 }) {
  for (const r of results) {
    assert.equal(r.signal, signal, `signal ${r.signal}, expected ${signal}; stderr:\n${r.stderr.slice(-3000)}`)
    assert.equal(r.status, status, `exit status ${r.status}, expected ${status}; stderr:\n${r.stderr.slice(-3000)}`)
    for (const text of CRASH_TEXT) assert.ok(!r.stderr.includes(text), `${text} on stderr:\n${r.stderr.slice(-3000)}`)
    if (stdoutHas) assert.ok(r.stdout.includes(stdoutHas), r.stdout)
    if (stderrHas) assert.ok(r.stderr.includes(stderrHas), r.stderr.slice(-3000))
    assert.ok(r.ms < within, `took ${r.ms} ms`)
  }
}

test('exits by itself with tools, rules and subscribers registered and never closed', async () => {
  assertClean(
    await runMany(`
      const e = busyEngine()
      for (let i = 0; i < 3000; i++) await e.callTool('t.noop', {})
      console.log('done')
    `),
    { stdoutHas: 'done' },
  )
})

test('exits by itself once the calls it left pending settle', async () => {
  // A call in flight keeps the process alive until it settles, as a pending fetch does.
  assertClean(
    await runMany(`
      const e = busyEngine()
      e.registerTool('g.later', async () => { await sleep(200); return 1 }, { inputs: { type: 'object' } })
      e.domainLayer.addBusinessRule('slow-for-g', async (manual) => { if (manual === 'g') await sleep(50); return true })
      for (let i = 0; i < 100; i++) void e.callTool('g.later', {}).then((v) => { if (i === 99) console.log('settled', v) })
      for (let i = 0; i < 100; i++) await e.callTool('t.noop', {})
    `),
    { stdoutHas: 'settled 1' },
  )
})

test('process.exit drops calls that never settle (a tool that never resolves, a rule that never answers)', async () => {
  assertClean(
    await runMany(`
      const e = busyEngine()
      e.registerTool('g.never', () => new Promise(() => {}), { inputs: { type: 'object' } })
      e.registerTool('h.gated', () => 1, { inputs: { type: 'object' } })
      e.domainLayer.addBusinessRule('never-for-h', (manual) => manual === 'h' ? new Promise(() => {}) : true)
      for (let i = 0; i < 100; i++) void e.callTool('g.never', {})
      for (let i = 0; i < 100; i++) void e.callTool('h.gated', {})
      for (let i = 0; i < 100; i++) await e.callTool('t.noop', {})
      await sleep(50)
      console.log('left pending')
      process.exit(0)
    `),
    { stdoutHas: 'left pending' },
  )
})

test('uncaught exception', async () => {
  assertClean(
    await runMany(`
      const e = busyEngine()
      for (let i = 0; i < 1000; i++) void e.callTool('t.noop', {})
      await e.callTool('t.noop', {})
      throw new Error('boom')
    `),
    { status: 1, stderrHas: 'Error: boom' },
  )
})

for (const where of ['tool', 'rule', 'subscriber']) {
  test(`process.exit inside a ${where}`, async () => {
    const setup = {
      tool: `e.registerTool('t.quit', () => process.exit(3), { inputs: { type: 'object' } })`,
      rule: `e.domainLayer.addBusinessRule('quits', (tool) => tool === 't' ? process.exit(3) : true)`,
      subscriber: `e.eventBus.subscribe('tool.succeeded', () => process.exit(3))`,
    }[where]
    assertClean(
      await runMany(`
        const e = busyEngine()
        ${setup}
        for (let i = 0; i < 500; i++) void e.callTool('t.noop', {}).catch(() => {})
        await e.callTool('${where === 'tool' ? 't.quit' : 't.noop'}', {}).catch(() => {})
        await sleep(5000)
        console.log('not reached')
      `),
      { status: 3 },
    )
  })
}

const SLOW_TOOL = `
  e.registerTool('t.slow', async () => { console.log('ready'); await sleep(2000); return 1 }, { inputs: { type: 'object' } })
`

for (const handled of [false, true]) {
  const how = handled ? 'a SIGINT handler that calls process.exit(130)' : 'no SIGINT handler'
  const onSigint = handled ? `process.on('SIGINT', () => process.exit(130))` : ''
  const expect = handled ? { status: 130 } : { status: null, signal: 'SIGINT' }

  test(`Ctrl-C during a call, ${how}`, async () => {
    assertClean(
      await runMany(
        `
        ${onSigint}
        const e = busyEngine()
        ${SLOW_TOOL}
        for (let i = 0; i < 100; i++) await e.callTool('t.noop', {})
        await e.callTool('t.slow', {})
        console.log('not reached')
      `,
        { interruptOnReady: true },
      ),
      expect,
    )
  })

  test(`Ctrl-C during a workflow, ${how}`, async () => {
    assertClean(
      await runMany(
        `
        ${onSigint}
        const e = busyEngine()
        ${SLOW_TOOL}
        await e.runWorkflow({
          name: 'slow',
          steps: [
            { id: 'a', tool: 't.noop' },
            { id: 'b', tool: 't.slow', depends_on: ['a'] },
            { id: 'c', tool: 't.noop', depends_on: ['b'] },
          ],
        })
        console.log('not reached')
      `,
        { interruptOnReady: true },
      ),
      expect,
    )
  })
}

test('process.exit while 1,000 events are queued for slow subscribers', async () => {
  assertClean(
    await runMany(`
      // No JS rule: its answer would wait behind the events on the JS thread.
      const e = busyEngine({ events: { queue_capacity: 5000 } }, 0, false)
      for (let i = 0; i < 3; i++) {
        e.eventBus.subscribe('*', () => { const until = Date.now() + 5; while (Date.now() < until); })
      }
      // Sync tools settle without leaving the JS thread: every event waits in the queues.
      for (let i = 0; i < 1000; i++) await e.callTool('t.noop', {})
      const queued = e.metrics().events.subscribers.map((s) => s.queued)
      console.log('queued', JSON.stringify(queued))
      if (Math.min(...queued) < 1000) throw new Error('too few queued: ' + queued)
      process.exit(0)
    `),
    { stdoutHas: 'queued' },
  )
})

test('a worker thread with an engine is terminated in the middle of calls; the process goes on', async () => {
  assertClean(
    await runMany(`
      import { Worker } from 'node:worker_threads'
      const worker = new Worker(\`
        const { Engine } = await import('utp-runtime')
        const { parentPort } = await import('node:worker_threads')
        const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
        const e = new Engine()
        e.registerTool('w.noop', () => 1, { inputs: { type: 'object' } })
        e.registerTool('w.slow', async () => { await sleep(5000); return 1 }, { inputs: { type: 'object' } })
        e.domainLayer.addBusinessRule('allow', async () => { await sleep(1); return true })
        e.eventBus.subscribe('*', async () => { await sleep(1) })
        for (let i = 0; i < 50; i++) void e.callTool('w.slow', {})
        for (let i = 0; i < 200; i++) await e.callTool('w.noop', {})
        parentPort.postMessage('busy')
        for (;;) await e.callTool('w.noop', {})
      \`, { eval: true, type: 'module' })
      await new Promise((resolve, reject) => { worker.once('message', resolve); worker.once('error', reject) })
      await worker.terminate()
      const e = busyEngine()
      console.log('after the worker:', await e.callTool('t.noop', {}))
    `),
    { stdoutHas: 'after the worker: 1' },
  )
})
