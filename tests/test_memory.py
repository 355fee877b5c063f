"""Memory stays flat over long streams, and a large batch costs no more than on raw pyarrow.flight.

A short version of ``python -m benchmarks.memory`` (which streams 10 GiB): real server process,
RSS read from /proc. Bounds are in MiB, never in time.
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.memory import MemoryService, big_batch_peak, exchange_growth, producer_growth, server_process
from vgi_flight import connect

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

FLAT_MIB = 32


def test_long_producer_and_exchange_keep_rss_flat() -> None:
    with server_process() as (location, _raw, pid), connect(MemoryService, location) as svc:
        sum(1 for _ in svc.fill(batches=64))  # warm up allocators and gRPC buffers
        rows = producer_growth(svc, pid, 1024) + exchange_growth(svc, pid, 256)
    for row in rows:
        # 1 GiB produced and 256 MiB exchanged each way in 1 MiB batches: holding on to even a few
        # batches, or a few KiB per message, shows up here.
        assert row.growth_mib < FLAT_MIB, row
        assert row.max_mib - row.baseline_mib < 2 * FLAT_MIB, row


def test_a_large_batch_costs_what_it_costs_on_raw_flight() -> None:
    mib = 128
    vgi = {p.side: p.extra_peak_mib for p in big_batch_peak("vgi", mib)}
    raw = {p.side: p.extra_peak_mib for p in big_batch_peak("raw", mib)}
    # The server holds the batch it built once; the client's peak is what pyarrow.flight itself
    # needs to receive it (gRPC's buffer and the Arrow batch). vgi-flight adds no copy on either side.
    assert vgi["server"] < 1.25 * mib
    for side in ("client", "server"):
        assert vgi[side] < raw[side] + 0.25 * mib, (side, vgi, raw)
