"""services/compute.py through serve_pipe and through a real `vgi-flight serve` process."""

from __future__ import annotations

import ast
import inspect
import math
import random
import statistics
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import pyarrow as pa
import pytest

from services import compute
from services.compute import ComputeService, ComputeServiceImpl, TransformHeader
from tests.services.conftest import ServedCli
from vgi_flight import AnnotatedBatch, RpcError, StreamSession, connect, serve_pipe


def batch(values: Sequence[float | None], column: str = "value") -> AnnotatedBatch:
    return AnnotatedBatch.from_pydict({column: values}, schema=pa.schema([(column, pa.float64())]))


def same(got: Sequence[float | None], want: Sequence[float | None]) -> bool:
    """Element-wise equality within 1e-12, with None == None and NaN == NaN."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if g is None or w is None:
            if g is not w:
                return False
        elif math.isnan(w):
            if not math.isnan(g):
                return False
        elif g != pytest.approx(w, rel=1e-12, abs=1e-12):
            return False
    return True


def reference_transform(
    v: float | None, scale: float, offset: float, lower: float | None, upper: float | None, log1p: bool
) -> float | None:
    if v is None:
        return None
    x = v * scale + offset
    if not math.isnan(x):
        if lower is not None:
            x = max(x, lower)
        if upper is not None:
            x = min(x, upper)
    if log1p:
        x = math.nan if x < -1 or math.isnan(x) else (-math.inf if x == -1 else math.log1p(x))
    return x


def reference_quantile(values: list[float], q: float) -> float:
    data = sorted(values)
    position = (len(data) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


@pytest.fixture
def service() -> Iterator[ComputeService]:
    with serve_pipe(ComputeService, ComputeServiceImpl()) as proxy:
        yield proxy


@pytest.mark.parametrize(
    ("scale", "offset", "lower", "upper", "log1p"),
    [
        (1.0, 0.0, None, None, False),
        (2.0, 1.0, None, None, False),
        (0.5, -3.0, -2.0, 40.0, False),
        (1.0, 0.0, 0.0, None, True),
        (-1.5, 10.0, None, 5.0, True),
        (3.0, 0.0, -1.0, 1.0, True),
    ],
)
def test_transform_matches_reference(
    service: ComputeService, scale: float, offset: float, lower: float | None, upper: float | None, log1p: bool
) -> None:
    rng = random.Random(11)
    with service.transform(scale=scale, offset=offset, lower=lower, upper=upper, log1p=log1p) as session:
        for size in (0, 1, 17, 1000):
            values: list[float | None] = [rng.uniform(-50, 50) for _ in range(size)]
            if size > 2:
                values[1], values[2] = None, math.nan
            got = session.exchange(batch(values)).batch.column("value").to_pylist()
            want = [reference_transform(v, scale, offset, lower, upper, log1p) for v in values]
            assert same(got, want), (got[:5], want[:5])


def test_transform_header_column_and_errors(service: ComputeService) -> None:
    with service.transform(column="reading", scale=2.0, offset=1.0, lower=0.0, upper=10.0, log1p=True) as session:
        assert session.typed_header(TransformHeader).expression == "log1p(clip(reading * 2.0 + 1.0, 0.0, 10.0))"
        out = session.exchange(batch([-3.0, 1.0, 100.0], column="reading"))
        assert out.batch.schema.names == ["reading"]
        assert same(out.batch.column(0).to_pylist(), [0.0, math.log1p(3.0), math.log1p(10.0)])
        with pytest.raises(RpcError, match="expected \\['reading'\\]"):
            session.exchange(batch([1.0]))
    with service.transform() as plain:
        assert plain.typed_header(TransformHeader).expression == "value"
        # Integers are cast safely to float64 by the framework.
        assert plain.exchange(AnnotatedBatch.from_pydict({"value": [1, 2]})).batch.column(0).to_pylist() == [1.0, 2.0]
    with pytest.raises(RpcError, match="must not exceed"):
        service.transform(lower=2.0, upper=1.0)
    with pytest.raises(RpcError, match="must not be empty"):
        service.transform(column="")


def test_normalize_uses_running_min_max(service: ComputeService) -> None:
    rng = random.Random(5)
    low: float | None = None
    high: float | None = None
    with service.normalize() as session:
        for spread in (1.0, 10.0, 5.0, 100.0, 0.5):
            values: list[float | None] = [rng.uniform(-spread, spread) for _ in range(500)]
            values[7] = None
            present = [v for v in values if v is not None]
            low = min([*present, *([low] if low is not None else [])])
            high = max([*present, *([high] if high is not None else [])])
            out = session.exchange(batch(values))
            want = [None if v is None else (v - low) / (high - low) for v in values]
            assert same(out.batch.column("value").to_pylist(), want)
            assert out.custom_metadata is not None
            assert float(out.custom_metadata[b"min"]) == low
            assert float(out.custom_metadata[b"max"]) == high


def test_normalize_edge_cases(service: ComputeService) -> None:
    with service.normalize(column="x") as session:
        first = session.exchange(batch([None, None], column="x"))
        assert first.batch.to_pydict() == {"x": [None, None]}
        assert first.custom_metadata is None
        constant = session.exchange(batch([3.0, 3.0, math.nan], column="x"))
        assert same(constant.batch.column("x").to_pylist(), [0.0, 0.0, math.nan])
        widened = session.exchange(batch([1.0, 5.0], column="x"))
        assert widened.batch.column("x").to_pylist() == [0.0, 1.0]
        again = session.exchange(batch([3.0], column="x"))  # inside the range seen so far
        assert again.batch.column("x").to_pylist() == [0.5]
        with pytest.raises(RpcError, match="expected \\['x'\\]"):
            session.exchange(batch([1.0]))


def test_normalize_token_stays_the_same_size(service: ComputeService) -> None:
    with service.normalize() as session:
        session.exchange(batch([1.0]))
        size = len(cast(StreamSession, session).token)
        for i in range(10):
            session.exchange(batch([float(v) for v in range(i * 1000, (i + 1) * 1000)]))
        assert len(cast(StreamSession, session).token) == size


def test_quantiles_match_reference(service: ComputeService) -> None:
    rng = random.Random(2)
    levels = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
    for n in (1, 2, 5, 100, 1001):
        values = [rng.gauss(0, 10) for _ in range(n)]
        got = service.quantiles(values=values, q=levels)
        assert same(got, [reference_quantile(values, q) for q in levels])
        if n > 1:
            quartiles = statistics.quantiles(values, n=4, method="inclusive")
            assert same(service.quantiles(values=values, q=[0.25, 0.5, 0.75]), quartiles)
    assert service.quantiles(values=[3.0, math.nan, 1.0, 2.0], q=[0.5, 0.0]) == [2.0, 1.0]
    assert service.quantiles(values=[1.0], q=[]) == []


def test_quantiles_refuse_bad_input(service: ComputeService, monkeypatch: pytest.MonkeyPatch) -> None:
    for q in ([1.5], [-0.1], [0.5, math.nan]):
        with pytest.raises(RpcError, match="between 0 and 1"):
            service.quantiles(values=[1.0, 2.0], q=q)
    for values in ([], [math.nan]):
        with pytest.raises(RpcError, match="at least one value") as info:
            service.quantiles(values=values, q=[0.5])
        assert info.value.error_type == "ValueError"
    monkeypatch.setenv("VGI_COMPUTE_MAX_QUANTILES", "2")
    with serve_pipe(ComputeService, ComputeServiceImpl()) as limited, pytest.raises(RpcError, match="at most 2"):
        limited.quantiles(values=[1.0], q=[0.1, 0.2, 0.3])


def test_hot_paths_have_no_python_loops() -> None:
    hot: list[Callable[..., object]] = [
        compute.TransformState.apply,
        compute.TransformState.exchange,
        compute.NormalizeState.observe,
        compute.NormalizeState.scale,
        compute.NormalizeState.exchange,
        compute.ComputeServiceImpl.quantiles,
        compute._without_nan,
    ]
    loops = (ast.For, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    for function in hot:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        found = [type(node).__name__ for node in ast.walk(tree) if isinstance(node, loops)]
        assert found == [], f"{function.__qualname__} loops in Python: {found}"


def test_compute_over_vgi_flight_serve(serve_cli: Callable[..., ServedCli]) -> None:
    served = serve_cli("services.compute:ComputeServiceImpl", env={"VGI_COMPUTE_MAX_QUANTILES": "3"})
    values = [float(v) for v in range(-100, 101)]
    with connect(ComputeService, served.location) as service:
        with service.transform(scale=0.1, lower=-5.0, upper=5.0) as session:
            got = session.exchange(batch(values)).batch.column("value").to_pylist()
            assert same(got, [reference_transform(v, 0.1, 0.0, -5.0, 5.0, False) for v in values])
        with service.normalize() as session:
            session.exchange(batch([0.0, 10.0]))
            assert session.exchange(batch([5.0, 20.0])).batch.column("value").to_pylist() == [0.25, 1.0]
        assert service.quantiles(values=values, q=[0.0, 0.5, 1.0]) == [-100.0, 0.0, 100.0]
        with pytest.raises(RpcError, match="at most 3"):
            service.quantiles(values=values, q=[0.1, 0.2, 0.3, 0.4])
    assert served.terminate() == 0
