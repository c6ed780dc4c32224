"""A plain-TCP to TLS relay, for clients that cannot speak TLS themselves (kosoku, which runs the
Autobahn cases, refuses wss:// URLs): every connection to the relay is carried over its own TLS
connection to the target, byte for byte, so the server's TLS front sees every case.

Usage: tls-relay.py HOST:PORT CA_PEM [SERVER_NAME]
Prints `relaying on 127.0.0.1:PORT` once listening; runs until killed.
"""

import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        # The other side's end is passed on as an end (close_notify or FIN), not a reset.
        try:
            writer.close()
        except (ConnectionError, ssl.SSLError):
            pass


async def main(target, ca, name):
    host, port = target.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca)

    async def relay(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(
                host, int(port), ssl=context, server_hostname=name
            )
        except (OSError, ssl.SSLError) as e:
            print(f"tls-relay: {target}: {e}", file=sys.stderr)
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    print(f"relaying on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else "localhost"))
