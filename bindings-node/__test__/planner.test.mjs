// The planner from JS: engine.plan / engine.run with the offline planner over JS
// native tools, and with an OpenAI-protocol model server written here (node:http on
// 127.0.0.1) answering scripted plans; PLANNER errors and bad arguments.
import test from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'

import { Engine, codes } from 'utp-runtime'
import { rejectsWith, until } from './helpers.mjs'

const REQUEST = 'weather forecast for the city of an IP address'
const API_KEY = 'sk-test-key-123'

/** geo.cityOfIp (ip -> city) feeds weather.forecast (city -> temp_c). */
function chainEngine() {
  const engine = new Engine()
  engine.registerTool('geo.cityOfIp', (args) => ({ city: args.ip === '8.8.8.8' ? 'Mountain View' : 'Paris' }), {
    inputs: {
      type: 'object',
      properties: { ip: { type: 'string', description: 'IPv4 address' } },
      required: ['ip'],
    },
    outputs: { type: 'object', properties: { city: { type: 'string' } } },
    description: 'Find which city an IP address is located in',
  })
  engine.registerTool('weather.forecast', async (args) => ({ city: args.city, temp_c: 21.5 }), {
    inputs: {
      type: 'object',
      properties: { city: { type: 'string' }, days: { type: 'integer' } },
      required: ['city'],
    },
    outputs: { type: 'object', properties: { temp_c: { type: 'number' } } },
    description: 'Weather forecast for a city',
    tags: ['weather'],
  })
  return engine
}

test('offline plan of a two-tool chain of JS tools', async () => {
  const engine = chainEngine()
  try {
    const plan = await engine.plan(REQUEST)
    assert.deepEqual(Object.keys(plan).sort(), ['definition', 'model', 'provider', 'rounds', 'usage'])
    assert.equal(plan.provider, 'offline')
    assert.equal(plan.model, '')
    assert.equal(plan.rounds, 0)
    assert.deepEqual(plan.usage, { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 })
    const steps = plan.definition.steps
    assert.deepEqual(
      steps.map((s) => s.tool),
      ['geo.cityOfIp', 'weather.forecast'],
    )
    assert.deepEqual(steps[0].args, { ip: '${{ inputs.ip }}' })
    assert.deepEqual(steps[1].args, { city: '${{ steps.cityOfIp.output.city }}' })
    assert.deepEqual(steps[1].depends_on, ['cityOfIp'])
    assert.equal(plan.definition.inputs.ip.type, 'string')
    const record = await engine.runWorkflow(plan.definition, { ip: '8.8.8.8' })
    assert.equal(record.status, 'completed', JSON.stringify(record))
    assert.equal(record.outputs.result.city, 'Mountain View')

    await engine.plan(REQUEST, { session: 's1', tenant: 't1', inputs: { ip: '1.2.3.4' } })
    const planned = engine.eventBus.history({ type: 'workflow.planned' })
    assert.equal(planned.length, 2)
    assert.equal(planned[1].session_id, 's1')
    assert.equal(planned[1].tenant, 't1')
  } finally {
    engine.close()
  }
})

test('run plans and runs', async () => {
  const engine = chainEngine()
  try {
    const record = await engine.run(REQUEST, { ip: '8.8.8.8' }, { session: 's1', timeout: 30 })
    assert.equal(record.status, 'completed', JSON.stringify(record))
    assert.deepEqual(record.outputs.result, { city: 'Mountain View', temp_c: 21.5 })
    assert.equal(record.session_id, 's1')
    assert.equal(record.plan.provider, 'offline')
    assert.equal(record.steps.cityOfIp.status, 'succeeded')
    const literal = await engine.run('find the city of ip=1.2.3.4 then get the weather forecast')
    assert.equal(literal.status, 'completed', JSON.stringify(literal))
    assert.deepEqual(literal.outputs.result, { city: 'Paris', temp_c: 21.5 })
    assert.equal(literal.plan.definition.inputs, undefined)
  } finally {
    engine.close()
  }
})

test('run passes the user to per-user rate limits', async () => {
  const engine = new Engine({ rate_limits: [{ match: { tool: 'geo' }, per: 'user', limit: 1, window: '1h' }] })
  try {
    engine.registerTool('geo.cityOfIp', (args) => ({ city: args.ip }), {
      inputs: { type: 'object', properties: { ip: { type: 'string' } }, required: ['ip'] },
      outputs: { type: 'object', properties: { city: { type: 'string' } } },
      description: 'Find which city an IP address is located in',
    })
    const run = (user) => engine.run('find the city of an IP address', { ip: '8.8.8.8' }, { user })
    assert.equal((await run('ann')).status, 'completed')
    const limited = await run('ann')
    assert.equal(limited.status, 'failed', JSON.stringify(limited))
    assert.equal(limited.steps.cityOfIp.error.code, 'RATE_LIMITED')
    assert.equal((await run('bob')).status, 'completed')
  } finally {
    engine.close()
  }
})

test('an AbortSignal cancels a run, before or while it runs', async () => {
  const engine = chainEngine()
  let release
  engine.registerTool('slow.forecast', () => new Promise((resolve) => (release = resolve)), {
    inputs: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    description: 'Slow weather forecast for a city',
  })
  try {
    const controller = new AbortController()
    const request = 'find the city of ip=1.2.3.4 then get the slow forecast'
    const running = engine.run(request, {}, { signal: controller.signal, session: 'aborting' })
    await until(() => engine.executions({ session: 'aborting', status: 'running' }).length === 1)
    controller.abort()
    const aborted = await running
    assert.equal(aborted.status, 'cancelled', JSON.stringify(aborted))
    assert.equal(aborted.plan.provider, 'offline')
    assert.deepEqual(
      aborted.plan.definition.steps.map((s) => s.tool),
      ['geo.cityOfIp', 'slow.forecast'],
    )
    await rejectsWith(engine.run(request, {}, { signal: controller.signal }), codes.CANCELLED, /aborted/)
    // Not aborted: the record as without a signal.
    const done = await engine.run(REQUEST, { ip: '8.8.8.8' }, { signal: new AbortController().signal, user: 'u' })
    assert.equal(done.status, 'completed', JSON.stringify(done))
    assert.equal(done.plan.provider, 'offline')
  } finally {
    release?.(null)
    engine.close()
  }
})

test('a request the offline planner cannot map rejects with ERR_UTP_PLANNER', async () => {
  const engine = chainEngine()
  try {
    const error = await rejectsWith(engine.plan('book a flight to Lisbon'), codes.PLANNER, /A model is needed/, /Lisbon/)
    assert.equal(error.code, 'ERR_UTP_PLANNER')
    await rejectsWith(engine.run('book a flight to Lisbon'), codes.PLANNER)
    assert.deepEqual(engine.executions(), [])
  } finally {
    engine.close()
  }
  const empty = new Engine()
  try {
    await rejectsWith(empty.plan('weather'), codes.PLANNER, /no tools are registered/)
  } finally {
    empty.close()
  }
})

test('bad arguments reject with ERR_UTP_INVALID_ARGUMENT', async () => {
  const engine = chainEngine()
  try {
    for (const bad of ['', '   ', 42, null, undefined, ['weather'], { request: 'weather' }]) {
      await rejectsWith(engine.plan(bad), codes.INVALID_ARGUMENT, /request/)
      await rejectsWith(engine.run(bad), codes.INVALID_ARGUMENT, /request/)
    }
    await rejectsWith(engine.plan(REQUEST, { inputs: [1] }), codes.INVALID_ARGUMENT, /inputs must be an object/)
    await rejectsWith(engine.plan(REQUEST, { sesion: 's' }), codes.INVALID_ARGUMENT, /unknown plan option 'sesion'/)
    await rejectsWith(engine.plan(REQUEST, 'options'), codes.INVALID_ARGUMENT, /options must be an object/)
    await rejectsWith(engine.plan(REQUEST, { session: 3 }), codes.INVALID_ARGUMENT, /session/)
    await rejectsWith(engine.run(REQUEST, '8.8.8.8'), codes.INVALID_ARGUMENT, /inputs must be an object/)
    await rejectsWith(engine.run(REQUEST, {}, { timeout: -1 }), codes.INVALID_ARGUMENT, /timeout/)
    await rejectsWith(engine.run(REQUEST, {}, { usr: 'u' }), codes.INVALID_ARGUMENT, /unknown run option 'usr'/)
    const signal = new AbortController().signal
    await rejectsWith(engine.run(REQUEST, {}, { usr: 'u', signal }), codes.INVALID_ARGUMENT, /unknown run option 'usr'/)
    await rejectsWith(engine.run(REQUEST, {}, { signal: 'stop' }), codes.INVALID_ARGUMENT, /AbortSignal/)
    await rejectsWith(engine.plan('weather '.repeat(5000)), codes.INVALID_ARGUMENT, /at most/)
  } finally {
    engine.close()
  }
  await rejectsWith(engine.plan(REQUEST), codes.INVALID_ARGUMENT, /closed/)
})

// ---------------------------------------------------------------------------
// An OpenAI-compatible model server (chat completions) answering from a script
// ---------------------------------------------------------------------------

/** Answers POST /v1/chat/completions with the scripted texts in order (the last repeats). */
async function modelServer(...script) {
  const seen = []
  const server = http.createServer((req, res) => {
    let raw = ''
    req.setEncoding('utf8')
    req.on('data', (chunk) => (raw += chunk))
    req.on('end', () => {
      seen.push({ path: req.url, headers: req.headers, body: JSON.parse(raw), raw })
      const text = script.length > 1 ? script.shift() : script[0]
      const body = JSON.stringify({
        id: 'chatcmpl-1',
        object: 'chat.completion',
        choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 100, completion_tokens: 20, total_tokens: 120 },
      })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    seen,
    port: server.address().port,
    close: () => new Promise((resolve) => server.close(resolve)),
  }
}

function restockPlan() {
  return {
    name: 'restock',
    inputs: { sku: { type: 'string' } },
    steps: [
      { id: 'stock', tool: 'shop.getInventory', args: { sku: '${{ inputs.sku }}' } },
      {
        id: 'update',
        tool: 'shop.setInventory',
        depends_on: ['stock'],
        args: { sku: '${{ inputs.sku }}', count: '${{ steps.stock.output.count + 100 }}' },
      },
    ],
    outputs: { new_count: '${{ steps.update.output.count }}' },
  }
}

function modelEngine(server, planner = {}) {
  const engine = new Engine({
    planner: {
      provider: 'openai',
      base_url: `http://127.0.0.1:${server.port}/v1`,
      model: 'test-model',
      api_key: '${OPENAI_API_KEY}',
      ...planner,
    },
    variables: { OPENAI_API_KEY: API_KEY },
  })
  engine.registerTool('shop.getInventory', (args) => ({ sku: args.sku, count: 3 }), {
    inputs: {
      type: 'object',
      properties: { sku: { type: 'string', description: 'Stock keeping unit' } },
      required: ['sku'],
    },
    outputs: { type: 'object', properties: { count: { type: 'integer' } } },
    description: 'Get the stock count of a product',
    tags: ['inventory'],
  })
  engine.registerTool('shop.setInventory', (args) => ({ sku: args.sku, count: args.count }), {
    inputs: {
      type: 'object',
      properties: { sku: { type: 'string' }, count: { type: 'integer' } },
      required: ['sku', 'count'],
    },
    description: 'Set the stock count of a product',
    tags: ['inventory'],
  })
  return engine
}

test('OpenAI protocol: a valid plan, then run', async () => {
  const server = await modelServer(JSON.stringify(restockPlan()))
  const engine = modelEngine(server)
  try {
    const plan = await engine.plan('restock product sku when low')
    assert.deepEqual(plan.definition, restockPlan())
    assert.equal(plan.provider, 'openai')
    assert.equal(plan.model, 'test-model')
    assert.equal(plan.rounds, 1)
    assert.deepEqual(plan.usage, { prompt_tokens: 100, completion_tokens: 20, total_tokens: 120 })
    assert.equal(server.seen.length, 1)
    const req = server.seen[0]
    assert.equal(req.path, '/v1/chat/completions')
    assert.equal(req.headers.authorization, `Bearer ${API_KEY}`)
    assert.equal(req.body.model, 'test-model')
    assert.ok(req.raw.includes('restock product sku when low'))
    assert.ok(req.raw.includes('shop.getInventory') && req.raw.includes('shop.setInventory'))

    const record = await engine.run('restock product sku when low', { sku: 'A1' })
    assert.equal(record.status, 'completed', JSON.stringify(record))
    assert.equal(record.outputs.new_count, 103)
    assert.equal(record.plan.usage.total_tokens, 120)
    const last = server.seen.at(-1).raw
    assert.ok(last.includes('sku (string)'), last)
    assert.ok(!last.includes('A1'), 'input values never reach the model')
  } finally {
    engine.close()
    await server.close()
  }
})

test('OpenAI protocol: an invalid plan is repaired', async () => {
  const bad = restockPlan()
  bad.steps[1].tool = 'shop.updateStock'
  const server = await modelServer(JSON.stringify(bad), JSON.stringify(restockPlan()))
  const engine = modelEngine(server)
  try {
    const plan = await engine.plan('restock')
    assert.equal(plan.rounds, 2)
    assert.deepEqual(plan.usage, { prompt_tokens: 200, completion_tokens: 40, total_tokens: 240 })
    assert.equal(plan.definition.steps[1].tool, 'shop.setInventory')
    assert.equal(server.seen.length, 2)
    const messages = server.seen[1].body.messages
    assert.deepEqual(
      messages.map((m) => m.role),
      ['system', 'user', 'assistant', 'user'],
    )
    assert.match(messages[3].content, /no tool named 'shop\.updateStock' is registered/)
  } finally {
    engine.close()
    await server.close()
  }
})

test('OpenAI protocol: a model that never plans validly rejects with ERR_UTP_PLANNER', async () => {
  const bad = restockPlan()
  bad.steps[0].tool = 'shop.nope'
  const server = await modelServer("I'd be glad to help!", JSON.stringify(bad))
  const engine = modelEngine(server, { max_repairs: 1 })
  try {
    const error = await rejectsWith(engine.plan('restock'), codes.PLANNER, /shop\.nope/, /2 round\(s\)/)
    assert.ok(!error.message.includes(API_KEY))
    assert.equal(server.seen.length, 2)
  } finally {
    engine.close()
    await server.close()
  }
})
