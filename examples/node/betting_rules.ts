// Business rules and events from TypeScript, in the original UTP config shape: the
// same program as betting_rules.mjs, with the package's types. `make test-node`
// type-checks it (tsc --noEmit -p examples/node); run it with a TypeScript runner,
// or compile it with tsc.
import {
  Engine,
  UtpError,
  codes,
  type BusinessRule,
  type CheckResult,
  type EngineConfig,
  type EventHandler,
  type ExecutionRecord,
  type ToolMetrics,
  type UtpEvent,
  type WorkflowDefinition,
} from 'utp-runtime'

const CONFIG = {
  permissions: {
    betfair: { enabled: true, allowed_actions: ['listMarkets', 'getOdds', 'placeBet'] },
  },
  business_rules: { max_bet_amount: 1000 },
} satisfies EngineConfig
const MAX_BET: number = CONFIG.business_rules.max_bet_amount

interface Bet {
  market: string
  amount: number
}

interface PlacedBet extends Bet {
  bet_id: string
  status: 'placed'
}

/** Place a bet on a market (a stand-in for the Betfair API). */
function placeBet(args: Record<string, any>): PlacedBet {
  const bet = args as Bet
  return { bet_id: 'b-1', market: bet.market, amount: bet.amount, status: 'placed' }
}

// tool = the manual name, action = the tool name without it, params = the arguments.
const maxBetRule: BusinessRule = (tool, action, params) =>
  !(tool === 'betfair' && action === 'placeBet' && params.amount > MAX_BET)

const onBetPlaced: EventHandler = async (event: UtpEvent) => {
  const ms: number = event.data.duration_ms ?? 0
  console.log(`  [event] ${event.type} ${event.tool} in ${ms.toFixed(2)} ms`)
}

function onDenied(event: UtpEvent): void {
  console.log(`  [event] ${event.type} ${event.tool}: ${event.data.reason}`)
}

async function main(): Promise<void> {
  using engine = new Engine(CONFIG)
  engine.registerTool('betfair.placeBet', placeBet, {
    inputs: {
      type: 'object',
      properties: { market: { type: 'string' }, amount: { type: 'number' } },
      required: ['market', 'amount'],
    },
  })
  engine.domainLayer.addBusinessRule('max_bet', maxBetRule)
  engine.eventBus.subscribe('tool.succeeded', onBetPlaced)
  const denials = engine.eventBus.subscribe('policy.denied', onDenied)

  const dryRun: CheckResult = await engine.domainLayer.check('betfair.placeBet', { market: 'm1', amount: 1500 })
  console.log('dry run of a 1500 bet:', dryRun.decision)

  console.log('placing a bet of 1500:')
  try {
    await engine.callTool('betfair.placeBet', { market: 'm1', amount: 1500 } satisfies Bet)
    throw new Error('the 1500 bet should have been denied')
  } catch (e) {
    if (!(e instanceof UtpError) || e.code !== codes.PERMISSION_DENIED) throw e
    console.log('  denied:', e.message)
  }
  await engine.eventBus.flush() // let the subscribers print before going on

  console.log('placing a bet of 500:')
  const result: PlacedBet = await engine.callTool('betfair.placeBet', { market: 'm1', amount: 500 } satisfies Bet)
  await engine.eventBus.flush()
  console.log('  placed:', result)

  const toolMetrics: ToolMetrics | undefined = engine.metrics().tools['betfair.placeBet']
  console.log('metrics:', { calls: toolMetrics?.calls, policy_denied: toolMetrics?.policy_denied })
  for (const line of engine.metricsText().split('\n')) {
    if (line.startsWith('utp_tool_calls_total') || line.startsWith('utp_policy_denied_total')) console.log(' ', line)
  }
  denials.unsubscribe()
  if (toolMetrics?.policy_denied !== 1 || toolMetrics.calls.succeeded !== 1) throw new Error('unexpected metrics')

  // The same rule applies to workflow steps; a `step.completed` subscriber sees them.
  engine.eventBus.subscribe('step.completed', (event: UtpEvent) => {
    console.log(`  [event] ${event.type} ${event.workflow}/${event.step_id} (${event.tool})`)
  })
  const betWorkflow = (amount: number): WorkflowDefinition => ({
    name: 'bet',
    steps: [{ id: 'place', tool: 'betfair.placeBet', args: { market: 'm1', amount } }],
  })
  console.log('a bet of 1500 as a workflow step:')
  const denied: ExecutionRecord = await engine.runWorkflow(betWorkflow(1500))
  console.log(`  ${denied.status}: ${denied.error?.code} ${denied.error?.message}`)
  console.log('a bet of 200 as a workflow step:')
  const placed: ExecutionRecord = await engine.runWorkflow(betWorkflow(200))
  await engine.eventBus.flush()
  console.log(`  ${placed.status}:`, placed.steps['place']?.output)
  if (denied.status !== 'failed' || denied.error?.code !== 'PERMISSION_DENIED' || placed.status !== 'completed') {
    throw new Error('unexpected workflow results')
  }
}

main().catch((e: unknown) => {
  console.error(e)
  process.exitCode = 1
})
