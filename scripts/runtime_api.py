#!/usr/bin/env python3
"""A Lambda Runtime API server for benchmarks: serves events the way AWS's Runtime API does.

cargo-lambda's emulator (`cargo lambda watch --only-lambda-apis`) stalls about 40 ms on many
events: its sockets do not set TCP_NODELAY, and it forwards the invoke body to the function's
`GET .../invocation/next` response piece by piece, as it reads it from the invoker. Every piece
after the first waits, under Nagle's algorithm, for the ACK of the one before, which the
function's kernel delays (delayed ACK, 40 ms minimum on Linux) because the function has nothing
to send until it has the whole event. scripts/benchmarks.md ("Event size sweep") has the
packet capture and the numbers.

This server does what AWS's Runtime API does (its open-source twin, the Runtime Interface
Emulator, is Go's net/http, which sets TCP_NODELAY on every connection; it reads the whole
invoke body, then writes the event): every accepted connection gets TCP_NODELAY, and each
answer is written at once, head and body in one send. Two switches bring back cargo-lambda's
behaviour, one part at a time, to show which part causes the stall:

    --nagle         leave TCP_NODELAY off on accepted connections (Nagle's algorithm on)
    --stream-event  write the event to the function in pieces: the head and the first 16 KiB,
                    then pieces of 16, 32, 64 and 128 KiB, as cargo-lambda forwards it

It serves the same URLs as cargo-lambda, so a function needs the same environment:

    POST /2015-03-31/functions/NAME/invocations          invoke NAME with the body as event;
                                                         200 with the function's result, or
                                                         500 with the error it reported
    GET  /.rt/NAME/2018-06-01/runtime/invocation/next    the function's next event (waits)
    POST /.rt/NAME/2018-06-01/runtime/invocation/ID/response
    POST /.rt/NAME/2018-06-01/runtime/invocation/ID/error
    POST /.rt/NAME/2018-06-01/runtime/init/error

    AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:PORT/.rt/NAME

Usage: python scripts/runtime_api.py [--addr 127.0.0.1:0] [--nagle] [--stream-event]

It prints `listening on http://HOST:PORT (TCP_NODELAY ..., event written ...)` on stdout once
it accepts connections, and for each accepted connection a `connection ... TCP_NODELAY=0|1`
line on stderr, read back from the socket. Only the Python standard library; only for local
benchmarks and tests (no limits on body size, no authentication). One asyncio thread serves
every connection, so an invocation costs no thread switches in the server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus

INVOKE = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
RUNTIME = re.compile(r"^/\.rt/(?P<name>[^/]+)/2018-06-01/runtime/"
                     r"(?:invocation/(?:(?P<next>next)|(?P<id>[^/]+)/(?P<kind>response|error))"
                     r"|(?P<init>init/error))$")
# How long a function may take to answer one event (the deadline it is told).
DEADLINE_S = 900
# The pieces --stream-event writes the event in after the head and the first piece: the sizes
# hyper's read buffer grows through while cargo-lambda reads the invoke body.
FIRST_PIECE = 16 * 1024
LATER_PIECES = (16 * 1024, 32 * 1024, 64 * 1024, 128 * 1024)
NOT_FOUND = b'{"errorType":"NotFound","errorMessage":"no such endpoint"}'


@dataclass
class Invocation:
    request_id: str
    event: bytes
    content_type: str
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RuntimeApi:
    """The events waiting for each function, and the invocations it has taken."""

    def __init__(self, nagle: bool, stream_event: bool) -> None:
        self.nagle, self.stream_event = nagle, stream_event
        self.waiting: dict[str, asyncio.Queue[Invocation]] = {}
        self.taken: dict[str, Invocation] = {}

    def queue(self, name: str) -> asyncio.Queue[Invocation]:
        return self.waiting.setdefault(name, asyncio.Queue())

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        # asyncio turns TCP_NODELAY on for every TCP connection; --nagle turns it off again.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if self.nagle else 1)
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        peer = writer.get_extra_info("peername")
        print(f"connection from {peer[0]}:{peer[1]} TCP_NODELAY={int(bool(nodelay))}",
              file=sys.stderr, flush=True)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                await self.route(method, target.split("?", 1)[0], headers, body, writer)
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            writer.close()

    async def route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                    writer: asyncio.StreamWriter) -> None:
        content_type = headers.get("content-type") or "application/json"
        invoke, runtime = INVOKE.match(path), RUNTIME.match(path)
        if method == "POST" and invoke:
            invocation = Invocation(str(uuid.uuid4()), body, content_type)
            self.queue(invoke["name"]).put_nowait(invocation)
            status, result, result_type = await invocation.result
            await answer(writer, status, result, result_type)
        elif method == "GET" and runtime and runtime["next"]:
            invocation = await self.queue(runtime["name"]).get()
            self.taken[invocation.request_id] = invocation
            deadline_ms = int((time.time() + DEADLINE_S) * 1000)
            await answer(writer, 200, invocation.event, invocation.content_type, {
                "lambda-runtime-aws-request-id": invocation.request_id,
                "lambda-runtime-deadline-ms": str(deadline_ms),
                "lambda-runtime-invoked-function-arn":
                    f"arn:aws:lambda:us-east-1:000000000000:function:{runtime['name']}",
            }, stream=self.stream_event)
        elif method == "POST" and runtime and runtime["id"]:
            invocation = self.taken.pop(runtime["id"], None)
            if invocation is None:
                await answer(writer, 400, b'{"errorType":"InvalidRequestID",'
                                          b'"errorMessage":"unknown request id"}')
                return
            invocation.result.set_result((200 if runtime["kind"] == "response" else 500,
                                          body, content_type))
            await answer(writer, 202, b'{"status":"OK"}')
        elif method == "POST" and runtime and runtime["init"]:
            # An init error fails the oldest waiting invocation of the function.
            waiting = self.queue(runtime["name"])
            if not waiting.empty():
                waiting.get_nowait().result.set_result((500, body, content_type))
            await answer(writer, 202, b'{"status":"OK"}')
        else:
            await answer(writer, 404, NOT_FOUND)


async def answer(writer: asyncio.StreamWriter, status: int, body: bytes,
                 content_type: str = "application/json", headers: dict[str, str] | None = None,
                 stream: bool = False) -> None:
    """Writes the whole answer at once (one send while the socket takes it), or in pieces with
    `stream`, each piece its own send."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"content-type: {content_type}",
             f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if not stream:
        writer.writelines([head, body])
        await writer.drain()
        return
    writer.write(head + body[:FIRST_PIECE])
    await writer.drain()
    at = FIRST_PIECE
    for size in itertools.chain(LATER_PIECES, itertools.repeat(LATER_PIECES[-1])):
        if at >= len(body):
            break
        writer.write(body[at:at + size])
        await writer.drain()
        at += size


async def serve(host: str, port: int, nagle: bool, stream_event: bool) -> None:
    api = RuntimeApi(nagle, stream_event)
    # A buffer limit above Lambda's 6 MB payloads: an event is read without flow-control pauses.
    server = await asyncio.start_server(api.serve, host, port, limit=8 << 20)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening on http://{bound_host}:{bound_port} "
          f"(TCP_NODELAY {'off' if nagle else 'on'}, "
          f"event written {'in pieces' if stream_event else 'whole'})", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--nagle", action="store_true", help="leave TCP_NODELAY off")
    parser.add_argument("--stream-event", action="store_true",
                        help="write the event in pieces, as cargo-lambda does")
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    try:
        asyncio.run(serve(host, int(port), args.nagle, args.stream_event))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
