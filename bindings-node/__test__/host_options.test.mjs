// The shared host-option cases (tests/scenarios/host_options.json) through the public
// API: the same bad option gets the same code and message from C, Python and Node
// (utp_core::host checks them all).
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'

import { Engine, codes } from 'utp-runtime'
import { repoRoot } from './helpers.mjs'

const scenarios = JSON.parse(fs.readFileSync(path.join(repoRoot, 'tests', 'scenarios', 'host_options.json'), 'utf8'))
const cases = scenarios.cases.filter((c) => !(c.skip && 'node' in c.skip))

/** A one-step workflow over the echo tool. */
const workflow = { name: 'host_options', steps: [{ id: 'a', tool: 'host.echo', args: { v: 1 } }] }

/** Run one case's input through the public API its kind belongs to; resolves or throws. */
async function run(engine, kind, input) {
  switch (kind) {
    case 'call_options':
      return engine.callTool('host.echo', { v: 1 }, input)
    case 'run_options':
      return engine.runWorkflow(workflow, {}, input)
    case 'plan_options':
      return engine.plan('echo the value', input)
    case 'event_filter':
      return engine.storedEvents(input)
    case 'history_filter':
      return engine.eventBus.history(input)
    case 'subscribe':
      return engine.eventBus.subscribe(input.pattern, () => {}).unsubscribe()
    case 'store':
      return new Engine(null, input).close()
    default:
      throw new Error(`unknown kind ${kind}`)
  }
}

test('the shared host-option table has cases for Node', () => {
  assert.ok(cases.length >= 20, `only ${cases.length} cases`)
})

const engine = new Engine()
engine.registerTool('host.echo', (args) => args)
test.after(() => engine.close())

for (const c of cases) {
  test(`host options: ${c.kind}: ${c.name}`, async () => {
    let outcome
    try {
      await run(engine, c.kind, c.input)
      outcome = { ok: true }
    } catch (err) {
      outcome = { ok: false, err }
    }
    if (c.code === null) {
      assert.ok(outcome.ok, `expected ok, got ${outcome.err?.code}: ${outcome.err?.message}`)
      return
    }
    assert.ok(!outcome.ok, 'expected an error, got ok')
    assert.equal(outcome.err.code, codes[c.code], outcome.err.message)
    assert.ok(
      outcome.err.message.includes(c.message),
      `message ${JSON.stringify(outcome.err.message)} lacks ${JSON.stringify(c.message)}`,
    )
  })
}
