"""The local data channel: producer streams read over a Unix socket by clients on the same host.

gRPC caps a producer stream at a fraction of what the machine can move: every batch is framed
into HTTP/2 and copied again on the client. A client on the server's host can instead ask for a
*grant* over an authenticated Flight call (``__local_data__`` with the stream's latest token, or
with its call request to open it), connect to the server's local socket, present the grant, and
read the stream as a plain Arrow IPC stream: the same batches and the same app_metadata (tokens,
logs) as DoGet carries, one per IPC message. The grant is single-use, short-lived, random, and
stored only as its SHA-256, so the socket adds no way in that the Flight call did not already check.

The stream ends with an ``end`` message before the IPC end-of-stream marker: a connection that
closes without it broke (the server died), and the client resumes from its last token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from vgi_flight import _wire as wire
from vgi_flight._context import AuthContext
from vgi_flight._errors import ErrorCode

log = logging.getLogger("vgi_flight.local")

GRANT_BYTES = 32
GRANT_TTL_SECONDS = 10.0
METADATA_KEY = b"vgi.app_metadata"
END_METADATA = b'{"kind":"end"}'
_MAX_PENDING_GRANTS = 4096
_MAX_UNGRANTED_CONNECTIONS = 64  # connections that have not presented a grant yet
_GRANT_READ_SECONDS = 10.0
# Unix sockets default to ~208 KiB of buffer: a 1 MiB batch then crosses in several writer/reader
# hand-offs. 4 MiB measured ~1.3x the throughput (the kernel caps it at net.core.[wr]mem_max).
_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Grant:
    request: bytes  # a state token or a call request, as a DoGet ticket
    auth: AuthContext
    expires_at: float


class LocalCall:
    """The call context of one local-channel stream: what the dispatcher asks of a Flight call context."""

    def __init__(self, peer: str) -> None:
        """A call from ``peer`` (``unix:pid=…,uid=…``)."""
        self._peer = peer
        self.gone = False  # the client closed its end

    def is_cancelled(self) -> bool:
        """Whether the client went away (seen when a write fails)."""
        return self.gone

    def peer(self) -> str:
        """The peer, as Flight's ``peer()`` reports one."""
        return self._peer

    def peer_identity(self) -> bytes:
        """No certificate on a Unix socket: the grant carries the identity."""
        return b""

    def get_middleware(self, key: str) -> None:
        """No middleware runs on the local channel."""
        return None


class LocalStreamWriter:
    """Writes one stream as Arrow IPC to a connected socket: batches with their app_metadata."""

    def __init__(self, sock: socket.socket, call: LocalCall) -> None:
        """Write to ``sock``; a failed write marks ``call`` gone (the client closed its end)."""
        self._call = call
        _widen(sock, socket.SO_SNDBUF)
        self._file = sock.makefile("wb", buffering=0)
        self._writer: Any = None  # pa.ipc.RecordBatchStreamWriter once begun
        self._schema = pa.schema([])

    def begin(self, schema: pa.Schema) -> None:
        """Write the stream's schema."""
        self._schema = schema
        try:
            self._writer = pa.ipc.new_stream(self._file, schema)
        except (OSError, ValueError):
            self._call.gone = True
            raise

    def write(self, batch: pa.RecordBatch, metadata: bytes) -> None:
        """Write one message: a batch and the app_metadata DoGet would carry with it.

        Raises:
            OSError: The client closed its end (the call is marked gone); ValueError when the
                channel closed the file under the writer.
        """
        try:
            self._writer.write_batch(batch, custom_metadata={METADATA_KEY: metadata})
        except (OSError, ValueError):  # ValueError: the file was closed under the writer
            self._call.gone = True
            raise

    def end(self, empty: pa.RecordBatch) -> None:
        """Mark a complete stream: the ``end`` message, then the IPC end-of-stream marker."""
        self.write(empty, END_METADATA)
        self.close()

    def fail(self, error: flight.FlightError) -> None:
        """End the stream with an ``error`` message (a zero-row batch) carrying ``error``'s status."""
        if self._call.gone:
            return
        if self._writer is None:
            self.begin(self._schema)
        self.write(pa.RecordBatch.from_pylist([], schema=self._schema), wire.error_metadata(error))
        self.close()

    def close(self) -> None:
        """Write the end-of-stream marker (when begun) and release the file."""
        try:
            if self._writer is not None and not self._call.gone:
                self._writer.close()
        except (OSError, ValueError):
            self._call.gone = True
        finally:
            self._file.close()


# --- server -------------------------------------------------------------------------------------

ServeLocal = Callable[[LocalCall, bytes, AuthContext, LocalStreamWriter], None]


class LocalDataChannel:
    """The server's local socket: hands out grants and serves each granted connection on its own thread."""

    def __init__(self, path: str | None, serve: ServeLocal) -> None:
        """Listen on ``path`` (``None``: a socket in a new private directory) and serve granted streams.

        Args:
            path: Socket path. Its directory must exist; only the server's user may use the socket
                (mode 0600) unless the operator changes it.
            serve: Runs one granted stream: ``serve(call, request, auth, writer)``.
        """
        self._own_directory = None if path is not None else tempfile.mkdtemp(prefix="vgi-flight-local-")
        self.path = path if path is not None else os.path.join(self._own_directory or "", "data.sock")
        self._serve = serve
        self._grants: dict[bytes, _Grant] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._ungranted = threading.BoundedSemaphore(_MAX_UNGRANTED_CONNECTIONS)
        self._closed = False
        with contextlib.suppress(FileNotFoundError):
            if path is not None and _is_socket(path):
                os.unlink(path)  # a stale socket of an earlier run
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._accept_loop, name="vgi-flight-local", daemon=True)
        self._thread.start()

    def grant(self, request: bytes, auth: AuthContext) -> bytes:
        """Register a grant to read the stream ``request`` names as ``auth``; return the action's result body.

        Raises:
            RuntimeError: Too many grants are outstanding (the caller reports RESOURCE_EXHAUSTED).
        """
        secret = os.urandom(GRANT_BYTES)
        now = time.monotonic()
        with self._lock:
            if len(self._grants) >= _MAX_PENDING_GRANTS:
                self._grants = {k: g for k, g in self._grants.items() if g.expires_at > now}
                if len(self._grants) >= _MAX_PENDING_GRANTS:
                    raise RuntimeError("too many local data grants outstanding")
            self._grants[hashlib.sha256(secret).digest()] = _Grant(request, auth, now + GRANT_TTL_SECONDS)
        return json.dumps({"path": self.path, "grant": wire.b64(secret), "expires_in": GRANT_TTL_SECONDS}).encode()

    def _take(self, secret: bytes) -> _Grant | None:
        # Looked up by SHA-256: a lookup's timing says nothing about the secret itself.
        with self._lock:
            grant = self._grants.pop(hashlib.sha256(secret).digest(), None)
        if grant is None or grant.expires_at < time.monotonic():
            return None
        return grant

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._ungranted.acquire(blocking=False):
                sock.close()  # a flood of connections that present nothing: refuse, keep serving
                continue
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self._connections.add(sock)
            threading.Thread(target=self._handle, args=(sock,), name="vgi-flight-local-stream", daemon=True).start()

    def _handle(self, sock: socket.socket) -> None:
        try:
            try:
                secret = _read_grant(sock)
            finally:
                self._ungranted.release()
            sock.settimeout(None)
            call = LocalCall(_peer(sock))
            writer = LocalStreamWriter(sock, call)
            grant = self._take(secret) if secret is not None else None
            if grant is None:
                log.info("local data connection without a valid grant refused")
                writer.fail(
                    wire.error_status(
                        ErrorCode.UNAUTHENTICATED, "LocalGrantError", "unknown, used or expired local data grant"
                    )
                )
                return
            self._serve(call, grant.request, grant.auth, writer)
        except (OSError, ValueError) as exc:
            log.debug("local data connection ended: %s", exc)
        finally:
            with self._lock:
                self._connections.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Stop listening, end open local streams (their clients resume elsewhere) and remove the socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)


def _widen(sock: socket.socket, option: int) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER_BYTES)


def _is_socket(path: str) -> bool:
    return stat.S_ISSOCK(os.lstat(path).st_mode)


def _read_grant(sock: socket.socket) -> bytes | None:
    """The grant a new connection presents: exactly GRANT_BYTES within the time limit, or ``None``."""
    sock.settimeout(_GRANT_READ_SECONDS)
    data = b""
    try:
        while len(data) < GRANT_BYTES:
            chunk = sock.recv(GRANT_BYTES - len(data))
            if not chunk:
                return None
            data += chunk
    except TimeoutError:
        return None
    return data


def _peer(sock: socket.socket) -> str:
    """``unix:pid=…,uid=…`` from the peer's credentials (Linux), else ``unix:``."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return "unix:"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, option, 12)
    except OSError:
        return "unix:"
    pid, uid, _gid = (int.from_bytes(creds[i : i + 4], "little", signed=True) for i in (0, 4, 8))
    return f"unix:pid={pid},uid={uid}"


# --- client -------------------------------------------------------------------------------------


class _Chunk:
    """One message read from the channel, shaped like a Flight stream chunk."""

    __slots__ = ("app_metadata", "data")

    def __init__(self, data: pa.RecordBatch, app_metadata: bytes) -> None:
        self.data = data
        self.app_metadata = app_metadata


class LocalStreamReader:
    """Reads a granted stream from a server's local socket, with the interface of a Flight stream reader.

    ``read_chunk`` raises the FlightError the server reported, FlightUnavailableError when the
    connection broke before the stream's ``end`` message, and StopIteration after it.
    """

    def __init__(self, path: str, secret: bytes, timeout: float | None) -> None:
        """Connect to ``path`` and present ``secret``.

        Raises:
            OSError: The socket cannot be reached (not on this host, or not permitted): use Flight.
        """
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _widen(self._sock, socket.SO_RCVBUF)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            self._sock.sendall(secret)
        except BaseException:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")
        self._reader: Any = None
        self._ended = False

    @property
    def schema(self) -> pa.Schema:
        """The stream's schema (reads the stream's first message)."""
        return self._open().schema

    def _open(self) -> Any:
        if self._reader is None:
            try:
                self._reader = pa.ipc.open_stream(self._file)
            except (OSError, pa.ArrowException) as exc:
                raise _broken(exc) from None
        return self._reader

    def read_chunk(self) -> _Chunk:
        """The next message.

        Raises:
            StopIteration: The stream is complete.
            flight.FlightError: The server reported an error, or the connection broke.
        """
        if self._ended:
            raise StopIteration
        reader = self._open()
        try:
            batch, custom = reader.read_next_batch_with_custom_metadata()
        except StopIteration:
            raise _broken(EOFError("the stream ended without its end message")) from None
        except (OSError, pa.ArrowException) as exc:
            raise _broken(exc) from None
        metadata = custom.get(METADATA_KEY, b"") if custom is not None else b""
        if metadata == END_METADATA:
            self._ended = True
            self.cancel()
            raise StopIteration
        if metadata.startswith(b'{"kind":"error"'):
            self._ended = True
            self.cancel()
            raise wire.error_from_metadata(metadata)
        return _Chunk(batch, metadata)

    def cancel(self) -> None:
        """Close the connection: the server sees the client gone and ends the stream."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._file.close()
        self._sock.close()


def _broken(exc: BaseException) -> flight.FlightUnavailableError:
    return flight.FlightUnavailableError(f"local data channel broke: {exc}")
