"""Drives a Switchboard echo route with the `websockets` library, a third-party client.

Usage: python-client.py ws://HOST:PORT/echo
Prints one line per check and exits 1 if any failed.
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


async def main(url):
    failed = 0
    for check in (plain, deflate):
        try:
            await asyncio.wait_for(check(url), 60)
            print(f"ok: {check.__name__}")
        except Exception as e:  # Every failure is reported, then counted.
            failed += 1
            print(f"FAIL: {check.__name__}: {type(e).__name__}: {e}")
    return failed


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(1 if asyncio.run(main(sys.argv[1])) else 0)
