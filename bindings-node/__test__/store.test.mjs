// The SQLite store from JS (docs/design.md §9): a run committed and read back by a new
// engine, the event audit log, ERR_UTP_STORE for a file another engine has open or a
// file that is not a database, recovery of a run whose process was killed with
// SIGKILL (steps committed before the kill are not called again), a run whose tools
// the config names resumed by the constructor itself and finishing on napi's runtime,
// session state across engines, prune, and `{ store }` against the config's `store`.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { once } from 'node:events'

import { Engine, codes } from 'utp-runtime'
import { packageDir, sleep, rejectsWith, throwsWith } from './helpers.mjs'

/** A fresh folder, removed after the test. */
function scratch(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-node-store-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** `n` steps in a chain; each gets its name and the previous output + 1. */
function chain(n, tool = 't.step') {
  const steps = []
  for (let i = 0; i < n; i++) {
    const step = { id: `s${i}`, tool, args: { name: `s${i}`, n: i } }
    if (i) {
      step.depends_on = [`s${i - 1}`]
      step.args.n = `\${{ steps.s${i - 1}.output.n + 1 }}`
    }
    steps.push(step)
  }
  return { name: 'chain', steps, outputs: { last: `\${{ steps.s${n - 1}.output.n }}` } }
}

/** A tool that appends its step's name to `log` and returns `{ n }`. */
function countingTool(log) {
  return (args) => {
    fs.appendFileSync(log, `${args.name}\n`)
    return { n: args.n }
  }
}

function calls(log) {
  return fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean) : []
}

const kinds = (events) => events.map((e) => e.type)
const count = (list, item) => list.filter((x) => x === item).length

test('a run is committed and a new engine reads it back', async (t) => {
  const dir = scratch(t)
  const db = path.join(dir, 'nested', 'utp.db')
  const log = path.join(dir, 'calls.txt')
  let id
  {
    const engine = new Engine(null, { store: `sqlite:${db}` })
    engine.registerTool('t.step', countingTool(log))
    const record = await engine.runWorkflow(chain(3), null, { session: 's1' })
    assert.equal(record.status, 'completed')
    assert.deepEqual(record.outputs, { last: 2 })
    id = record.execution_id
    engine.close()
  }
  assert.ok(fs.existsSync(db))

  const engine = new Engine(null, { store: `sqlite:${db}` })
  t.after(() => engine.close())
  // No tool registered here: the record comes from the store.
  const again = engine.execution(id)
  assert.equal(again.status, 'completed')
  assert.deepEqual(again.outputs, { last: 2 })
  assert.equal(again.session_id, 's1')
  assert.deepEqual(Object.values(again.steps).map((s) => s.status), ['succeeded', 'succeeded', 'succeeded'])
  assert.deepEqual(again.steps.s2.output, { n: 2 })
  const listed = engine.executions()
  assert.deepEqual(listed.map((e) => e.execution_id), [id])
  assert.equal(engine.executions({ status: 'completed', session: 's1' })[0].execution_id, id)
  assert.deepEqual(engine.executions({ status: 'failed' }), [])

  const events = engine.storedEvents({ executionId: id })
  const types = kinds(events)
  assert.equal(count(types, 'workflow.started'), 1, types.join())
  assert.equal(count(types, 'workflow.completed'), 1, types.join())
  assert.equal(count(types, 'step.completed'), 3)
  assert.equal(types[0], 'workflow.started')
  assert.equal(types.at(-1), 'workflow.completed')
  assert.ok(events.every((e) => e.execution_id === id))
  const seqs = events.map((e) => e.seq)
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b))
  assert.equal(new Set(seqs).size, seqs.length)
  // Nothing ran in this engine: none of it is in its in-memory history.
  assert.deepEqual(engine.eventBus.history({ executionId: id }), [])
  assert.deepEqual(calls(log), ['s0', 's1', 's2'])
})

test('storedEvents filters and pages', async (t) => {
  const dir = scratch(t)
  const engine = new Engine(null, { store: `sqlite:${path.join(dir, 'utp.db')}` })
  t.after(() => engine.close())
  engine.registerTool('t.step', countingTool(path.join(dir, 'calls.txt')))
  const first = (await engine.runWorkflow(chain(2))).execution_id
  const second = (await engine.runWorkflow(chain(2))).execution_id
  const steps = engine.storedEvents({ type: 'step.*' })
  assert.ok(steps.length > 0 && steps.every((e) => e.type.startsWith('step.')))
  assert.deepEqual(new Set(steps.map((e) => e.execution_id)), new Set([first, second]))
  assert.deepEqual(kinds(engine.storedEvents({ executionId: second, type: 'workflow.completed' })), ['workflow.completed'])
  const all = engine.storedEvents()
  assert.equal(engine.storedEvents({ limit: 3 }).length, 3)
  const page = engine.storedEvents({ after: all[1].seq, limit: 2 })
  assert.deepEqual(page.map((e) => e.seq), all.slice(2, 4).map((e) => e.seq))
  assert.deepEqual(engine.storedEvents({ after: all.at(-1).seq }), [])
  assert.deepEqual(engine.storedEvents({ since: '2100-01-01T00:00:00Z' }), [])
  assert.equal(engine.storedEvents({ until: '2100-01-01T00:00:00Z' }).length, all.length)
  throwsWith(() => engine.storedEvents({ type: 'workflow.finished' }), codes.INVALID_ARGUMENT, /matches no event type/)
  throwsWith(() => engine.storedEvents({ executionID: first }), codes.INVALID_ARGUMENT, /unknown storedEvents option/)
  throwsWith(() => engine.storedEvents({ after: -1 }), codes.INVALID_ARGUMENT, /after/)
  throwsWith(() => engine.storedEvents('x'), codes.INVALID_ARGUMENT)
})

test('the memory store answers in the same shape', async (t) => {
  const dir = scratch(t)
  const engine = new Engine()
  t.after(() => engine.close())
  engine.registerTool('t.step', countingTool(path.join(dir, 'calls.txt')))
  const id = (await engine.runWorkflow(chain(2))).execution_id
  const types = kinds(engine.storedEvents({ executionId: id }))
  assert.equal(count(types, 'workflow.started'), 1)
  assert.equal(count(types, 'workflow.completed'), 1)
  assert.deepEqual(await engine.recover(), [])
  assert.equal(await engine.prune(0), 0)
})

test('a second engine on the same file is ERR_UTP_STORE; after close() the file is free', (t) => {
  const dir = scratch(t)
  const db = path.join(dir, 'utp.db')
  const first = new Engine(null, { store: `sqlite:${db}` })
  const error = throwsWith(() => new Engine(null, { store: `sqlite:${db}` }), codes.STORE)
  assert.ok(error.message.includes(db), error.message)
  throwsWith(() => new Engine({ store: `sqlite:${db}` }), codes.STORE)
  first.close()
  new Engine({ store: { url: `sqlite:${db}` } }).close()
})

test('a file that is not a database is ERR_UTP_STORE', (t) => {
  const db = path.join(scratch(t), 'utp.db')
  fs.writeFileSync(db, 'this is not a SQLite database, just text\n'.repeat(200))
  throwsWith(() => new Engine(null, { store: `sqlite:${db}` }), codes.STORE)
})

test('bad store options are ERR_UTP_INVALID_ARGUMENT', () => {
  for (const store of ['postgres://x', 'sqlite:', 'sqlite']) {
    throwsWith(() => new Engine(null, { store }), codes.INVALID_ARGUMENT, /store/)
  }
  throwsWith(() => new Engine(null, { store: 5 }), codes.INVALID_ARGUMENT, /store must be a string/)
  throwsWith(() => new Engine(null, { stor: 'memory' }), codes.INVALID_ARGUMENT, /unknown Engine option/)
  throwsWith(
    () => new Engine({ store: { url: 'sqlite:/tmp/never.db', durability: 'fast' } }),
    codes.INVALID_ARGUMENT,
    /durability/,
  )
})

test('{ store } wins over the config url; a relative path is relative to the working directory', (t) => {
  const dir = scratch(t)
  const configured = path.join(dir, 'configured.db')
  const chosen = path.join(dir, 'sub', 'chosen.db')
  const config = { store: { url: `sqlite:${configured}`, durability: 'sync', retention: '30d' } }
  const engine = new Engine(config, { store: `sqlite:${chosen}` })
  engine.setSessionState('s', 'k', 1)
  engine.close()
  assert.ok(fs.existsSync(chosen))
  assert.ok(!fs.existsSync(configured))
  const fromConfig = new Engine(config)
  assert.deepEqual(fromConfig.sessionState('s'), {})
  fromConfig.close()
  assert.ok(fs.existsSync(configured))

  const cwd = process.cwd()
  process.chdir(dir)
  try {
    fs.mkdirSync(path.join(dir, 'conf'))
    fs.writeFileSync(path.join(dir, 'conf', 'utp.json'), '{}')
    new Engine(path.join(dir, 'conf', 'utp.json'), { store: 'sqlite:rel.db' }).close()
  } finally {
    process.chdir(cwd)
  }
  assert.ok(fs.existsSync(path.join(dir, 'rel.db')))
})

test('session state outlives the engine', (t) => {
  const db = path.join(scratch(t), 'utp.db')
  const store = `sqlite:${db}`
  let engine = new Engine(null, { store })
  engine.setSessionState('s1', 'cart', ['a', 'b'], { tenant: 'acme' })
  engine.setSessionState('s2', 'n', 7)
  engine.close()
  engine = new Engine(null, { store })
  assert.deepEqual(engine.sessionState('s1', { tenant: 'acme' }), { cart: ['a', 'b'] })
  assert.deepEqual(engine.sessionState('s1'), {})
  assert.deepEqual(engine.sessionState('s2'), { n: 7 })
  engine.setSessionState('s2', 'n', null)
  engine.close()
  engine = new Engine(null, { store })
  assert.deepEqual(engine.sessionState('s2'), {})
  engine.close()
})

test('prune deletes finished runs older than its age', async (t) => {
  const dir = scratch(t)
  const store = `sqlite:${path.join(dir, 'utp.db')}`
  let engine = new Engine(null, { store })
  engine.registerTool('t.step', countingTool(path.join(dir, 'calls.txt')))
  const id = (await engine.runWorkflow(chain(2))).execution_id
  engine.close()
  engine = new Engine(null, { store })
  t.after(() => engine.close())
  assert.equal(engine.execution(id).status, 'completed')
  assert.equal(await engine.prune('30d'), 0)
  assert.equal(await engine.prune(3600), 0)
  await sleep(50)
  assert.ok((await engine.prune(0.01)) > 0)
  throwsWith(() => engine.execution(id), codes.NOT_FOUND)
  assert.deepEqual(engine.storedEvents({ executionId: id }), [])
  for (const bad of ['soon', -1, true, null, undefined, [1]]) {
    await rejectsWith(engine.prune(bad), codes.INVALID_ARGUMENT, /olderThan/)
  }
})

const CHILD = `
const fs = require('node:fs')
const { Engine } = require(process.env.UTP_INDEX)
const [db, log] = process.argv.slice(2)
const engine = new Engine(null, { store: 'sqlite:' + db })
engine.registerTool('t.step', (args) => {
  fs.appendFileSync(log, args.name + '\\n')
  if (args.name === 's2') return new Promise(() => {}) // killed here, with SIGKILL, by the test
  return { n: args.n }
})
setInterval(() => {}, 1000)
const id = engine.startWorkflow(JSON.parse(process.env.UTP_WORKFLOW), null, { session: 'crash' })
process.stdout.write(id + '\\n')
`

test('a run killed with SIGKILL is resumed by a new engine; committed steps are not called again', async (t) => {
  const dir = scratch(t)
  const db = path.join(dir, 'utp.db')
  const log = path.join(dir, 'calls.txt')
  const script = path.join(dir, 'child.cjs')
  fs.writeFileSync(script, CHILD)
  const child = spawn(process.execPath, [script, db, log], {
    env: { ...process.env, UTP_INDEX: path.join(packageDir, 'index.js'), UTP_WORKFLOW: JSON.stringify(chain(4)) },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.after(() => child.kill('SIGKILL'))
  let out = ''
  child.stdout.on('data', (chunk) => {
    out += chunk
  })
  const deadline = Date.now() + 30_000
  while (!calls(log).includes('s2')) {
    assert.equal(child.exitCode, null, 'the child exited before step s2')
    assert.ok(Date.now() < deadline, 'step s2 never started')
    await sleep(20)
  }
  const exited = once(child, 'exit')
  child.kill('SIGKILL')
  const [code, signal] = await exited
  assert.equal(code, null)
  assert.equal(signal, 'SIGKILL')
  const id = out.trim()
  assert.ok(id, 'the child printed no execution id')
  assert.deepEqual(calls(log), ['s0', 's1', 's2'])

  {
    const engine = new Engine(null, { store: `sqlite:${db}` })
    // Its tool is not registered yet: the run is left in the store as it was.
    const left = engine.execution(id)
    assert.equal(left.status, 'running')
    assert.equal(left.steps.s1.status, 'succeeded')
    assert.equal(left.steps.s3.status, 'pending')
    assert.deepEqual(engine.executions({ status: 'running' }).map((e) => e.execution_id), [id])

    engine.registerTool('t.step', countingTool(log))
    assert.deepEqual(await engine.recover(), [id])
    assert.deepEqual(await engine.recover(), []) // already running here
    const record = await engine.waitExecution(id)
    assert.equal(record.status, 'completed', JSON.stringify(record.error))
    assert.deepEqual(record.outputs, { last: 3 })
    assert.equal(record.session_id, 'crash')
    assert.deepEqual(record.steps.s1.output, { n: 1 })
    const types = kinds(engine.storedEvents({ executionId: id }))
    assert.equal(count(types, 'workflow.started'), 1)
    assert.equal(count(types, 'workflow.completed'), 1)
    assert.equal(count(types, 'step.completed'), 4)
    engine.close()
  }
  // s0 and s1 were committed before the kill: never called again; s2 ran again.
  assert.deepEqual(calls(log), ['s0', 's1', 's2', 's2', 's3'])

  const engine = new Engine(null, { store: `sqlite:${db}` })
  assert.equal(engine.execution(id).status, 'completed')
  assert.deepEqual(await engine.recover(), [])
  engine.close()
})

/** CLI tools s0, s1, s2 (so a config can name them): each appends its name to `log`;
 * s1 then waits until the file `gate` exists. */
function shellManual(log, gate) {
  const tool = (name, extra = '') => ({
    name,
    tool_call_template: { call_template_type: 'cli', commands: [{ command: `sh -c 'echo ${name} >> ${log}${extra}'` }] },
  })
  // An orphaned shell (of a killed child) also ends when the folder is removed.
  const wait = `; while [ ! -f ${gate} ] && [ -d ${path.dirname(gate)} ]; do sleep 0.05; done`
  return { name: 'sh', tools: [tool('s0'), tool('s1', wait), tool('s2')] }
}

const SHELL_CHAIN = {
  name: 'shell',
  steps: [
    { id: 'a', tool: 'sh.s0' },
    { id: 'b', tool: 'sh.s1', depends_on: ['a'] },
    { id: 'c', tool: 'sh.s2', depends_on: ['b'] },
  ],
}

const SHELL_CHILD = `
const { Engine } = require(process.env.UTP_INDEX)
const engine = new Engine(JSON.parse(process.env.UTP_CONFIG))
setInterval(() => {}, 1000)
process.stdout.write(engine.startWorkflow(JSON.parse(process.env.UTP_WORKFLOW)) + '\\n')
`

test('the constructor resumes runs whose tools the config names; they finish on their own', async (t) => {
  const dir = scratch(t)
  const log = path.join(dir, 'calls.txt')
  const gate = path.join(dir, 'gate')
  const config = { manuals: [shellManual(log, gate)], store: `sqlite:${path.join(dir, 'utp.db')}` }
  const script = path.join(dir, 'child.cjs')
  fs.writeFileSync(script, SHELL_CHILD)
  const child = spawn(process.execPath, [script], {
    env: {
      ...process.env,
      UTP_INDEX: path.join(packageDir, 'index.js'),
      UTP_CONFIG: JSON.stringify(config),
      UTP_WORKFLOW: JSON.stringify(SHELL_CHAIN),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.on('data', (chunk) => {
    out += chunk
  })
  try {
    const deadline = Date.now() + 30_000
    while (!calls(log).includes('s1')) {
      assert.equal(child.exitCode, null, 'the child exited before step b')
      assert.ok(Date.now() < deadline, 'step b never started')
      await sleep(20)
    }
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
    const id = out.trim()

    const engine = new Engine(config)
    try {
      // Resumed by the constructor: running already, nothing left for recover().
      assert.deepEqual(await engine.recover(), [])
      assert.ok(['created', 'running'].includes(engine.execution(id).status)) // 'created' until its task starts
      fs.writeFileSync(gate, '')
      const record = await engine.waitExecution(id)
      assert.equal(record.status, 'completed', JSON.stringify(record.error))
    } finally {
      engine.close()
    }
    // Step a was committed before the kill: not run again; b ran twice (killed, resumed).
    assert.deepEqual(calls(log), ['s0', 's1', 's1', 's2'])
  } finally {
    // Always let the shells go (the killed child's orphaned one too), before the folder goes.
    fs.writeFileSync(gate, '')
    child.kill('SIGKILL')
  }
})

test('close() mid-run releases the file at once and leaves the run for the next engine', async (t) => {
  const dir = scratch(t)
  const store = `sqlite:${path.join(dir, 'utp.db')}`
  const log = path.join(dir, 'calls.txt')
  const engine = new Engine(null, { store })
  engine.registerTool('t.step', (args) => {
    fs.appendFileSync(log, `${args.name}\n`)
    return args.name === 's1' ? new Promise(() => {}) : { n: args.n }
  })
  const id = engine.startWorkflow(chain(3))
  const waiting = engine.waitExecution(id)
  while (!calls(log).includes('s1')) await sleep(5)
  engine.close()
  const stopped = await waiting
  assert.equal(stopped.status, 'cancelled')
  assert.match(stopped.error.message, /engine was closed/)

  const again = new Engine(null, { store }) // the file is free at once
  t.after(() => again.close())
  const left = again.execution(id)
  assert.equal(left.status, 'running')
  assert.equal(left.steps.s0.status, 'succeeded')
  again.registerTool('t.step', countingTool(log))
  assert.deepEqual(await again.recover(), [id])
  assert.deepEqual((await again.waitExecution(id)).outputs, { last: 2 })
  assert.deepEqual(calls(log), ['s0', 's1', 's1', 's2'])
})

test('a closed engine refuses the store methods', async () => {
  const engine = new Engine()
  engine.close()
  await rejectsWith(engine.recover(), codes.INVALID_ARGUMENT, /closed/)
  throwsWith(() => engine.storedEvents(), codes.INVALID_ARGUMENT, /closed/)
  await rejectsWith(engine.prune(1), codes.INVALID_ARGUMENT, /closed/)
})
