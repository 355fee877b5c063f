"""services/query.py: paginated SQLite queries through serve_pipe, two replicas and `vgi-flight serve`."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from services.query import QueryHeader, QueryService, QueryServiceImpl, build_demo_database
from tests.services.conftest import ServedCli
from vgi_flight import Level, Message, RpcError, RpcServer, StreamSession, connect, serve_pipe

ORDERED = (
    "SELECT t.id, c.name AS city, t.started_at, t.distance_km, t.duration_min, t.payment, t.fare, t.tip "
    "FROM trips t JOIN cities c ON c.id = t.city_id ORDER BY t.fare DESC, t.id"
)
REFUSED = [
    "DELETE FROM trips",
    "UPDATE trips SET fare = 0",
    "INSERT INTO cities VALUES (9, 'x', 'y')",
    "DROP TABLE trips",
    "CREATE TABLE t (x)",
    "PRAGMA writable_schema = ON",
    "ATTACH DATABASE ':memory:' AS other",
    "  -- a comment first\n  delete from trips",
    "SELECT 1; DROP TABLE trips",
    "WITH doomed AS (SELECT id FROM trips) DELETE FROM trips WHERE id IN doomed",
    "SELECT * FROM pragma_table_info('trips')",
    "",
]


@pytest.fixture(autouse=True)
def _demo_database(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VGI_QUERY_DATABASE", "VGI_QUERY_DEMO_ROWS", "VGI_QUERY_MAX_PAGE_SIZE", "VGI_QUERY_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def query() -> Iterator[QueryService]:
    with serve_pipe(QueryService, QueryServiceImpl()) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def reference() -> sqlite3.Connection:
    """The demo database, opened directly with sqlite3 (what the service must return)."""
    conn = sqlite3.connect(":memory:")
    conn.deserialize(build_demo_database(5000))
    return conn


def expected(reference: sqlite3.Connection, sql: str) -> list[dict[str, Any]]:
    cursor = reference.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def make_database(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT, value REAL, raw BLOB)")
    conn.executemany(
        "INSERT INTO readings VALUES (?, ?, ?, ?)",
        [(i, f"s{i % 7}", i * 0.5, bytes([i % 256])) for i in range(1, rows + 1)],
    )
    conn.execute("CREATE VIEW loud AS SELECT * FROM readings WHERE value > 100")
    conn.commit()
    conn.close()


def test_tables(query: QueryService) -> None:
    assert query.tables() == ["cities", "trips"]


@pytest.mark.parametrize("page_size", [1, 777, 1000, 5000, 100_000])
def test_pages_concatenate_to_the_query_result(
    query: QueryService, reference: sqlite3.Connection, page_size: int
) -> None:
    rows = expected(reference, ORDERED)
    assert len(rows) == 5000
    if page_size == 1:  # every row its own page: keep this case short
        sql = ORDERED.replace("ORDER BY", "WHERE t.id <= 25 ORDER BY")
        rows = expected(reference, sql)
    else:
        sql = ORDERED
    session = query.query(sql=sql, page_size=page_size)
    header = session.typed_header(QueryHeader)
    assert header.total_rows == len(rows)
    assert header.columns == ["id", "city", "started_at", "distance_km", "duration_min", "payment", "fare", "tip"]
    assert header.types == ["int64", "string", "string", "double", "int64", "string", "double", "double"]
    assert header.page_size == page_size
    batches = [b.batch for b in session]
    assert [b.num_rows for b in batches[:-1]] == [page_size] * (len(batches) - 1)
    assert 0 < batches[-1].num_rows <= page_size
    assert len({b.schema for b in batches}) == 1
    assert pa.Table.from_batches(batches).to_pylist() == rows


def test_header_counts_filtered_and_aggregated_queries(query: QueryService, reference: sqlite3.Connection) -> None:
    sql = (
        "SELECT c.name, count(*) AS trips, round(avg(t.fare), 2) AS avg_fare, sum(t.tip) AS tips "
        "FROM trips t JOIN cities c ON c.id = t.city_id WHERE t.payment <> 'cash' GROUP BY c.name ORDER BY c.name"
    )
    session = query.query(sql=sql, page_size=2)
    header = session.typed_header(QueryHeader)
    assert header.total_rows == 5
    assert header.types == ["string", "int64", "double", "double"]
    assert [len(b.batch) for b in session] == [2, 2, 1]
    count = query.query(sql="SELECT id FROM trips WHERE payment = 'cash' ORDER BY id")
    assert (
        count.typed_header(QueryHeader).total_rows
        == reference.execute("SELECT count(*) FROM trips WHERE payment = 'cash'").fetchone()[0]
    )
    count.cancel()


def test_schema_covers_mixed_null_and_empty_columns(query: QueryService) -> None:
    session = query.query(
        sql="SELECT 1 AS a, NULL AS b, 2.5 AS c, x'00ff' AS d, NULL AS e "
        "UNION ALL SELECT 2.5, 'text', 1, 3, NULL ORDER BY 1"
    )
    assert session.typed_header(QueryHeader).types == ["double", "string", "double", "binary", "null"]
    assert [b.batch.to_pylist() for b in session] == [
        [
            {"a": 1.0, "b": None, "c": 2.5, "d": b"\x00\xff", "e": None},
            {"a": 2.5, "b": "text", "c": 1.0, "d": b"3", "e": None},
        ]
    ]
    empty = query.query(sql="SELECT id, fare FROM trips WHERE id < 0 ORDER BY id")
    assert empty.typed_header(QueryHeader).total_rows == 0
    assert list(empty) == []
    commented = query.query(sql="-- the first two trips\nSELECT id FROM trips /* by id */ ORDER BY id LIMIT 2 -- done;")
    assert [b.batch.to_pylist() for b in commented] == [[{"id": 1}, {"id": 2}]]
    duplicate = query.query(sql="SELECT id, id FROM trips WHERE id <= 2 ORDER BY id")
    assert duplicate.typed_header(QueryHeader).columns == ["id", "id:1"]
    assert [b.batch.to_pylist() for b in duplicate] == [[{"id": 1, "id:1": 1}, {"id": 2, "id:1": 2}]]


@pytest.mark.parametrize("sql", REFUSED)
def test_only_select_statements_run(query: QueryService, sql: str) -> None:
    with pytest.raises(RpcError) as info:
        query.query(sql=sql)
    assert info.value.error_type == "ValueError"
    assert "SELECT" in info.value.error_message or "query failed" in info.value.error_message
    assert query.query(sql="SELECT count(*) AS n FROM trips").typed_header(QueryHeader).total_rows == 1
    assert [b.batch.to_pylist() for b in query.query(sql="SELECT count(*) AS n FROM trips")] == [[{"n": 5000}]]
    assert query.tables() == ["cities", "trips"]


def test_bad_queries_and_page_sizes(query: QueryService) -> None:
    with pytest.raises(RpcError, match="no such table: nope"):
        query.query(sql="SELECT * FROM nope")
    with pytest.raises(RpcError, match="no such column"):
        query.query(sql="SELECT colour FROM trips ORDER BY id")
    with pytest.raises(RpcError, match="page_size"):
        query.query(sql="SELECT 1", page_size=0)
    with pytest.raises(RpcError, match="page_size"):
        query.query(sql="SELECT 1", page_size=100_001)


def test_missing_order_by_is_warned() -> None:
    logs: list[Message] = []
    with serve_pipe(QueryService, QueryServiceImpl(), on_log=logs.append) as query:
        query.query(sql="SELECT id FROM trips ORDER BY id").cancel()
        assert logs == []
        query.query(sql="SELECT id FROM trips").cancel()
        assert [m.level for m in logs] == [Level.WARN]
        assert "ORDER BY" in logs[0].message


def test_statement_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGI_QUERY_TIMEOUT_SECONDS", "0.2")
    with serve_pipe(QueryService, QueryServiceImpl()) as query, pytest.raises(RpcError) as info:
        query.query(sql="WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r")
    assert info.value.error_type == "TimeoutError"


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VGI_QUERY_DEMO_ROWS", "123")
    monkeypatch.setenv("VGI_QUERY_MAX_PAGE_SIZE", "50")
    with serve_pipe(QueryService, QueryServiceImpl()) as query:
        session = query.query(sql="SELECT id FROM trips ORDER BY id", page_size=50)
        assert session.typed_header(QueryHeader).total_rows == 123
        assert [len(b.batch) for b in session] == [50, 50, 23]
        with pytest.raises(RpcError, match="between 1 and 50"):
            query.query(sql="SELECT 1", page_size=51)
    monkeypatch.setenv("VGI_QUERY_DATABASE", str(tmp_path / "absent.sqlite"))
    with pytest.raises(ValueError, match="does not exist"):
        QueryServiceImpl()
    monkeypatch.setenv("VGI_QUERY_DATABASE", "")
    monkeypatch.setenv("VGI_QUERY_TIMEOUT_SECONDS", "-1")
    with pytest.raises(ValueError, match="VGI_QUERY_TIMEOUT_SECONDS"):
        QueryServiceImpl()


def test_database_file_is_opened_read_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite"
    make_database(path, 300)
    before = path.read_bytes()
    monkeypatch.setenv("VGI_QUERY_DATABASE", str(path))
    with serve_pipe(QueryService, QueryServiceImpl()) as query:
        assert query.tables() == ["loud", "readings"]
        session = query.query(sql="SELECT * FROM loud ORDER BY id DESC", page_size=64)
        header = session.typed_header(QueryHeader)
        assert (header.total_rows, header.types) == (100, ["int64", "string", "double", "binary"])
        rows = [r for b in session for r in b.batch.to_pylist()]
        assert [r["id"] for r in rows] == list(range(300, 200, -1))
        assert rows[0] == {"id": 300, "sensor": "s6", "value": 150.0, "raw": bytes([300 % 256])}
        for sql in ("DELETE FROM readings", "SELECT 1; DELETE FROM readings", "VACUUM"):
            with pytest.raises(RpcError):
                query.query(sql=sql)
    assert path.read_bytes() == before


def read_raw_producer(location: str, token: bytes) -> tuple[list[dict[str, Any]], list[pa.RecordBatch]]:
    """DoGet a token with plain pyarrow.flight: the messages' metadata and the data batches."""
    client = flight.FlightClient(location)
    try:
        reader = client.do_get(flight.Ticket(token))
        metas: list[dict[str, Any]] = []
        data: list[pa.RecordBatch] = []
        parts: list[pa.RecordBatch] = []
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            meta = json.loads(chunk.app_metadata.to_pybytes())
            metas.append(meta)
            if meta["kind"] == "data_part":
                parts.append(chunk.data)
            elif meta["kind"] == "data":
                data.append(pa.Table.from_batches([*parts, chunk.data]).combine_chunks().to_batches()[0])
                parts = []
        return metas, data
    finally:
        client.close()


def test_resume_a_query_on_another_replica(reference: sqlite3.Connection) -> None:
    key = os.urandom(32)
    rows = expected(reference, ORDERED)
    with (
        RpcServer(QueryService, QueryServiceImpl(), "grpc://127.0.0.1:0", token_key=key) as first,
        RpcServer(QueryService, QueryServiceImpl(), "grpc://127.0.0.1:0", token_key=key) as second,
    ):
        with connect(QueryService, first.location) as query:
            session = query.query(sql=ORDERED, page_size=700)
            assert session.typed_header(QueryHeader).total_rows == 5000
            seen: list[dict[str, Any]] = []
            for b in session:
                seen.extend(b.batch.to_pylist())
                if len(seen) == 3 * 700:
                    break
            token = cast(StreamSession, session).token
        assert seen == rows[:2100]

        metas, data = read_raw_producer(second.location, token)
        assert metas[0]["kind"] == "ready"
        assert metas[0]["seq"] == 3
        assert "header" not in metas[0]  # a resumed stream sends no header
        assert [m["seq"] for m in metas if m["kind"] == "data"] == [4, 5, 6, 7, 8]
        assert [len(b) for b in data] == [700, 700, 700, 700, 100]
        assert pa.Table.from_batches(data).to_pylist() == rows[2100:]

        # The same token resumes on the first replica too, and a tampered one is refused.
        _, again = read_raw_producer(first.location, token)
        assert pa.Table.from_batches(again).to_pylist() == rows[2100:]
        tampered = token[:-1] + bytes([token[-1] ^ 1])
        with pytest.raises(flight.FlightError):
            read_raw_producer(second.location, tampered)


def test_query_over_vgi_flight_serve(serve_cli: Callable[..., ServedCli], tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite"
    make_database(path, 2500)
    served = serve_cli("services.query:QueryServiceImpl", env={"VGI_QUERY_DATABASE": str(path)})
    with connect(QueryService, served.location) as query:
        assert query.tables() == ["loud", "readings"]
        session = query.query(sql="SELECT id, sensor, value FROM readings ORDER BY sensor, id", page_size=1000)
        header = session.typed_header(QueryHeader)
        assert (header.total_rows, header.columns) == (2500, ["id", "sensor", "value"])
        batches = [b.batch for b in session]
        assert [len(b) for b in batches] == [1000, 1000, 500]
        conn = sqlite3.connect(path)
        want = conn.execute("SELECT id, sensor, value FROM readings ORDER BY sensor, id").fetchall()
        conn.close()
        got = [(r["id"], r["sensor"], r["value"]) for b in batches for r in b.to_pylist()]
        assert got == want
        with pytest.raises(RpcError, match="only read-only SELECT"):
            query.query(sql="DROP TABLE readings")
    assert served.terminate() == 0


def test_concurrent_streams(reference: sqlite3.Connection) -> None:
    queries = [f"SELECT id, fare FROM trips WHERE city_id = {c} ORDER BY fare, id" for c in range(1, 6)] * 3
    with (
        RpcServer(QueryService, QueryServiceImpl(), "grpc://127.0.0.1:0", token_key=os.urandom(32)) as server,
        connect(QueryService, server.location) as query,
        ThreadPoolExecutor(max_workers=len(queries)) as pool,
    ):

        def run(sql: str) -> list[dict[str, Any]]:
            return [row for b in query.query(sql=sql, page_size=97) for row in b.batch.to_pylist()]

        results = list(pool.map(run, queries))
    assert results == [expected(reference, sql) for sql in queries]
