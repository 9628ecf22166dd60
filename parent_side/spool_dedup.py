"""The batches an agent resent: recognised by (boot id, sequence number), acked once.

An agent resends every batch it sent but saw no ack for, so after a reconnect the spool
sees some batches twice. ``Resent`` remembers the last sequence numbers of recent agent
runs, each with the future of the append that stored it (None: recovered from disk, so
durable), and notices a run that skipped sequence numbers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

__all__ = ["Resent"]

log = logging.getLogger("parent_side.spool")

Key = tuple[bytes, int]


@dataclass(slots=True)
class _Boot:
    max_seq: int = 0
    last_seen: float = 0.0


class Resent:
    """Recent (boot id, seq) pairs of up to ``boots`` agent runs, ``window`` per run."""

    def __init__(self, boots: int, window: int) -> None:
        self.boots_max = boots
        self.window = window
        self.recent: collections.OrderedDict[Key, asyncio.Future[None] | None] = (
            collections.OrderedDict())
        self.boots: collections.OrderedDict[bytes, _Boot] = collections.OrderedDict()

    def first(self, boot_id: bytes | None, seq: int | None) -> asyncio.Future[None] | None:
        """The future of the copy already stored, or None if this batch is new."""
        if boot_id is None or seq is None or (boot_id, seq) not in self.recent:
            return None
        fut = self.recent[(boot_id, seq)]
        if fut is None:  # recovered from disk: durable already
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
        return fut

    def remember(self, boot_id: bytes | None, seq: int | None,
                 fut: asyncio.Future[None] | None) -> int:
        """Remember a stored batch; returns how many batches its run skipped before it."""
        if boot_id is None or seq is None:
            return 0
        boot = self._boot(boot_id)
        missing = seq - boot.max_seq - 1 if boot.max_seq and seq > boot.max_seq + 1 else 0
        if missing and fut is not None:  # not while recovering: it was logged when it happened
            log.warning("agent run %s skipped %d batch(es) (%d..%d): it dropped them "
                        "(overflow drop_oldest) or lost them", boot_id.hex(), missing,
                        boot.max_seq + 1, seq - 1)
        boot.max_seq = max(boot.max_seq, seq)
        boot.last_seen = time.monotonic()
        self.recent[(boot_id, seq)] = fut
        while len(self.recent) > self.boots_max * 8 + self.window:
            self.recent.popitem(last=False)
        return missing

    def _boot(self, boot_id: bytes) -> _Boot:
        boot = self.boots.get(boot_id)
        if boot is not None:
            self.boots.move_to_end(boot_id)
            return boot
        boot = self.boots[boot_id] = _Boot()
        while len(self.boots) > self.boots_max:
            old, _ = self.boots.popitem(last=False)
            for key in [k for k in self.recent if k[0] == old]:
                del self.recent[key]
        return boot
