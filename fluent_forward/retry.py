"""Reconnect policy as data: a capped, jittered backoff and an error classifier (pure)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from enum import Enum

from .errors import ProtocolError, TransportError

__all__ = ["Verdict", "backoff", "classify_error"]


def backoff(*, initial: float = 0.1, maximum: float = 30.0, factor: float = 2.0,
            jitter: float = 0.5, rand: Callable[[], float] = random.random) -> Iterator[float]:
    """Delays for successive retries: exponential, capped, with jitter.

    Each delay is the exponential step times a random factor in ``[1 - jitter, 1]``
    ("equal jitter" when jitter is 0.5), so many clients that lost one peer at the
    same moment do not come back at the same moment. Infinite; restart it after a
    success.
    """
    step = min(initial, maximum)
    while True:
        yield step * (1.0 - jitter * rand())
        step = min(step * factor, maximum)


class Verdict(Enum):
    """What to do after an error."""

    RETRY = "retry"  # the peer may come back: back off and reconnect
    RAISE = "raise"  # a bug or bad configuration: retrying will not help


def classify_error(exc: BaseException) -> Verdict:
    """Whether a connection loop should retry after ``exc``.

    Transport failures and a peer that broke the protocol are retried (a restarted
    peer is usually fine); a failed authentication is retried too, since a key may be
    rotated on the other side, but callers log it loudly. Our own misuse is raised.
    """
    if isinstance(exc, (TransportError, ProtocolError)):  # AuthenticationError included
        return Verdict.RETRY
    return Verdict.RAISE
