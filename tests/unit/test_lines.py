"""The agent's hot path: line splitting and entry packing, as bytes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_side.lines import (
    ESCAPED,
    PARTIAL,
    TRUNCATED,
    EntryEncoder,
    LineSplitter,
    escape_line,
    unescape_line,
)
from fluent_forward.entries import EventTime
from fluent_forward.wire import str_header

NS = 1_764_189_435_123_456_789


def decode(entries: bytes) -> list[list[object]]:
    up = msgpack.Unpacker(raw=False, strict_map_key=True)
    up.feed(entries)
    return list(up)


def test_split_keeps_the_unfinished_tail_until_its_newline() -> None:
    sp = LineSplitter(100)
    assert sp.feed(b"one\ntw") == [b"one"]
    assert sp.pending == 2
    assert sp.feed(b"o\nthree\n") == [b"two", b"three"]
    assert sp.pending == 0


def test_split_byte_by_byte_gives_the_same_lines() -> None:
    data = b"alpha\nbeta\n\ngamma\n"
    sp = LineSplitter(100)
    out: list[object] = []
    for i in range(len(data)):
        out += sp.feed(data[i:i + 1])
    assert out == [b"alpha", b"beta", b"", b"gamma"]


def test_an_overlong_line_is_cut_flagged_and_the_next_line_survives() -> None:
    sp = LineSplitter(10)
    out = sp.feed(b"x" * 25)  # no newline yet: cut now, drop the rest until one comes
    assert out == [(b"x" * 10, TRUNCATED)]
    assert sp.feed(b"yyyy") == []
    assert sp.feed(b"zz\nnext\n") == [b"next"]
    assert sp.dropped_bytes == 15 + 4 + 2
    assert sp.truncated == 1


def test_an_overlong_complete_line_is_cut_in_place() -> None:
    sp = LineSplitter(4)
    assert sp.feed(b"ab\nabcdefgh\ncd\n") == [b"ab", (b"abcd", TRUNCATED), b"cd"]


def test_cut_does_not_split_a_utf8_character() -> None:
    sp = LineSplitter(4)
    line = "abé€".encode()  # a b (1) é (2) € (3)
    (kept, flags), = sp.feed(line + b"\n")
    assert flags == TRUNCATED
    assert kept == b"ab\xc3\xa9"  # backs off before the 3-byte €
    kept.decode("utf-8")


def test_flush_hands_out_the_partial_line_flagged() -> None:
    sp = LineSplitter(100)
    sp.feed(b"prompt> ")
    assert sp.flush() == [(b"prompt> ", PARTIAL)]
    assert sp.flush() == []


def test_encoder_packs_event_time_and_fields() -> None:
    enc = EntryEncoder({"stream": "stdout"})
    entries = enc.encode([b"hello", b""], NS)
    got = decode(entries)
    assert got == [[EventTime.from_ns(NS), {"log": "hello", "stream": "stdout"}],
                   [EventTime.from_ns(NS), {"log": "", "stream": "stdout"}]]
    # The time is an ext 0 EventTime, byte for byte.
    assert entries[1:11] == b"\xd7\x00" + (NS // 10**9).to_bytes(4, "big") + (
        NS % 10**9).to_bytes(4, "big")


@pytest.mark.parametrize("n", [0, 31, 32, 255, 256, 4095, 4096, 65535, 65536, 70000])
def test_str_headers_at_every_boundary_decode(n: int) -> None:
    line = b"a" * n
    packed = str_header(n) + line
    assert msgpack.unpackb(packed, raw=False) == "a" * n
    entries = EntryEncoder({"stream": "stderr"}).encode([line], NS)
    assert decode(entries)[0][1]["log"] == "a" * n


def test_invalid_utf8_is_escaped_reversibly_and_flagged() -> None:
    raw = b"caf\xe9 \\x41 \xff end"
    enc = EntryEncoder({"stream": "stdout"})
    (entry,) = decode(enc.encode([b"fine", raw], NS))[1:]
    record = entry[1]
    assert record["escaped"] is True
    assert "\\xe9" in record["log"] and "\\\\x41" in record["log"]
    assert unescape_line(record["log"]) == raw
    assert enc.escaped == 1


def test_valid_utf8_is_sent_unchanged() -> None:
    text = "ünïcödé ✓ \\ backslash"
    (entry,) = decode(EntryEncoder({"stream": "stdout"}).encode([text.encode()], NS))
    assert entry[1] == {"log": text, "stream": "stdout"}


def test_flags_become_fields() -> None:
    enc = EntryEncoder({"file": "/var/log/app.log"})
    got = decode(enc.encode([(b"cut", TRUNCATED), (b"half", PARTIAL),
                             (b"\xff", TRUNCATED | ESCAPED)], NS))
    assert got[0][1] == {"log": "cut", "file": "/var/log/app.log", "truncated": True}
    assert got[1][1] == {"log": "half", "file": "/var/log/app.log", "partial": True}
    assert got[2][1] == {"log": "\\xff", "file": "/var/log/app.log", "truncated": True,
                         "escaped": True}


def test_escape_line_output_is_always_utf8() -> None:
    every_byte = bytes(range(256))
    escaped = escape_line(every_byte)
    escaped.decode("utf-8")
    assert unescape_line(escaped.decode()) == every_byte


class _ReferenceSplitter(LineSplitter):
    """The splitter as first written: the carry glued to each read before splitting."""

    def feed(self, data: bytes) -> list[object]:  # type: ignore[override]
        if self._carry:
            data = self._carry + data
        self._carry = b""
        return super().feed(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12) | st.sampled_from([b"\n", b"\n\n", b"x" * 30]),
                max_size=30), st.integers(1, 20))
def test_splitting_reads_gives_what_splitting_their_concatenation_gives(
        reads: list[bytes], limit: int) -> None:
    new, ref = LineSplitter(limit), _ReferenceSplitter(limit)
    for data in reads:
        assert new.feed(data) == ref.feed(data)
        assert new.pending == ref.pending
    assert new.flush() == ref.flush()
    assert (new.dropped_bytes, new.truncated) == (ref.dropped_bytes, ref.truncated)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | st.sampled_from([b"\n", b"\xc3\xa9\n", b"x" * 30]),
                max_size=12))
def test_a_clean_read_says_so_and_its_lines_encode_the_same_without_looking(
        reads: list[bytes]) -> None:
    # ``clean`` lets the encoder skip checking the lines for flags and non-ASCII: it
    # must hold only when that check would have found nothing.
    splitter, enc = LineSplitter(max_line_bytes=24), EntryEncoder({"stream": "stdout"})
    for data in reads:
        items = splitter.feed(data)
        if splitter.clean:
            assert all(type(i) is bytes and i.isascii() for i in items)
            assert enc.encode(items, 5, clean=True) == enc.encode(items, 5)
    splitter.flush()
    assert not splitter.clean, "a flushed partial line is flagged: never clean"


def test_a_read_with_a_cut_line_or_non_ascii_is_not_clean() -> None:
    splitter = LineSplitter(max_line_bytes=8)
    splitter.feed(b"short\n")
    assert splitter.clean
    splitter.feed(b"far too long a line\n")
    assert not splitter.clean
    splitter.feed(b"caf\xc3\xa9\n")
    assert not splitter.clean
    splitter.feed(b"ok\nand an unfinished tail past the limit")
    assert not splitter.clean


@pytest.mark.parametrize("limit", [4094, 4095, 4096, 5000])
def test_lines_at_the_edge_of_the_header_table_are_cut_only_past_the_limit(limit: int) -> None:
    # With a limit of 4095 bytes or more the str headers double as the length check
    # (their table stops at 4095): a line of 4096 bytes must still be measured.
    short, long = [0, 31, 4094, 4095], [4096, 4097, 5000, 5001]
    new, ref = LineSplitter(limit), _ReferenceSplitter(limit)
    for lengths in (short, long):
        data = b"".join(b"x" * n + b"\n" for n in lengths)
        assert new.feed(data) == ref.feed(data)
    assert new.truncated == ref.truncated == sum(n > limit for n in short + long)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=12) | st.sampled_from(
    [b"\n", b"\xc3\xa9\n", b"x" * 4094, b"x" * 4095 + b"\n", b"x" * 4200]), max_size=12))
def test_the_headers_of_a_clean_read_are_its_lines_headers(reads: list[bytes]) -> None:
    splitter, enc = LineSplitter(max_line_bytes=8192), EntryEncoder({"file": "a.log"})
    for data in reads:
        items = splitter.feed(data)
        if splitter.headers is not None:
            assert splitter.clean
            assert splitter.headers == [str_header(len(i)) for i in items]  # type: ignore[arg-type]
            assert enc.encode(items, 5, clean=True, headers=splitter.headers) == enc.encode(
                items, 5)
