// The Node reference hub for Switchboard's benchmarks: a broadcast room on the `ws` package,
// written as ws's own README writes one. Every message from any client goes to every open
// client, the sender included, unchanged (text stays text, binary stays binary).
//
//   node server.js [--listen 127.0.0.1:8080]     prints `listening on ADDR` when ready
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

let listen = '127.0.0.1:8080';
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i += 2) {
  if (args[i] === '--listen' && args[i + 1] !== undefined) {
    listen = args[i + 1];
  } else {
    console.error(`usage: node server.js [--listen ADDR] (got ${args[i]})`);
    process.exit(2);
  }
}
const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

// perMessageDeflate is off by default in ws 8; said here so nobody wonders. The backlog matches
// Switchboard's, so a connect storm meets the same accept queue.
const wss = new WebSocketServer({ host, port, backlog: 4096, perMessageDeflate: false });

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
  // A reset from a client that went away must not take the server down.
  ws.on('error', () => {});
});

wss.on('listening', () => {
  const address = wss.address();
  console.log(`listening on ${address.address}:${address.port}`);
});
