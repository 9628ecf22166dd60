"""The C entry check (fluent_forward/_entrycheck.c) accepts only what the slow path
takes unchanged, and takes the batches real clients send.

Its contract is the fast path's: ``count(data, max_entries)`` is the entry count when
every entry is valid as it is, or None ("ask Python"). A wrong count or an invalid batch
it accepted would reach Fluent Bit, so every verdict here is compared with
``entries._validate_slow``; hostile bytes (lengths past the end, deep nesting, random
junk) must give None without reading out of bounds. test_validate_fast.py runs its own
cases through ``validate_entries`` with the C check on and off as well.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_side.lines import EntryEncoder
from fluent_forward import entries
from fluent_forward.errors import ProtocolError
from tests.helpers import c_entry_check

from .test_validate_fast import ENTRY_ET, ENTRY_INT, INVALID, entry_lists, raw_exts

Count = Callable[[bytes, int], "int | None"]


@pytest.fixture(scope="module")
def count() -> Count:
    return c_entry_check()


def slow(data: bytes, max_entries: int) -> tuple[str, object]:
    try:
        out, n = entries._validate_slow(data, max_entries)
    except ProtocolError as exc:
        return ("error", type(exc).__name__)
    return ("as is", n) if out == data else ("changed", n)


def agrees(count, data: bytes, max_entries: int = 1000) -> int | None:
    """The C verdict, after checking it against the slow path: a count only for
    entries the slow path takes unchanged, and the same count."""
    n = count(data, max_entries)
    if n is not None:
        assert slow(data, max_entries) == ("as is", n)
    return n


def agent(lines: list[bytes], fields: dict[str, str] | None = None, ns: int = 5) -> bytes:
    return EntryEncoder(fields if fields is not None else {"file": "/var/log/app.log"}
                        ).encode(lines, ns)  # type: ignore[arg-type]


# -- what clients send is taken ----------------------------------------------------------


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="no entries"),
    pytest.param(agent([b"x" * n for n in (0, 1, 31, 32, 255, 256, 70000)]), id="our agent"),
    pytest.param(ENTRY_ET * 5 + ENTRY_INT * 5, id="EventTime and integer times"),
    pytest.param(b"".join(msgpack.packb([t, {"k": [1, {"n": None}], b"b": 1.5}])
                          for t in (0, 127, 128, 255, 256, 65536, 2**32 - 1)),
                 id="every unsigned width, nested values, bin key"),
    pytest.param(msgpack.packb([[msgpack.ExtType(0, b"\x00" * 8), {"m": 1}], {"a": "b"}]),
                 id="Fluent Bit's [[time, metadata], record]"),
    pytest.param(msgpack.packb([1, {"e": msgpack.ExtType(5, b"xyz")}]), id="an ext value"),
    pytest.param(msgpack.packb([1, {"k": "v" * 70000, "l": list(range(20))}]),
                 id="str16/str32, array16"),
    pytest.param(msgpack.packb([1, {str(i): i for i in range(20)}]), id="map16"),
    pytest.param(b"\x92\xd7\x00" + b"\x00" * 4 + b"\x3b\x9a\xc9\xff\x80",
                 id="nanoseconds 1e9 - 1"),
])
def test_what_clients_send_is_counted(count: Count, data: bytes) -> None:
    expected = slow(data, 1000)
    assert expected[0] == "as is"
    assert agrees(count, data) == expected[1]


def test_a_batch_at_max_entries_is_counted_one_over_is_not(count: Count) -> None:
    data = ENTRY_ET * 3
    assert count(data, 3) == 3
    assert count(data, 2) is None  # the slow path names it: TooManyEntries
    assert count(data, 0) is None
    assert count(data, -1) is None
    assert count(b"", 0) == 0


def test_only_bytes_are_walked(count: Count) -> None:
    """It releases the GIL while it reads: a buffer someone could change meanwhile is
    left to Python."""
    assert count(bytearray(ENTRY_ET), 5) is None
    assert count(memoryview(ENTRY_ET), 5) is None


# -- what it leaves to Python ------------------------------------------------------------


@pytest.mark.parametrize("data", [
    pytest.param(msgpack.packb([1.5, {}]), id="float time: normalised"),
    pytest.param(msgpack.packb([msgpack.Timestamp(5, 0), {}]), id="Timestamp time"),
    pytest.param(b"\x92\xc7\x08\x00" + b"\x00" * 8 + b"\x80", id="EventTime as ext8"),
    pytest.param(b"\x92\xd0\x05\x80", id="int8 time"),
    pytest.param(b"\x92\xcf" + b"\x00" * 7 + b"\x05\x80", id="uint64 time"),
    pytest.param(b"\x92\x01\x81\xa1t\xd6\xff\x00\x00\x00\x05", id="Timestamp in a record"),
    pytest.param(b"\xdc\x00\x02\x01\x80", id="entry as array16"),
    pytest.param(b"\x92\x01\x81\xa1a" + b"\x91" * 40 + b"\x01", id="41 deep"),
])
def test_valid_but_unusual_is_left_to_python(count: Count, data: bytes) -> None:
    assert slow(data, 10)[0] != "error"
    assert count(data, 10) is None


@pytest.mark.parametrize("data", [*INVALID,
    pytest.param(b"\x92\x01\x81\xa1a\x81\x80\x02", id="map key"),
    pytest.param(b"\x92\xd7\x00" + b"\xff" * 8 + b"\x80", id="nanoseconds 2^32-1"),
    pytest.param(b"\x92\x01\x81\xa1s\xdb\xff\xff\xff\xff", id="str32 claims 4 GiB"),
    pytest.param(b"\x92\x01\x81\xa1s\xdd\xff\xff\xff\xff\x01", id="array32 claims 2^32-1"),
    pytest.param(b"\x92\x01\xdf\xff\xff\xff\xff\xa1k", id="map32 claims 2^32-1 pairs"),
    pytest.param(b"\x92\x01\x81\xa1s\xc9\xff\xff\xff\xff\x05", id="ext32 claims 4 GiB"),
    pytest.param(b"\x92\x01\x81\xa1s\xc7", id="ext8 without its length"),
    pytest.param(b"\x92\x01\x81\xa1s\xc7\x01", id="ext8 without its type"),
    pytest.param(b"\x92\x01\x81\xda\x00", id="str16 key without its length"),
    pytest.param(b"\x92", id="a lone array header"),
    pytest.param(b"\x92\xce\x00\x00", id="uint32 time cut short"),
    pytest.param(b"\x92\xd7\x00\x00", id="EventTime cut short"),
])
def test_invalid_or_cut_short_is_never_counted(count: Count, data: bytes) -> None:
    assert slow(data, 10)[0] == "error"
    assert count(data, 10) is None
    assert count(ENTRY_ET * 3 + data, 10) is None  # after valid entries too


def test_nesting_up_to_its_limit_is_walked(count: Count) -> None:
    # The record map is depth 1; 31 arrays inside it reach MAX_DEPTH (32).
    data = b"\x92\x01\x81\xa1a" + b"\x91" * 31 + b"\x01"
    assert agrees(count, data) == 1
    assert count(b"\x92\x01\x81\xa1a" + b"\x91" * 32 + b"\x01", 10) is None


# -- the contract, on anything -----------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(entry_lists, st.integers(0, 3), st.binary(max_size=3) | raw_exts, st.integers(0, 200),
       st.integers(0, 6))
def test_the_c_check_agrees_with_the_slow_path(
        count: Count, entry_list: list[tuple[object, object]], cut: int, junk: bytes, at: int,
        max_entries: int) -> None:
    data = b"".join(msgpack.packb(e, use_bin_type=True) for e in entry_list)
    agrees(count, data, max_entries)
    agrees(count, data[:len(data) - cut] + junk, max_entries)
    agrees(count, data[:at] + junk + data[at + len(junk):], max_entries)  # overwritten


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.integers(0, 2**64 - 1),
       st.integers(0, 10**6), st.binary(min_size=1, max_size=4))
def test_agent_batches_with_one_edit_agree_with_the_slow_path(
        count: Count, lines: list[bytes], ns: int, at: int, junk: bytes) -> None:
    data = agent(lines, ns=ns % (2**32 * 10**9))
    assert agrees(count, data) == len(lines)  # taken whole, never left to Python
    i = at % len(data)
    agrees(count, data[:i] + junk + data[i + len(junk):])
    agrees(count, data[:i] + junk + data[i:])  # inserted


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash_and_agree(count: Count, data: bytes) -> None:
    agrees(count, data)
    agrees(count, b"\x92\x01\x81\xa1k" + data)
