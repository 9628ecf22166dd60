"""Frames in the Forward modes no product code sends, for tests of the decoder and servers.

Clients such as fluent-logger send Message frames, Fluent Bit Forward and gzip
CompressedPackedForward ones; our agent and relay send only PackedForward
(``fluent_forward.codec.encode_packed_forward``). So the encoders of the other modes
live here, beside the tests that play those clients.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from fluent_forward.codec import encode_packed_forward
from fluent_forward.entries import Time, packb

__all__ = [
    "encode_compressed_packed_forward",
    "encode_forward",
    "encode_message",
    "make_options",
]


def make_options(*, chunk: str | None = None, size: int | None = None,
                 compressed: str | None = None) -> dict[str, Any]:
    """The option map: only the keys given."""
    opts: dict[str, Any] = {}
    if chunk is not None:
        opts["chunk"] = chunk
    if size is not None:
        opts["size"] = size
    if compressed is not None:
        opts["compressed"] = compressed
    return opts


def encode_message(tag: str, time: Time, record: Mapping[str, Any],
                   options: Mapping[str, Any] | None = None) -> bytes:
    """Message mode: ``[tag, time, record, options?]``."""
    frame: tuple[Any, ...] = (tag, time, record)
    return packb(frame if options is None else (*frame, options))


def encode_forward(tag: str, entries: Iterable[tuple[Time, Mapping[str, Any]]],
                   options: Mapping[str, Any] | None = None) -> bytes:
    """Forward mode: ``[tag, [[time, record], ...], options?]``."""
    frame: tuple[Any, ...] = (tag, list(entries))
    return packb(frame if options is None else (*frame, options))


def encode_compressed_packed_forward(tag: str, entries: bytes,
                                     options: Mapping[str, Any] | None = None,
                                     *, level: int = 6) -> bytes:
    """CompressedPackedForward: gzip entries, with ``compressed: "gzip"`` in the options."""
    opts = dict(options or {})
    opts["compressed"] = "gzip"
    co = zlib.compressobj(level, zlib.DEFLATED, 31)
    return encode_packed_forward(tag, co.compress(entries) + co.flush(), opts)

