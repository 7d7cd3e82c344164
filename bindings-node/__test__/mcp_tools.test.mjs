// `mcp` tools from Node against real MCP servers over stdio, built with the official
// Python SDK of each protocol era (tests/mcp/: mcp 1.x answers the initialize handshake,
// mcp 2.x the stateless server/discover). `make test-node` creates their venvs.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'

import { Engine } from 'utp-runtime'
import { rejectsWith, repoRoot } from './helpers.mjs'

function server(era) {
  const python = path.join(repoRoot, `.venv-mcp${era}`, 'bin', 'python')
  assert.ok(fs.existsSync(python), `${python} is missing: \`make mcp-servers\` creates it`)
  return { command: python, args: [path.join(repoRoot, 'tests', 'mcp', `server_v${era}.py`)] }
}

const template = (name, era) => ({ name, call_template_type: 'mcp', config: { mcpServers: { srv: server(era) } } })

const alive = (pid) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

for (const era of [1, 2]) {
  test(`mcp ${era}.x server: register, call, unwrap results, isError, timeout`, async (t) => {
    const engine = new Engine()
    t.after(() => engine.close())
    const names = await engine.registerManual(template('calc', era))
    assert.deepEqual([...names].sort(), ['calc.srv.add', 'calc.srv.fail', 'calc.srv.image', 'calc.srv.pid', 'calc.srv.shout', 'calc.srv.sleep'])
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
  })
}

test('close() ends the MCP server; bad templates are refused with the key named', async () => {
  const engine = new Engine()
  await engine.registerManual(template('m', 2))
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
  other.close()
})
