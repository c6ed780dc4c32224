export { Client, Subscription } from './client.js';
export { Emitter } from './emitter.js';
export type { Listener } from './emitter.js';
export { SwitchboardError } from './errors.js';
export { jwtExpiry } from './jwt.js';
export type * from './types.js';
