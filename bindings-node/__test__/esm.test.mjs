// The ESM entry: import from 'utp-runtime' (package.json `exports` → index.mjs).
import test from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

import utp, { Engine, UtpError, codes, version } from 'utp-runtime'
import * as esm from 'utp-runtime'

const require = createRequire(import.meta.url)

test('named and default ESM exports are the CommonJS objects', () => {
  const cjs = require('utp-runtime')
  assert.equal(Engine, cjs.Engine)
  assert.equal(UtpError, cjs.UtpError)
  assert.equal(codes, cjs.codes)
  assert.equal(version, cjs.version)
  assert.equal(utp, cjs)
  for (const name of Object.keys(cjs)) assert.equal(esm[name], cjs[name], `index.mjs lacks the named export ${name}`)
})

test('an engine works through the ESM entry', async () => {
  const engine = new Engine()
  const names = await engine.registerManual({ tools: [{ name: 'ping', tool_call_template: { call_template_type: 'native' } }] }, 'net')
  assert.deepEqual(names, ['net.ping'])
  assert.equal(engine.tool('net.ping').name, 'net.ping')
  engine.close()
})
