"""The fast paths of ``entries.validate_entries``: whole batches checked in C-level calls.

Pure code. Each function here can only say "valid as it is, N entries" or "don't
know" (None); ``entries._validate_slow`` decides everything else, entry by entry. So a
fast path may refuse anything, but must accept only what the slow path would take
unchanged, and the tests hold them to that.

1. ``agent_shape_count``: entries exactly as our agent packs them, ``[EventTime,
   {"log": str, <fields that repeat byte for byte>}]``. One ``bytes.split`` on the
   bytes every such entry starts with, then ``map`` passes over the pieces check each
   one's time, key, str header against its length, and fixed fields: no msgpack
   object is built but those of the first entry. About five times cheaper than (2).
   ``signed_shape_count``: the same with the field a signing agent adds last to every
   record (``sig_seq``, a str of one length whose bytes differ from record to record),
   those bytes left out of the comparison; for lines of 32-255 bytes, one split on
   the fields before that value, which checks them too, then the same column check.
2. ``decoded_count``: any entries. One ``unpackb`` decodes all of them as an array of
   exactly ``n`` (the frame's ``size`` option, or as many as ``skip()`` counts), with
   ext types as ``slice(code, data)`` instead of msgpack's ``ExtType`` (whose
   constructor is four times slower), then ``shape_ok`` checks them with ``map``/``set``
   passes.

Before all of these, when the package was built with its C extension (pip builds it
where a C compiler is found), ``_entrycheck.count`` walks the bytes once and answers
for nearly every batch from any client, about ten times cheaper than (1); its header
lists what it leaves to the paths here. Without it, (1) and (2) answer as before.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter, sub
from typing import Any

import msgpack

from .wire import array_header, read_header, str_header

c_count: Callable[[bytes, int], int | None] | None
try:
    from ._entrycheck import count as c_count
except ImportError:  # built without a C compiler: the Python paths answer alone
    c_count = None

__all__ = [
    "agent_shape_count",
    "decoded_count",
    "entry_check",
    "shape_ok",
    "signed_shape_count",
    "validate_fast",
]

_U32 = 0xFFFFFFFF
#: The nanoseconds of an EventTime's 8 data bytes, and their bound: big-endian bytes
#: compare as the numbers do, so one C-level max() checks them all.
_NANOS = itemgetter(slice(4, 8))
_BILLION = (1_000_000_000).to_bytes(4, "big")
_first = itemgetter(0)
_second = itemgetter(1)


def entry_check() -> str:
    """Which check answers first: "c" (the extension) or "python" (built without it)."""
    return "c" if c_count is not None else "python"


def validate_fast(data: bytes, max_entries: int, count_hint: int | None) -> int | None:
    """The entry count if every entry is valid as it is; None: ask the slow path."""
    if c_count is not None:
        n = c_count(data, max_entries)
        if n is not None:
            return n
    # The first entry says which of our agent's shapes to try, without a search of the
    # whole batch: a signing agent's records end with sig_seq (the plain shape would
    # fail on them only at its last check). That entry is decoded once, for both
    # shapes: one small unpack a batch.
    fixed = _first_entry_fields(data)
    if fixed is not None:
        shape = signed_shape_count if _SIG_FIELD in fixed[1] else agent_shape_count
        n = shape(data, *fixed, max_entries)
        if n is not None:
            return n
    return decoded_count(data, max_entries, count_hint)


# -- 1. entries as our agent packs them -----------------------------------------------

#: What an entry ``[EventTime, ...]`` starts with: fixarray 2, fixext 8 of type 0.
_ENTRY_HEAD = b"\x92\xd7\x00"
_LOG_KEY = b"\xa3log"
#: Offsets in a piece (an entry without its head): 8 time bytes, the fixmap header,
#: the "log" key, then the str header of the line.
_MAP_AT, _STR_AT = 8, 13


#: _BY_SIZE[c]: the header of the str whose header and body take ``c`` bytes together,
#: as msgpack writes it (the shortest form); None where no such str exists.
_BY_SIZE: list[bytes | None] = [None] * (4096 + 3)
for _n in range(4096):
    _h = str_header(_n)
    _BY_SIZE[len(_h) + _n] = _h
del _n, _h


def agent_shape_count(data: bytes, prefix: bytes, tail: bytes, max_entries: int
                      ) -> int | None:
    """Entries of our agent's shape: their count, or None if they are anything else.

    ``prefix`` and ``tail`` are the first entry's map header and key and the fixed
    fields every entry ends with (``_first_entry_fields``, which decodes it whole as
    the slow path would). ``data`` split on ``tail`` + the head every
    entry starts with gives one piece per entry only if each piece is exactly: 8
    EventTime bytes with nanoseconds below 1e9, the first entry's fixmap header and
    ``"log"`` key, the shortest str header for the piece's remaining length, and that
    many bytes. A separator that occurs inside a line cuts it into pieces whose lengths
    disagree with their headers, and an entry that does not end with ``tail`` leaves a
    piece holding two entries, which disagrees too: such data is refused, never misread.
    """
    if not data.endswith(tail):
        return None
    # A longer separator is also a faster search: most of the cost of this function.
    pieces = data.split(tail + _ENTRY_HEAD)
    if tail:  # [head + entry, entry, ..., entry + tail]
        pieces[0] = pieces[0][len(_ENTRY_HEAD):]
        pieces[-1] = pieces[-1][:-len(tail)]
    else:  # [b"", entry, ...]: the data starts with the separator
        del pieces[0]
    n = len(pieces)
    if n > max_entries:
        return None
    try:  # every piece's length, if all fit a byte: lines of 32-240 bytes, most of them
        sizes = bytes(map(len, pieces))
    except ValueError:
        sizes = b""
    if sizes and min(sizes) >= _STR_AT + 2 + 32:
        return n if _str8_columns_ok(pieces, prefix, sizes) else None
    return n if _pieces_ok(pieces, prefix, b"") else None


def _pieces_ok(pieces: list[bytes], prefix: bytes, tail: bytes, masked: int = 0) -> bool:
    """Is every piece 8 time bytes, ``prefix``, a line with its shortest str header, and
    ``tail`` (but for its last ``masked`` bytes)?"""
    n = len(pieces)
    sizes = list(map(sub, map(len, pieces), itertools.repeat(_STR_AT + len(tail))))
    lo, hi = min(sizes), max(sizes)
    if lo < 1 or hi >= len(_BY_SIZE):
        return False
    headers = list(map(_BY_SIZE.__getitem__, sizes))
    # Lines all under 32 bytes, or all of 32-255: every header has the same width, and
    # the map header, key and str header of all pieces are compared in one go.
    width = 1 if hi <= 32 else 2 if lo >= 34 and hi <= 257 else 0
    if width:
        expected: list[bytes | None] = [prefix] * (2 * n)
        expected[1::2] = headers
        if (b"".join(map(itemgetter(slice(_MAP_AT, _STR_AT + width)), pieces))
                != b"".join(expected)):  # type: ignore[arg-type]  # no None at these sizes
            return False
    elif None in headers or not (
            all(map(bytes.startswith, pieces, headers, itertools.repeat(_STR_AT)))  # type: ignore[arg-type]
            and all(map(bytes.startswith, pieces, itertools.repeat(prefix),
                        itertools.repeat(_MAP_AT)))):
        return False
    fixed = tail[:len(tail) - masked]
    if fixed and (b"".join(map(itemgetter(slice(-len(tail), -masked or None)), pieces))
                  != fixed * n):
        return False
    return bool(max(map(_NANOS, pieces)) < _BILLION)


#: The field a signing agent (``--sign``) adds last to every record: a str of the same
#: length in every record of a batch, whose bytes differ from record to record.
_SIG_FIELD = b"\xa7sig_seq"


def signed_shape_count(data: bytes, prefix: bytes, tail: bytes, max_entries: int
                       ) -> int | None:
    """Entries of our agent's shape with ``sig_seq`` last: their count, or None.

    As ``agent_shape_count``, except that the bytes of ``sig_seq``'s value are left out
    of the comparison of the fields after the line: its header, compared with the
    rest, says they are one str of that length, which any bytes are.
    """
    at = tail.rfind(_SIG_FIELD) + len(_SIG_FIELD)
    if at < len(_SIG_FIELD):
        return None
    # sig_seq must be last: its header (1 or 2 bytes) then exactly its value.
    width = next((len(tail) - at - h for h in (1, 2)
                  if tail[at:at + h] == str_header(max(len(tail) - at - h, 0))), 0)
    if not 0 < width < 256:
        return None
    n = _signed_str8_count(data, prefix, tail, width, max_entries)
    if n is not None:
        return n
    pieces = data.split(_ENTRY_HEAD)
    del pieces[0]
    if len(pieces) > max_entries:
        return None
    return len(pieces) if _pieces_ok(pieces, prefix, tail, width) else None


#: In a piece of ``_signed_str8_count`` after the value before it: the entry head, 8
#: time bytes, the map header and "log" key, the str8 header: 18 bytes.
_SIGNED_WIDTH = len(_ENTRY_HEAD) + _STR_AT + 2


def _signed_str8_count(data: bytes, prefix: bytes, tail: bytes, width: int,
                       max_entries: int) -> int | None:
    """Signed entries whose lines are all str8 (32-255 bytes, most log lines): their
    count, or None (ask the general signed check).

    ``data`` is split on the fields before ``sig_seq``'s value (``sep``, constant and
    long, so the split is fast and checks those fields at once). The pieces are then
    ``entry head + line part`` of the first entry, ``value + entry head + line part``
    of each next one, and the last entry's value alone. Each piece is checked for
    exactly that: ``width`` bytes of any value (a str whose header is in ``sep``),
    the entry head, 8 time bytes with nanoseconds below 1e9, the first entry's map
    header and key, a str8 header and as many bytes as it says. Joined again with
    ``sep`` such pieces are valid entries, whatever the split met: a ``sep`` inside a
    line cuts pieces whose lengths disagree with their headers, and is refused.
    """
    sep = tail[:len(tail) - width]
    pieces = data.split(sep)
    n = len(pieces) - 1
    if not 0 < n <= max_entries or len(pieces[-1]) != width:
        return None
    del pieces[-1]
    pieces[0] = bytes(width) + pieces[0]  # no value before the first entry
    try:
        lengths = bytes(map(sub, map(len, pieces), itertools.repeat(width + _SIGNED_WIDTH)))
    except ValueError:  # a line under 0 or over 255 bytes long
        return None
    if min(lengths) < 32:
        return None
    cols = b"".join(map(itemgetter(slice(width, width + _SIGNED_WIDTH)), pieces))
    at_prefix = len(_ENTRY_HEAD) + _MAP_AT
    for i, byte in itertools.chain(enumerate(_ENTRY_HEAD),
                                   enumerate(prefix + b"\xd9", start=at_prefix)):
        if cols[i::_SIGNED_WIDTH] != bytes((byte,)) * n:
            return None
    if cols[_SIGNED_WIDTH - 1::_SIGNED_WIDTH] != lengths:
        return None
    nanos_at = len(_ENTRY_HEAD) + 4
    if max(cols[nanos_at::_SIGNED_WIDTH]) >= 0x3B and max(map(
            itemgetter(slice(width + nanos_at, width + nanos_at + 4)), pieces)) >= _BILLION:
        return None
    return n


#: A piece's nanoseconds, map header, "log" key and str8 header: 11 bytes.
_COLUMNS = itemgetter(slice(4, _STR_AT + 2))
_WIDTH = _STR_AT + 2 - 4
#: A str8 header's length byte mapped to the size of its piece (the byte + 15, mod 256).
_PIECE_SIZE = bytes((b + _STR_AT + 2) & 0xFF for b in range(256))


def _str8_columns_ok(pieces: list[bytes], prefix: bytes, sizes: bytes) -> bool:
    """Pieces of 47-255 bytes (lines of 32-240): the 11 bytes of every piece from its
    nanoseconds to its str8 header, joined, then checked a column at a time (strided
    slices: no object per entry): the map header and key as the first entry's, ``0xD9``,
    and each length byte against its piece's size in ``sizes``. The length column is
    compared through ``_PIECE_SIZE``: a piece of 47 bytes or more matches only the length
    it really has, as a length past 240 would wrap below 15."""
    cols = b"".join(map(_COLUMNS, pieces))
    n = len(pieces)
    for i, byte in enumerate(prefix + b"\xd9", start=4):
        if cols[i::_WIDTH] != bytes((byte,)) * n:
            return False
    if cols[_WIDTH - 1::_WIDTH].translate(_PIECE_SIZE) != sizes:
        return False
    # Nanoseconds below 1e9 (0x3B9ACA00): a first byte under 0x3B says so for nearly
    # every batch; otherwise compare them all.
    return max(cols[0::_WIDTH]) < 0x3B or max(map(_NANOS, pieces)) < _BILLION


def _first_entry_fields(data: bytes) -> tuple[bytes, bytes] | None:
    """(map header + "log" key, the fields after the line) of the first entry of
    ``data``, after decoding it whole as the slow path would: None unless it is of the
    agent's shape."""
    piece = data[len(_ENTRY_HEAD):len(_ENTRY_HEAD) + _STR_AT + 3]
    if not data.startswith(_ENTRY_HEAD) or len(piece) <= _STR_AT:
        return None
    if not 0x81 <= piece[_MAP_AT] <= 0x8F:
        return None
    if piece[_MAP_AT + 1:_STR_AT] != _LOG_KEY:
        return None
    up = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", use_list=False,
                          strict_map_key=True, max_buffer_size=_FIRST_ENTRY_MAX)
    up.feed(data[:_FIRST_ENTRY_MAX])
    try:
        entry = up.unpack()
    except Exception:  # noqa: BLE001 - not one valid entry: someone else's shape
        return None
    if (type(entry) is not tuple or len(entry) != 2
            or type(entry[1]) is not dict or type(entry[1].get("log")) is not str):
        return None
    start = len(_ENTRY_HEAD) + _STR_AT
    line = read_header(data, start)
    if line is None or line[0] != "str" or line[2] > 3:
        return None  # str32: a line of 64 KiB or more is not this path's business
    end = start + line[2] + line[1]
    if end > up.tell():
        return None
    return data[len(_ENTRY_HEAD) + _MAP_AT:start], data[end:up.tell()]


#: The first entry is looked for in this many bytes (lines of up to 4 KiB take this
#: path, and their fixed fields are a few names).
_FIRST_ENTRY_MAX = 64 * 1024


# -- 2. any entries, decoded at once -----------------------------------------------------

#: Never returned by ``Unpacker.skip()``: ``iter(skip, _NEVER)`` runs until it raises.
_NEVER = object()


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
    if items is None or not shape_ok(items, slice, "start", "stop"):
        return None
    return len(items)


def shape_ok(items: Sequence[Any], ext_type: type, code: str, data: str) -> bool:
    """Whether every entry is ``[time, map]`` or ``[[time, map], map]`` with a time that
    needs no change: C-level passes over all of them. Ext values are ``ext_type``s with
    their type and bytes in the attributes ``code`` and ``data``: a time is an EventTime
    (ext 0, 8 bytes) with nanoseconds below 1e9."""
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
        exts = [t for t in times if type(t) is not int] if len(ttypes) > 1 else times
        datas = list(map(attrgetter(data), exts))
        return bool(set(map(attrgetter(code), exts)) == {0} and set(map(len, datas)) == {8}
                    and max(map(_NANOS, datas)) < _BILLION)
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
    head = array_header(n)
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
