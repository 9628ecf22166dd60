"""The replay window: batches Fluent Bit acked recently, kept to send again if it restarts.

Fluent Bit's forward input acks a chunk once it is appended to the input's buffer, not
once it is safe: an abrupt end (SIGKILL, OOM kill, a crash) can lose chunks it acked,
even with ``storage.type filesystem`` and ``storage.sync full`` (fluent/fluent-bit#10952).
So the spool keeps each batch ``seconds`` after Fluent Bit acked it (its segment is not
deleted meanwhile), and when a new Fluent Bit process answers, the forwarder sends
those batches again: duplicates, counted and bounded by the window, instead of loss.

A new process, not a paused one: Fluent Bit under backpressure closes every connection
and accepts-then-closes new ones, the same process all along; that loses nothing and
replays nothing. A process that ended cannot accept at all. So Fluent Bit counts as
restarted when the next connection after a lost one reaches a different process (a Unix
socket names its listener's pid, SO_PEERCRED) or came only after a connect attempt was
refused (TCP names no pid). A clean restart replays too: the wire cannot tell a clean
end from an abrupt one, and the window bounds the cost.

The window yields to the cap: a spool that needs room releases its oldest batches first,
a segment at a time.
"""

from __future__ import annotations

import collections

__all__ = ["ReplayWindow", "RestartWatch"]


class ReplayWindow:
    """Positions of batches acked within the last ``seconds``, and the segments they hold.

    Times are the caller's monotonic clock.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._acked: collections.deque[tuple[float, int, int]] = collections.deque()
        self._holds: collections.Counter[int] = collections.Counter()

    def add(self, segment: int, offset: int, now: float) -> None:
        if self.seconds > 0:
            self._acked.append((now, segment, offset))
            self._holds[segment] += 1

    def held(self, segment: int) -> bool:
        """Whether ``segment`` must stay: it holds a batch within the window."""
        return self._holds[segment] > 0

    def expire(self, now: float) -> list[int]:
        """Let go of batches acked before the window; return the segments now free."""
        freed: list[int] = []
        while self._acked and self._acked[0][0] < now - self.seconds:
            freed += self._let_go()
        return freed

    def release_oldest(self) -> list[int]:
        """Let go of the oldest batches, up to the first segment that frees (the spool
        needs room); return the segments now free, none once the window is empty.

        The oldest only, not the whole window: at the cap, giving up every held segment
        at once deleted a gigabyte of them in one turn of the event loop (a quarter of a
        second during which no connection was served), and threw away a window the spool
        had room for minus one segment."""
        freed: list[int] = []
        while self._acked and not freed:
            freed += self._let_go()
        return freed

    def _let_go(self) -> list[int]:
        """Drop the oldest batch; its segment if that held nothing else."""
        _, segment, _ = self._acked.popleft()
        self._holds[segment] -= 1
        if self._holds[segment] > 0:
            return []
        del self._holds[segment]
        return [segment]

    def positions(self, now: float) -> list[tuple[int, int]]:
        """(segment, offset) of every batch acked within the window, oldest ack first."""
        self.expire(now)
        return sorted((segment, offset) for _, segment, offset in self._acked)

    def __len__(self) -> int:
        return len(self._acked)


class RestartWatch:
    """Whether each new connection reaches a Fluent Bit that restarted since the last.

    Args:
        peer: the server as the kernel names it (a Unix peer's pid, or an address).
        refused: connect attempts that failed so far (a counter that only grows).
    """

    def __init__(self) -> None:
        self._peer: str | None = None
        self._refused_at_loss = 0

    def lost(self, refused: int) -> None:
        """The connection is gone."""
        self._refused_at_loss = refused

    def connected(self, peer: str, refused: int) -> bool:
        """A connection is up; True if the process behind it is a new one."""
        restarted = self._peer is not None and (peer != self._peer
                                                or refused > self._refused_at_loss)
        self._peer = peer
        self._refused_at_loss = refused
        return restarted
