"""vgi-flight's benchmark workloads written with vgi-rpc; runs INSIDE the Python 3.13 venv that has vgi-rpc.

    python vgirpc_workloads.py serve stdio|unix PATH|http
    python vgirpc_workloads.py measure --transport pipe|subprocess|unix|http --workload NAME
        [--count N] [--warmup N] [--batches N] [--address PATH_OR_URL]

``serve`` runs a server (stdio: the worker that ``connect()`` spawns; unix: prints the socket path
once bound; http: vgi-rpc's ``serve_http`` prints ``PORT:<n>``). ``measure`` runs ONE round of ONE
workload over one transport: it connects, warms up, takes ``--count`` samples (seconds per call, as
``benchmarks.run.latency_samples`` does) and prints one JSON object. ``benchmarks.peers`` runs it
once per round and workload so that vgi-flight, raw pyarrow.flight and vgi-rpc rounds alternate.

This file must not import vgi_flight or benchmarks.services (they live in the other venv): the
batches below are the same as those of ``benchmarks/services.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from vgi_rpc import AnnotatedBatch, CallContext, ExchangeState, OutputCollector, ProducerState, Stream, StreamState

BULK_ROWS = 65_536
SMALL_SCHEMA = pa.schema([("i", pa.int64())])
BULK_SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64())])
WORKLOADS = ("noop", "add", "small", "exchange20", "turn", "bulk")
TRANSPORTS = ("pipe", "subprocess", "unix", "http")

_bulk_batch: pa.RecordBatch | None = None


def bulk_batch() -> pa.RecordBatch:
    """The 65,536-row int64+float64 batch (1 MiB), built once per process."""
    global _bulk_batch
    if _bulk_batch is None:
        ids = pa.array(range(BULK_ROWS), pa.int64())
        _bulk_batch = pa.record_batch([ids, pc.multiply(ids, 0.5)], schema=BULK_SCHEMA)
    return _bulk_batch


def small_batch(i: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array([i], pa.int64())], schema=SMALL_SCHEMA)


# --- the service ---------------------------------------------------------------------------------


class BenchService(Protocol):
    def noop(self) -> None: ...
    def add(self, a: int, b: int) -> int: ...
    def small_batches(self, count: int) -> Stream[StreamState]: ...
    def bulk(self, batches: int) -> Stream[StreamState]: ...
    def echo(self) -> Stream[StreamState]: ...


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

    def small_batches(self, count: int) -> Stream[SmallState]:
        return Stream(output_schema=SMALL_SCHEMA, state=SmallState(count))

    def bulk(self, batches: int) -> Stream[BulkState]:
        return Stream(output_schema=BULK_SCHEMA, state=BulkState(batches))

    def echo(self) -> Stream[EchoState]:
        return Stream(output_schema=SMALL_SCHEMA, state=EchoState(), input_schema=SMALL_SCHEMA)


# --- serving -------------------------------------------------------------------------------------


def serve(mode: str, address: str | None) -> None:
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
        from vgi_rpc.http import serve_http

        # prints PORT:<n>; vgi-rpc's defaults otherwise (zstd level 1), with a fixed token key as vgi-flight has
        serve_http(server, host="127.0.0.1", port=0, token_key=b"b" * 32)
    else:
        raise SystemExit(f"unknown serve mode {mode!r}")


@contextlib.contextmanager
def client(transport: str, address: str | None) -> Iterator[Any]:
    """A proxy for BenchService over ``transport`` (the unix and http servers are already running)."""
    if transport == "pipe":
        from vgi_rpc import serve_pipe

        with serve_pipe(BenchService, BenchServiceImpl()) as proxy:
            yield proxy
    elif transport == "subprocess":
        from vgi_rpc import connect

        with connect(BenchService, [sys.executable, os.path.abspath(__file__), "serve", "stdio"]) as proxy:
            yield proxy
    elif transport == "unix":
        from vgi_rpc.rpc import unix_connect

        assert address is not None
        with unix_connect(BenchService, address) as proxy:
            yield proxy
    elif transport == "http":
        from vgi_rpc.http import http_connect

        assert address is not None
        with http_connect(BenchService, address) as proxy:
            yield proxy
    else:
        raise SystemExit(f"unknown transport {transport!r}")


# --- measuring -----------------------------------------------------------------------------------


def samples_of(fn: Callable[[], object], count: int) -> list[float]:
    """Seconds per call of ``fn``, ``count`` times (the method of benchmarks.run.latency_samples)."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(svc: Any, workload: str, count: int, warmup: int, batches: int) -> list[float]:
    batch = AnnotatedBatch(small_batch(1))
    if workload == "noop":
        fn: Callable[[], object] = svc.noop
    elif workload == "add":

        def fn() -> object:
            return svc.add(a=2, b=40)

    elif workload == "small":

        def fn() -> object:
            return sum(1 for _ in svc.small_batches(count=50))

    elif workload == "exchange20":

        def fn() -> object:
            with svc.echo() as session:
                for _ in range(20):
                    session.exchange(batch)
            return None

    elif workload == "turn":  # one exchange inside a stream that stays open for the whole round
        with svc.echo() as session:
            samples_of(lambda: session.exchange(batch), warmup)
            return samples_of(lambda: session.exchange(batch), count)
    elif workload == "bulk":
        # warm up with a short transfer, then time whole transfers of ``batches`` batches
        for _ in svc.bulk(batches=min(batches, 16)):
            pass

        def fn() -> object:
            n = 0
            for _ in svc.bulk(batches=batches):
                n += 1
            if n != batches:
                raise RuntimeError(f"bulk delivered {n} batches, expected {batches}")
            return n

        return samples_of(fn, count)
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    samples_of(fn, warmup)
    return samples_of(fn, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("mode", choices=("stdio", "unix", "http"))
    p_serve.add_argument("address", nargs="?")
    p_measure = sub.add_parser("measure")
    p_measure.add_argument("--transport", choices=TRANSPORTS, required=True)
    p_measure.add_argument("--workload", choices=WORKLOADS, required=True)
    p_measure.add_argument("--count", type=int, default=100)
    p_measure.add_argument("--warmup", type=int, default=10)
    p_measure.add_argument("--batches", type=int, default=1024, help="bulk: batches per transfer")
    p_measure.add_argument("--address", help="unix socket path or http base URL")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.mode, args.address)
        return
    import vgi_rpc

    with client(args.transport, args.address) as svc:
        samples = measure(svc, args.workload, args.count, args.warmup, args.batches)
    nbytes = args.batches * bulk_batch().nbytes if args.workload == "bulk" else None
    version = getattr(vgi_rpc, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("vgi-rpc")
    result = {
        "transport": args.transport,
        "workload": args.workload,
        "samples": samples,
        "nbytes": nbytes,
        "python": sys.version.split()[0],
        "vgi_rpc": version,
        "pyarrow": pa.__version__,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
