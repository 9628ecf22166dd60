"""One exception tree for the Fluent Forward codec and its I/O layer.

::

    ForwardError
    ├── ProtocolError (ValueError)          the peer broke the protocol: drop the connection
    │   ├── MalformedFrame                  wrong msgpack shape or types
    │   ├── FrameTooLarge                   a frame over ``max_frame_bytes``
    │   ├── DecompressedTooLarge            gzip payload over ``max_decompressed_bytes``
    │   ├── TooManyEntries                  more than ``max_entries`` in one frame
    │   └── HandshakeError                  HELO / PING / PONG out of order or malformed
    │       └── AuthenticationError         wrong shared key or credentials
    ├── UsageError (ValueError)             we misused the API (a local bug or bad config)
    │   └── EndpointError                   an endpoint URL that cannot be parsed
    └── TransportError (ConnectionError)    the socket failed under us
        ├── ConnectError                    could not connect or listen
        ├── ReadError                       reading failed
        │   └── ConnectionClosed            the peer closed (``partial`` bytes of a frame lost)
        ├── WriteError                      writing failed
        └── TransportTimeout (TimeoutError) an operation took longer than its deadline

Remote errors (``ProtocolError``) mean the peer is broken or hostile; local errors
(``UsageError``) mean the caller is. ``TransportError`` is neither: networks fail.
Each also inherits the builtin its callers expect, so ``except ConnectionError``
keeps working.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConnectError",
    "ConnectionClosed",
    "DecompressedTooLarge",
    "EndpointError",
    "ForwardError",
    "FrameTooLarge",
    "HandshakeError",
    "MalformedFrame",
    "ProtocolError",
    "ReadError",
    "TooManyEntries",
    "TransportError",
    "TransportTimeout",
    "UsageError",
    "WriteError",
]


class ForwardError(Exception):
    """Root of every error this package raises."""


class ProtocolError(ForwardError, ValueError):
    """The peer sent something the Forward protocol does not allow.

    The connection must be closed: a byte stream of msgpack cannot be
    resynchronised after an error, and the decoder must not be reused.
    """


class MalformedFrame(ProtocolError):
    """A frame with the wrong msgpack shape or element types."""


class _OverLimit(ProtocolError):
    """A frame over one of the decoder's limits.

    Attributes:
        limit: the limit that was exceeded (bytes, or entries).
    """

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class FrameTooLarge(_OverLimit):
    """A frame larger than the decoder's ``max_frame_bytes``."""


class DecompressedTooLarge(_OverLimit):
    """A compressed payload that inflates past ``max_decompressed_bytes``."""


class TooManyEntries(_OverLimit):
    """A frame carrying more than ``max_entries`` events."""


class HandshakeError(ProtocolError):
    """A handshake message out of order or of the wrong shape."""


class AuthenticationError(HandshakeError):
    """The peer failed the shared-key or user authentication."""


class UsageError(ForwardError, ValueError):
    """The caller misused the API; a local bug or a bad configuration."""


class EndpointError(UsageError):
    """An endpoint URL that cannot be parsed. The message says what is wrong."""


class TransportError(ForwardError, ConnectionError):
    """The transport failed: refused, reset, closed, or timed out."""


class ConnectError(TransportError):
    """Connecting or listening failed."""


class ReadError(TransportError):
    """Reading failed, or the peer closed the connection."""


class ConnectionClosed(ReadError):
    """The peer closed the connection.

    Attributes:
        partial: bytes of an incomplete frame that were buffered when it closed
            (0 for a clean close between frames).
    """

    def __init__(self, message: str, partial: int = 0) -> None:
        super().__init__(message)
        self.partial = partial


class WriteError(TransportError):
    """Writing failed."""


class TransportTimeout(TransportError, TimeoutError):
    """An operation did not finish before its deadline."""
