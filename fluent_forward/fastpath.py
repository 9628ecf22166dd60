"""The fast paths of ``codec.validate_entries``: whole batches checked in C-level calls.

Pure code. Each function here can only say "valid as it is, N entries" or "don't
know" (None); ``codec._validate_slow`` decides everything else, entry by entry. So a
fast path may refuse anything, but must accept only what the slow path would take
unchanged, and the tests hold them to that.

``decoded_count``: one ``unpackb`` decodes all the entries as an array of exactly
``n`` (the frame's ``size`` option, or as many as ``skip()`` counts), with ext types as
``slice(code, data)`` instead of msgpack's ``ExtType`` (whose constructor is four times
slower), then ``shape_ok`` checks them with ``map``/``set`` passes.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import msgpack

__all__ = [
    "BILLION",
    "NANOS",
    "decoded_count",
    "shape_ok",
    "validate_fast",
]

_U32 = 0xFFFFFFFF
#: The nanoseconds of an EventTime's 8 data bytes, and their bound: big-endian bytes
#: compare as the numbers do, so one C-level max() checks them all.
NANOS = itemgetter(slice(4, 8))
BILLION = (1_000_000_000).to_bytes(4, "big")
_first = itemgetter(0)
_second = itemgetter(1)


def validate_fast(data: bytes, max_entries: int, count_hint: int | None) -> int | None:
    """The entry count if every entry is valid as it is; None: ask the slow path."""
    return decoded_count(data, max_entries, count_hint)


# -- 2. any entries, decoded at once -----------------------------------------------------

#: Never returned by ``Unpacker.skip()``: ``iter(skip, _NEVER)`` runs until it raises.
_NEVER = object()
_START = attrgetter("start")
_STOP = attrgetter("stop")


def decoded_count(data: bytes, max_entries: int, count_hint: int | None) -> int | None:
    """The count if the entries, decoded by one ``unpackb``, are all valid as they are.

    Same limits and key rule as the slow path (``raw=True`` changes no verdict there:
    str values are decoded with surrogateescape, which cannot fail). A wrong count
    fails that call and nothing is accepted.
    """
    items = None
    if count_hint is not None and 0 < count_hint <= max_entries:
        items = _decode_exactly(data, count_hint)
    if items is None:
        n = _count_objects(data, max_entries)
        if n:
            items = _decode_exactly(data, n)
    if items is None or not shape_ok(items, slice, _slices_ok):
        return None
    return len(items)


def shape_ok(items: Sequence[Any], ext_type: type, exts_ok: Callable[[list[Any]], bool]
             ) -> bool:
    """Whether every entry is ``[time, map]`` or ``[[time, map], map]`` with a time that
    needs no change: C-level passes over all of them."""
    if not (set(map(type, items)) == {tuple} and set(map(len, items)) == {2}
            and set(map(type, map(_second, items))) == {dict}):
        return False
    times = list(map(_first, items))
    ttypes = set(map(type, times))
    if tuple in ttypes:  # Fluent Bit's [[time, metadata], record]: check the header
        headers = [t for t in times if type(t) is tuple] if len(ttypes) > 1 else times
        if set(map(len, headers)) == {2} and set(map(type, map(_second, headers))) == {dict}:
            times = [t for t in times if type(t) is not tuple] + list(map(_first, headers))
            ttypes = set(map(type, times))
    if not ttypes <= {int, ext_type}:
        return False
    if int in ttypes:
        ints = [t for t in times if type(t) is int] if len(ttypes) > 1 else times
        if min(ints) < 0 or max(ints) > _U32:
            return False
    if ext_type in ttypes:
        return exts_ok([t for t in times if type(t) is not int] if len(ttypes) > 1 else times)
    return True


def _count_objects(data: bytes, max_entries: int) -> int | None:
    """How many objects ``skip()`` gets through, counted in C (capped past ``max_entries``)."""
    up = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    up.feed(data)
    counter = itertools.count()
    try:
        collections.deque(zip(itertools.islice(iter(up.skip, _NEVER), max_entries + 1),
                              counter, strict=False), maxlen=0)
    except msgpack.OutOfData:
        pass
    except Exception:  # noqa: BLE001 - malformed: the slow path names the error
        return None
    n = next(counter)
    return n if n <= max_entries else None


def _decode_exactly(data: bytes, n: int) -> tuple[Any, ...] | None:
    """``data`` decoded as exactly ``n`` objects, or None."""
    head = bytes((0x90 | n,)) if n < 16 else (
        b"\xdc" + n.to_bytes(2, "big") if n < 0x10000 else b"\xdd" + n.to_bytes(4, "big"))
    try:
        items: tuple[Any, ...] = msgpack.unpackb(head + data, raw=True, use_list=False,
                                                 strict_map_key=True, ext_hook=_ext)
    except Exception:  # noqa: BLE001 - wrong count or invalid: the slow path decides
        return None
    return items


def _ext(code: int, data: bytes) -> slice:
    """An ext value as ``slice(code, data)``; a negative type (other than -1, the
    Timestamp, which msgpack decodes itself) fails, as msgpack's ``ExtType`` does."""
    if code < 0:
        raise ValueError("negative ext type")
    return slice(code, data)


def _slices_ok(exts: list[slice]) -> bool:
    """Ext times decoded as ``slice(code, data)``: all EventTimes, nanoseconds < 1e9."""
    if set(map(_START, exts)) != {0}:
        return False
    datas = list(map(_STOP, exts))
    if set(map(len, datas)) != {8}:
        return False
    return bool(max(map(NANOS, datas)) < BILLION)
