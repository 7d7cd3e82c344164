// Workflows from JS (docs/design.md §4, §7): runWorkflow / startWorkflow / waitExecution over
// JS tools, data between steps, `if`, retries, fallbacks on policy denials,
// validation, YAML text and files, cancel / suspend / resume, session state,
// concurrent runs, execution listings, and the original UTP examples (a
// `step.completed` subscriber, the max-bet JS rule) inside workflows.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'

import { Engine, UtpError, codes } from 'utp-runtime'
import { packageDir, sleep, rejectsWith, throwsWith, until } from './helpers.mjs'

/** A promise that `release()` resolves, for tools that wait. */
function gate() {
  let release
  const opened = new Promise((resolve) => {
    release = resolve
  })
  return { opened, release }
}

/** The shop tools of the docs/design.md §7 example, as JS functions, with a call log. */
function shopEngine(config = undefined) {
  const engine = new Engine(config)
  const log = []
  const sku = { type: 'object', properties: { sku: { type: 'string' } }, required: ['sku'] }
  engine.registerTool(
    'shop.getInventory',
    (args) => {
      log.push(`get ${args.sku}`)
      return { sku: args.sku, count: 4 }
    },
    { inputs: sku },
  )
  engine.registerTool(
    'shop.setInventory',
    async (args) => {
      log.push(`set ${args.sku} ${args.count}`)
      return { sku: args.sku, count: args.count }
    },
    {
      inputs: {
        type: 'object',
        properties: { sku: { type: 'string' }, count: { type: 'integer', minimum: 0 } },
        required: ['sku', 'count'],
      },
    },
  )
  engine.registerTool(
    'shop.queueUpdate',
    (args) => {
      log.push(`queue ${args.sku}`)
      return { queued: true }
    },
    { inputs: sku },
  )
  return { engine, log }
}

/** The docs/design.md §7 restock workflow (with an `if` and a fallback). */
function restock() {
  return {
    name: 'restock',
    inputs: { sku: { type: 'string' }, extra: { type: 'integer', default: 100 } },
    steps: [
      { id: 'stock', tool: 'shop.getInventory', args: { sku: '${{ inputs.sku }}' } },
      {
        id: 'update',
        tool: 'shop.setInventory',
        depends_on: ['stock'],
        if: 'steps.stock.output.count < 10',
        args: { sku: '${{ inputs.sku }}', count: '${{ steps.stock.output.count + inputs.extra }}' },
        on_error: { fallback: { tool: 'shop.queueUpdate', args: { sku: '${{ inputs.sku }}' } } },
      },
      { id: 'log', tool: 'shop.getInventory', depends_on: ['update'], args: { sku: 'log-${{ inputs.sku }}' } },
    ],
    outputs: { new_count: '${{ steps.update.output.count }}', label: 'sku ${{ inputs.sku }}' },
  }
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/

test('a 3-step workflow over JS tools passes data between steps, numbers staying numbers', async () => {
  const engine = new Engine()
  try {
    engine.registerTool('calc.start', (args) => ({ x: args.seed * 2 }))
    engine.registerTool('calc.next', async (args) => {
      await sleep(1)
      return { y: args.value, kind: typeof args.value }
    })
    engine.registerTool('calc.describe', (args) => ({ text: args.text, sum: args.sum }))
    const wf = {
      name: 'three',
      inputs: { seed: { type: 'integer' } },
      steps: [
        { id: 'a', tool: 'calc.start', args: { seed: '${{ inputs.seed }}' } },
        { id: 'b', tool: 'calc.next', depends_on: ['a'], args: { value: '${{ steps.a.output.x + 1 }}' } },
        {
          id: 'c',
          tool: 'calc.describe',
          depends_on: ['b'],
          args: { text: 'b gave ${{ steps.b.output.y }}', sum: '${{ steps.a.output.x + steps.b.output.y }}' },
        },
      ],
      outputs: { y: '${{ steps.b.output.y }}', text: '${{ steps.c.output.text }}' },
    }
    const r = await engine.runWorkflow(wf, { seed: 20 })
    assert.equal(r.status, 'completed', JSON.stringify(r))
    assert.match(r.execution_id, /^exe_/)
    assert.equal(r.workflow, 'three')
    assert.deepEqual(r.inputs, { seed: 20 })
    assert.strictEqual(r.steps.b.output.y, 41, 'a whole-string expression keeps its number type')
    assert.equal(r.steps.b.output.kind, 'number', 'the JS tool received a number')
    assert.deepEqual(r.steps.c.output, { text: 'b gave 41', sum: 81 }, 'mixed strings interpolate')
    assert.deepEqual(r.outputs, { y: 41, text: 'b gave 41' })
    assert.equal(r.error, null)
    assert.equal(r.session_id, null)
    assert.equal(r.tenant, null)
    assert.match(r.created_at, ISO)
    assert.match(r.finished_at, ISO)
    for (const [id, tool] of [
      ['a', 'calc.start'],
      ['b', 'calc.next'],
      ['c', 'calc.describe'],
    ]) {
      const step = r.steps[id]
      assert.equal(step.status, 'succeeded')
      assert.equal(step.tool, tool)
      assert.equal(step.attempts, 1)
      assert.equal(step.error, null)
      assert.match(step.started_at, ISO)
      assert.match(step.finished_at, ISO)
    }
    // The run's events, in order, carry the execution id.
    const kinds = engine.eventBus
      .history({ executionId: r.execution_id })
      .filter((e) => e.type.startsWith('workflow.') || e.type.startsWith('step.'))
      .map((e) => (e.step_id ? `${e.type}:${e.step_id}` : e.type))
    assert.deepEqual(kinds, [
      'workflow.started',
      'step.started:a',
      'step.completed:a',
      'step.started:b',
      'step.completed:b',
      'step.started:c',
      'step.completed:c',
      'workflow.completed',
    ])
    // Inputs are optional when they all have defaults (or there are none).
    const none = await engine.runWorkflow({ name: 'one', steps: [{ id: 'a', tool: 'calc.start', args: { seed: 1 } }] })
    assert.deepEqual(none.steps.a.output, { x: 2 })
    assert.deepEqual(none.inputs, {})
  } finally {
    engine.close()
  }
})

test('the docs/design.md §7 restock workflow: defaults, `if`, outputs', async () => {
  const { engine, log } = shopEngine()
  try {
    const r = await engine.runWorkflow(restock(), { sku: 'A1' })
    assert.equal(r.status, 'completed', JSON.stringify(r))
    assert.deepEqual(r.outputs, { new_count: 104, label: 'sku A1' })
    assert.deepEqual(log, ['get A1', 'set A1 104', 'get log-A1'])
  } finally {
    engine.close()
  }
})

test('a false `if` skips the step and its dependants; the tools are not called', async () => {
  const { engine, log } = shopEngine()
  try {
    const wf = restock()
    wf.steps[1].if = 'steps.stock.output.count > 10'
    const r = await engine.runWorkflow(wf, { sku: 'A1' })
    assert.equal(r.status, 'completed', JSON.stringify(r))
    assert.equal(r.steps.update.status, 'skipped')
    assert.match(r.steps.update.note, /condition/)
    assert.equal(r.steps.update.attempts, 0)
    assert.equal(r.steps.log.status, 'skipped')
    assert.match(r.steps.log.note, /'update'/)
    assert.equal(r.outputs.new_count, null)
    assert.ok(r.warnings.some((w) => w.includes('outputs.new_count')), JSON.stringify(r.warnings))
    assert.deepEqual(log, ['get A1'])
    const skipped = engine.eventBus.history({ executionId: r.execution_id, type: 'step.skipped' })
    assert.deepEqual(
      skipped.map((e) => e.step_id),
      ['update', 'log'],
    )
  } finally {
    engine.close()
  }
})

test('a JS tool that throws twice is retried and succeeds on the third attempt', async () => {
  const engine = new Engine()
  try {
    let calls = 0
    engine.registerTool('flaky.fetch', async (args) => {
      calls += 1
      if (calls <= 2) throw new Error(`temporary failure ${calls}`)
      return { attempt: calls, key: args.key }
    })
    const wf = {
      name: 'retrying',
      steps: [
        { id: 'fetch', tool: 'flaky.fetch', args: { key: 'k' }, retry: { max_attempts: 3, initial_delay: '10ms' } },
      ],
      outputs: { attempt: '${{ steps.fetch.output.attempt }}' },
    }
    const r = await engine.runWorkflow(wf)
    assert.equal(r.status, 'completed', JSON.stringify(r))
    assert.equal(calls, 3)
    assert.equal(r.steps.fetch.attempts, 3)
    assert.deepEqual(r.steps.fetch.output, { attempt: 3, key: 'k' })
    assert.deepEqual(r.outputs, { attempt: 3 })
    const retrying = engine.eventBus.history({ executionId: r.execution_id, type: 'step.retrying' })
    assert.equal(retrying.length, 2)
    assert.equal(retrying[0].data.code, 'TOOL_FAILED')
    assert.match(retrying[0].data.message, /temporary failure 1/)
    assert.equal(retrying[0].tool, 'flaky.fetch')

    // Out of attempts: the step fails with the JS error, and so does the run.
    engine.registerTool('flaky.never', () => {
      throw new TypeError('always broken')
    })
    const failed = await engine.runWorkflow({
      name: 'giving-up',
      steps: [
        { id: 'x', tool: 'flaky.never', retry: { max_attempts: 2, initial_delay: '5ms' } },
        { id: 'y', tool: 'flaky.fetch', depends_on: ['x'] },
      ],
    })
    assert.equal(failed.status, 'failed')
    assert.equal(failed.steps.x.status, 'failed')
    assert.equal(failed.steps.x.attempts, 2)
    assert.equal(failed.steps.x.error.code, 'TOOL_FAILED')
    assert.match(failed.steps.x.error.message, /always broken/)
    assert.equal(failed.error.code, 'TOOL_FAILED')
    assert.equal(failed.steps.y.status, 'skipped')
    // Without `retry` a step runs once.
    calls = 0
    const once = await engine.runWorkflow({ name: 'once', steps: [{ id: 'f', tool: 'flaky.fetch' }] })
    assert.equal(once.status, 'failed')
    assert.equal(calls, 1)
  } finally {
    engine.close()
  }
})

test('a step denied by the config permissions is not retried and falls back', async () => {
  const { engine, log } = shopEngine({
    permissions: { shop: { allowed_actions: ['getInventory', 'queueUpdate'] } },
  })
  try {
    const wf = restock()
    wf.steps[1].retry = { max_attempts: 5, initial_delay: '10ms' }
    const r = await engine.runWorkflow(wf, { sku: 'A1' })
    assert.equal(r.status, 'completed', JSON.stringify(r))
    const update = r.steps.update
    assert.equal(update.status, 'succeeded')
    assert.deepEqual(update.output, { queued: true }, "the fallback's result is the step's output")
    assert.equal(update.attempts, 2, 'one denied attempt (never retried) and the fallback')
    assert.match(update.note, /PERMISSION_DENIED/)
    assert.deepEqual(log, ['get A1', 'queue A1', 'get log-A1'], 'setInventory never ran')
    const completed = engine.eventBus.history({ executionId: r.execution_id, type: 'step.completed' })
    assert.equal(completed.find((e) => e.step_id === 'update').data.fallback, true)
    assert.equal(engine.eventBus.history({ executionId: r.execution_id, type: 'policy.denied' }).length, 1)

    // on_error: continue records the failure and goes on; the default fails the run.
    wf.steps[1].on_error = 'continue'
    const continued = await engine.runWorkflow(wf, { sku: 'B' })
    assert.equal(continued.status, 'completed')
    assert.equal(continued.steps.update.status, 'failed')
    assert.equal(continued.steps.update.error.code, 'PERMISSION_DENIED')
    assert.equal(continued.steps.log.status, 'succeeded')
    delete wf.steps[1].on_error
    const failed = await engine.runWorkflow(wf, { sku: 'C' })
    assert.equal(failed.status, 'failed')
    assert.equal(failed.error.code, 'PERMISSION_DENIED')
    assert.equal(failed.steps.log.status, 'skipped')
  } finally {
    engine.close()
  }
})

test('invalid workflows are refused before anything runs, listing every problem', async () => {
  const { engine, log } = shopEngine()
  try {
    const bad = {
      name: 'bad',
      steps: [
        { id: 'a', tool: 'shop.nope' },
        { id: 'a', tool: 'shop.getInventory', args: { sku: '1' } },
        { id: 'b', tool: 'shop.getInventory', args: { sku: '1' }, depends_on: ['zz'] },
        { id: 'c', tool: 'shop.setInventory', args: { sku: '1', count: -5 } },
      ],
    }
    const error = throwsWith(
      () => engine.validateWorkflow(bad),
      codes.VALIDATION_FAILED,
      /workflow 'bad' is invalid/,
      /no tool named 'shop\.nope'/,
      /two steps have the id 'a'/,
      /no step has the id 'zz'/,
      /\/count/,
    )
    assert.equal(error.name, 'UtpError')
    await rejectsWith(engine.runWorkflow(bad), codes.VALIDATION_FAILED, /shop\.nope/)
    throwsWith(() => engine.startWorkflow(bad), codes.VALIDATION_FAILED, /shop\.nope/)

    const cycle = {
      name: 'cycle',
      steps: [
        { id: 'a', tool: 'shop.getInventory', args: { sku: '1' }, depends_on: ['c'] },
        { id: 'b', tool: 'shop.getInventory', args: { sku: '1' }, depends_on: ['a'] },
        { id: 'c', tool: 'shop.getInventory', args: { sku: '1' }, depends_on: ['b'] },
      ],
    }
    throwsWith(() => engine.validateWorkflow(cycle), codes.VALIDATION_FAILED, /cycle/, /→/)
    throwsWith(
      () =>
        engine.validateWorkflow({
          name: 'x',
          steps: [{ id: 'a', tool: 'shop.getInventory', args: { sku: '${{ inputs.sku + }}' } }],
        }),
      codes.VALIDATION_FAILED,
      /steps\.a\.args\.sku/,
    )
    throwsWith(
      () => engine.validateWorkflow({ name: 'x', bogus: 1, steps: [{ id: 'a', tool: 'shop.getInventory' }] }),
      codes.VALIDATION_FAILED,
      /bogus/,
    )
    throwsWith(
      () =>
        engine.validateWorkflow({
          name: 'x',
          steps: [{ id: 'a', tool: 'shop.getInventory', args: { sku: '1' }, retry: { max_attempts: 0 } }],
        }),
      codes.VALIDATION_FAILED,
      /max_attempts/,
    )

    // Inputs are checked against the declared ones.
    await rejectsWith(engine.runWorkflow(restock(), { sku: 5 }), codes.VALIDATION_FAILED, /inputs/)
    await rejectsWith(engine.runWorkflow(restock(), {}), codes.VALIDATION_FAILED, /sku/)
    assert.deepEqual(log, [], 'nothing ran')

    // A valid workflow validates to its definition.
    assert.deepEqual(engine.validateWorkflow(restock()), restock())

    // Arguments of the wrong shape are the caller's mistake.
    throwsWith(() => engine.validateWorkflow(5), codes.INVALID_ARGUMENT, /workflow must be/, /a number/)
    throwsWith(() => engine.validateWorkflow(''), codes.INVALID_ARGUMENT, /empty/)
    throwsWith(() => engine.validateWorkflow(undefined), codes.INVALID_ARGUMENT, /workflow/)
    await rejectsWith(engine.runWorkflow(restock(), [1]), codes.INVALID_ARGUMENT, /inputs must be an object/)
    await rejectsWith(engine.runWorkflow(restock(), { sku: 1n }), codes.INVALID_ARGUMENT, /BigInt/)
    await rejectsWith(
      engine.runWorkflow(restock(), { sku: 'A' }, { sesion: 's' }),
      codes.INVALID_ARGUMENT,
      /unknown runWorkflow option 'sesion'/,
    )
    await rejectsWith(engine.runWorkflow(restock(), { sku: 'A' }, { timeout: NaN }), codes.INVALID_ARGUMENT, /timeout/)
    await rejectsWith(engine.runWorkflow(restock(), { sku: 'A' }, { timeout: -1 }), codes.INVALID_ARGUMENT, /timeout/)
    await rejectsWith(engine.runWorkflow(restock(), { sku: 'A' }, { tenant: 3 }), codes.INVALID_ARGUMENT, /tenant/)
    throwsWith(() => engine.startWorkflow(restock(), { sku: 'A' }, 'fast'), codes.INVALID_ARGUMENT, /options/)
    assert.deepEqual(log, [], 'still nothing ran')
  } finally {
    engine.close()
  }
})

test('workflows as YAML text, JSON text and file paths', async () => {
  const { engine, log } = shopEngine()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-node-wf-'))
  try {
    const yaml = [
      'name: from-yaml',
      'inputs: {sku: {type: string}}',
      'steps:',
      '  - id: stock',
      '    tool: shop.getInventory',
      '    args: {sku: "${{ inputs.sku }}"}',
      '  - id: update',
      '    tool: shop.setInventory',
      '    depends_on: [stock]',
      '    args: {sku: "${{ inputs.sku }}", count: "${{ steps.stock.output.count * 2 }}"}',
      'outputs: {count: "${{ steps.update.output.count }}"}',
      '',
    ].join('\n')
    const r = await engine.runWorkflow(yaml, { sku: 'Y' })
    assert.equal(r.status, 'completed', JSON.stringify(r))
    assert.equal(r.workflow, 'from-yaml')
    assert.strictEqual(r.outputs.count, 8)
    assert.equal(engine.validateWorkflow(yaml).steps.length, 2, 'the YAML parses to the definition')

    const json = JSON.stringify({ name: 'from-json', steps: [{ id: 'a', tool: 'shop.getInventory', args: { sku: 'J' } }] })
    assert.equal((await engine.runWorkflow(json)).status, 'completed')

    const file = path.join(dir, 'restock.yaml')
    fs.writeFileSync(file, yaml)
    const fromFile = await engine.runWorkflow(file, { sku: 'F' })
    assert.equal(fromFile.status, 'completed')
    assert.strictEqual(fromFile.outputs.count, 8)
    assert.equal(engine.validateWorkflow(file).name, 'from-yaml')
    const id = engine.startWorkflow(file, { sku: 'G' }, { session: 'files' })
    assert.equal((await engine.waitExecution(id)).status, 'completed')

    const jsonFile = path.join(dir, 'restock.json')
    fs.writeFileSync(jsonFile, JSON.stringify(restock()))
    assert.deepEqual((await engine.runWorkflow(jsonFile, { sku: 'H' })).outputs, { new_count: 104, label: 'sku H' })

    // A broken file names itself.
    const broken = path.join(dir, 'broken.yaml')
    fs.writeFileSync(broken, 'name: broken\nsteps:\n  - id: a\n    tool: shop.nope\n')
    throwsWith(() => engine.validateWorkflow(broken), codes.VALIDATION_FAILED, /broken\.yaml/, /shop\.nope/)
    throwsWith(() => engine.validateWorkflow(path.join(dir, 'missing.yaml')), codes.NOT_FOUND, /missing\.yaml/)
    await rejectsWith(engine.runWorkflow(path.join(dir, 'missing.yaml')), codes.NOT_FOUND)
    assert.deepEqual(log, [
      'get Y',
      'set Y 8',
      'get J',
      'get F',
      'set F 8',
      'get G',
      'set G 8',
      'get H',
      'set H 104',
      'get log-H',
    ])
  } finally {
    engine.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('startWorkflow returns an id at once; execution shows progress; waitExecution resolves', async () => {
  const engine = new Engine()
  try {
    const { opened, release } = gate()
    engine.registerTool('slow.wait', async () => {
      await opened
      return { waited: true }
    })
    engine.registerTool('slow.after', (args) => ({ got: args.v }))
    const wf = {
      name: 'started',
      steps: [
        { id: 'first', tool: 'slow.wait' },
        { id: 'second', tool: 'slow.after', depends_on: ['first'], args: { v: '${{ steps.first.output.waited }}' } },
      ],
    }
    const id = engine.startWorkflow(wf, {}, { session: 's-start', tenant: 'acme', user: 'u1', timeout: 30 })
    assert.equal(typeof id, 'string')
    assert.match(id, /^exe_/)
    await until(() => engine.execution(id).steps.first.status === 'running')
    const live = engine.execution(id)
    assert.equal(live.status, 'running')
    assert.equal(live.steps.second.status, 'pending')
    assert.equal(live.finished_at, null)
    assert.equal(live.session_id, 's-start')
    assert.equal(live.tenant, 'acme')
    const waiting = engine.waitExecution(id)
    release()
    const done = await waiting
    assert.equal(done.status, 'completed')
    assert.equal(done.execution_id, id)
    assert.deepEqual(done.steps.second.output, { got: true })
    assert.deepEqual(engine.execution(id), done, 'the finished record stays the same')
    assert.deepEqual(await engine.waitExecution(id), done, 'waiting for a finished run resolves at once')

    throwsWith(() => engine.execution('exe_nope'), codes.NOT_FOUND, /exe_nope/)
    await rejectsWith(engine.waitExecution('exe_nope'), codes.NOT_FOUND, /exe_nope/)
    throwsWith(() => engine.cancel('exe_nope'), codes.NOT_FOUND)
    throwsWith(() => engine.suspend('exe_nope'), codes.NOT_FOUND)
    throwsWith(() => engine.resume('exe_nope'), codes.NOT_FOUND)
    throwsWith(() => engine.execution(42), codes.INVALID_ARGUMENT)
  } finally {
    engine.close()
  }
})

test('cancelling a run whose step hangs returns quickly; timeouts and AbortSignals too', async () => {
  const engine = new Engine()
  try {
    let started = 0
    engine.registerTool('stuck.forever', () => {
      started += 1
      return new Promise(() => {}) // never settles
    })
    engine.registerTool('stuck.after', () => 'unreachable')
    const wf = {
      name: 'hang',
      steps: [
        { id: 'hang', tool: 'stuck.forever', timeout: '30s' },
        { id: 'after', tool: 'stuck.after', depends_on: ['hang'] },
      ],
    }
    const id = engine.startWorkflow(wf)
    await until(() => engine.execution(id).steps.hang.status === 'running')
    await sleep(30)
    const t0 = performance.now()
    assert.equal(engine.cancel(id), true)
    const r = await engine.waitExecution(id)
    const took = performance.now() - t0
    assert.ok(took < 500, `cancel took ${took.toFixed(1)} ms`)
    assert.equal(r.status, 'cancelled')
    assert.equal(r.steps.hang.status, 'failed')
    assert.equal(r.steps.hang.error.code, 'CANCELLED')
    assert.notEqual(r.steps.after.status, 'succeeded')
    assert.equal(engine.cancel(id), false, 'cancelling a finished run is a no-op')
    assert.equal(engine.suspend(id), false)
    assert.equal(engine.eventBus.history({ executionId: id, type: 'workflow.cancelled' }).length, 1)

    // The `timeout` option bounds the run and cancels the hanging call.
    const t1 = performance.now()
    const timed = await engine.runWorkflow(wf, {}, { timeout: 0.15 })
    assert.equal(timed.status, 'failed')
    assert.equal(timed.error.code, 'TIMEOUT')
    assert.ok(performance.now() - t1 < 2000)

    // An AbortSignal cancels a runWorkflow.
    const controller = new AbortController()
    const running = engine.runWorkflow(wf, {}, { signal: controller.signal, session: 'aborting' })
    await until(() => engine.executions({ session: 'aborting', status: 'running' }).length === 1)
    const t2 = performance.now()
    controller.abort()
    const aborted = await running
    assert.ok(performance.now() - t2 < 500)
    assert.equal(aborted.status, 'cancelled')
    assert.equal(aborted.session_id, 'aborting')
    await rejectsWith(engine.runWorkflow(wf, {}, { signal: controller.signal }), codes.CANCELLED, /aborted/)
    await rejectsWith(engine.runWorkflow(wf, {}, { signal: 'stop' }), codes.INVALID_ARGUMENT, /AbortSignal/)
    assert.equal(started, 3)
  } finally {
    engine.close()
  }
})

test('a suspended run starts no new steps until resumed', async () => {
  const engine = new Engine()
  try {
    const { opened, release } = gate()
    let second = 0
    engine.registerTool('s.wait', async () => {
      await opened
      return 1
    })
    engine.registerTool('s.ok', () => {
      second += 1
      return 2
    })
    const wf = {
      name: 'suspending',
      steps: [
        { id: 'first', tool: 's.wait' },
        { id: 'second', tool: 's.ok', depends_on: ['first'] },
      ],
    }
    const id = engine.startWorkflow(wf)
    await until(() => engine.execution(id).steps.first.status === 'running')
    assert.equal(engine.suspend(id), true)
    assert.equal(engine.suspend(id), false, 'already suspended')
    assert.equal(engine.execution(id).status, 'suspended')
    assert.deepEqual(
      engine.executions({ status: 'suspended' }).map((e) => e.execution_id),
      [id],
    )
    release()
    await until(() => engine.execution(id).steps.first.status === 'succeeded')
    await sleep(50)
    let r = engine.execution(id)
    assert.equal(r.status, 'suspended')
    assert.equal(r.steps.second.status, 'pending', 'no new step started')
    assert.equal(second, 0)
    assert.equal(engine.resume(id), true)
    assert.equal(engine.resume(id), false, 'not suspended any more')
    r = await engine.waitExecution(id)
    assert.equal(r.status, 'completed')
    assert.equal(r.steps.second.output, 2)
    const kinds = engine.eventBus.history({ executionId: id, type: 'workflow.*' }).map((e) => e.type)
    assert.deepEqual(kinds, ['workflow.started', 'workflow.suspended', 'workflow.resumed', 'workflow.completed'])
  } finally {
    engine.close()
  }
})

test('session state: steps read and write it, the API gets and sets it per (tenant, session)', async () => {
  const { engine } = shopEngine()
  try {
    const wf = {
      name: 'stateful',
      steps: [
        {
          id: 'stock',
          tool: 'shop.getInventory',
          args: { sku: "${{ has(state.last) ? state.last : 'none' }}" },
          set_state: { last: "${{ steps.stock.output.sku + '!' }}", count: '${{ steps.stock.output.count }}' },
        },
      ],
    }
    const opts = { tenant: 'acme', session: 's1' }
    let r = await engine.runWorkflow(wf, {}, opts)
    assert.equal(r.steps.stock.output.sku, 'none')
    assert.deepEqual(engine.sessionState('s1', { tenant: 'acme' }), { last: 'none!', count: 4 })
    r = await engine.runWorkflow(wf, {}, opts)
    assert.equal(r.steps.stock.output.sku, 'none!')
    assert.equal(r.session_id, 's1')
    assert.equal(r.tenant, 'acme')
    assert.deepEqual(engine.sessionState('s1'), {}, 'state is per (tenant, session)')
    assert.deepEqual(engine.sessionState('s1', { tenant: 'other' }), {})

    // Set from JS, read by the next run; null / undefined remove a key.
    engine.setSessionState('s1', 'last', 'from-js', { tenant: 'acme' })
    engine.setSessionState('s1', 'nested', { a: [1, 2], b: null }, { tenant: 'acme' })
    r = await engine.runWorkflow(wf, {}, opts)
    assert.equal(r.steps.stock.output.sku, 'from-js')
    assert.deepEqual(engine.sessionState('s1', { tenant: 'acme' }), {
      last: 'from-js!',
      count: 4,
      nested: { a: [1, 2], b: null },
    })
    engine.setSessionState('s1', 'nested', null, { tenant: 'acme' })
    engine.setSessionState('s1', 'count', undefined, { tenant: 'acme' })
    assert.deepEqual(engine.sessionState('s1', { tenant: 'acme' }), { last: 'from-js!' })
    engine.setSessionState('plain', 'k', 1)
    assert.deepEqual(engine.sessionState('plain'), { k: 1 })

    throwsWith(() => engine.sessionState(''), codes.INVALID_ARGUMENT, /session/)
    throwsWith(() => engine.setSessionState('s', '', 1), codes.INVALID_ARGUMENT, /key/)
    throwsWith(() => engine.setSessionState('s', 'k', 1n), codes.INVALID_ARGUMENT, /BigInt/)
    throwsWith(() => engine.sessionState('s', { tenat: 'x' }), codes.INVALID_ARGUMENT, /tenat/)
  } finally {
    engine.close()
  }
})

test('20 concurrent runs with Promise.all keep their data apart', async () => {
  const engine = new Engine()
  try {
    let inflight = 0
    let peak = 0
    engine.registerTool('par.double', async (args) => {
      inflight += 1
      peak = Math.max(peak, inflight)
      await sleep(20)
      inflight -= 1
      return { v: args.n * 2 }
    })
    engine.registerTool('par.inc', (args) => ({ v: args.n + 1 }))
    const wf = {
      name: 'parallel',
      inputs: { n: { type: 'integer' } },
      steps: [
        { id: 'double', tool: 'par.double', args: { n: '${{ inputs.n }}' } },
        { id: 'inc', tool: 'par.inc', depends_on: ['double'], args: { n: '${{ steps.double.output.v }}' } },
      ],
      outputs: { result: '${{ steps.inc.output.v }}' },
    }
    const t0 = performance.now()
    const runs = await Promise.all(
      Array.from({ length: 20 }, (_, n) => engine.runWorkflow(wf, { n }, { session: `par-${n % 2}` })),
    )
    const took = performance.now() - t0
    runs.forEach((r, n) => {
      assert.equal(r.status, 'completed')
      assert.deepEqual(r.inputs, { n })
      assert.strictEqual(r.outputs.result, n * 2 + 1)
    })
    assert.equal(new Set(runs.map((r) => r.execution_id)).size, 20, 'unique execution ids')
    assert.ok(peak > 1, `the runs overlapped (peak ${peak}, ${took.toFixed(0)} ms in all)`)
    assert.equal(engine.executions({ session: 'par-0' }).length, 10)
  } finally {
    engine.close()
  }
})

test('executions lists records oldest first, filtered by status and session, without outputs', async () => {
  const engine = new Engine()
  try {
    engine.registerTool('l.ok', () => ({ secret: 'output' }))
    engine.registerTool('l.fail', () => {
      throw new Error('no')
    })
    const ok = { name: 'ok', steps: [{ id: 'a', tool: 'l.ok' }] }
    const bad = { name: 'bad', steps: [{ id: 'a', tool: 'l.fail' }] }
    const r1 = await engine.runWorkflow(ok, {}, { session: 'alpha' })
    const r2 = await engine.runWorkflow(bad, {}, { session: 'alpha' })
    const r3 = await engine.runWorkflow(ok, {}, { session: 'beta' })
    const all = engine.executions()
    assert.deepEqual(
      all.map((e) => e.execution_id),
      [r1, r2, r3].map((r) => r.execution_id),
    )
    assert.deepEqual(engine.executions(null), all)
    for (const e of all) {
      assert.equal('outputs' in e, false)
      assert.equal('inputs' in e, false)
      assert.equal('output' in e.steps.a, false)
      assert.equal(typeof e.steps.a.status, 'string')
    }
    assert.deepEqual(
      engine.executions({ session: 'alpha' }).map((e) => e.workflow),
      ['ok', 'bad'],
    )
    assert.deepEqual(
      engine.executions({ status: 'failed' }).map((e) => e.execution_id),
      [r2.execution_id],
    )
    assert.deepEqual(
      engine.executions({ status: 'completed', session: 'beta' }).map((e) => e.execution_id),
      [r3.execution_id],
    )
    assert.deepEqual(engine.executions({ status: 'running' }), [])
    assert.deepEqual(engine.executions({ session: 'nobody' }), [])
    assert.equal(engine.executions({ status: 'failed' })[0].error.code, 'TOOL_FAILED')
    throwsWith(() => engine.executions({ status: 'bogus' }), codes.INVALID_ARGUMENT, /unknown execution status 'bogus'/)
    throwsWith(() => engine.executions({ state: 'failed' }), codes.INVALID_ARGUMENT, /unknown executions option 'state'/)
    throwsWith(() => engine.executions({ status: 1 }), codes.INVALID_ARGUMENT, /status must be a string/)
  } finally {
    engine.close()
  }
})

// The original UTP examples, inside workflows.

/** The original UTP config shape (docs/design.md §6). */
const BETTING_CONFIG = {
  permissions: { betfair: { enabled: true, allowed_actions: ['listMarkets', 'getOdds', 'placeBet'] } },
  business_rules: { max_bet_amount: 1000 },
}

function betWorkflow(amount) {
  return {
    name: 'bet',
    inputs: { market: { type: 'string', default: 'm1' } },
    steps: [
      { id: 'odds', tool: 'betfair.getOdds', args: { market: '${{ inputs.market }}' } },
      {
        id: 'place',
        tool: 'betfair.placeBet',
        depends_on: ['odds'],
        args: { market: '${{ inputs.market }}', amount, odds: '${{ steps.odds.output.odds }}' },
      },
    ],
    outputs: { bet: '${{ steps.place.output.bet_id }}' },
  }
}

function bettingEngine() {
  const engine = new Engine(BETTING_CONFIG)
  const placed = []
  engine.registerTool('betfair.getOdds', (args) => ({ market: args.market, odds: 2.5 }))
  engine.registerTool('betfair.placeBet', (args) => {
    placed.push(args)
    return { bet_id: `b-${placed.length}`, status: 'placed', amount: args.amount }
  })
  return { engine, placed }
}

test("original UTP: eventBus.subscribe('step.completed') sees a workflow step of betfair.placeBet complete", async () => {
  const { engine, placed } = bettingEngine()
  try {
    const seen = []
    const subscription = engine.eventBus.subscribe('step.completed', (event) => {
      if (event.tool === 'betfair.placeBet') seen.push(event)
    })
    const all = []
    engine.eventBus.subscribe('step.*', async (event) => {
      all.push(`${event.type}:${event.step_id}`)
    })
    const r = await engine.runWorkflow(betWorkflow(500))
    assert.equal(r.status, 'completed', JSON.stringify(r))
    assert.deepEqual(r.outputs, { bet: 'b-1' })
    assert.deepEqual(placed, [{ market: 'm1', amount: 500, odds: 2.5 }])
    assert.equal(await engine.eventBus.flush(), true)
    assert.equal(seen.length, 1)
    const [event] = seen
    assert.equal(event.type, 'step.completed')
    assert.equal(event.tool, 'betfair.placeBet')
    assert.equal(event.step_id, 'place')
    assert.equal(event.execution_id, r.execution_id)
    assert.equal(event.workflow, 'bet')
    assert.equal(event.data.attempts, 1)
    assert.equal(typeof event.data.duration_ms, 'number')
    assert.deepEqual(all, ['step.started:odds', 'step.completed:odds', 'step.started:place', 'step.completed:place'])
    subscription.unsubscribe()
  } finally {
    engine.close()
  }
})

test('original UTP: the max-bet JS rule denies a workflow step with amount 1500', async () => {
  const { engine, placed } = bettingEngine()
  try {
    const MAX_BET = BETTING_CONFIG.business_rules.max_bet_amount
    const seen = []
    engine.domainLayer.addBusinessRule('max_bet', (tool, action, params) => {
      seen.push(`${tool}.${action}`)
      return !(tool === 'betfair' && action === 'placeBet' && params.amount > MAX_BET)
    })
    const denials = []
    engine.eventBus.subscribe('policy.denied', (event) => denials.push(event))

    const r = await engine.runWorkflow(betWorkflow(1500))
    assert.equal(r.status, 'failed', JSON.stringify(r))
    assert.equal(r.error.code, 'PERMISSION_DENIED')
    assert.equal(r.steps.odds.status, 'succeeded')
    assert.equal(r.steps.place.status, 'failed')
    assert.equal(r.steps.place.error.code, 'PERMISSION_DENIED')
    assert.match(r.steps.place.error.message, /max_bet/)
    assert.equal(r.steps.place.attempts, 1)
    assert.deepEqual(placed, [], 'the denied bet was never placed')
    assert.deepEqual(seen, ['betfair.getOdds', 'betfair.placeBet'], 'the rule saw both steps as calls')
    assert.equal(await engine.eventBus.flush(), true)
    assert.equal(denials.length, 1)
    assert.equal(denials[0].tool, 'betfair.placeBet')

    // Within the limit the same workflow places the bet; a retry policy does not retry a denial.
    const ok = await engine.runWorkflow(betWorkflow(500))
    assert.equal(ok.status, 'completed')
    assert.deepEqual(ok.outputs, { bet: 'b-1' })
    const wf = betWorkflow(1500)
    wf.steps[1].retry = { max_attempts: 3, initial_delay: '10ms' }
    const denied = await engine.runWorkflow(wf)
    assert.equal(denied.steps.place.attempts, 1)
    assert.equal(placed.length, 1)
  } finally {
    engine.close()
  }
})

test('a closed engine refuses every workflow method', async () => {
  const engine = new Engine()
  engine.close()
  const wf = { name: 'x', steps: [{ id: 'a', tool: 'm.t' }] }
  await rejectsWith(engine.runWorkflow(wf), codes.INVALID_ARGUMENT, /closed/)
  await rejectsWith(engine.waitExecution('exe_1'), codes.INVALID_ARGUMENT, /closed/)
  for (const fn of [
    () => engine.startWorkflow(wf),
    () => engine.validateWorkflow(wf),
    () => engine.execution('exe_1'),
    () => engine.executions(),
    () => engine.cancel('exe_1'),
    () => engine.suspend('exe_1'),
    () => engine.resume('exe_1'),
    () => engine.sessionState('s'),
    () => engine.setSessionState('s', 'k', 1),
  ]) {
    throwsWith(fn, codes.INVALID_ARGUMENT, /closed/)
  }
})

test('a script that starts workflows and never waits exits by itself, even mid-step', () => {
  const started = Date.now()
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `
      import { Engine } from 'utp-runtime'
      const engine = new Engine()
      engine.registerTool('t.hang', () => new Promise(() => {}))
      engine.registerTool('t.slow', async () => { await new Promise((r) => setTimeout(r, 20)); return 1 })
      engine.startWorkflow({ name: 'h', steps: [{ id: 'a', tool: 't.hang' }] })
      engine.startWorkflow({ name: 's', steps: [{ id: 'a', tool: 't.slow' }, { id: 'b', tool: 't.slow', depends_on: ['a'] }] })
      console.log('started')
    `,
    ],
    { cwd: packageDir, encoding: 'utf8', timeout: 30_000 },
  )
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.signal, null)
  assert.equal(r.stdout.trim(), 'started')
  assert.ok(Date.now() - started < 20_000)
})

test('bad arguments to every workflow method end in UtpErrors, never a crash', async () => {
  const engine = new Engine()
  try {
    engine.registerTool('m.t', () => 1)
    const weird = [undefined, null, 0, NaN, '', '{', '[]', 'a: [', true, [], [1], {}, { name: 1 }, () => 1,
      Symbol('s'), 10n, new Date(0), new Map(), { name: 'x', steps: 'no' }, { name: 'x', steps: [null] }]
    let calls = 0
    const note = (e) => {
      if (!(e instanceof UtpError)) throw new Error(`not a UtpError: ${e}`)
    }
    for (const a of weird) {
      for (const b of weird) {
        for (const fn of ['validateWorkflow', 'startWorkflow', 'execution', 'executions', 'cancel', 'suspend', 'resume',
          'sessionState', 'setSessionState']) {
          calls++
          try {
            engine[fn](a, b, b)
          } catch (e) {
            note(e)
          }
        }
        for (const fn of ['runWorkflow', 'waitExecution']) {
          calls++
          await engine[fn](a, b, b).then(() => {}, note)
        }
      }
    }
    assert.ok(calls > 4000)
  } finally {
    engine.close()
  }
})
