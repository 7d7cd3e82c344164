// Type-checked (never run) by types.test.mjs: the public declarations describe real use.
import {
  Engine,
  UtpError,
  codes,
  version,
  type CallOptions,
  type CallStreamOptions,
  ToolStream,
  type Tool,
  type DiscoveryReport,
  type ErrorCode,
  type Approval,
  type CheckResult,
  type Metrics,
  type RuleDecision,
  type UtpEvent,
  type WorkflowDefinition,
  type ExecutionRecord,
  type ExecutionSummary,
  type StepRecord,
  type RunWorkflowOptions,
  type ExecutionStatus,
  type IntentContext,
  type IntentRecord,
  type IntentExecutionRecord,
  type SubmitIntentOptions,
  type StoredEvent,
  type StoredEventsOptions,
  type PlanResult,
  type PlanOptions,
  type RunOptions,
  type PlannedExecutionRecord,
  Subscription,
} from 'utp-runtime'
import utpDefault from 'utp-runtime'

async function main(): Promise<void> {
  const v: string = version()
  const engine = new Engine({ variables: { weather_WEATHER_API_KEY: 'k' } }, { store: 'memory' })
  const fromPath = new Engine('./utp.yaml')
  const names: string[] = await engine.discover('./tools')
  const report: DiscoveryReport = await engine.discoverReport('./tools')
  for (const file of report.files) {
    if (file.status === 'registered') console.log(file.manual, file.tools)
    else if (file.status === 'failed') console.log(file.code, file.error)
    else console.log(file.reason)
  }
  const tools: string[] = await engine.registerManual({ tools: [] }, 'm')
  await engine.registerManual('./weather.utcp.json')
  const hits: Tool[] = engine.searchTools('forecast', { limit: 3, tags: ['weather'] })
  const first: Tool | undefined = hits[0]
  const kind: string | undefined = first?.tool_call_template.call_template_type
  const one: Tool = engine.tool('weather.get_forecast')
  const added: string = engine.registerTool('math.add', (args) => args.a + args.b, {
    inputs: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } } },
    description: 'Add',
    tags: ['math'],
  })
  engine.registerTool('math.later', async () => ({ ok: true }))
  const sum: number = await engine.callTool(added, { a: 1, b: 2 }, { timeout: 2.5, tenant: 't', session: null })
  const options: CallOptions = { timeout: 1 }
  await engine.callTool('math.later', undefined, options)
  await engine.callTool('math.later')
  await engine.callTool('math.later', {}, { user: 'u', approvalId: 'apr_1', failFastOnApproval: true })
  const streamOptions: CallStreamOptions = { timeout: 5, tenant: 't', signal: new AbortController().signal }
  const stream: ToolStream = engine.callToolStream('feed.news', { topic: 'rust' }, streamOptions)
  for await (const item of stream) console.log(item)
  const firstItem: IteratorResult<any, undefined> = await engine.callToolStream('feed.news').next()
  const streamClosed: boolean = stream.closed
  stream.close()
  console.log(firstItem, streamClosed)
  engine.domainLayer.addBusinessRule('max', (tool, action, params) => !(params.amount > 1000))
  engine.domainLayer.addBusinessRule('async', async (): Promise<RuleDecision> => ({ decision: 'escalate', reason: 'r' }), {
    timeout: 2,
  })
  const gone: boolean = engine.domainLayer.removeBusinessRule('max')
  const verdict: CheckResult = await engine.domainLayer.check('math.add', { a: 1 }, { tenant: 't' })
  const sub: Subscription = engine.eventBus.subscribe('tool.*', (event: UtpEvent) => console.log(event.type, event.data))
  engine.eventBus.subscribe('step.completed', async () => {})
  const ended: boolean = sub.unsubscribe() || engine.eventBus.unsubscribe(sub.id) || engine.eventBus.unsubscribe(sub)
  const events: UtpEvent[] = engine.eventBus.history({ limit: 10, type: 'policy.*', executionId: null, tool: 'm.t' })
  const flushed: boolean = await engine.eventBus.flush(2)
  const pending: Approval[] = engine.approvals({ pendingOnly: true })
  const granted: Approval = engine.approve('apr_1', { approved: false, reason: 'no' })
  const metrics: Metrics = engine.metrics()
  const text: string = engine.metricsText()
  try {
    await engine.callTool('math.add')
  } catch (e) {
    if (e instanceof UtpError && e.code === codes.RATE_LIMITED) console.log(e.retryAfter?.toFixed(1))
    if (e instanceof UtpError && e.code === codes.APPROVAL_REQUIRED && e.approvalId) engine.approve(e.approvalId)
  }
  console.log(gone, verdict.decision, ended, events, flushed, pending, granted.status, metrics.events.published, text)
  const wf: WorkflowDefinition = {
    name: 'restock',
    inputs: { sku: { type: 'string' }, extra: { type: 'integer', default: 100 } },
    timeout: '60s',
    max_parallel: 4,
    steps: [
      { id: 'stock', tool: 'shop.getInventory', args: { sku: '${{ inputs.sku }}' }, timeout: 5 },
      {
        id: 'update',
        tool: 'shop.setInventory',
        depends_on: ['stock'],
        if: 'steps.stock.output.count < 10',
        args: { count: '${{ steps.stock.output.count + 100 }}' },
        retry: { max_attempts: 3, initial_delay: '200ms', factor: 2, max_delay: '5s', jitter: 'full' },
        on_error: { fallback: { tool: 'shop.queueUpdate', args: { sku: '${{ inputs.sku }}' } } },
        set_state: { last: '${{ steps.update.output.count }}' },
      },
      { id: 'log', tool: 'sheets.appendRow', depends_on: ['update'], on_error: 'continue' },
    ],
    outputs: { new_count: '${{ steps.update.output.count }}' },
  }
  const runOptions: RunWorkflowOptions = { session: 's', tenant: 't', user: 'u', timeout: 30, signal: new AbortController().signal }
  const record: ExecutionRecord = await engine.runWorkflow(wf, { sku: 'A1' }, runOptions)
  await engine.runWorkflow('./restock.yaml')
  const status: ExecutionStatus = record.status
  const step: StepRecord | undefined = record.steps['update']
  if (step?.error) console.log(step.error.code, step.error.message, step.attempts, step.note, step.tool)
  const id: string = engine.startWorkflow('name: x\nsteps: []', null, { session: 's' })
  const current: ExecutionRecord = engine.execution(id)
  const waited: ExecutionRecord = await engine.waitExecution(id)
  const checked: WorkflowDefinition = engine.validateWorkflow(wf)
  const listed: ExecutionSummary[] = engine.executions({ status: 'failed', session: 's' })
  const controlled: boolean = engine.cancel(id) || engine.suspend(id) || engine.resume(id)
  const state: Record<string, any> = engine.sessionState('s', { tenant: 't' })
  const durable = new Engine({ store: { url: 'sqlite:utp.db', durability: 'sync', retention: '30d' } }, { store: 'sqlite:other.db' })
  const resumed: string[] = await durable.recover()
  const eventsOptions: StoredEventsOptions = { executionId: id, type: 'workflow.*', after: 3, limit: 10, since: null }
  const stored: StoredEvent[] = durable.storedEvents(eventsOptions)
  const seq: number | undefined = stored[0]?.seq
  const pruned: number = (await durable.prune('30d')) + (await durable.prune(3600))
  console.log(resumed, seq, pruned)
  const planOptions: PlanOptions = { session: 's', tenant: null, inputs: { ip: '8.8.8.8' } }
  const plan: PlanResult = await engine.plan('weather forecast for the city of an IP address', planOptions)
  const planned: WorkflowDefinition = plan.definition
  const tokens: number = plan.usage.total_tokens + plan.rounds
  console.log(planned.name, tokens, plan.provider, plan.model)
  const planRunOptions: RunOptions = { session: 's', tenant: 't', timeout: 30 }
  const ran: PlannedExecutionRecord = await engine.run('weather forecast for an IP', { ip: '8.8.8.8' }, planRunOptions)
  const ranAsRecord: ExecutionRecord = await engine.run('weather')
  console.log(ran.plan.definition.steps.length, ran.status, ranAsRecord.outputs)
  engine.setSessionState('s', 'k', { any: ['json'] }, { tenant: null })
  engine.registerIntent('restock', wf)
  engine.registerIntent('restock_yaml', 'name: x\nsteps: []')
  engine.registerIntent('lookup', async (ctx: IntentContext, params: { sku: string }) => {
    const seen: number = ctx.state.count ?? 0
    if (ctx.session) engine.setSessionState(ctx.session, 'count', seen + 1, { tenant: ctx.tenant })
    return { sku: params.sku, seen, id: ctx.executionId, intent: ctx.intent }
  })
  engine.registerIntent('sync', (ctx) => ctx.intent)
  const submitOptions: SubmitIntentOptions = { tenant: 't', session: 's' }
  const served = await engine.submitIntent('lookup', { sku: 'A1' }, submitOptions)
  if ('workflow' in served) {
    const run: IntentExecutionRecord = served
    console.log(run.intent, run.outputs)
  } else {
    const handled: IntentRecord = served
    if (handled.status === 'failed') console.log(handled.error?.code, handled.error?.message)
    console.log(handled.output, handled.session_id)
  }
  await engine.submitIntent('sync')
  const intents: string[] = engine.intents()
  const unregistered: boolean = engine.unregisterIntent('sync')
  console.log(intents, unregistered)
  console.log(status, current, waited.outputs?.new_count, checked.steps.length, listed[0]?.steps, controlled, state)
  const removed: boolean = engine.deregisterManual('weather')
  const manuals: string[] = engine.manuals()
  const vars: string[] = engine.requiredVariables('weather')
  engine.close()
  const closed: boolean = engine.closed
  {
    using scoped = new Engine()
    scoped.tools()
  }
  try {
    engine.tools()
  } catch (e) {
    if (e instanceof UtpError) {
      const code: ErrorCode = e.code
      if (e.code === codes.INVALID_ARGUMENT || e.code === UtpError.codes.NOT_FOUND) console.log(code)
    }
  }
  const same: typeof Engine = utpDefault.Engine
  console.log(v, names, tools, kind, one, sum, removed, manuals, vars, closed, fromPath, same)
}

// @ts-expect-error a number is not a manual name
new Engine().deregisterManual(5)
// @ts-expect-error a tool is a function
new Engine().registerTool('m.t', 'not a function')
// @ts-expect-error timeout is a number of seconds
void new Engine().callTool('m.t', {}, { timeout: '1s' })
// @ts-expect-error the signal is an AbortSignal
new Engine().callToolStream('m.t', {}, { signal: 'stop' })
// @ts-expect-error streams are made by the engine
new ToolStream()
// @ts-expect-error a rule is a function
new Engine().domainLayer.addBusinessRule('r', true)
// @ts-expect-error a decision is allow, deny or escalate
new Engine().domainLayer.addBusinessRule('r', () => ({ decision: 'maybe' }))
// @ts-expect-error subscriptions are made by the engine
new Subscription()
// @ts-expect-error a step needs a tool
new Engine().validateWorkflow({ name: 'x', steps: [{ id: 'a' }] })
// @ts-expect-error on_error is fail, continue or a fallback
void new Engine().runWorkflow({ name: 'x', steps: [{ id: 'a', tool: 'm.t', on_error: 'retry' }] })
// @ts-expect-error the run timeout is a number of seconds
new Engine().startWorkflow('wf.yaml', {}, { timeout: '1s' })
// @ts-expect-error statuses are a closed set
new Engine().executions({ status: 'done' })
// @ts-expect-error olderThan is seconds or text
void new Engine().prune(null)
// @ts-expect-error durability is sync, normal or off
new Engine({ store: { url: 'sqlite:x.db', durability: 'fast' } })
// @ts-expect-error codes are a closed set
const bad: ErrorCode = 'ERR_UTP_NOPE'

void main
void bad
