"""services/stats.py through serve_pipe and through a real `vgi-flight serve` process."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import pyarrow as pa
import pytest

from services.stats import StatsHeader, StatsService, StatsServiceImpl, Summary
from tests.services.conftest import ServedCli
from vgi_flight import AnnotatedBatch, Level, Message, RpcError, StreamSession, connect, serve_pipe

VALUE = pa.schema([("value", pa.float64())])


def batch(values: Sequence[float | None]) -> AnnotatedBatch:
    return AnnotatedBatch.from_pydict({"value": values}, schema=VALUE)


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


@pytest.fixture
def stats() -> Iterator[StatsService]:
    with serve_pipe(StatsService, StatsServiceImpl()) as proxy:
        yield proxy


def check_running(stats: StatsService, batches: list[list[float]], ddof: int = 1) -> None:
    seen: list[float] = []
    with stats.running_stats(label="check", ddof=ddof) as session:
        for values in batches:
            seen.extend(values)
            row = session.exchange(batch(list(values))).batch.to_pylist()[0]
            assert row["count"] == len(seen)
            assert row["mean"] == approx(statistics.fmean(seen))
            assert row["min"] == min(seen)
            assert row["max"] == max(seen)
            variance = statistics.variance(seen) if ddof == 1 else statistics.pvariance(seen)
            assert row["variance"] == approx(variance)
            assert row["stddev"] == approx(math.sqrt(variance))


def test_running_stats_match_statistics_module(stats: StatsService) -> None:
    rng = random.Random(7)
    batches = [[rng.gauss(1e6, 50.0) for _ in range(rng.randint(1, 300))] for _ in range(12)]
    check_running(stats, batches)
    check_running(stats, batches, ddof=0)


def test_running_stats_header_and_undefined_statistics(stats: StatsService) -> None:
    with stats.running_stats(label="sensor-7") as session:
        header = session.typed_header(StatsHeader)
        assert header.label == "sensor-7"
        assert header.statistics == ["count", "mean", "min", "max", "variance", "stddev"]
        assert header.ddof == 1
        assert "count - 1" in header.description
        empty = session.exchange(batch([])).batch.to_pylist()[0]
        assert empty == {"count": 0, "mean": None, "min": None, "max": None, "variance": None, "stddev": None}
        one = session.exchange(batch([None, 4.0, math.nan])).batch.to_pylist()[0]
        assert one == {"count": 1, "mean": 4.0, "min": 4.0, "max": 4.0, "variance": None, "stddev": None}
        two = session.exchange(batch([6.0])).batch.to_pylist()[0]
        assert (two["count"], two["mean"], two["variance"]) == (2, 5.0, 2.0)


def test_running_stats_token_stays_the_same_size(stats: StatsService) -> None:
    with stats.running_stats() as session:
        session.exchange(batch([1.0]))
        first = len(cast(StreamSession, session).token)
        for i in range(20):
            session.exchange(batch([float(v) for v in range(i * 100, i * 100 + 100)]))
        assert len(cast(StreamSession, session).token) == first  # flat scalar state: the compact codec, no history


def test_running_stats_refuses_bad_input(stats: StatsService) -> None:
    with stats.running_stats() as session, pytest.raises(RpcError, match="expected \\['value'\\]"):
        session.exchange(AnnotatedBatch.from_pydict({"reading": [1.0]}))
    with pytest.raises(RpcError, match="ddof"):
        stats.running_stats(ddof=-1)
    with stats.running_stats() as session, pytest.raises(RpcError):
        session.exchange(AnnotatedBatch.from_pydict({"value": ["not a number"]}))


def test_pipeline_phases() -> None:
    logs: list[Message] = []
    with serve_pipe(StatsService, StatsServiceImpl(), on_log=logs.append) as stats, stats.pipeline() as session:
        r1 = session.exchange(batch([10.0, 20.0]))
        assert r1.batch.to_pydict() == {"phase": ["collecting"], "buffer_size": [2], "total": [30.0]}
        assert logs == []
        r2 = session.exchange(batch([80.0, None]))
        assert r2.batch.to_pydict() == {"phase": ["processing"], "buffer_size": [3], "total": [110.0]}
        assert [(m.level, m.message) for m in logs] == [(Level.INFO, "threshold reached: processing")]
        r3 = session.exchange(batch([-500.0]))
        assert r3.batch.to_pydict() == {"phase": ["processing"], "buffer_size": [4], "total": [-390.0]}
        assert len(logs) == 1


def test_pipeline_buffer_limit_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGI_STATS_MAX_BUFFER", "3")
    with serve_pipe(StatsService, StatsServiceImpl()) as stats, stats.pipeline(threshold=1e9) as session:
        assert session.exchange(batch([1.0, 2.0, 3.0])).batch.column("buffer_size")[0].as_py() == 3
        with pytest.raises(RpcError, match="more than 3"):
            session.exchange(batch([4.0]))
    monkeypatch.setenv("VGI_STATS_MAX_BUFFER", "zero")
    with pytest.raises(ValueError, match="VGI_STATS_MAX_BUFFER"):
        StatsServiceImpl()


def test_describe_column_matches_statistics_module(stats: StatsService) -> None:
    rng = random.Random(3)
    for n in (2, 3, 10, 101, 1000):
        values = [rng.uniform(-1e3, 1e3) for _ in range(n)]
        summary = stats.describe_column(values=values)
        assert summary.count == n
        assert summary.mean == approx(statistics.fmean(values))
        assert summary.minimum == min(values)
        assert summary.maximum == max(values)
        assert summary.median == approx(statistics.median(values))
        assert summary.variance == approx(statistics.variance(values))
        assert summary.stdev == approx(statistics.stdev(values))


def test_describe_column_edge_cases(stats: StatsService) -> None:
    assert stats.describe_column(values=[2.5, math.nan]) == Summary(1, 2.5, 2.5, 2.5, 2.5, None, None)
    with pytest.raises(RpcError, match="at least one value") as info:
        stats.describe_column(values=[])
    assert info.value.error_type == "ValueError"
    with pytest.raises(RpcError, match="at least one value"):
        stats.describe_column(values=[math.nan])


def test_stats_over_vgi_flight_serve(serve_cli: Callable[..., ServedCli]) -> None:
    served = serve_cli("services.stats:StatsServiceImpl")
    values = [float(v) for v in range(1, 101)]
    with connect(StatsService, served.location) as stats:
        with stats.running_stats(label="remote") as session:
            assert session.typed_header(StatsHeader).label == "remote"
            session.exchange(batch(values[:40]))
            row = session.exchange(batch(values[40:])).batch.to_pylist()[0]
        assert row["count"] == 100
        assert row["mean"] == approx(statistics.fmean(values))
        assert row["variance"] == approx(statistics.variance(values))
        summary = stats.describe_column(values=values)
        assert summary.median == statistics.median(values)
        with stats.pipeline(threshold=5.0) as pipeline:
            assert pipeline.exchange(batch([6.0])).batch.column("phase")[0].as_py() == "processing"
        with pytest.raises(RpcError):
            stats.describe_column(values=[])
    assert served.terminate() == 0
