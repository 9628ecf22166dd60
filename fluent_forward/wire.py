"""msgpack headers and binary layouts, written once for every encoder (pure).

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
