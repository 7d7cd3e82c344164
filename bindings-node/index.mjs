// ESM entry of utp-runtime: the same objects as the CommonJS entry (index.js).
import utp from './index.js'

export const { Engine, DomainLayer, EventBus, Subscription, ToolStream, UtpError, codes, version } = utp
export default utp
