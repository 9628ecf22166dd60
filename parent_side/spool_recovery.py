"""Reading a spool segment back after a crash: keep every intact entry, set aside the rest.

A segment is a header and entries framed ``u32 length | u32 crc32 | payload``. A crash
mid-write leaves a torn tail: cut it (those batches were never acked, so the agents
resend them). But bytes changed in the middle of a segment (a bad sector, a stray
write) must not cost the intact entries after them, whose own framing and checksums
are fine: the scan resynchronises at the next offset where a whole, checksummed,
decodable entry starts. The bytes skipped are a hole: the spool sets them aside in its
dead-letter file, reports them as its own loss, and rewrites the segment without them,
so that everything after recovery reads the segment as before.

``scan_entries`` is a pure function; ``append_dead_letters`` and ``rewrite`` do the file
work; ``Recovery`` walks a spool directory with them when the relay starts.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass, field

from .spool_format import (
    FRAME,
    HEADER,
    MAX_ENTRY,
    Segment,
    SpoolEntry,
    SpoolStats,
    _writev_all,
    check_header,
    crc32,
    segment_ids,
    segment_path,
    unpack_payload,
)

__all__ = ["Recovery", "Scan", "append_dead_letters", "rewrite", "scan_entries"]

log = logging.getLogger("parent_side.spool")

#: An entry's payload is a msgpack array of six: resynchronising only tries offsets
#: whose payload would start with that byte, which skips almost every other offset
#: before any checksum is computed.
_ARRAY6 = 0x96


@dataclass(slots=True)
class Scan:
    """What a segment holds: intact entries in order, holes between them (``[start,
    end)`` ranges of corrupt bytes), and ``end``, where a torn tail (if any) begins."""

    entries: list[SpoolEntry] = field(default_factory=list)
    holes: list[tuple[int, int]] = field(default_factory=list)
    end: int = 0


def scan_entries(data: bytes, start: int, seg_id: int) -> Scan:
    """Every intact entry of segment ``seg_id``'s ``data`` from ``start``,
    resynchronising past corruption."""
    scan = Scan()
    pos = start
    while pos < len(data):
        entry = _entry_at(data, pos, seg_id)
        if entry is None:
            nxt = _resync(data, pos, seg_id)
            if nxt is None:
                break  # nothing intact follows: a torn tail
            scan.holes.append((pos, nxt))
            pos = nxt
            continue
        scan.entries.append(entry)
        pos = entry.end
    scan.end = pos
    return scan


def _entry_at(data: bytes, pos: int, seg_id: int) -> SpoolEntry | None:
    if pos + FRAME.size > len(data):
        return None
    length, crc = FRAME.unpack_from(data, pos)
    end = pos + FRAME.size + length
    if length > MAX_ENTRY or end > len(data):
        return None
    payload = data[pos + FRAME.size:end]
    if crc32(payload) != crc:
        return None
    try:
        return unpack_payload(seg_id, pos, payload)
    except Exception:  # noqa: BLE001 - any decode failure means corrupt
        return None


def _resync(data: bytes, pos: int, seg_id: int) -> int | None:
    """The first offset after ``pos`` where an intact entry starts, if any."""
    marker = data.find(_ARRAY6, pos + 1 + FRAME.size)
    while marker >= 0:
        candidate = marker - FRAME.size
        if _entry_at(data, candidate, seg_id) is not None:
            return candidate
        marker = data.find(_ARRAY6, marker + 1)
    return None


def append_dead_letters(directory: str, records: list[dict[str, object]], *,
                        sync: bool = False) -> None:
    """Append ``records``, each stamped with the time, to the spool's ``dead-letter.jsonl``
    (the one file for everything set aside: refused batches and corrupt bytes)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(directory, "dead-letter.jsonl"), "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({"time": stamp, **record}) + "\n")
        if sync:
            f.flush()
            os.fsync(f.fileno())


def rewrite(path: str, data: bytes) -> None:
    """Replace the file at ``path`` with ``data``, durably (the caller syncs the directory)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        _writev_all(fd, [data])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Recovery:
    """What a spool directory holds at start: its segments checked (torn tails cut,
    holes set aside), the intact entries, and where forwarding resumes.

    Args:
        path: the spool directory.
        stats: the spool's counters; recovery adds to them.
    """

    def __init__(self, path: str, stats: SpoolStats) -> None:
        self.path = path
        self.stats = stats
        self.segments: dict[int, Segment] = {}  # oldest first
        self.entries: list[SpoolEntry] = []  # every intact entry, in order
        self.cursor: tuple[int, int] = (0, 0)
        self.dir_dirty = False  # a file was removed or replaced: sync the directory

    def run(self, hint: tuple[int, int] | None) -> None:
        """Check every segment in the directory; ``hint`` is the acked mark."""
        for seg_id in segment_ids(self.path):
            path = segment_path(self.path, seg_id)
            if hint and seg_id < hint[0]:
                os.unlink(path)  # entirely acked before the last stop
                self.dir_dirty = True
                continue
            seg = Segment(seg_id, path, sealed=True)
            skip_to = self._scan(seg, skip_to=hint[1] if hint and seg_id == hint[0] else 0)
            if skip_to is None:
                continue
            if hint and seg_id == hint[0]:
                hint = (seg_id, skip_to)  # where it is now, if the segment was rewritten
            self.segments[seg_id] = seg
        if self.segments:
            first = next(iter(self.segments))
            start = hint[1] if hint and hint[0] == first else HEADER.size
            self.cursor = (first, start)
        if self.stats.recovered_batches:
            log.info("spool %s: recovered %d batches (%d records) not yet acked downstream",
                     self.path, self.stats.recovered_batches, self.stats.recovered_records)

    def _scan(self, seg: Segment, skip_to: int) -> int | None:
        """Check a segment: keep every intact entry, set aside corrupt bytes between
        them, cut a torn tail; count what is left to forward. Returns where
        ``skip_to`` is now (the segment may have been rewritten), None if it is gone."""
        with open(seg.path, "rb") as f:
            data = f.read()
        if len(data) < HEADER.size:
            os.unlink(seg.path)  # created, never written: nothing in it
            self.dir_dirty = True
            return None
        check_header(self.path, seg, data)
        scan = scan_entries(data, HEADER.size, seg.id)
        for entry in scan.entries:
            self.entries.append(entry)
            if entry.offset >= skip_to:
                self.stats.recovered_batches += 1
                self.stats.recovered_records += entry.count
            seg.records += entry.count
        if scan.end < len(data):
            self.stats.torn_bytes_cut += len(data) - scan.end
            log.warning("spool %s: cut %d bytes of a torn or corrupt tail at offset %d",
                        seg.path, len(data) - scan.end, scan.end)
        if scan.holes:
            skip_to = self._set_aside_holes(seg, data, scan, skip_to)
        elif scan.end < len(data):
            with open(seg.path, "r+b") as f:
                f.truncate(scan.end)
                os.fsync(f.fileno())
        # The header and the intact entries, one after the other: what the file holds now.
        seg.size = seg.committed = HEADER.size + sum(e.size for e in scan.entries)
        return skip_to

    def _set_aside_holes(self, seg: Segment, data: bytes, scan: Scan,
                         skip_to: int) -> int:
        """Corrupt bytes between intact entries: into the dead-letter file, counted and
        reported as the spool's loss (not the agents'), and out of the segment."""
        name = os.path.basename(seg.path)
        append_dead_letters(self.path, [
            {"reason": "corrupt spool bytes (changed on disk)", "segment": name,
             "offset": start, "length": end - start,
             "bytes_b64": base64.b64encode(data[start:end]).decode()}
            for start, end in scan.holes], sync=True)
        lost = sum(end - start for start, end in scan.holes)
        self.stats.corrupt_bytes_set_aside += lost
        log.error("spool %s: %d bytes in %d place(s) of %s changed on disk and were set aside "
                  "in dead-letter.jsonl: the batches they held are lost by the spool, not by "
                  "the agents; the %d intact batches around them are kept", self.path, lost,
                  len(scan.holes), name, len(scan.entries))
        # The segment without its holes (nor its torn tail).
        rewrite(seg.path, b"".join([data[:HEADER.size],
                                    *(data[e.offset:e.end] for e in scan.entries)]))
        self.dir_dirty = True
        # Where the first entry at or after skip_to starts now.
        return HEADER.size + sum(e.end - e.offset for e in scan.entries if e.offset < skip_to)
