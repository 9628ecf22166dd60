"""validate_entries' fast path (one unpackb, C-level checks) agrees with the slow path.

The fast path decodes the entries as an array of ``count_hint`` (or ``skip()``-counted)
entries with ext times as ``slice`` objects; whenever it cannot say "valid as it is",
the entry-by-entry path (``_validate_slow``) decides. These tests pin the edges where
the two could differ: wrong hints, limits, key rules, ext shapes, time ranges, and, as a
property, any entries at all (with or without a hint) get the same verdict.

Every test runs twice: with the C entry check (``_entrycheck``, when the package was
built with it) answering first, and without it, as a relay installed without a C
compiler runs: the Python paths alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluent_forward import entries, fastpath
from fluent_forward.entries import validate_entries
from fluent_forward.errors import MalformedFrame, ProtocolError, TooManyEntries
from tests.helpers import c_entry_check

ENTRY_ET = b"\x92\xd7\x00\x00\x00\x00\x01\x00\x00\x00\x02\x81\xa3log\xa1x"
ENTRY_INT = b"\x92\x05\x81\xa1a\xa1b"
#: nanoseconds 999,999,999 (the largest valid) and 1,000,000,000 (one past it)
ET_MAX_NS = b"\xd7\x00\x00\x00\x00\x01\x3b\x9a\xc9\xff"
ET_1E9_NS = b"\xd7\x00\x00\x00\x00\x01\x3b\x9a\xca\x00"


@pytest.fixture(autouse=True, params=["python", "c"])
def entry_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[str]:
    if request.param == "python":
        monkeypatch.setattr(fastpath, "c_count", None)
    else:
        c_entry_check()
    yield request.param


def both(data: bytes, hint: int | None = None, max_entries: int = 1000) -> object:
    """The verdict of validate_entries and of the slow path: equal, or the same error."""
    def verdict(f: object) -> object:
        try:
            out, n = f()  # type: ignore[operator]
            return ("ok", out, n)
        except ProtocolError as exc:
            return ("error", type(exc))
    fast = verdict(lambda: validate_entries(data, max_entries=max_entries, count_hint=hint))
    slow = verdict(lambda: entries._validate_slow(data, max_entries))
    assert fast == slow
    return fast


@pytest.mark.parametrize("hint", [None, 0, 1, 2, 3, 4, -1, 10**9])
def test_any_hint_gives_the_slow_paths_answer(hint: int | None) -> None:
    data = ENTRY_ET * 3
    assert both(data, hint) == ("ok", data, 3)


def test_the_fast_path_returns_the_very_bytes_given() -> None:
    data = ENTRY_ET * 20 + ENTRY_INT
    out, n = validate_entries(data, count_hint=21)
    assert out is data and n == 21


def test_the_fast_path_is_taken_for_agent_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_slow(data: bytes, max_entries: int) -> None:
        raise AssertionError("slow path taken")
    monkeypatch.setattr(entries, "_validate_slow", no_slow)
    data = ENTRY_ET * 300  # over 16 and 65535-byte boundaries of the array header
    assert validate_entries(data) == (data, 300)
    assert validate_entries(data, count_hint=300) == (data, 300)
    assert validate_entries(ENTRY_ET * 70000, count_hint=70000)[1] == 70000


#: Entries the slow path refuses (test_entrycheck.py runs them through the C walk too).
INVALID = [
    pytest.param(ENTRY_ET + ENTRY_ET[:-1], id="partial-last-entry"),
    pytest.param(ENTRY_ET + b"\xc1", id="never-used-byte"),
    pytest.param(b"\x92\x01\x81\x01\xa1x", id="int-key"),
    pytest.param(b"\x92\x01\x81\xa1a\x81\x01\x02", id="nested-int-key"),
    pytest.param(b"\x92\x01\x91\x01", id="record-not-a-map"),
    pytest.param(b"\x93\x01\x80\x80", id="three-elements"),
    pytest.param(b"\x92\xc3\x80", id="bool-time"),
    pytest.param(b"\x92\xd3\xff\xff\xff\xff\xff\xff\xff\xff\x80", id="negative-time"),
    pytest.param(b"\x92\xcf\x00\x00\x00\x01\x00\x00\x00\x00\x80", id="time-over-u32"),
    pytest.param(b"\x92\xd7\x01\x00\x00\x00\x01\x00\x00\x00\x02\x80", id="ext-type-1"),
    pytest.param(b"\x92\xd6\x00\x00\x00\x00\x01\x80", id="ext-0-of-4-bytes"),
    pytest.param(b"\x92" + ET_1E9_NS + b"\x80", id="nanoseconds-1e9"),
    pytest.param(b"\x92\x92\x01\x91\x01\x80", id="v2-header-without-map"),
    pytest.param(b"\x92\x92\x01\x80\x80" + b"\x92\x92\x01\x80\x80\x01", id="v2-then-junk"),
    pytest.param(b"\x92\x00\x81\xa0\xd4\x80\x00", id="negative-ext-in-record"),
    pytest.param(b"\x92\xd7\xfe\x00\x00\x00\x01\x00\x00\x00\x02\x80", id="negative-ext-time"),
]


@pytest.mark.parametrize("data", INVALID)
def test_invalid_entries_are_refused_as_before(data: bytes) -> None:
    for hint in (None, 1, 2):
        assert both(data, hint)[0] == "error"


@pytest.mark.parametrize("data", [
    pytest.param(b"\x92" + ET_MAX_NS + b"\x80", id="nanoseconds-max"),
    pytest.param(b"\x92\xce\xff\xff\xff\xff\x80", id="time-u32-max"),
    pytest.param(b"\x92\x00\x80", id="time-zero"),
    pytest.param(b"\x92\x92\x01\x80\x80" + ENTRY_ET, id="v2-and-plain"),
    pytest.param(b"\x92\x01\x81\xa1a\xd7\x05" + b"\x00" * 8, id="other-ext-inside-record"),
    pytest.param(b"\x92\x01\x81\xc4\x01k\xa1v", id="bin-key"),
    pytest.param(b"\x92\x01\x81\xa2\xff\xfe\xa2\xff\xfe", id="invalid-utf8-key-and-value"),
])
def test_valid_entries_are_taken_as_they_are(data: bytes) -> None:
    up = msgpack.Unpacker(raw=True)
    up.feed(data)
    n = len(list(up))
    for hint in (None, n):
        assert both(data, hint) == ("ok", data, n)


@pytest.mark.parametrize("data", [
    pytest.param(b"\x92\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\x80", id="float-time"),
    pytest.param(b"\x92\xd6\xff\x00\x00\x00\x05\x80", id="timestamp-ext"),
])
def test_times_to_normalise_take_the_slow_path(data: bytes) -> None:
    verdict = both(data, 1)
    assert verdict[0] == "ok" and verdict[1] != data


def test_too_many_entries_whatever_the_hint() -> None:
    data = ENTRY_INT * 3
    for hint in (None, 2, 3):
        with pytest.raises(TooManyEntries):
            validate_entries(data, max_entries=2, count_hint=hint)


def test_a_hint_that_undercounts_by_a_whole_entry_is_caught() -> None:
    with pytest.raises(MalformedFrame):
        validate_entries(ENTRY_ET * 2 + b"\x92\x01\x91\x01", count_hint=2)


def test_empty_entries() -> None:
    assert both(b"", None) == ("ok", b"", 0)
    assert both(b"", 0) == ("ok", b"", 0)


scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=6) | st.binary(max_size=6)
           | st.builds(msgpack.ExtType, st.integers(0, 3), st.binary(max_size=9))
           | st.builds(msgpack.Timestamp, st.integers(-5, 2**33), st.integers(0, 10**9 - 1)))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), inner,
                                        max_size=3), max_leaves=6)
times = (st.integers(-2, 2**32 + 1)
         | st.builds(lambda s, n: msgpack.ExtType(0, s.to_bytes(4, "big") + n.to_bytes(4, "big")),
                     st.integers(0, 2**32 - 1), st.integers(999_999_990, 1_000_000_010))
         | st.builds(lambda t, m: [t, m], st.integers(0, 9), values) | values)
records = st.dictionaries(st.text(max_size=4), values, max_size=3) | values
entry_lists = st.lists(st.tuples(times, records), max_size=6)


#: Ext values msgpack-python cannot pack itself: negative types (reserved by the spec).
raw_exts = st.builds(lambda code, data: bytes((0xD4, code)) + data,
                     st.sampled_from([0x80, 0xFE, 0xFF, 0x00, 0x7F]), st.binary(min_size=1,
                                                                               max_size=1))


@settings(max_examples=300, deadline=None)
@given(entry_lists, st.one_of(st.none(), st.integers(-1, 8)), st.integers(0, 3),
       st.binary(max_size=3) | raw_exts, st.integers(0, 200))
def test_fast_and_slow_paths_agree_on_anything(entries: list[tuple[object, object]],
                                               hint: int | None, cut: int,
                                               junk: bytes, at: int) -> None:
    data = b"".join(msgpack.packb(e, use_bin_type=True) for e in entries)
    both(data, hint, max_entries=5)
    both(data[:len(data) - cut] + junk, hint, max_entries=5)
    both(data[:at] + junk + data[at + len(junk):], hint, max_entries=5)  # overwritten


# -- entries of our agent's shape: split, not decoded ------------------------------------

from enclave_side.lines import ESCAPED, PARTIAL, TRUNCATED, EntryEncoder  # noqa: E402

HEAD = b"\x92\xd7\x00"


def agent_entries(lines: list[bytes], fields: dict[str, str] | None = None,
                  ns: int = 1_700_000_000_123_456_789) -> bytes:
    return EntryEncoder(fields if fields is not None else {"stream": "stdout"}).encode(
        lines, ns)  # type: ignore[arg-type]


def no_other_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("not the agent-shape path")
    monkeypatch.setattr(entries, "_validate_slow", refuse)
    monkeypatch.setattr(fastpath, "decoded_count", refuse)


@pytest.mark.parametrize("lengths", [
    [150] * 100, [0], [1, 31, 32, 33, 255, 256, 257, 4095], list(range(0, 300, 7)),
])
@pytest.mark.parametrize("fields", [{}, {"stream": "stdout"},
                                    {"file": "/var/log/app.log", "x": "é"}])
def test_agent_entries_take_the_split_path(lengths: list[int], fields: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"".join(agent_entries([b"x" * n for n in lengths[i:i + 3]], fields, ns=i)
                    for i in range(0, len(lengths), 3))  # several reads, several times
    expected = both(data)
    no_other_path(monkeypatch)
    assert validate_entries(data) == expected[1:]


@pytest.mark.parametrize("line", [
    pytest.param(b"abc" + HEAD + b"\x00" * 8 + b"\x82\xa3log\xa1x" + b"\xa6stream\xa6stdout",
                 id="a whole fake entry inside a line"),
    pytest.param(HEAD, id="the head alone"),
    pytest.param(HEAD * 3 + b"tail", id="heads in a row"),
    pytest.param(b"x" * 40 + HEAD, id="the head at the end"),
    pytest.param(b"y" * 40 + b"\xa6stream\xa6stdout" + HEAD + b"\x00" * 8,
                 id="the fixed fields and a head inside a line (the separator)"),
    pytest.param(b"\xc3\x92\xd7\x00", id="non-ascii around it"),
])
def test_a_head_inside_a_line_never_splits_an_entry(line: bytes) -> None:
    data = agent_entries([b"before", line, b"after"])
    assert both(data) == ("ok", data, 3)


def test_agent_entries_with_flags_or_other_fields_in_the_same_batch() -> None:
    enc = EntryEncoder({"stream": "stdout"})
    flagged = enc.encode([(b"cut", TRUNCATED), (b"half", PARTIAL), (b"\xff", ESCAPED)], 5)
    data = agent_entries([b"a", b"b"]) + flagged + agent_entries([b"c"], {"stream": "stderr"})
    assert both(data) == ("ok", data, 6)


@pytest.mark.parametrize("data", [
    pytest.param(agent_entries([b"a" * 40])[:-1], id="cut short"),
    pytest.param(agent_entries([b"a" * 40]) + b"\x00", id="a byte too many"),
    pytest.param(agent_entries([b"a" * 40]).replace(b"\xd9\x28", b"\xd9\x27"),
                 id="header one short"),
    pytest.param(agent_entries([b"a" * 40]).replace(b"\xd9\x28", b"\xda\x00\x28"),
                 id="non-minimal header"),
    pytest.param(agent_entries([b"a"], ns=1_000_000_000) [:7] + b"\x3b\x9a\xca\x00"
                 + agent_entries([b"a"])[11:], id="nanoseconds 1e9"),
    pytest.param(agent_entries([b"a" * 40] * 3)[:7] + b"\x3b\x9a\xca\x00"
                 + agent_entries([b"a" * 40] * 3)[11:], id="str8 lines, nanoseconds 1e9"),
    pytest.param(agent_entries([b"a" * 40] * 3)[:7] + b"\x3b\x9a\xc9\xff"
                 + agent_entries([b"a" * 40] * 3)[11:], id="str8 lines, nanoseconds 1e9-1"),
    pytest.param(agent_entries([b"a" * 40, b"b" * 40]).replace(b"\xd9\x28b", b"\xd9\x27b"),
                 id="str8 lines, the second header one short"),
    pytest.param(agent_entries([b"a" * 40]) + agent_entries([b"b" * 40], {"stream": "x"})
                 + agent_entries([b"c" * 40]), id="str8 lines, one without the fields"),
    pytest.param(agent_entries([b"a", b"b"]).replace(b"\xa3log", b"\xa3lag", 1),
                 id="another key first"),
    pytest.param(agent_entries([b"a"]) + agent_entries([b"b"], {"stream": "stdouT"}),
                 id="fields differ"),
    pytest.param(agent_entries([b"a"]).replace(b"\x82\xa3log", b"\x83\xa3log"),
                 id="map claims a field too many"),
    pytest.param(HEAD + b"\x00" * 8 + b"\x81\xa3log\xc4\x01x", id="bin line"),
    pytest.param(HEAD + b"\x00" * 8 + b"\x82\xa3log\xa1x\x01\xa1y", id="int key in the fields"),
])
def test_almost_agent_entries_get_the_slow_paths_verdict(data: bytes) -> None:
    both(data)
    both(data, 1)


agent_lines = st.lists(
    st.binary(max_size=300) | st.sampled_from([HEAD, b"\x92", b"\xd7\x00", b"\xa3log"]).map(
        lambda h: b"x" + h + b"\x00" * 8 + b"\x82\xa3log\xa1z"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(agent_lines, min_size=1, max_size=3),
       st.dictionaries(st.sampled_from(["stream", "file", "log"]),
                       st.text(st.characters(blacklist_categories=["Cs"]), max_size=5),
                       max_size=2),
       st.integers(0, 2**64 - 1), st.integers(0, 12), st.binary(max_size=2))
def test_agent_shape_path_agrees_with_the_slow_path(reads: list[list[bytes]],
                                                    fields: dict[str, str], ns: int,
                                                    cut: int, junk: bytes) -> None:
    enc = EntryEncoder(fields)
    data = b"".join(enc.encode(lines, ns % (2**32 * 10**9))  # type: ignore[arg-type]
                    for lines in reads)
    both(data)
    both(data[:len(data) - cut] + junk)
    # a time's nanoseconds pushed to 1e9 or past it
    both(data[:7] + b"\x3b\x9a\xca" + data[10:])


plain_str8_lines = st.lists(st.binary(min_size=32, max_size=255)
                           | st.sampled_from([b"a" * 240, b"b" * 241]), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(plain_str8_lines, st.integers(0, 2**32 - 1), st.binary(max_size=3),
       st.integers(0, 255))
def test_str8_batches_with_one_edit_get_the_slow_paths_verdict(
        lines: list[bytes], at: int, junk: bytes, length: int) -> None:
    """Unsigned batches of str8 lines (the column check), up to and past the 240 bytes
    whose piece size still fits a byte: a few bytes overwritten anywhere, or one line's
    length byte set to any value, give the same verdict as entry by entry."""
    data = agent_entries(lines)
    assert validate_entries(data) == (data, len(lines))
    i = at % len(data)
    both(data[:i] + junk + data[i + len(junk):])
    header = data.find(b"\xa3log\xd9") + 5  # the first line's length byte
    both(data[:header] + bytes((length,)) + data[header + 1:])


def test_lines_of_32_to_240_bytes_take_the_column_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = agent_entries([b"x" * 32, b"y" * 150, b"z" * 240])
    no_other_path(monkeypatch)
    pieces_ok = fastpath._pieces_ok
    monkeypatch.setattr(fastpath, "_pieces_ok", lambda *a: pytest.fail("not the columns"))
    assert validate_entries(data) == (data, 3)
    # one line of 241 bytes: its piece's size does not fit a byte, the general check
    monkeypatch.setattr(fastpath, "_pieces_ok", pieces_ok)
    data = agent_entries([b"x" * 32, b"z" * 241])
    assert validate_entries(data) == (data, 2)


def _signed(lines: list[bytes], first: int = 1, stream: int = 1) -> bytes:
    from enclave_side.lines import EntryEncoder
    from enclave_side.proof import number_entries
    part = EntryEncoder({"stream": "stdout"}).encode(lines, 1_795_726_388_123_456_789)
    return b"".join(number_entries([part], [len(lines)], "0123456789abcdef", stream, first)[0])


_SEQ2 = b"0123456789abcdef:1:000000000002"


def test_signed_entries_take_the_split_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("decoded_count taken")
    monkeypatch.setattr(fastpath, "decoded_count", refuse)
    for stream in (1, 12):  # a value of 31 bytes (fixstr), of 32 (str8)
        data = _signed([b"x" * (i % 300) for i in range(500)], first=99_990, stream=stream)
        assert validate_entries(data) == (data, 500)
    # Lines all of 32-255 bytes: split on the fields before sig_seq's value, then
    # compared a column at a time; the general signed check is not needed.
    monkeypatch.setattr(fastpath, "_pieces_ok", refuse)
    for stream in (1, 12):
        data = _signed([b"y" * (32 + i % 224) for i in range(500)], stream=stream)
        assert validate_entries(data) == (data, 500)


_STR8 = _signed([b"y" * 40, b"z" * 200, b"w" * 32])
#: A line holding the fields before sig_seq's value (the str8 path's separator).
_SEP = _signed([b"z" * 40])[-54:-31]
_SEP_IN_A_LINE = _signed([b"y" * 40, b"q" * 10 + _SEP + b"q" * 40, b"w" * 33])
_TIME_AT = len(_signed([b"y" * 40]))  # the second entry's EventTime starts 3 bytes on


@pytest.mark.parametrize("data", [
    _signed([b"a", "line with \u00a7sig_seq inside".encode(), b"c"]),  # c2 a7 sig_seq
    _signed([b"a"]) + ENTRY_ET,  # a signed and an unsigned entry
    _signed([b"a", b"b"]).replace(b"\xbf" + _SEQ2, b"\xbe" + _SEQ2),  # a header off by one
    _signed([b"a", b"b"])[:-1],
    _STR8,  # str8 lines: the column path
    _STR8.replace(b"\xd9\xc8", b"\xd9\xc7"),  # a str8 header off by one
    _STR8.replace(b"\xd9\xc8", b"\xda\x00\xc8"),  # a str16 header where str8 fits
    _STR8[:_TIME_AT] + _STR8[_TIME_AT:].replace(b"stdout", b"stdouT", 1),  # one fixed field
    _STR8[:_TIME_AT + 7] + b"\x3b\x9a\xca\x00" + _STR8[_TIME_AT + 11:],  # 1e9 nanoseconds
    _STR8[:_TIME_AT + 7] + b"\x3b\x9a\xc9\xff" + _STR8[_TIME_AT + 11:],  # 1e9 - 1: valid
    _STR8[:-1],  # the last value one byte short
    _STR8 + b"\x00",  # one byte after the last entry
    _STR8[:_TIME_AT + 1] + b"\xd6" + _STR8[_TIME_AT + 2:],  # an entry head of another ext
    _SEP_IN_A_LINE,
])
def test_almost_signed_entries_get_the_slow_paths_verdict(data: bytes) -> None:
    both(data)


def test_a_separator_inside_a_line_is_refused_by_the_str8_split() -> None:
    prefix, tail = fastpath._first_entry_fields(_SEP_IN_A_LINE) or (b"", b"")
    assert tail.endswith(_SEP + b"0123456789abcdef:1:000000000001")
    assert fastpath._signed_str8_count(_SEP_IN_A_LINE, prefix, tail, 31, 100) is None
    # Another path then takes the batch as it is: it is valid.
    assert validate_entries(_SEP_IN_A_LINE) == (_SEP_IN_A_LINE, 3)


signed_lines = st.lists(
    st.binary(min_size=32, max_size=255)
    | st.binary(min_size=32, max_size=255).map(lambda b: b[:10] + _SEP + b[10:]),
    min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(signed_lines, st.integers(0, 2**32 - 1), st.binary(max_size=3),
       st.sampled_from([1, 12]))
def test_signed_batches_with_one_edit_get_the_slow_paths_verdict(
        lines: list[bytes], at: int, junk: bytes, stream: int) -> None:
    """Signed batches of str8 lines (the split path), some holding its separator, with
    a few bytes overwritten anywhere: the same verdict as entry by entry."""
    data = _signed(lines, stream=stream)
    assert validate_entries(data) == (data, len(lines))
    i = at % len(data)
    both(data[:i] + junk + data[i + len(junk):])
