// A workflow from Node: the docs/design.md §7 restock example over JS tools.
//
//     node examples/node/restock_workflow.mjs
//
// Three JS functions stand in for a shop's API: `shop.getInventory` fails twice
// before it answers (the step's `retry` absorbs that), `shop.setInventory` is not
// allowed by the config's permissions (the step's `on_error` falls back to
// `shop.queueUpdate`), and `sheets.appendRow` logs the outcome. A `step.*`
// subscriber prints the progress; then the execution record is printed.
// (`make test-node` runs this file.)
import assert from 'node:assert/strict'
import { Engine } from 'utp-runtime'

const CONFIG = {
  // setInventory is left out on purpose: the update is queued by the fallback instead.
  permissions: { shop: { allowed_actions: ['getInventory', 'queueUpdate'] } },
}

const WORKFLOW = `
name: restock
inputs:
  sku: {type: string}
  extra: {type: integer, default: 100}
timeout: 60s
steps:
  - id: stock
    tool: shop.getInventory
    args: {sku: "\${{ inputs.sku }}"}
    timeout: 5s
    retry: {max_attempts: 3, initial_delay: 50ms, factor: 2, max_delay: 1s}
  - id: update
    tool: shop.setInventory
    depends_on: [stock]
    if: "steps.stock.output.count < 10"
    args: {sku: "\${{ inputs.sku }}", count: "\${{ steps.stock.output.count + inputs.extra }}"}
    on_error: {fallback: {tool: shop.queueUpdate, args: {sku: "\${{ inputs.sku }}", count: "\${{ steps.stock.output.count + inputs.extra }}"}}}
  - id: log
    tool: sheets.appendRow
    depends_on: [update]
    args: {row: ["\${{ inputs.sku }}", "\${{ steps.stock.output.count }}"]}
outputs:
  stock: "\${{ steps.stock.output.count }}"
  update: "\${{ steps.update.output }}"
`

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const engine = new Engine(CONFIG)
try {
  let inventoryCalls = 0
  engine.registerTool(
    'shop.getInventory',
    async ({ sku }) => {
      inventoryCalls += 1
      await sleep(5)
      if (inventoryCalls <= 2) throw new Error(`inventory service busy (call ${inventoryCalls})`)
      return { sku, count: 4 }
    },
    { inputs: { type: 'object', properties: { sku: { type: 'string' } }, required: ['sku'] } },
  )
  engine.registerTool('shop.setInventory', ({ sku, count }) => ({ sku, count }), {
    inputs: {
      type: 'object',
      properties: { sku: { type: 'string' }, count: { type: 'integer', minimum: 0 } },
      required: ['sku', 'count'],
    },
  })
  engine.registerTool('shop.queueUpdate', ({ sku, count }) => ({ queued: true, sku, count }))
  const rows = []
  engine.registerTool('sheets.appendRow', ({ row }) => {
    rows.push(row)
    return { rows: rows.length }
  })

  engine.eventBus.subscribe('step.*', (event) => {
    const detail =
      event.type === 'step.retrying'
        ? ` attempt ${event.data.attempt} failed (${event.data.message}); retrying in ${event.data.delay_ms} ms`
        : event.type === 'step.completed'
          ? ` after ${event.data.attempts} attempt(s)${event.data.fallback ? ' (by the fallback)' : ''}`
          : event.type === 'step.failed'
            ? `: ${event.data.code} ${event.data.message}`
            : event.type === 'step.skipped'
              ? `: ${event.data.reason}`
              : ''
    console.log(`  [${event.type}] ${event.step_id} (${event.tool})${detail}`)
  })

  // Validation happens before anything runs (and lists every problem).
  const definition = engine.validateWorkflow(WORKFLOW)
  console.log(`workflow '${definition.name}': ${definition.steps.map((s) => s.id).join(' → ')}`)

  console.log('running restock for A1:')
  const record = await engine.runWorkflow(WORKFLOW, { sku: 'A1' }, { session: 'warehouse-1' })
  await engine.eventBus.flush() // let the subscriber print everything first

  console.log(`status: ${record.status} (${record.execution_id})`)
  for (const [id, step] of Object.entries(record.steps)) {
    console.log(`  ${id}: ${step.status}, ${step.attempts} attempt(s)${step.note ? ` — ${step.note}` : ''}`)
  }
  console.log('outputs:', JSON.stringify(record.outputs))

  assert.equal(record.status, 'completed')
  assert.equal(record.steps.stock.attempts, 3)
  assert.deepEqual(record.outputs, { stock: 4, update: { queued: true, sku: 'A1', count: 104 } })
  assert.deepEqual(rows, [['A1', 4]])
  assert.equal(engine.executions({ session: 'warehouse-1' }).length, 1)
} finally {
  engine.close()
}
