// python-utcp compatibility cases of issue 26 (3 to 7) through the Node binding: config
// `manual_call_templates`, a relative OAuth2 token URL in a spec fetched from a URL,
// OpenAPI examples, manuals given as inline YAML text, and JSON Schema keywords in a
// `text` tool. Network cases use a loopback server the test starts and stops.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { Worker } from 'node:worker_threads'

import { Engine, codes } from 'utp-runtime'
import { rejectsWith, throwsWith } from './helpers.mjs'

const textManual = (tool, content) => ({
  tools: [{ name: tool, tool_call_template: { call_template_type: 'text', content } }],
})

/** A manual behind an API key, a spec with a relative token URL, its token endpoint and the secured API. */
async function server(t) {
  const state = { tokens: 0, base: '' }
  const srv = http.createServer((req, res) => {
    const send = (status, payload) => {
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(payload))
    }
    let body = ''
    req.on('data', (chunk) => (body += chunk))
    req.on('end', () => {
      if (req.url === '/utcp') {
        return req.headers['x-api-key'] === 'k-1' ? send(200, textManual('fetched', 'from a URL')) : send(401, {})
      }
      if (req.url === '/specs/openapi.json') {
        return send(200, {
          openapi: '3.0.3',
          info: { title: 'Secured', version: '1' },
          paths: {
            '/data': {
              get: { operationId: 'getData', security: [{ oauth: [] }], responses: { 200: { description: 'ok' } } },
            },
          },
          components: {
            securitySchemes: {
              oauth: { type: 'oauth2', flows: { clientCredentials: { tokenUrl: '/oauth/token', scopes: {} } } },
            },
          },
        })
      }
      if (req.url === '/oauth/token' && req.method === 'POST' && body.includes('client_id=cid')) {
        state.tokens += 1
        return send(200, { access_token: 'tok', token_type: 'bearer', expires_in: 60 })
      }
      if (req.url === '/data' && req.headers.authorization === 'Bearer tok') return send(200, { ok: true })
      send(404, {})
    })
  })
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.after(() => {
    srv.closeAllConnections()
    return new Promise((resolve) => srv.close(resolve))
  })
  state.base = `http://127.0.0.1:${srv.address().port}`
  return state
}

/** The manual behind an API key, served from a worker thread: `new Engine(config)` fetches it
 * while blocking this thread, so a server on this thread's event loop could not answer. */
async function manualInWorker(t) {
  const worker = new Worker(
    `
    const http = require('node:http')
    const { parentPort } = require('node:worker_threads')
    const manual = { tools: [{ name: 'fetched', tool_call_template: { call_template_type: 'text', content: 'from a URL' } }] }
    const srv = http.createServer((req, res) => {
      const ok = req.url === '/utcp' && req.headers['x-api-key'] === 'k-1'
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' })
      res.end(JSON.stringify(ok ? manual : {}))
    })
    srv.listen(0, '127.0.0.1', () => parentPort.postMessage(srv.address().port))
    `,
    { eval: true },
  )
  t.after(() => worker.terminate())
  const port = await new Promise((resolve, reject) => {
    worker.once('message', resolve)
    worker.once('error', reject)
  })
  return `http://127.0.0.1:${port}`
}

test('a python-utcp config registers its manual_call_templates', async (t) => {
  const base = await manualInWorker(t)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-compat-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, 'local.utcp.json'), JSON.stringify(textManual('hello', 'from a file')))
  const config = {
    variables: { remote_KEY: 'k-1' },
    manual_call_templates: [
      {
        name: 'remote',
        call_template_type: 'http',
        url: `${base}/utcp`,
        headers: { 'X-Api-Key': '${KEY}' },
        allowed_communication_protocols: ['http', 'text'],
      },
      { name: 'local', call_template_type: 'file', file_path: 'local.utcp.json' },
      {
        name: 'inline',
        call_template_type: 'text',
        content: 'tools:\n  - name: echo\n    tool_call_template: {call_template_type: text, content: inline}\n',
      },
    ],
  }
  const configPath = path.join(dir, 'utcp_config.json')
  fs.writeFileSync(configPath, JSON.stringify(config))
  const engine = new Engine(configPath)
  t.after(() => engine.close())
  assert.deepEqual(engine.manuals(), ['inline', 'local', 'remote'])
  assert.equal(await engine.callTool('remote.fetched', {}), 'from a URL')
  assert.equal(await engine.callTool('local.hello', {}), 'from a file')
  assert.equal(await engine.callTool('inline.echo', {}), 'inline')
})

test('a malformed manual_call_templates key is named', () => {
  const cases = [
    [{ call_template_type: 'http' }, /`manual_call_templates` must be a list/],
    [[{ name: 'w', call_template_type: 'http' }], /`manual_call_templates\[0\]` \('w'\): invalid http template/],
    [[{ call_template_type: 'native' }], /cannot register a manual from call_template_type 'native'/],
  ]
  for (const [templates, message] of cases) {
    throwsWith(() => new Engine({ manual_call_templates: templates }), codes.INVALID_ARGUMENT, message)
  }
})

test('a relative token URL resolves against the spec URL', async (t) => {
  const state = await server(t)
  const engine = new Engine({ variables: { secured_OAUTH_CLIENT_ID: 'cid', secured_OAUTH_CLIENT_SECRET: 's' } })
  t.after(() => engine.close())
  await engine.registerManual(`${state.base}/specs/openapi.json`, 'secured')
  assert.equal(engine.tool('secured.getData').tool_call_template.auth.token_url, `${state.base}/oauth/token`)
  assert.deepEqual(await engine.callTool('secured.getData', {}), { ok: true })
  assert.equal(state.tokens, 1)
})

test('OpenAPI examples are kept as JSON Schema examples', async (t) => {
  const engine = new Engine()
  t.after(() => engine.close())
  const spec = {
    openapi: '3.0.3',
    info: { title: 'Shop', version: '1' },
    servers: [{ url: 'https://shop.example.com' }],
    paths: {
      '/items/{id}': {
        get: {
          operationId: 'getItem',
          parameters: [
            {
              name: 'id',
              in: 'path',
              required: true,
              schema: { type: 'integer', example: 7 },
              examples: { a: { value: '7' }, b: { value: 8 } },
            },
          ],
          responses: { 200: { description: 'ok' } },
        },
      },
    },
  }
  await engine.registerManual(spec, 'shop')
  const id = engine.tool('shop.getItem').inputs.properties.id
  assert.deepEqual(id.examples, [7, 8])
  assert.equal('example' in id, false)
})

test('a manual given as YAML text registers; other text says what is accepted', async (t) => {
  const engine = new Engine()
  t.after(() => engine.close())
  const yaml = 'name: notes\ntools:\n  - name: hi\n    tool_call_template: {call_template_type: text, content: hi}\n'
  assert.deepEqual(await engine.registerManual(yaml), ['notes.hi'])
  assert.equal(await engine.callTool('notes.hi', {}), 'hi')
  await rejectsWith(engine.registerManual('- a\n- list\n'), codes.INVALID_MANUAL, /must be a mapping/)
  await rejectsWith(engine.registerManual('x'.repeat(5000)), codes.NOT_FOUND, /a path to a file, an http\(s\) URL, or JSON or YAML text/)
})

test('JSON Schema keywords in a text tool are not variables', async (t) => {
  const engine = new Engine()
  t.after(() => engine.close())
  const document = JSON.stringify({
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'urn:x',
    $ref: '#/$defs/a',
    $defs: { a: { type: 'string', $comment: 'c' } },
  })
  await engine.registerManual(textManual('schema', document), 'm')
  assert.equal(await engine.callTool('m.schema', {}), document)
})
