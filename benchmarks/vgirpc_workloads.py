"""The benchmark service written with vgi-rpc, and its client worker; runs INSIDE the Python 3.13 venv with vgi-rpc.

    python -m benchmarks.vgirpc_workloads serve stdio|unix PATH|http [--bearer TOKEN]
    python -m benchmarks.vgirpc_workloads client --transport pipe|subprocess|unix|http [--address A]
        [--tls DIR --bearer TOKEN]

``serve`` runs a server (stdio: the worker ``connect()`` spawns; unix: prints the socket path once
bound; http: vgi-rpc's ``serve_http`` prints ``PORT:<n>``; with ``--bearer`` every request must carry
that bearer token). ``client`` connects once, prints one JSON line (versions), then answers
commands, one JSON line each, on stdin: ``{"workload": ..., "count": n, "warmup": n, "sizes": {...}}``
-> ``{"samples": [...]}`` (or ``{"error": ...}``), until stdin closes. ``benchmarks.vgirpc`` drives
it so that vgi-flight, raw pyarrow.flight and vgi-rpc rounds alternate.

The client loops are ``benchmarks.common.rpc_samplers``, the same code that measures vgi-flight.
This module must not import vgi_flight or ``benchmarks.services`` (they live in the other venv).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Protocol

import pyarrow as pa
from vgi_rpc import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    ArrowType,
    CallContext,
    ExchangeState,
    OutputCollector,
    ProducerState,
    Stream,
    StreamState,
)

from benchmarks.common import (
    BULK_SCHEMA,
    SMALL_SCHEMA,
    Sampler,
    Sizes,
    bulk_batch,
    rpc_samplers,
    sample_order,
    small_batch,
)

TRANSPORTS = ("pipe", "subprocess", "unix", "http")
TOKEN_KEY = b"b" * 32

# --- the service (the twin of benchmarks.services) -----------------------------------------------


class Priority(Enum):
    LOW = "low"
    HIGH = "high"


@dataclass(frozen=True)
class Point(ArrowSerializableDataclass):
    x: float
    y: float


@dataclass(frozen=True)
class Order(ArrowSerializableDataclass):
    order_id: int
    customer: str
    priority: Priority
    placed: Annotated[datetime, ArrowType(pa.timestamp("us", tz="UTC"))]
    total: float
    location: Point
    items: list[str]
    quantities: dict[str, int]
    path: list[Point]
    note: str | None = None


class BenchService(Protocol):
    def noop(self) -> None: ...
    def add(self, a: int, b: int) -> int: ...
    def rich(self, order: Order) -> Order: ...
    def small_batches(self, count: int) -> Stream[StreamState]: ...
    def bulk(self, batches: int) -> Stream[StreamState]: ...
    def echo(self) -> Stream[StreamState]: ...
    def bulk_echo(self) -> Stream[StreamState]: ...


@dataclass
class SmallState(ProducerState):
    remaining: int
    i: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.remaining <= 0:
            out.finish()
            return
        out.emit(small_batch(self.i))
        self.i += 1
        self.remaining -= 1


@dataclass
class BulkState(ProducerState):
    remaining: int

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.remaining <= 0:
            out.finish()
            return
        out.emit(bulk_batch())
        self.remaining -= 1


@dataclass
class EchoState(ExchangeState):
    turns: int = 0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.turns += 1
        out.emit(input.batch)


class BenchServiceImpl:
    def noop(self) -> None:
        return None

    def add(self, a: int, b: int) -> int:
        return a + b

    def rich(self, order: Order) -> Order:
        return order

    def small_batches(self, count: int) -> Stream[SmallState]:
        return Stream(output_schema=SMALL_SCHEMA, state=SmallState(count))

    def bulk(self, batches: int) -> Stream[BulkState]:
        return Stream(output_schema=BULK_SCHEMA, state=BulkState(batches))

    def echo(self) -> Stream[EchoState]:
        return Stream(output_schema=SMALL_SCHEMA, state=EchoState(), input_schema=SMALL_SCHEMA)

    def bulk_echo(self) -> Stream[EchoState]:
        return Stream(output_schema=BULK_SCHEMA, state=EchoState(), input_schema=BULK_SCHEMA)


# --- serving -------------------------------------------------------------------------------------


def serve(mode: str, address: str | None, bearer: str | None) -> None:
    from vgi_rpc import RpcServer

    server = RpcServer(BenchService, BenchServiceImpl())
    if mode == "stdio":
        from vgi_rpc.rpc import serve_stdio

        serve_stdio(server)
    elif mode == "unix":
        from vgi_rpc.rpc import serve_unix

        if address is None:
            raise SystemExit("serve unix needs a socket path")
        serve_unix(server, address, threaded=True, on_bound=lambda path: print(path, flush=True))
    elif mode == "http":
        from vgi_rpc.http import bearer_authenticate_static, serve_http
        from vgi_rpc.rpc import AuthContext

        authenticate = None
        if bearer is not None:
            authenticate = bearer_authenticate_static(tokens={bearer: AuthContext("bearer", True, "bench")})
        # prints PORT:<n>; vgi-rpc's defaults otherwise (zstd level 1), with a fixed token key as vgi-flight has
        serve_http(server, host="127.0.0.1", port=0, token_key=TOKEN_KEY, authenticate=authenticate)
    else:
        raise SystemExit(f"unknown serve mode {mode!r}")


# --- the client worker ---------------------------------------------------------------------------


@contextlib.contextmanager
def connection(transport: str, address: str | None, tls: str | None, bearer: str | None) -> Iterator[Any]:
    """A proxy for BenchService over ``transport`` (the unix and http servers are already running)."""
    if transport == "pipe":
        from vgi_rpc import serve_pipe

        with serve_pipe(BenchService, BenchServiceImpl()) as proxy:
            yield proxy
    elif transport == "subprocess":
        from vgi_rpc import connect

        with connect(BenchService, [sys.executable, "-m", "benchmarks.vgirpc_workloads", "serve", "stdio"]) as proxy:
            yield proxy
    elif transport == "unix":
        from vgi_rpc.rpc import unix_connect

        assert address is not None
        with unix_connect(BenchService, address) as proxy:
            yield proxy
    elif transport == "http":
        import httpx2
        from vgi_rpc.http import http_connect

        assert address is not None
        verify: ssl.SSLContext | bool = True
        if tls is not None:  # mTLS to the TLS front: verify it against the CA, present a client certificate
            verify = ssl.create_default_context(cafile=os.path.join(tls, "ca.pem"))
            verify.load_cert_chain(os.path.join(tls, "client-bench.pem"), os.path.join(tls, "client-bench.key"))
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        with (
            httpx2.Client(base_url=address, follow_redirects=True, verify=verify, headers=headers) as client,
            http_connect(BenchService, client=client) as proxy,
        ):
            yield proxy
    else:
        raise SystemExit(f"unknown transport {transport!r}")


class Worker:
    """One connection for every workload, and (but for HTTP) one more per thread for the threaded one.

    vgi-rpc's pipe, subprocess and unix proxies serialise calls over one transport and must not be
    shared across threads, so each thread of the threaded workload gets its own connection (opened
    once, before the first threaded round). The HTTP proxy is stateless over a thread-safe httpx
    client, so its threads share it, as vgi-flight's threads share one ``connect()``.
    """

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.svc = self.open()
        self.per_thread: list[Any] = []
        self.order = sample_order(Order, Point, Priority)

    def open(self) -> Any:
        a = self.args
        return self.stack.enter_context(connection(a.transport, a.address, a.tls, a.bearer))

    def for_thread(self, index: int) -> Any:
        if self.args.transport == "http":
            return self.svc
        while len(self.per_thread) <= index:
            self.per_thread.append(self.open())
        return self.per_thread[index]

    def samplers(self, sizes: Sizes) -> dict[str, Sampler]:
        return rpc_samplers(self.svc, AnnotatedBatch, self.order, sizes, self.for_thread)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"python": sys.version.split()[0], "vgi_rpc": version("vgi-rpc"), "pyarrow": pa.__version__}


def client(args: argparse.Namespace) -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but the JSON lines goes to stdout
    with contextlib.ExitStack() as stack:
        worker = Worker(args, stack)
        out.write(json.dumps(versions()) + "\n")
        out.flush()
        samplers: dict[str, Sampler] = {}
        sizes: Sizes | None = None
        for line in sys.stdin:
            command = json.loads(line)
            try:
                wanted = Sizes(**command["sizes"])
                if wanted != sizes:
                    sizes, samplers = wanted, worker.samplers(wanted)
                samples = samplers[command["workload"]](command["count"], command["warmup"])
                reply: dict[str, Any] = {"samples": samples}
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("mode", choices=("stdio", "unix", "http"))
    p_serve.add_argument("address", nargs="?")
    p_serve.add_argument("--bearer", help="http: require this bearer token")
    p_client = sub.add_parser("client")
    p_client.add_argument("--transport", choices=TRANSPORTS, required=True)
    p_client.add_argument("--address", help="unix socket path or http base URL")
    p_client.add_argument("--tls", help="http: directory with ca.pem and client-bench.pem/.key (mTLS)")
    p_client.add_argument("--bearer", help="http: send this bearer token")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.mode, args.address, args.bearer)
    else:
        client(args)


if __name__ == "__main__":
    main()
