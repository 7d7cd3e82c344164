// Business rules and events from Node, in the original UTP config shape.
//
//     node examples/node/betting_rules.mjs
//
// An engine with `permissions` and `business_rules` (the constants rules see), a JS
// function as the tool `betfair.placeBet`, a JS business rule that caps bets at
// `max_bet_amount`, and event subscribers. One bet is denied, one is placed; then
// the metrics are printed. Last, the same bets run as workflow steps, watched by a
// `step.completed` subscriber. (`make test-node` runs this file.)
import assert from 'node:assert/strict'
import { Engine, codes } from 'utp-runtime'

const CONFIG = {
  permissions: {
    betfair: { enabled: true, allowed_actions: ['listMarkets', 'getOdds', 'placeBet'] },
  },
  business_rules: { max_bet_amount: 1000 },
}
const MAX_BET = CONFIG.business_rules.max_bet_amount

/** Place a bet on a market (a stand-in for the Betfair API). */
function placeBet(args) {
  return { bet_id: 'b-1', market: args.market, amount: args.amount, status: 'placed' }
}

// tool = the manual name, action = the tool name without it, params = the arguments.
const maxBetRule = (tool, action, params) => !(tool === 'betfair' && action === 'placeBet' && params.amount > MAX_BET)

async function onBetPlaced(event) {
  console.log(`  [event] ${event.type} ${event.tool} in ${(event.data.duration_ms ?? 0).toFixed(2)} ms`)
}

function onDenied(event) {
  console.log(`  [event] ${event.type} ${event.tool}: ${event.data.reason}`)
}

const engine = new Engine(CONFIG)
try {
  engine.registerTool('betfair.placeBet', placeBet, {
    inputs: {
      type: 'object',
      properties: { market: { type: 'string' }, amount: { type: 'number' } },
      required: ['market', 'amount'],
    },
  })
  engine.domainLayer.addBusinessRule('max_bet', maxBetRule)
  engine.eventBus.subscribe('tool.succeeded', onBetPlaced)
  engine.eventBus.subscribe('policy.denied', onDenied)

  const dryRun = await engine.domainLayer.check('betfair.placeBet', { market: 'm1', amount: 1500 })
  console.log('dry run of a 1500 bet:', dryRun.decision)

  console.log('placing a bet of 1500:')
  try {
    await engine.callTool('betfair.placeBet', { market: 'm1', amount: 1500 })
    throw new Error('the 1500 bet should have been denied')
  } catch (e) {
    if (e.code !== codes.PERMISSION_DENIED) throw e
    console.log('  denied:', e.message)
  }
  await engine.eventBus.flush() // let the subscribers print before going on

  console.log('placing a bet of 500:')
  const result = await engine.callTool('betfair.placeBet', { market: 'm1', amount: 500 })
  await engine.eventBus.flush()
  console.log('  placed:', result)
  assert.equal(result.status, 'placed')

  const toolMetrics = engine.metrics().tools['betfair.placeBet']
  console.log('metrics:', { calls: toolMetrics.calls, policy_denied: toolMetrics.policy_denied })
  for (const line of engine.metricsText().split('\n')) {
    if (line.startsWith('utp_tool_calls_total') || line.startsWith('utp_policy_denied_total')) console.log(' ', line)
  }
  assert.equal(toolMetrics.policy_denied, 1)
  assert.equal(toolMetrics.calls.succeeded, 1)

  // The same rule applies to workflow steps; a `step.completed` subscriber sees them.
  engine.eventBus.subscribe('step.completed', (event) => {
    console.log(`  [event] ${event.type} ${event.workflow}/${event.step_id} (${event.tool})`)
  })
  const betWorkflow = (amount) => ({
    name: 'bet',
    steps: [{ id: 'place', tool: 'betfair.placeBet', args: { market: 'm1', amount } }],
  })
  console.log('a bet of 1500 as a workflow step:')
  const denied = await engine.runWorkflow(betWorkflow(1500))
  console.log(`  ${denied.status}: ${denied.error.code} ${denied.error.message}`)
  console.log('a bet of 200 as a workflow step:')
  const placed = await engine.runWorkflow(betWorkflow(200))
  await engine.eventBus.flush()
  console.log(`  ${placed.status}:`, placed.steps.place.output)
  assert.equal(denied.status, 'failed')
  assert.equal(denied.error.code, 'PERMISSION_DENIED')
  assert.equal(placed.status, 'completed')
} finally {
  engine.close()
}
