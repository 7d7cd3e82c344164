// Time per sequential `await engine.callTool(...)`: a no-op JS tool (tokio → JS thread
// → back) and a native text tool (no JS callback). Measures, asserts nothing.
// Run after `npm run build`: `node bench/calls.mjs [N]` (default 10000).
import { Engine } from 'utp-runtime'

const n = Number(process.argv[2] ?? 10_000)
const engine = new Engine()
engine.registerTool('bench.noop', () => null)
engine.registerTool('bench.async_noop', async () => null)
await engine.registerManual({ tools: [{ name: 'hello', tool_call_template: { call_template_type: 'text', content: 'hello' } }] }, 'text')

async function time(name, args) {
  for (let i = 0; i < 500; i++) await engine.callTool(name, args) // warm-up
  const start = process.hrtime.bigint()
  for (let i = 0; i < n; i++) await engine.callTool(name, args)
  const micros = Number(process.hrtime.bigint() - start) / 1000 / n
  console.log(`${name.padEnd(18)} ${micros.toFixed(1).padStart(7)} µs per call (${n} sequential calls)`)
}

await time('bench.noop', {})
await time('bench.async_noop', {})
await time('text.hello', {})
