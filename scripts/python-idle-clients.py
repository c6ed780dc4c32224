"""Opens COUNT WebSocket connections to a URL and holds them, silent, until killed.

Usage: python-idle-clients.py ws://HOST:PORT/PATH COUNT SOURCE_IP HOLD_SECONDS
Each connection is a raw upgrade (no client library): the point is what the *server* spends
per connection, so the client keeps as little as it can. Prints `connected N failed M` once
every attempt has finished, then holds the connections for HOLD_SECONDS (or until killed).
Connections come from SOURCE_IP (e.g. 127.0.0.2), so several processes do not share one
range of ephemeral ports.
"""

import asyncio
import base64
import os
import sys
from urllib.parse import urlsplit

CONCURRENT_CONNECTS = 256
STEP_TIMEOUT = 30


async def connect(host, port, path, source, gate, held):
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0), limit=1024), STEP_TIMEOUT
        )
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        held.append(writer)


async def main(url, count, source, hold):
    parts = urlsplit(url)
    gate = asyncio.Semaphore(CONCURRENT_CONNECTS)
    held = []
    attempts = [connect(parts.hostname, parts.port, parts.path or "/", source, gate, held) for _ in range(count)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    print(f"connected {len(held)} failed {len(failures)}", flush=True)
    for failure in failures[:3]:
        print(f"  e.g. {type(failure).__name__}: {failure}", file=sys.stderr, flush=True)
    await asyncio.sleep(hold)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
