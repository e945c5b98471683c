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
answer is written with one `sendall`. Two switches bring back cargo-lambda's behaviour, one
part at a time, to show which part causes the stall:

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
benchmarks and tests (no limits on body size, no authentication).
"""

from __future__ import annotations

import argparse
import itertools
import queue
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


@dataclass
class Invocation:
    request_id: str
    event: bytes
    content_type: str
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    result: bytes = b""
    result_type: str = "application/json"


class Functions:
    """The events waiting for each function, and the invocations it has taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: dict[str, queue.Queue[Invocation]] = {}
        self.taken: dict[str, Invocation] = {}

    def queue(self, name: str) -> queue.Queue[Invocation]:
        with self.lock:
            return self.waiting.setdefault(name, queue.Queue())

    def take(self, name: str) -> Invocation:
        invocation = self.queue(name).get()
        with self.lock:
            self.taken[invocation.request_id] = invocation
        return invocation

    def finish(self, request_id: str, status: int, result: bytes, result_type: str) -> bool:
        with self.lock:
            invocation = self.taken.pop(request_id, None)
        if invocation is None:
            return False
        invocation.status, invocation.result, invocation.result_type = status, result, result_type
        invocation.done.set()
        return True

    def fail_oldest(self, name: str, result: bytes, result_type: str) -> None:
        """An init error: the oldest waiting invocation of `name` fails with it."""
        try:
            invocation = self.queue(name).get_nowait()
        except queue.Empty:
            return
        invocation.status, invocation.result, invocation.result_type = 500, result, result_type
        invocation.done.set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "RuntimeApiServer"

    def setup(self) -> None:
        super().setup()
        if not self.server.nagle:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nodelay = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        print(f"connection from {self.client_address[0]}:{self.client_address[1]} "
              f"TCP_NODELAY={int(bool(nodelay))}", file=sys.stderr, flush=True)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def answer(self, status: int, body: bytes = b"", content_type: str = "application/json",
               headers: dict[str, str] | None = None, stream: bool = False) -> None:
        """Writes the whole answer with one sendall, or in pieces with `stream`."""
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                 f"content-type: {content_type}", f"content-length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if not stream:
            # One writev of the head and the body (no copy of a large event).
            pieces = [memoryview(head), memoryview(body)]
            while pieces:
                sent = self.connection.sendmsg(pieces)
                while pieces and sent >= len(pieces[0]):
                    sent -= len(pieces[0])
                    pieces.pop(0)
                if pieces:
                    pieces[0] = pieces[0][sent:]
            return
        self.connection.sendall(head + body[:FIRST_PIECE])
        at = FIRST_PIECE
        for size in itertools.chain(LATER_PIECES, itertools.repeat(LATER_PIECES[-1])):
            if at >= len(body):
                break
            self.connection.sendall(body[at:at + size])
            at += size

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if m := INVOKE.match(path):
            invocation = Invocation(str(uuid.uuid4()), self.body(),
                                    self.headers.get("content-type") or "application/json")
            self.server.functions.queue(m["name"]).put(invocation)
            invocation.done.wait()
            self.answer(invocation.status, invocation.result, invocation.result_type)
        elif (m := RUNTIME.match(path)) and m["id"]:
            status = 200 if m["kind"] == "response" else 500
            found = self.server.functions.finish(
                m["id"], status, self.body(), self.headers.get("content-type") or "application/json")
            if found:
                self.answer(202, b'{"status":"OK"}')
            else:
                self.answer(400, b'{"errorType":"InvalidRequestID","errorMessage":"unknown request id"}')
        elif m and m["init"]:
            self.server.functions.fail_oldest(m["name"], self.body(),
                                              self.headers.get("content-type") or "application/json")
            self.answer(202, b'{"status":"OK"}')
        else:
            self.body()
            self.answer(404, b'{"errorType":"NotFound","errorMessage":"no such endpoint"}')

    def do_GET(self) -> None:  # noqa: N802
        m = RUNTIME.match(self.path.split("?", 1)[0])
        if not m or not m["next"]:
            self.answer(404, b'{"errorType":"NotFound","errorMessage":"no such endpoint"}')
            return
        invocation = self.server.functions.take(m["name"])
        deadline_ms = int((time.time() + DEADLINE_S) * 1000)
        self.answer(200, invocation.event, invocation.content_type, {
            "lambda-runtime-aws-request-id": invocation.request_id,
            "lambda-runtime-deadline-ms": str(deadline_ms),
            "lambda-runtime-invoked-function-arn":
                f"arn:aws:lambda:us-east-1:000000000000:function:{m['name']}",
        }, stream=self.server.stream_event)


class RuntimeApiServer(ThreadingHTTPServer):
    daemon_threads = True
    # A waiting `next` holds its thread; the default backlog (5) is enough for a benchmark.

    def __init__(self, addr: tuple[str, int], nagle: bool, stream_event: bool) -> None:
        super().__init__(addr, Handler)
        self.nagle, self.stream_event = nagle, stream_event
        self.functions = Functions()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--nagle", action="store_true", help="leave TCP_NODELAY off")
    parser.add_argument("--stream-event", action="store_true",
                        help="write the event in pieces, as cargo-lambda does")
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    server = RuntimeApiServer((host, int(port)), args.nagle, args.stream_event)
    bound_host, bound_port = server.server_address[:2]
    print(f"listening on http://{bound_host}:{bound_port} "
          f"(TCP_NODELAY {'off' if args.nagle else 'on'}, "
          f"event written {'in pieces' if args.stream_event else 'whole'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
