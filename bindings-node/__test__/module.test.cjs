// The CommonJS entry: require('utp-runtime') (resolved through package.json `exports`).
'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')

const utp = require('utp-runtime')

test('require() gives Engine, UtpError, codes and version', () => {
  assert.equal(typeof utp.Engine, 'function')
  assert.equal(typeof utp.UtpError, 'function')
  assert.equal(typeof utp.version, 'function')
  assert.equal(require('..'), utp, 'the package main is the same module')
})

test('version() is the workspace version and the package version', () => {
  const cargo = fs.readFileSync(path.join(__dirname, '..', '..', 'Cargo.toml'), 'utf8')
  const workspaceVersion = /\[workspace\.package\][^[]*?\nversion\s*=\s*"([^"]+)"/.exec(cargo)[1]
  assert.equal(utp.version(), workspaceVersion)
  assert.equal(utp.version(), require('../package.json').version)
  assert.match(utp.version(), /^\d+\.\d+\.\d+/)
})

test('codes map every stable code name to ERR_UTP_<NAME>, in code order', () => {
  const names = require('../native.js').errorCodes()
  assert.equal(names.length, 19)
  assert.deepEqual(Object.keys(utp.codes), names)
  for (const name of names) assert.equal(utp.codes[name], `ERR_UTP_${name}`)
  assert.equal(utp.codes.NOT_FOUND, 'ERR_UTP_NOT_FOUND')
  assert.equal(utp.UtpError.codes, utp.codes)
  assert.ok(Object.isFrozen(utp.codes))
})

test('UtpError is an Error with a code', () => {
  const e = new utp.UtpError('boom', utp.codes.TIMEOUT)
  assert.ok(e instanceof Error)
  assert.equal(e.name, 'UtpError')
  assert.equal(e.code, 'ERR_UTP_TIMEOUT')
  assert.equal(new utp.UtpError('x').code, 'ERR_UTP_INTERNAL')
})
