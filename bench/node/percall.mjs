// Per-call cost of `await engine.callTool(...)` from Node: part of `python3 bench/bindings/run.py`.
//
// Usage: node bench/node/percall.mjs N ROUNDS
//
// Tools on one `new Engine()`: `text.hello`, a `text` tool (answered by the engine with no
// JS callback: the closest to a native no-op reachable from Node), `bench.noop`, a JS
// function `() => null` registered with registerTool (tokio → JS thread through a
// ThreadsafeFunction → back), and `bench.async_noop` (`async () => null`); two more rows call
// `text.hello` and `bench.noop` on a second engine with one JS business rule, `() => true`.
// Per tool: warm-up,
// then ROUNDS rounds of N sequential awaited calls; prints one JSON line with µs per call of
// every round and their median. `floor` is `await` of an already-resolved JS async function:
// the cost of one await in a loop; `threadpool_floor` is `await` of crypto.randomFill on a
// 1-byte buffer, Node's own async native call (JS thread → libuv worker → back to the JS
// thread through uv_async): the same two thread hops as any callTool. Neither is an engine cost.
// Loads the binding from bindings-node/ (index.mjs → native.js); NAPI_RS_NATIVE_LIBRARY_PATH
// picks the .node file (run.py points it at a release build).
import { randomFill } from 'node:crypto'
import { promisify } from 'node:util'
import { Engine } from '../../bindings-node/index.mjs'

const n = Number(process.argv[2] ?? 20_000)
const k = Number(process.argv[3] ?? 5)
const engine = new Engine()
engine.registerTool('bench.noop', () => null)
engine.registerTool('bench.async_noop', async () => null)
await engine.registerManual({ tools: [{ name: 'hello', tool_call_template: { call_template_type: 'text', content: 'hello' } }] }, 'text')
if ((await engine.callTool('text.hello', {})) !== 'hello') throw new Error('text tool')
const ruled = new Engine()
ruled.registerTool('bench.noop', () => null)
await ruled.registerManual({ tools: [{ name: 'hello', tool_call_template: { call_template_type: 'text', content: 'hello' } }] }, 'text')
ruled.domainLayer.addBusinessRule('allow_all', () => true)
if ((await ruled.callTool('bench.noop', {})) !== null) throw new Error('ruled tool')

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2 }

async function rounds(fn) {
  for (let i = 0; i < Math.min(n, 2000); i++) await fn() // warm-up
  const out = []
  for (let r = 0; r < k; r++) {
    const start = process.hrtime.bigint()
    for (let i = 0; i < n; i++) await fn()
    out.push(Number(process.hrtime.bigint() - start) / 1000 / n)
  }
  return { median: median(out), rounds: out }
}

const noop = async () => null
const fill = promisify(randomFill)
const buf = Buffer.alloc(1)
const rows = {
  text_tool: await rounds(() => engine.callTool('text.hello', {})),
  js_noop_tool: await rounds(() => engine.callTool('bench.noop', {})),
  js_async_noop_tool: await rounds(() => engine.callTool('bench.async_noop', {})),
  text_tool_js_rule: await rounds(() => ruled.callTool('text.hello', {})),
  js_noop_tool_js_rule: await rounds(() => ruled.callTool('bench.noop', {})),
  await_floor: await rounds(() => noop({})),
  threadpool_floor: await rounds(() => fill(buf)),
}
console.log(JSON.stringify({ n, rounds: k, us_per_call: rows }))
process.exit(0)
