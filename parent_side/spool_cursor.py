"""The forwarding side's bookkeeping: entries out for ack, and the newest entries cached.

Forwarding reads the spool in order, but downstream may ack out of order; the acked
mark can only move past an entry once everything before it was acked, and a segment
can only go once none of its entries is out. ``Outstanding`` keeps that, keyed by
(segment, offset): positions in read order, not a window of batches to resend
(``fluent_forward.window.InFlight``, the Forward client's). ``ReadCache`` keeps the
newest appended entries in memory, so a forwarder that is caught up takes them
without reading the disk.
"""

from __future__ import annotations

import collections

from .spool_format import SpoolEntry

__all__ = ["Outstanding", "ReadCache"]

Key = tuple[int, int]  # (segment id, offset)


class Outstanding:
    """Entries handed to the output and not yet acked, in read order."""

    def __init__(self) -> None:
        self._acked: dict[Key, bool] = {}  # out, in read order -> acked yet
        self._order: collections.deque[Key] = collections.deque()
        self._per_segment: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return len(self._acked)

    def add(self, key: Key) -> None:
        self._acked[key] = False
        self._order.append(key)
        self._per_segment[key[0]] += 1

    def ack(self, key: Key) -> bool | None:
        """Mark ``key`` acked. None if it was not out (its segment was dropped); else
        whether the oldest entry out moved (the acked mark may be written)."""
        if key not in self._acked:
            return None
        self._acked[key] = True
        self._per_segment[key[0]] -= 1
        moved = False
        while self._order and self._acked.get(self._order[0]):
            del self._acked[self._order.popleft()]
            moved = True
        return moved

    def in_segment(self, seg_id: int) -> int:
        """How many entries of segment ``seg_id`` are out and not acked."""
        return self._per_segment[seg_id]

    def unacked(self, key: Key) -> bool:
        return key in self._acked and not self._acked[key]

    def oldest(self) -> Key | None:
        """The oldest entry still out: everything read before it was acked."""
        return self._order[0] if self._order else None

    def forget(self, seg_id: int) -> None:
        """The segment is gone: nothing of it is out any more."""
        for key in [k for k in self._acked if k[0] == seg_id]:
            del self._acked[key]
        self._order = collections.deque(k for k in self._order if k[0] != seg_id)
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
        while cache and (cache[0].segment, cache[0].offset) < (seg_id, offset):
            self._size -= len(cache.popleft().entries)
        if cache and (cache[0].segment, cache[0].offset) == (seg_id, offset):
            entry = cache.popleft()
            self._size -= len(entry.entries)
            return entry
        return None
