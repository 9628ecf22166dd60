"""Regression guard: the hot paths, timed against baselines measured in the same run.

Never an absolute time (CI machines differ, and share their cores): each figure is the
ratio of a hot path's time to a baseline's over the same input, the best of several
interleaved runs of each, and a test fails only past ``MARGIN`` times the ratio measured
when the guard was written: a gross regression, such as the relay decoding entries one
object at a time again or the agent packing line by line, not noise. ``make bench``
gives the figures; this only says whether they fell off a cliff.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgpack

from enclave_side.lines import EntryEncoder, LineSplitter
from fluent_forward.codec import validate_entries

#: How much worse than the recorded ratio a run may be.
MARGIN = 2.0
RUNS = 7
LINES = 40_000
READ = 256 * 1024
BATCH = 512 * 1024


def _line(i: int) -> bytes:
    text = (f"2026-11-26T22:13:43.{i % 1_000_000:06d}Z INFO worker-{i % 8} request handled "
            f"seq={i:09d} method=GET path=/api/v1/items status=200 duration_ms=12.5 ")
    return (text + "abcdefghijklmnopqrstuvwxyz" * 2)[:149].encode()


DATA = b"".join(_line(i) + b"\n" for i in range(LINES))


def ratio(hot: Callable[[], object], base: Callable[[], object]) -> float:
    """min(hot) / min(base) over ``RUNS`` interleaved runs of each."""
    best_hot = best_base = float("inf")
    for _ in range(RUNS):
        t0 = time.perf_counter()
        hot()
        t1 = time.perf_counter()
        base()
        t2 = time.perf_counter()
        best_hot, best_base = min(best_hot, t1 - t0), min(best_base, t2 - t1)
    return best_hot / best_base


def agent_packing() -> None:
    """The agent's hot path: 256 KiB reads split into lines and packed as entries."""
    splitter, encoder = LineSplitter(64 * 1024), EntryEncoder({"stream": "stdout"})
    for at in range(0, len(DATA), READ):
        encoder.encode(splitter.feed(DATA[at:at + READ]), 1_764_189_435_123_456_789)


def python_pass() -> None:
    """One pure-Python step per line: the least a per-line design would cost."""
    total = 0
    for line in DATA.split(b"\n"):
        total += len(line)


def test_agent_packing_against_a_python_pass_over_the_same_lines() -> None:
    # Recorded: 1.26-1.39 (2 vCPUs, CPython 3.11.7, msgpack 1.2.4); a dict per line
    # packed with msgpack, as a naive agent would, is 4.9-5.6.
    measured = ratio(agent_packing, python_pass)
    assert measured < 1.35 * MARGIN, f"agent packing is {measured:.2f}x a Python pass"


def _batches() -> list[bytes]:
    encoder = EntryEncoder({"stream": "stdout"})
    lines = DATA.split(b"\n")[:-1]
    per = BATCH // 180
    return [encoder.encode(lines[i:i + per], 1_764_189_435_000_000_000 + i)  # type: ignore[arg-type]
            for i in range(0, len(lines), per)]


BATCHES = _batches()


def relay_validation() -> None:
    for batch in BATCHES:
        validate_entries(batch)


def unpacker_walk() -> None:
    """msgpack's Unpacker over the same entries, one object per entry, as a relay that
    decodes everything would."""
    for batch in BATCHES:
        up = msgpack.Unpacker(raw=False)
        up.feed(batch)
        for _ in up:
            pass


def test_relay_validation_against_msgpacks_unpacker_over_the_same_entries() -> None:
    # Recorded: 0.30-0.34; decoding all the entries in one unpackb (the path for other
    # clients' entries) is 0.87-1.03, entry by entry (the slow path) 1.45-1.7.
    measured = ratio(relay_validation, unpacker_walk)
    assert measured < 0.32 * MARGIN, f"validation is {measured:.2f}x msgpack's Unpacker"
