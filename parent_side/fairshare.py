"""A fair share of the relay per enclave: no cap alone, no crowding out the others.

What an enclave *holds* in the relay is the bytes read from its connections and not
yet delivered downstream (acked by Fluent Bit, or written by the output): in the
spool, in the upstream queue, on the wire. The enclaves holding something share a
budget: with ``k`` of them, each may hold ``budget / k``, and the connections of one
over its share are not read until deliveries bring it back under (backpressure to its
agent, never a drop). A share is checked before each read, after the frames read
last were taken, so every enclave makes progress whatever its share.

The budget depends on the upstream:

- delivering (something was delivered within ``stall`` seconds, or nothing is held):
  each may hold the *window*, and all of them together at most ``max_window``. The
  window is a time rather than a size: what the upstream delivers in ``delay`` seconds
  at the rate it was measured to deliver (``rate``), between ``min_window`` and
  ``max_window``. The spool forwards in the order it took batches in, so a quiet
  enclave's batch waits behind everything the others hold; a window of ``delay``
  seconds of upstream keeps that wait near ``delay`` per flooding enclave however slow
  the upstream is (a window fixed in bytes made it ``bytes / rate``: 300 ms at 20 MB/s),
  and a flood's backlog stays in its own agent's buffer, not ahead of the others in the
  spool. Each enclave holding something gets a whole window, not a part of one: the
  quiet ones use little of theirs, and a flooding one kept to a fraction of ``delay``
  would leave the upstream idle between its reads. It is still no cap on one enclave
  alone: while the window is the limit, batches spend less than ``delay`` in the
  relay, so the rate measured is at least ``window / delay`` and the window grows with
  it, up to what the upstream takes.
- stalled (things are held and nothing was delivered for ``stall`` seconds: Fluent
  Bit is down or not acking): ``capacity``, the spool's size. Absorbing an outage is
  what the spool is for; no single enclave may fill it while others have logs to keep.

The rate is measured over ``SAMPLE`` seconds of delivering, counting only time
something was held (an idle relay says nothing about its upstream): it follows a
rise at once and a fall by halves, so one slow sample does not shut the window. Until
the first sample, the window is ``max_window``.

The accounting is reset whenever the relay holds nothing at all (``settle``): a batch
taken but never delivered (a resend the spool recognised, a segment dropped when the
spool was full, a frame set aside as dead letter) is then forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FAIR_DELAY", "FAIR_MIN_WINDOW", "FAIR_WINDOW", "SAMPLE", "FairShare"]

#: The most the enclaves hold together while the upstream delivers (see the module
#: docstring), and the most one window may grow to.
FAIR_WINDOW = 16 << 20
#: The least window: a few of an agent's batches, whatever the upstream's rate.
FAIR_MIN_WINDOW = 512 << 10
#: The time's worth of upstream delivery the window holds: the wait a quiet enclave's
#: batch may have behind the others' in the spool (a CoDel-style sojourn target).
FAIR_DELAY = 0.025
#: Seconds of delivering over which the upstream's rate is measured.
SAMPLE = 0.1


class FairShare:
    """Per-enclave bytes held in the relay, and the wait for a share of the budget.

    Args:
        window: the most the enclaves hold together while the upstream delivers (and
            the most one window may be).
        capacity: the budget while it is stalled (the spool's size).
        stall: seconds without a delivery, while something is held, that make a stall.
        delay: seconds of upstream delivery the window holds.
        min_window: the least one window is, whatever the rate.
        clock: the monotonic clock (a test seam).
    """

    def __init__(self, *, window: int = FAIR_WINDOW, capacity: int = 1 << 30,
                 stall: float = 1.0, delay: float = FAIR_DELAY,
                 min_window: int = FAIR_MIN_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.max_window = window
        self.min_window = min_window
        self.delay = delay
        self.capacity = max(capacity, window)
        self.stall = stall
        self.held: dict[str, int] = {}
        self.waits = 0  # times a reader waited for its share, for status
        self.rate = 0.0  # bytes per second the upstream was measured to deliver
        # Until a rate is measured, the most: at start with Fluent Bit down, the spool
        # takes what agents send at once, as a stall would let it.
        self.window = window
        self._last_delivery = self._sample_start = clock()
        self._sample_bytes = 0
        self._changed = asyncio.Event()

    def _delivering(self) -> int:
        """What the enclaves holding something share while the upstream delivers."""
        return min(self.max_window, self.window * max(1, len(self.held)))

    def budget(self) -> int:
        """What the enclaves holding something share now."""
        stalled = self.held and self.clock() - self._last_delivery > self.stall
        return self.capacity if stalled else self._delivering()

    def share(self) -> int:
        """What one enclave may hold now."""
        return self.budget() // max(1, len(self.held))

    def over(self, name: str) -> bool:
        """True if ``name`` holds more than its share."""
        held = self.held.get(name, 0)
        if held <= self._delivering() // max(1, len(self.held)):
            return False  # the common case, without reading the clock
        return held > self.share()

    def add(self, name: str, n: int) -> None:
        """``name`` handed ``n`` bytes on towards the upstream."""
        if not self.held:
            # A stall is counted from here; and the time nothing was held is no part of
            # the rate sample (it says nothing of the upstream).
            now = self.clock()
            self._sample_start += now - self._last_delivery
            self._last_delivery = now
        self.held[name] = self.held.get(name, 0) + n

    def delivered(self, name: str, n: int) -> None:
        """``n`` bytes of ``name`` were delivered downstream."""
        now = self._last_delivery = self.clock()
        self._measure(now, n)
        held = self.held.get(name)
        if held is not None:
            if held > n:
                self.held[name] = held - n
            else:
                del self.held[name]
        self._changed.set()

    def _measure(self, now: float, n: int) -> None:
        """Count ``n`` bytes into the rate sample; at its end, size the window again."""
        self._sample_bytes += n
        elapsed = now - self._sample_start
        if elapsed < SAMPLE:
            return
        rate = self._sample_bytes / elapsed
        self.rate = rate if rate > self.rate else (self.rate + rate) / 2
        self.window = min(self.max_window, max(self.min_window, int(self.rate * self.delay)))
        self._sample_start, self._sample_bytes = now, 0

    def settle(self) -> None:
        """The relay holds nothing: forget what was taken and never delivered."""
        if self.held:
            self.held.clear()
            self._changed.set()

    async def wait(self, name: str) -> None:
        """Return once ``name`` may be read again (at once, nearly always)."""
        if not self.over(name):
            return
        self.waits += 1
        while self.over(name):
            self._changed.clear()
            # A stall changes the budget without a delivery: look again after one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.stall):
                    await self._changed.wait()

    def status(self) -> dict[str, Any]:
        return {"budget": self.budget(), "share": self.share(), "holding": len(self.held),
                "window": self.window, "rate_bytes_per_s": round(self.rate),
                "waits": self.waits}
