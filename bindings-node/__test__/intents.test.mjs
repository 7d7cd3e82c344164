// Intents from JS: registerIntent with a workflow or a JS handler (sync or async,
// reading and writing session state, calling tools), submitIntent records, failures
// of handlers as `failed` records, the errors of the API, and a registered intent
// never keeping the process alive.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'

import { Engine, UtpError, codes } from 'utp-runtime'
import { packageDir, sleep, rejectsWith, throwsWith } from './helpers.mjs'

/** An engine with JS shop tools and a call log. */
function shopEngine() {
  const engine = new Engine()
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
  engine.registerTool('shop.setInventory', async (args) => {
    log.push(`set ${args.sku} ${args.count}`)
    return { sku: args.sku, count: args.count }
  })
  return { engine, log }
}

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
        args: { sku: '${{ inputs.sku }}', count: '${{ steps.stock.output.count + inputs.extra }}' },
      },
    ],
    outputs: { new_count: '${{ steps.update.output.count }}' },
  }
}

const EXEC_ID = /^\S+$/

test('a workflow intent runs the workflow with the params as inputs and returns its record', async () => {
  const { engine, log } = shopEngine()
  try {
    assert.equal(engine.registerIntent('restock', restock()), undefined)
    const r = await engine.submitIntent('restock', { sku: 'Q' }, { tenant: 'acme', session: 's9' })
    assert.equal(r.intent, 'restock')
    assert.equal(r.workflow, 'restock')
    assert.equal(r.status, 'completed')
    assert.deepEqual(r.outputs, { new_count: 104 })
    assert.equal(r.tenant, 'acme')
    assert.equal(r.session_id, 's9')
    assert.deepEqual(engine.execution(r.execution_id).outputs, { new_count: 104 })
    assert.deepEqual(log, ['get Q', 'set Q 104'])

    // YAML text and a file path are workflows too.
    engine.registerIntent('restock_yaml', 'name: yaml_restock\nsteps:\n  - id: s\n    tool: shop.getInventory\n    args: { sku: Y }\n')
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-intents-'))
    const file = path.join(dir, 'restock.json')
    fs.writeFileSync(file, JSON.stringify(restock()))
    engine.registerIntent('restock_file', file)
    assert.equal((await engine.submitIntent('restock_yaml')).status, 'completed')
    assert.deepEqual((await engine.submitIntent('restock_file', { sku: 'F', extra: 1 })).outputs, { new_count: 5 })
    fs.rmSync(dir, { recursive: true, force: true })

    // Params the workflow refuses reject; a workflow that does not validate is refused at registration.
    await rejectsWith(engine.submitIntent('restock', { sku: 1 }), codes.VALIDATION_FAILED, /restock/)
    throwsWith(
      () => engine.registerIntent('broken', { name: 'broken', steps: [{ id: 'a', tool: 'no.such' }] }),
      codes.VALIDATION_FAILED,
      /no\.such/,
    )
    assert.deepEqual(engine.intents(), ['restock', 'restock_file', 'restock_yaml'])
  } finally {
    engine.close()
  }
})

test('a handler intent gets its context and params; session state carries across submits', async () => {
  const { engine } = shopEngine()
  try {
    const seen = []
    engine.registerIntent('count', (ctx, params) => {
      seen.push({ ...ctx })
      const before = ctx.state.count ?? 0
      if (ctx.session) engine.setSessionState(ctx.session, 'count', before + 1, { tenant: ctx.tenant })
      return { before, params }
    })
    const opts = { tenant: 'acme', session: 's1' }
    const r1 = await engine.submitIntent('count', { a: 1 }, opts)
    assert.deepEqual(Object.keys(r1).sort(), ['error', 'execution_id', 'intent', 'output', 'session_id', 'status', 'tenant'])
    assert.equal(r1.status, 'completed')
    assert.equal(r1.intent, 'count')
    assert.equal(r1.tenant, 'acme')
    assert.equal(r1.session_id, 's1')
    assert.equal(r1.error, null)
    assert.match(r1.execution_id, EXEC_ID)
    assert.deepEqual(r1.output, { before: 0, params: { a: 1 } })
    assert.deepEqual(seen[0], { executionId: r1.execution_id, intent: 'count', tenant: 'acme', session: 's1', state: {} })

    const r2 = await engine.submitIntent('count', { a: 2 }, opts)
    assert.deepEqual(r2.output, { before: 1, params: { a: 2 } })
    assert.deepEqual(seen[1].state, { count: 1 }, 'ctx.state is the state when the request starts')
    assert.notEqual(r2.execution_id, r1.execution_id)
    assert.deepEqual(engine.sessionState('s1', { tenant: 'acme' }), { count: 2 })

    // State is per (tenant, session); without a session there is none and params default to {}.
    assert.deepEqual((await engine.submitIntent('count', null, { session: 's1' })).output, { before: 0, params: {} })
    const none = await engine.submitIntent('count')
    assert.deepEqual(none.output, { before: 0, params: {} })
    assert.equal(none.session_id, null)
    assert.equal(none.tenant, null)
    assert.deepEqual(seen.at(-1), { executionId: none.execution_id, intent: 'count', tenant: null, session: null, state: {} })

    // A workflow intent of the same session sees what the handler wrote.
    engine.registerIntent('read', {
      name: 'read',
      steps: [{ id: 'g', tool: 'shop.getInventory', args: { sku: 'n${{ state.count }}' } }],
      outputs: { sku: '${{ steps.g.output.sku }}' },
    })
    assert.deepEqual((await engine.submitIntent('read', {}, opts)).outputs, { sku: 'n2' })
  } finally {
    engine.close()
  }
})

test('an async handler is awaited, thenables too, and requests run concurrently', async () => {
  const engine = new Engine()
  try {
    engine.registerIntent('slow', async (ctx, params) => {
      await sleep(params.ms)
      return { waited: params.ms, intent: ctx.intent }
    })
    engine.registerIntent('thenable', () => ({ then: (resolve) => setTimeout(() => resolve('later'), 5) }))
    const started = Date.now()
    const records = await Promise.all(Array.from({ length: 10 }, () => engine.submitIntent('slow', { ms: 100 })))
    assert.ok(Date.now() - started < 900, `took ${Date.now() - started} ms`)
    for (const r of records) assert.deepEqual([r.status, r.output], ['completed', { waited: 100, intent: 'slow' }])
    assert.equal(new Set(records.map((r) => r.execution_id)).size, 10)
    assert.equal((await engine.submitIntent('thenable')).output, 'later')
  } finally {
    engine.close()
  }
})

test('a handler may call tools through the engine and run workflows', async () => {
  const { engine, log } = shopEngine()
  try {
    engine.registerIntent('lookup', async (ctx, params) => {
      const stock = await engine.callTool('shop.getInventory', { sku: params.sku }, { session: ctx.session })
      const run = await engine.runWorkflow(restock(), { sku: params.sku, extra: 1 })
      return { stock: stock.count, after: run.outputs.new_count, execution: ctx.executionId }
    })
    const r = await engine.submitIntent('lookup', { sku: 'Q' }, { session: 's' })
    assert.equal(r.status, 'completed', JSON.stringify(r.error))
    assert.deepEqual(r.output, { stock: 4, after: 5, execution: r.execution_id })
    assert.deepEqual(log, ['get Q', 'get Q', 'set Q 5'])
  } finally {
    engine.close()
  }
})

test('a throw, a rejection or a result that is not JSON makes a failed record naming the cause', async () => {
  const { engine } = shopEngine()
  try {
    engine.registerIntent('throws', () => {
      throw new Error('the handler gave up')
    })
    engine.registerIntent('rejects', async () => {
      await sleep(1)
      throw new TypeError('async trouble')
    })
    engine.registerIntent('undef', () => undefined)
    engine.registerIntent('bigint', () => ({ n: 10n }))
    engine.registerIntent('tool_error', async () => engine.callTool('no.such'))
    const expect = {
      throws: /intent 'throws'.*threw.*the handler gave up/,
      rejects: /intent 'rejects'.*rejected.*async trouble/,
      undef: /intent 'undef'.*not JSON.*return null/,
      bigint: /intent 'bigint'.*BigInt/i,
      tool_error: /intent 'tool_error'.*rejected.*no\.such/,
    }
    for (const [name, pattern] of Object.entries(expect)) {
      const r = await engine.submitIntent(name, {}, { tenant: 't', session: 's' })
      assert.equal(r.status, 'failed', name)
      assert.equal(r.output, null)
      assert.equal(r.error.code, 'TOOL_FAILED')
      assert.match(r.error.message, pattern)
      assert.equal(r.intent, name)
      assert.equal(r.session_id, 's')
    }
    // The engine goes on serving after failures.
    engine.registerIntent('ok', () => null)
    assert.deepEqual([(await engine.submitIntent('ok')).status, (await engine.submitIntent('ok')).output], ['completed', null])
  } finally {
    engine.close()
  }
})

test('errors: unknown intent, duplicate, bad targets and arguments', async () => {
  const engine = new Engine()
  try {
    engine.registerTool('m.t', () => null)
    const wf = { name: 'w', steps: [{ id: 'a', tool: 'm.t' }] }
    engine.registerIntent('known', () => 1)
    await rejectsWith(engine.submitIntent('nope'), codes.NOT_FOUND, /nope/, /known/)
    throwsWith(() => engine.registerIntent('known', () => 2), codes.ALREADY_EXISTS, /known/)
    throwsWith(() => engine.registerIntent('known', wf), codes.ALREADY_EXISTS, /known/)
    for (const bad of [42, true, null, undefined, [1], Symbol('s'), 10n]) {
      throwsWith(() => engine.registerIntent('bad', bad), codes.INVALID_ARGUMENT, /workflow|function/)
    }
    throwsWith(() => engine.registerIntent('bad', ''), codes.INVALID_ARGUMENT, /empty/)
    throwsWith(() => engine.registerIntent('', () => 1), codes.INVALID_ARGUMENT, /type/)
    throwsWith(() => engine.registerIntent('  ', wf), codes.INVALID_ARGUMENT, /type/)
    throwsWith(() => engine.registerIntent(7, () => 1), codes.INVALID_ARGUMENT)
    await rejectsWith(engine.submitIntent('known', {}, { tenat: 'x' }), codes.INVALID_ARGUMENT, /tenat/)
    await rejectsWith(engine.submitIntent('known', {}, { session: 3 }), codes.INVALID_ARGUMENT, /session/)
    await rejectsWith(engine.submitIntent('known', {}, { session: '' }), codes.INVALID_ARGUMENT, /session/)
    await rejectsWith(engine.submitIntent('known', { n: 1n }), codes.INVALID_ARGUMENT, /params/)
    await rejectsWith(engine.submitIntent(undefined), codes.INVALID_ARGUMENT)
    assert.deepEqual(engine.intents(), ['known'])
    engine.close()
    throwsWith(() => engine.intents(), codes.INVALID_ARGUMENT, /closed/)
    await rejectsWith(engine.submitIntent('known'), codes.INVALID_ARGUMENT, /closed/)
  } finally {
    engine.close()
  }
})

test('unregisterIntent removes an intent; its type can be registered again', async () => {
  const engine = new Engine()
  try {
    engine.registerIntent('x', () => 'first')
    assert.equal(engine.unregisterIntent('x'), true)
    assert.equal(engine.unregisterIntent('x'), false)
    assert.deepEqual(engine.intents(), [])
    await rejectsWith(engine.submitIntent('x'), codes.NOT_FOUND, /'x'/)
    engine.registerIntent('x', async () => 'second')
    assert.equal((await engine.submitIntent('x')).output, 'second')
  } finally {
    engine.close()
  }
})

test('a script with a registered intent exits by itself', () => {
  const source = `
    import { Engine } from 'utp-runtime'
    const engine = new Engine()
    engine.registerTool('m.t', (args) => ({ echoed: args }))
    engine.registerIntent('echo', async (ctx, params) => engine.callTool('m.t', params))
    engine.registerIntent('flow', { name: 'f', steps: [{ id: 'a', tool: 'm.t', args: { v: 1 } }] })
    const r = await engine.submitIntent('echo', { x: 1 }, { session: 's' })
    const w = await engine.submitIntent('flow')
    console.log(JSON.stringify({ output: r.output, flow: w.status, intents: engine.intents() }))
  `
  const started = Date.now()
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', source], {
    cwd: packageDir,
    encoding: 'utf8',
    timeout: 30_000,
  })
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout), { output: { echoed: { x: 1 } }, flow: 'completed', intents: ['echo', 'flow'] })
  assert.ok(Date.now() - started < 20_000)
})
