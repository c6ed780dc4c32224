"""Drives a Switchboard echo route with the `websockets` library, a third-party client.

Usage: python-client.py ws://HOST:PORT/echo [ws://HOST:PORT/BROADCAST_ROUTE]
Prints one line per check and exits 1 if any failed. With a broadcast route, also checks that a
deflate client and a plain client both receive the same broadcasts.
"""

import asyncio
import os
import sys

from websockets.asyncio.client import connect

TIMEOUT = 10


async def echo(ws, message):
    await ws.send(message)
    reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
    if reply != message:
        raise AssertionError(f"echo of {type(message).__name__} of {len(message)} differs: got {len(reply)}")


async def exchange(ws):
    await echo(ws, "hello")
    await echo(ws, "ünïcødé ✓")
    await echo(ws, bytes(range(256)))
    # Above the server's compression threshold, and compressible.
    await echo(ws, "switchboard " * 8000)
    await echo(ws, b"\x00\x01" * 40000)
    # Incompressible: deflate must still round-trip it.
    await echo(ws, os.urandom(50000))
    # Several in a row: the client keeps its compression context across messages.
    for i in range(20):
        await echo(ws, f"message {i} " * (i * 30))
    # A message in fragments.
    await ws.send(["frag", "ment", "ed"])
    reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
    if reply != "fragmented":
        raise AssertionError(f"fragmented echo came back as {reply!r}")
    pong = await ws.ping(b"ping")
    await asyncio.wait_for(pong, TIMEOUT)
    await ws.close(code=4001, reason="done")
    received = ws.protocol.close_rcvd
    if received is None or received.code != 4001:
        raise AssertionError(f"server answered the close with {received}")


async def plain(url):
    async with connect(url, compression=None, open_timeout=TIMEOUT) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        if extensions is not None:
            raise AssertionError(f"no extension offered, yet the server answered {extensions!r}")
        await exchange(ws)


async def deflate(url):
    # `compression="deflate"` is the library's default; spelled out for the reader.
    async with connect(url, compression="deflate", open_timeout=TIMEOUT) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        if "permessage-deflate" not in extensions:
            raise AssertionError(f"permessage-deflate not negotiated (response header: {extensions!r})")
        names = [type(e).__name__ for e in ws.protocol.extensions]
        if names != ["PerMessageDeflate"]:
            raise AssertionError(f"active extensions: {names}")
        await exchange(ws)


async def broadcast(url):
    async with (
        connect(url, compression="deflate", open_timeout=TIMEOUT) as compressed,
        connect(url, compression=None, open_timeout=TIMEOUT) as uncompressed,
    ):
        extensions = compressed.response.headers.get("Sec-WebSocket-Extensions") or ""
        if "permessage-deflate" not in extensions:
            raise AssertionError(f"permessage-deflate not negotiated (response header: {extensions!r})")
        if uncompressed.response.headers.get("Sec-WebSocket-Extensions") is not None:
            raise AssertionError("the plain client got an extension it did not offer")
        # Above the compression threshold, from either side, then one below it.
        messages = [(uncompressed, "broadcast " * 500), (compressed, bytes(range(256)) * 40), (compressed, "small")]
        for sender, message in messages:
            await sender.send(message)
            for name, receiver in (("deflate", compressed), ("plain", uncompressed)):
                reply = await asyncio.wait_for(receiver.recv(), TIMEOUT)
                if reply != message:
                    raise AssertionError(f"{name} client got {len(reply)} bytes, not the {len(message)} sent")


async def main(url, broadcast_url):
    failed = 0
    checks = [(plain, url), (deflate, url)] + ([(broadcast, broadcast_url)] if broadcast_url else [])
    for check, url in checks:
        try:
            await asyncio.wait_for(check(url), 60)
            print(f"ok: {check.__name__}")
        except Exception as e:  # Every failure is reported, then counted.
            failed += 1
            print(f"FAIL: {check.__name__}: {type(e).__name__}: {e}")
    return failed


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(1 if asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)) else 0)
