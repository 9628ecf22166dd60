"""A full spool disk is a full spool: backpressure, not a storm (issue 16).

The relay's spool sits on a real 3 MiB tmpfs, mounted here (the tests run as root in
CI; elsewhere they skip, saying why, unless CI=true). Fluent Bit (the fake) is down
while two real agents write more than the disk holds; then it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.fluentbit import FakeFluentBit
from tests.helpers import wait_until
from tests.integration.test_faults import (
    SLOW,
    UPSTREAM_WINDOW,
    Procs,
    Writer,
    all_delivered,
    app_logs,
    app_records,
    distinct_delivered,
    max_records_per_batch,
    procs,  # noqa: F401 - a fixture
    show,
)
from tests.oracle import check

pytestmark = pytest.mark.asyncio

DISK = 3 << 20


@pytest.fixture
def small_disk(sockdir: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards."""
    where = sockdir / "disk"
    where.mkdir()
    why = ""
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs",
                               str(where)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = f"mount -t tmpfs failed: {done.stderr.strip()}"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; under CI=true this test must run")
        pytest.skip(why)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def relay_lines(log: str) -> list[str]:
    """Log lines other than the output's reconnect attempts (it is down on purpose)."""
    return [line for line in log.splitlines() if "parent_side.upstream" not in line]


def log_lines(log: str, text: str) -> int:
    return sum(text in line for line in log.splitlines())


@pytest.mark.slow
async def test_a_full_spool_disk_is_backpressure_not_a_storm_and_it_all_arrives(
        procs: Procs, sockdir: Path, small_disk: Path) -> None:  # noqa: F811
    batch = 16 * 1024
    writers = [Writer(f"disk{i}", 12_000, sockdir, ("--size", "400")) for i in range(2)]
    fluentbit = FakeFluentBit(f"unix://{sockdir}/fb.sock")  # down for now
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url,
                        "--upstream-buffer", "256KiB", spool=small_disk / "spool")
    await relay.start()
    runs = [await procs.agent(relay.listen, w.command, "--batch-size", "16KiB")
            for w in writers]
    try:
        # ~10 MB of lines for a 3 MiB disk: the spool fills to the disk's cap, then
        # takes nothing more, and the agents (unacked) stop reading their apps.
        await wait_until(lambda: "full (" in relay.log(), "the spool to be full", timeout=SLOW)
        # Hold the fault: the connections stay up, nothing is written, nothing resent.
        await wait_until(lambda: all(w.progress()[0] < w.count for w in writers)
                         and relay.spool_bytes() > DISK // 2, "both apps to be held back")
        held = relay.log()
        await asyncio.sleep(2.0)  # a window in which a storm would show
        log = relay.log()
        assert len(relay_lines(log[len(held):])) <= 2, log[len(held):][:3000]
        assert relay.spool_bytes() <= DISK
        assert log_lines(log, "commit failed") == 0, log[-3000:]
        assert log_lines(log, "never retrieved") == 0, log[-3000:]
        assert log_lines(log, "closing connection") == 0, log[-3000:]
        assert log_lines(log, "full (") == 1
        assert all(b"unacked batches will be resent" not in r.stderr for r in runs)

        await fluentbit.start()  # back: the spool drains, segments go, room returns
        for run in runs:
            assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
        await fluentbit.wait_for(lambda: all(distinct_delivered(fluentbit, w.source) >= w.count
                                             for w in writers), timeout=SLOW,
                                 what="every line of both apps")
        report = check(app_logs(fluentbit), {w.source: w.count for w in writers})
        show("spool on a full 3 MiB disk", report, records=len(app_records(fluentbit)))
        assert report.lost == 0 and report.corrupted == 0, report
        # Fluent Bit was down, never lost a connection: at most one window resent.
        assert report.duplicated <= UPSTREAM_WINDOW * max_records_per_batch(batch)
        log = relay.log()
        assert log_lines(log, "never retrieved") == 0 and log_lines(log, "Traceback") == 0
        assert "takes batches again" in log
        events = [r.record.get("event") for r in fluentbit.records if r.tag == "relay.lifecycle"]
        assert "spool_full" in events and "spool_resumed" in events, events
    finally:
        await fluentbit.stop()


@pytest.mark.slow
async def test_a_disk_filled_by_someone_else_stalls_the_spool_until_space_returns(
        procs: Procs, sockdir: Path, small_disk: Path) -> None:  # noqa: F811
    """Another file takes the disk's last bytes under the relay: its writes fail for
    want of room (or it sees the room gone first); either way it holds the agents back
    without resets, and resumes by itself once the file is gone."""
    writer = Writer("filler", 8_000, sockdir, ("--size", "400", "--rate", "4000"))
    fluentbit = FakeFluentBit(f"unix://{sockdir}/fb.sock")
    await fluentbit.start()
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url,
                        spool=small_disk / "spool")
    await relay.start()
    run = await procs.agent(relay.listen, writer.command, "--batch-size", "16KiB")
    filler = small_disk / "someone-elses-file"
    try:
        await wait_until(lambda: writer.progress()[0] >= 500, "the stream to flow", timeout=SLOW)
        await fluentbit.stop()  # the spool must hold what comes next
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:  # until the disk is full
                f.write(b"\0" * 65536)
                f.flush()
        await wait_until(lambda: "cannot write" in relay.log() or "full (" in relay.log(),
                         "the relay to notice the full disk", timeout=SLOW)
        held = relay.log()
        await asyncio.sleep(2.0)  # hold the fault: a window in which a storm would show
        log = relay.log()
        assert len(relay_lines(log[len(held):])) <= 2, log[len(held):][:3000]
        assert log_lines(log, "cannot write") <= 1, "one line per episode"
        assert log_lines(log, "closing connection") == 0 and "never retrieved" not in log
        filler.unlink()  # space returns
        await fluentbit.start()
        assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
        report = await all_delivered(fluentbit, writer)
        show("a disk filled under the spool", report,
             refused_writes="cannot write" in relay.log())
        assert report.lost == 0 and report.corrupted == 0, report
        assert "takes batches again" in relay.log()
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        await fluentbit.stop()

