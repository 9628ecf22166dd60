"""Fluent Forward v1 frames: encoders (functions) and an incremental decoder (object).

Pure code: no sockets, no asyncio. The decoder takes bytes split anywhere and returns
typed frames; the encoders return bytes.

Wire shapes (reference: the Forward Protocol Specification v1)::

    Message                  [tag, time, record, options?]
    Forward                  [tag, [[time, record], ...], options?]
    PackedForward            [tag, bin(entry entry ...), options?]
    CompressedPackedForward  [tag, bin(gzip(entry entry ...)), {"compressed": "gzip", ...}]
    ack                      {"ack": <the chunk the client sent>}

An entry is ``[time, record]`` or Fluent Bit's ``[[time, metadata], record]``. A time
is an integer (seconds) or ``EventTime``: msgpack ext type 0 holding big-endian uint32
seconds and uint32 nanoseconds. Every event frame the decoder returns carries its
entries as one ``bytes`` of concatenated msgpack entries, validated and with every
time an integer or an EventTime: "lenient on input, strict on output". Entries that
needed no change are the very bytes that arrived, so a relay forwards them untouched.

The entries themselves (their times, validation, splitting) are ``entries``'s. Only
PackedForward is encoded here: it is the one mode our agent and relay send.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

from .bulk import BulkFrame, bulk_start
from .entries import (
    DEFAULT_MAX_ENTRIES,
    check_record,
    msgpack_error,
    normal_entry,
    normal_time,
    packb,
    unpacker,
    validate_entries,
)
from .errors import (
    DecompressedTooLarge,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    TooManyEntries,
    UsageError,
)
from .handshake import Helo, Ping, Pong, parse_helo, parse_ping, parse_pong
from .wire import bin_header, read_header

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_BYTES",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_OBJECT_FRAME_BYTES",
    "MAX_CHUNK_ID_BYTES",
    "Ack",
    "EventFrame",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "Heartbeat",
    "Role",
    "encode_ack",
    "encode_packed_forward",
    "packed_forward_parts",
    "parse_event",
]

#: Largest frame the decoder buffers. Fluent Bit's forward input closes connections
#: on frames over 6,144,000 bytes; staying at 4 MiB leaves room for a tag prefix.
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
#: Largest payload a compressed frame may inflate to.
DEFAULT_MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024
#: Largest Message or Forward frame. These arrive as msgpack objects, and a hostile
#: peer can make each byte cost ~60 bytes of Python objects (an empty map per byte), so
#: they get a much smaller limit than PackedForward, whose entries arrive as bytes.
DEFAULT_MAX_OBJECT_FRAME_BYTES = 1024 * 1024
#: Longest ``chunk`` option taken (bytes of a bin, characters of a str). The relay keeps
#: each chunk id until it acks it and echoes it back, so an unbounded one lets a peer
#: that never reads its acks pin megabytes per pending batch. Every known client sends
#: 16 random bytes in Base64: 24 characters (Fluent Bit, fluent-logger, our agent), 25
#: with Fluentd's trailing newline.
MAX_CHUNK_ID_BYTES = 64


# -- encoders ------------------------------------------------------------------------


def encode_packed_forward(tag: str, entries: bytes | Sequence[bytes],
                          options: Mapping[str, Any] | None = None) -> bytes:
    """PackedForward: ``[tag, bin(entries), options?]``, entries copied once.

    ``entries`` may also be a sequence of parts (packed entries to concatenate): they
    are then copied once too, straight into the frame.
    """
    parts = [entries] if isinstance(entries, bytes) else entries
    head, _, tail = packed_forward_parts(tag, b"", options, size=sum(map(len, parts)))
    return b"".join([head, *parts, tail])


def packed_forward_parts(tag: str, entries: bytes, options: Mapping[str, Any] | None = None,
                         *, size: int | None = None) -> tuple[bytes, bytes, bytes]:
    """PackedForward in three parts whose concatenation is the frame: the header up to
    the entries, the entries themselves (not copied), and the options (b"" if None).

    A sender that writes the parts one after the other spares a copy of the entries.
    ``size``: the length the bin header declares, when ``entries`` is a placeholder.
    """
    head = b"\x93" if options is not None else b"\x92"
    head += packb(tag) + bin_header(len(entries) if size is None else size)
    return head, entries, packb(options) if options is not None else b""


def encode_ack(chunk: str | bytes) -> bytes:
    """The server's ack: ``{"ack": chunk}``, echoing the client's value and type."""
    return packb({"ack": chunk})


# -- decoded frames ------------------------------------------------------------------


class FrameKind(IntEnum):
    """The mode an event frame arrived in."""

    MESSAGE = 1
    FORWARD = 2
    PACKED_FORWARD = 3
    COMPRESSED_PACKED_FORWARD = 4


class Role(IntEnum):
    """Which side of a connection a decoder serves; it fixes what frames may arrive."""

    SERVER = 1  # we accepted: events, PING, nil heartbeats arrive
    CLIENT = 2  # we connected: HELO, PONG, acks arrive


@dataclass(frozen=True, slots=True)
class EventFrame:
    """A batch of events: validated entries as bytes, ready to forward.

    Attributes:
        kind: the mode it arrived in.
        tag: the tag.
        entries: concatenated msgpack entries (uncompressed, times normalised).
        count: how many entries.
        chunk: the client's chunk id (to echo in the ack), or None if it wants none.
    """

    kind: FrameKind
    tag: str
    entries: bytes
    count: int
    chunk: str | bytes | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """A server's ack of ``chunk``."""

    chunk: str | bytes


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A msgpack ``nil`` the spec allows as a TCP heartbeat."""


Frame: TypeAlias = "EventFrame | Ack | Heartbeat | Helo | Ping | Pong"

_HEARTBEAT = Heartbeat()
#: What a server sends besides acks, by the first element.
_HANDSHAKE_PARSERS: dict[str, Callable[[Any], Helo | Pong]] = {"HELO": parse_helo,
                                                               "PONG": parse_pong}


class FrameDecoder:
    """Incremental decoder: ``feed(bytes) -> list[Frame]``, bytes split anywhere.

    Limits are checked before anything past them is buffered or allocated. Any error
    raises a ``ProtocolError`` subclass; the decoder is then unusable (msgpack forbids
    reusing an Unpacker after an error) and the connection must be closed.

    Args:
        role: ``Role.SERVER`` to read what clients send, ``Role.CLIENT`` for servers.
        max_frame_bytes: largest frame, as it is on the wire.
        max_decompressed_bytes: largest payload a gzip frame may inflate to.
        max_entries: most entries in one frame.
        max_object_frame_bytes: largest Message or Forward frame (object-heavy modes).
    """

    def __init__(self, role: Role, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_object_frame_bytes: int = DEFAULT_MAX_OBJECT_FRAME_BYTES) -> None:
        if min(max_frame_bytes, max_decompressed_bytes, max_entries,
               max_object_frame_bytes) < 1:
            raise UsageError("decoder limits must be positive")
        self.role = role
        self.max_frame_bytes = max_frame_bytes
        self.max_object_frame_bytes = min(max_object_frame_bytes, max_frame_bytes)
        self.max_decompressed_bytes = max_decompressed_bytes
        self.max_entries = max_entries
        self._unpacker = unpacker(max_frame_bytes)
        self._fed = 0
        self._frame_start = 0  # stream offset where the incomplete frame began
        self._base = 0  # stream offset of the Unpacker's tell() == 0
        self._head = b""  # the first bytes of the incomplete frame, for _read_head()
        self._bulk: BulkFrame | None = None  # a large PackedForward frame being gathered
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes of the frame not yet complete.

        Counted from where that frame began, not from msgpack's ``tell()``: the
        Unpacker consumes the bytes of a partly parsed array or map into objects, so
        its own buffer would not show them and the limit would not hold.
        """
        return self._fed - self._frame_start

    def feed(self, data: bytes) -> list[Frame]:
        """Feed bytes; return the frames they complete (maybe none)."""
        if self._broken:
            raise UsageError("decoder used after a protocol error; close the connection")
        try:
            return self._feed(data)
        except BaseException:
            self._broken = True
            raise

    def _feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        while True:
            if self._bulk is None and not self.buffered and self.role is Role.SERVER:
                self._start_bulk(view[pos:])  # at a frame's first byte
            pos = (self._take_bulk(view, pos, frames) if self._bulk is not None
                   else self._feed_piece(view, pos, end, frames))
            if pos >= end:
                return frames

    def _feed_piece(self, view: memoryview, pos: int, end: int, frames: list[Frame]) -> int:
        """Feed msgpack the next piece of ``view``; where the rest begins."""
        # Never hand msgpack more than one frame's limit: a frame over the limit
        # then fails here instead of growing the buffer.
        room = self.max_frame_bytes - self.buffered
        piece = view[0:0]
        if pos < end:
            if room <= 0:
                raise self._too_large()
            # Feed at most an object frame's limit at once, so a Message or Forward
            # frame is caught by _check_claim before it is all turned into objects.
            piece = view[pos:pos + min(room, self.max_object_frame_bytes)]
            self._unpacker.feed(piece)
            self._fed += len(piece)
            pos += len(piece)
        up = self._unpacker
        try:
            for obj in up:
                frames.append(self._classify(obj))
                # right after a complete object: its end
                self._frame_start = self._base + up.tell()
        except ProtocolError:
            raise
        except Exception as exc:
            raise msgpack_error(exc, "frame", self.max_frame_bytes) from exc
        self._check_claim(piece)
        incomplete = self.buffered
        if 0 < incomplete <= len(piece) and self.role is Role.SERVER:
            # A large frame began in this piece: take it from msgpack, gather it here.
            self._start_bulk(piece[len(piece) - incomplete:])
            if self._bulk is not None:
                self._unpacker = unpacker(self.max_frame_bytes)
                self._fed -= incomplete
                self._base = self._fed
                pos -= incomplete
        return pos

    def _too_large(self, claimed: int | None = None) -> FrameTooLarge:
        claim = "" if claimed is None else f" claims {claimed} bytes,"
        return FrameTooLarge(f"frame{claim} over max_frame_bytes ({self.max_frame_bytes})",
                             self.max_frame_bytes)

    def _start_bulk(self, head: memoryview) -> None:
        bulk = bulk_start(head)
        if bulk is not None and bulk.need > self.max_frame_bytes:
            raise self._too_large(bulk.need)
        if bulk is not None:
            self._bulk = bulk
            self._head = b""

    def _take_bulk(self, view: memoryview, pos: int, frames: list[Frame]) -> int:
        """Gather the large frame from ``view[pos:]``; where its bytes end in it."""
        bulk = self._bulk
        assert bulk is not None
        before = pos
        try:
            pos, obj = bulk.take(view, pos, self.max_frame_bytes - bulk.need)
        except OverflowError:
            raise self._too_large() from None
        except Exception as exc:
            raise msgpack_error(exc, "frame", self.max_frame_bytes) from exc
        self._fed += pos - before
        if obj is not None:
            self._bulk = None
            self._frame_start = self._fed
            self._base = self._fed - self._unpacker.tell()
            frames.append(self._classify(obj))
        return pos

    def _check_claim(self, piece: memoryview) -> None:
        """Refuse at once a frame whose headers claim more than the limit.

        Without this, a header claiming gigabytes would be refused only after the
        peer sent ``max_frame_bytes`` (msgpack checks lengths when the bytes come).
        """
        incomplete = self.buffered
        if not incomplete:
            self._head = b""
            return
        if incomplete <= len(piece):  # the frame began in this piece
            self._head = bytes(piece[len(piece) - incomplete:][:_HEAD])
        elif len(self._head) < _HEAD:
            self._head += bytes(piece[:_HEAD - len(self._head)])
        claimed, object_mode = _read_head(self._head)
        if claimed is not None and claimed > self.max_frame_bytes:
            raise self._too_large(claimed)
        if incomplete > self.max_object_frame_bytes and object_mode:
            raise FrameTooLarge(f"a Message or Forward frame over {self.max_object_frame_bytes} "
                                "bytes; send large batches as PackedForward",
                                self.max_object_frame_bytes)

    def _classify(self, obj: Any) -> Frame:
        if self.role is Role.SERVER:
            if obj is None:
                return _HEARTBEAT
            if type(obj) is tuple and len(obj) in (6, 7) and obj[0] == "PING":
                return parse_ping(obj)
            return parse_event(obj, max_decompressed_bytes=self.max_decompressed_bytes,
                               max_entries=self.max_entries)
        if type(obj) is dict and "ack" in obj:
            chunk = obj["ack"]
            if not isinstance(chunk, (str, bytes)):
                raise MalformedFrame("ack value must be a str or bin chunk id")
            return Ack(chunk)
        if type(obj) is tuple and obj and obj[0] in _HANDSHAKE_PARSERS:
            return _HANDSHAKE_PARSERS[obj[0]](obj)  # which checks the rest of its shape
        raise MalformedFrame(f"unexpected {type(obj).__name__} from the server "
                             "(expected an ack map, HELO or PONG)")


_HEAD = 32
#: The header kinds of raw bytes: a tag or the entries may come as a str or a bin.
_RAW = ("str", "bin")


def _read_head(head: bytes) -> tuple[int | None, bool]:
    """What a frame starting with ``head`` says of itself, from its top array header,
    its tag and its second element's header: the least size it claims, ``[tag,
    str/bin, ...]`` (None when those are not all there yet or the shape is another
    one), and whether it is Message or Forward, not PackedForward (False while that
    cannot be told yet; True for what is no event frame at all: it will fail, it gets
    no big budget)."""
    top = read_header(head, 0)
    if top is None or top[0] != "array":
        return None, True
    tag = read_header(head, top[2])
    if tag is None:
        return None, False
    raw_tag = tag[0] in _RAW
    at = top[2] + tag[2] + tag[1]
    second = read_header(head, at)
    if second is None:
        return (at if raw_tag and at > len(head) else None), False
    if second[0] not in _RAW:
        return None, True
    return (at + second[2] + second[1] if raw_tag else None), False


# -- event parsing and entry validation --------------------------------------------


def parse_event(obj: Any, *, max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
                max_entries: int = DEFAULT_MAX_ENTRIES) -> EventFrame:
    """Turn one decoded msgpack object into an ``EventFrame``, or raise ``MalformedFrame``."""
    if type(obj) is not tuple or len(obj) < 2:
        raise MalformedFrame("an event frame must be an array of at least 2 elements")
    tag, second = obj[0], obj[1]
    if type(tag) is not str:
        raise MalformedFrame("the tag (element 0) must be a str")
    if type(second) in (bytes, str):
        return _parse_packed(tag, obj, max_decompressed_bytes, max_entries)
    if type(second) is tuple:
        opts = _options(obj, 2, "Forward")
        if len(second) > max_entries:
            raise TooManyEntries(f"frame carries {len(second)} entries, over max_entries "
                                 f"({max_entries})", max_entries)
        entries = b"".join(normal_entry(e) for e in second)
        return EventFrame(FrameKind.FORWARD, tag, entries, len(second), _chunk(opts))
    if len(obj) < 3:
        raise MalformedFrame("a Message frame is [tag, time, record, options?]")
    opts = _options(obj, 3, "Message")
    entry = packb((normal_time(second), check_record(obj[2])))
    return EventFrame(FrameKind.MESSAGE, tag, entry, 1, _chunk(opts))


def _options(obj: tuple[Any, ...], index: int, mode: str) -> dict[str, Any]:
    """The options map of a frame whose last element is at ``index``."""
    if len(obj) > index + 1:
        raise MalformedFrame(f"a {mode} frame has at most {index + 1} elements")
    if len(obj) <= index or obj[index] is None:  # nil options: Docker 18 sends them
        return {}
    opts = obj[index]
    if type(opts) is not dict:
        raise MalformedFrame("options must be a map")
    return opts


def _chunk(opts: dict[str, Any]) -> str | bytes | None:
    chunk = opts.get("chunk")
    if chunk is not None:
        if type(chunk) not in (str, bytes):
            raise MalformedFrame("option chunk must be a str")
        if len(chunk) > MAX_CHUNK_ID_BYTES:
            raise MalformedFrame(f"option chunk is {len(chunk)} long, over the "
                                 f"{MAX_CHUNK_ID_BYTES} a chunk id may be")
    return chunk


def _parse_packed(tag: str, obj: tuple[Any, ...], max_decompressed: int,
                  max_entries: int) -> EventFrame:
    opts = _options(obj, 2, "PackedForward")
    payload = obj[1]
    if type(payload) is str:  # legacy PackedForward in a str: same bytes back
        payload = payload.encode("utf-8", "surrogateescape")
    kind = FrameKind.PACKED_FORWARD
    compressed = opts.get("compressed")
    # As Fluent Bit does: when an options map is present, the gzip magic wins.
    if compressed == "gzip" or (opts and payload[:2] == b"\x1f\x8b"):
        payload = _gunzip(payload, max_decompressed)
        kind = FrameKind.COMPRESSED_PACKED_FORWARD
    elif compressed is not None and payload[:4] == b"\x28\xb5\x2f\xfd":
        raise MalformedFrame("zstd-compressed frames are not supported; use gzip")
    size = opts.get("size")
    entries, count = validate_entries(payload, max_entries=max_entries,
                                      count_hint=size if type(size) is int else None)
    return EventFrame(kind, tag, entries, count, _chunk(opts))


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate gzip data (maybe several members), never past ``limit`` bytes."""
    out: list[bytes] = []
    total = 0
    while data:
        d = zlib.decompressobj(31)
        try:
            piece = d.decompress(data, limit - total + 1)
        except zlib.error as exc:
            raise MalformedFrame(f"bad gzip payload: {exc}") from exc
        total += len(piece)
        if total > limit:
            raise DecompressedTooLarge(
                f"payload inflates past max_decompressed_bytes ({limit})", limit)
        if not d.eof:
            raise MalformedFrame("truncated gzip payload")
        out.append(piece)
        data = d.unused_data
    return b"".join(out)

