"""Error types shared by client and server.

A remote failure always reaches Python callers as :class:`RpcError`. Its ``code`` is one of the
canonical gRPC status names in :class:`ErrorCode`; the wire mapping of codes to Flight statuses
lives in :mod:`vgi_flight._wire`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Canonical error codes (the gRPC status names) carried in every vgi-flight error."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"

    @classmethod
    def parse(cls, value: object) -> ErrorCode:
        """Return the code named by ``value``, or ``UNKNOWN`` for anything unrecognised."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.UNKNOWN


class RpcError(Exception):
    """A remote call failed.

    Raised on the client for every server-reported failure. A service may also raise it (or a
    subclass) to choose the code its caller sees.

    Attributes:
        error_type: The remote exception's class name, e.g. ``"ValueError"``.
        error_message: The remote exception's message.
        remote_traceback: The remote traceback, or ``""`` when the server does not send tracebacks.
        code: The canonical error code.
    """

    def __init__(
        self,
        error_type: str,
        error_message: str,
        remote_traceback: str = "",
        *,
        code: ErrorCode = ErrorCode.UNKNOWN,
    ) -> None:
        """Create an error.

        Args:
            error_type: The remote exception's class name.
            error_message: The remote exception's message.
            remote_traceback: The remote traceback, or ``""``.
            code: The canonical error code.
        """
        self.error_type = error_type
        self.error_message = error_message
        self.remote_traceback = remote_traceback
        self.code = code
        super().__init__(f"{error_type}: {error_message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.error_type, self.error_message, self.remote_traceback), {"code": self.code})


class RequestRejectedError(Exception):
    """The framework refused a request (bad input, unknown method, ...) or ended its call.

    Server-side only: the client receives it as :class:`RpcError` with the same code, error type
    and message.
    """

    def __init__(self, code: ErrorCode, message: str, error_type: str = "") -> None:
        """Refuse with ``code``; ``error_type`` defaults to a name for the code (e.g. ``InvalidArgument``)."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_type = error_type or _DEFAULT_TYPE.get(code, "RpcError")


_DEFAULT_TYPE = {
    ErrorCode.INVALID_ARGUMENT: "InvalidArgument",
    ErrorCode.UNIMPLEMENTED: "UnknownMethod",
    ErrorCode.UNAUTHENTICATED: "Unauthenticated",
    ErrorCode.PERMISSION_DENIED: "PermissionDenied",
    ErrorCode.FAILED_PRECONDITION: "ProtocolError",
    ErrorCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    ErrorCode.INTERNAL: "InternalError",
}


class ProtocolError(ValueError):
    """A peer broke the vgi-flight protocol (bad framing, misuse of a closed stream, ...)."""
