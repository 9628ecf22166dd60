"""The window of batches sent and not yet acked, as every Forward client keeps it (pure).

Keyed by chunk id; at most ``size`` in flight; after a lost connection every batch in
it goes back to be resent first, oldest first (by sequence number). The agent's
buffer and the relay's upstream queue both keep theirs in one of these, across
connections; each connection's ``ClientSession`` keeps the chunks it sent in one too,
to bound what it sends and to refuse an ack for a chunk it never sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["InFlight", "Sent"]


class Sent(Protocol):
    """A batch as the window knows it."""

    @property
    def chunk(self) -> str: ...

    @property
    def seq(self) -> int: ...


B = TypeVar("B", bound=Sent)


class InFlight(Generic[B]):
    """Batches sent and not acked."""

    def __init__(self) -> None:
        self._batches: dict[str, B] = {}

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[B]:
        return iter(self._batches.values())

    def has_room(self, window: int) -> bool:
        """Whether one more may be sent with at most ``window`` in flight."""
        return len(self._batches) < window

    def add(self, batch: B) -> None:
        self._batches[batch.chunk] = batch

    def ack(self, chunk: str | bytes) -> B | None:
        """The batch ``chunk`` names, no longer in flight; None if it was not."""
        return self._batches.pop(chunk, None) if isinstance(chunk, str) else None

    def take_all(self) -> list[B]:
        """Empty the window: its batches, oldest first, to be resent."""
        batches = sorted(self._batches.values(), key=lambda b: b.seq)
        self._batches.clear()
        return batches
