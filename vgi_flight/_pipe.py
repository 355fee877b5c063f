"""``serve_pipe``: an in-process server on a private Unix socket plus a typed proxy."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

from vgi_flight._client import OnLog, connect
from vgi_flight._server import RpcServer

P = TypeVar("P")


@contextlib.contextmanager
def serve_pipe(protocol: Callable[..., P], implementation: object, *, on_log: OnLog | None = None) -> Iterator[P]:
    """Serve ``implementation`` in-process and yield a proxy typed as ``protocol``.

    The server listens on a Unix socket in a private temporary directory (mode 0700), so only
    this user can reach it, and hands producer streams out over its local data channel beside it
    (several times gRPC's throughput). Server and connection are closed together on exit.

    Args:
        protocol: The service Protocol class.
        implementation: The implementation object.
        on_log: Receives the service's log messages.

    Yields:
        The typed proxy.
    """
    directory = tempfile.mkdtemp(prefix="vgi-flight-")
    os.chmod(directory, 0o700)
    location = f"grpc+unix://{os.path.join(directory, 's')}"
    server = RpcServer(
        cast(type, protocol),
        implementation,
        location,
        token_key=os.urandom(32),
        local_data=os.path.join(directory, "data"),
    ).start()
    connection = connect(protocol, location, on_log=on_log, local_data=True)
    try:
        yield connection.proxy
    finally:
        connection.close()
        server.shutdown()
        shutil.rmtree(directory, ignore_errors=True)
