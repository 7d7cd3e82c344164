// ESM type declarations of utp-runtime: the same API as index.d.ts.
import * as utp from './index.js'

export * from './index.js'
export default utp
