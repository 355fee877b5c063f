"""The seed's examples, run over serve_pipe and over connect() to a server in another process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.seed_services import DataService, DataServiceImpl, JobHeader
from vgi_flight import AnnotatedBatch, RpcError, connect, serve_pipe


@pytest.fixture(params=["pipe", "process"])
def proxy(request: pytest.FixtureRequest, spawn_server: Callable[..., Any]) -> Iterator[DataService]:
    if request.param == "pipe":
        with serve_pipe(DataService, DataServiceImpl()) as p:
            yield p
    else:
        server = spawn_server("tests.seed_services:DataService", "tests.seed_services:DataServiceImpl")
        with connect(DataService, server.location) as p:
            yield p


def test_running_stats(proxy: DataService) -> None:
    with proxy.running_stats(label="x") as session:
        r1 = session.exchange(AnnotatedBatch.from_pydict({"value": [1.0, 2.0, 3.0]}))
        assert r1.batch.to_pydict() == {"count": [3], "mean": [2.0]}
        r2 = session.exchange(AnnotatedBatch.from_pydict({"value": [6.0]}))
        assert r2.batch.to_pydict() == {"count": [4], "mean": [3.0]}


def test_paginated_query_pages(proxy: DataService) -> None:
    session = proxy.search(query="SELECT *", page_size=10)
    seen = []
    for batch in session:
        seen.append(batch.batch.column("value").to_pylist())
        if len(seen) == 3:
            break
    assert seen == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]


def test_stateful_pipeline(proxy: DataService) -> None:
    with proxy.pipeline(threshold=100.0) as session:
        r1 = session.exchange(AnnotatedBatch.from_pydict({"value": [10.0, 20.0]}))
        assert r1.batch.to_pydict() == {"phase": ["collecting"], "buffer_size": [2], "total": [30.0]}
        r2 = session.exchange(AnnotatedBatch.from_pydict({"value": [80.0]}))
        assert r2.batch.to_pydict() == {"phase": ["processing"], "buffer_size": [3], "total": [110.0]}


def test_fetch_rows_with_header(proxy: DataService) -> None:
    session = proxy.fetch_rows(query="SELECT *")
    assert session.header == JobHeader(total_rows=100, description="Results for: SELECT *")
    assert session.typed_header(JobHeader).total_rows == 100
    values = [v for batch in session for v in batch.batch.column("value").to_pylist()]
    assert values == list(range(100, 0, -1))


def test_exchange_with_header(proxy: DataService) -> None:
    with proxy.transform_rows(factor=2.0) as session:
        assert session.header == JobHeader(total_rows=0, description="scale by 2.0")
        result = session.exchange(AnnotatedBatch.from_pydict({"value": [1.0]}))
        assert result.batch.to_pydict() == {"value": [2.0]}


def test_stream_without_header_has_none(proxy: DataService) -> None:
    session = proxy.search(query="q", page_size=1)
    assert session.header is None
    with pytest.raises(TypeError):
        session.typed_header(JobHeader)
    session.cancel()


def test_exchange_after_close_is_protocol_error(proxy: DataService) -> None:
    with proxy.running_stats() as session:
        session.exchange(AnnotatedBatch.from_pydict({"value": [1.0]}))
    with pytest.raises(RpcError, match="ProtocolError"):
        session.exchange(AnnotatedBatch.from_pydict({"value": [1.0]}))


def test_wrong_input_column_is_rpc_error(proxy: DataService) -> None:
    with contextlib.ExitStack() as stack:
        session = stack.enter_context(proxy.running_stats())
        with pytest.raises(RpcError):
            session.exchange(AnnotatedBatch.from_pydict({"wrong": [1.0]}))
