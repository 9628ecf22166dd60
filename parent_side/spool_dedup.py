"""The batches an agent resent: recognised by (boot id, sequence number), acked once.

An agent resends every batch it sent but saw no ack for, so after a reconnect the spool
sees some batches twice. ``Resent`` remembers the last sequence numbers of the agent
runs ``runs`` follows, each with the future of the append that stored it (None:
recovered from disk, so durable), and forgets a run's batches when ``runs`` forgets it.
"""

from __future__ import annotations

import asyncio
import collections

from .runs import Runs

__all__ = ["Resent"]

Key = tuple[bytes, int]


class Resent:
    """Recent (boot id, seq) pairs of the runs in ``runs``, ``window`` more than 8 a run."""

    def __init__(self, runs: Runs, window: int = 4096) -> None:
        self.runs = runs
        self.window = window
        self.recent: collections.OrderedDict[Key, asyncio.Future[None] | None] = (
            collections.OrderedDict())
        runs.on_forget = self.forget

    def first(self, boot_id: bytes | None, seq: int | None) -> asyncio.Future[None] | None:
        """The future of the copy already stored, or None if this batch is new."""
        if boot_id is None or seq is None or (boot_id, seq) not in self.recent:
            return None
        fut = self.recent[(boot_id, seq)]
        if fut is None:  # recovered from disk: durable already
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
        return fut

    def remember(self, boot_id: bytes, seq: int, fut: asyncio.Future[None] | None) -> None:
        """Remember a stored batch (its run already advanced in ``runs``)."""
        self.recent[(boot_id, seq)] = fut
        while len(self.recent) > self.runs.limit * 8 + self.window:
            self.recent.popitem(last=False)

    def forget(self, boot_id: bytes) -> None:
        """Forget the batches of a run ``runs`` no longer follows."""
        for key in [k for k in self.recent if k[0] == boot_id]:
            del self.recent[key]
