"""Lines to packed entries, in batches of bytes (the agent's hot path).

A read of up to 256 KiB becomes one ``bytes`` of concatenated msgpack entries
``[EventTime, {"log": line, ...}]`` with a handful of C-level calls: split on
newlines, look up each line's str header (which is also the check that no line is
over the limit), interleave with one constant byte string (an entry's tail and the
next one's head), join. No object per line beyond the line itself.

Non-UTF-8 bytes: a record's ``log`` is always valid UTF-8. A line that is not valid
UTF-8 is sent with every backslash doubled and every byte that is not part of valid
UTF-8 written as ``\\xNN``, and the record carries ``"escaped": true``. Reverse it
with ``unescape_line``. Lines that are valid UTF-8 are sent exactly as they are.
"""

from __future__ import annotations

import re
from typing import TypeAlias

from fluent_forward.entries import event_time_bytes
from fluent_forward.wire import STR_HEADERS, str_header

__all__ = [
    "ESCAPED",
    "FLAG_FIELDS",
    "PARTIAL",
    "TRUNCATED",
    "EntryEncoder",
    "Item",
    "LineSplitter",
    "escape_line",
    "unescape_line",
]

TRUNCATED = 1  # the line was longer than max_line_bytes; the rest was dropped
PARTIAL = 2  # the line had no newline yet when it was flushed
ESCAPED = 4  # the line was not valid UTF-8 and is escaped
#: Each flag and the field a record carries, true, when it is set.
FLAG_FIELDS = ((TRUNCATED, "truncated"), (PARTIAL, "partial"), (ESCAPED, "escaped"))

#: A line, or a line with flags (rare: over-long, partial, escaped).
Item: TypeAlias = "bytes | tuple[bytes, int]"

_HEADER_OF = STR_HEADERS.__getitem__
#: Lines shorter than this have their str header in ``STR_HEADERS``.
_SHORT = len(STR_HEADERS)


def _short_headers(lines: list[bytes]) -> list[bytes] | None:
    """Each line's str header; None if a line is ``_SHORT`` bytes or longer."""
    try:
        return list(map(_HEADER_OF, map(len, lines)))  # C-level, no Python step per line
    except IndexError:
        return None


def _headers(lines: list[bytes]) -> list[bytes]:
    headers = _short_headers(lines)
    return headers if headers is not None else [str_header(n) for n in map(len, lines)]


def escape_line(line: bytes) -> bytes:
    """Valid UTF-8 for any bytes: backslashes doubled, undecodable bytes as ``\\xNN``."""
    # 0x5C never occurs inside a multi-byte UTF-8 sequence, so doubling first is safe.
    return line.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace").encode("utf-8")


_UNESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def unescape_line(text: str) -> bytes:
    """The original bytes of an escaped ``log`` value."""
    def repl(m: re.Match[bytes]) -> bytes:
        g = m.group(1)
        return b"\\" if g == b"\\" else bytes((int(g[1:], 16),))
    return _UNESCAPE.sub(repl, text.encode("utf-8"))


def _cut(line: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes, backed off so a UTF-8 character is not split."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (line[cut] & 0xC0) == 0x80:
        cut -= 1
    return line[:cut]


class LineSplitter:
    """Split a byte stream into lines, capping their length.

    A line longer than ``max_line_bytes`` is cut (flag ``TRUNCATED``) and the rest of
    it, up to the next newline, is dropped and counted in ``dropped_bytes``: one huge
    line never stops the stream and never holds more than the cap in memory.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._carry = b""
        self._discarding = False
        self.dropped_bytes = 0
        self.truncated = 0
        #: The lines the last ``feed`` returned are all plain ``bytes`` (none cut) and
        #: ASCII: the encoder may skip looking (``EntryEncoder.encode(clean=True)``).
        self.clean = False
        #: With ``clean``, each of those lines' str header if the length check made
        #: them (``EntryEncoder.encode(headers=...)``), else None.
        self.headers: list[bytes] | None = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back."""
        return len(self._carry)

    def feed(self, data: bytes) -> list[Item]:
        """Return the complete lines in ``carry + data``; keep the unfinished tail."""
        lines = data.split(b"\n")
        if self._carry:  # it holds no newline: it only lengthens the first line
            lines[0] = self._carry + lines[0]
        tail = lines.pop()
        if self._discarding and lines:
            self.dropped_bytes += len(lines.pop(0))
            self._discarding = False
        limit = self.max_line_bytes
        parts: list[Item]
        # The headers are the length check: their table stops at _SHORT bytes, and no
        # line below that is over a limit of at least that (the usual case, one pass).
        headers = _short_headers(lines) if limit >= _SHORT - 1 else None
        if headers is None and lines and max(map(len, lines)) > limit:
            parts = [self._truncate(p) if len(p) > limit else p for p in lines]
            self.clean = False
        else:
            parts = lines  # type: ignore[assignment]  # list is invariant; no copy on the hot path
            # One C-level pass over the read, instead of a join of its lines to look at.
            self.clean = data.isascii() and self._carry.isascii()
        if self._discarding:
            self.dropped_bytes += len(tail)
            tail = b""
        elif len(tail) > limit:
            parts.append(self._truncate(tail))
            self._discarding = True
            self.clean = False
            tail = b""
        self._carry = tail
        self.headers = headers if self.clean else None
        return parts

    def _truncate(self, line: bytes) -> tuple[bytes, int]:
        kept = _cut(line, self.max_line_bytes)
        self.dropped_bytes += len(line) - len(kept)
        self.truncated += 1
        return (kept, TRUNCATED)

    def flush(self) -> list[Item]:
        """Hand out the unfinished line, flagged ``PARTIAL`` (at EOF or on a timeout)."""
        self._discarding = False
        self.clean = False
        self.headers = None
        if not self._carry:
            return []
        line, self._carry = self._carry, b""
        return [(line, PARTIAL)]


class EntryEncoder:
    """Pack lines as entries ``[EventTime, {"log": line, <fixed fields>}]``.

    Args:
        fields: the constant fields every record gets, e.g. ``{"stream": "stdout"}``.
    """

    def __init__(self, fields: dict[str, str]) -> None:
        self._tail = b"".join(str_header(len(k.encode())) + k.encode()
                              + str_header(len(v.encode())) + v.encode()
                              for k, v in fields.items())
        self._map1 = 0x81 + len(fields)  # fixmap header: "log" plus the fields
        #: Did the last ``encode`` give entries that all start with the same head (the
        #: read's time, the map header, "log")? False when a line had flags.
        self.uniform = False
        if self._map1 + 3 > 0x8F:
            raise ValueError("too many fixed fields")
        self.escaped = 0

    def encode(self, items: list[Item], ns: int, *, clean: bool = False,
               headers: list[bytes] | None = None) -> bytes:
        """Entries for ``items``, all stamped ``ns``; one ``bytes``.

        ``clean``: the caller knows the items are all ``bytes`` and ASCII.
        ``headers``: with ``clean``, each item's str header, if the caller has them
        (``LineSplitter.headers``).
        """
        self.uniform = False
        if not items:
            return b""
        head = b"\x92" + event_time_bytes(ns) + bytes((self._map1,)) + b"\xa3log"
        tail = self._tail
        plain = clean or set(map(type, items)) == {bytes}  # no flags
        lines: list[bytes] = items  # type: ignore[assignment]  # when plain
        if plain and not clean:
            blob = b"\n".join(lines)
            if not blob.isascii():  # ASCII is UTF-8; anything else is decoded to be sure
                try:
                    blob.decode("utf-8")  # one C-level pass validates them all
                except UnicodeDecodeError:
                    plain = False
        if not plain:
            return b"".join(self._encode_one(head, i) for i in items)
        n = len(lines)
        # head, header, line, tail for each; one entry's tail and the next one's head
        # are constant, so they go in as one part: 3 parts a line to join, not 4.
        parts: list[bytes] = [b""] * (3 * n)
        parts[0::3] = [tail + head] * n
        parts[1::3] = headers if clean and headers is not None else _headers(lines)
        parts[2::3] = lines
        parts[0] = head
        parts.append(tail)
        self.uniform = True
        return b"".join(parts)

    def _encode_one(self, head: bytes, item: Item) -> bytes:
        line, flags = (item, 0) if isinstance(item, bytes) else item
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            line = escape_line(line)
            flags |= ESCAPED
            self.escaped += 1
        body = head + str_header(len(line)) + line + self._tail
        if not flags:
            return body
        extra = [name.encode() for bit, name in FLAG_FIELDS if flags & bit]
        # Same entry with a bigger map: bump the fixmap count, append the flags.
        body = body[:11] + bytes((body[11] + len(extra),)) + body[12:]
        return body + b"".join(str_header(len(k)) + k + b"\xc3" for k in extra)

