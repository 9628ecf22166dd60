"""Large PackedForward frames gathered outside msgpack's stream buffer
(fluent_forward.bulk, through FrameDecoder): the same frames as msgpack decodes, the
same limits, however the bytes are split."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluent_forward.bulk import BULK_MIN_BYTES, bulk_start
from fluent_forward.codec import (
    EventFrame,
    Frame,
    FrameDecoder,
    Role,
    encode_packed_forward,
    parse_event,
)
from fluent_forward.entries import pack_entry
from fluent_forward.errors import FrameTooLarge, MalformedFrame
from tests.frames import encode_message

ENTRY = pack_entry(1, {"log": "x" * 100})
#: entries just over the size that takes the gathered path
BIG = ENTRY * (BULK_MIN_BYTES // len(ENTRY) + 1)


def reference(stream: bytes) -> list[Frame]:
    """What msgpack makes of ``stream``, object by object, with no decoder state."""
    up = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", use_list=False,
                          strict_map_key=True, max_buffer_size=len(stream))
    up.feed(stream)
    return [parse_event(obj) for obj in up if obj is not None]  # None: a heartbeat


def feed(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[Frame]:
    frames: list[Frame] = []
    at = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
        frames.extend(decoder.feed(stream[at:cut]))
        at = cut
    return frames


frames = st.one_of(
    st.builds(lambda tag, n, opts: encode_packed_forward(tag, ENTRY * n, opts),
              st.text(max_size=80), st.integers(1, 2 * len(BIG) // len(ENTRY)),
              st.sampled_from([None, {}, {"chunk": "abc", "size": 1}, {"x": "y" * 5000}])),
    st.builds(lambda n: encode_message("small", n, {"log": "m"}), st.integers(0, 9)),
    st.just(b"\xc0"),  # a heartbeat
)


@settings(max_examples=60, deadline=None)
@given(st.lists(frames, min_size=1, max_size=6), st.lists(st.integers(0, 1 << 22), max_size=12))
def test_frames_split_anywhere_decode_as_msgpack_decodes_them(
        stream: list[bytes], cuts: list[int]) -> None:
    data = b"".join(stream)
    got = [f for f in feed(FrameDecoder(Role.SERVER), data, cuts)
           if isinstance(f, EventFrame)]
    assert got == reference(data)


def test_a_large_frame_after_a_small_one_in_the_same_read_is_gathered() -> None:
    decoder = FrameDecoder(Role.SERVER)
    small, big = encode_message("t", 1, {"a": "b"}), encode_packed_forward("t", BIG, {})
    assert len(decoder.feed(small + big[:1000])) == 1
    assert decoder._bulk is not None  # taken away from msgpack's buffer
    assert decoder.buffered == 1000  # and counted as the frame's bytes so far
    (frame,) = decoder.feed(big[1000:] + small[:3])
    assert isinstance(frame, EventFrame) and frame.entries == BIG
    assert decoder._bulk is None and decoder.buffered == 3
    assert len(decoder.feed(small[3:])) == 1


@pytest.mark.parametrize("step", [1, 4096, None], ids=["bytewise", "4096", "whole"])
def test_large_frames_at_the_limit_are_taken_and_one_byte_over_is_refused(
        step: int | None) -> None:
    frame = encode_packed_forward("t", BIG, {"chunk": "abc", "size": 3})
    ok = FrameDecoder(Role.SERVER, max_frame_bytes=len(frame))
    stream = frame + frame  # each exactly at the limit
    assert len(feed(ok, stream, list(range(0, len(stream), step or len(stream))))) == 2
    over = FrameDecoder(Role.SERVER, max_frame_bytes=len(frame) - 1)
    with pytest.raises(FrameTooLarge):
        feed(over, stream, list(range(0, len(stream), step or len(stream))))


def test_a_large_frame_claiming_more_than_the_limit_is_refused_from_its_header() -> None:
    frame = encode_packed_forward("t", BIG)
    decoder = FrameDecoder(Role.SERVER, max_frame_bytes=len(BIG) - 1)
    with pytest.raises(FrameTooLarge, match="claims"):
        decoder.feed(frame[:16])


def test_invalid_options_after_a_large_payload_are_malformed() -> None:
    frame = encode_packed_forward("t", BIG)
    broken = b"\x93" + frame[1:] + b"\xc1"  # options 0xC1: never used in msgpack
    with pytest.raises(MalformedFrame):
        FrameDecoder(Role.SERVER).feed(broken)


@pytest.mark.parametrize(("frame", "gathered"), [
    pytest.param(encode_packed_forward("t", BIG), True, id="packed"),
    pytest.param(encode_packed_forward("t" * 200, BIG, {}), True, id="long-tag"),
    pytest.param(encode_packed_forward("t", BIG[:BULK_MIN_BYTES - 1]), False, id="small"),
    pytest.param(encode_packed_forward("t" * 300, BIG), False, id="str16-tag"),
    pytest.param(msgpack.packb(["t", BIG.decode("latin-1")]), False, id="str-payload"),
    pytest.param(msgpack.packb(["t", BIG, {}, None]), False, id="four-elements"),
    pytest.param(encode_packed_forward("t", BIG)[:5], False, id="cut-header"),
])
def test_only_the_plain_large_shape_is_gathered(frame: bytes, gathered: bool) -> None:
    assert (bulk_start(memoryview(frame)) is not None) is gathered


def test_a_large_frame_sent_a_byte_at_a_time_is_held_in_one_buffer() -> None:
    # An object per read would let a peer sending bytes one by one make the relay
    # hold a few hundred bytes for each byte of a frame.
    frame = encode_packed_forward("t", BIG, {})
    decoder = FrameDecoder(Role.SERVER)
    assert decoder.feed(frame[:64]) == []  # the head in one read: the frame is gathered
    for i in range(64, len(frame) // 2):
        assert decoder.feed(frame[i:i + 1]) == []
    assert decoder._bulk is not None and len(decoder._bulk.parts) == 1
    (got,) = decoder.feed(frame[len(frame) // 2:])
    assert isinstance(got, EventFrame) and got.entries == BIG
