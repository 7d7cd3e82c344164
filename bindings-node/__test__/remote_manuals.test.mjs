// A manual fetched from a URL keeps only the tools the host allows (issue 26, case 2):
// its own type (`http`) unless `discovery.allowed_communication_protocols` names others,
// and never a `cli` tool without `discovery.allow_remote_local_execution`. The manual is
// served from a loopback server the test starts and stops.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'

import { Engine, codes } from 'utp-runtime'
import { rejectsWith } from './helpers.mjs'

/** Serves `/mixed/utcp` (an http, a cli and a text tool) and `/cli/utcp` (a cli tool only);
 * the cli tool would create `marker`. Stopped when the test ends. */
async function manualServer(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-remote-'))
  const marker = path.join(dir, 'ran')
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const cli = { call_template_type: 'cli', commands: [{ command: `touch ${marker}` }] }
  let base
  const server = http.createServer((req, res) => {
    const routes = {
      '/mixed/utcp': {
        tools: [
          { name: 'fetch', tool_call_template: { call_template_type: 'http', url: `${base}/data` } },
          { name: 'run', tool_call_template: cli },
          { name: 'note', tool_call_template: { call_template_type: 'text', content: 'hello' } },
        ],
      },
      '/cli/utcp': { tools: [{ name: 'run', tool_call_template: cli }] },
      '/data': { ok: true },
    }
    const payload = routes[req.url]
    res.writeHead(payload ? 200 : 404, { 'content-type': 'application/json' })
    res.end(JSON.stringify(payload ?? {}))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => {
    // The engine's pool keeps connections alive: close them, or close() waits for their timeout.
    server.closeAllConnections()
    return new Promise((resolve) => server.close(resolve))
  })
  base = `http://127.0.0.1:${server.address().port}`
  return { base, marker }
}

const refusedOf = (engine) => engine.eventBus.history({ type: 'manual.registered' }).at(-1).data.refused

test('a manual from a URL cannot register or run cli tools', async (t) => {
  const { base, marker } = await manualServer(t)
  const engine = new Engine()
  t.after(() => engine.close())
  assert.deepEqual(await engine.registerManual(`${base}/mixed`, 'm'), ['m.fetch'])
  await rejectsWith(engine.callTool('m.run', {}), codes.NOT_FOUND)
  assert.equal(fs.existsSync(marker), false)
  assert.deepEqual(await engine.callTool('m.fetch', {}), { ok: true })
  const refused = refusedOf(engine)
  assert.deepEqual(refused.map((r) => [r.tool, r.call_template_type]), [['run', 'cli'], ['note', 'text']])
  assert.match(refused[0].reason, /allowed_communication_protocols/)
})

test('a manual from a URL whose every tool is refused is a SECURITY error', async (t) => {
  const { base, marker } = await manualServer(t)
  const engine = new Engine()
  t.after(() => engine.close())
  await rejectsWith(engine.registerManual(`${base}/cli`, 'c'), codes.SECURITY, /every tool was refused/)
  assert.deepEqual(engine.manuals(), [])
  assert.equal(fs.existsSync(marker), false)
})

test('allowing cli still needs the local-execution opt-in', async (t) => {
  const { base, marker } = await manualServer(t)
  const strict = new Engine({ discovery: { allowed_communication_protocols: ['http', 'cli'] } })
  t.after(() => strict.close())
  assert.deepEqual(await strict.registerManual(`${base}/mixed`, 'm'), ['m.fetch'])
  assert.match(refusedOf(strict)[0].reason, /allow_remote_local_execution/)
  const optedIn = new Engine({
    discovery: { allowed_communication_protocols: ['http', 'cli'], allow_remote_local_execution: true },
  })
  t.after(() => optedIn.close())
  assert.deepEqual(await optedIn.registerManual(`${base}/mixed`, 'm'), ['m.fetch', 'm.run'])
  await optedIn.callTool('m.run', {})
  assert.equal(fs.existsSync(marker), true)
})
