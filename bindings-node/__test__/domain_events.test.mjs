// The domain layer, approvals, events and metrics from JS (docs/design.md §4, §6, §8):
// engine.domainLayer (JS business rules, dry runs), config rules, rate limits,
// approvals, engine.eventBus (subscriptions, history, flush) and the metrics.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'

import { Engine, Subscription, UtpError, codes } from 'utp-runtime'
import { packageDir, sleep, rejectsWith, throwsWith } from './helpers.mjs'

/** The original UTP config shape (docs/design.md §6), without the trading-hours window. */
function bettingConfig(extra = {}) {
  return {
    permissions: { betfair: { enabled: true, allowed_actions: ['listMarkets', 'getOdds', 'placeBet'] } },
    business_rules: { max_bet_amount: 1000 },
    rules: [
      {
        name: 'max_bet',
        match: { tool: 'betfair', action: 'placeBet' },
        deny_if: 'params.amount > constants.max_bet_amount',
        message: 'bets above {{constants.max_bet_amount}} are not allowed',
      },
    ],
    ...extra,
  }
}

/** An engine with betfair.placeBet / getOdds / cancelBet as JS tools. */
function bettingEngine(config = undefined) {
  const engine = new Engine(config)
  const placed = []
  engine.registerTool('betfair.placeBet', (args) => {
    placed.push(args)
    return { ok: true, amount: args.amount }
  })
  engine.registerTool('betfair.getOdds', () => ({ odds: 2.5 }))
  engine.registerTool('betfair.cancelBet', () => ({ cancelled: true }))
  return { engine, placed }
}

// ---------------------------------------------------------------------------
// The original UTP examples, in JS
// ---------------------------------------------------------------------------

test('original UTP example: a max-bet business rule denies a 1500 bet', async () => {
  const engine = new Engine()
  engine.registerTool('betfair.placeBet', (args) => ({ placed: args.amount }))
  engine.domainLayer.addBusinessRule(
    'max_bet',
    (tool, action, params) => !(tool === 'betfair' && action === 'placeBet' && params.amount > 1000),
  )
  await rejectsWith(engine.callTool('betfair.placeBet', { amount: 1500 }), codes.PERMISSION_DENIED, /max_bet/)
  assert.deepEqual(await engine.callTool('betfair.placeBet', { amount: 500 }), { placed: 500 })
  engine.close()
})

test('original UTP example: an event bus subscriber is called', async () => {
  const engine = new Engine()
  engine.registerTool('betfair.placeBet', (args) => ({ placed: args.amount }))
  const completed = []
  const succeeded = []
  // Workflows do not exist yet: subscribing to their events is accepted (nothing arrives).
  const steps = engine.eventBus.subscribe('step.completed', (event) => completed.push(event))
  engine.eventBus.subscribe('tool.succeeded', (event) => succeeded.push(event))
  await engine.callTool('betfair.placeBet', { amount: 10 })
  assert.equal(await engine.eventBus.flush(5), true)
  assert.equal(succeeded.length, 1)
  assert.equal(succeeded[0].type, 'tool.succeeded')
  assert.equal(succeeded[0].tool, 'betfair.placeBet')
  assert.equal(completed.length, 0)
  assert.ok(steps instanceof Subscription)
  assert.equal(steps.pattern, 'step.completed')
  assert.equal(steps.unsubscribe(), true)
  engine.close()
})

// ---------------------------------------------------------------------------
// domainLayer.addBusinessRule / removeBusinessRule
// ---------------------------------------------------------------------------

test('a rule gets (tool = manual, action, params) and sees every call', async () => {
  const { engine } = bettingEngine()
  const seen = []
  engine.domainLayer.addBusinessRule('spy', (tool, action, params) => {
    seen.push([tool, action, params])
    return true
  })
  await engine.callTool('betfair.placeBet', { amount: 5, market: 'm1' })
  await engine.callTool('betfair.getOdds')
  assert.deepEqual(seen, [
    ['betfair', 'placeBet', { amount: 5, market: 'm1' }],
    ['betfair', 'getOdds', {}],
  ])
  engine.close()
})

test('removeBusinessRule removes a rule, once', async () => {
  const { engine } = bettingEngine()
  engine.domainLayer.addBusinessRule('no_bets', (tool, action) => action !== 'placeBet')
  await rejectsWith(engine.callTool('betfair.placeBet', { amount: 1 }), codes.PERMISSION_DENIED, /no_bets/)
  assert.equal(engine.domainLayer.removeBusinessRule('no_bets'), true)
  assert.equal(engine.domainLayer.removeBusinessRule('no_bets'), false)
  assert.deepEqual(await engine.callTool('betfair.placeBet', { amount: 1 }), { ok: true, amount: 1 })
  // The name is free again.
  engine.domainLayer.addBusinessRule('no_bets', () => true)
  engine.close()
})

test('async rules: a Promise of a boolean or of a decision, and thenables', async () => {
  const { engine } = bettingEngine()
  engine.domainLayer.addBusinessRule('slow_limit', async (tool, action, params) => {
    await sleep(5)
    return !(params.amount > 100)
  })
  engine.domainLayer.addBusinessRule('decision', async (tool, action) => {
    await sleep(1)
    return action === 'cancelBet' ? { decision: 'deny', reason: 'cancelling is closed today' } : { decision: 'allow' }
  })
  engine.domainLayer.addBusinessRule('thenable', () => ({ then: (resolve) => resolve(true) }))
  assert.deepEqual(await engine.callTool('betfair.placeBet', { amount: 100 }), { ok: true, amount: 100 })
  await rejectsWith(engine.callTool('betfair.placeBet', { amount: 101 }), codes.PERMISSION_DENIED, /slow_limit/)
  await rejectsWith(
    engine.callTool('betfair.cancelBet', {}),
    codes.PERMISSION_DENIED,
    /cancelling is closed today/,
    /\(decision\)/,
  )
  engine.close()
})

test('a throwing or rejecting rule denies, naming the rule and the error', async () => {
  const { engine, placed } = bettingEngine()
  engine.domainLayer.addBusinessRule('broken', () => {
    throw new Error('rule database unavailable')
  })
  await rejectsWith(
    engine.callTool('betfair.getOdds'),
    codes.PERMISSION_DENIED,
    /business rule 'broken' failed/,
    /threw: rule database unavailable/,
  )
  engine.domainLayer.removeBusinessRule('broken')
  engine.domainLayer.addBusinessRule('rejecting', async () => {
    throw new TypeError('no odds feed')
  })
  await rejectsWith(
    engine.callTool('betfair.placeBet', { amount: 1 }),
    codes.PERMISSION_DENIED,
    /business rule 'rejecting' failed/,
    /promise rejected: .*no odds feed/,
  )
  engine.domainLayer.removeBusinessRule('rejecting')
  engine.domainLayer.addBusinessRule('throws_string', () => {
    throw 'plain string' // eslint-disable-line no-throw-literal
  })
  await rejectsWith(engine.callTool('betfair.getOdds'), codes.PERMISSION_DENIED, /throws_string/, /threw/)
  assert.equal(placed.length, 0, 'a denied call never reaches the tool')
  engine.close()
})

test('a rule returning the wrong type denies and says what it returned', async () => {
  const cases = [
    [() => 'yes', /returned a string/],
    [() => 1, /returned a number/],
    [() => undefined, /returned undefined/],
    [() => null, /returned null/],
    [() => [true], /returned an array/],
    [() => ({ decision: 'maybe' }), /unknown decision 'maybe'/],
    [() => ({ allow: true }), /unknown key 'allow'/],
    [() => ({ reason: 'x' }), /without 'decision'/],
    [() => ({ decision: 'deny', reason: 5 }), /reason must be a string/],
    [async () => 'later', /returned a string/],
    [() => () => true, /returned a function/],
    [() => 10n, /BigInt/],
  ]
  for (const [i, [fn, pattern]] of cases.entries()) {
    const { engine } = bettingEngine()
    engine.domainLayer.addBusinessRule(`wrong_${i}`, fn)
    await rejectsWith(engine.callTool('betfair.getOdds'), codes.PERMISSION_DENIED, new RegExp(`wrong_${i}`), pattern)
    engine.close()
  }
})

test('a rule that does not answer within its timeout denies', async () => {
  const { engine } = bettingEngine()
  engine.domainLayer.addBusinessRule('stuck', () => new Promise(() => {}), { timeout: 0.2 })
  const started = Date.now()
  await rejectsWith(engine.callTool('betfair.getOdds'), codes.PERMISSION_DENIED, /stuck/, /did not answer within 0.200 s/)
  assert.ok(Date.now() - started < 5000)
  engine.close()
})

test('escalating rules need an approval', async () => {
  const { engine } = bettingEngine()
  engine.domainLayer.addBusinessRule('big_bets', (tool, action, params) =>
    params.amount > 500 ? { decision: 'escalate', reason: 'a big bet needs a second pair of eyes' } : true,
  )
  const error = await rejectsWith(
    engine.callTool('betfair.placeBet', { amount: 600 }, { failFastOnApproval: true }),
    codes.APPROVAL_REQUIRED,
    /second pair of eyes/,
  )
  assert.match(error.approvalId, /^apr_/)
  const [pending] = engine.approvals({ pendingOnly: true })
  assert.equal(pending.id, error.approvalId)
  assert.equal(pending.reason, 'a big bet needs a second pair of eyes (big_bets)')
  engine.close()
})

test('bad arguments: not a function, empty or duplicate names, bad options', async () => {
  const { engine } = bettingEngine()
  const dl = engine.domainLayer
  for (const notFn of [undefined, null, 1, 'x', {}, [], Promise.resolve(true)]) {
    throwsWith(() => dl.addBusinessRule('r', notFn), codes.INVALID_ARGUMENT, /fn must be a function/)
  }
  throwsWith(() => dl.addBusinessRule('', () => true), codes.INVALID_ARGUMENT, /needs a name/)
  throwsWith(() => dl.addBusinessRule('  ', () => true), codes.INVALID_ARGUMENT, /needs a name/)
  throwsWith(() => dl.addBusinessRule(5, () => true), codes.INVALID_ARGUMENT)
  throwsWith(() => dl.addBusinessRule(undefined, () => true), codes.INVALID_ARGUMENT)
  dl.addBusinessRule('dup', () => true)
  throwsWith(() => dl.addBusinessRule('dup', () => false), codes.ALREADY_EXISTS, /'dup' is already registered/)
  throwsWith(() => dl.addBusinessRule('t', () => true, { timeout: -1 }), codes.INVALID_ARGUMENT, /timeout/)
  throwsWith(() => dl.addBusinessRule('t', () => true, { timeout: NaN }), codes.INVALID_ARGUMENT, /timeout/)
  throwsWith(() => dl.addBusinessRule('t', () => true, { timout: 1 }), codes.INVALID_ARGUMENT, /unknown addBusinessRule option 'timout'/)
  throwsWith(() => dl.addBusinessRule('t', () => true, 'fast'), codes.INVALID_ARGUMENT, /must be an object/)
  throwsWith(() => dl.removeBusinessRule(1), codes.INVALID_ARGUMENT)
  // The rejected registrations left nothing behind.
  assert.equal(dl.removeBusinessRule('t'), false)
  assert.equal(dl.removeBusinessRule('r'), false)

  const bus = engine.eventBus
  for (const notFn of [undefined, 1, 'x', {}]) {
    throwsWith(() => bus.subscribe('*', notFn), codes.INVALID_ARGUMENT, /fn must be a function/)
  }
  throwsWith(() => bus.subscribe('', () => {}), codes.INVALID_ARGUMENT, /pattern is empty/)
  throwsWith(() => bus.subscribe(7, () => {}), codes.INVALID_ARGUMENT)
  for (const bad of [undefined, 'one', {}, null]) {
    throwsWith(() => bus.unsubscribe(bad), codes.INVALID_ARGUMENT, /Subscription or its numeric id/)
  }
  throwsWith(() => bus.unsubscribe(-1), codes.INVALID_ARGUMENT)
  throwsWith(() => bus.unsubscribe(1.5), codes.INVALID_ARGUMENT)
  assert.equal(bus.unsubscribe(123456), false)
  throwsWith(() => bus.history({ limt: 1 }), codes.INVALID_ARGUMENT, /unknown history option 'limt'/)
  throwsWith(() => bus.history({ limit: -1 }), codes.INVALID_ARGUMENT, /limit/)
  throwsWith(() => bus.history({ type: 5 }), codes.INVALID_ARGUMENT, /type must be a string/)
  throwsWith(() => bus.history('all'), codes.INVALID_ARGUMENT)
  await rejectsWith(bus.flush(-1), codes.INVALID_ARGUMENT, /timeout/)
  await rejectsWith(bus.flush('1s'), codes.INVALID_ARGUMENT, /timeout/)

  await rejectsWith(dl.check('betfair.nope', {}), codes.NOT_FOUND)
  await rejectsWith(dl.check('betfair.placeBet', [1]), codes.INVALID_ARGUMENT, /object/)
  await rejectsWith(dl.check('betfair.placeBet', {}, { tenantt: 'a' }), codes.INVALID_ARGUMENT, /unknown check option/)

  throwsWith(() => engine.approve('apr_nope'), codes.NOT_FOUND)
  throwsWith(() => engine.approve('apr_nope', { approved: 'yes' }), codes.INVALID_ARGUMENT, /approved must be a boolean/)
  throwsWith(() => engine.approvals({ pending: true }), codes.INVALID_ARGUMENT, /unknown approvals option/)
  throwsWith(() => engine.approvals({ pendingOnly: 1 }), codes.INVALID_ARGUMENT, /pendingOnly must be a boolean/)
  throwsWith(() => new Subscription(), codes.INVALID_ARGUMENT, /created by the engine/)

  engine.close()
  throwsWith(() => dl.addBusinessRule('late', () => true), codes.INVALID_ARGUMENT, /closed/)
  throwsWith(() => bus.subscribe('*', () => {}), codes.INVALID_ARGUMENT, /closed/)
  throwsWith(() => engine.metrics(), codes.INVALID_ARGUMENT, /closed/)
  await rejectsWith(dl.check('betfair.placeBet', {}), codes.INVALID_ARGUMENT, /closed/)
})

// ---------------------------------------------------------------------------
// domainLayer.check (dry run)
// ---------------------------------------------------------------------------

test('check is a dry run: the decision and the rules behind it, nothing consumed', async () => {
  const { engine, placed } = bettingEngine(
    bettingConfig({ rate_limits: [{ match: { tool: 'betfair', action: 'placeBet' }, per: 'tenant', limit: 1, window: '1h' }] }),
  )
  let ruleCalls = 0
  engine.domainLayer.addBusinessRule('js_rule', (tool, action, params) => {
    ruleCalls++
    return params.amount !== 13
  })
  const big = await engine.domainLayer.check('betfair.placeBet', { amount: 1500 }, { tenant: 'acme' })
  assert.equal(big.tool, 'betfair.placeBet')
  assert.equal(big.decision, 'deny')
  assert.deepEqual(big.rules.map((r) => [r.rule, r.effect]), [['max_bet', 'deny']])
  assert.match(big.reason, /bets above 1000 are not allowed/)
  const unlucky = await engine.domainLayer.check('betfair.placeBet', { amount: 13 })
  assert.deepEqual(unlucky.rules.map((r) => r.rule), ['js_rule'])
  const ok = await engine.domainLayer.check('betfair.placeBet', { amount: 10 }, { tenant: 'acme' })
  assert.equal(ok.decision, 'allow')
  assert.equal(ok.reason, null)
  assert.equal(ok.rate_limited, null)
  // Dry runs took no budget: the one call the limit allows still passes, then the check reports it.
  await engine.callTool('betfair.placeBet', { amount: 10 }, { tenant: 'acme' })
  const limited = await engine.domainLayer.check('betfair.placeBet', { amount: 10 }, { tenant: 'acme' })
  assert.equal(limited.decision, 'allow')
  assert.ok(limited.rate_limited.retry_after_ms > 0)
  assert.equal(placed.length, 1)
  assert.equal(ruleCalls, 5)
  assert.equal(engine.approvals().length, 0)
  engine.close()
})

// ---------------------------------------------------------------------------
// Config rules: permissions, CEL rules, rate limits, security levels
// ---------------------------------------------------------------------------

test('config permissions: a disabled manual and actions outside allowed_actions are denied', async () => {
  const disabled = bettingEngine({ permissions: { betfair: { enabled: false } } }).engine
  await rejectsWith(disabled.callTool('betfair.getOdds'), codes.PERMISSION_DENIED, /'betfair' is disabled/, /permissions/)
  disabled.close()

  const { engine } = bettingEngine(bettingConfig())
  assert.deepEqual(await engine.callTool('betfair.getOdds'), { odds: 2.5 })
  await rejectsWith(
    engine.callTool('betfair.cancelBet'),
    codes.PERMISSION_DENIED,
    /action 'cancelBet' is not among the allowed actions of 'betfair'/,
  )
  engine.close()
})

test('config CEL rule: deny_if params.amount > constants.max_bet_amount', async () => {
  const { engine, placed } = bettingEngine(bettingConfig())
  await rejectsWith(
    engine.callTool('betfair.placeBet', { amount: 1500 }),
    codes.PERMISSION_DENIED,
    /bets above 1000 are not allowed \(max_bet\)/,
  )
  assert.deepEqual(await engine.callTool('betfair.placeBet', { amount: 500 }), { ok: true, amount: 500 })
  assert.deepEqual(await engine.callTool('betfair.placeBet', { amount: 1000 }), { ok: true, amount: 1000 })
  assert.deepEqual(placed.map((p) => p.amount), [500, 1000])
  engine.close()
})

test('config rate limit: RATE_LIMITED with retryAfter, per tenant', async () => {
  const config = bettingConfig({
    rate_limits: [{ match: { tool: 'betfair', action: 'placeBet' }, per: 'tenant', limit: 2, window: '1s' }],
  })
  const { engine } = bettingEngine(config)
  const bet = (tenant) => engine.callTool('betfair.placeBet', { amount: 1 }, { tenant })
  await bet('acme')
  await bet('acme')
  const error = await rejectsWith(bet('acme'), codes.RATE_LIMITED, /rate limited/, /retry after/)
  assert.equal(typeof error.retryAfter, 'number')
  assert.ok(error.retryAfter > 0 && error.retryAfter <= 1, `retryAfter ${error.retryAfter}`)
  assert.equal(error.approvalId, undefined)
  await bet('other') // another tenant has its own budget
  await sleep(Math.ceil(error.retryAfter * 1000) + 20)
  await bet('acme')
  const limited = engine.eventBus.history({ type: 'ratelimit.limited' })
  assert.equal(limited.length, 1)
  assert.equal(limited[0].tenant, 'acme')
  assert.equal(engine.metrics().tools['betfair.placeBet'].rate_limited, 1)
  engine.close()
})

// ---------------------------------------------------------------------------
// Approvals
// ---------------------------------------------------------------------------

const restricted = () => bettingConfig({ security: { levels: { 'betfair.placeBet': 'restricted' } } })

test('approvals: fail fast, approve, call again with the approval id (once)', async () => {
  const { engine, placed } = bettingEngine(restricted())
  const args = { amount: 50 }
  const error = await rejectsWith(
    engine.callTool('betfair.placeBet', args, { failFastOnApproval: true, tenant: 'acme' }),
    codes.APPROVAL_REQUIRED,
    /needs an approval/,
  )
  const id = error.approvalId
  assert.match(id, /^apr_[0-9a-f]+$/)
  assert.equal(error.retryAfter, undefined)
  const pending = engine.approvals({ pendingOnly: true })
  assert.deepEqual(pending.map((a) => [a.id, a.tool, a.tenant, a.status]), [[id, 'betfair.placeBet', 'acme', 'pending']])
  // Nothing in the arguments approves a call.
  await rejectsWith(
    engine.callTool('betfair.placeBet', { ...args, approved: true, approval_id: id }, { failFastOnApproval: true }),
    codes.APPROVAL_REQUIRED,
  )
  const approved = engine.approve(id, { reason: 'checked by ops' })
  assert.equal(approved.status, 'approved')
  assert.equal(approved.resolution_reason, 'checked by ops')
  assert.ok(!engine.approvals({ pendingOnly: true }).some((a) => a.id === id))
  assert.ok(engine.approvals().some((a) => a.id === id && a.status === 'approved'))
  assert.deepEqual(await engine.callTool('betfair.placeBet', args, { approvalId: id, tenant: 'acme' }), {
    ok: true,
    amount: 50,
  })
  // An approval lets one call through.
  await rejectsWith(
    engine.callTool('betfair.placeBet', args, { approvalId: id, tenant: 'acme' }),
    codes.PERMISSION_DENIED,
    /already used/,
  )
  assert.equal(placed.length, 1)
  const resolved = engine.eventBus.history({ type: 'approval.*' })
  assert.deepEqual(
    resolved.map((e) => e.type),
    ['approval.requested', 'approval.requested', 'approval.resolved'],
  )
  engine.close()
})

test('approvals: a waiting call is released by approve, or denied by a refusal', async () => {
  const { engine } = bettingEngine(restricted())
  const waitForPending = async () => {
    for (let i = 0; i < 500; i++) {
      const [first] = engine.approvals({ pendingOnly: true })
      if (first) return first
      await sleep(5)
    }
    assert.fail('no approval was requested')
  }
  const waiting = engine.callTool('betfair.placeBet', { amount: 5 }, { timeout: 10 })
  const first = await waitForPending()
  engine.approve(first.id)
  assert.deepEqual(await waiting, { ok: true, amount: 5 })

  const refused = engine.callTool('betfair.placeBet', { amount: 6 }, { timeout: 10 })
  const second = await waitForPending()
  const info = engine.approve(second.id, { approved: false, reason: 'too risky' })
  assert.equal(info.status, 'denied')
  await rejectsWith(refused, codes.PERMISSION_DENIED, /refused \(too risky\)/)
  throwsWith(() => engine.approve(second.id), codes.INVALID_ARGUMENT)
  engine.close()
})

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

test('subscribers get tool.called / tool.succeeded / policy.denied as plain objects', async () => {
  const { engine } = bettingEngine(bettingConfig())
  engine.domainLayer.addBusinessRule('no_friday_13', (tool, action, params) => params.amount !== 13)
  const toolEvents = []
  const denied = []
  const all = []
  engine.eventBus.subscribe('tool.*', (event) => toolEvents.push(event))
  engine.eventBus.subscribe('policy.denied', async (event) => {
    await sleep(1)
    denied.push(event)
  })
  engine.eventBus.subscribe('*', (event) => all.push(event.type))
  await engine.callTool('betfair.placeBet', { amount: 20 }, { tenant: 'acme', session: 's1' })
  await assert.rejects(engine.callTool('betfair.placeBet', { amount: 1500 }))
  await assert.rejects(engine.callTool('betfair.placeBet', { amount: 13 }))
  assert.equal(await engine.eventBus.flush(5), true)

  assert.deepEqual(toolEvents.map((e) => e.type), ['tool.called', 'tool.succeeded'])
  const [called, succeeded] = toolEvents
  assert.equal(called.tool, 'betfair.placeBet')
  assert.equal(called.tenant, 'acme')
  assert.equal(called.session_id, 's1')
  assert.equal(typeof called.id, 'number')
  assert.ok(succeeded.id > called.id)
  assert.match(called.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  assert.equal(Object.getPrototypeOf(called), Object.prototype)
  assert.equal(JSON.stringify(called).includes('"amount"'), false, 'events carry no arguments')

  assert.equal(denied.length, 2)
  assert.deepEqual(denied[0].data.rules.map((r) => r.rule), ['max_bet'])
  assert.equal(denied[0].data.decision, 'deny')
  assert.deepEqual(denied[1].data.rules.map((r) => r.rule), ['no_friday_13'])
  assert.match(denied[1].data.reason, /no_friday_13/)
  assert.deepEqual(all, ['tool.called', 'tool.succeeded', 'policy.denied', 'policy.denied'])
  engine.close()
})

test('history filters: type, tool, tenant, limit, since', async () => {
  const { engine } = bettingEngine(bettingConfig())
  await engine.callTool('betfair.placeBet', { amount: 1 }, { tenant: 'a' })
  await engine.callTool('betfair.getOdds', {}, { tenant: 'b' })
  await assert.rejects(engine.callTool('betfair.placeBet', { amount: 5000 }, { tenant: 'a' }))
  const bus = engine.eventBus
  const all = bus.history()
  assert.ok(all.some((e) => e.type === 'manual.registered'))
  assert.deepEqual(bus.history({ type: 'tool.succeeded' }).map((e) => e.tool), ['betfair.placeBet', 'betfair.getOdds'])
  assert.deepEqual(bus.history({ tool: 'betfair.getOdds' }).map((e) => e.type), ['tool.called', 'tool.succeeded'])
  assert.deepEqual(bus.history({ tenant: 'a', type: 'policy.*' }).map((e) => e.type), ['policy.denied'])
  assert.equal(bus.history({ limit: 2 }).length, 2)
  assert.deepEqual(bus.history({ limit: 1 })[0], all.at(-1))
  const since = all.at(-3).id
  assert.deepEqual(bus.history({ since }).map((e) => e.id), all.slice(-2).map((e) => e.id))
  assert.deepEqual(bus.history({ executionId: 'none' }), [])
  assert.deepEqual(bus.history(null), all)
  engine.close()
})

test('unsubscribe by object or id; a subscription stops receiving', async () => {
  const { engine } = bettingEngine()
  const a = []
  const b = []
  const subA = engine.eventBus.subscribe('tool.succeeded', (e) => a.push(e.id))
  const subB = engine.eventBus.subscribe('tool.succeeded', (e) => b.push(e.id))
  assert.equal(typeof subA.id, 'number')
  assert.notEqual(subA.id, subB.id)
  assert.throws(() => {
    subA.id = 99
  }, TypeError)
  await engine.callTool('betfair.getOdds')
  await engine.eventBus.flush()
  assert.equal(subA.unsubscribe(), true)
  assert.equal(subA.unsubscribe(), false)
  assert.equal(engine.eventBus.unsubscribe(subB.id), true)
  assert.equal(engine.eventBus.unsubscribe(subB), false)
  await engine.callTool('betfair.getOdds')
  await engine.eventBus.flush()
  assert.equal(a.length, 1)
  assert.equal(b.length, 1)
  engine.close()
})

test('throwing and rejecting subscribers are counted and never break a call', async () => {
  const { engine } = bettingEngine()
  const good = []
  const throwing = engine.eventBus.subscribe('tool.*', () => {
    throw new Error('subscriber bug')
  })
  const rejecting = engine.eventBus.subscribe('tool.succeeded', async () => {
    throw new Error('async subscriber bug')
  })
  engine.eventBus.subscribe('tool.succeeded', (e) => good.push(e))
  for (let i = 0; i < 3; i++) assert.deepEqual(await engine.callTool('betfair.getOdds'), { odds: 2.5 })
  assert.equal(await engine.eventBus.flush(5), true)
  assert.equal(good.length, 3)
  const metrics = engine.metrics()
  assert.equal(metrics.events.subscriber_errors, 9)
  const byId = Object.fromEntries(metrics.events.subscribers.map((s) => [s.id, s]))
  assert.equal(byId[throwing.id].errors, 6)
  assert.equal(byId[throwing.id].delivered, 6)
  assert.match(byId[throwing.id].last_error, /threw: subscriber bug/)
  assert.equal(byId[rejecting.id].errors, 3)
  assert.match(byId[rejecting.id].last_error, /promise rejected: .*async subscriber bug/)
  const text = engine.metricsText()
  assert.match(text, /^utp_event_subscriber_errors_total 9$/m)
  assert.match(text, new RegExp(`^utp_event_subscription_errors_total\\{subscription="${throwing.id}",pattern="tool\\.\\*"\\} 6$`, 'm'))
  // Ended subscriptions keep their part of the total.
  throwing.unsubscribe()
  assert.equal(engine.metrics().events.subscriber_errors, 9)
  engine.close()
})

test('a slow subscriber gets at most queue_capacity events at once; the rest are dropped and counted', async () => {
  const { engine } = bettingEngine({ events: { queue_capacity: 4 } })
  let started = 0
  let holding = true
  const release = []
  const sub = engine.eventBus.subscribe('tool.*', () => {
    started++
    return holding ? new Promise((resolve) => release.push(resolve)) : undefined
  })
  const results = await Promise.all(Array.from({ length: 10 }, () => engine.callTool('betfair.getOdds')))
  assert.equal(results.length, 10, 'calls never wait for a subscriber')
  assert.equal(await engine.eventBus.flush(0.2), false, 'four handlers are still pending')
  assert.equal(started, 4)
  const mine = engine.metrics().events.subscribers.find((s) => s.id === sub.id)
  assert.equal(mine.queued, 4)
  assert.equal(mine.dropped + mine.queued, 20)
  assert.match(engine.metricsText(), /^utp_event_drops_total 16$/m)
  holding = false
  for (const r of release) r()
  assert.equal(await engine.eventBus.flush(5), true)
  await engine.callTool('betfair.getOdds')
  assert.equal(await engine.eventBus.flush(5), true)
  assert.equal(started, 6)
  engine.close()
})

test('metrics and metricsText report calls and denials', async () => {
  const { engine } = bettingEngine(bettingConfig())
  engine.domainLayer.addBusinessRule('max_bet_js', (tool, action, params) => !(params.amount > 900))
  await engine.callTool('betfair.placeBet', { amount: 100 })
  await assert.rejects(engine.callTool('betfair.placeBet', { amount: 1500 }))
  await assert.rejects(engine.callTool('betfair.placeBet', { amount: 950 }))
  const m = engine.metrics().tools['betfair.placeBet']
  assert.deepEqual(m.calls, { succeeded: 1, failed: 0 })
  assert.equal(m.policy_denied, 2)
  const text = engine.metricsText()
  assert.match(text, /^# TYPE utp_policy_denied_total counter$/m)
  assert.match(text, /^utp_policy_denied_total\{tool="betfair\.placeBet"\} 2$/m)
  assert.match(text, /^utp_tool_calls_total\{tool="betfair\.placeBet",outcome="success"\} 1$/m)
  engine.close()
})

// ---------------------------------------------------------------------------
// Load and process behaviour
// ---------------------------------------------------------------------------

test('200 concurrent calls through an async JS rule', async () => {
  const { engine, placed } = bettingEngine()
  let ruleCalls = 0
  engine.domainLayer.addBusinessRule('max_bet', async (tool, action, params) => {
    ruleCalls++
    await sleep(Math.random() * 5)
    return !(tool === 'betfair' && action === 'placeBet' && params.amount > 1000)
  })
  const succeeded = []
  engine.eventBus.subscribe('tool.succeeded', (e) => succeeded.push(e.id))
  const started = process.hrtime.bigint()
  const outcomes = await Promise.allSettled(
    Array.from({ length: 200 }, (_, i) => engine.callTool('betfair.placeBet', { amount: i % 2 ? 1500 : 500, i })),
  )
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  const ok = outcomes.filter((o) => o.status === 'fulfilled')
  const denied = outcomes.filter((o) => o.status === 'rejected')
  assert.equal(ok.length, 100)
  assert.equal(denied.length, 100)
  for (const d of denied) assert.equal(d.reason.code, codes.PERMISSION_DENIED)
  assert.ok(ok.every((o) => o.value.amount === 500))
  assert.equal(placed.length, 100)
  assert.equal(ruleCalls, 200)
  assert.equal(await engine.eventBus.flush(5), true)
  assert.equal(succeeded.length, 100)
  assert.ok(ms < 20_000, `took ${ms} ms`)
  engine.close()
})

/** Run `source` as an ESM script in a fresh node, from the package directory. */
function runScript(source, timeout = 30_000) {
  const started = Date.now()
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', source], {
    cwd: packageDir,
    encoding: 'utf8',
    timeout,
  })
  return { ...result, elapsed: Date.now() - started }
}

test('a script with a business rule and live subscriptions exits by itself', () => {
  const r = runScript(`
    import { Engine } from 'utp-runtime'
    const engine = new Engine()
    engine.registerTool('betfair.placeBet', (args) => ({ placed: args.amount }))
    engine.domainLayer.addBusinessRule('max_bet', async (tool, action, params) => !(params.amount > 1000))
    const seen = []
    engine.eventBus.subscribe('*', (event) => { seen.push(event.type) })
    engine.eventBus.subscribe('step.completed', () => {})
    const ok = await engine.callTool('betfair.placeBet', { amount: 10 })
    const denied = await engine.callTool('betfair.placeBet', { amount: 1500 }).catch((e) => e.code)
    await engine.eventBus.flush(5)
    console.log(JSON.stringify({ ok, denied, seen }))
    // No close(): the rule, the subscriptions and their threads must not keep node alive.
  `)
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  assert.deepEqual(out.ok, { placed: 10 })
  assert.equal(out.denied, 'ERR_UTP_PERMISSION_DENIED')
  assert.deepEqual(out.seen, ['tool.called', 'tool.succeeded', 'policy.denied'])
  assert.ok(r.elapsed < 5_000, `took ${r.elapsed} ms`)
})

test('a script that ends while a rule and a subscriber are busy still exits', () => {
  // A pending callTool holds the process like any pending I/O, until it settles: a
  // rule that never answers settles it (denied) after the rule's timeout; the
  // never-settling subscriber Promise and the rule itself hold nothing.
  const r = runScript(`
    import { Engine } from 'utp-runtime'
    const engine = new Engine()
    engine.registerTool('m.t', () => 1)
    engine.domainLayer.addBusinessRule('never', () => new Promise(() => {}), { timeout: 0.5 })
    engine.eventBus.subscribe('*', () => new Promise(() => {}))
    void engine.callTool('m.t').catch((e) => console.log(e.code))
    console.log('started')
  `)
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(r.stdout.trim().split('\n'), ['started', 'ERR_UTP_PERMISSION_DENIED'])
  assert.ok(r.elapsed < 5_000, `took ${r.elapsed} ms`)
})
