"""``--output file://``: a batch is acked only once its bytes are fsynced, and the
batches written while one fsync runs share the next one.

os.fsync is replaced by a gate the test opens, so "acked before the fsync returned"
would show as a resolved future while the gate is still shut.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from fluent_forward.entries import EventTime, pack_entry
from parent_side.outputs import FileOutput, RelayBatch
from tests.helpers import DEADLINE, wait_until

pytestmark = pytest.mark.asyncio


class GatedFsync:
    """Stands in for os.fsync: each call blocks until ``release``; counts calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Semaphore(0)
        self._gate = threading.Semaphore(0)
        self.fail_next: OSError | None = None

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.release()
        if not self._gate.acquire(timeout=DEADLINE):
            raise AssertionError("the test never released this fsync")
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def release(self) -> None:
        self._gate.release()

    async def wait_entered(self) -> None:
        ok = await asyncio.to_thread(self.entered.acquire, timeout=DEADLINE)
        assert ok, "no fsync started"


@pytest.fixture
def fsync(monkeypatch: pytest.MonkeyPatch) -> GatedFsync:
    gate = GatedFsync()
    monkeypatch.setattr(os, "fsync", gate)
    return gate


@pytest_asyncio.fixture
async def out(tmp_path: Path) -> AsyncIterator[FileOutput]:
    """A started file output on ``tmp_path/out.jsonl``, closed after the test."""
    output = FileOutput(str(tmp_path / "out.jsonl"))
    await output.start()
    yield output
    await output.close(1.0)


def batch(text: str) -> RelayBatch:
    return RelayBatch("enclave.x.app", pack_entry(EventTime(1, 0), {"log": text}), 1)


async def test_a_batch_is_acked_only_after_its_fsync_returns(
        tmp_path: Path, fsync: GatedFsync, out: FileOutput) -> None:
    done = await out.submit(batch("one"))
    await fsync.wait_entered()
    assert not done.done(), "acked while the fsync still runs"
    assert json.loads((tmp_path / "out.jsonl").read_text())["record"] == {"log": "one"}
    fsync.release()
    await asyncio.wait_for(done, DEADLINE)


async def test_batches_written_during_an_fsync_share_the_next(
        tmp_path: Path, fsync: GatedFsync, out: FileOutput) -> None:
    first = await out.submit(batch("a"))
    await fsync.wait_entered()
    later = [await out.submit(batch(t)) for t in "bcd"]
    fsync.release()
    await asyncio.wait_for(first, DEADLINE)
    assert not any(f.done() for f in later), "acked before the fsync that covers them"
    await fsync.wait_entered()
    fsync.release()
    await asyncio.wait_for(asyncio.gather(*later), DEADLINE)
    assert fsync.calls == 2
    await out.close(1.0)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["record"]["log"] for line in lines] == list("abcd")


async def test_an_fsync_error_fails_its_batches_and_the_next_fsync_goes_on(
        tmp_path: Path, fsync: GatedFsync, out: FileOutput) -> None:
    fsync.fail_next = OSError(errno.EIO, "Input/output error")
    failed = await out.submit(batch("lost?"))
    await fsync.wait_entered()
    fsync.release()
    with pytest.raises(OSError, match="Input/output"):
        await asyncio.wait_for(failed, DEADLINE)
    ok = await out.submit(batch("after"))
    await fsync.wait_entered()
    fsync.release()
    await asyncio.wait_for(ok, DEADLINE)


async def test_close_waits_for_the_fsync_in_flight(fsync: GatedFsync, out: FileOutput) -> None:
    done = await out.submit(batch("x"))
    await fsync.wait_entered()
    closing = asyncio.create_task(out.close(1.0))
    await asyncio.sleep(0)  # let close start; it must not finish while the fsync runs
    assert not closing.done()
    fsync.release()
    await asyncio.wait_for(closing, DEADLINE)
    assert done.result() is None


async def test_a_device_is_acked_once_written_without_fsync(fsync: GatedFsync) -> None:
    out = FileOutput(os.devnull)
    await out.start()
    done = await out.submit(batch("x"))
    await wait_until(done.done, "the write to /dev/null acked")
    assert fsync.calls == 0
    await out.close(1.0)
