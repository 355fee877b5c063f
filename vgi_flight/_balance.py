"""Client-side balancing over several locations (replicas), with passive health-based ejection.

A location whose call fails at the transport level is ejected for a cool-down period; calls go to
the other locations round robin meanwhile. When every location is ejected, the one ejected longest
ago is tried anyway: a pool never refuses to try.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import pyarrow.flight as flight


class LocationPool:
    """Flight clients for a set of locations, created on first use."""

    def __init__(
        self, locations: Sequence[str], make_client: Callable[[str], flight.FlightClient], eject_seconds: float = 5.0
    ) -> None:
        """Create a pool.

        Args:
            locations: The replicas to balance over (at least one).
            make_client: Opens a Flight client for a location.
            eject_seconds: How long a failed location is avoided.
        """
        if not locations:
            raise ValueError("connect() needs at least one location")
        self.locations = list(dict.fromkeys(locations))
        self._make_client = make_client
        self._eject_seconds = eject_seconds
        self._clients: dict[str, flight.FlightClient] = {}
        self._ejected_until: dict[str, float] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._preferred: str | None = None
        self._owner = True

    def client(self, location: str) -> flight.FlightClient:
        """The Flight client for ``location`` (also for locations outside the pool, e.g. advertised ones)."""
        with self._lock:
            client = self._clients.get(location)
            if client is None:
                client = self._clients[location] = self._make_client(location)
            return client

    def pick(self, avoid: Iterable[str] = (), among: Sequence[str] | None = None) -> str:
        """Choose a location round robin, skipping ejected ones and ``avoid`` while others remain."""
        candidates = list(among) if among else self.locations
        avoid = set(avoid)
        now = time.monotonic()
        with self._lock:
            preferred = self._preferred
            if preferred and not among and preferred not in avoid and self._ejected_until.get(preferred, 0.0) <= now:
                return preferred
            for offset in range(len(candidates)):
                location = candidates[(self._next + offset) % len(candidates)]
                if location not in avoid and self._ejected_until.get(location, 0.0) <= now:
                    self._next = (self._next + offset + 1) % len(candidates)
                    return location
            # Everything is ejected or avoided: try the location that has been out the longest.
            fallback = [c for c in candidates if c not in avoid] or candidates
            return min(fallback, key=lambda c: self._ejected_until.get(c, 0.0))

    def eject(self, location: str) -> None:
        """Avoid ``location`` for the cool-down period."""
        with self._lock:
            self._ejected_until[location] = time.monotonic() + self._eject_seconds

    def prefer(self, location: str) -> LocationPool:
        """A view of this pool that sends calls to ``location`` while it is healthy.

        The view shares clients and ejections with this pool, so a stream started on its preferred
        replica can still resume on any other; closing the view closes nothing.
        """
        view = copy.copy(self)
        view._preferred = location
        view._owner = False
        return view

    def close(self) -> None:
        """Close every client (a view made by :meth:`prefer` closes nothing)."""
        if not self._owner:
            return
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
