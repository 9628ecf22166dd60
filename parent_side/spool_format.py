"""A spool segment on disk: its format, the records it holds, and the writes and reads.

A segment starts with a 16-byte header (``NELSPOOL``, a format version, zeros) and
holds entries, each framed as ``u32 length | u32 crc32 | payload``; the payload is a
msgpack array ``[tag, entries, count, boot_id, seq, received_ns]``. Everything here
knows one segment file at a time; ``spool.py`` keeps the order, the acks and the room.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

try:  # ISA-L's CRC-32: the same checksum as zlib's, ten times faster (the [fast] extra)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - without the extra
    from zlib import crc32

from fluent_forward.wire import bin_header

__all__ = [
    "FORMAT_VERSION",
    "FRAME",
    "HEADER",
    "MAGIC",
    "MAX_ENTRY",
    "Segment",
    "SpoolEntry",
    "SpoolError",
    "SpoolStats",
    "Write",
    "check_header",
    "commit_group",
    "crc32",
    "payload_parts",
    "read_entry",
    "segment_ids",
    "segment_path",
    "unpack_payload",
]

MAGIC = b"NELSPOOL"
FORMAT_VERSION = 1
HEADER = struct.Struct(">8sHH4x")  # magic, version, flags
FRAME = struct.Struct(">II")  # payload length, crc32
#: Entries larger than this are refused as corrupt when reading back.
MAX_ENTRY = 64 * 1024 * 1024


class SpoolError(Exception):
    """The spool cannot be used; the message names ``--spool`` and the fix."""


@dataclass(slots=True, eq=False)
class SpoolEntry:
    """One spooled batch on its way downstream."""

    segment: int
    offset: int
    tag: str
    entries: bytes
    count: int
    boot_id: bytes | None = None
    seq: int | None = None
    received_ns: int = 0
    size: int = 0  # bytes on disk, framing included

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(slots=True, eq=False)
class Segment:
    """One segment file and how far it is written and synced."""

    id: int
    path: str
    size: int = 0  # bytes written (or queued to be written)
    committed: int = 0  # bytes known durable
    records: int = 0
    sealed: bool = False  # no more appends
    fd: int = -1

    def close(self) -> None:
        """Close the file if it is open (the segment stays on disk)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class SpoolStats:
    """Counters for status and metrics."""

    appended_batches: int = 0
    forwarded_batches: int = 0
    acked_batches: int = 0
    duplicate_batches: int = 0
    gap_batches: int = 0
    dropped_records: int = 0
    dead_lettered: int = 0
    recovered_batches: int = 0
    recovered_records: int = 0
    torn_bytes_cut: int = 0
    corrupt_bytes_set_aside: int = 0


def segment_path(directory: str, seg_id: int) -> str:
    return os.path.join(directory, f"{seg_id:016d}.seg")


def segment_ids(directory: str) -> list[int]:
    """The ids of the segment files in ``directory``, oldest first."""
    names = [name[:-4] for name in os.listdir(directory) if name.endswith(".seg")]
    return sorted(int(name) for name in names if name.isdigit())


def check_header(directory: str, seg: Segment, data: bytes) -> None:
    """Refuse a file that is not a segment, or one a newer relay wrote."""
    magic, version, _ = HEADER.unpack_from(data)
    name = os.path.basename(seg.path)
    if magic != MAGIC:
        raise SpoolError(f"--spool {directory}: {name} is not a "
                         "spool segment; move it away or use another --spool DIR")
    if version > FORMAT_VERSION:
        raise SpoolError(
            f"--spool {directory}: {name} has spool format "
            f"{version}, newer than this relay's {FORMAT_VERSION}: a newer relay wrote "
            "it. Run that relay until the spool drains, or use another --spool DIR")


_pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack


def payload_parts(e: SpoolEntry) -> tuple[bytes, bytes, bytes]:
    """The payload ``[tag, entries, count, boot_id, seq, received_ns]`` in three parts
    whose concatenation is its msgpack; the entries are the batch's own bytes, so
    spooling a batch copies them only into the kernel."""
    head = b"\x96" + _pack(e.tag) + bin_header(len(e.entries))
    tail = _pack((e.count, e.boot_id, e.seq, e.received_ns))[1:]  # without the array header
    return head, e.entries, tail


def unpack_payload(segment: int, offset: int, payload: bytes) -> SpoolEntry:
    tag, entries, count, boot, seq, received = msgpack.unpackb(
        payload, raw=False, unicode_errors="surrogateescape", use_list=False)
    return SpoolEntry(segment, offset, tag, entries, count, boot, seq, received,
                      FRAME.size + len(payload))


def read_entry(seg: Segment, offset: int) -> SpoolEntry:
    """The entry at ``offset`` of a committed segment."""
    with open(seg.path, "rb") as f:
        f.seek(offset)
        length, crc = FRAME.unpack(f.read(FRAME.size))
        payload = f.read(length)
    if len(payload) != length or crc32(payload) != crc:
        # Checked at recovery and written by us since: the disk changed under us.
        raise SpoolError(f"spool {seg.path}: entry at {offset} is corrupt")
    return unpack_payload(seg.id, offset, payload)


@dataclass(slots=True, eq=False)
class Write:
    """Bytes queued for the commit thread: ``parts`` in order, after the entry framing
    (length and crc32, computed in that thread) when ``framed``."""

    seg: Segment
    parts: tuple[bytes, ...]
    framed: bool

    @property
    def size(self) -> int:
        return (FRAME.size if self.framed else 0) + sum(map(len, self.parts))


#: Most buffers one writev() takes (Linux: 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def _writev_all(fd: int, parts: list[bytes]) -> None:
    """Write every part, in order, with as few writev() calls as the kernel allows."""
    views = [memoryview(p) for p in parts if p]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while n and i < len(views):  # drop what was written, trim a part written in half
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def commit_group(writes: list[Write], dir_fd: int, starts: dict[int, int], *,
                 writev: Callable[[int, list[bytes]], None],
                 fsync: Callable[[int], None]) -> None:
    """In the commit thread: frame the entries (crc32 runs here, off the event loop,
    and without the GIL), write everything with writev, then one fdatasync per file.
    On a failure, cut what this group wrote off the files again (``starts``: fd ->
    size before) and raise."""
    by_fd: dict[int, list[bytes]] = {}
    for w in writes:
        parts = by_fd.setdefault(w.seg.fd, [])  # dicts keep order: segments in turn
        if w.framed:
            crc = 0
            for part in w.parts:
                crc = crc32(part, crc)
            parts.append(FRAME.pack(w.size - FRAME.size, crc))
        parts.extend(w.parts)
    try:
        for fd, parts in by_fd.items():
            writev(fd, parts)
            fsync(fd)
        if dir_fd >= 0:
            os.fsync(dir_fd)
    except OSError:
        for fd, size in starts.items():
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no half entry stays behind; frees the room
        raise
