"""The benchmark's bulk rows rotate over a side's server processes, warming each one up once."""

from __future__ import annotations

from benchmarks.common import Sampler
from benchmarks.run import LocalSide


def test_bulk_rounds_rotate_over_server_processes() -> None:
    calls: list[tuple[int, str, int]] = []

    def sampler(process: int, workload: str) -> Sampler:
        def sample(count: int, warmup: int) -> list[float]:
            calls.append((process, workload, warmup))
            return [0.0] * count

        return sample

    side = LocalSide("side", [{w: sampler(i, w) for w in ("bulk", "noop")} for i in range(3)])
    for r in range(5):
        assert side.sample("bulk", 1, 2 if r == 0 else 0, {}) == [0.0]
    for r in range(2):
        side.sample("noop", 1, 3 if r == 0 else 0, {})
    assert calls == [
        (0, "bulk", 2),
        (1, "bulk", 2),  # each process is warmed up on its first transfer
        (2, "bulk", 2),
        (0, "bulk", 0),
        (1, "bulk", 0),
        (0, "noop", 3),  # other workloads stay on the first process
        (0, "noop", 0),
    ]
