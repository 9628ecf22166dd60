"""fluent_forward.retry: backoff delays, without sleeping.

Which errors are retried is the client's catch: tests/integration/test_forward_client.py.
"""

from __future__ import annotations

import random
from itertools import islice

import pytest

from fluent_forward.retry import backoff


def steps(initial: float, maximum: float, factor: float, n: int) -> list[float]:
    return [min(initial * factor**i, maximum) for i in range(n)]


def test_backoff_without_jitter_grows_then_caps() -> None:
    delays = list(islice(backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0.0), 8))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_backoff_rand_zero_is_the_full_step() -> None:
    delays = list(islice(backoff(initial=1.0, maximum=30.0, rand=lambda: 0.0), 7))
    assert delays == pytest.approx([1, 2, 4, 8, 16, 30, 30])


def test_backoff_rand_one_takes_off_the_jitter_fraction() -> None:
    delays = list(islice(backoff(initial=1.0, maximum=8.0, jitter=0.5, rand=lambda: 1.0), 5))
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0])


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
def test_backoff_is_jittered_within_bounds(jitter: float) -> None:
    rng = random.Random(1234)
    delays = list(islice(backoff(initial=0.1, maximum=30.0, factor=2.0, jitter=jitter,
                                 rand=rng.random), 40))
    for delay, step in zip(delays, steps(0.1, 30.0, 2.0, 40), strict=True):
        assert step * (1 - jitter) <= delay <= step


def test_backoff_jitter_uses_rand() -> None:
    values = iter([0.0, 0.5, 1.0])
    delays = list(islice(backoff(initial=4.0, maximum=100.0, factor=1.0, jitter=0.5,
                                 rand=lambda: next(values)), 3))
    assert delays == pytest.approx([4.0, 3.0, 2.0])


def test_backoff_with_default_rand_is_capped_and_varies() -> None:
    delays = list(islice(backoff(initial=1.0, maximum=5.0), 200))
    assert all(0 < d <= 5.0 for d in delays)
    assert len(set(delays[10:])) > 1  # jittered, not a constant


def test_backoff_grows_on_average() -> None:
    delays = list(islice(backoff(initial=0.01, maximum=100.0, rand=lambda: 0.3), 12))
    assert all(b > a for a, b in zip(delays, delays[1:], strict=False))


def test_backoff_is_infinite() -> None:
    gen = backoff(initial=0.1, maximum=0.2, rand=lambda: 0.0)
    assert list(islice(gen, 1000))[-1] == pytest.approx(0.2)


def test_backoff_caps_even_the_first_delay() -> None:
    first = next(backoff(initial=60.0, maximum=30.0, rand=lambda: 0.0))
    assert first <= 30.0

