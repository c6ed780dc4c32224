// A webhook receiver for the Pusher tests: an HTTP server on 127.0.0.1 that checks every
// request's `X-Pusher-Signature` (hex HMAC-SHA256 of the raw body with the secret of the app
// named by `X-Pusher-Key`), and lets the `pusher` server SDK check it too
// (`pusher.webhook(req).isValid()`), and records it with its arrival time.
//
//   node tests/node/webhook-receiver.mjs '{"fail": N}'
//
// Prints `listening on PORT` once ready. The first `fail` requests (default 0) are answered 500;
// the rest 200. It exits when its stdin closes (the test that started it went away) or after
// ten minutes whatever happens.
//
// Control endpoints (never recorded):
//   GET  /_log            every recorded request, oldest first (JSON array, see `record`)
//   POST /_control        body {"fail": N}: answer the next N requests with 500
//   POST /_reset          forget what was recorded

import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import PusherServer from "pusher";
import { APPS } from "./lib.mjs";

const secrets = Object.fromEntries(Object.values(APPS).map((app) => [app.key, app.secret]));
// The server SDK's own check, `pusher.webhook({headers, rawBody}).isValid()`, per app key.
const sdks = Object.fromEntries(
  Object.values(APPS).map((app) => [app.key, new PusherServer({ appId: app.id, key: app.key, secret: app.secret })]),
);

/** What the `pusher` SDK makes of the request: valid or not, and its events when valid. */
function sdkView(key, headers, raw) {
  const sdk = sdks[key];
  if (!sdk) {
    return { valid: false };
  }
  const hook = sdk.webhook({ headers, rawBody: raw.toString("utf8") });
  const valid = hook.isValid();
  return valid ? { valid, events: hook.getEvents(), time: hook.getTime().getTime() } : { valid };
}
const args = JSON.parse(process.argv[2] ?? "{}");
let failRemaining = Number(args.fail ?? 0);
const log = [];

/** Whether `signature` is the hex HMAC-SHA256 of `body` with the secret of `key`. */
function signatureValid(key, signature, body) {
  const secret = secrets[key];
  if (!secret || typeof signature !== "string") {
    return false;
  }
  const expected = createHmac("sha256", secret).update(body).digest();
  const given = Buffer.from(signature, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function reply(res, status, body) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const raw = Buffer.concat(chunks);
    const path = req.url ?? "";
    if (path === "/_log") {
      reply(res, 200, log);
      return;
    }
    if (path === "/_control") {
      failRemaining = Number(JSON.parse(raw.toString() || "{}").fail ?? 0);
      reply(res, 200, { fail: failRemaining });
      return;
    }
    if (path === "/_reset") {
      log.length = 0;
      reply(res, 200, {});
      return;
    }
    let body = null;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      body = null;
    }
    const key = req.headers["x-pusher-key"];
    const status = failRemaining > 0 ? 500 : 200;
    if (failRemaining > 0) {
      failRemaining -= 1;
    }
    // One record per request: what a test checks about deliveries.
    log.push({
      at: Date.now(),
      method: req.method,
      path,
      headers: req.headers,
      raw: raw.toString("utf8"),
      body,
      key,
      valid: signatureValid(key, req.headers["x-pusher-signature"], raw),
      sdk: sdkView(key, req.headers, raw),
      status,
    });
    reply(res, status, status === 200 ? {} : { error: "failing on purpose" });
  });
});

server.listen(0, "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
setTimeout(() => process.exit(0), 600_000).unref();
