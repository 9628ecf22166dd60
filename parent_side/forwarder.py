"""Between the listener and the output: the spool (durable) or nothing (memory-only).

The listener hands every batch to a ``Sink``; the future it gets back says when the
agent may be acked.

- ``SpoolSink``: the batch is appended to the disk spool and acked once fsynced; a
  ``Forwarder`` task then moves spooled batches to the output, and a batch leaves the
  spool only when the output has it safe (Fluent Bit acked it).
- ``DirectSink`` (``--spool none``): the batch goes straight to the output and the
  agent is acked only once the output has it safe. Nothing is lost if the relay
  crashes (the agents still hold every unacked batch), but during an outage the
  backlog waits in the agents' memory instead of on the parent's disk.

A batch Fluent Bit keeps refusing (``PoisonFrame``) is set aside, never retried
forever: to the spool's dead-letter file, or, memory-only, to the log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol

from fluent_forward.aio import retrieved, start_task
from fluent_forward.retry import backoff

from .outputs import Output, PoisonFrame, RelayBatch
from .spool import Spool
from .spool_format import SpoolEntry

__all__ = ["DirectSink", "Forwarder", "Sink", "SpoolSink"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where the listener puts batches."""

    async def submit(self, batch: RelayBatch, boot_id: bytes | None,
                     seq: int | None) -> asyncio.Future[None]:
        """Wait for room, take the batch; the future resolves when the agent may be acked."""
        ...


#: (tag, records, bytes of entries) of a batch delivered downstream.
Delivered = Callable[[str, int, int], None]


class DirectSink:
    """Memory-only: the output itself, acked end to end.

    A batch whose output was closed under it (a reload switched outputs) is sent again
    through the current output.
    """

    def __init__(self, output: Output, *, on_delivered: Delivered) -> None:
        self.output = output
        self.on_delivered = on_delivered
        self._resending: set[asyncio.Task[None]] = set()  # referenced, or GC may end them

    async def submit(self, batch: RelayBatch, boot_id: bytes | None,
                     seq: int | None) -> asyncio.Future[None]:
        outer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._send(batch, outer)
        return outer

    async def _send(self, batch: RelayBatch, outer: asyncio.Future[None]) -> None:
        inner = await self.output.submit(batch)
        inner.add_done_callback(partial(self._done, batch, outer))

    def _done(self, batch: RelayBatch, outer: asyncio.Future[None],
              inner: asyncio.Future[None]) -> None:
        if outer.done():
            return
        if inner.cancelled():
            start_task(self._resending, self._send(batch, outer))
            return
        exc = inner.exception()
        if isinstance(exc, PoisonFrame):
            # No disk to set it aside on: log it, and ack it so the agent stops resending.
            log.error("dropped a batch of %d records on %s that Fluent Bit kept refusing "
                      "(%s); memory-only mode has no dead-letter file", batch.count,
                      batch.tag, str(exc))
            outer.set_result(None)
        elif exc is not None:
            outer.set_exception(exc)
            outer.exception()  # retrieved: the connection that waits for it may be gone
        else:
            self.on_delivered(batch.tag, batch.count, len(batch.entries))
            outer.set_result(None)


class SpoolSink:
    """Durable: append to the spool; acked once fsynced."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    async def submit(self, batch: RelayBatch, boot_id: bytes | None,
                     seq: int | None) -> asyncio.Future[None]:
        return await self.spool.append(batch.tag, batch.entries, batch.count,
                                       boot_id=boot_id, seq=seq)


class Forwarder:
    """Move spooled batches to the output, in order; ack them in the spool once safe.

    A batch the output failed (a file output whose disk filled, say) is submitted
    again after a capped backoff; a ``PoisonFrame`` goes to the dead-letter file.
    """

    def __init__(self, spool: Spool, output: Output, *, on_delivered: Delivered) -> None:
        self.spool = spool
        self.output = output
        self.hint_interval = 1.0  # seconds between syncs of the acked mark
        self.on_delivered = on_delivered
        self.replays = 0
        self.replayed_records = 0
        self._stopping = False
        # Replays and retries: referenced (asyncio keeps only a weak reference to a
        # task), and cancelled when the forwarder stops; the spool keeps their entries.
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        hints = asyncio.create_task(self._hints())
        try:
            while True:
                await self._submit(await self.spool.next_entry())
        finally:
            self._stopping = True
            tasks = (hints, *self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def replay(self) -> None:
        """Fluent Bit restarted: send again what it acked within the replay window,
        in case it lost that (replay.py). Those copies are not tracked by the spool: the
        originals were acked already, and a copy lost again is not retried."""
        entries = self.spool.replayable()
        if not entries:
            return
        records = sum(e.count for e in entries)
        self.replays += 1
        self.replayed_records += records
        log.warning("Fluent Bit restarted: sending again the %d batches (%d records) it "
                    "acked in the last %gs (--replay-window), in case it lost them: "
                    "duplicates rather than loss", len(entries), records,
                    self.spool.replay.seconds)
        start_task(self._tasks, self._replay(entries))

    async def _replay(self, entries: list[SpoolEntry]) -> None:
        for entry in entries:
            fut = await self.output.submit(RelayBatch(entry.tag, entry.entries, entry.count))
            fut.add_done_callback(retrieved)  # a copy is not retried

    async def _submit(self, entry: SpoolEntry) -> None:
        fut = await self.output.submit(RelayBatch(entry.tag, entry.entries, entry.count))
        fut.add_done_callback(partial(self._done, entry))

    def _done(self, entry: SpoolEntry, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            if not self._stopping:  # the output was replaced (reload): send it again
                start_task(self._tasks, self._retry(entry, at_once=True))
            return  # shutting down: the entry stays in the spool for next time
        exc = fut.exception()
        if exc is None:
            self.spool.ack(entry)
            self.on_delivered(entry.tag, entry.count, len(entry.entries))
        elif isinstance(exc, PoisonFrame):
            self.spool.dead_letter(entry, str(exc))
        else:
            log.warning("output failed a batch of %d records (%s); retrying", entry.count,
                        str(exc))
            start_task(self._tasks, self._retry(entry))

    async def _retry(self, entry: SpoolEntry, *, at_once: bool = False) -> None:
        delays = backoff(initial=0.5, maximum=30.0)
        for delay in itertools.chain([0.0], delays) if at_once else delays:
            await asyncio.sleep(delay)
            try:
                await self._submit(entry)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the spool holds it
                log.warning("retrying a batch failed again: %s", str(exc))

    async def _hints(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.hint_interval)
            self.spool.expire_replay()
            try:
                self.spool.write_hint()
                failing = False
            except OSError as exc:
                # Once per streak: on a full disk this fails every second.
                (log.debug if failing else log.warning)(
                    "spool: cannot write the acked mark: %s (a restart may resend more)",
                    exc.strerror)
                failing = True
