"""Entries: the ``[time, record]`` stream a batch carries, and its times (pure).

A batch's entries travel as one ``bytes`` of concatenated msgpack entries, each
``[time, record]`` or Fluent Bit's ``[[time, metadata], record]``. A time is an
integer (seconds) or ``EventTime``: msgpack ext type 0 holding big-endian uint32
seconds and uint32 nanoseconds. ``validate_entries`` checks a batch and normalises
its times ("lenient on input, strict on output"); the rest read entries straight
from the bytes without building records where they can. The frames around entries
are ``codec``'s.

``unpacker`` and ``msgpack_error`` are the one way this package reads msgpack: limits
first, and msgpack's errors turned into ``ProtocolError``s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeAlias

import msgpack

from .errors import FrameTooLarge, MalformedFrame, ProtocolError, TooManyEntries, UsageError
from .fastpath import shape_ok, validate_fast
from .wire import EVENT_TIME

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "EventTime",
    "Time",
    "check_record",
    "event_time_bytes",
    "first_event_time",
    "iter_entries",
    "msgpack_error",
    "normal_entry",
    "normal_time",
    "pack_entry",
    "packb",
    "split_entries",
    "time_to_ns",
    "unpacker",
    "validate_entries",
]

#: Most events one frame may carry.
DEFAULT_MAX_ENTRIES = 500_000

_U32 = 0xFFFFFFFF


class EventTime(msgpack.ExtType):  # type: ignore[misc]  # msgpack has no type hints
    """Fluent's EventTime: msgpack ext type 0, uint32 seconds + uint32 nanoseconds.

    Byte-for-byte what fluent-logger's ``EventTime`` packs (``D7 00 SS SS SS SS NN NN NN NN``).
    """

    def __new__(cls, seconds: int, nanoseconds: int = 0) -> EventTime:
        if not (0 <= seconds <= _U32 and 0 <= nanoseconds < 1_000_000_000):
            raise UsageError(f"EventTime out of range: {seconds}s {nanoseconds}ns")
        return super().__new__(cls, 0, EVENT_TIME.pack(seconds, nanoseconds))  # type: ignore[no-any-return]

    @classmethod
    def from_ns(cls, ns: int) -> EventTime:
        """The EventTime for a Unix time in nanoseconds."""
        return cls(*divmod(ns, 1_000_000_000))


Time: TypeAlias = "int | EventTime | msgpack.ExtType"


def event_time_bytes(ns: int) -> bytes:
    """The 10 packed bytes of an EventTime (fixext8), for building entries by hand."""
    return b"\xd7\x00" + EVENT_TIME.pack(*divmod(ns, 1_000_000_000))


def time_to_ns(t: Any) -> int:
    """Unix nanoseconds of an integer time or an ext-0 EventTime (ours or one decoded)."""
    if isinstance(t, msgpack.ExtType):
        seconds, nanos = EVENT_TIME.unpack(t.data)
        return int(seconds * 1_000_000_000 + nanos)
    return int(t) * 1_000_000_000


# surrogateescape: strings decoded from invalid UTF-8 pack back to the same bytes.
packb: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True,
                                               unicode_errors="surrogateescape").pack


def unpacker(max_bytes: int, read_size: int = 0) -> msgpack.Unpacker:
    # surrogateescape: invalid UTF-8 in a str is content, not an attack; it survives
    # decoding and packs back to the same bytes. strict_map_key rejects int keys.
    # read_size: the buffer it starts with (0: msgpack's, up to 1 MiB).
    max_bytes = max(max_bytes, 1)
    return msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", use_list=False,
                            strict_map_key=True, max_buffer_size=max_bytes,
                            read_size=min(read_size, max_bytes))


def msgpack_error(exc: Exception, what: str, limit: int) -> MalformedFrame | FrameTooLarge:
    """Turn a msgpack error into ours. Length headers over a limit mean 'too large'."""
    if isinstance(exc, ValueError) and "exceeds max" in str(exc):
        return FrameTooLarge(f"{what} declares a length over the {limit}-byte limit", limit)
    return MalformedFrame(f"{what} is not valid msgpack: {type(exc).__name__}")


def pack_entry(time: Time, record: Mapping[str, Any]) -> bytes:
    """One packed entry ``[time, record]``."""
    return packb((time, record))


def iter_entries(entries: bytes) -> Iterator[tuple[Any, Any]]:
    """Decode validated packed entries lazily (for outputs that need the records)."""
    up = unpacker(len(entries))
    up.feed(entries)
    return iter(up)


def validate_entries(data: bytes, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                     count_hint: int | None = None) -> tuple[bytes, int]:
    """Check packed entries; return ``(entries, count)``.

    Each entry must be ``[time, record]`` or ``[[time, metadata], record]`` with a map
    record and a time that is a non-negative integer or an ext-0 EventTime. Floats and
    msgpack Timestamps (ext -1) are converted to EventTime, which re-encodes the
    entries; otherwise the input bytes are returned as they are.

    The common case costs two C calls and a few C-level passes: the entries are
    decoded all at once by one ``unpackb`` (as an array of ``count_hint`` entries, the
    frame's ``size`` option, or of as many as ``skip()`` counts), then their shape is
    checked with ``map``/``set``, never a Python loop per entry. Anything else (a
    wrong hint, a time to normalise, an error to name) takes the entry-by-entry path,
    which gives the same answer for every input.
    """
    count = validate_fast(data, max_entries, count_hint)
    return (data, count) if count is not None else _validate_slow(data, max_entries)


def _validate_slow(data: bytes, max_entries: int) -> tuple[bytes, int]:
    """``validate_entries`` entry by entry: normalises times, names what is wrong."""
    up = unpacker(len(data))
    up.feed(data)
    items: list[Any] = []
    append, tell = items.append, up.tell
    end = 0
    try:
        for item in up:
            append(item)
            end = tell()  # after a complete object; msgpack also consumes partial ones
            if len(items) > max_entries:
                raise TooManyEntries(f"frame carries over max_entries ({max_entries}) entries",
                                     max_entries)
    except ProtocolError:
        raise
    except Exception as exc:
        raise msgpack_error(exc, "packed entries", len(data)) from exc
    if end != len(data):
        raise MalformedFrame("packed entries end in the middle of an entry")
    if not items:
        return data, 0
    if shape_ok(items, msgpack.ExtType, "code", "data"):
        return data, len(items)
    # Something to normalise, or something wrong; find out which entry.
    return b"".join(map(normal_entry, items)), len(items)


def check_record(record: Any) -> dict[str, Any]:
    if type(record) is not dict:
        raise MalformedFrame("a record must be a map")
    return record


def normal_entry(entry: Any) -> bytes:
    if type(entry) is not tuple or len(entry) != 2:
        raise MalformedFrame("an entry must be [time, record]")
    t, record = entry
    check_record(record)
    if type(t) is tuple:  # Fluent Bit v2 shape: [[time, metadata], record]
        if len(t) != 2 or type(t[1]) is not dict:
            raise MalformedFrame("an entry header must be [time, metadata map]")
        return packb(((normal_time(t[0]), t[1]), record))
    return packb((normal_time(t), record))


def normal_time(t: Any) -> int | msgpack.ExtType:
    """An integer or EventTime for any time a lenient reader accepts."""
    kind = type(t)
    if kind is int:
        if 0 <= t <= _U32:
            return int(t)
    elif kind is float:
        if 0 <= t < _U32 + 1:
            seconds = int(t)
            return EventTime(seconds, min(int(round((t - seconds) * 1e9)), 999_999_999))
    elif kind is msgpack.ExtType:
        if t.code == 0 and len(t.data) == 8:
            seconds, nanos = EVENT_TIME.unpack(t.data)
            if nanos < 1_000_000_000:
                return t
    elif kind is msgpack.Timestamp:  # ext -1: a different layout, the same meaning
        if 0 <= t.seconds <= _U32:
            return EventTime(t.seconds, t.nanoseconds)
    raise MalformedFrame("a time must be a non-negative integer, float or EventTime (ext 0)")


def first_event_time(entries: bytes) -> int | None:
    """Unix ns of the first entry, if it starts ``[EventTime, ...]`` (as our agent's do).

    Read straight from the bytes: no decoding, for per-batch clock-skew estimates.
    """
    if entries[:3] != b"\x92\xd7\x00" or len(entries) < 11:
        return None
    return time_to_ns(msgpack.ExtType(0, entries[3:11]))


def split_entries(entries: bytes, max_bytes: int) -> list[tuple[bytes, int]]:
    """Cut packed entries into runs of at most ``max_bytes`` (``(bytes, count)`` each).

    Boundaries are found with ``skip()``, without building the records. A single
    entry larger than ``max_bytes`` travels alone.
    """
    up = unpacker(len(entries))
    up.feed(entries)
    pieces: list[tuple[bytes, int]] = []
    start = prev = count = 0
    while prev < len(entries):
        up.skip()
        end = up.tell()
        if end - start > max_bytes and count:
            pieces.append((entries[start:prev], count))
            start, count = prev, 0
        count += 1
        prev = end
    if count:
        pieces.append((entries[start:], count))
    return pieces
