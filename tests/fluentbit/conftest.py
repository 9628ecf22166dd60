"""Fixtures of the real Fluent Bit tier: the binary, and Fluent Bit processes always killed.

Every test module here sets the ``fluentbit`` marker. The binary is found as
tests/realfb.py finds it (``FLUENT_BIT``, the project's test copy, ``fluent-bit`` on PATH);
without one the tier is skipped with the reason, and under ``CI=true`` it fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import StartRelay
from tests.fluentbit.peer import RealFluentBit
from tests.realfb import fluent_bit_binary

MakeFluentBit = Callable[..., RealFluentBit]


@pytest.fixture(scope="session")
def fluent_bit() -> str:
    """The fluent-bit executable (skips, or fails under CI=true, without one)."""
    return fluent_bit_binary()


@pytest.fixture
def make_fluentbit(fluent_bit: str, sockdir: Path) -> Iterator[MakeFluentBit]:
    """``make_fluentbit(name, **options)``: a RealFluentBit in ``sockdir/name`` (not started).

    Every process it made is killed at the end of the test, whatever happened.
    """
    made: list[RealFluentBit] = []

    def make(name: str = "fb", **options: Any) -> RealFluentBit:
        fb = RealFluentBit(fluent_bit, sockdir / name, **options)
        made.append(fb)
        return fb

    yield make
    for fb in made:
        fb.close()


@pytest_asyncio.fixture
async def start_relay(make_fluentbit: MakeFluentBit,
                      start_relay: StartRelay) -> AsyncIterator[StartRelay]:
    """The integration tests' ``start_relay``, ordered so that its relays stop first.

    Requested after ``make_fluentbit``, so the relays are stopped while Fluent Bit still
    runs (a relay stopping with Fluent Bit gone would wait out its shutdown timeout).
    """
    yield start_relay
