// Shared fixtures of the utp-runtime tests.
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import assert from 'node:assert/strict'
import { UtpError } from 'utp-runtime'

export const here = path.dirname(fileURLToPath(import.meta.url))
export const packageDir = path.resolve(here, '..')
export const repoRoot = path.resolve(packageDir, '..')
export const manualsDir = path.join(repoRoot, 'examples', 'manuals')

/** A UTCP manual in the format of examples/manuals/weather.utcp.json. */
export function weatherManual() {
  return {
    utcp_version: '1.0.1',
    manual_version: '1.0.0',
    info: { title: 'Weather', description: 'Current conditions and forecasts' },
    tools: [
      {
        name: 'get_current',
        description: 'Current weather conditions for a city',
        inputs: {
          type: 'object',
          properties: { city: { type: 'string' }, units: { type: 'string', enum: ['metric', 'imperial'] } },
          required: ['city'],
        },
        outputs: { type: 'object', properties: { temperature: { type: 'number' }, conditions: { type: 'string' } } },
        tags: ['weather', 'current'],
        tool_call_template: {
          call_template_type: 'http',
          url: 'http://127.0.0.1:8765/weather/current',
          http_method: 'GET',
          auth: { auth_type: 'api_key', api_key: '${WEATHER_API_KEY}', var_name: 'X-Api-Key', location: 'header' },
        },
      },
      {
        name: 'get_forecast',
        description: 'Daily forecast for the next days for a city',
        inputs: {
          type: 'object',
          properties: { city: { type: 'string' }, days: { type: 'integer', minimum: 1, maximum: 14 } },
          required: ['city'],
        },
        outputs: { type: 'object', properties: { days: { type: 'array' } } },
        tags: ['weather', 'forecast'],
        tool_call_template: { call_template_type: 'http', url: 'http://127.0.0.1:8765/weather/forecast', http_method: 'GET' },
      },
    ],
  }
}

/** A manual of `n` native tools named t0..t(n-1), all tagged `bulk`. */
export function bulkManual(n) {
  return {
    tools: Array.from({ length: n }, (_, i) => ({
      name: `t${i}`,
      description: `bulk tool number ${i}`,
      tags: ['bulk'],
      tool_call_template: { call_template_type: 'native' },
    })),
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Poll `fn` until it returns true (at most `ms`). */
export async function until(fn, ms = 5000) {
  const deadline = Date.now() + ms
  while (!fn()) {
    if (Date.now() > deadline) assert.fail(`condition not met within ${ms} ms`)
    await sleep(2)
  }
}

/** Assert that `promise` rejects with a UtpError of `code` whose message matches every
 * pattern (with none, that it has a message). Returns the error. */
export async function rejectsWith(promise, code, ...patterns) {
  const error = await promise.then(
    (value) => assert.fail(`expected ${code}, resolved with ${JSON.stringify(value)}`),
    (e) => e,
  )
  assert.ok(error instanceof UtpError, `not a UtpError: ${error}`)
  assert.equal(error.code, code, error.message)
  for (const p of patterns.length ? patterns : [/./]) assert.match(error.message, p)
  return error
}

/** Assert that `fn()` throws a UtpError of `code` whose message matches every pattern. */
export function throwsWith(fn, code, ...patterns) {
  let error
  try {
    fn()
  } catch (e) {
    error = e
  }
  assert.ok(error instanceof UtpError, `expected a UtpError ${code}, got ${error}`)
  assert.equal(error.code, code, error.message)
  for (const p of patterns.length ? patterns : [/./]) assert.match(error.message, p)
  return error
}
