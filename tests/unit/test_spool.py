"""The relay's disk spool, against real files: durability, recovery, order, limits."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluent_forward.conventions import Overflow as Full
from fluent_forward.entries import EventTime, pack_entry
from parent_side.spool import Spool
from parent_side.spool_format import FORMAT_VERSION, HEADER, MAGIC, SpoolError
from tests.helpers import MS, short_tmpdir, wait_until, within

pytestmark = pytest.mark.asyncio


@pytest.fixture
def spool_dir() -> Iterator[Path]:
    with short_tmpdir() as d:
        yield d / "spool"


def batch(i: int, size: int = 40) -> bytes:
    return pack_entry(EventTime(1_700_000_000, i), {"log": f"{i:06d}" + "x" * size})


async def drain(spool: Spool, n: int) -> list[int]:
    """Read ``n`` entries and ack each; return their first record's number."""
    got = []
    for _ in range(n):
        entry = await within(spool.next_entry(), "a spooled entry")
        got.append(entry_number(entry.entries))
        spool.ack(entry)
    return got


def entry_number(entries: bytes) -> int:
    import msgpack

    up = msgpack.Unpacker(raw=False)
    up.feed(entries)
    first = next(iter(up))
    return int(first[1]["log"][:6])


async def fill(spool: Spool, n: int, start: int = 0, **kw: object) -> list[asyncio.Future[None]]:
    futs = []
    for i in range(start, start + n):
        futs.append(await spool.append("enclave.cid-16.app.stdout", batch(i), 1, **kw))  # type: ignore[arg-type]
    await within(asyncio.gather(*futs), "the appends to commit")
    return futs


async def test_an_append_is_acked_only_after_the_fsync_covering_it_returned(
        spool_dir: Path) -> None:
    release = threading.Event()
    synced: list[int] = []

    def slow_fsync(fd: int) -> None:
        release.wait(10)  # the commit thread blocks here until the test lets it go
        os.fdatasync(fd)
        synced.append(fd)

    spool = Spool(str(spool_dir), fsync=slow_fsync, commit_delay=0)
    spool.open()
    fut = await spool.append("t", batch(1), 1)
    await asyncio.sleep(50 * MS)  # a window in which a premature ack would show
    assert not fut.done(), "acked before the fsync returned"
    assert synced == []
    release.set()
    await within(fut, "the commit")
    assert synced, "the future resolved without an fsync"
    await spool.close()


async def test_appends_are_grouped_into_few_fsyncs(spool_dir: Path) -> None:
    calls = []

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        os.fdatasync(fd)

    spool = Spool(str(spool_dir), fsync=counting_fsync, commit_delay=20 * MS)
    spool.open()
    futs = [await spool.append("t", batch(i), 1) for i in range(200)]
    await within(asyncio.gather(*futs), "the commits")
    assert len(calls) <= 5, f"{len(calls)} fsyncs for 200 appends made in one burst"
    await spool.close()


async def test_acked_segments_are_deleted_off_the_event_loop(
        spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeing a full segment's pages takes milliseconds: not in the event loop's turn."""
    threads: list[int] = []
    unlink = os.unlink

    def recorded(path: str) -> None:
        threads.append(threading.get_ident())
        unlink(path)
    monkeypatch.setattr(os, "unlink", recorded)
    spool = Spool(str(spool_dir), segment_bytes=1, max_bytes=1 << 30)
    spool.open()
    await fill(spool, 3000)
    assert await drain(spool, 3000) == list(range(3000))
    await wait_until(lambda: len(list(spool_dir.glob("*.seg"))) == 1, "the acked segments to go")
    assert threads and threading.get_ident() not in threads
    await spool.close()


async def test_entries_come_out_in_order_and_acked_segments_are_deleted(spool_dir: Path) -> None:
    spool = Spool(str(spool_dir), segment_bytes=1, max_bytes=1 << 30)  # min segment: 64 KiB
    spool.open()
    await fill(spool, 3000)
    segments = len(list(spool_dir.glob("*.seg")))
    assert segments > 2, "the test needs several segments"
    assert await drain(spool, 3000) == list(range(3000))
    # Only the active segment may remain once everything was acked (deleted by a
    # worker thread, off the event loop).
    await wait_until(lambda: len(list(spool_dir.glob("*.seg"))) == 1, "the acked segments to go")
    assert spool.backlog == 0
    await spool.close()


async def test_recovery_forwards_everything_not_acked(spool_dir: Path) -> None:
    spool = Spool(str(spool_dir), segment_bytes=1)
    spool.open()
    await fill(spool, 1000)
    assert await drain(spool, 400) == list(range(400))
    await spool.close()  # writes the acked hint

    again = Spool(str(spool_dir))
    again.open()
    assert again.stats.recovered_batches == 600
    assert await drain(again, 600) == list(range(400, 1000))
    await again.close()


async def test_recovery_without_a_hint_resends_rather_than_loses(spool_dir: Path) -> None:
    spool = Spool(str(spool_dir))
    spool.open()
    await fill(spool, 100)
    await drain(spool, 30)
    await spool.close()
    (spool_dir / "acked").unlink()  # as after a crash before the hint was written
    again = Spool(str(spool_dir))
    again.open()
    assert await drain(again, 100) == list(range(100)), "duplicates, never loss"
    await again.close()


@pytest.mark.parametrize("seed", range(3))
async def test_a_torn_segment_keeps_every_whole_entry_and_no_corrupt_one(
        spool_dir: Path, seed: int) -> None:
    spool = Spool(str(spool_dir))
    spool.open()
    await fill(spool, 300)
    await spool.close()
    (segment,) = spool_dir.glob("*.seg")
    original = segment.read_bytes()
    ends = entry_ends(original)
    rng = random.Random(seed)
    for _ in range(60):  # a crash mid-write, at many random byte offsets
        cut = rng.randrange(HEADER.size, len(original) + 1)
        segment.write_bytes(original[:cut])
        (spool_dir / "acked").unlink(missing_ok=True)
        whole = sum(1 for end in ends if end <= cut)
        recovered = Spool(str(spool_dir))
        recovered.open()
        assert await drain(recovered, whole) == list(range(whole))
        assert recovered.backlog == 0, "a cut entry was forwarded"
        assert segment.stat().st_size == (ends[whole - 1] if whole else HEADER.size)
        await recovered.close()
        for extra in spool_dir.glob("*.seg"):
            if extra != segment:
                extra.unlink()


def entry_ends(data: bytes) -> list[int]:
    from parent_side.spool_format import FRAME

    ends, pos = [], HEADER.size
    while pos < len(data):
        length, _ = FRAME.unpack_from(data, pos)
        pos += FRAME.size + length
        ends.append(pos)
    return ends


async def test_a_flipped_byte_is_caught_by_the_checksum(spool_dir: Path) -> None:
    spool = Spool(str(spool_dir))
    spool.open()
    await fill(spool, 50)
    await spool.close()
    (segment,) = spool_dir.glob("*.seg")
    data = bytearray(segment.read_bytes())
    ends = entry_ends(bytes(data))
    data[ends[19] + 20] ^= 0xFF  # inside entry 20's payload
    segment.write_bytes(bytes(data))
    (spool_dir / "acked").unlink()
    again = Spool(str(spool_dir))
    again.open()
    # Entry 20 fails its checksum and is set aside; the 29 intact entries after it
    # are kept (they were cut with it before issue 17).
    assert again.stats.corrupt_bytes_set_aside == ends[20] - ends[19]
    assert again.stats.torn_bytes_cut == 0
    assert await drain(again, 49) == [*range(20), *range(21, 50)]
    assert again.backlog == 0
    await again.close()


async def test_a_resent_batch_is_acked_without_being_stored_twice(spool_dir: Path) -> None:
    spool = Spool(str(spool_dir))
    spool.open()
    boot = os.urandom(8)
    first = await spool.append("t", batch(1), 1, boot_id=boot, seq=1)
    again = await spool.append("t", batch(1), 1, boot_id=boot, seq=1)
    assert again is first
    await within(first, "the commit")
    assert spool.stats.appended_batches == 1 and spool.stats.duplicate_batches == 1
    await spool.close()
    # After a restart the spool still knows what it holds.
    restarted = Spool(str(spool_dir))
    restarted.open()
    dup = await restarted.append("t", batch(1), 1, boot_id=boot, seq=1)
    assert dup.done() and restarted.stats.appended_batches == 0
    assert restarted.stats.duplicate_batches == 1
    await restarted.close()


async def test_gaps_in_an_agents_sequence_are_counted(spool_dir: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(str(spool_dir))
    spool.open()
    boot = os.urandom(8)
    for seq in (1, 2, 5, 6, 10):
        await spool.append("t", batch(seq), 1, boot_id=boot, seq=seq)
    assert spool.stats.gap_batches == 2 + 3
    assert "skipped 2 batch" in caplog.text and "skipped 3 batch" in caplog.text
    await spool.close()


async def test_what_the_spool_remembers_of_agent_runs_is_bounded(spool_dir: Path) -> None:
    spool = Spool(str(spool_dir), dedup_boots=100)
    spool.open()
    for _ in range(1000):  # a thousand agent boots
        boot = os.urandom(8)
        for seq in (1, 2, 3):
            await spool.append("t", batch(seq), 1, boot_id=boot, seq=seq)
    assert len(spool.runs) <= 100
    assert len(spool.resent.recent) <= 100 * 8 + spool.resent.window
    await spool.close()


async def test_a_full_spool_blocks_until_acks_free_room(spool_dir: Path) -> None:
    cap = 512 << 10
    spool = Spool(str(spool_dir), max_bytes=cap, segment_bytes=64 << 10)
    spool.open()
    futs: list[asyncio.Future[None]] = []

    async def produce() -> None:
        for i in range(2000):  # about 900 KiB: more than the cap
            futs.append(await spool.append("t", batch(i, 400), 1))

    producer = asyncio.create_task(produce())
    await wait_until(lambda: spool.size > cap - 1024 and not producer.done(), "the cap")
    stuck = len(futs)
    await asyncio.sleep(100 * MS)  # a window in which a non-blocking append would go on
    assert len(futs) == stuck and not producer.done(), "appends went past the cap"
    assert spool.size <= cap
    got = await drain(spool, 2000)  # acking frees whole segments, which lets it go on
    assert got == list(range(2000))
    await within(producer, "the producer to finish once room was freed")
    await spool.close()


async def test_drop_oldest_never_blocks_and_counts_every_dropped_record(spool_dir: Path,
                                                                          ) -> None:
    cap = 512 << 10
    spool = Spool(str(spool_dir), max_bytes=cap, segment_bytes=64 << 10, full=Full.DROP_OLDEST)
    spool.open()
    n = 3000
    for start in range(0, n, 100):
        futs = [await within(spool.append("t", batch(i, 400), 1), "an append that never blocks")
                for i in range(start, start + 100)]
        await within(asyncio.gather(*futs), "commits")
        assert spool.size <= cap
    dropped = spool.stats.dropped_records
    assert dropped > 0
    got = await drain(spool, spool.backlog)
    assert dropped + len(got) == n, "every record is either delivered or counted as dropped"
    assert got == list(range(n - len(got), n)), "the oldest were dropped, the newest kept"
    await spool.close()


async def test_two_relays_cannot_share_a_spool(spool_dir: Path) -> None:
    first = Spool(str(spool_dir))
    first.open()
    with pytest.raises(SpoolError, match="in use by another relay"):
        Spool(str(spool_dir)).open()
    await first.close()


async def test_an_unusable_spool_directory_names_the_option_and_the_alternatives(
        tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError) as info:
        Spool(str(blocker / "spool")).open()
    message = str(info.value)
    assert "--spool" in message and "--spool none" in message


async def test_a_segment_from_a_newer_relay_is_refused_clearly(spool_dir: Path) -> None:
    spool_dir.mkdir(parents=True)
    (spool_dir / "0000000000000001.seg").write_bytes(HEADER.pack(MAGIC, FORMAT_VERSION + 1, 0))
    with pytest.raises(SpoolError, match="newer than this relay"):
        Spool(str(spool_dir)).open()


async def test_spool_files_survive_a_copy_as_a_whole(spool_dir: Path) -> None:
    # The spool is plain files: moving it to another machine keeps its content.
    spool = Spool(str(spool_dir))
    spool.open()
    await fill(spool, 20)
    await spool.close()
    moved = spool_dir.parent / "moved"
    shutil.copytree(spool_dir, moved)
    (moved / "lock").unlink()
    again = Spool(str(moved))
    again.open()
    assert await drain(again, 20) == list(range(20))
    await again.close()


async def test_a_drained_spool_leaves_no_segment_so_any_relay_version_can_take_it(
        spool_dir: Path) -> None:
    spool = Spool(str(spool_dir))
    spool.open()
    await fill(spool, 10)
    await drain(spool, 10)
    await spool.close()
    assert list(spool_dir.glob("*.seg")) == [], "a drained spool kept a segment"
    # Not drained: everything stays for the next start.
    spool = Spool(str(spool_dir))
    spool.open()
    await fill(spool, 10)
    await drain(spool, 4)
    await spool.close()
    assert list(spool_dir.glob("*.seg"))
