"""Protocol introspection, implementation checks, TLS locations, keys and introspection over the wire."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Protocol

import pyarrow as pa
import pytest

from tests.conformance_service import Conformance, ConformanceImpl, Header
from tests.pki import DevCA
from tests.seed_services import DataService, DataServiceImpl, FetchState
from vgi_flight import (
    AnnotatedBatch,
    CallContext,
    Level,
    MethodKind,
    OutputCollector,
    ProducerState,
    RpcError,
    RpcServer,
    Stream,
    StreamState,
    connect,
    describe_protocol,
    introspect,
    serve_pipe,
)


class Small(Protocol):
    """A small service."""

    version: ClassVar[str] = "2"

    def ping(self, text: str = "hi") -> str:
        """Echo text back."""
        ...

    def feed(self) -> Stream[StreamState]: ...


class SmallImpl:
    def ping(self, text: str = "hi") -> str | bytes:  # a differing (union) return annotation is fine
        return text

    def feed(self) -> Stream[FetchState]:
        return Stream(output_schema=pa.schema([("value", pa.int64())]), state=FetchState(2))

    def helper(self) -> int:  # extra methods are fine
        return 1


def test_describe_protocol() -> None:
    desc = describe_protocol(Conformance)
    add = desc.methods["add"]
    assert add.kind is MethodKind.UNARY
    assert add.params_schema == pa.schema([pa.field("a", pa.int64(), False), pa.field("b", pa.int64(), False)])
    assert dict(add.defaults) == {"b": 10}
    assert add.result_schema == pa.schema([pa.field("result", pa.int64(), False)])
    header = desc.methods["count_with_header"]
    assert header.kind is MethodKind.STREAM
    assert header.has_header
    assert header.header_schema == Header.ARROW_SCHEMA
    assert not desc.methods["count"].has_header
    assert "protocol_version" not in desc.methods
    assert describe_protocol(Small).methods["ping"].doc == "Echo text back."


def test_implementation_checks() -> None:
    RpcServer(Small, SmallImpl(), token_key=b"k" * 32).shutdown()

    class Missing:
        def ping(self, text: str = "hi") -> str:
            return text

    with pytest.raises(TypeError, match=r"does not implement Small\.feed"):
        RpcServer(Small, Missing(), token_key=b"k" * 32)

    class WrongKind(SmallImpl):
        def ping(self, text: str = "hi") -> Stream[FetchState]:  # type: ignore[override]
            raise AssertionError

    with pytest.raises(TypeError, match=r"returns a Stream but Small\.ping is a unary method"):
        RpcServer(Small, WrongKind(), token_key=b"k" * 32)

    class LacksParam(SmallImpl):
        def ping(self) -> str:  # type: ignore[override]
            return ""

    with pytest.raises(TypeError, match="lacks parameter"):
        RpcServer(Small, LacksParam(), token_key=b"k" * 32)


def test_unsupported_parameter_type_is_named() -> None:
    class Bad(Protocol):
        def f(self, x: tuple[int, int]) -> int: ...

    with pytest.raises(TypeError, match=r"parameter 'x' of Bad\.f"):
        describe_protocol(Bad)


def test_random_key_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vgi_flight.server"):
        RpcServer(Small, SmallImpl()).shutdown()
    assert "random per-process key" in caplog.text


def test_introspect_over_the_wire() -> None:
    with RpcServer(DataService, DataServiceImpl(), token_key=b"k" * 32) as server:
        desc = introspect(server.location)
    assert desc.name == "DataService"
    assert desc.doc == "Service with a header-bearing producer stream."
    fetch = desc.methods["fetch_rows"]
    assert fetch.kind is MethodKind.STREAM
    assert fetch.header_schema is not None
    assert fetch.header_schema.names == ["total_rows", "description"]
    assert dict(desc.methods["search"].defaults) == {"page_size": 100}


def test_grpc_tls_location() -> None:
    ca = DevCA()
    server_pem = ca.issue("localhost", server=True)
    with RpcServer(
        Small,
        SmallImpl(),
        "grpc+tls://127.0.0.1:0",
        token_key=b"k" * 32,
        tls_certificates=[(server_pem.cert, server_pem.key)],
    ) as server:
        assert server.location.startswith("grpc+tls://127.0.0.1:")
        with connect(Small, server.location, tls_root_certs=ca.cert_pem) as small:
            assert small.ping(text="secure") == "secure"
            assert [b.batch.column(0)[0].as_py() for b in small.feed()] == [2, 1]


def test_mtls_principal_reaches_call_context() -> None:
    ca = DevCA()
    server_pem = ca.issue("localhost", server=True)
    client_pem = ca.issue("alice", server=False)
    with (
        RpcServer(
            Conformance,
            ConformanceImpl(),
            "grpc+tls://127.0.0.1:0",
            token_key=b"k" * 32,
            tls_certificates=[(server_pem.cert, server_pem.key)],
            verify_client=True,
            root_certificates=ca.cert_pem,
        ) as server,
        connect(
            Conformance,
            server.location,
            tls_root_certs=ca.cert_pem,
            cert_chain=client_pem.cert,
            private_key=client_pem.key,
        ) as proxy,
    ):
        assert proxy.whoami() == "alice"


@dataclass
class CtxState(StreamState):
    """A plain StreamState (process only): a producer because it declares no input schema."""

    seen: str = ""

    def process(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        if self.seen:
            out.finish()
            return
        self.seen = f"{ctx.method}:{len(ctx.request_id)}:{ctx.cancelled}"
        ctx.logger.info("turn")
        ctx.client_log(Level.DEBUG, "from ctx")
        out.emit_arrays([pa.array([self.seen])])


class CtxService(Protocol):
    def inspect(self) -> Stream[StreamState]: ...
    def bad_emit(self) -> Stream[StreamState]: ...


@dataclass
class BadEmitState(StreamState):
    def process(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        out.emit_pydict({"other": ["x"]})


class CtxImpl:
    def inspect(self) -> Stream[CtxState]:
        return Stream(output_schema=pa.schema([("seen", pa.utf8())]), state=CtxState())

    def bad_emit(self) -> Stream[BadEmitState]:
        return Stream(output_schema=pa.schema([("seen", pa.utf8())]), state=BadEmitState())


def test_call_context_and_plain_stream_state() -> None:
    logs = []
    with serve_pipe(CtxService, CtxImpl(), on_log=logs.append) as svc:
        rows = [b.batch.column("seen")[0].as_py() for b in svc.inspect()]
        assert rows == ["inspect:16:False"]
        assert [m.message for m in logs] == ["from ctx"]
        with pytest.raises(RpcError, match="does not fit the output schema") as info:
            list(svc.bad_emit())
        assert info.value.error_type == "ValueError"


@dataclass
class WrappedProducer(ProducerState):
    """A producer whose process() wraps produce(): the server must still call process()."""

    n: int = 0
    turns: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n >= 3:
            out.finish()
            return
        out.emit_arrays([pa.array([self.n]), pa.array([self.turns])])
        self.n += 1

    def process(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.turns += 1
        super().process(input, out, ctx)


class WrappedService(Protocol):
    def wrapped(self) -> Stream[StreamState]: ...


class WrappedImpl:
    def wrapped(self) -> Stream[WrappedProducer]:
        schema = pa.schema([("n", pa.int64()), ("turns", pa.int64())])
        return Stream(output_schema=schema, state=WrappedProducer())


def test_an_overridden_producer_process_runs_every_turn() -> None:
    with serve_pipe(WrappedService, WrappedImpl()) as svc:
        rows = [row for b in svc.wrapped() for row in b.batch.to_pylist()]
    assert rows == [{"n": 0, "turns": 1}, {"n": 1, "turns": 2}, {"n": 2, "turns": 3}]
