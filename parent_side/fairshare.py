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
  ``window`` bytes. Enough in flight to keep the upstream busy, so an enclave alone
  runs at full speed (the upstream's); and since the spool forwards in order, a
  newcomer's batch waits behind at most a window, not behind everything a flooding
  enclave could send.
- stalled (things are held and nothing was delivered for ``stall`` seconds: Fluent
  Bit is down or not acking): ``capacity``, the spool's size. Absorbing an outage is
  what the spool is for; no single enclave may fill it while others have logs to keep.

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

__all__ = ["FAIR_WINDOW", "FairShare"]

#: The budget shared while the upstream delivers (see the module docstring).
FAIR_WINDOW = 16 << 20


class FairShare:
    """Per-enclave bytes held in the relay, and the wait for a share of the budget.

    Args:
        window: the budget while the upstream delivers.
        capacity: the budget while it is stalled (the spool's size).
        stall: seconds without a delivery, while something is held, that make a stall.
        clock: the monotonic clock (a test seam).
    """

    def __init__(self, *, window: int = FAIR_WINDOW, capacity: int = 1 << 30,
                 stall: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.window = window
        self.capacity = max(capacity, window)
        self.stall = stall
        self.held: dict[str, int] = {}
        self.waits = 0  # times a reader waited for its share, for status
        self._last_delivery = clock()
        self._changed = asyncio.Event()

    def budget(self) -> int:
        """What the enclaves holding something share now."""
        stalled = self.held and self.clock() - self._last_delivery > self.stall
        return self.capacity if stalled else self.window

    def share(self) -> int:
        """What one enclave may hold now."""
        return self.budget() // max(1, len(self.held))

    def over(self, name: str) -> bool:
        """True if ``name`` holds more than its share."""
        held = self.held.get(name, 0)
        if held <= self.window // max(1, len(self.held)):
            return False  # the common case, without reading the clock
        return held > self.share()

    def add(self, name: str, n: int) -> None:
        """``name`` handed ``n`` bytes on towards the upstream."""
        if not self.held:
            self._last_delivery = self.clock()  # a stall is counted from here
        self.held[name] = self.held.get(name, 0) + n

    def delivered(self, name: str, n: int) -> None:
        """``n`` bytes of ``name`` were delivered downstream."""
        self._last_delivery = self.clock()
        held = self.held.get(name)
        if held is not None:
            if held > n:
                self.held[name] = held - n
            else:
                del self.held[name]
        self._changed.set()

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
                "waits": self.waits}
