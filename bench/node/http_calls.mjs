// Loopback HTTP calls from Node, UTP Runtime vs @utcp/sdk: part of `python3 bench/bindings/run.py`.
//
// Usage: node bench/node/http_calls.mjs utp|sdk|bare BASE_URL SEQ_N CONC_N CONC
//
// Both sides register the manual served at BASE_URL/utcp by bench/calls' server (one http
// tool, `bench.echo`, GET /echo?x=...), warm up, then call `bench.echo` with {x: "v<i>"}:
// SEQ_N sequential awaited calls, then CONC_N calls with CONC in flight (CONC async workers
// pulling from one counter). Prints one JSON line in the shape of bench/calls' clients.
// - utp: `new Engine()`, `await engine.registerManual(BASE_URL + '/utcp', 'bench')`,
//   `await engine.callTool(...)` (binding from bindings-node/, .node picked by
//   NAPI_RS_NATIVE_LIBRARY_PATH when set).
// - sdk: @utcp/sdk + @utcp/http (versions pinned in bench/node/package.json):
//   `UtcpClient.create(cwd, { manual_call_templates: [http template] })`,
//   `await client.callTool(...)`. @utcp/http console.logs one line per call; console.log is
//   silenced while the sdk runs, so its figure is without that cost (generous to the peer).
// - bare: Node's own `http.get` with a keep-alive agent (CONC sockets) and JSON.parse, no tool
//   protocol at all: what Node's HTTP stack itself allows, as `call_http raw` is for Rust.
const [mode, base, seqArg, concNArg, concArg] = process.argv.slice(2)
const [seqN, concN, conc] = [Number(seqArg), Number(concNArg), Number(concArg)]
const out = console.log.bind(console)

let call
if (mode === 'utp') {
  const { Engine } = await import('../../bindings-node/index.mjs')
  const engine = new Engine()
  const names = await engine.registerManual(`${base}/utcp`, 'bench')
  if (JSON.stringify(names) !== '["bench.echo"]') throw new Error(`registered ${names}`)
  call = (args) => engine.callTool('bench.echo', args)
} else if (mode === 'sdk') {
  console.log = () => {}
  const { UtcpClient } = await import('@utcp/sdk')
  await import('@utcp/http')
  const client = await UtcpClient.create(process.cwd(), {
    manual_call_templates: [{ name: 'bench', call_template_type: 'http', http_method: 'GET', url: `${base}/utcp` }],
  })
  const tools = (await client.getTools()).map((t) => t.name)
  if (JSON.stringify(tools) !== '["bench.echo"]') throw new Error(`registered ${tools}`)
  call = (args) => client.callTool('bench.echo', args)
} else if (mode === 'bare') {
  const http = await import('node:http')
  const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(conc, 1) })
  call = ({ x }) =>
    new Promise((resolve, reject) => {
      http
        .get(`${base}/echo?x=${encodeURIComponent(x)}`, { agent }, (res) => {
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (chunk) => (body += chunk))
          res.on('end', () => resolve(JSON.parse(body)))
        })
        .on('error', reject)
    })
} else {
  throw new Error('usage: http_calls.mjs utp|sdk|bare BASE_URL SEQ_N CONC_N CONC')
}

async function drive(n, c) {
  let next = 0
  const worker = async () => {
    for (let i = next++; i < n; i = next++) {
      const r = await call({ x: `v${i}` })
      if (r.x !== `v${i}`) throw new Error(`call ${i}: ${JSON.stringify(r)}`)
    }
  }
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: Math.max(c, 1) }, worker))
  return n / (Number(process.hrtime.bigint() - start) / 1e9)
}

await drive(Math.max(conc * 4, 200), conc) // warm up: connections for CONC in flight, JIT
const seq = await drive(seqN, 1)
const par = await drive(concN, conc)
out(JSON.stringify({ mode: `${mode}-node`, seq_n: seqN, seq_calls_per_s: seq, conc_n: concN, conc, conc_calls_per_s: par }))
process.exit(0)
