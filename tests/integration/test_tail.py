"""File tailing with the real agent, real files and the in-process relay.

Every case writes sequence-numbered, checksummed lines (tests/file_oracle.py) and counts
what arrived lost, duplicated and corrupted. The agent polls every 50 ms here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from enclave_side.sources.tail import TailSource, _Remembered
from nel_config.units import parse_duration
from tests.agentproc import AgentRun, cleanup, start_agent
from tests.conftest import StartRelay, relay_url
from tests.file_oracle import LineWriter, Output, check
from tests.helpers import DEADLINE, MS, wait_until

pytestmark = pytest.mark.asyncio

#: NEL_TEST_TAIL_POLL=250ms measures the copytruncate window at the default poll.
POLL = os.environ.get("NEL_TEST_TAIL_POLL", "50ms")
StartTail = Callable[..., Awaitable[tuple[AgentRun, Output]]]


@pytest_asyncio.fixture
async def tail_agent(start_relay: StartRelay, sockdir: Path) -> AsyncIterator[StartTail]:
    runs: list[AgentRun] = []

    async def start(*options: str) -> tuple[AgentRun, Output]:
        out = sockdir / "out.jsonl"
        relay = await start_relay(f"unix://{sockdir}/relay.sock", f"file://{out}")
        run = await start_agent(relay_url(relay), (), "--poll-interval", POLL, *options)
        runs.append(run)
        return run, Output(out)

    yield start
    for run in runs:
        await cleanup(run)


async def delivered(out: Output, expected: range, suffix: str = ".file",
                    timeout: float = DEADLINE) -> list[str]:
    """Wait until every expected line arrived (or the deadline); return the logs."""
    deadline = time.monotonic() + timeout
    want = set(expected)
    while True:
        logs = out.logs(suffix)
        if not check(logs, expected).lost or time.monotonic() > deadline:
            return logs
        await asyncio.sleep(50 * MS if want else 0)


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def stop(run: AgentRun) -> None:
    run.signal(signal.SIGTERM)
    assert await run.wait() == 0, run.stderr.decode(errors="replace")


async def test_rename_rotation_during_a_burst_loses_and_repeats_nothing(
        tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log)
    w.write(1)
    run, out = await tail_agent("--file", str(log))
    await delivered(out, range(1))  # the agent follows the file
    for i in range(20):  # a burst: 20 x 1000 lines, renamed away in the middle
        w.write(1000)
        if i == 10:
            os.rename(log, tmp_path / "app.log.1")  # the writer still holds the old file
            w.write(500)
            w.reopen()
    logs = await delivered(out, range(w.next))
    report = check(logs, range(w.next))
    assert (report.lost, report.duplicated, report.corrupted) == ([], 0, 0), str(report)
    assert {r["file"] for r in out.tagged(".file")} == {str(log)}
    await stop(run)


async def test_a_renamed_file_is_followed_while_its_writer_goes_on(
        tail_agent: StartTail, tmp_path: Path) -> None:
    """No fixed timer: an app that reopens its log late keeps writing to the renamed
    file, and every line of it arrives (the glob names only the live file)."""
    log = tmp_path / "app.log"
    old = LineWriter(log)
    old.write(1)
    run, out = await tail_agent("--file", str(log))
    await delivered(out, range(1))
    os.rename(log, tmp_path / "app.log.1")
    new = LineWriter(log)
    new.next = 1_000_000
    new.write(10)
    for _ in range(4):  # the old writer, still on the renamed file, step by step
        old.write(50)
        await delivered(out, range(old.next))
    report = check(out.logs(".file"), range(old.next))
    assert (report.lost, report.duplicated) == ([], 0), str(report)
    assert check(out.logs(".file"), range(1_000_000, new.next)).lost == []
    await stop(run)


async def test_five_rotations_in_a_row_with_a_glob_that_matches_rotated_files(
        tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log)
    run, out = await tail_agent("--file", f"{log}*", "--rotated-idle", "100ms")
    w.write(1)
    await delivered(out, range(1))
    for _ in range(5):  # logrotate's scheme: app.log.N -> N+1, app.log -> app.log.1
        w.write(300)
        for n in range(4, 0, -1):
            if (tmp_path / f"app.log.{n}").exists():
                os.rename(tmp_path / f"app.log.{n}", tmp_path / f"app.log.{n + 1}")
        os.rename(log, tmp_path / "app.log.1")
        w.reopen()
    w.write(300)
    logs = await delivered(out, range(w.next))
    # Let the agent see the rotated files again and again, let go and not.
    for _ in range(3):
        w.write(100)
        logs = await delivered(out, range(w.next))
    report = check(logs, range(w.next))
    assert (report.lost, report.duplicated, report.corrupted) == ([], 0, 0), str(report)
    await stop(run)
    report = check(out.logs(".file"), range(w.next))
    assert report.duplicated == 0, f"the final sweep read a rotated file again: {report}"


async def test_a_rotated_file_the_glob_matches_again_continues_from_its_offset(
        tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log)
    run, out = await tail_agent("--file", f"{log}*", "--rotated-idle", "50ms",
                                "--metrics-interval", "100ms")
    w.write(200)
    await delivered(out, range(w.next))
    os.rename(log, tmp_path / "app.log.1")
    old = LineWriter(tmp_path / "app.log.1")
    old.next = w.next
    w.reopen()
    w.next = old.write(50).stop  # a late writer on the rotated file
    w.write(100)
    await delivered(out, range(w.next))
    # Once let go, the rotated file is remembered; a late line still comes, once.
    await wait_metric(out, lambda m: m["sources"][f"file:{log}*"]["files"] == 1,
                      "the rotated file to be let go")
    old.next = w.next
    w.next = old.write(10).stop
    logs = await delivered(out, range(w.next))
    report = check(logs, range(w.next))
    assert (report.lost, report.duplicated) == ([], 0), str(report)
    await stop(run)


async def wait_metric(out: Output, predicate: Callable[[dict[str, Any]], bool],
                      what: str, detail: Callable[[], str] = str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for m in reversed(out.tagged("agent.metrics")):
            if predicate(m):
                return m
            break
        await asyncio.sleep(50 * MS)
    raise AssertionError(f"timed out waiting for {what}: {detail()}")


@pytest.mark.slow
async def test_copytruncate_loses_only_its_window_and_repeats_nothing(
        tail_agent: StartTail, tmp_path: Path) -> None:
    """logrotate's copytruncate while a writer writes 2,000 lines/s; the copy is not
    followed (glob of the live name), so lines written after the agent's last read
    and before the truncation are lost: that window is measured here."""
    log = tmp_path / "app.log"
    w = LineWriter(log)
    run, out = await tail_agent("--file", str(log), "--metrics-interval", "100ms")
    w.write(1)
    await delivered(out, range(1))
    rotations, rate = 5, 2000
    # Rotations further apart than two polls: two truncations in one poll look like one.
    cycle = max(0.4, 2 * parse_duration(POLL))
    start = time.monotonic()
    for r in range(rotations):
        until = time.monotonic() + cycle
        while time.monotonic() < until:  # 20 lines every 10 ms
            w.write(rate // 100)
            await asyncio.sleep(10 * MS)
        shutil.copyfile(log, tmp_path / f"app.log.{r + 1}")
        os.truncate(log, 0)
    w.write(100)
    elapsed = time.monotonic() - start
    logs = await delivered(out, range(w.next), timeout=3.0)
    report = check(logs, range(w.next))
    window = len(report.lost) / rotations / (w.next / elapsed)
    print(f"copytruncate: {report}; {w.next / elapsed:.0f} lines/s; "
          f"loss window {window * 1000:.1f} ms per rotation (poll {POLL})")
    assert report.duplicated == 0 and report.corrupted == 0, str(report)
    assert window <= parse_duration(POLL) + 0.1, f"lost more than a poll's worth: {report}"
    m = await wait_metric(out, lambda m: m["files"]["truncations"] >= rotations,
                          "every truncation to be counted",
                          lambda: str(out.tagged("agent.metrics")[-1:]))
    assert m["files"]["truncations"] == rotations
    await stop(run)


async def test_copytruncate_copies_matched_by_the_glob_recover_the_window(
        tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[[file]]\npath = "{log}*"\ncopytruncate = true\n')
    w = LineWriter(log)
    run, out = await tail_agent("--config", str(conf))
    w.write(1)
    await delivered(out, range(1))
    for r in range(3):
        w.write(500)
        await delivered(out, range(w.next))
        w.write(300)  # not read yet when the copy is made, most likely
        shutil.copyfile(log, tmp_path / f"app.log.{r + 1}")
        os.truncate(log, 0)
    w.write(100)
    logs = await delivered(out, range(w.next))
    report = check(logs, range(w.next))
    assert (report.lost, report.duplicated, report.corrupted) == ([], 0, 0), str(report)
    await stop(run)


async def test_truncate_in_place_restarts_at_zero(tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log)
    run, out = await tail_agent("--file", str(log), "--metrics-interval", "100ms")
    w.write(500)
    await delivered(out, range(w.next))
    os.truncate(log, 0)  # : > app.log
    await wait_metric(out, lambda m: m["files"]["truncations"] == 1,
                      "the truncation to be seen")
    w.write(50)  # shorter than before: only the size tells
    logs = await delivered(out, range(w.next))
    report = check(logs, range(w.next))
    assert (report.lost, report.duplicated, report.corrupted) == ([], 0, 0), str(report)
    await stop(run)


async def test_truncated_and_regrown_between_polls_is_told_by_its_first_bytes(
        tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log, width=40)
    run, out = await tail_agent("--file", str(log), "--poll-interval", "2s")
    w.write(100)
    await delivered(out, range(w.next))
    os.truncate(log, 0)
    w2 = LineWriter(log, width=200)  # more bytes than before, before the next poll
    w2.next = w.next
    w2.write(100)
    logs = await delivered(out, range(w2.next))
    report = check(logs, range(w2.next))
    assert (report.lost, report.duplicated, report.corrupted) == ([], 0, 0), str(report)
    await stop(run)


async def test_delete_and_recreate(tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log)
    run, out = await tail_agent("--file", str(log), "--rotated-idle", "50ms")
    w.write(300)
    await delivered(out, range(w.next))
    for _ in range(3):
        w.write(100)  # maybe not read yet: read through the fd after the unlink
        os.unlink(log)
        w.reopen()  # a new file, maybe on the freed inode
        w.write(100)
        await delivered(out, range(w.next))
    report = check(out.logs(".file"), range(w.next))
    assert (report.lost, report.duplicated, report.corrupted) == ([], 0, 0), str(report)
    await stop(run)


@pytest.mark.slow
async def test_a_10mb_line_is_cut_and_tailing_goes_on(tail_agent: StartTail,
                                                      tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log)
    w.write(10)
    os.write(w.fd, b"y" * (10 * 1024 * 1024) + b"\n")
    w.write(10)
    run, out = await tail_agent("--file", str(log), "--max-line-bytes", "64KiB")
    logs = await delivered(out, range(w.next))
    report = check(logs, range(w.next))
    assert report.lost == [] and report.duplicated == 0, str(report)
    (long,) = [r for r in out.tagged(".file") if r["log"].startswith("y")]
    assert long["truncated"] is True and len(long["log"]) == 64 * 1024
    assert report.corrupted == 1  # the cut line itself is not a sequence line
    w.write(5)
    report = check(await delivered(out, range(w.next)), range(w.next))
    assert report.lost == []
    await stop(run)


async def test_a_partial_last_line_is_held_then_sent_once_flagged(
        tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"complete\nno newline yet")
    run, out = await tail_agent("--file", str(log), "--partial-flush", "300ms")
    await wait_until(lambda: len(out.tagged(".file")) >= 2, "the partial line")
    first = out.tagged(".file")
    assert [r["log"] for r in first] == ["complete", "no newline yet"]
    assert first[1]["partial"] is True and "partial" not in first[0]
    append(log, b"\nnext line\n")
    await wait_until(lambda: len(out.tagged(".file")) >= 4, "the next line")
    await stop(run)
    assert [r["log"] for r in out.tagged(".file")] == ["complete", "no newline yet", "",
                                                        "next line"]


async def test_new_files_matching_the_glob_are_picked_up_within_a_second(
        tail_agent: StartTail, tmp_path: Path) -> None:
    run, out = await tail_agent("--file", f"{tmp_path}/*.log", "--poll-interval", "250ms")
    await asyncio.sleep(0)
    started = time.monotonic()
    w = LineWriter(tmp_path / "late.log")
    w.write(3)
    await delivered(out, range(3), timeout=5.0)
    assert time.monotonic() - started < 1.0 + 0.5  # a poll, plus a generous margin
    await stop(run)


async def test_delete_rotated_files_once_acked(tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    conf = tmp_path / "agent.toml"
    conf.write_text(f'rotated_idle = "50ms"\n[[file]]\npath = "{log}*"\n'
                    'delete_rotated = true\n')
    w = LineWriter(log)
    run, out = await tail_agent("--config", str(conf))
    w.write(1)
    await delivered(out, range(1))
    w.write(1000)
    os.rename(log, tmp_path / "app.log.1")
    w.reopen()
    w.write(10)
    logs = await delivered(out, range(w.next))
    await wait_until(lambda: not (tmp_path / "app.log.1").exists(),
                     "the rotated file to be deleted")
    assert not (tmp_path / "app.log.1").exists(), "the rotated file was not deleted"
    assert log.exists(), "the live file was deleted"
    report = check(logs, range(w.next))
    assert (report.lost, report.duplicated) == ([], 0), str(report)
    await stop(run)


async def test_delete_rotated_also_finds_a_file_renamed_out_of_the_glob(
        tail_agent: StartTail, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    conf = tmp_path / "agent.toml"
    conf.write_text(f'rotated_idle = "50ms"\n[[file]]\npath = "{log}"\n'
                    'delete_rotated = true\n')
    w = LineWriter(log)
    run, out = await tail_agent("--config", str(conf))
    w.write(1)
    await delivered(out, range(1))
    os.rename(log, tmp_path / "old.log.1")
    w.write(100)  # through the old descriptor
    await delivered(out, range(w.next))
    try:
        await wait_until(lambda: not (tmp_path / "old.log.1").exists(),
                         "the file renamed out of the glob to be deleted")
    except AssertionError:
        raise AssertionError(run.stderr.decode(errors="replace")[-3000:]) from None
    await stop(run)


async def test_files_pause_while_the_relay_is_gone_and_lose_nothing(
        start_relay: StartRelay, sockdir: Path, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    w = LineWriter(log, width=200)
    sock = sockdir / "late.sock"
    run = await start_agent(f"unix://{sock}", (), "--file", str(log), "--poll-interval", POLL,
                            "--buffer-size", "256KiB", "--batch-size", "32KiB",
                            "--drain-timeout", "30s")
    try:
        w.write(20_000)  # ~4.6 MB: eighteen times the buffer
        out_path = sockdir / "out.jsonl"
        await asyncio.sleep(0)
        await start_relay(f"unix://{sock}", f"file://{out_path}")
        out = Output(out_path)
        logs = await delivered(out, range(w.next), timeout=2 * DEADLINE)
        report = check(logs, range(w.next))
        assert (report.lost, report.duplicated, report.corrupted) == ([], 0, 0), str(report)
        await stop(run)
    finally:
        await cleanup(run)


# -- identity, with the poll loop driven by hand --------------------------------------------


class _Buffer:
    def __init__(self) -> None:
        self.entries: list[bytes] = []

    def has_room(self) -> bool:
        return True

    def add(self, tag: str, entries: bytes, count: int, **_: object) -> int:
        self.entries.append(entries)
        return count


def _logs(buf: _Buffer) -> list[str]:
    from fluent_forward.entries import iter_entries
    return [rec["log"] for e in buf.entries for _, rec in iter_entries(e)]


def polled_tail(pattern: Path, buf: _Buffer, poll_interval: float = 0.05) -> TailSource:
    """A TailSource polled by the test itself (``await tail.poll()``), into ``buf``."""
    from enclave_side.config import FileSource
    return TailSource([FileSource(str(pattern))], buf,  # type: ignore[arg-type]
                      default_tag="t", max_line_bytes=1024, partial_flush=1.0,
                      poll_interval=poll_interval, rotated_idle=0.0, fingerprint_bytes=256,
                      make_pipeline=lambda i, f: None)


async def test_a_reused_inode_is_told_apart_by_the_first_bytes(tmp_path: Path) -> None:
    buf = _Buffer()
    tail = polled_tail(tmp_path / "app.log*", buf)
    w = LineWriter(tmp_path / "app.log.3")
    w.write(50)
    st = os.stat(w.path)
    # A file we read and let go used to live on this very inode, with other contents.
    tail.remembered[(st.st_dev, st.st_ino)] = _Remembered(
        str(tmp_path / "app.log.3"), b"seq=99999999 other file's first bytes", 40 * 100,
        st.st_size + 1, 0)
    await tail.poll()
    await tail.poll()
    report = check(_logs(buf), range(50))
    assert report.lost == [], f"the new file was read from the old file's offset: {report}"
    assert tail.stats.inode_reuses == 1
    tail.close()


async def test_a_file_shorter_than_the_fingerprint_keeps_its_identity(tmp_path: Path) -> None:
    buf = _Buffer()
    tail = polled_tail(tmp_path / "a*", buf)
    path = tmp_path / "a"
    path.write_bytes(b"one\n")
    await tail.poll()
    await tail.poll()
    append(path, b"two\n")  # still under 256 bytes: the fingerprint grows, does not change
    await tail.poll()
    os.rename(path, tmp_path / "a.1")
    await tail.poll()  # rotated, at its end, idle: let go and remembered
    await tail.poll()
    append(tmp_path / "a.1", b"three\n")
    await tail.poll()
    await tail.poll()
    assert _logs(buf) == ["one", "two", "three"]
    assert tail.stats.truncations == 0
    tail.close()


async def test_a_let_go_file_missing_from_one_listing_is_not_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """glob lists a directory, then stats each name: a file renamed in between (logrotate
    shifting app.log.2 to app.log.3) is in neither list for that one poll. Forgetting
    it then would read it again from the start at the next poll."""
    buf = _Buffer()
    tail = polled_tail(tmp_path / "app.log*", buf)
    w = LineWriter(tmp_path / "app.log")
    w.write(20)
    await tail.poll()
    os.rename(tmp_path / "app.log", tmp_path / "app.log.1")
    await tail.poll()  # rotated, read to its end: let go, remembered
    await tail.poll()
    assert tail.remembered and not tail.followed
    real_glob = tail._glob
    monkeypatch.setattr(tail, "_glob", lambda: {})  # the rename race: seen under no name
    await tail.poll()
    monkeypatch.setattr(tail, "_glob", real_glob)
    os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")
    await tail.poll()
    await tail.poll()
    report = check(_logs(buf), range(20))
    assert (report.lost, report.duplicated) == ([], 0), str(report)
    # Gone from two listings in a row: gone (forgotten, memory stays bounded).
    monkeypatch.setattr(tail, "_glob", lambda: {})
    await tail.poll()
    await tail.poll()
    assert not tail.remembered
    tail.close()


async def test_a_rotated_file_missing_from_the_listing_as_it_is_let_go_is_remembered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = _Buffer()
    tail = polled_tail(tmp_path / "app.log*", buf)
    w = LineWriter(tmp_path / "app.log")
    w.write(20)
    await tail.poll()
    os.rename(tmp_path / "app.log", tmp_path / "app.log.1")
    real_glob = tail._glob
    monkeypatch.setattr(tail, "_glob", lambda: {})  # rotated, idle, and unlisted this once
    await tail.poll()
    monkeypatch.setattr(tail, "_glob", real_glob)
    await tail.poll()
    assert tail.remembered and not tail.followed
    os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")
    await tail.poll()
    await tail.poll()
    report = check(_logs(buf), range(20))
    assert (report.lost, report.duplicated) == ([], 0), str(report)
    tail.close()


async def test_polling_follows_a_growing_file_closely_and_backs_off_when_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enclave_side.sources import tail as tail_mod
    tail = polled_tail(tmp_path / "x", _Buffer(), poll_interval=0.25)
    # (busy, bytes read) of each poll: idle, data, idle x6, a busy burst, data, idle
    script = iter([(False, 0), (False, 10), *[(False, 0)] * 6, (True, 4096), (False, 5),
                   (False, 0)])
    waits: list[float] = []

    async def poll(final: bool = False) -> bool:
        busy, n = next(script)
        tail.bytes_read += n
        return busy

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 11:
            raise asyncio.CancelledError

    monkeypatch.setattr(tail, "poll", poll)
    monkeypatch.setattr(tail_mod.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await tail.run()
    assert waits == pytest.approx([0.25, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0,
                                   0.01, 0.02])


async def test_a_file_paused_on_a_full_buffer_resumes_below_three_quarters_not_at_the_first_ack(
        tmp_path: Path) -> None:
    # Resuming at the first ack would read one chunk per ack, each after a wakeup; the
    # low-water mark makes a backpressured tail read in runs. The file is the buffer:
    # nothing is lost while it waits, and the cap is unchanged.
    from enclave_side.buffer import Buffer
    from enclave_side.sources.tail import READ_SIZE, RESUME_BELOW
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(b"%098d\n" % i for i in range(16 * READ_SIZE // 99)))
    # A cap of several reads' entries (a read is one batch here), as the defaults have.
    buf = Buffer(boot_id=b"12345678", max_bytes=16 * READ_SIZE, batch_bytes=64 * 1024,
                 flush_interval=60.0)
    tail = polled_tail(path, buf)  # type: ignore[arg-type]
    task = asyncio.create_task(tail.run())
    try:
        await wait_until(lambda: not buf.has_room(), "the buffer to fill")
        for _ in range(10):  # let the tail's task reach its wait (no time passes)
            await asyncio.sleep(0)
        sent, paused_at = [], tail.bytes_read
        while True:
            sent.append(await buf.next_batch(8))
            buf.ack(sent[-1].chunk)
            if buf.used < buf.max_bytes * RESUME_BELOW:
                break
            for _ in range(10):  # let the tail's task see the ack (no time passes)
                await asyncio.sleep(0)
            assert tail.bytes_read == paused_at, f"read again at {buf.used} bytes held"
        assert len(sent) >= 2, "one ack made room below the cap, still above the mark"
        await wait_until(lambda: tail.bytes_read > paused_at, "the tail to read on")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        tail.close()
