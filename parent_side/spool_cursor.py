"""The forwarding side of the spool: where reading got, entries out for ack, a read cache.

``Cursor`` reads committed entries in order across the spool's segments, from memory
when it can and from the segment file when it must, and knows what was read, what is
out for ack and so what the ``acked`` mark may say. Forwarding reads in order, but
downstream may ack out of order; the acked
mark can only move past an entry once everything before it was acked, and a segment
can only go once none of its entries is out. ``Outstanding`` keeps that, keyed by
(segment, offset): positions in read order, not a window of batches to resend
(``fluent_forward.window.InFlight``, the Forward client's). ``ReadCache`` keeps the
newest appended entries in memory, so a forwarder that is caught up takes them
without reading the disk.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from .spool_format import HEADER, Segment, SpoolEntry, read_entry

__all__ = ["Cursor", "Outstanding", "ReadCache"]

Key = tuple[int, int]  # (segment id, offset)


class Outstanding:
    """Entries handed to the output and not yet acked, in read order."""

    def __init__(self) -> None:
        # An OrderedDict, not a dict: the oldest key is taken and dropped often, which
        # a dict does in time that grows with what was dropped before it.
        self._out: collections.OrderedDict[Key, None] = collections.OrderedDict()
        self._per_segment: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return len(self._out)

    def add(self, key: Key) -> None:
        self._out[key] = None
        self._per_segment[key[0]] += 1

    def ack(self, key: Key) -> bool | None:
        """Mark ``key`` acked. None if it was not out (its segment was dropped); else
        whether the oldest entry out moved (the acked mark may be written)."""
        if key not in self._out:
            return None
        moved = key == self.oldest()
        del self._out[key]
        self._per_segment[key[0]] -= 1
        return moved

    def in_segment(self, seg_id: int) -> int:
        """How many entries of segment ``seg_id`` are out and not acked."""
        return self._per_segment[seg_id]

    def unacked(self, key: Key) -> bool:
        return key in self._out

    def oldest(self) -> Key | None:
        """The oldest entry still out: everything read before it was acked."""
        return next(iter(self._out), None)

    def forget(self, seg_id: int) -> None:
        """The segment is gone: nothing of it is out any more."""
        for key in [k for k in self._out if k[0] == seg_id]:
            del self._out[key]
        self._per_segment.pop(seg_id, None)


class ReadCache:
    """Up to ``limit`` bytes of the newest appended entries, oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: collections.deque[SpoolEntry] = collections.deque()
        self._size = 0

    def add(self, entry: SpoolEntry) -> None:
        if self._size < self.limit:
            self._entries.append(entry)
            self._size += len(entry.entries)

    def take(self, seg_id: int, offset: int) -> SpoolEntry | None:
        """The entry at (seg_id, offset) if cached; drops every entry before it."""
        cache = self._entries
        while cache and (cache[0].segment, cache[0].offset) <= (seg_id, offset):
            entry = cache.popleft()
            self._size -= len(entry.entries)
            if (entry.segment, entry.offset) == (seg_id, offset):
                return entry
        return None


class Cursor:
    """The next entry to forward, in ``segments`` (the spool's, shared), and what was read.

    Args:
        segments: the spool's segments by id, oldest first.
        cache_bytes: keep up to this much of the newest entries in memory, so the
            forwarder reads them without touching the disk.
    """

    def __init__(self, segments: collections.OrderedDict[int, Segment],
                 cache_bytes: int = 16 << 20) -> None:
        self.segments = segments
        self.at: tuple[int, int] = (0, 0)  # (segment id, offset); (0, 0): nothing spooled yet
        self.cache = ReadCache(cache_bytes)
        self.out = Outstanding()

    def read_disk(self, seg: Segment, offset: int) -> SpoolEntry:
        """An entry read back from its segment file (one place, so tests can count
        the reads that missed the cache)."""
        return read_entry(seg, offset)

    def read(self, passed: Callable[[Segment], None]) -> SpoolEntry | None:
        """The next committed entry, or None until there is one; ``passed`` is told of
        each segment read to its end (it may go once acked)."""
        seg_id, offset = self.at
        seg = self.segments.get(seg_id)
        if seg is None:  # dropped, or never existed: go to the oldest there is
            if not self.segments:
                return None
            seg = next(iter(self.segments.values()))
            seg_id, offset = seg.id, HEADER.size
            self.at = (seg_id, offset)
        if offset >= seg.committed:
            if seg.sealed and seg.committed == seg.size and seg_id != next(reversed(
                    self.segments)):
                # Not the newest, so a newer one follows (ids only grow): go on there.
                self.at = (next(sid for sid in self.segments if sid > seg_id), HEADER.size)
                passed(seg)
                return self.read(passed)
            return None
        entry = self.cache.take(seg_id, offset)
        if entry is None:
            entry = self.read_disk(seg, offset)
        self.at = (seg_id, entry.end)
        return entry

    def done_with(self, seg: Segment) -> bool:
        """Whether every entry of ``seg`` was read and acked."""
        return self.at[0] > seg.id and not self.out.in_segment(seg.id)

    def unsent(self, seg: Segment) -> tuple[int, int]:
        """(records, batches) of ``seg`` not acked downstream, read from the disk."""
        records = batches = 0
        offset = HEADER.size
        while offset < seg.committed:
            entry = self.read_disk(seg, offset)
            unread = self.at[0] < seg.id or (self.at[0] == seg.id and offset >= self.at[1])
            if unread or self.out.unacked((seg.id, offset)):
                records += entry.count
                batches += 1
            offset = entry.end
        return records, batches

    def mark(self) -> tuple[int, int] | None:
        """How far downstream acked: everything before the oldest entry still out (or
        before the cursor, if none is out). None if nothing was ever spooled."""
        if self.at == (0, 0):
            return None
        return self.out.oldest() or self.at
