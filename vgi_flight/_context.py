"""Per-call context handed to service methods: :class:`AuthContext` and :class:`CallContext`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vgi_flight._log import Level, Message


@dataclass(frozen=True)
class AuthContext:
    """Who is calling.

    Attributes:
        domain: The scheme that authenticated the caller (``"mtls"``, ``"hmac"``, ...), or ``None``.
        authenticated: Whether the caller was authenticated.
        principal: The caller's identity, or ``None`` when anonymous.
        claims: Extra facts about the caller supplied by the authenticator.
    """

    domain: str | None
    authenticated: bool
    principal: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def anonymous(cls) -> AuthContext:
        """Return the context of an unauthenticated caller."""
        return _ANONYMOUS

    def require_authenticated(self) -> None:
        """Raise :class:`PermissionError` unless the caller is authenticated."""
        if not self.authenticated:
            raise PermissionError("this call requires an authenticated caller")


_ANONYMOUS = AuthContext(domain=None, authenticated=False)


class CallContext:
    """Request-scoped facts and services, passed to implementation methods that declare ``ctx``.

    Attributes:
        auth: The caller's identity.
        method: The RPC method being served.
        transport_metadata: Transport facts such as the peer address.
    """

    __slots__ = ("_cancelled", "_log_sink", "_logger", "_request_id", "auth", "method", "transport_metadata")

    def __init__(
        self,
        *,
        auth: AuthContext,
        method: str,
        request_id: str,
        log_sink: Callable[[Message], None],
        cancelled: Callable[[], bool] | None = None,
        transport_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Create a context (done by the server; services only receive one).

        Args:
            auth: The caller's identity.
            method: The RPC method being served.
            request_id: Correlation id of this call.
            log_sink: Where :meth:`client_log` messages go.
            cancelled: Reports whether the client has gone away.
            transport_metadata: Transport facts such as the peer address.
        """
        self.auth = auth
        self.method = method
        self.transport_metadata: Mapping[str, Any] = transport_metadata or {}
        self._request_id = request_id
        self._log_sink = log_sink
        self._cancelled = cancelled
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def request_id(self) -> str:
        """Correlation id of this call (also in the server's access log)."""
        return self._request_id

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A server-side logger with the method, request id and principal bound."""
        if self._logger is None:
            extra = {"method": self.method, "request_id": self._request_id, "principal": self.auth.principal}
            self._logger = logging.LoggerAdapter(logging.getLogger("vgi_flight.service"), extra)
        return self._logger

    @property
    def cancelled(self) -> bool:
        """Whether the client has cancelled the call or disconnected."""
        return self._cancelled() if self._cancelled is not None else False

    def client_log(self, level: Level, message: str, **extra: object) -> None:
        """Send a log message to the caller; it arrives before the call's result.

        Args:
            level: Severity.
            message: Text.
            **extra: Structured values (JSON-representable).
        """
        self._log_sink(Message(level, message, **extra))

    def emit_client_log(self, msg: Message) -> None:
        """Send a prepared :class:`Message` to the caller."""
        self._log_sink(msg)
