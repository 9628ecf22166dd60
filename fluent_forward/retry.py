"""Reconnect policy as data: a capped, jittered backoff (pure).

Which errors a connection loop retries is said where it catches them: transport
failures and a peer that broke the protocol (``TransportError``, ``ProtocolError``)
are the network's doing; anything else is a bug, logged with its traceback.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["backoff"]


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

