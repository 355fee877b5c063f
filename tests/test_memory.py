"""Memory stays flat over long streams, and a large batch costs no more than on raw pyarrow.flight.

A short version of ``python -m benchmarks.memory`` (which streams 10 GiB): real server process,
RSS read from /proc. Bounds are in MiB, never in time.
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.memory import big_batch_peak, round_peaks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

FLAT_MIB = 32


def test_long_producer_and_exchange_keep_rss_flat() -> None:
    # Six rounds, each a 256 MiB producer (1 MiB batches) and 64 exchange turns of 1 MiB each way, in
    # fresh processes after a 512 MiB warm-up. A leak raises every round's peak; an allocator keeping
    # freed memory raises the early ones and stops. So: no late round may set a new high.
    peaks = round_peaks(6, 256, 64)
    assert set(peaks) == {"client producer", "server producer", "client exchange", "server exchange"}
    for name, per_round in peaks.items():
        assert len(per_round) == 6
        assert max(per_round[3:]) < max(per_round[:3]) + FLAT_MIB, (name, per_round)


def test_a_large_batch_costs_what_it_costs_on_raw_flight() -> None:
    mib = 128
    vgi = {p.side: p.extra_peak_mib for p in big_batch_peak("vgi", mib)}
    raw = {p.side: p.extra_peak_mib for p in big_batch_peak("raw", mib)}
    # The server holds the batch it built once; the client's peak is what pyarrow.flight itself
    # needs to receive it (gRPC's buffer and the Arrow batch). vgi-flight adds no copy on either side.
    assert vgi["server"] < 1.25 * mib
    for side in ("client", "server"):
        assert vgi[side] < raw[side] + 0.25 * mib, (side, vgi, raw)
