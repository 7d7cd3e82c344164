// `mcp` tools from Node against real MCP servers built with the official Python SDK of
// each protocol era (tests/mcp/: mcp 1.x answers the initialize handshake, mcp 2.x the
// stateless server/discover), over stdio and over Streamable HTTP on 127.0.0.1.
// `make test-node` creates their venvs.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'

import { Engine } from 'utp-runtime'
import { rejectsWith, repoRoot } from './helpers.mjs'

const TOOLS = ['add', 'fail', 'grow', 'image', 'pid', 'progress', 'shout', 'sleep', 'stats']

function python(era) {
  const file = path.join(repoRoot, `.venv-mcp${era}`, 'bin', 'python')
  assert.ok(fs.existsSync(file), `${file} is missing: \`make mcp-servers\` creates it`)
  return file
}

const script = (era) => path.join(repoRoot, 'tests', 'mcp', `server_v${era}.py`)
const stdioServer = (era) => ({ command: python(era), args: [script(era)] })

/** An SDK server over Streamable HTTP in a child process: resolves to { url, stop }. */
async function httpServer(era) {
  const child = spawn(python(era), [script(era), 'http'], { stdio: ['ignore', 'pipe', 'ignore'] })
  const [url] = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout })
    lines.once('line', (line) => resolve([line]))
    child.once('exit', (code) => reject(new Error(`the server exited (${code}) before it listened`)))
  })
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/mcp$/)
  return { url, stop: () => child.kill() }
}

const template = (name, server) => ({ name, call_template_type: 'mcp', config: { mcpServers: { srv: server } } })

const alive = (pid) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function until(condition, what) {
  const deadline = Date.now() + 10_000
  while (!condition()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

for (const era of [1, 2]) {
  for (const transport of ['stdio', 'http']) {
    test(`mcp ${era}.x over ${transport}: register, call, unwrap, isError, timeout, progress, list_changed`, async (t) => {
      let server = stdioServer(era)
      if (transport === 'http') {
        const running = await httpServer(era)
        t.after(running.stop)
        server = { url: running.url }
      }
      const engine = new Engine()
      t.after(() => engine.close())
      const names = await engine.registerManual(template('calc', server))
      assert.deepEqual([...names].sort(), TOOLS.map((tool) => `calc.srv.${tool}`))
      assert.equal(await engine.callTool('calc.srv.add', { a: 2, b: 3 }), 5)
      assert.equal(await engine.callTool('calc.srv.shout', { text: 'hi' }), 'HI')
      const image = await engine.callTool('calc.srv.image', {})
      assert.equal(image.mimeType, 'image/png')
      await rejectsWith(engine.callTool('calc.srv.fail', {}), 'ERR_UTP_TOOL_FAILED')
      const pid = await engine.callTool('calc.srv.pid', {})
      await rejectsWith(engine.callTool('calc.srv.sleep', { ms: 5000 }, { timeout: 0.2 }), 'ERR_UTP_TIMEOUT')
      const slept = await Promise.all(Array.from({ length: 10 }, () => engine.callTool('calc.srv.sleep', { ms: 100 })))
      assert.deepEqual(slept, Array(10).fill('slept'))
      assert.equal(await engine.callTool('calc.srv.pid', {}), pid, 'one server for every call')

      // Progress: items of the stream before the result, and tool.progress events.
      const events = []
      engine.eventBus.subscribe('tool.progress', (event) => events.push(event))
      const items = []
      for await (const item of engine.callToolStream('calc.srv.progress', { steps: 3 })) items.push(item)
      assert.deepEqual(items, [
        { progress: 1, total: 3, message: 'step 1' },
        { progress: 2, total: 3, message: 'step 2' },
        { progress: 3, total: 3, message: 'step 3' },
        'done',
      ])
      await until(() => events.length === 3, 'three tool.progress events')
      assert.deepEqual(events.map((e) => e.data.progress), [1, 2, 3])

      // The server adds a tool and says so: it is registered without asking.
      assert.equal(await engine.callTool('calc.srv.grow', {}), 'grew')
      await until(() => engine.tools().some((tool) => tool.name === 'calc.srv.grown'), 'calc.srv.grown')
      assert.equal(await engine.callTool('calc.srv.grown', {}), 'grown')
    })
  }
}

test('an mcpServers config file (Claude Desktop, Cursor) is discovered as an mcp manual named after the file', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-mcp-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, 'claude_desktop.json'), JSON.stringify({ mcpServers: { calc: stdioServer(1) } }))
  const engine = new Engine()
  t.after(() => engine.close())
  assert.deepEqual(await engine.discover(dir), ['claude_desktop'])
  assert.equal(await engine.callTool('claude_desktop.calc.add', { a: 1, b: 2 }), 3)
})

test('close() ends the MCP server; bad templates are refused with the key named', async () => {
  const engine = new Engine()
  await engine.registerManual(template('m', stdioServer(2)))
  const pid = await engine.callTool('m.srv.pid', {})
  assert.ok(alive(pid))
  engine.close()
  assert.ok(!alive(pid), 'the server is gone after close()')

  const other = new Engine()
  await rejectsWith(
    other.registerManual({ name: 'm', call_template_type: 'mcp', config: { mcpServers: { s: { args: [] } } } }),
    'ERR_UTP_INVALID_MANUAL',
    /config\.mcpServers\.s\.command/,
  )
  await rejectsWith(
    other.registerManual({ name: 'm', call_template_type: 'mcp', config: { mcpServers: { gone: { command: '/nonexistent/server' } } } }),
    'ERR_UTP_TRANSPORT',
    /'gone'/,
  )
  await rejectsWith(
    other.registerManual(template('m', { url: 'http://10.1.2.3/mcp' })),
    'ERR_UTP_SECURITY',
  )
  other.close()
})
