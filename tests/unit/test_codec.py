"""fluent_forward.codec: golden bytes, the incremental decoder, limits, entries, chunk ids.

Expected bytes are written by hand from the msgpack spec, so these tests do not
depend on msgpack-python's packer agreeing with itself.
"""

from __future__ import annotations

import base64
import gzip
import time
import zlib
from typing import Any

import msgpack
import pytest
from fluent.sender import EventTime as FluentEventTime
from hypothesis import given, settings
from hypothesis import strategies as st

from fluent_forward.codec import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    Ack,
    EventFrame,
    Frame,
    FrameDecoder,
    FrameKind,
    Heartbeat,
    Role,
    encode_ack,
    encode_packed_forward,
    packed_forward_parts,
    parse_event,
)
from fluent_forward.conventions import chunk_id, parse_chunk_id
from fluent_forward.entries import (
    EventTime,
    event_time_bytes,
    iter_entries,
    pack_entry,
    split_entries,
    time_to_ns,
    validate_entries,
)
from fluent_forward.errors import (
    DecompressedTooLarge,
    FrameTooLarge,
    HandshakeError,
    MalformedFrame,
    ProtocolError,
    TooManyEntries,
    UsageError,
)
from fluent_forward.handshake import Helo, Ping, Pong
from tests.frames import (
    encode_compressed_packed_forward,
    encode_forward,
    encode_message,
    make_options,
)

# -- hand-written msgpack ------------------------------------------------------------

#: [1, {"a": "b"}]
ENTRY_A = b"\x92\x01\x81\xa1a\xa1b"
#: [2, {}]
ENTRY_B = b"\x92\x02\x80"
#: EventTime(1, 2): fixext8, type 0, uint32 BE seconds, uint32 BE nanoseconds.
ET_1_2 = b"\xd7\x00\x00\x00\x00\x01\x00\x00\x00\x02"
#: EventTime(1, 500_000_000) and EventTime(1, 250_000_000)
ET_1_HALF = b"\xd7\x00\x00\x00\x00\x01\x1d\xcd\x65\x00"
ET_1_QUARTER = b"\xd7\x00\x00\x00\x00\x01\x0e\xe6\xb2\x80"
#: EventTime(5, 7)
ET_5_7 = b"\xd7\x00\x00\x00\x00\x05\x00\x00\x00\x07"
#: [EventTime(1, 2), {"a": "b"}]
ENTRY_ET = b"\x92" + ET_1_2 + b"\x81\xa1a\xa1b"
#: Fluent Bit v2 shape: [[3, {"m": 1}], {"a": "b"}]
ENTRY_V2 = b"\x92\x92\x03\x81\xa1m\x01\x81\xa1a\xa1b"
#: Fluent Bit v2 shape with an EventTime: [[EventTime(1, 2), {}], {"a": "b"}]
ENTRY_V2_ET = b"\x92\x92" + ET_1_2 + b"\x80\x81\xa1a\xa1b"
#: float64 1.5 and float32 1.25 (IEEE 754, big-endian)
F64_1_5 = b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"
F32_1_25 = b"\xca\x3f\xa0\x00\x00"
#: {"chunk": "abc"}
OPT_CHUNK = b"\x81\xa5chunk\xa3abc"
#: a chunk id as fluent-logger makes them (Base64 of 16 bytes, 24 chars)
CHUNK24 = "p8n9gmxTQVC8/nh2wlKKeQ=="
#: a str holding bytes that are not UTF-8, as a peer may send
BAD_UTF8_STR = b"\xa2\xff\xfe"


def feed_in_steps(decoder: FrameDecoder, data: bytes, step: int) -> list[Frame]:
    frames: list[Frame] = []
    for i in range(0, len(data), step):
        frames.extend(decoder.feed(data[i:i + step]))
    return frames


def packed_frame(entries: bytes, options: bytes = b"") -> bytes:
    """[tag, bin8(entries), options?] by hand."""
    assert len(entries) < 0x100
    head = b"\x93" if options else b"\x92"
    return head + b"\xa3tag\xc4" + bytes((len(entries),)) + entries + options


# -- golden bytes: encoders ------------------------------------------------------------


def test_message_golden_bytes() -> None:
    assert encode_message("tag", 1, {"a": "b"}) == b"\x93\xa3tag\x01\x81\xa1a\xa1b"


def test_message_golden_bytes_with_event_time_and_chunk() -> None:
    frame = encode_message("tag", EventTime(1, 2), {"a": "b"}, make_options(chunk="abc"))
    assert frame == b"\x94\xa3tag" + ET_1_2 + b"\x81\xa1a\xa1b" + OPT_CHUNK


def test_forward_golden_bytes() -> None:
    frame = encode_forward("tag", [(1, {"a": "b"}), (2, {})])
    assert frame == b"\x92\xa3tag\x92" + ENTRY_A + ENTRY_B


def test_forward_golden_bytes_with_options() -> None:
    frame = encode_forward("tag", [(1, {"a": "b"})], make_options(chunk="abc", size=1))
    assert frame == b"\x93\xa3tag\x91" + ENTRY_A + b"\x82\xa5chunk\xa3abc\xa4size\x01"


def test_forward_golden_bytes_empty() -> None:
    assert encode_forward("tag", []) == b"\x92\xa3tag\x90"


def test_pack_entry_golden_bytes() -> None:
    assert pack_entry(1, {"a": "b"}) == ENTRY_A
    assert pack_entry(EventTime(1, 2), {"a": "b"}) == ENTRY_ET


def test_packed_forward_golden_bytes() -> None:
    frame = encode_packed_forward("tag", ENTRY_A + ENTRY_B)
    assert frame == b"\x92\xa3tag\xc4\x0a" + ENTRY_A + ENTRY_B


def test_packed_forward_golden_bytes_with_options() -> None:
    frame = encode_packed_forward("tag", ENTRY_A + ENTRY_B, make_options(chunk="abc", size=2))
    assert frame == (b"\x93\xa3tag\xc4\x0a" + ENTRY_A + ENTRY_B
                     + b"\x82\xa5chunk\xa3abc\xa4size\x02")


@pytest.mark.parametrize("options", [None, {}, {"chunk": "abc", "size": 2}])
def test_packed_forward_parts_are_the_frame_with_the_entries_not_copied(
        options: dict[str, Any] | None) -> None:
    entries = ENTRY_A + ENTRY_B
    parts = packed_forward_parts("tag", entries, options)
    assert b"".join(parts) == encode_packed_forward("tag", entries, options)
    assert parts[1] is entries  # the sender writes the batch's own bytes


def test_packed_forward_empty_options_map_is_still_sent() -> None:
    assert encode_packed_forward("tag", ENTRY_B, {}) == b"\x93\xa3tag\xc4\x03" + ENTRY_B + b"\x80"


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\xc4\x00"),
    (255, b"\xc4\xff"),
    (256, b"\xc5\x01\x00"),
    (65535, b"\xc5\xff\xff"),
    (65536, b"\xc6\x00\x01\x00\x00"),
])
def test_packed_forward_bin_header_widths(size: int, header: bytes) -> None:
    payload = b"\xc0" * size
    frame = encode_packed_forward("tag", payload)
    assert frame == b"\x92\xa3tag" + header + payload


def test_compressed_packed_forward_bytes() -> None:
    entries = ENTRY_A + ENTRY_B
    frame = encode_compressed_packed_forward("tag", entries, make_options(chunk="abc"))
    assert frame[:6] == b"\x93\xa3tag\xc4"
    n = frame[6]
    gz = frame[7:7 + n]
    assert gz[:3] == b"\x1f\x8b\x08"  # gzip magic + deflate
    assert gzip.decompress(gz) == entries
    assert frame[7 + n:] == b"\x82\xa5chunk\xa3abc\xaacompressed\xa4gzip"


def test_compressed_packed_forward_without_options_adds_compressed() -> None:
    frame = encode_compressed_packed_forward("tag", ENTRY_A)
    n = frame[6]
    assert frame[:6] == b"\x93\xa3tag\xc4"
    assert gzip.decompress(frame[7:7 + n]) == ENTRY_A
    assert frame[7 + n:] == b"\x81\xaacompressed\xa4gzip"


def test_compressed_packed_forward_does_not_mutate_the_callers_options() -> None:
    opts = make_options(chunk="abc")
    encode_compressed_packed_forward("tag", ENTRY_A, opts)
    assert opts == {"chunk": "abc"}


@pytest.mark.parametrize(("chunk", "expected"), [
    ("abc", b"\x81\xa3ack\xa3abc"),
    (b"abc", b"\x81\xa3ack\xc4\x03abc"),
    (CHUNK24, b"\x81\xa3ack\xb8" + CHUNK24.encode()),
])
def test_ack_golden_bytes(chunk: str | bytes, expected: bytes) -> None:
    assert encode_ack(chunk) == expected


def test_make_options_keeps_only_given_keys() -> None:
    assert make_options() == {}
    assert make_options(size=0) == {"size": 0}
    assert make_options(chunk=CHUNK24, size=4097, compressed="gzip") == {
        "chunk": CHUNK24, "size": 4097, "compressed": "gzip"}


def test_options_golden_bytes_chunk_size_compressed() -> None:
    opts = make_options(chunk=CHUNK24, size=4097, compressed="gzip")
    frame = encode_forward("t", [], opts)
    assert frame == (b"\x93\xa1t\x90\x83"
                     b"\xa5chunk\xb8" + CHUNK24.encode()
                     + b"\xa4size\xcd\x10\x01"
                     b"\xaacompressed\xa4gzip")


# -- EventTime -------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "nanos"), [
    (0, 0), (1, 2), (1_700_000_000, 123_456_789), (0xFFFFFFFF, 999_999_999)])
def test_event_time_bytes_equal_fluent_loggers(seconds: int, nanos: int) -> None:
    ours = msgpack.packb(EventTime(seconds, nanos))
    theirs = msgpack.packb(FluentEventTime(seconds, nanos))
    assert ours == theirs
    ns = seconds * 1_000_000_000 + nanos
    assert msgpack.packb(EventTime.from_ns(ns)) == msgpack.packb(
        FluentEventTime.from_unix_nano(ns))


def test_event_time_layout() -> None:
    packed = msgpack.packb(EventTime(0x01020304, 0x05060708))
    assert packed == b"\xd7\x00\x01\x02\x03\x04\x05\x06\x07\x08"
    assert msgpack.packb(EventTime(1, 2)) == ET_1_2


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000, 1_764_189_435_123_456_789,
                                0xFFFFFFFF * 1_000_000_000 + 999_999_999])
def test_event_time_ns_round_trip(ns: int) -> None:
    et = EventTime.from_ns(ns)
    assert time_to_ns(et) == ns
    assert event_time_bytes(ns) == msgpack.packb(et)
    decoded = msgpack.unpackb(msgpack.packb(et))
    assert time_to_ns(decoded) == ns


def test_event_time_keeps_nanoseconds_through_the_decoder() -> None:
    frame = encode_message("tag", EventTime(1, 999_999_999), {})
    [ev] = FrameDecoder(Role.SERVER).feed(frame)
    assert isinstance(ev, EventFrame)
    assert ev.entries == b"\x92\xd7\x00\x00\x00\x00\x01\x3b\x9a\xc9\xff\x80"


def test_time_to_ns_of_integer_seconds() -> None:
    assert time_to_ns(5) == 5_000_000_000


@pytest.mark.parametrize(("seconds", "nanos"), [(-1, 0), (2**32, 0), (0, 1_000_000_000),
                                                (0, -1)])
def test_event_time_out_of_range(seconds: int, nanos: int) -> None:
    with pytest.raises(UsageError, match="out of range"):
        EventTime(seconds, nanos)


def test_event_time_from_negative_ns() -> None:
    with pytest.raises(UsageError):
        EventTime.from_ns(-1)


# -- chunk ids -------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 2**32, 2**64 - 1])
def test_chunk_id_round_trip(seq: int) -> None:
    boot = bytes(range(8))
    cid = chunk_id(boot, seq)
    assert len(cid) == 24
    assert base64.b64decode(cid) == boot + seq.to_bytes(8, "big")
    assert parse_chunk_id(cid) == (boot, seq)


def test_chunk_id_golden() -> None:
    assert chunk_id(b"ABCDEFGH", 1) == "QUJDREVGR0gAAAAAAAAAAQ=="


def test_chunk_id_needs_an_8_byte_boot_id() -> None:
    with pytest.raises(UsageError, match="8 bytes"):
        chunk_id(b"short", 1)


@pytest.mark.parametrize("foreign", [
    None, 123, b"QUJDREVGR0gAAAAAAAAAAQ==", "", "abc", "A" * 24, "!" * 24,
    "\u00e9" * 24, "QUJDREVGR0gAAAAAAAAAAQ=", "QUJDREVGR0gAAAAAAAAAAQ===",
])
def test_parse_chunk_id_foreign_gives_none(foreign: Any) -> None:
    assert parse_chunk_id(foreign) is None


# -- the decoder: every frame kind, fed whole, byte by byte, and with trailing data ------

_GZ = gzip.compress(ENTRY_A + ENTRY_B)
_HELO_FB = (b"\x92\xa4HELO\x82\xa5nonce\xb0" + bytes(range(0xF0, 0x100))
            + b"\xa4auth\xb0" + bytes(range(0x80, 0x90)))

SERVER_CASES: list[tuple[str, bytes, Frame]] = [
    ("message", b"\x94\xa3tag\x01\x81\xa1a\xa1b" + OPT_CHUNK,
     EventFrame(FrameKind.MESSAGE, "tag", ENTRY_A, 1, "abc")),
    ("message-event-time", b"\x93\xa3tag" + ET_1_2 + b"\x81\xa1a\xa1b",
     EventFrame(FrameKind.MESSAGE, "tag", ENTRY_ET, 1)),
    ("message-nil-options", b"\x94\xa3tag\x01\x81\xa1a\xa1b\xc0",
     EventFrame(FrameKind.MESSAGE, "tag", ENTRY_A, 1)),
    ("forward", b"\x93\xa3tag\x92" + ENTRY_A + ENTRY_B + OPT_CHUNK,
     EventFrame(FrameKind.FORWARD, "tag", ENTRY_A + ENTRY_B, 2, "abc")),
    ("forward-event-time-and-v2", b"\x92\xa3tag\x92" + ENTRY_ET + ENTRY_V2,
     EventFrame(FrameKind.FORWARD, "tag", ENTRY_ET + ENTRY_V2, 2)),
    ("packed-forward", packed_frame(ENTRY_A + ENTRY_B, OPT_CHUNK),
     EventFrame(FrameKind.PACKED_FORWARD, "tag", ENTRY_A + ENTRY_B, 2, "abc")),
    ("packed-forward-v2", packed_frame(ENTRY_V2 + ENTRY_ET + ENTRY_V2_ET),
     EventFrame(FrameKind.PACKED_FORWARD, "tag", ENTRY_V2 + ENTRY_ET + ENTRY_V2_ET, 3)),
    ("packed-forward-legacy-str", b"\x92\xa3tag\xaa" + ENTRY_A + ENTRY_B,
     EventFrame(FrameKind.PACKED_FORWARD, "tag", ENTRY_A + ENTRY_B, 2)),
    ("packed-forward-bin-chunk", packed_frame(ENTRY_B, b"\x81\xa5chunk\xc4\x03abc"),
     EventFrame(FrameKind.PACKED_FORWARD, "tag", ENTRY_B, 1, b"abc")),
    ("compressed-packed-forward",
     packed_frame(_GZ, b"\x82\xaacompressed\xa4gzip\xa5chunk\xa3abc"),
     EventFrame(FrameKind.COMPRESSED_PACKED_FORWARD, "tag", ENTRY_A + ENTRY_B, 2, "abc")),
    ("compressed-sniffed-by-magic", packed_frame(_GZ, OPT_CHUNK),
     EventFrame(FrameKind.COMPRESSED_PACKED_FORWARD, "tag", ENTRY_A + ENTRY_B, 2, "abc")),
    ("compressed-two-gzip-members",
     packed_frame(gzip.compress(ENTRY_A) + gzip.compress(ENTRY_B),
                  b"\x81\xaacompressed\xa4gzip"),
     EventFrame(FrameKind.COMPRESSED_PACKED_FORWARD, "tag", ENTRY_A + ENTRY_B, 2)),
    ("ping", b"\x96\xa4PING\xa3cli\xa4salt\xa6digest\xa0\xa0",
     Ping("cli", b"salt", "digest", "", "", "")),
    ("ping-with-version", b"\x97\xa4PING\xa3cli\xa4salt\xa6digest\xa1u\xa2pw\xa31.0",
     Ping("cli", b"salt", "digest", "u", "pw", "1.0")),
    ("nil-heartbeat", b"\xc0", Heartbeat()),
]

CLIENT_CASES: list[tuple[str, bytes, Frame]] = [
    ("helo", b"\x92\xa4HELO\x83\xa5nonce\xa3abc\xa4auth\xa0\xa9keepalive\xc3",
     Helo(b"abc", b"", True, "")),
    ("helo-fluent-bit-raw-bytes", _HELO_FB,
     Helo(bytes(range(0xF0, 0x100)), bytes(range(0x80, 0x90)), True, "")),
    ("helo-bin-nonce-relay-version",
     b"\x92\xa4HELO\x84\xa5nonce\xc4\x02\x00\xff\xa4auth\xa0\xa9keepalive\xc2"
     b"\xadrelay_version\xa32.0",
     Helo(b"\x00\xff", b"", False, "2.0")),
    ("pong", b"\x95\xa4PONG\xc3\xa0\xa3srv\xa2ab", Pong(True, "", "srv", "ab")),
    ("pong-refused", b"\x95\xa4PONG\xc2\xa3bad\xa0\xa0", Pong(False, "bad", "", "")),
    ("ack-str", b"\x81\xa3ack\xa3abc", Ack("abc")),
    ("ack-bin", b"\x81\xa3ack\xc4\x03abc", Ack(b"abc")),
]

ALL_CASES = ([pytest.param(Role.SERVER, data, frame, id=f"server-{name}")
              for name, data, frame in SERVER_CASES]
             + [pytest.param(Role.CLIENT, data, frame, id=f"client-{name}")
                for name, data, frame in CLIENT_CASES])

#: A second frame to follow the one under test, per role.
OTHER: dict[Role, tuple[bytes, Frame]] = {
    Role.SERVER: (b"\x93\xa5other\x02\x80", EventFrame(FrameKind.MESSAGE, "other", ENTRY_B, 1)),
    Role.CLIENT: (b"\x81\xa3ack\xa5other", Ack("other")),
}


@pytest.mark.parametrize(("role", "data", "expected"), ALL_CASES)
def test_decode_whole(role: Role, data: bytes, expected: Frame) -> None:
    decoder = FrameDecoder(role)
    assert decoder.feed(data) == [expected]
    assert decoder.buffered == 0


@pytest.mark.parametrize(("role", "data", "expected"), ALL_CASES)
def test_decode_byte_by_byte(role: Role, data: bytes, expected: Frame) -> None:
    decoder = FrameDecoder(role)
    for i in range(len(data) - 1):
        assert decoder.feed(data[i:i + 1]) == [], f"frame completed early at byte {i}"
        assert decoder.buffered == i + 1  # every byte of the unfinished frame counts
    assert decoder.feed(data[-1:]) == [expected]
    assert decoder.buffered == 0


@pytest.mark.parametrize(("role", "data", "expected"), ALL_CASES)
def test_decode_with_a_trailing_frame(role: Role, data: bytes, expected: Frame) -> None:
    other, other_frame = OTHER[role]
    decoder = FrameDecoder(role)
    assert decoder.feed(data + other) == [expected, other_frame]
    assert decoder.feed(other + data) == [other_frame, expected]
    assert decoder.buffered == 0


@pytest.mark.parametrize(("role", "data", "expected"), ALL_CASES)
def test_decode_with_a_partial_trailing_frame(role: Role, data: bytes,
                                              expected: Frame) -> None:
    other, other_frame = OTHER[role]
    for cut in range(1, len(other)):
        decoder = FrameDecoder(role)
        assert decoder.feed(data + other[:cut]) == [expected]
        assert decoder.feed(other[cut:]) == [other_frame]


@pytest.mark.parametrize(("role", "data", "expected"), ALL_CASES)
def test_decode_split_into_uneven_pieces(role: Role, data: bytes, expected: Frame) -> None:
    stream = data + data
    for step in (2, 3, 7):
        assert feed_in_steps(FrameDecoder(role), stream, step) == [expected, expected]


@pytest.mark.parametrize("before", [b"", b"\x93\xa3t"], ids=["fresh", "mid-frame"])
def test_empty_feed_returns_nothing(before: bytes) -> None:
    decoder = FrameDecoder(Role.SERVER)
    assert decoder.feed(before) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x93\xa3tag\x02\x80"[len(before):]) == [
        EventFrame(FrameKind.MESSAGE, "tag", ENTRY_B, 1)]


def test_compressed_encoder_round_trips_through_the_decoder() -> None:
    entries = b"".join(pack_entry(i, {"k": "v" * i}) for i in range(50))
    frame = encode_compressed_packed_forward("app.x", entries, make_options(chunk=CHUNK24))
    assert FrameDecoder(Role.SERVER).feed(frame) == [
        EventFrame(FrameKind.COMPRESSED_PACKED_FORWARD, "app.x", entries, 50, CHUNK24)]


# -- entries: shapes, normalisation, identity -------------------------------------------


@pytest.mark.parametrize("entries", [
    pytest.param(ENTRY_A + ENTRY_B, id="int-times"),
    pytest.param(ENTRY_ET + ENTRY_ET, id="event-times"),
    pytest.param(ENTRY_A + ENTRY_ET + ENTRY_B, id="mixed-times"),
    pytest.param(b"\x92\xce\x00\x00\x00\x01\x80", id="non-minimal-uint32-time"),
    pytest.param(b"\x92\x01\x81\xa1x\xca\x3f\xa0\x00\x00", id="float32-record-value"),
    pytest.param(ENTRY_V2 + ENTRY_V2, id="fluent-bit-v2-shape"),
    pytest.param(ENTRY_V2_ET, id="fluent-bit-v2-event-time"),
    pytest.param(b"\x92\x92\xce\x00\x00\x00\x03\x80\x80", id="v2-non-minimal-time"),
    pytest.param(b"\x92\x92\x03\x80\x81\xa1x\xca\x3f\xa0\x00\x00", id="v2-float32-value"),
])
def test_packed_entries_needing_no_change_are_the_same_bytes_object(entries: bytes) -> None:
    frame = parse_event(("tag", entries))
    assert frame.kind is FrameKind.PACKED_FORWARD
    assert frame.entries is entries
    out, count = validate_entries(entries)
    assert out is entries
    unpacker = msgpack.Unpacker()
    unpacker.feed(entries)
    assert count == len(list(unpacker))


def test_validate_entries_empty() -> None:
    data = b""
    out, count = validate_entries(data)
    assert (out, count) == (b"", 0)


NORMALISED_TIMES = [
    pytest.param(F64_1_5, ET_1_HALF, id="float64"),
    pytest.param(F32_1_25, ET_1_QUARTER, id="float32"),
]
TIMESTAMP_TIMES = [
    pytest.param(b"\xd6\xff\x00\x00\x00\x05", b"\xd7\x00\x00\x00\x00\x05\x00\x00\x00\x00",
                 id="timestamp32"),
    pytest.param(b"\xd7\xff\x00\x00\x00\x1c\x00\x00\x00\x05", ET_5_7, id="timestamp64"),
    pytest.param(b"\xc7\x0c\xff\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x05", ET_5_7,
                 id="timestamp96"),
]


@pytest.mark.parametrize(("raw", "normal"), NORMALISED_TIMES + TIMESTAMP_TIMES)
def test_packed_time_is_normalised_to_event_time(raw: bytes, normal: bytes) -> None:
    entries = b"\x92" + raw + b"\x80" + ENTRY_A
    [ev] = FrameDecoder(Role.SERVER).feed(packed_frame(entries))
    assert isinstance(ev, EventFrame)
    assert ev.entries == b"\x92" + normal + b"\x80" + ENTRY_A
    assert ev.count == 2


@pytest.mark.parametrize(("raw", "normal"), NORMALISED_TIMES + TIMESTAMP_TIMES)
def test_forward_time_is_normalised_to_event_time(raw: bytes, normal: bytes) -> None:
    frame = b"\x92\xa3tag\x92\x92" + raw + b"\x80\x92\x92" + raw + b"\x80\x80"
    [ev] = FrameDecoder(Role.SERVER).feed(frame)
    assert isinstance(ev, EventFrame)
    assert ev.kind is FrameKind.FORWARD
    assert ev.entries == b"\x92" + normal + b"\x80" + b"\x92\x92" + normal + b"\x80\x80"


@pytest.mark.parametrize(("raw", "normal"), NORMALISED_TIMES + TIMESTAMP_TIMES)
def test_message_time_is_normalised_to_event_time(raw: bytes, normal: bytes) -> None:
    [ev] = FrameDecoder(Role.SERVER).feed(b"\x93\xa3tag" + raw + b"\x81\xa1a\xa1b")
    assert isinstance(ev, EventFrame)
    assert ev.entries == b"\x92" + normal + b"\x81\xa1a\xa1b"


def test_v2_header_float_time_is_normalised() -> None:
    entries, count = validate_entries(b"\x92\x92" + F64_1_5 + b"\x81\xa1m\x01\x80")
    assert (entries, count) == (b"\x92\x92" + ET_1_HALF + b"\x81\xa1m\x01\x80", 1)


def test_iter_entries_decodes_records() -> None:
    assert list(iter_entries(ENTRY_A + ENTRY_ET)) == [
        (1, {"a": "b"}), (msgpack.ExtType(0, ET_1_2[2:]), {"a": "b"})]


# -- invalid UTF-8 in a str is content, not an error --------------------------------------

@pytest.mark.parametrize(("frame", "entries"), [
    pytest.param(b"\x93\xa3tag\x01\x81\xa1k" + BAD_UTF8_STR,
                 b"\x92\x01\x81\xa1k" + BAD_UTF8_STR, id="message"),
    pytest.param(b"\x92\xa3tag\x91\x92\x01\x81\xa1k" + BAD_UTF8_STR,
                 b"\x92\x01\x81\xa1k" + BAD_UTF8_STR, id="forward"),
    pytest.param(b"\x92\xa3tag\xc4\x10\x92\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\x81\xa1k"
                 + BAD_UTF8_STR,
                 b"\x92\xd7\x00\x00\x00\x00\x01\x1d\xcd\x65\x00\x81\xa1k" + BAD_UTF8_STR,
                 id="packed-forward-normalised"),
    pytest.param(b"\x92\xa3tag\xc4\x08\x92\x01\x81\xa1k" + BAD_UTF8_STR,
                 b"\x92\x01\x81\xa1k" + BAD_UTF8_STR, id="packed-forward-as-is"),
])
def test_invalid_utf8_round_trips_to_the_same_bytes(frame: bytes, entries: bytes) -> None:
    [ev] = FrameDecoder(Role.SERVER).feed(frame)
    assert isinstance(ev, EventFrame)
    assert ev.entries == entries


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("step", [None, 1, 100], ids=["whole", "bytewise", "100"])
def test_big_packed_forward_frame_is_too_large(step: int | None) -> None:
    entries = b"".join(pack_entry(i, {"m": "x" * 40}) for i in range(100))
    frame = encode_packed_forward("tag", entries)
    decoder = FrameDecoder(Role.SERVER, max_frame_bytes=1000)
    with pytest.raises(FrameTooLarge) as info:
        feed_in_steps(decoder, frame, step or len(frame))
    assert info.value.limit == 1000
    assert decoder.buffered <= 1000


def test_big_str_in_a_message_is_too_large() -> None:
    frame = encode_message("tag", 1, {"m": "x" * 5000})
    decoder = FrameDecoder(Role.SERVER, max_frame_bytes=1000)
    with pytest.raises(FrameTooLarge):
        decoder.feed(frame)
    assert decoder.buffered <= 1000


@pytest.mark.parametrize("frame", [
    pytest.param(encode_message("tag", 1, {"m": "x" * 500}), id="message"),
    pytest.param(encode_forward("tag", [(i, {"m": "x" * 40}) for i in range(30)]),
                 id="forward"),
    pytest.param(encode_packed_forward("tag", b"".join(
        pack_entry(i, {"m": "x" * 40}) for i in range(30))), id="packed-forward"),
])
@pytest.mark.parametrize("step", [None, 1], ids=["whole", "bytewise"])
def test_frame_at_the_limit_is_accepted(frame: bytes, step: int | None) -> None:
    decoder = FrameDecoder(Role.SERVER, max_frame_bytes=len(frame))
    stream = frame + frame  # two frames, each exactly at the limit
    assert len(feed_in_steps(decoder, stream, step or len(stream))) == 2


_MANY = [(i, {"m": "x" * 40}) for i in range(100)]


@pytest.mark.parametrize(("frame", "step"), [
    pytest.param(encode_forward("tag", _MANY), None, id="forward-whole"),
    pytest.param(encode_forward("tag", _MANY), 1, id="forward-bytewise"),
    pytest.param(encode_forward("tag", _MANY), 333, id="forward-333"),
    pytest.param(encode_message("tag", 1, {f"k{i}": "x" * 40 for i in range(100)}), None,
                 id="message-many-keys"),
    pytest.param(encode_message("tag", 1, {f"k{i}": "x" * 40 for i in range(100)}), 1,
                 id="message-many-keys-bytewise"),
    pytest.param(encode_packed_forward("tag", b"".join(pack_entry(*e) for e in _MANY[:18])),
                 None, id="packed-one-byte-over"),
    pytest.param(encode_packed_forward("tag", b"".join(pack_entry(*e) for e in _MANY[:18])),
                 1, id="packed-one-byte-over-bytewise"),
])
def test_any_frame_over_max_frame_bytes_is_too_large(frame: bytes, step: int | None) -> None:
    limit = min(len(frame) - 1, 1000)
    decoder = FrameDecoder(Role.SERVER, max_frame_bytes=limit)
    with pytest.raises(FrameTooLarge) as info:
        feed_in_steps(decoder, frame, step or len(frame))
    assert info.value.limit == limit
    assert decoder.buffered <= limit


@pytest.mark.parametrize("header", [
    pytest.param(b"\xc6\xff\xff\xff\xf0", id="bin32"),
    pytest.param(b"\xdb\xff\xff\xff\xf0", id="str32"),
    pytest.param(b"\xc9\xff\xff\xff\xf0\x05", id="ext32"),
    pytest.param(b"\xdd\xff\xff\xff\xf0", id="array32"),
    pytest.param(b"\xdf\xff\xff\xff\xf0", id="map32"),
])
def test_header_claiming_gigabytes_is_too_large_without_buffering(header: bytes) -> None:
    limit = 64 * 1024
    decoder = FrameDecoder(Role.SERVER, max_frame_bytes=limit)
    start = time.monotonic()
    fed = 0
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\x92\xa3tag" + header)
        while fed <= 4 * limit:  # a decoder that waited for 4 GB would fail here
            decoder.feed(b"\x00" * 4096)
            fed += 4096
            assert decoder.buffered <= limit
    assert fed <= limit + 4096
    assert decoder.buffered <= limit
    assert time.monotonic() - start < 1.0


def test_gzip_bomb_is_decompressed_too_large() -> None:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = co.compress(bytes(50_000_000)) + co.flush()
    frame = encode_packed_forward("tag", bomb, make_options(compressed="gzip"))
    start = time.monotonic()
    decoder = FrameDecoder(Role.SERVER)
    with pytest.raises(DecompressedTooLarge) as info:
        decoder.feed(frame)
    assert info.value.limit == DEFAULT_MAX_DECOMPRESSED_BYTES
    assert time.monotonic() - start < 5.0


def test_gzip_members_add_up_to_decompressed_too_large() -> None:
    member = gzip.compress(bytes(600))
    frame = encode_packed_forward("tag", member + member, make_options(compressed="gzip"))
    with pytest.raises(DecompressedTooLarge):
        FrameDecoder(Role.SERVER, max_decompressed_bytes=1000).feed(frame)


def test_decompressed_at_the_limit_is_accepted() -> None:
    entries = b"".join(pack_entry(i, {}) for i in range(10))
    frame = encode_compressed_packed_forward("tag", entries)
    decoder = FrameDecoder(Role.SERVER, max_decompressed_bytes=len(entries))
    assert decoder.feed(frame)[0].entries == entries
    with pytest.raises(DecompressedTooLarge):
        FrameDecoder(Role.SERVER, max_decompressed_bytes=len(entries) - 1).feed(frame)


@pytest.mark.parametrize("encode", [
    pytest.param(lambda n: encode_forward("tag", [(i, {}) for i in range(n)]), id="forward"),
    pytest.param(lambda n: encode_packed_forward(
        "tag", b"".join(pack_entry(i, {}) for i in range(n))), id="packed-forward"),
    pytest.param(lambda n: encode_compressed_packed_forward(
        "tag", b"".join(pack_entry(i, {}) for i in range(n))), id="compressed"),
])
def test_too_many_entries(encode: Any) -> None:
    assert FrameDecoder(Role.SERVER, max_entries=3).feed(encode(3))[0].count == 3
    decoder = FrameDecoder(Role.SERVER, max_entries=3)
    with pytest.raises(TooManyEntries) as info:
        decoder.feed(encode(4))
    assert info.value.limit == 3


@pytest.mark.parametrize("limits", [
    {"max_frame_bytes": 0}, {"max_decompressed_bytes": 0}, {"max_entries": 0}])
def test_limits_must_be_positive(limits: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        FrameDecoder(Role.SERVER, **limits)


@pytest.mark.parametrize(("role", "limits", "data"), [
    (Role.SERVER, {}, b"\xc1"),
    (Role.SERVER, {"max_frame_bytes": 10}, encode_message("tag", 1, {"m": "x" * 20})),
    (Role.SERVER, {"max_entries": 1}, encode_forward("tag", [(1, {}), (2, {})])),
    (Role.SERVER, {"max_decompressed_bytes": 1}, encode_compressed_packed_forward("t", ENTRY_A)),
    (Role.CLIENT, {}, b"\x92\xa4HELO\x80"),
])
def test_decoder_refuses_feed_after_a_protocol_error(role: Role, limits: dict[str, int],
                                                     data: bytes) -> None:
    decoder = FrameDecoder(role, **limits)
    with pytest.raises(ProtocolError):
        decoder.feed(data)
    with pytest.raises(UsageError, match="after a protocol error"):
        decoder.feed(b"\xc0")
    with pytest.raises(UsageError):
        decoder.feed(b"")


# -- malformed input ---------------------------------------------------------------------

MALFORMED_SERVER = [
    ("root-map", b"\x81\xa1a\x01"),
    ("root-int", b"\x01"),
    ("root-str", b"\xa3abc"),
    ("root-bool", b"\xc3"),
    ("array-of-one", b"\x91\xa3tag"),
    ("tag-int", b"\x93\x01\x01\x80"),
    ("tag-bin", b"\x93\xc4\x03tag\x01\x80"),
    ("tag-nil", b"\x93\xc0\x01\x80"),
    ("second-map", b"\x93\xa3tag\x80\x80"),
    ("second-nil", b"\x93\xa3tag\xc0\x80"),
    ("message-options-int", b"\x94\xa3tag\x01\x80\x01"),
    ("message-options-array", b"\x94\xa3tag\x01\x80\x90"),
    ("forward-options-str", b"\x93\xa3tag\x90\xa1x"),
    ("packed-options-int", b"\x93\xa3tag\xc4\x03" + ENTRY_B + b"\x05"),
    ("message-chunk-int", b"\x94\xa3tag\x01\x80\x81\xa5chunk\x05"),
    ("forward-chunk-int", b"\x93\xa3tag\x90\x81\xa5chunk\x05"),
    ("packed-chunk-int", packed_frame(ENTRY_B, b"\x81\xa5chunk\x05")),
    ("message-too-short", b"\x92\xa3tag\x01"),
    ("message-too-long", b"\x95\xa3tag\x01\x80\x80\x80"),
    ("forward-too-long", b"\x94\xa3tag\x90\x80\x80"),
    ("packed-too-long", b"\x94\xa3tag\xc4\x03" + ENTRY_B + b"\x80\x80"),
    ("message-negative-time", b"\x93\xa3tag\xff\x80"),
    ("forward-negative-time", b"\x92\xa3tag\x91\x92\xff\x80"),
    ("packed-negative-time", packed_frame(b"\x92\xd0\x80\x80")),
    ("message-time-over-uint32", b"\x93\xa3tag\xcf\x00\x00\x00\x01\x00\x00\x00\x00\x80"),
    ("packed-time-over-uint32", packed_frame(b"\x92\xcf\x00\x00\x00\x01\x00\x00\x00\x00\x80")),
    ("message-negative-float-time", b"\x93\xa3tag\xcb\xbf\xf0\x00\x00\x00\x00\x00\x00\x80"),
    ("message-bool-time", b"\x93\xa3tag\xc3\x80"),
    ("packed-bool-time", packed_frame(b"\x92\xc3\x80")),
    ("packed-str-time", packed_frame(b"\x92\xa11\x80")),
    ("message-ext5-time", b"\x93\xa3tag\xd7\x05" + ET_1_2[2:] + b"\x80"),
    ("forward-ext5-time", b"\x92\xa3tag\x91\x92\xd7\x05" + ET_1_2[2:] + b"\x80"),
    ("packed-ext5-time", packed_frame(b"\x92\xd7\x05" + ET_1_2[2:] + b"\x80")),
    ("packed-ext0-short", packed_frame(b"\x92\xd6\x00\x00\x00\x00\x01\x80")),
    ("forward-ext0-nanos-too-big",
     b"\x92\xa3tag\x91\x92\xd7\x00\x00\x00\x00\x01\x3b\x9a\xca\x00\x80"),
    ("message-record-array", b"\x93\xa3tag\x01\x91\x01"),
    ("message-record-str", b"\x93\xa3tag\x01\xa1x"),
    ("forward-record-nil", b"\x92\xa3tag\x91\x92\x01\xc0"),
    ("packed-record-str", packed_frame(b"\x92\x01\xa1x")),
    ("forward-entry-not-array", b"\x92\xa3tag\x91\x01"),
    ("forward-entry-three", b"\x92\xa3tag\x91\x93\x01\x80\x80"),
    ("packed-entry-one", packed_frame(b"\x91\x01")),
    ("packed-entry-map", packed_frame(b"\x81\xa1a\x01")),
    ("v2-header-short", packed_frame(b"\x92\x91\x01\x80")),
    ("v2-metadata-not-map", packed_frame(b"\x92\x92\x01\x05\x80")),
    ("packed-truncated", packed_frame(ENTRY_A[:-1])),
    ("packed-truncated-second", packed_frame(ENTRY_A + ENTRY_B[:-1])),
    ("packed-trailing-garbage", packed_frame(ENTRY_A + b"\xc1")),
    ("packed-garbage", packed_frame(b"\xc1\xc1\xc1")),
    ("garbage-c1", b"\xc1"),
    ("garbage-c1-after-frame", b"\x93\xa3tag\x01\x80\xc1"),
    ("deeply-nested-arrays", b"\x91" * 5000),
    ("deeply-nested-record", b"\x93\xa3tag\x01\x81\xa1k" + b"\x91" * 5000),
    ("message-int-key", b"\x93\xa3tag\x01\x81\x01\xa1x"),
    ("forward-int-key", b"\x92\xa3tag\x91\x92\x01\x81\x01\xa1x"),
    ("packed-int-key", packed_frame(b"\x92\x01\x81\x01\xa1x")),
    ("options-int-key", b"\x94\xa3tag\x01\x80\x81\x01\x01"),
    ("bad-gzip", packed_frame(b"\x1f\x8bnot gzip", b"\x81\xaacompressed\xa4gzip")),
    ("truncated-gzip", packed_frame(_GZ[:-5], b"\x81\xaacompressed\xa4gzip")),
    ("gzip-then-garbage", packed_frame(_GZ + b"junk", b"\x81\xaacompressed\xa4gzip")),
    ("zstd", packed_frame(b"\x28\xb5\x2f\xfd\x00", b"\x81\xaacompressed\xa4zstd")),
    ("ping-with-int-field", b"\x96\xa4PING\x01\xa0\xa0\xa0\xa0"),
]

MALFORMED_CLIENT = [
    ("ack-int", b"\x81\xa3ack\x01"),
    ("ack-nil", b"\x81\xa3ack\xc0"),
    ("map-without-ack", b"\x81\xa3nak\xa1x"),
    ("nil", b"\xc0"),
    ("event-frame", b"\x93\xa3tag\x01\x80"),
    ("helo-without-nonce", b"\x92\xa4HELO\x80"),
    ("helo-empty-nonce", b"\x92\xa4HELO\x81\xa5nonce\xa0"),
    ("helo-options-array", b"\x92\xa4HELO\x90"),
    ("helo-keepalive-str", b"\x92\xa4HELO\x82\xa5nonce\xa1n\xa9keepalive\xa3yes"),
    ("helo-three", b"\x93\xa4HELO\x81\xa5nonce\xa1n\xc0"),
    ("pong-short", b"\x94\xa4PONG\xc3\xa0\xa0"),
    ("pong-result-int", b"\x95\xa4PONG\x01\xa0\xa0\xa0"),
    ("pong-int-field", b"\x95\xa4PONG\xc3\xa0\xa0\x01"),
    ("garbage", b"\xc1"),
    ("deeply-nested", b"\x91" * 5000),
    ("int-key", b"\x81\x01\xa1x"),
]


@pytest.mark.parametrize(("role", "data"), [
    *(pytest.param(Role.SERVER, d, id=f"server-{n}") for n, d in MALFORMED_SERVER),
    *(pytest.param(Role.CLIENT, d, id=f"client-{n}") for n, d in MALFORMED_CLIENT),
])
@pytest.mark.parametrize("step", [None, 1], ids=["whole", "bytewise"])
def test_malformed_input_raises_a_protocol_error(role: Role, data: bytes,
                                                 step: int | None) -> None:
    decoder = FrameDecoder(role)
    with pytest.raises(ProtocolError) as info:
        feed_in_steps(decoder, data, step or len(data))
    # Only the handshake parsers raise something other than MalformedFrame.
    assert isinstance(info.value, (MalformedFrame, HandshakeError))
    assert not isinstance(info.value, (FrameTooLarge, DecompressedTooLarge, TooManyEntries))


def test_deeply_nested_arrays_come_from_msgpack_stack_error() -> None:
    with pytest.raises(MalformedFrame, match="StackError") as info:
        FrameDecoder(Role.SERVER).feed(b"\x91" * 5000)
    assert isinstance(info.value.__cause__, msgpack.StackError)


def test_int_keys_are_rejected_by_strict_map_key() -> None:
    with pytest.raises(MalformedFrame) as info:
        validate_entries(b"\x92\x01\x81\x01\xa1x")
    assert isinstance(info.value.__cause__, ValueError)


def test_packed_event_time_with_nanoseconds_over_a_second_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        FrameDecoder(Role.SERVER).feed(
            packed_frame(b"\x92\xd7\x00\x00\x00\x00\x01\x3b\x9a\xca\x00\x80"))


def test_packed_frame_whose_entries_lie_between_valid_frames() -> None:
    good = b"\x93\xa3tag\x01\x80"
    decoder = FrameDecoder(Role.SERVER)
    assert len(decoder.feed(good)) == 1
    with pytest.raises(MalformedFrame):
        decoder.feed(packed_frame(ENTRY_A[:-1]) + good)


# -- split_entries ---------------------------------------------------------------------

_VARIED = [pack_entry(i, {"m": "x" * (i * 7 % 53)}) for i in range(60)]


@pytest.mark.parametrize("cap", [1, 20, 64, 100, 500, 10_000])
def test_split_entries_respects_the_cap_and_loses_nothing(cap: int) -> None:
    entries = b"".join(_VARIED)
    pieces = split_entries(entries, cap)
    assert b"".join(p for p, _ in pieces) == entries
    assert sum(n for _, n in pieces) == len(_VARIED)
    pos = 0
    for i, (piece, count) in enumerate(pieces):
        mine = _VARIED[pos:pos + count]
        assert b"".join(mine) == piece, "counts must match the entries in each piece"
        assert len(piece) <= cap or count == 1
        if i + 1 < len(pieces):  # greedy: the next entry would not have fitted
            assert len(piece) + len(_VARIED[pos + count]) > cap
        pos += count


def test_split_entries_keeps_a_huge_entry_alone() -> None:
    small, huge = pack_entry(1, {}), pack_entry(2, {"m": "x" * 1000})
    pieces = split_entries(small + small + huge + small, 100)
    assert pieces == [(small + small, 2), (huge, 1), (small, 1)]


def test_split_entries_one_piece_when_all_fit() -> None:
    entries = ENTRY_A + ENTRY_B + ENTRY_V2
    assert split_entries(entries, len(entries)) == [(entries, 3)]
    assert split_entries(b"", 100) == []


# -- properties ------------------------------------------------------------------------

_times = st.one_of(
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.builds(EventTime, st.integers(0, 0xFFFFFFFF), st.integers(0, 999_999_999)),
)
_records = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.text(max_size=20), st.integers(min_value=-(2**63), max_value=2**64 - 1)),
    max_size=5,
)
_entries = st.lists(st.tuples(_times, _records), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None, database=None)
@given(entries=_entries, cuts=st.lists(st.integers(min_value=0), max_size=10),
       chunk=st.one_of(st.none(), st.just(CHUNK24)))
def test_property_packed_entries_survive_any_split(
        entries: list[tuple[Any, dict[str, Any]]], cuts: list[int], chunk: str | None) -> None:
    packed = b"".join(pack_entry(t, r) for t, r in entries)
    frame = encode_packed_forward("tag", packed, make_options(chunk=chunk))
    points = sorted({c % (len(frame) + 1) for c in cuts} | {0, len(frame)})
    decoder = FrameDecoder(Role.SERVER)
    frames: list[Frame] = []
    for a, b in zip(points, points[1:], strict=False):
        frames.extend(decoder.feed(frame[a:b]))
    assert frames == [EventFrame(FrameKind.PACKED_FORWARD, "tag", packed, len(entries), chunk)]
    assert list(iter_entries(frames[0].entries)) == [(t, r) for t, r in entries]


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(data=st.binary(max_size=300), role=st.sampled_from(Role), step=st.integers(1, 64))
def test_property_arbitrary_bytes_raise_only_protocol_errors(data: bytes, role: Role,
                                                             step: int) -> None:
    decoder = FrameDecoder(role, max_frame_bytes=256, max_entries=50,
                           max_decompressed_bytes=4096)
    try:
        feed_in_steps(decoder, data, step)
    except ProtocolError:
        with pytest.raises(UsageError):
            decoder.feed(b"\xc0")
