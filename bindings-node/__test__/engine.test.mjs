// Engine: registration, listing, search, discovery, deregistration, config and close.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import { Engine } from 'utp-runtime'
import { bulkManual, manualsDir, weatherManual } from './helpers.mjs'

test('register an inline manual and list its tools', async () => {
  const engine = new Engine()
  const names = await engine.registerManual(weatherManual(), 'weather')
  assert.deepEqual(names, ['weather.get_current', 'weather.get_forecast'])
  assert.deepEqual(engine.manuals(), ['weather'])

  const tools = engine.tools()
  assert.deepEqual(tools.map((t) => t.name), ['weather.get_current', 'weather.get_forecast'])
  const current = tools[0]
  assert.equal(current.description, 'Current weather conditions for a city')
  assert.deepEqual(current.tags, ['weather', 'current'])
  assert.deepEqual(current.inputs.required, ['city'])
  assert.deepEqual(current.inputs.properties.units.enum, ['metric', 'imperial'])
  assert.equal(current.tool_call_template.call_template_type, 'http')
  assert.equal(current.tool_call_template.url, 'http://127.0.0.1:8765/weather/current')

  // JS values out, not JSON text; a copy each time.
  assert.equal(typeof current.inputs, 'object')
  current.description = 'changed'
  assert.equal(engine.tool('weather.get_current').description, 'Current weather conditions for a city')
  assert.deepEqual(engine.tool('weather.get_forecast'), tools[1])
})

test('a manual without a name argument uses its `name` key', async () => {
  const engine = new Engine()
  const names = await engine.registerManual({ name: 'My API', tools: [{ name: 'ping', tool_call_template: { call_template_type: 'native' } }] })
  assert.deepEqual(names, ['My_API.ping'])
})

test('register a manual from a file path and from JSON text', async () => {
  const engine = new Engine()
  assert.deepEqual(await engine.registerManual(path.join(manualsDir, 'shop.utcp.yaml')), [
    'shop.getInventory',
    'shop.setInventory',
    'shop.queueUpdate',
  ])
  assert.deepEqual(await engine.registerManual(JSON.stringify(weatherManual()), 'wx'), ['wx.get_current', 'wx.get_forecast'])
  assert.deepEqual(engine.manuals(), ['shop', 'wx'])
})

test('searchTools ranks, limits and filters by tags', async () => {
  const engine = new Engine()
  await engine.discover(manualsDir)

  const forecast = engine.searchTools('daily forecast for a city')
  assert.equal(forecast[0].name, 'weather.get_forecast')

  const stock = engine.searchTools('stock count for a product', { limit: 3 })
  assert.ok(stock.length >= 1 && stock.length <= 3)
  assert.ok(stock.every((t) => t.name.startsWith('shop.')), stock.map((t) => t.name).join())
  assert.ok(stock.some((t) => t.name === 'shop.getInventory'))

  assert.equal(engine.searchTools('inventory', { limit: 1 }).length, 1)

  const tagged = engine.searchTools('city', { tags: ['forecast'] })
  assert.deepEqual(tagged.map((t) => t.name), ['weather.get_forecast'])
  // Tags match case-insensitively; any of the tags is enough.
  const either = engine.searchTools('', { tags: ['WEATHER', 'notes'] }).map((t) => t.name)
  assert.deepEqual(either, ['legacy_notes.search_notes', 'weather.get_current', 'weather.get_forecast'])

  assert.deepEqual(engine.searchTools('no such words anywhere zzzz'), [])
  assert.deepEqual(engine.searchTools('forecast', { tags: ['no-such-tag'] }), [])
})

test('searchTools returns 10 results by default, all with limit 0', async () => {
  const engine = new Engine()
  await engine.registerManual(bulkManual(25), 'bulk')
  assert.equal(engine.searchTools('bulk tool').length, 10)
  assert.equal(engine.searchTools('bulk tool', {}).length, 10)
  assert.equal(engine.searchTools('bulk tool', { limit: null, tags: null }).length, 10)
  assert.equal(engine.searchTools('bulk tool', { limit: 0 }).length, 25)
  assert.equal(engine.searchTools('bulk tool', { limit: 4 }).length, 4)
  assert.equal(engine.searchTools('bulk tool', { limit: 3.0 }).length, 3)
  assert.equal(engine.searchTools('bulk tool', { limit: -0 }).length, 25)
  assert.equal(engine.searchTools('bulk tool', { limit: 1e300 }).length, 25)
  assert.equal(engine.searchTools('', { limit: 0, tags: ['bulk'] }).length, 25)
})

test('discover examples/manuals registers 3 manuals (one legacy) and 6 tools', async () => {
  const engine = new Engine()
  const manuals = await engine.discover(manualsDir)
  assert.deepEqual(manuals, ['legacy_notes', 'shop', 'weather'])
  assert.deepEqual(engine.manuals(), ['legacy_notes', 'shop', 'weather'])
  assert.equal(engine.tools().length, 6)

  // The legacy 0.1 manual (tool_provider / provider_type) is migrated on load.
  const legacy = engine.tool('legacy_notes.search_notes')
  assert.equal(legacy.tool_call_template.call_template_type, 'cli')
  assert.equal(legacy.tool_provider, undefined)
})

test('discoverReport gives one entry per file', async () => {
  const engine = new Engine()
  const report = await engine.discoverReport(manualsDir)
  assert.equal(report.root, manualsDir)
  assert.deepEqual(
    report.files.map((f) => [path.basename(f.path), f.status, f.manual, f.tools]),
    [
      ['legacy_notes.json', 'registered', 'legacy_notes', 1],
      ['shop.utcp.yaml', 'registered', 'shop', 3],
      ['weather.utcp.json', 'registered', 'weather', 2],
    ],
  )
})

test('discovery reports a bad file and goes on', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-node-'))
  try {
    fs.writeFileSync(path.join(dir, 'good.utcp.json'), JSON.stringify(weatherManual()))
    fs.writeFileSync(path.join(dir, 'broken.utcp.json'), '{"tools": [ oops')
    const engine = new Engine()
    const report = await engine.discoverReport(dir)
    const byName = Object.fromEntries(report.files.map((f) => [path.basename(f.path), f]))
    assert.equal(byName['good.utcp.json'].status, 'registered')
    assert.equal(byName['good.utcp.json'].manual, 'good')
    assert.equal(byName['broken.utcp.json'].status, 'failed')
    assert.equal(byName['broken.utcp.json'].code, 'INVALID_MANUAL')
    assert.deepEqual(engine.manuals(), ['good'])
    assert.deepEqual(await new Engine().discover(dir), ['good'])
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a spec split over files registers by path and by discovery', async () => {
  // Relative-file `$ref`s: a parameter and schemas in other files, resolved against each file.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-node-'))
  try {
    fs.mkdirSync(path.join(dir, 'schemas'))
    fs.writeFileSync(path.join(dir, 'params.yaml'), 'limit: {name: limit, in: query, schema: {type: integer}}\n')
    fs.writeFileSync(path.join(dir, 'schemas', 'pet.json'), '{"type": "object", "properties": {"tag": {"$ref": "tag.json"}}}')
    fs.writeFileSync(path.join(dir, 'schemas', 'tag.json'), '{"type": "string", "enum": ["cat", "dog"]}')
    const spec = {
      openapi: '3.1.0', info: { title: 'Split', version: '1' }, servers: [{ url: 'http://127.0.0.1:1' }],
      paths: { '/pets': { post: { operationId: 'addPet', parameters: [{ $ref: 'params.yaml#/limit' }],
        requestBody: { content: { 'application/json': { schema: { $ref: 'schemas/pet.json' } } } },
        responses: { 200: { description: 'ok' } } } } },
    }
    fs.writeFileSync(path.join(dir, 'openapi.json'), JSON.stringify(spec))
    const engine = new Engine()
    assert.deepEqual(await engine.registerManual(path.join(dir, 'openapi.json'), 'split'), ['split.addPet'])
    const inputs = engine.tool('split.addPet').inputs
    assert.deepEqual(inputs.properties.limit, { type: 'integer' })
    assert.deepEqual(inputs.$defs.tag, { type: 'string', enum: ['cat', 'dog'] })
    await assert.rejects(engine.callTool('split.addPet', { limit: 1, body: { tag: 'cow' } }), (e) =>
      e.code === 'ERR_UTP_VALIDATION_FAILED' && /\/body\/tag/.test(e.message))
    const report = await new Engine().discoverReport(dir)
    const byName = Object.fromEntries(report.files.map((f) => [path.basename(f.path), f.status]))
    assert.equal(byName['openapi.json'], 'registered')
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('deregisterManual removes a manual and its tools', async () => {
  const engine = new Engine()
  await engine.discover(manualsDir)
  assert.equal(engine.deregisterManual('weather'), true)
  assert.deepEqual(engine.manuals(), ['legacy_notes', 'shop'])
  assert.equal(engine.tools().length, 4)
  assert.deepEqual(engine.searchTools('forecast'), [])
  assert.equal(engine.deregisterManual('weather'), false)
  assert.equal(engine.deregisterManual('never-registered'), false)
  // The name is free again.
  assert.deepEqual(await engine.registerManual(weatherManual(), 'weather'), ['weather.get_current', 'weather.get_forecast'])
})

test('requiredVariables lists namespaced variables of a manual or a tool', async () => {
  const engine = new Engine()
  await engine.registerManual(weatherManual(), 'weather')
  assert.deepEqual(engine.requiredVariables('weather'), ['weather_WEATHER_API_KEY'])
  assert.deepEqual(engine.requiredVariables('weather.get_current'), ['weather_WEATHER_API_KEY'])
  assert.deepEqual(engine.requiredVariables('weather.get_forecast'), [])
  await engine.registerManual(weatherManual(), 'my_api')
  assert.deepEqual(engine.requiredVariables('my_api'), ['my__api_WEATHER_API_KEY'])
})

test('engines are independent', async () => {
  const a = new Engine()
  const b = new Engine()
  await a.registerManual(weatherManual(), 'weather')
  assert.deepEqual(b.manuals(), [])
  assert.deepEqual(await b.registerManual(weatherManual(), 'weather'), ['weather.get_current', 'weather.get_forecast'])
})

test('concurrent registrations all land', async () => {
  const engine = new Engine()
  const names = await Promise.all(Array.from({ length: 20 }, (_, i) => engine.registerManual(bulkManual(3), `m${i}`)))
  assert.equal(names.flat().length, 60)
  assert.equal(engine.manuals().length, 20)
})

test('config: an object, a file path, or nothing', async () => {
  assert.deepEqual(new Engine().manuals(), [])
  assert.deepEqual(new Engine(null).manuals(), [])
  assert.deepEqual(new Engine(undefined, undefined).manuals(), [])
  assert.deepEqual(new Engine({}).manuals(), [])
  assert.deepEqual(new Engine({ variables: { weather_WEATHER_API_KEY: 'k' } }).manuals(), [])

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'utp-node-'))
  try {
    const json = path.join(dir, 'utp.json')
    fs.writeFileSync(json, JSON.stringify({ variables: { A: '1' } }))
    assert.deepEqual(new Engine(json).manuals(), [])
    const yaml = path.join(dir, 'utp.yaml')
    fs.writeFileSync(yaml, 'variables:\n  A: "1"\n')
    const engine = new Engine(yaml)
    assert.deepEqual(await engine.discover(manualsDir), ['legacy_notes', 'shop', 'weather'])

    // Manuals listed in the config are registered by the constructor; paths are
    // relative to the config file.
    fs.copyFileSync(path.join(manualsDir, 'weather.utcp.json'), path.join(dir, 'weather.utcp.json'))
    fs.writeFileSync(path.join(dir, 'with-manuals.json'), JSON.stringify({ manuals: ['weather.utcp.json'] }))
    assert.deepEqual(new Engine(path.join(dir, 'with-manuals.json')).manuals(), ['weather'])
    assert.throws(() => new Engine({ manuals: [path.join(dir, 'missing.utcp.json')] }), { code: 'ERR_UTP_NOT_FOUND' })
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('store: "memory" is the default and the only store for now', () => {
  assert.deepEqual(new Engine(null, { store: 'memory' }).manuals(), [])
  assert.deepEqual(new Engine(null, {}).manuals(), [])
  assert.deepEqual(new Engine(null, { store: null }).manuals(), [])
})

test('close() is idempotent and ends the engine', async () => {
  const engine = new Engine()
  await engine.registerManual(weatherManual(), 'weather')
  assert.equal(engine.closed, false)
  engine.close()
  engine.close()
  assert.equal(engine.closed, true)
})

test('Symbol.dispose closes the engine', () => {
  const engine = new Engine()
  engine[Symbol.dispose]()
  assert.equal(engine.closed, true)
  assert.equal(Object.prototype.toString.call(engine), '[object Engine]')
})
