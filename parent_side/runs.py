"""Agent runs' batch sequences: the one place a gap is noticed, counted and logged.

An agent numbers its batches 1, 2, 3 ... per run (its chunk ids name the run and the
number, ``fluent_forward.conventions``). A number that jumps ahead is a gap: batches
the agent dropped (overflow ``drop_oldest``) or lost. A lower number is a resend.

A relay keeps one ``Runs``. With a spool the spool owns it: it seeds it from the
batches on disk at start, so runs are followed across relay restarts, and the listener
tells it every frame. Without a spool the listener keeps its own. ``advance`` is
idempotent (a batch told again, by the spool the intake submits it to or by an agent's
resend, moves nothing), so whichever path sees a batch first finds its gap, and that
gap is logged once and counted once.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_RUNS", "Gap", "Runs"]

log = logging.getLogger(__name__)

#: Agent runs followed at once, most recent first; older runs are forgotten.
DEFAULT_RUNS = 1024


@dataclass(frozen=True, slots=True)
class Gap:
    """Batches ``first..last`` of agent run ``boot`` never came: the agent dropped them."""

    boot: bytes
    first: int
    last: int

    @property
    def batches(self) -> int:
        return self.last - self.first + 1


class Runs(Mapping[bytes, int]):
    """The highest batch number seen of up to ``limit`` recent agent runs (by boot id).

    Attributes:
        on_gap: called with each gap found (the spool counts them).
        on_forget: called with the boot id of a run forgotten to stay within ``limit``
            (the spool forgets the batches it remembers of it).
    """

    def __init__(self, limit: int = DEFAULT_RUNS) -> None:
        self.limit = limit
        self.on_gap: Callable[[Gap], None] | None = None
        self.on_forget: Callable[[bytes], None] | None = None
        self._last: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    def __getitem__(self, boot: bytes) -> int:
        return self._last[boot]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._last)

    def __len__(self) -> int:
        return len(self._last)

    def advance(self, boot: bytes, seq: int, *, who: str = "", quiet: bool = False
                ) -> Gap | None:
        """Batch ``seq`` of run ``boot`` came; the gap it reveals, if any.

        ``who`` names the sender in the warning; ``quiet``: count the gap but do not
        log it (batches read back from the spool: it was logged when it happened).
        """
        last = self._last.get(boot)
        if last is None:
            self._last[boot] = seq
            self._forget_oldest()
            return None
        self._last.move_to_end(boot)
        if seq <= last + 1:
            self._last[boot] = max(seq, last)
            return None
        self._last[boot] = seq
        gap = Gap(boot, last + 1, seq - 1)
        if not quiet:
            log.warning("%sagent run %s skipped %d batch(es) (%d..%d): it dropped them "
                        "(overflow drop_oldest) or lost them", f"{who}: " if who else "",
                        boot.hex(), gap.batches, gap.first, gap.last)
        if self.on_gap is not None:
            self.on_gap(gap)
        return gap

    def _forget_oldest(self) -> None:
        while len(self._last) > self.limit:
            old, _ = self._last.popitem(last=False)
            if self.on_forget is not None:
                self.on_forget(old)
