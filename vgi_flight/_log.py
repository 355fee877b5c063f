"""Client-directed log messages: :class:`Level` and :class:`Message`."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class Level(Enum):
    """Severity of a client-directed log message, most severe first."""

    EXCEPTION = "EXCEPTION"
    ERROR = "ERROR"
    WARN = "WARN"
    INFO = "INFO"
    DEBUG = "DEBUG"
    TRACE = "TRACE"


class Message:
    """A log message a service sends to its caller.

    Attributes:
        level: Severity of the message.
        message: Human-readable text.
        extra: Structured key/value pairs given as keyword arguments, or ``None``.
    """

    __slots__ = ("extra", "level", "message")
    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # mutable value object

    def __init__(self, level: Level, message: str, **extra: object) -> None:
        """Create a message.

        Args:
            level: Severity of the message.
            message: Human-readable text.
            **extra: Structured values sent alongside the text (must be JSON-representable).
        """
        self.level = level
        self.message = message
        self.extra: dict[str, object] | None = extra or None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.level == other.level and self.message == other.message and self.extra == other.extra

    def __repr__(self) -> str:
        if self.extra:
            return f"Message({self.level!r}, {self.message!r}, **{self.extra!r})"
        return f"Message({self.level!r}, {self.message!r})"

    @classmethod
    def exception(cls, message: str, **extra: object) -> Message:
        """Create an EXCEPTION-level message."""
        return cls(Level.EXCEPTION, message, **extra)

    @classmethod
    def error(cls, message: str, **extra: object) -> Message:
        """Create an ERROR-level message."""
        return cls(Level.ERROR, message, **extra)

    @classmethod
    def warn(cls, message: str, **extra: object) -> Message:
        """Create a WARN-level message."""
        return cls(Level.WARN, message, **extra)

    @classmethod
    def info(cls, message: str, **extra: object) -> Message:
        """Create an INFO-level message."""
        return cls(Level.INFO, message, **extra)

    @classmethod
    def debug(cls, message: str, **extra: object) -> Message:
        """Create a DEBUG-level message."""
        return cls(Level.DEBUG, message, **extra)

    @classmethod
    def trace(cls, message: str, **extra: object) -> Message:
        """Create a TRACE-level message."""
        return cls(Level.TRACE, message, **extra)
