"""The replay window and the restart rule (pure), and the spool keeping acked batches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from parent_side.replay import ReplayWindow, RestartWatch
from parent_side.spool import Spool
from tests.helpers import MS, short_tmpdir, wait_until, within
from tests.unit.test_spool import batch, entry_number, fill


def test_the_window_keeps_what_was_acked_within_it_and_holds_its_segments() -> None:
    w = ReplayWindow(5.0)
    w.add(1, 16, now=100.0)
    w.add(1, 80, now=101.0)
    w.add(2, 16, now=104.0)
    assert w.held(1) and w.held(2) and not w.held(3)
    assert w.positions(now=105.5) == [(1, 80), (2, 16)]  # (1, 16) left the window
    assert w.expire(now=106.5) == [1]  # segment 1 holds nothing within it any more
    assert not w.held(1) and w.held(2)
    w.add(2, 80, now=105.0)
    w.add(3, 16, now=105.0)
    # Room needed: the oldest batches go, up to the first segment that frees.
    assert w.release_oldest() == [2] and w.held(3) and len(w) == 1
    assert w.release_oldest() == [3] and len(w) == 0
    assert w.release_oldest() == []


def test_a_window_of_zero_keeps_nothing() -> None:
    w = ReplayWindow(0.0)
    w.add(1, 16, now=1.0)
    assert not w.held(1) and w.positions(now=1.0) == []


def test_a_restart_is_a_new_process_or_a_refused_connect_not_a_pause() -> None:
    watch = RestartWatch()
    assert not watch.connected("unix:pid=10,uid=0", refused=0)  # the first connection
    watch.lost(refused=0)
    # Paused: it closed the connection but accepted the next one, same process.
    assert not watch.connected("unix:pid=10,uid=0", refused=0)
    watch.lost(refused=0)
    assert watch.connected("unix:pid=11,uid=0", refused=0)  # a new pid
    watch.lost(refused=0)
    # TCP names no pid: a refused attempt in between says the process was gone.
    assert watch.connected("unix:pid=11,uid=0", refused=3)
    watch.lost(refused=3)
    assert not watch.connected("unix:pid=11,uid=0", refused=3)


@pytest.fixture
def spool_dir() -> Iterator[Path]:
    with short_tmpdir() as d:
        yield d / "spool"


@pytest.mark.asyncio
async def test_the_spool_keeps_acked_batches_for_the_window_then_deletes_them(
        spool_dir: Path) -> None:
    spool = Spool(str(spool_dir), segment_bytes=1, replay_window=300 * MS)
    spool.open()
    await fill(spool, 2000)  # several 64 KiB segments
    entries = [await within(spool.next_entry(), "an entry") for _ in range(2000)]
    for e in entries:
        spool.ack(e)
    segments = len(list(spool_dir.glob("*.seg")))
    assert segments > 2, "acked segments stay while within the window"
    assert [entry_number(e.entries) for e in spool.replayable()] == list(range(2000))
    await asyncio.sleep(0)
    # The open segment stays; the entries in it were acked last, so the window may
    # still hold them when the older segments go: wait for both, under any load.
    await wait_until(lambda: (spool.expire_replay(), len(list(spool_dir.glob("*.seg"))) == 1
                              and not spool.replayable())[1],
                     "the window to pass and the segments to go")
    assert spool.replayable() == [] and spool.backlog == 0
    await spool.close()


@pytest.mark.asyncio
async def test_the_window_yields_when_the_spool_needs_room(spool_dir: Path) -> None:
    spool = Spool(str(spool_dir), max_bytes=1 << 20, replay_window=3600)
    spool.open()
    futs = []
    for i in range(40_000):  # far more than the cap: acked ones must make room
        futs.append(await within(spool.append("t", batch(i), 1), "room"))  # type: ignore[arg-type]
        if i % 100 == 99:
            await within(asyncio.gather(*futs), "commits")
            futs.clear()
            while spool.backlog:
                spool.ack(await within(spool.next_entry(), "an entry"))  # type: ignore[arg-type]
    assert spool.size <= spool.limit
    # It gave up the oldest of the window for room, not all of it: what is left of the
    # window is the newest acked batches.
    kept = [entry_number(e.entries) for e in spool.replayable()]
    assert kept and kept == list(range(40_000 - len(kept), 40_000))
    assert spool.size > spool.limit - 2 * spool._segment_limit(), "the window kept its room"
    await spool.close()
