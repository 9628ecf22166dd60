"""The app's pipes: 1 MiB of room, and short reads followed by a nap so that the next
read takes many of the app's writes at once."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys

import pytest

from enclave_side.buffer import Buffer
from enclave_side.sources.child import PIPE_BYTES, PipeSource, spawn
from fluent_forward.codec import FrameDecoder, Role
from fluent_forward.conventions import Overflow as Policy
from fluent_forward.entries import iter_entries
from tests.helpers import MS

pytestmark = pytest.mark.asyncio


class FakeTransport(asyncio.ReadTransport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.closing = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing


def source(nap: float, max_bytes: int = 1 << 20) -> tuple[PipeSource, FakeTransport]:
    buf = Buffer(boot_id=b"\x01" * 8, max_bytes=max_bytes, batch_bytes=max_bytes // 4,
                 flush_interval=0.05)
    src = PipeSource("stdout", "t.stdout", buf, policy=Policy.BLOCK, max_line_bytes=1024,
                     nap=nap)
    transport = FakeTransport()
    src.connection_made(transport)
    return src, transport


async def test_the_apps_pipes_hold_a_mebibyte() -> None:
    proc, out_fd, err_fd = spawn([sys.executable, "-c", "pass"])
    try:
        for fd in (out_fd, err_fd):
            assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == PIPE_BYTES
    finally:
        proc.wait()
        os.close(out_fd)
        os.close(err_fd)


async def test_a_short_read_is_followed_by_a_nap() -> None:
    src, transport = source(nap=20 * MS)
    src.data_received(b"one line\n")
    assert not transport.reading and src.napping
    await asyncio.sleep(60 * MS)
    assert transport.reading and not src.napping
    src.data_received(b"x" * (64 * 1024) + b"\n")  # a long read: no nap
    assert transport.reading
    assert src.naps == 1


async def test_no_nap_without_one_configured() -> None:
    src, transport = source(nap=0.0)
    src.data_received(b"one line\n")
    assert transport.reading and src.naps == 0


async def test_a_nap_ending_while_the_buffer_is_full_does_not_resume_reading() -> None:
    src, transport = source(nap=10 * MS, max_bytes=4096)
    src.data_received(b"x" * 1000 + b"\n")  # short: a nap
    await asyncio.sleep(30 * MS)
    src.data_received((b"y" * 1000 + b"\n") * 5)  # short, and fills the buffer
    assert src.paused and not transport.reading
    await asyncio.sleep(30 * MS)
    assert not transport.reading, "resumed while the buffer is full"
    batch = await src.buffer.next_batch(8)
    src.buffer.ack(batch.chunk)
    while src.buffer.stats().queued_batches or src.buffer.stats().open_records:
        src.buffer.seal_all()
        src.buffer.ack((await src.buffer.next_batch(8)).chunk)
    await asyncio.sleep(10 * MS)
    assert transport.reading and not src.paused


async def test_a_half_line_is_not_flushed_as_partial_while_reading_is_paused() -> None:
    """The buffer is full, so the agent stops reading: the app is not quiet, and the
    rest of its line may be in the pipe. Flushing the half line as partial then would
    cut one line in two (the vsock tier's stall test caught it once reads could end
    mid-line)."""
    now = [100.0]
    buf = Buffer(boot_id=b"\x01" * 8, max_bytes=4096, batch_bytes=1024, flush_interval=0.05)
    src = PipeSource("stdout", "t.stdout", buf, policy=Policy.BLOCK, max_line_bytes=8192,
                     clock=lambda: now[0])
    transport = FakeTransport()
    src.connection_made(transport)
    src.data_received((b"y" * 1000 + b"\n") * 5 + b"half of a li")  # fills the buffer
    assert src.paused and src.stream.pending == 12
    now[0] += 5.0
    src.tick(now[0], 1.0)
    assert src.stream.pending == 12, "the half line was flushed while reading was paused"
    while src.buffer.stats().queued_batches or src.buffer.stats().open_records:
        src.buffer.seal_all()
        src.buffer.ack((await src.buffer.next_batch(8)).chunk)
    await asyncio.sleep(10 * MS)  # room again: reading resumes
    assert not src.paused and transport.reading
    src.tick(now[0], 1.0)  # silence counts from the resume, not from the last read
    assert src.stream.pending == 12
    src.data_received(b"ne\n")
    src.buffer.seal_all()
    batch = await src.buffer.next_batch(8)
    (frame,) = FrameDecoder(Role.SERVER).feed(batch.frame)
    assert [r["log"] for _, r in iter_entries(frame.entries)] == ["half of a line"]


async def test_a_read_larger_than_a_small_buffer_keeps_its_newest_lines() -> None:
    """A 1 MiB pipe allows 256 KiB reads; with --buffer-size 64KiB and drop_oldest the
    newest lines of such a read must survive (the buffer takes it in pieces), not the
    whole read be dropped because it cannot fit at once."""
    buf = Buffer(boot_id=b"\x01" * 8, max_bytes=64 * 1024, batch_bytes=8 * 1024,
                 flush_interval=0.05)
    src = PipeSource("stdout", "t.stdout", buf, policy=Policy.DROP_OLDEST,
                     max_line_bytes=1024)
    src.connection_made(FakeTransport())
    n = 2000
    src.data_received(b"".join(b"line %06d " % i + b"x" * 120 + b"\n" for i in range(n)))
    buf.seal_all()
    kept = []
    while buf.stats().queued_batches:
        batch = await buf.next_batch(64)
        (frame,) = FrameDecoder(Role.SERVER).feed(batch.frame)
        if frame.tag == "t.stdout":  # not the drop report
            kept += [r["log"] for _, r in iter_entries(frame.entries)]
        buf.ack(batch.chunk)
    assert kept, "the whole read was dropped"
    assert kept[-1].startswith(f"line {n - 1:06d}")
    assert buf.dropped_records + len(kept) == n
