// Runs `node --test` on the given files, adding --experimental-websocket on Node versions
// (20) where globalThis.WebSocket is behind that flag, so the tests drive Node's own
// WebSocket (the browser-like one) rather than falling back to `ws`.
import { spawnSync } from 'node:child_process';

const flags = typeof globalThis.WebSocket === 'undefined' ? ['--experimental-websocket'] : [];
const files = process.argv.slice(2);
const { status, signal } = spawnSync(process.execPath, [...flags, '--test', ...files], { stdio: 'inherit' });
process.exit(status ?? (signal ? 1 : 0));
