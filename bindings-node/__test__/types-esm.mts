// Type-checked (never run) by types.test.mjs: the ESM entry has the same types.
import utp, { Engine, UtpError, codes, version, type Tool } from 'utp-runtime'

const engine: Engine = new utp.Engine()
const hits: Tool[] = engine.searchTools('x', { limit: 0 })
const code: 'ERR_UTP_NOT_FOUND' = codes.NOT_FOUND
const err: UtpError = new UtpError('m', code)
const v: string = version()
await engine.registerManual({ tools: [] }, 'm')
console.log(hits, err, v)
