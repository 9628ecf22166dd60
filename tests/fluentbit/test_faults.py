"""The fault tests' faults that a real Fluent Bit plays itself (tests/integration/test_faults.py
plays them with the fake).

The real agent runs the oracle's writer (tests/oracle.py) as its app, the relay runs
in-process (its counters are read), and Fluent Bit is the real one, read back from its
``file`` output. Each test prints the oracle's figures (``pytest -s``) and asserts
lost == 0 and corrupted == 0, with duplicates within a bound stated next to it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from parent_side.relay import Relay
from tests.agentproc import AgentRun, cleanup, start_agent
from tests.conftest import StartRelay, relay_url
from tests.fluentbit.conftest import MakeFluentBit
from tests.fluentbit.peer import RealFluentBit, error_lines
from tests.helpers import wait_until
from tests.integration.test_faults import (
    APP,
    NO_ASYNCIO_DEBUG,
    SLOW,
    UPSTREAM_WINDOW,
    Writer,
    max_records_per_batch,
    show,
)
from tests.oracle import Report, check, parse_line

pytestmark = [pytest.mark.asyncio, pytest.mark.fluentbit]

BATCH = 16 * 1024
#: Lines a second the app writes in every test here.
RATE = 3000


def per_restart(relay: Relay, rate: int) -> int:
    """Duplicates one Fluent Bit restart may cause: the relay resends the upstream window
    of frames whose acks were lost (each one agent batch), and, Fluent Bit being a new
    process, what it acked within the replay window (--replay-window at the app's rate)."""
    return (UPSTREAM_WINDOW * max_records_per_batch(BATCH)
            + int(relay.config.replay_window * rate))


async def agent(relay: str, writer: Writer) -> AgentRun:
    return await start_agent(relay, writer.command, "--drain-timeout", "60s",
                             "--batch-size", "16KiB", **NO_ASYNCIO_DEBUG)


def distinct(fb: RealFluentBit, writer: Writer) -> int:
    seqs = set()
    for line in fb.out.logs(APP):
        parsed = parse_line(line)
        if parsed is not None and parsed[0] == writer.source:
            seqs.add(parsed[1])
    return len(seqs)


async def all_delivered(fb: RealFluentBit, writer: Writer) -> Report:
    """Wait until every line of ``writer`` is in Fluent Bit's file output; the report."""
    try:
        await wait_until(lambda: distinct(fb, writer) >= writer.count,
                         f"all {writer.count} lines of {writer.source}", timeout=SLOW)
    except AssertionError:
        report = check(fb.out.logs(APP), {writer.source: writer.count})
        raise AssertionError(f"not everything arrived: {report}\n{fb.log()[-3000:]}") from None
    return check(fb.out.logs(APP), {writer.source: writer.count})


async def written(writer: Writer, lines: int) -> None:
    lines = min(lines, writer.count)
    await wait_until(lambda: writer.progress()[0] >= lines, f"{lines} lines written",
                     timeout=SLOW)


async def delivered_at_least(fb: RealFluentBit, n: int) -> None:
    await wait_until(lambda: len(fb.out.tagged(APP)) >= n, f"{n} records delivered",
                     timeout=SLOW)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_fluent_bit_stopped_and_restarted_mid_stream_loses_nothing(
        start_relay: StartRelay, make_fluentbit: MakeFluentBit, sockdir: Path,
        sig: int) -> None:
    """Fluent Bit (storage.type filesystem) stopped twice mid-stream, restarted each time."""
    fb = make_fluentbit(storage="filesystem")
    await fb.start()
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, admin_socket=None)
    writer = Writer("stop", 12_000, sockdir, ("--rate", str(RATE)))
    run = await agent(relay_url(relay), writer)
    try:
        for at in (2000, 5000):
            await delivered_at_least(fb, at)
            status = await fb.stop(sig)
            await written(writer, writer.progress()[0] + 500)  # the stream goes on meanwhile
            await fb.start()
        assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
        report = await all_delivered(fb, writer)
    finally:
        await cleanup(run)
    stats: Any = relay.spool.stats if relay.spool is not None else None
    show(f"real Fluent Bit {signal.Signals(sig).name} x2", report, fb_exit_status=status,
         relay_forwarded=stats.forwarded_batches, relay_acked=stats.acked_batches,
         torn_output_lines=len(fb.out.torn))
    assert report.lost == 0 and report.corrupted == 0, report
    assert error_lines(fb.log()) == []
    # A kill may tear the line the file output was writing (its record comes again);
    # a clean stop never does.
    assert len(fb.out.torn) <= (2 if sig == signal.SIGKILL else 0), fb.out.torn
    # Bound: two restarts (per_restart). After a SIGKILL Fluent Bit also flushes again,
    # from its storage, the chunk its file output was writing (465 records once; a chunk
    # holds what arrived within one flush interval, 0.2 s: under a window here).
    assert report.duplicated <= 2 * per_restart(relay, RATE), report


async def test_fluent_bit_down_longer_than_the_relays_memory_buffer_the_spool_takes_it(
        start_relay: StartRelay, make_fluentbit: MakeFluentBit, sockdir: Path) -> None:
    """Fluent Bit down while the backlog outgrows the relay's memory 4 times over.

    The relay holds at most 256 KiB of frames on their way to Fluent Bit and caches
    256 KiB of the spool's newest entries (both lowered from 64 MiB and 16 MiB so that
    a few seconds outgrow them); the rest of the backlog is only in the spool on disk.
    The agent is acked all along (the app never stalls); once Fluent Bit is back the
    relay reads the backlog back from disk and every line arrives.
    """
    memory = 256 << 10
    fb = make_fluentbit(storage="filesystem")
    await fb.start()
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, admin_socket=None,
                              upstream_buffer_bytes=memory)
    spool = relay.spool
    assert spool is not None
    spool.cursor.cache.limit = memory
    disk_reads = 0
    read_disk = spool.cursor.read_disk

    def counting_read_disk(*args: Any) -> Any:
        nonlocal disk_reads
        disk_reads += 1
        return read_disk(*args)

    spool.cursor.read_disk = counting_read_disk  # type: ignore[method-assign]
    writer = Writer("down", 12_000, sockdir, ("--rate", str(RATE), "--size", "400"))
    run = await agent(relay_url(relay), writer)
    try:
        await delivered_at_least(fb, 1000)
        await fb.stop()
        down_at = spool.size
        await wait_until(lambda: spool.size > down_at + 4 * 2 * memory,
                         "the backlog to outgrow the relay's memory", timeout=SLOW)
        backlog = spool.size - down_at
        assert writer.progress()[0] < writer.count, "the fault outlasted the stream"
        await fb.start()
        assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
        report = await all_delivered(fb, writer)
    finally:
        await cleanup(run)
    show("real Fluent Bit down, backlog > relay memory", report, backlog_bytes=backlog,
         relay_memory_bytes=2 * memory, spool_disk_reads=disk_reads)
    assert report.lost == 0 and report.corrupted == 0, report
    assert disk_reads > 0, "the backlog never had to be read back from disk"
    assert error_lines(fb.log()) == []
    # Bound: one restart (per_restart).
    assert report.duplicated <= per_restart(relay, RATE), report


async def test_fluent_bit_pausing_its_input_at_mem_buf_limit_loses_nothing(
        start_relay: StartRelay, make_fluentbit: MakeFluentBit, sockdir: Path) -> None:
    """A memory-buffered input with a small mem_buf_limit pauses again and again.

    Fluent Bit flushes every 0.2 s; the app writes ~600 KB/s, so a 64 KB limit is hit
    between flushes: the input pauses (closing the relay's connection), resumes after
    the flush, and the relay resends what was not acked.
    """
    fb = make_fluentbit(storage="memory", input_options=[("mem_buf_limit", "64K")])
    await fb.start()
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, admin_socket=None)
    writer = Writer("paused", 12_000, sockdir, ("--rate", str(RATE), "--size", "200"))
    run = await agent(relay_url(relay), writer)
    try:
        assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
        report = await all_delivered(fb, writer)
    finally:
        await cleanup(run)
    pauses = fb.log().count("paused (mem buf overlimit")
    stats: Any = relay.spool.stats if relay.spool is not None else None
    show("real Fluent Bit input paused at mem_buf_limit", report, pauses=pauses,
         relay_forwarded=stats.forwarded_batches, relay_acked=stats.acked_batches)
    assert pauses >= 1, "the input never paused"
    assert report.lost == 0 and report.corrupted == 0, report
    # Bound: each pause closes the connection and loses the acks of at most the upstream
    # window; the same process answers after it, so the relay replays nothing more.
    assert report.duplicated <= pauses * UPSTREAM_WINDOW * max_records_per_batch(BATCH), report
