"""The agent's bounded memory: batches being filled, waiting, and sent-but-unacked.

In an enclave, RAM is also the disk, so everything the agent holds counts against
one cap (``max_bytes``). A batch is freed only when the relay acks it. What happens
when the cap is reached depends on who is adding:

- ``Overflow.BLOCK``: the records are taken, and the source must wait in
  ``wait_for_room()`` before reading more (the child blocks on its pipe, a tailed
  file pauses: the file is the buffer). The cap may be overshot by one read per
  source, never more.
- ``Overflow.DROP_OLDEST``: room is made first by dropping the oldest records that were
  never sent and were themselves added under ``DROP_OLDEST`` (sealed batches, then
  batches still filling, then the new records themselves): records of sources that
  wait (tailed files, the Forward input) are never dropped to make room. Every
  dropped record is counted, and a report goes downstream as soon as the link is
  back, in a batch that is itself never dropped.

A source that must know when its records are safe (a rotated file deleted once all
of it was acked) passes an ``owner``; every batch remembers how many of its parts
came from which owner and tells each one on ack.

Batches are PackedForward frames whose ``chunk`` is the boot id and the batch's
sequence number, so the relay can spot a resent batch and a gap in the sequence.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from fluent_forward.aio import until
from fluent_forward.codec import encode_packed_forward
from fluent_forward.conventions import DIAG_TAG, Overflow, chunk_id, drop_report
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.window import InFlight

__all__ = ["AckWatcher", "Batch", "Buffer", "BufferStats", "Sealer"]


class _Kind(IntEnum):
    """Batches never mix records that may be dropped with records that may not."""

    DROPPABLE = 0  # added under DROP_OLDEST
    KEPT = 1  # added under BLOCK: the source waits instead
    PROTECTED = 2  # lifecycle, drop reports: never dropped, never wait


class Sealer(Protocol):
    """Rewrites batches as they are sealed (``--sign`` numbers their records)."""

    def number(self, tag: str, parts: list[bytes], counts: list[int], uniform: list[bool]
               ) -> tuple[list[bytes], int, tuple[int, int, int]] | None:
        """New entries (parts to concatenate), their count and what they are called;
        None to keep them. ``uniform``: the parts whose entries all start alike."""

    def after_seal(self) -> None:
        """Called once the batch is queued."""

    def dropped(self, signed: tuple[int, int, int]) -> None:
        """A batch it numbered was dropped unsent (``DROP_OLDEST``)."""


class AckWatcher(Protocol):
    """Told when batches holding its records are acked."""

    def parts_acked(self, parts: int) -> None:
        """``parts`` of the ``add()`` calls made with this owner are now acked."""


@dataclass(slots=True, eq=False)
class Batch:
    """A sealed PackedForward frame and what the buffer needs to know about it."""

    seq: int
    tag: str
    chunk: str
    frame: bytes
    count: int
    protected: bool = False
    sends: int = 0  # how many times it was written to a connection
    droppable: bool = False
    owners: dict[AckWatcher, int] = field(default_factory=dict)
    signed: tuple[int, int, int] | None = None  # what the Sealer numbered

    @property
    def size(self) -> int:
        return len(self.frame)


def _overhead(tag: str) -> int:
    """An upper bound on a PackedForward frame's bytes besides its entries."""
    return 64 + len(tag.encode())


@dataclass(slots=True)
class _Open:
    parts: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # entries in each part
    uniform: list[bool] = field(default_factory=list)  # each part's add(uniform=...)
    size: int = 0  # bytes of entries
    count: int = 0
    since: float = 0.0
    reserved: int = 0  # room held for the frame around the entries
    owners: dict[AckWatcher, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot for metrics and logs."""

    used_bytes: int
    max_bytes: int
    open_records: int
    queued_batches: int
    unacked_batches: int
    acked_batches: int
    dropped_records: int
    dropped_bytes: int


class Buffer:
    """Bounded batches between the sources and the shipper.

    Args:
        boot_id: 8 random bytes naming this agent run (the chunk id's first half).
        max_bytes: the memory cap for everything held.
        batch_bytes: seal a batch once its entries reach this size.
        flush_interval: seal a batch once its oldest record is this old (seconds).
    """

    def __init__(self, *, boot_id: bytes, max_bytes: int, batch_bytes: int,
                 flush_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.boot_id = boot_id
        self.max_bytes = max_bytes
        self.batch_bytes = batch_bytes
        self.flush_interval = flush_interval
        self._clock = clock
        self._open: dict[tuple[str, _Kind], _Open] = {}
        self._queue: collections.deque[Batch] = collections.deque()
        self._unacked: InFlight[Batch] = InFlight()
        self._next_seq = 1
        #: Bytes held: filling, queued and unacked.
        self.used = 0
        self._changed = asyncio.Event()
        self._acked = 0
        self.dropped_records = self.dropped_bytes = 0
        self._unreported_records = self._unreported_bytes = 0
        #: Called with the clock time a newly opened batch falls due (its first record
        #: plus ``flush_interval``), so that it can be sealed then, not at the next tick.
        self.on_open: Callable[[float], None] | None = None
        #: With ``--sign``: numbers each batch's records as it is sealed.
        self.sealer: Sealer | None = None

    # -- sources --------------------------------------------------------------------

    def has_room(self) -> bool:
        return self.used < self.max_bytes

    async def wait_for_room(self, below: int | None = None) -> None:
        """Return once the buffer holds less than ``below`` bytes (default: its cap)."""
        limit = self.max_bytes if below is None else min(below, self.max_bytes)
        await until(self._changed, lambda: self.used < limit)

    def add(self, tag: str, entries: bytes, count: int, *,
            policy: Overflow = Overflow.BLOCK, protected: bool = False,
            owner: AckWatcher | None = None, uniform: bool = False) -> int:
        """Take ``count`` packed entries for ``tag``; return how many were kept.

        ``uniform``: the caller vouches that every entry starts with the same bytes up to
        its line (``EntryEncoder.uniform``), which spares ``--sign`` a check.

        ``protected`` records (lifecycle, drop reports) are never dropped and never
        wait: they are small and rare. A batch never grows past ``batch_bytes``
        because of an add: it is sealed first (one add larger than that travels
        alone).
        """
        if not count:
            return 0
        droppable = policy is Overflow.DROP_OLDEST and not protected
        kind = _Kind.PROTECTED if protected else _Kind.DROPPABLE if droppable else _Kind.KEPT
        key = (tag, kind)
        size = len(entries)
        batch = self._open.get(key)
        if batch is not None and batch.size + size > self.batch_bytes:
            self._seal(key)
            batch = None
        # A new batch reserves room for its frame's header and options up front, so
        # sealing never pushes the total over the cap.
        if droppable:
            self._make_room(size + (0 if batch is not None else _overhead(tag)))
            batch = self._open.get(key)
            if self.used + size + (0 if batch is not None else _overhead(tag)) > self.max_bytes:
                self._count_drop(count, size)
                return 0
        if batch is None:
            batch = self._open[key] = _Open(since=self._clock(), reserved=_overhead(tag))
            self.used += batch.reserved
            if self.on_open is not None:
                self.on_open(batch.since + self.flush_interval)
        batch.parts.append(entries)
        batch.counts.append(count)
        batch.uniform.append(uniform)
        batch.size += size
        batch.count += count
        self.used += size
        if owner is not None:
            batch.owners[owner] = batch.owners.get(owner, 0) + 1
        if batch.size >= self.batch_bytes:
            self._seal(key)
        return count

    def add_record(self, tag: str, entry_time_ns: int, record: dict[str, object]) -> None:
        """Add one protected record (lifecycle events, diagnostics): never dropped."""
        self.add(tag, pack_entry(EventTime.from_ns(entry_time_ns), record), 1, protected=True)

    def _count_drop(self, records: int, size: int) -> None:
        self.dropped_records += records
        self.dropped_bytes += size
        self._unreported_records += records
        self._unreported_bytes += size

    def _make_room(self, size: int) -> None:
        """Drop the oldest never-sent records until ``size`` more bytes fit."""
        if self.used + size <= self.max_bytes:
            return
        for batch in list(self._queue):
            if self.used + size <= self.max_bytes:
                return
            if not batch.droppable or batch.sends:
                continue
            self._queue.remove(batch)
            self.used -= batch.size
            self._count_drop(batch.count, batch.size)
            if batch.signed is not None and self.sealer is not None:
                self.sealer.dropped(batch.signed)
        for key, opened in sorted(self._open.items(), key=lambda kv: kv[1].since):
            if self.used + size <= self.max_bytes:
                return
            if key[1] is not _Kind.DROPPABLE:
                continue
            del self._open[key]
            self.used -= opened.size + opened.reserved
            self._count_drop(opened.count, opened.size)

    # -- sealing --------------------------------------------------------------------

    def _seal(self, key: tuple[str, _Kind]) -> None:
        opened = self._open.pop(key)
        seq = self._next_seq
        self._next_seq += 1
        chunk = chunk_id(self.boot_id, seq)
        parts: list[bytes] | bytes = opened.parts
        count, signed = opened.count, None
        numbered = (self.sealer.number(key[0], opened.parts, opened.counts, opened.uniform)
                    if self.sealer else None)
        if numbered is not None:
            parts, count, signed = numbered
        # The parts go into the frame as they are: one copy of the entries, not two.
        frame = encode_packed_forward(key[0], parts, {"chunk": chunk, "size": count})
        batch = Batch(seq, key[0], chunk, frame, count, key[1] is _Kind.PROTECTED,
                      droppable=key[1] is _Kind.DROPPABLE, owners=opened.owners,
                      signed=signed)
        self.used += batch.size - opened.size - opened.reserved
        self._queue.append(batch)
        self._changed.set()
        if self.sealer is not None:
            self.sealer.after_seal()

    def seal_due(self) -> None:
        """Seal every batch whose oldest record has waited ``flush_interval``."""
        deadline = self._clock() - self.flush_interval
        for key in [k for k, b in self._open.items() if b.since <= deadline]:
            self._seal(key)

    def next_due(self) -> float | None:
        """When the oldest batch still filling falls due (clock time); None if none is."""
        if not self._open:
            return None
        return min(b.since for b in self._open.values()) + self.flush_interval

    def seal_all(self) -> None:
        """Seal everything still filling (before a drain)."""
        for key in list(self._open):
            self._seal(key)

    # -- the shipper ----------------------------------------------------------------

    async def next_batch(self, window: int) -> Batch:
        """Wait for a batch to send while fewer than ``window`` are unacked; mark it sent."""
        while True:
            if self._unacked.has_room(window):
                if self._unreported_records:
                    self._queue_drop_report()
                if self._queue:
                    break
            self._changed.clear()
            await self._changed.wait()
        batch = self._queue.popleft()
        batch.sends += 1
        self._unacked.add(batch)
        return batch

    def _queue_drop_report(self) -> None:
        records, size = self._unreported_records, self._unreported_bytes
        self._unreported_records = self._unreported_bytes = 0
        self.add_record(DIAG_TAG, time.time_ns(), drop_report(records, size))
        if (DIAG_TAG, _Kind.PROTECTED) in self._open:  # add() seals full batches itself
            self._seal((DIAG_TAG, _Kind.PROTECTED))
        # The report goes first: it explains the gap the relay is about to see.
        self._queue.rotate(1)

    def ack(self, chunk: str | bytes) -> Batch | None:
        """Free the batch ``chunk`` names; None if it is unknown (a stale or bogus ack)."""
        batch = self._unacked.ack(chunk)
        if batch is None:
            return None
        self.used -= batch.size
        self._acked += 1
        self._changed.set()
        for owner, parts in batch.owners.items():
            owner.parts_acked(parts)
        return batch

    def requeue_unacked(self) -> int:
        """After a lost connection: put every unacked batch back in front, oldest first."""
        batches = self._unacked.take_all()
        self._queue.extendleft(reversed(batches))
        self._changed.set()  # (with none, a waiter wakes, looks, and waits again)
        return len(batches)

    @property
    def empty(self) -> bool:
        """Nothing filling, queued or unacked."""
        return not (self._open or self._queue or self._unacked or self._unreported_records)

    async def wait_empty(self) -> None:
        """Return once everything was acked."""
        await until(self._changed, lambda: self.empty)

    def stats(self) -> BufferStats:
        return BufferStats(self.used, self.max_bytes,
                           sum(b.count for b in self._open.values()), len(self._queue),
                           len(self._unacked), self._acked,
                           self.dropped_records, self.dropped_bytes)
