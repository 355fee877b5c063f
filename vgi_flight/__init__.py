"""vgi-flight: typed, stateful, streaming RPC services on Apache Arrow Flight.

Define a service as a ``typing.Protocol``, implement it as a plain class, serve it with
:class:`RpcServer` (or in-process with :func:`serve_pipe`) and call it through the typed proxy
returned by :func:`connect`.
"""

from __future__ import annotations

from vgi_flight._arrow_types import ArrowSerializableDataclass, ArrowType
from vgi_flight._auth import BearerAuth, ClientCredential, HmacAuth, HmacKey, ServerAuth
from vgi_flight._client import RpcConnection, StreamSession, connect, introspect
from vgi_flight._context import AuthContext, CallContext
from vgi_flight._errors import ErrorCode, ProtocolError, RpcError
from vgi_flight._log import Level, Message
from vgi_flight._observe import ServerStats
from vgi_flight._pipe import serve_pipe
from vgi_flight._server import RpcServer
from vgi_flight._service import MethodDescription, MethodKind, ServiceDescription, describe_protocol
from vgi_flight._streams import (
    AnnotatedBatch,
    ExchangeState,
    OutputCollector,
    ProducerState,
    Stream,
    StreamState,
)
from vgi_flight._tokens import KeyRing, TokenError

__version__ = "0.1.0"

__all__ = [
    "AnnotatedBatch",
    "ArrowSerializableDataclass",
    "ArrowType",
    "AuthContext",
    "BearerAuth",
    "CallContext",
    "ClientCredential",
    "ErrorCode",
    "ExchangeState",
    "HmacAuth",
    "HmacKey",
    "KeyRing",
    "Level",
    "Message",
    "MethodDescription",
    "MethodKind",
    "OutputCollector",
    "ProducerState",
    "ProtocolError",
    "RpcConnection",
    "RpcError",
    "RpcServer",
    "ServerAuth",
    "ServerStats",
    "ServiceDescription",
    "Stream",
    "StreamSession",
    "StreamState",
    "TokenError",
    "__version__",
    "connect",
    "describe_protocol",
    "introspect",
    "serve_pipe",
]
