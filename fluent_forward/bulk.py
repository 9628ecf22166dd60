"""Large PackedForward frames gathered without msgpack's stream buffer (pure).

``FrameDecoder`` feeds msgpack's ``Unpacker`` the bytes as they are read. For a batch
of half a megabyte that arrives in several reads, the Unpacker copies every read into
its buffer (growing and compacting it) and then copies the payload once more into the
``bytes`` it returns: two copies of every batch, and the buffer management costs as
much again. A frame that starts ``[tag, bin(n), ...`` with a large ``n`` is instead
gathered here: the reads are kept as they are (memoryviews) and joined once into the
payload, and only the small options map after it goes through an Unpacker.

Only the plainest shape takes this path: a fixarray of 2 or 3, a fixstr or str8 tag,
a bin8/16/32 payload of at least ``BULK_MIN_BYTES``. Everything else, and a frame
whose head is not all in one read, goes through the Unpacker as before. The object
handed back is the one the Unpacker would have built: ``(tag, payload, options)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from .entries import unpacker
from .wire import read_header

__all__ = ["BULK_MIN_BYTES", "BulkFrame", "bulk_start"]

#: Payloads from this size on are gathered here; smaller frames are cheap either way.
BULK_MIN_BYTES = 64 * 1024
#: Bytes of what follows the payload given to the options' Unpacker at a time (an
#: options map is tens of bytes; the next frame need not be copied to find its end).
_OPTIONS_STEP = 4096
#: Reads smaller than this are copied into one buffer rather than kept apart: a peer
#: that sends a frame a byte at a time must not make the relay hold an object per byte.
_SMALL_READ = 16 * 1024
#: The most bytes the headers take: array, str8 tag of 255 bytes, bin32 header.
_HEAD_MAX = 1 + 2 + 255 + 5


@dataclass(slots=True, eq=False)
class BulkFrame:
    """One large PackedForward frame being gathered.

    Attributes:
        tag: the frame's tag, decoded as the Unpacker decodes strs.
        elements: 2 or 3 (the options map follows the payload).
        payload_at: where the payload starts in the frame.
        need: the frame's bytes up to the end of the payload.
    """

    tag: str
    elements: int
    payload_at: int
    need: int
    have: int = 0
    parts: list[memoryview | bytearray] = field(default_factory=list)
    options: Any = None  # the Unpacker of the options map, once the payload is in
    options_fed: int = 0

    def take(self, view: memoryview, pos: int, room: int) -> tuple[int, tuple[Any, ...] | None]:
        """Take bytes from ``view[pos:]``: (where this frame's bytes end in it, the
        frame's object once complete, else None).

        ``room``: bytes the options may take before the frame is over its limit.

        Raises:
            OverflowError: the options did not end within ``room`` bytes.
            Exception: what msgpack raises on an invalid options object.
        """
        end = len(view)
        if self.have < self.need:
            n = min(end - pos, self.need - self.have)
            if n >= _SMALL_READ:
                self.parts.append(view[pos:pos + n])
            elif self.parts and type(self.parts[-1]) is bytearray:
                self.parts[-1] += view[pos:pos + n]
            else:  # small reads are copied together: no object per read to keep
                self.parts.append(bytearray(view[pos:pos + n]))
            self.have += n
            pos += n
            if self.have < self.need:
                return pos, None
        if self.elements == 2:
            return pos, (self.tag, self._payload())
        if self.options is None:
            # A buffer of one step to start with: a megabyte allocated per frame would
            # cost more than the frame.
            self.options = unpacker(max(room, 1), _OPTIONS_STEP)
        while True:
            try:
                options = self.options.unpack()
            except msgpack.OutOfData:
                if pos >= end:
                    return pos, None
                left = room - self.options_fed
                if left <= 0:
                    raise OverflowError(room) from None
                step = view[pos:pos + min(_OPTIONS_STEP, left)]
                self.options.feed(step)
                self.options_fed += len(step)
                pos += len(step)
                continue
            # Bytes fed past the options' end belong to the next frame: hand them back.
            return pos - (self.options_fed - self.options.tell()), (
                self.tag, self._payload(), options)

    def _payload(self) -> bytes:
        first = self.parts[0]
        self.parts[0] = memoryview(first)[self.payload_at:]
        payload = b"".join(self.parts)
        self.parts.clear()
        return payload


def bulk_start(data: memoryview) -> BulkFrame | None:
    """A ``BulkFrame`` for the frame ``data`` begins with, or None: not that shape,
    not large, or its headers not all in ``data``."""
    head = data[:_HEAD_MAX]
    if len(head) < 2 or head[0] not in (0x92, 0x93):
        return None
    tag = read_header(head, 1)
    if tag is None or tag[0] != "str" or tag[2] > 2:  # a fixstr or str8 tag only
        return None
    at = 1 + tag[2] + tag[1]
    payload = read_header(head, at)
    if payload is None or payload[0] != "bin" or payload[1] < BULK_MIN_BYTES:
        return None
    payload_at = at + payload[2]
    tag_text = bytes(head[1 + tag[2]:at]).decode("utf-8", "surrogateescape")
    return BulkFrame(tag_text, head[0] & 0x0F, payload_at, payload_at + payload[1])
