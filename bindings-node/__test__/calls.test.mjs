// engine.callTool and engine.registerTool: JS tools (sync, Promise, throwing,
// rejecting, not-JSON results), validation, timeouts, concurrency, text and HTTP
// tools against a real loopback server, and a child process that exits by itself.
import test from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { spawnSync } from 'node:child_process'

import { Engine, UtpError, codes } from 'utp-runtime'
import { packageDir, rejectsWith } from './helpers.mjs'

const addInputs = {
  type: 'object',
  properties: { a: { type: 'number' }, b: { type: 'number', minimum: 0 } },
  required: ['a', 'b'],
}

test('a sync JS tool: registered by full name, called with its arguments', async () => {
  const engine = new Engine()
  const seen = []
  const name = engine.registerTool(
    'math.add',
    (args) => {
      seen.push(args)
      return args.a + args.b
    },
    { inputs: addInputs, outputs: { type: 'number' }, description: 'Add two numbers', tags: ['math'] },
  )
  assert.equal(name, 'math.add')
  assert.equal(await engine.callTool('math.add', { a: 2, b: 3 }), 5)
  assert.deepEqual(seen, [{ a: 2, b: 3 }])
  const tool = engine.tool('math.add')
  assert.equal(tool.description, 'Add two numbers')
  assert.deepEqual(tool.tags, ['math'])
  assert.deepEqual(tool.inputs, addInputs)
  assert.equal(tool.tool_call_template.call_template_type, 'native')
  assert.deepEqual(engine.manuals(), ['math'])
  assert.equal(engine.searchTools('add numbers')[0].name, 'math.add')
  // No arguments and no inputs: the tool gets an empty object.
  engine.registerTool('math.zero', (args) => ({ args, zero: 0 }))
  assert.deepEqual(await engine.callTool('math.zero'), { args: {}, zero: 0 })
  assert.deepEqual(await engine.callTool('math.zero', null, null), { args: {}, zero: 0 })
})

test('an async JS tool and one returning a Promise or a thenable', async () => {
  const engine = new Engine()
  engine.registerTool('a.later', async ({ x }) => {
    await new Promise((resolve) => setTimeout(resolve, 20))
    return { doubled: x * 2, when: new Date(0), skipped: undefined, list: [1, undefined, 'two'] }
  })
  engine.registerTool('a.promise', ({ x }) => Promise.resolve([x, null, true, 1.5]))
  engine.registerTool('a.thenable', () => ({ then: (resolve) => resolve('from a thenable') }))
  engine.registerTool('a.null', () => null)
  assert.deepEqual(await engine.callTool('a.later', { x: 21 }), {
    doubled: 42,
    when: '1970-01-01T00:00:00.000Z',
    list: [1, null, 'two'],
  })
  assert.deepEqual(await engine.callTool('a.promise', { x: 'y' }), ['y', null, true, 1.5])
  assert.equal(await engine.callTool('a.thenable'), 'from a thenable')
  assert.equal(await engine.callTool('a.null'), null)
})

test('arguments that violate inputs reject with ERR_UTP_VALIDATION_FAILED; the tool is not run', async () => {
  const engine = new Engine()
  let runs = 0
  engine.registerTool('math.add', () => ++runs, { inputs: addInputs })
  await rejectsWith(engine.callTool('math.add', { a: 'x', b: -1 }), codes.VALIDATION_FAILED, /\/a.*\/b|\/b.*\/a/)
  await rejectsWith(engine.callTool('math.add', { a: 1 }), codes.VALIDATION_FAILED, /"b"/)
  await rejectsWith(engine.callTool('math.add', [1, 2]), codes.VALIDATION_FAILED, /object/)
  assert.equal(runs, 0)
  assert.equal(await engine.callTool('math.add', { a: 1, b: 2, extra: undefined }), 1)
})

test('throwing and rejecting tools reject with ERR_UTP_TOOL_FAILED naming the tool and the error', async () => {
  const engine = new Engine()
  engine.registerTool('bad.throws', () => {
    throw new TypeError('no such city')
  })
  engine.registerTool('bad.rejects', async () => {
    throw new Error('upstream said no')
  })
  engine.registerTool('bad.throws_string', () => {
    throw 'a bare string' // eslint-disable-line no-throw-literal
  })
  engine.registerTool('bad.rejects_nothing', () => Promise.reject(undefined))
  await rejectsWith(engine.callTool('bad.throws'), codes.TOOL_FAILED, /'bad\.throws'.*threw: no such city/)
  await rejectsWith(engine.callTool('bad.rejects'), codes.TOOL_FAILED, /'bad\.rejects'.*rejected: upstream said no/)
  await rejectsWith(engine.callTool('bad.throws_string'), codes.TOOL_FAILED, /threw: a bare string/)
  await rejectsWith(engine.callTool('bad.rejects_nothing'), codes.TOOL_FAILED, /rejected/)
  // The engine and its tools keep working.
  engine.registerTool('bad.fine', () => 'ok')
  assert.equal(await engine.callTool('bad.fine'), 'ok')
})

test('results that are not JSON are clear ERR_UTP_TOOL_FAILED errors, never a crash', async () => {
  const engine = new Engine()
  const cyclic = { a: 1 }
  cyclic.self = cyclic
  const cases = [
    ['undefined', () => undefined, /undefined is not a JSON value.*return null/],
    ['nothing', () => {}, /undefined/],
    ['async_undefined', async () => {}, /undefined/],
    ['bigint', () => 10n, /BigInt/],
    ['nested_bigint', () => ({ list: [1, 2n ** 70n] }), /BigInt.*\/list\/1/],
    ['function', () => () => 1, /a function is not a JSON value/],
    ['symbol', () => Symbol('s'), /symbol/],
    ['cycle', () => cyclic, /cycle.*\/self/],
    ['promise_of_bigint', async () => ({ n: 1n }), /BigInt.*\/n/],
    ['throwing_getter', () => ({ get x() { throw new Error('getter broke') } }), /getter broke/],
    ['throwing_tojson', () => ({ toJSON() { throw new Error('toJSON broke') } }), /toJSON broke/],
  ]
  for (const [name, fn] of cases) engine.registerTool(`r.${name}`, fn)
  for (const [name, , pattern] of cases) {
    await rejectsWith(engine.callTool(`r.${name}`), codes.TOOL_FAILED, new RegExp(`'r\\.${name}'.*${pattern.source}`))
  }
})

test('bad calls and registrations are ERR_UTP_INVALID_ARGUMENT / NOT_FOUND / ALREADY_EXISTS', async () => {
  const engine = new Engine()
  engine.registerTool('m.t', () => 1)
  await rejectsWith(engine.callTool('m.nope'), codes.NOT_FOUND, /m\.nope/)
  await rejectsWith(engine.callTool('nodot'), codes.NOT_FOUND)
  await rejectsWith(engine.callTool('m.t', {}, { timout: 1 }), codes.INVALID_ARGUMENT, /unknown callTool option 'timout'/)
  for (const timeout of [-1, NaN, Infinity, '1', 1e300]) {
    await rejectsWith(engine.callTool('m.t', {}, { timeout }), codes.INVALID_ARGUMENT, /timeout/)
  }
  await rejectsWith(engine.callTool('m.t', {}, { tenant: 5 }), codes.INVALID_ARGUMENT, /tenant must be a string/)
  await rejectsWith(engine.callTool('m.t', { n: 1n }), codes.INVALID_ARGUMENT, /BigInt.*\/n/)
  await rejectsWith(engine.callTool('m.t', {}, 'fast'), codes.INVALID_ARGUMENT, /options must be an object/)
  assert.equal(await engine.callTool('m.t', {}, { timeout: 5, tenant: 'acme', session: 's1' }), 1)

  const throwsCode = (fn, code, pattern = /./) =>
    assert.throws(fn, (e) => e instanceof UtpError && e.code === code && pattern.test(e.message))
  throwsCode(() => engine.registerTool('m.t', () => 2), codes.ALREADY_EXISTS)
  throwsCode(() => engine.registerTool('nodot', () => 2), codes.INVALID_ARGUMENT, /manual\.tool/)
  throwsCode(() => engine.registerTool('m.u', 'not a function'), codes.INVALID_ARGUMENT, /fn must be a function, found a string/)
  throwsCode(() => engine.registerTool('m.u', () => 2, { input: {} }), codes.INVALID_ARGUMENT, /unknown registerTool option 'input'/)
  throwsCode(() => engine.registerTool('m.u', () => 2, { inputs: 'x' }), codes.INVALID_ARGUMENT, /inputs/)
  throwsCode(() => engine.registerTool('m.u', () => 2, { inputs: { type: 12 } }), codes.INVALID_ARGUMENT, /JSON Schema/)
  throwsCode(() => engine.registerTool('m.u', () => 2, { tags: [1] }), codes.INVALID_ARGUMENT, /tags/)
  engine.close()
  throwsCode(() => engine.registerTool('m.v', () => 2), codes.INVALID_ARGUMENT, /closed/)
  await rejectsWith(engine.callTool('m.t'), codes.INVALID_ARGUMENT, /closed/)
})

test('a JS tool may call other tools (the JS thread is never blocked)', async () => {
  const engine = new Engine()
  engine.registerTool('n.inner', ({ x }) => x + 1)
  engine.registerTool('n.outer', async ({ x }) => {
    const a = await engine.callTool('n.inner', { x })
    const b = await engine.callTool('n.inner', { x: a })
    return [a, b]
  })
  assert.deepEqual(await engine.callTool('n.outer', { x: 1 }), [2, 3])
})

test('a tool that never resolves times out with ERR_UTP_TIMEOUT', async () => {
  const engine = new Engine()
  engine.registerTool('slow.never', () => new Promise(() => {}))
  const started = Date.now()
  await rejectsWith(engine.callTool('slow.never', {}, { timeout: 0.2 }), codes.TIMEOUT, /slow\.never/)
  const elapsed = Date.now() - started
  assert.ok(elapsed >= 150 && elapsed < 5000, `took ${elapsed} ms`)
  // The config default applies without a per-call timeout.
  const quick = new Engine({ calls: { default_timeout: '100ms' } })
  quick.registerTool('slow.never', () => new Promise(() => {}))
  await rejectsWith(quick.callTool('slow.never'), codes.TIMEOUT)
})

test('200 concurrent calls of a JS tool all resolve, each with its own result', async () => {
  const engine = new Engine()
  let active = 0
  let peak = 0
  engine.registerTool('c.echo', async ({ i }) => {
    active++
    peak = Math.max(peak, active)
    await new Promise((resolve) => setTimeout(resolve, 5))
    active--
    return { i, square: i * i }
  })
  engine.registerTool('c.sync', ({ i }) => 1000 - i)
  const results = await Promise.all(
    Array.from({ length: 200 }, (_, i) => engine.callTool(i % 2 ? 'c.echo' : 'c.sync', { i })),
  )
  results.forEach((r, i) => assert.deepEqual(r, i % 2 ? { i, square: i * i } : 1000 - i))
  assert.ok(peak > 1, `the async calls overlapped (peak ${peak})`)
})

test('a text tool from an inline manual', async () => {
  const engine = new Engine()
  const names = await engine.registerManual(
    { tools: [{ name: 'greet', description: 'Greets', tool_call_template: { call_template_type: 'text', content: 'hello' } }] },
    'texts',
  )
  assert.deepEqual(names, ['texts.greet'])
  assert.equal(await engine.callTool('texts.greet'), 'hello')
  assert.equal(await engine.callTool('texts.greet', {}, { timeout: 1 }), 'hello')
})

test('HTTP tools against a real loopback server: GET with query arguments, POST with a JSON body', async (t) => {
  const requests = []
  const server = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (chunk) => (body += chunk))
    req.on('end', () => {
      const url = new URL(req.url, 'http://127.0.0.1')
      requests.push({ method: req.method, path: url.pathname, query: Object.fromEntries(url.searchParams), body, type: req.headers['content-type'] })
      if (url.pathname === '/weather') {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ city: url.searchParams.get('city'), days: Number(url.searchParams.get('days')), temperature: 21.5 }))
      } else if (url.pathname === '/orders' && req.method === 'POST') {
        res.statusCode = 201
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ id: 7, received: JSON.parse(body) }))
      } else {
        res.statusCode = 404
        res.end('no such page')
      }
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => server.close(resolve)))
  const base = `http://127.0.0.1:${server.address().port}`

  const engine = new Engine()
  await engine.registerManual(
    {
      tools: [
        {
          name: 'weather',
          inputs: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
          tool_call_template: { call_template_type: 'http', url: `${base}/weather`, http_method: 'GET' },
        },
        {
          name: 'order',
          inputs: { type: 'object', properties: { body: { type: 'object' } }, required: ['body'] },
          tool_call_template: { call_template_type: 'http', url: `${base}/orders`, http_method: 'POST' },
        },
        { name: 'missing', tool_call_template: { call_template_type: 'http', url: `${base}/missing`, http_method: 'GET' } },
      ],
    },
    'api',
  )
  assert.deepEqual(await engine.callTool('api.weather', { city: 'Zürich', days: 3 }), { city: 'Zürich', days: 3, temperature: 21.5 })
  assert.deepEqual(requests.at(-1), { method: 'GET', path: '/weather', query: { city: 'Zürich', days: '3' }, body: '', type: undefined })

  const order = { item: 'tea', qty: 2, notes: ['green', null] }
  assert.deepEqual(await engine.callTool('api.order', { body: order }), { id: 7, received: order })
  const post = requests.at(-1)
  assert.equal(post.method, 'POST')
  assert.match(post.type, /application\/json/)
  assert.deepEqual(JSON.parse(post.body), order)

  await rejectsWith(engine.callTool('api.weather', { days: 3 }), codes.VALIDATION_FAILED, /city/)
  await rejectsWith(engine.callTool('api.missing'), codes.TOOL_FAILED, /404/)
})

test('a script that registers a JS tool and calls it exits by itself with code 0', () => {
  const script = `
    import { Engine } from 'utp-runtime'
    const engine = new Engine()
    engine.registerTool('proc.hello', async ({ name }) => 'hello ' + name)
    engine.registerTool('proc.unused', () => 1)
    console.log(await engine.callTool('proc.hello', { name: 'node' }))
  `
  const started = Date.now()
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: packageDir,
    encoding: 'utf8',
    timeout: 30_000,
  })
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.signal, null, r.stderr)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), 'hello node')
  assert.ok(Date.now() - started < 20_000)
})

test('a script whose only JS tools are registered, never called, exits by itself', () => {
  const r = spawnSync(
    process.execPath,
    ['-e', `const { Engine } = require('utp-runtime'); const e = new Engine(); for (let i = 0; i < 50; i++) e.registerTool('p.t' + i, () => i); console.log('registered')`],
    { cwd: packageDir, encoding: 'utf8', timeout: 30_000 },
  )
  assert.equal(r.error, undefined, `the script did not exit by itself: ${r.error}`)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), 'registered')
})

test('a storm of odd callTool / registerTool arguments ends in errors, never a crash', () => {
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `
    import { Engine, UtpError } from 'utp-runtime'
    const engine = new Engine()
    engine.registerTool('s.ok', (args) => args)
    const weird = [undefined, null, 0, -1, NaN, Infinity, '', 's.ok', 'x.y', true, [], [1], {}, { a: () => 1 },
      () => 1, Symbol('s'), 10n, new Date(0), /re/, new Map(), Buffer.from('x'), { timeout: -1 }, { timeout: NaN },
      { tenant: 1 }, { inputs: 5 }, Object.create(null), new Proxy({}, { ownKeys() { throw new Error('trap') } })]
    let errors = 0, calls = 0, results = 0
    const note = (e) => { if (!(e instanceof UtpError)) throw new Error('not a UtpError: ' + e); errors++ }
    for (const a of weird) {
      for (const b of weird) {
        calls += 2
        await engine.callTool('s.ok', a, b).then(() => results++, note)
        try { engine.registerTool('w.t' + calls, a, b); results++ } catch (e) { note(e) }
        calls++
        await engine.callTool(a, b).then(() => results++, note)
      }
    }
    console.log(JSON.stringify({ calls, errors, results }))
  `,
    ],
    { cwd: packageDir, encoding: 'utf8', timeout: 60_000 },
  )
  assert.equal(r.error, undefined, String(r.error))
  assert.equal(r.signal, null, r.stderr)
  assert.equal(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  assert.equal(out.errors + out.results, out.calls, r.stdout)
  assert.ok(out.errors > 0 && out.results > 0, r.stdout)
})

test('redirects never carry a body or a secret to another origin (two loopback ports)', async (t) => {
  // Origin B records what reaches it; origin A only redirects there.
  const seen = []
  const b = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (chunk) => (body += chunk))
    req.on('end', () => {
      const line = `${req.method} ${req.url} key=${'x-api-key' in req.headers}`
      seen.push(`${line} body=${body}`)
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ reached: line }))
    })
  })
  await new Promise((resolve) => b.listen(0, '127.0.0.1', resolve))
  const to = `http://127.0.0.1:${b.address().port}`
  const hops = { '/token-307': [307, '/token'], '/post-308': [308, '/post'], '/post-303': [303, '/after303'], '/get-307': [307, '/get'] }
  const a = http.createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const [status, path] = hops[req.url] ?? [404, '/']
      res.writeHead(status, { location: to + path })
      res.end()
    })
  })
  await new Promise((resolve) => a.listen(0, '127.0.0.1', resolve))
  t.after(() => Promise.all([a, b].map((s) => new Promise((resolve) => s.close(resolve)))))
  const base = `http://127.0.0.1:${a.address().port}`
  const key = { auth_type: 'api_key', api_key: 'k-123', var_name: 'X-Api-Key', location: 'header' }
  const tool = (name, path, template = {}) => ({
    name,
    inputs: { type: 'object' },
    tool_call_template: { call_template_type: 'http', url: base + path, ...template },
  })

  const engine = new Engine()
  t.after(() => engine.close())
  await engine.registerManual({
    name: 'api',
    tools: [
      tool('oauth', '/anything', { auth: { auth_type: 'oauth2', token_url: `${base}/token-307`, client_id: 'id', client_secret: 's3cret' } }),
      tool('post308', '/post-308', { http_method: 'POST', auth: key }),
      tool('post303', '/post-303', { http_method: 'POST', auth: key }),
      tool('get307', '/get-307', { auth: key }),
    ],
  })
  const err = await rejectsWith(engine.callTool('api.oauth', {}), 'ERR_UTP_SECURITY', /307 redirect to another origin/)
  assert.doesNotMatch(err.message, /s3cret/)
  await rejectsWith(engine.callTool('api.post308', { body: { card: '4111' } }), 'ERR_UTP_SECURITY')
  assert.deepEqual(await engine.callTool('api.post303', { body: { card: '4111' } }), { reached: 'GET /after303 key=false' })
  assert.deepEqual(await engine.callTool('api.get307', {}), { reached: 'GET /get key=false' })
  assert.deepEqual(seen, ['GET /after303 key=false body=', 'GET /get key=false body='])
})
