"""Paginated read-only SQL over SQLite (Python's standard ``sqlite3``), as a resumable producer stream.

Serve with ``vgi-flight serve services.query:QueryServiceImpl --location grpc://0.0.0.0:8815``.

* ``query(sql, page_size)`` — a producer: one batch per page of the query's result. Its header carries
  the total row count (``COUNT(*)`` over the query) and the column names and Arrow types.
* ``tables()`` — the names of the database's tables and views.

**Read-only.** Only a single ``SELECT`` (or ``WITH ... SELECT`` / ``VALUES``) statement is accepted;
anything else is refused with ``ValueError`` before it runs. Behind that check, every connection
is opened read-only (``mode=ro`` for files), has ``PRAGMA query_only`` set and an authorizer that
denies every action except reading and calling functions, and a progress handler that interrupts
a statement running longer than the configured timeout.

**Pagination: LIMIT/OFFSET.** The stream state is the SQL text, the page size, the offset of the
next page and the total (all scalars, so tokens use the compact codec). Each page runs
``SELECT <columns> FROM (<sql>) LIMIT page_size OFFSET offset`` (with a line break before the closing
parenthesis, so a trailing ``--`` comment is harmless). Keyset pagination on ``rowid`` was
not chosen because arbitrary queries (joins, aggregates, views) have no rowid. The consequence:
**a query must have an ORDER BY that orders its rows totally** (e.g. ending in a unique key) for
pages resumed later or on another replica to continue exactly where the stream stopped; without
one, SQLite is free to return rows in another order (the service sends a ``WARN`` log when the SQL
has no ``ORDER BY``). Each page re-runs the query up to its offset, so a stream over ``n`` rows costs
``O(n² / page_size)`` row visits: fine for results of up to a few hundred thousand rows; for bigger
results, page by key in the SQL itself (``WHERE id > ? ORDER BY id``). The database is expected not
to change while streams are open.

**Schema.** When the stream opens, one pass over the query computes ``COUNT(*)`` and the set of
SQLite storage classes of every column over the whole result, so every page has the same schema:
INTEGER → int64; REAL, or INTEGER and REAL → float64; TEXT, or TEXT mixed with numbers → string;
BLOB → binary (BLOB mixed with anything → binary); a column that is NULL in every row (or a result
with no rows) → null. Values are cast to that type in SQL (``CAST(... AS REAL)`` and so on).
Duplicate column names are made unique the way SQLite names subquery columns (``a``, ``a:1``).

Configuration (environment):

* ``VGI_QUERY_DATABASE`` — path of an SQLite database file, opened read-only. Default: an in-memory
  demo database with a ``trips`` table (and a ``cities`` table to join it with), built
  deterministically at start-up.
* ``VGI_QUERY_DEMO_ROWS`` — rows of the demo ``trips`` table (default 5000).
* ``VGI_QUERY_MAX_PAGE_SIZE`` — largest page a caller may ask for (default 100000).
* ``VGI_QUERY_TIMEOUT_SECONDS`` — longest one statement may run (default 30).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from vgi_flight import (
    ArrowSerializableDataclass,
    CallContext,
    Level,
    OutputCollector,
    ProducerState,
    Stream,
    StreamState,
)

DEMO_PREFIX = ":demo:"
"""Database keys starting with this name the in-memory demo database; the rest is its row count."""

_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_ORDER_BY = re.compile(r"\border\s+by\b", re.I)
_READ_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES"})

_DEMO_SCRIPT = """
CREATE TABLE cities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    country TEXT NOT NULL
);
INSERT INTO cities (id, name, country) VALUES
    (1, 'Amsterdam', 'NL'), (2, 'Berlin', 'DE'), (3, 'Copenhagen', 'DK'),
    (4, 'Dublin', 'IE'), (5, 'Edinburgh', 'GB');
CREATE TABLE trips (
    id INTEGER PRIMARY KEY,
    city_id INTEGER NOT NULL REFERENCES cities (id),
    started_at TEXT NOT NULL,
    distance_km REAL NOT NULL,
    duration_min INTEGER NOT NULL,
    passengers INTEGER NOT NULL,
    payment TEXT NOT NULL,
    fare REAL NOT NULL,
    tip REAL
);
WITH RECURSIVE seq (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :rows)
INSERT INTO trips (id, city_id, started_at, distance_km, duration_min, passengers, payment, fare, tip)
SELECT
    i,
    1 + (i * 7) % 5,
    strftime('%Y-%m-%dT%H:%M:%S', '2024-01-01', '+' || ((i * 7919) % 525600) || ' minutes'),
    round(0.5 + ((i * 104729) % 2500) / 100.0, 2),
    3 + (i * 131) % 57,
    1 + (i * 13) % 4,
    CASE i % 3 WHEN 0 THEN 'cash' WHEN 1 THEN 'card' ELSE 'app' END,
    0.0,
    NULL
FROM seq;
UPDATE trips SET fare = round(2.5 + distance_km * 1.8 + duration_min * 0.3, 2);
UPDATE trips SET tip = round(fare * ((id % 4) * 0.05), 2) WHERE payment <> 'cash';
CREATE INDEX trips_city ON trips (city_id);
"""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _env_number(name: str, default: float, *, integer: bool) -> float:
    raw = _env(name, "")
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {'whole ' if integer else ''}number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def build_demo_database(rows: int) -> bytes:
    """Build the demo database and return it serialized (the SQLite file format).

    Args:
        rows: Rows of the ``trips`` table.

    Returns:
        The database image, loadable with ``sqlite3.Connection.deserialize``.
    """
    conn = sqlite3.connect(":memory:")
    try:
        for statement in _DEMO_SCRIPT.split(";"):
            if statement.strip():
                conn.execute(statement, {"rows": rows} if ":rows" in statement else {})
        conn.commit()
        return conn.serialize()
    finally:
        conn.close()


class Database:
    """One SQLite database, read through one read-only connection per thread.

    Attributes:
        key: The database's key: a resolved file path, or ``:demo:<rows>``.
    """

    def __init__(self, key: str) -> None:
        """Open (and check) the database a key names.

        Args:
            key: A file path, or :data:`DEMO_PREFIX` followed by the demo row count.

        Raises:
            ValueError: The file does not exist or is not an SQLite database.
        """
        self.key = key
        self._local = threading.local()
        self._image: bytes | None = None
        self._uri: str | None = None
        if key.startswith(DEMO_PREFIX):
            self._image = build_demo_database(int(key[len(DEMO_PREFIX) :]))
        else:
            path = Path(key)
            if not path.is_file():
                raise ValueError(f"SQLite database {key} does not exist")
            self._uri = path.as_uri() + "?mode=ro"
        try:
            self.connection().execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise ValueError(f"{key} is not a readable SQLite database: {exc}") from None

    def _open(self) -> sqlite3.Connection:
        if self._image is not None:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            conn.deserialize(self._image)
        else:
            assert self._uri is not None
            conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorize)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def run(self, sql: str, params: tuple[Any, ...] = (), *, timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement and return its column names and rows.

        Args:
            sql: The statement.
            params: Its parameters.
            timeout: Seconds after which the statement is interrupted.

        Raises:
            ValueError: The statement is not allowed or fails.
            TimeoutError: The statement ran longer than ``timeout``.
        """
        conn = self.connection()
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
            names = [d[0] for d in cursor.description or ()]
        except sqlite3.Error as exc:
            message = str(exc)
            if "interrupted" in message:
                raise TimeoutError(f"query ran longer than {timeout:g} s and was interrupted") from None
            if "not authorized" in message:
                raise ValueError(f"only read-only SELECT statements are allowed ({message})") from None
            raise ValueError(f"query failed: {message}") from None
        finally:
            conn.set_progress_handler(None, 0)
        return names, rows


_DATABASES: dict[str, Database] = {}
_DATABASES_LOCK = threading.Lock()


def database(key: str) -> Database:
    """The process-wide :class:`Database` for ``key``, opened on first use.

    Stream states carry only the key, so a replica that resumes a stream finds (or opens) the same
    database by it.
    """
    with _DATABASES_LOCK:
        db = _DATABASES.get(key)
        if db is None:
            db = _DATABASES[key] = Database(key)
        return db


def check_select(sql: str) -> str:
    """Return ``sql`` without trailing semicolons, or refuse it unless it is a read statement.

    Args:
        sql: The caller's SQL.

    Raises:
        ValueError: The statement is empty or is not a ``SELECT`` / ``WITH`` / ``VALUES``.
    """
    body = sql.strip().rstrip(";").strip()
    rest = _LEADING_COMMENTS.sub("", body, count=1)
    word = _FIRST_WORD.match(rest)
    if word is None:
        raise ValueError("empty SQL: expected a SELECT statement")
    keyword = word.group(0).upper()
    if keyword not in _READ_KEYWORDS:
        raise ValueError(f"only read-only SELECT statements are allowed, not {keyword}")
    return body


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _arrow_type(storage_classes: set[str]) -> pa.DataType:
    kinds = storage_classes - {"null", ""}
    if not kinds:
        return pa.null()
    if "blob" in kinds:
        return pa.binary()
    if "text" in kinds:
        return pa.string()
    if kinds == {"integer"}:
        return pa.int64()
    return pa.float64()


def _select_expression(field: pa.Field) -> str:
    column = quote_identifier(field.name)
    if pa.types.is_null(field.type):
        return f"NULL AS {column}"
    if pa.types.is_floating(field.type):
        return f"CAST({column} AS REAL) AS {column}"
    if pa.types.is_string(field.type):
        return f"CAST({column} AS TEXT) AS {column}"
    if pa.types.is_binary(field.type):
        return f"CAST({column} AS BLOB) AS {column}"
    return column


def page_sql(sql: str, schema: pa.Schema) -> str:
    """The statement that reads one page of ``sql`` with values cast to ``schema``'s types.

    Args:
        sql: The (checked) query.
        schema: The stream's output schema.
    """
    columns = ", ".join(_select_expression(f) for f in schema)
    return f"SELECT {columns} FROM ({sql}\n) LIMIT ? OFFSET ?"


@dataclass(frozen=True)
class QueryHeader(ArrowSerializableDataclass):
    """Sent once before a query's pages.

    Attributes:
        total_rows: ``COUNT(*)`` over the query when the stream opened.
        columns: Column names, in order.
        types: Arrow type of each column (``int64``, ``double``, ``string``, ``binary`` or ``null``).
        page_size: Rows per page (the last page may hold fewer).
    """

    total_rows: int
    columns: list[str]
    types: list[str]
    page_size: int


class QueryService(Protocol):
    """Read-only SQL over an SQLite database, paginated."""

    def query(self, sql: str, page_size: int = 1000) -> Stream[StreamState, QueryHeader]:
        """Producer: run a read-only SELECT and stream its rows, one batch per page.

        Args:
            sql: One SELECT statement. Give it an ORDER BY that orders rows totally so that a
                resumed stream continues exactly where it stopped.
            page_size: Rows per batch.
        """
        ...

    def tables(self) -> list[str]:
        """The names of the database's tables and views, sorted."""
        ...


@dataclass
class QueryState(ProducerState):
    """Where a query stream is: every field a scalar, so tokens stay compact.

    Attributes:
        database: Key of the database (see :func:`database`).
        sql: The checked query.
        page_size: Rows per page.
        total: Rows the query had when the stream opened.
        timeout: Seconds one page's statement may run.
        offset: Rows already sent; the next page starts here.
    """

    database: str
    sql: str
    page_size: int
    total: int
    timeout: float
    offset: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        """Emit the next page, or finish when every row has been sent."""
        if self.offset >= self.total:
            out.finish()
            return
        schema = out.output_schema
        _names, rows = database(self.database).run(
            page_sql(self.sql, schema), (self.page_size, self.offset), timeout=self.timeout
        )
        if not rows:  # the database shrank since the stream opened
            out.finish()
            return
        columns = list(zip(*rows, strict=True))
        try:
            arrays = [pa.array(values, type=f.type) for values, f in zip(columns, schema, strict=True)]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise ValueError(
                f"a column changed type after the stream opened (was the database modified?): {exc}"
            ) from None
        out.emit(pa.RecordBatch.from_arrays(arrays, schema=schema))
        self.offset += len(rows)


class QueryServiceImpl:
    """The query service; configured by ``VGI_QUERY_*`` environment variables (see the module docstring)."""

    def __init__(self) -> None:
        path = _env("VGI_QUERY_DATABASE", "")
        demo_rows = int(_env_number("VGI_QUERY_DEMO_ROWS", 5000, integer=True))
        self.database_key = str(Path(path).resolve()) if path else f"{DEMO_PREFIX}{demo_rows}"
        self.max_page_size = int(_env_number("VGI_QUERY_MAX_PAGE_SIZE", 100_000, integer=True))
        self.timeout = _env_number("VGI_QUERY_TIMEOUT_SECONDS", 30.0, integer=False)
        self.database = database(self.database_key)

    def query(self, sql: str, page_size: int = 1000, *, ctx: CallContext) -> Stream[QueryState, QueryHeader]:
        """Check and profile the query, then open its stream.

        Raises:
            ValueError: The SQL is not a single read-only SELECT or fails, or ``page_size`` is out of
                range.
        """
        if not 1 <= page_size <= self.max_page_size:
            raise ValueError(f"page_size must be between 1 and {self.max_page_size}, got {page_size}")
        body = check_select(sql)
        names, _ = self.database.run(f"SELECT * FROM ({body}\n) LIMIT 0", timeout=self.timeout)
        profile = ", ".join(["COUNT(*)", *(f"group_concat(DISTINCT typeof({quote_identifier(n)}))" for n in names)])
        _, rows = self.database.run(f"SELECT {profile} FROM ({body}\n)", timeout=self.timeout)
        total, *classes = rows[0]
        schema = pa.schema(
            [pa.field(n, _arrow_type(set((c or "").split(",")))) for n, c in zip(names, classes, strict=True)]
        )
        if not _ORDER_BY.search(body):
            ctx.client_log(
                Level.WARN,
                "the query has no ORDER BY: a stream resumed later or on another replica may skip or repeat rows",
            )
        header = QueryHeader(
            total_rows=int(total), columns=names, types=[str(f.type) for f in schema], page_size=page_size
        )
        state = QueryState(
            database=self.database_key, sql=body, page_size=page_size, total=int(total), timeout=self.timeout
        )
        return Stream(output_schema=schema, state=state, header=header)

    def tables(self) -> list[str]:
        """List tables and views."""
        _, rows = self.database.run(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
            timeout=self.timeout,
        )
        return [str(row[0]) for row in rows]
