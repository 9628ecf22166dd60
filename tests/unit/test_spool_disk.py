"""The spool and its disk: a refused write stalls (and resumes), the cap follows the free
space, and the acked mark is current on every ack. Real files; write errors injected
through the spool's ``writev``/``fsync`` seams, as a full or failing disk returns them."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parent_side import spool_format as spool_mod
from parent_side.spool import Spool
from parent_side.spool_disk import AckedMark, DiskRoom, is_disk_full, read_mark
from tests.helpers import MS, short_tmpdir, wait_until, within
from tests.unit.test_spool import batch, drain, entry_number

pytestmark = pytest.mark.asyncio


@pytest.fixture
def spool_dir() -> Iterator[Path]:
    with short_tmpdir() as d:
        yield d / "spool"


class Disk:
    """A disk that refuses writes while ``error`` is set, after writing a few bytes of
    them (as a filesystem that runs out of room part way through a write does)."""

    def __init__(self, error: int | None = None, *, on_fsync: bool = False) -> None:
        self.error = error
        self.on_fsync = on_fsync
        self.refused = 0

    def writev(self, fd: int, parts: list[bytes]) -> None:
        if self.error is not None and not self.on_fsync:
            os.write(fd, b"".join(parts)[:7])
            self.refused += 1
            raise OSError(self.error, os.strerror(self.error))
        spool_mod._writev_all(fd, parts)

    def fsync(self, fd: int) -> None:
        if self.error is not None and self.on_fsync:
            self.refused += 1
            raise OSError(self.error, os.strerror(self.error))
        os.fdatasync(fd)


def small_disk(spool: Spool, size: int) -> None:
    """Give ``spool`` a disk of ``size`` bytes holding nothing but the spool: the test
    machine's disk is shared, and its free space moves under a test."""
    where = Path(spool.path)

    def statvfs(_: str) -> os.statvfs_result:
        used = sum(f.stat().st_size for f in where.iterdir() if f.is_file())
        free = max(size - used, 0)
        # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, ...
        return os.statvfs_result((4096, 1, size, free, free, 0, 0, 0, 0, 255))

    spool.room = DiskRoom(spool.path, reserve=0, statvfs=statvfs)


def states(spool: Spool) -> list[str]:
    seen: list[str] = []
    spool.gate.on_state = lambda state, details: seen.append(state)
    return seen


@pytest.mark.parametrize(("error", "on_fsync"), [(errno.ENOSPC, False), (errno.EDQUOT, False),
                                                 (errno.EIO, False), (errno.EIO, True)])
async def test_a_refused_write_stalls_the_spool_and_it_resumes_by_itself(
        spool_dir: Path, error: int, on_fsync: bool, caplog: pytest.LogCaptureFixture) -> None:
    disk = Disk(error, on_fsync=on_fsync)
    spool = Spool(str(spool_dir), writev=disk.writev, fsync=disk.fsync, commit_delay=0,
                  retry_interval=20 * MS)
    seen = states(spool)
    spool.open()
    futs = [await spool.append("t", batch(i), 1) for i in range(5)]
    await wait_until(lambda: disk.refused >= 3, "the spool to retry on its timer")
    # Nothing failed: the batches wait (their agents are not acked, and not cut off).
    assert not any(f.done() for f in futs)
    assert spool.status()["state"] == "disk_error"
    assert spool.status()["error"] == os.strerror(error)
    # Appends wait too: that is the backpressure.
    more = asyncio.ensure_future(spool.append("t", batch(5), 1))
    await asyncio.sleep(50 * MS)  # a window in which an append that went through would show
    assert not more.done()
    disk.error = None  # space returns
    await within(asyncio.gather(*futs), "the stalled batches to commit")
    futs.append(await within(more, "the waiting append"))  # type: ignore[arg-type]
    await within(futs[-1], "its commit")
    assert spool.status()["state"] == "ok"
    assert seen == ["disk_error", "resumed"]
    assert caplog.text.count("cannot write") == 1, "one log line per episode, not per retry"
    assert await drain(spool, 6) == list(range(6))
    await spool.close()


async def test_a_refused_write_leaves_no_torn_bytes_behind(spool_dir: Path) -> None:
    """The bytes a refused write got onto the disk are cut off again, so the retried
    write lands right after the last whole entry: recovery finds every entry, and no
    torn tail."""
    disk = Disk()
    spool = Spool(str(spool_dir), writev=disk.writev, commit_delay=0, retry_interval=20 * MS)
    spool.open()
    await within(await spool.append("t", batch(0), 1), "the first commit")
    disk.error = errno.ENOSPC
    fut = await spool.append("t", batch(1), 1)
    await wait_until(lambda: disk.refused >= 2, "two refused writes")
    disk.error = None
    await within(fut, "the retried commit")
    await spool.close()

    again = Spool(str(spool_dir))
    again.open()
    assert again.stats.torn_bytes_cut == 0
    assert await drain(again, 2) == [0, 1]
    await again.close()


async def test_a_segment_that_cannot_be_created_stalls_and_retries(
        spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(str(spool_dir), commit_delay=0, retry_interval=20 * MS)
    seen = states(spool)
    spool.open()
    real_open = os.open
    refused = []

    def full_open(path: str, flags: int, mode: int = 0o777) -> int:
        if path.endswith(".seg") and not refused:
            refused.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, flags, mode)

    monkeypatch.setattr(spool_mod.os, "open", full_open)
    await within(await within(spool.append("t", batch(0), 1), "the append"),  # type: ignore[arg-type]
                 "its commit")
    assert refused and seen == ["disk_error", "resumed"]
    assert await drain(spool, 1) == [0]
    await spool.close()


async def test_the_cap_is_the_free_space_when_that_is_smaller(spool_dir: Path) -> None:
    spool_dir.mkdir(parents=True)
    st = os.statvfs(spool_dir)
    free = st.f_bavail * st.f_frsize
    room = DiskRoom(str(spool_dir), reserve=0)
    assert abs(room.limit(1000) - (1000 + free)) < 64 << 20  # others write meanwhile
    assert Spool(str(spool_dir), max_bytes=1 << 62).limit < 1 << 62
    # The reserve comes off the top (2% of the filesystem by default); segments stay a
    # quarter of the cap at most.
    small = Spool(str(spool_dir), max_bytes=1 << 62)
    small_disk(small, 4 << 20)
    small.room.reserve = None
    assert small.limit == (4 << 20) - (4 << 20) // 50
    assert small._segment_limit() == small.limit // 4
    assert Spool(str(spool_dir), max_bytes=1 << 20).limit == 1 << 20


async def test_appends_wait_at_the_disk_cap_and_go_on_when_acks_free_segments(
        spool_dir: Path) -> None:
    spool = Spool(str(spool_dir), commit_delay=0)
    small_disk(spool, 512 << 10)
    seen = states(spool)
    spool.open()
    entry = batch(0, size=8000)
    futs = []
    append = None
    for i in range(200):
        append = asyncio.ensure_future(spool.append("t", batch(i, size=8000), 1))
        await asyncio.sleep(0)
        if not append.done():
            await asyncio.sleep(20 * MS)
            if not append.done():
                break
        futs.append(append.result())
    assert append is not None and not append.done(), "never blocked at the disk's cap"
    assert spool.status()["state"] == "full" and seen == ["full"]
    assert spool.size <= spool.limit + len(entry) + 64
    got = await drain(spool, len(futs))  # Fluent Bit takes them: segments go, room returns
    assert got == list(range(len(futs)))
    await within(append, "the blocked append")
    assert spool.status()["state"] == "ok" and seen == ["full", "resumed"]
    await spool.close()


async def test_disk_full_errors_are_the_ones_retried() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "x"))
    assert is_disk_full(OSError(errno.EDQUOT, "x"))
    assert is_disk_full(OSError(errno.EIO, "x"))
    assert not is_disk_full(OSError(errno.EBADF, "x"))
    assert not is_disk_full(ValueError())
    assert not is_disk_full(None)


# -- the acked mark ---------------------------------------------------------------------


async def test_the_acked_mark_is_current_after_every_ack_without_a_close(
        spool_dir: Path, tmp_path: Path) -> None:
    """A SIGKILL keeps the page cache but runs no close and no timer: a copy of the
    directory taken between acks is what a restart after a kill sees. Only the batches
    not yet acked downstream come back."""
    spool = Spool(str(spool_dir))
    spool.open()
    for i in range(50):
        await within(await spool.append("t", batch(i), 1), "a commit")
    entries = [await within(spool.next_entry(), "an entry") for _ in range(50)]
    for e in entries[:37]:
        spool.ack(e)  # acked in order, as Fluent Bit acks; 13 still in flight
    copy = tmp_path / "after-kill"
    shutil.copytree(spool_dir, copy, ignore=shutil.ignore_patterns("lock"))
    again = Spool(str(copy))
    again.open()
    assert again.stats.recovered_batches == 13
    first: Any = await within(again.next_entry(), "the first entry after the kill")
    assert entry_number(first.entries) == 37
    await again.close()
    await spool.close()


async def test_the_mark_is_rewritten_in_place_and_read_by_the_old_reader(tmp_path: Path) -> None:
    path = str(tmp_path / "acked")
    (tmp_path / "acked").write_text("3 12345\n")  # an older relay's mark
    assert read_mark(path) == (3, 12345)
    mark = AckedMark(path)
    inode = os.stat(path).st_ino
    mark.write((7, 16))
    mark.write((12, 99_000_000))
    mark.sync()
    assert read_mark(path) == (12, 99_000_000)
    assert os.stat(path).st_ino == inode  # rewritten, not replaced: no new block needed
    seg, off = (tmp_path / "acked").read_text().split()  # as releases before this one read it
    assert (int(seg), int(off)) == (12, 99_000_000)
    mark.remove()
    assert read_mark(path) is None


async def test_a_small_record_does_not_reopen_a_full_spool_before_a_waiting_batch(
        spool_dir: Path) -> None:
    spool = Spool(str(spool_dir), commit_delay=0)
    small_disk(spool, 512 << 10)
    seen = states(spool)
    spool.open()
    await within(await spool.append("t", batch(0, size=spool.limit * 3 // 4), 1), "a commit")
    free = spool.limit - spool.size  # a quarter: more than the eighth kept spare
    big = asyncio.ensure_future(spool.append("t", batch(1, size=free + 1000), 1))
    await asyncio.sleep(20 * MS)
    assert not big.done() and seen == ["full"]
    small = asyncio.ensure_future(spool.append("t", batch(2, size=10), 1))
    await asyncio.sleep(50 * MS)  # a window in which it would squeeze in
    assert not small.done() and seen == ["full"], seen
    await drain(spool, 1)
    await within(big, "the waiting batch")
    await within(small, "the small record")
    assert seen == ["full", "resumed"]
    await spool.close()
