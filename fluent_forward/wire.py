"""msgpack headers and binary layouts, written and read once for every codec (pure).

The encoders here write msgpack by hand where a packer would cost more than the
work (the agent's per-line path, the relay's entries, handshake strs that must stay
strs whatever their bytes): each header has one writer, always the shortest form,
as msgpack itself writes it.
"""

from __future__ import annotations

import struct

__all__ = [
    "EVENT_TIME",
    "STR_HEADERS",
    "array_header",
    "bin_header",
    "read_header",
    "str_header",
]

#: EventTime's payload (ext type 0): big-endian uint32 seconds, uint32 nanoseconds.
EVENT_TIME = struct.Struct(">II")

#: ``STR_HEADERS[n]``: the header of a str of ``n`` bytes, for every n below 4 KiB.
#: A table, so the per-line path maps lengths to headers without a Python step each.
STR_HEADERS: list[bytes] = ([bytes((0xA0 | n,)) for n in range(32)]
                            + [bytes((0xD9, n)) for n in range(32, 0x100)]
                            + [b"\xda" + n.to_bytes(2, "big") for n in range(0x100, 4096)])


def str_header(n: int) -> bytes:
    """The msgpack header of a str of ``n`` bytes."""
    if n < 4096:
        return STR_HEADERS[n]
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big")
    return b"\xdb" + n.to_bytes(4, "big")


def bin_header(n: int) -> bytes:
    """The msgpack header of a bin of ``n`` bytes."""
    if n < 0x100:
        return bytes((0xC4, n))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


#: The headers ``read_header`` tells apart whose length follows the type byte:
#: (kind, bytes of the length).
_SIZED = {0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4), 0xC4: ("bin", 1),
          0xC5: ("bin", 2), 0xC6: ("bin", 4), 0xDC: ("array", 2), 0xDD: ("array", 4)}


def read_header(buf: bytes | memoryview, i: int) -> tuple[str, int, int] | None:
    """(kind, length, header size) of the msgpack object at ``buf[i]``.

    The kind is ``"str"``, ``"bin"``, ``"array"`` or ``"other"`` (length 0, a header
    of one byte: the frame readers need no more of those). None while the header is
    not all in ``buf``.
    """
    if i >= len(buf):
        return None
    b = buf[i]
    if 0xA0 <= b <= 0xBF:
        return ("str", b & 0x1F, 1)
    if 0x90 <= b <= 0x9F:
        return ("array", b & 0x0F, 1)
    if b in _SIZED:
        kind, n = _SIZED[b]
        if i + 1 + n > len(buf):
            return None
        return (kind, int.from_bytes(buf[i + 1:i + 1 + n], "big"), 1 + n)
    return ("other", 0, 1)
