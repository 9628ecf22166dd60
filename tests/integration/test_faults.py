"""Fault tests of issue 5: nothing is lost, end to end, whatever breaks.

Real processes, real sockets, real files: the real agent (a subprocess) runs the
oracle's writer (tests/oracle.py) as its app; the relay is a subprocess
(``python -m parent_side serve --spool DIR``) wherever it is killed or its memory is
measured, in-process where a test reads its counters; Fluent Bit is the fake
(fakes/fluentbit.py) in this process; faults between agent and relay go through
tests/fakes/proxy.py.

Every test prints the oracle's figures (``pytest -s`` shows them) and asserts
lost == 0 and corrupted == 0, and that duplicates stay within a bound computed from
the configured windows and batch sizes, stated next to it.

The relay and agent subprocesses run without PYTHONASYNCIODEBUG (``make test`` sets it
for this process): the fault tests measure throughput and memory of the processes as
they run in production.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import gc
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from enclave_side.config import AgentConfig
from fakes.fluentbit import FakeFluentBit, Record
from fluent_forward import __version__
from fluent_forward.codec import Ack, FrameDecoder, Role, encode_packed_forward
from fluent_forward.conventions import chunk_id
from fluent_forward.entries import EventTime, iter_entries, pack_entry
from fluent_forward.handshake import ClientHandshake, Helo, Pong
from tests.agentproc import AgentRun, cleanup, start_agent
from tests.conftest import StartRelay, delivered
from tests.fakes.proxy import FaultProxy
from tests.helpers import DEADLINE, MS, PYTHON, env_for_subprocess, terminate, wait_until
from tests.integration.test_relay_bad_input import RawAgent
from tests.oracle import Report, check, parse_line

pytestmark = pytest.mark.asyncio

#: The tag the relay gives the app's stdout (the agent's default --tag, a local peer).
APP = "enclave.local.app.stdout"
APP_ERR = "enclave.local.app.stderr"

# The windows the bounds below are computed from (the products' defaults unless a test
# sets them): batches the agent keeps unacked, and frames the relay keeps unacked
# upstream. (The spool's acked mark is rewritten on every ack: after a relay crash only
# the frames in flight to Fluent Bit are forwarded again.)
AGENT_WINDOW = 8
UPSTREAM_WINDOW = 16
#: A lower bound on one packed entry: EventTime (10 bytes) + {"log": str, "stream": str}
#: framing (~30 bytes) + the shortest oracle line (source, seq, crc and 25+ characters).
MIN_ENTRY_BYTES = 64
#: The agent seals a batch once it reaches --batch-size, after adding a whole read of the
#: app's pipe: a batch may be larger by one read, at most a pipe's capacity (64 KiB).
PIPE_READ = 64 * 1024

#: How long a whole scenario may take to deliver (generous: 2 cores, shared).
SLOW = 60.0

NO_ASYNCIO_DEBUG = {"PYTHONASYNCIODEBUG": ""}


def max_batch_bytes(batch_size: int) -> int:
    return batch_size + PIPE_READ


def max_records_per_batch(batch_size: int) -> int:
    return max_batch_bytes(batch_size) // MIN_ENTRY_BYTES + 1


# -- processes ------------------------------------------------------------------------------


class RelayProc:
    """``python -m parent_side serve`` as a subprocess, restartable on the same spool.

    Its stderr (the log) is appended to ``relay.log`` across restarts.
    """

    def __init__(self, workdir: Path, listen: str, output: str, *options: str,
                 spool: Path | None = None) -> None:
        self.workdir = workdir
        self.spool = spool or workdir / "spool"
        self.log_path = workdir / "relay.log"
        self.listen = listen
        self.argv = [PYTHON, "-m", "parent_side", "serve", "--listen", listen,
                     "--output", output, "--spool", str(self.spool), "--log-level", "info",
                     "--hostname", "fault-relay", "--admin-socket", str(workdir / "admin.sock"),
                     *options]
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
                env=env_for_subprocess(**NO_ASYNCIO_DEBUG))
        finally:
            os.close(log)
        self.starts += 1
        proc = self.proc
        await wait_until(lambda: self.log().count("listening on") >= self.starts
                         or proc.returncode is not None, "the relay to listen")
        assert proc.returncode is None, f"the relay exited:\n{self.log()}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no hint."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        await terminate(self.proc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def spool_bytes(self) -> int:
        """Bytes in the spool's segments on disk."""
        total = 0
        for path in self.spool.glob("*.seg"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total


@dataclass
class Procs:
    """Everything a test starts; the fixture stops it all."""

    tmp: Path
    relays: list[RelayProc] = field(default_factory=list)
    agents: list[AgentRun] = field(default_factory=list)

    def relay(self, listen: str, output: str, *options: str,
              spool: Path | None = None) -> RelayProc:
        relay = RelayProc(self.tmp, listen, output, *options, spool=spool)
        self.relays.append(relay)
        return relay

    async def agent(self, relay: str, command: Sequence[str], *options: str) -> AgentRun:
        run = await start_agent(relay, command, "--drain-timeout", "60s", *options,
                                **NO_ASYNCIO_DEBUG)
        self.agents.append(run)
        return run


@pytest_asyncio.fixture
async def procs(sockdir: Path) -> AsyncIterator[Procs]:
    p = Procs(sockdir)
    try:
        yield p
    finally:
        for run in p.agents:
            await cleanup(run)
        for relay in p.relays:
            await relay.stop()


@pytest_asyncio.fixture
async def fluentbit(sockdir: Path) -> AsyncIterator[FakeFluentBit]:
    fb = FakeFluentBit(f"unix://{sockdir}/fb.sock")
    await fb.start()
    try:
        yield fb
    finally:
        await fb.stop()


@dataclass
class Writer:
    """The oracle's writer as the agent's app, with its progress and report files."""

    source: str
    count: int
    dir: Path
    options: tuple[str, ...] = ()

    @property
    def progress_path(self) -> Path:
        return self.dir / f"{self.source}.progress"

    @property
    def report_path(self) -> Path:
        return self.dir / f"{self.source}.report.json"

    @property
    def command(self) -> list[str]:
        return [PYTHON, "-m", "tests.oracle", "write", "--count", str(self.count),
                "--source", self.source, "--progress", str(self.progress_path),
                "--report", str(self.report_path), *self.options]

    def progress(self) -> tuple[int, float]:
        """(lines written so far, monotonic time of the last write)."""
        try:
            seq, when = self.progress_path.read_text().split()
        except (FileNotFoundError, ValueError):
            return 0, 0.0
        return int(seq), float(when)

    def report(self) -> dict[str, float]:
        return json.loads(self.report_path.read_text())  # type: ignore[no-any-return]


def app_records(fb: FakeFluentBit, tag: str = APP) -> list[Record]:
    return [r for r in fb.records if r.tag == tag]


def app_logs(fb: FakeFluentBit, tag: str = APP) -> list[str]:
    return [str(r.record.get("log")) for r in fb.records if r.tag == tag]


def distinct_delivered(fb: FakeFluentBit, source: str) -> int:
    seen = set()
    for r in fb.records:
        if r.tag == APP:
            parsed = parse_line(str(r.record.get("log")))
            if parsed is not None and parsed[0] == source:
                seen.add(parsed[1])
    return len(seen)


async def all_delivered(fb: FakeFluentBit, writer: Writer, timeout: float = SLOW) -> Report:
    """Wait until every line of ``writer`` reached Fluent Bit; the oracle's report."""
    try:
        await fb.wait_for(lambda: distinct_delivered(fb, writer.source) >= writer.count,
                          timeout=timeout, what=f"all {writer.count} lines of {writer.source}")
    except TimeoutError:
        report = check(app_logs(fb), {writer.source: writer.count})
        raise AssertionError(f"not everything arrived within {timeout}s: {report}") from None
    return check(app_logs(fb), {writer.source: writer.count})


def resent_chunks(fb: FakeFluentBit) -> int:
    """Frames Fluent Bit received more than once (the relay resent them)."""
    return len(fb.chunks_received) - len(set(fb.chunks_received))


def assert_duplicates_come_from_resent_chunks(fb: FakeFluentBit) -> None:
    """Every second copy of a line came in a frame the relay sent more than once."""
    times = collections.Counter(fb.chunks_received)
    copies = collections.Counter(str(r.record.get("log")) for r in app_records(fb))
    for r in app_records(fb):
        if copies[str(r.record.get("log"))] > 1:
            assert r.chunk is not None and times[r.chunk] > 1, (
                f"a duplicate arrived in chunk {r.chunk} that was sent once")


def agent_resent(run: AgentRun) -> int:
    """Batches the agent put back for resending, from its log."""
    return sum(int(n) for n in re.findall(rb"relay: (\d+) unacked batches will be resent",
                                          run.stderr))


def show(name: str, report: Report, **extra: object) -> None:
    details = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"\n[oracle] {name}: {report}" + (f" {details}" if details else ""))


# -- the relay killed -----------------------------------------------------------------------


@pytest.mark.slow
async def test_relay_sigkilled_mid_stream_and_restarted_loses_nothing(
        procs: Procs, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """Kill -9 twice under load: the spool and the agent's resends deliver everything.

    Kill 1 comes while Fluent Bit is paused, so the relay holds batches it already
    acked to the agent: only its spool can deliver them after the restart. Kill 2 comes
    after the relay hung (SIGSTOP) with the agent's window full of batches still in
    the socket: only the agent's resend can deliver those.
    """
    rate, batch = 3000, 16 * 1024
    writer = Writer("kill", 12_000, sockdir, ("--rate", str(rate)))
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url)
    await relay.start()
    run = await procs.agent(relay.listen, writer.command, "--batch-size", "16KiB")
    kills = 0

    async def after(lines: int) -> None:
        await wait_until(lambda: writer.progress()[0] >= lines, f"{lines} lines written",
                         timeout=SLOW)

    # Kill 1: Fluent Bit paused, batches pile up in the spool (acked to the agent).
    await after(writer.count // 5)
    fluentbit.pause()
    spooled = relay.spool_bytes()
    await wait_until(lambda: relay.spool_bytes() > spooled + 4 * batch,
                     "batches to pile up in the spool")
    await relay.kill()
    kills += 1
    fluentbit.resume()
    await asyncio.sleep(0.5)  # hold the fault: no relay
    await relay.start()
    await wait_until(lambda: "recovered" in relay.log(), "the relay to recover its spool")
    recovered = [int(n) for n in re.findall(r"recovered (\d+) batches", relay.log())]
    assert recovered and recovered[-1] >= 4, relay.log()

    # Kill 2: the relay hangs while the agent streams to it; the agent fills its window
    # with batches the relay never reads; then the relay is killed.
    await wait_until(lambda: relay.log().count(" connected (") >= 2,
                     "the agent to reconnect", timeout=SLOW)
    await after(writer.progress()[0] + 300)
    relay.signal(signal.SIGSTOP)
    # Hold the fault until the app wrote two windows of batches (lines of ~170 bytes).
    await after(writer.progress()[0] + 2 * AGENT_WINDOW * batch // 170)
    await relay.kill()
    kills += 1
    await asyncio.sleep(0.5)  # hold the fault: no relay
    await relay.start()

    assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
    report = await all_delivered(fluentbit, writer)
    per_reconnect = [int(n) for n in re.findall(
        rb"relay: (\d+) unacked batches will be resent", run.stderr)] or [0]
    show("relay SIGKILL x2", report, agent_resent_batches=per_reconnect,
         spool_recovered=recovered)
    assert report.lost == 0 and report.corrupted == 0, report
    # The hung relay's kill left a full window of batches it never read: the agent
    # resent them (it logs each time it puts unacked batches back).
    assert max(per_reconnect) == AGENT_WINDOW, per_reconnect
    # Bound: after each kill the restarted relay forwards again only what was in flight
    # on either hop (both windows, in batches of at most max_records_per_batch); not a
    # second of history, since the acked mark is current on every ack. Resent batches
    # the spool already holds are taken once.
    bound = kills * (UPSTREAM_WINDOW + AGENT_WINDOW) * max_records_per_batch(batch)
    assert report.duplicated <= bound, (report, bound)


# -- Fluent Bit down ------------------------------------------------------------------------


@pytest.mark.slow
async def test_fluent_bit_down_fills_the_spool_cap_then_backpressure_stalls_the_app(
        procs: Procs, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """Fluent Bit down long enough to fill a 1 MiB spool: the app's writes stall.

    The relay's spool fills to its cap (--spool-full block), then it stops taking
    batches, the agent's window and buffer fill, the agent stops reading the app's
    pipe (--overflow block) and the app's writes block. When Fluent Bit is back the
    backlog drains, the app goes on, and nothing is lost.
    """
    spool_cap, segment = 1 << 20, 256 << 10  # segments are a quarter of the cap
    batch = 16 * 1024
    writer = Writer("down", 12_000, sockdir, ("--rate", "4000", "--size", "800"))
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url,
                        "--spool-size", "1MiB", "--spool-full", "block",
                        "--upstream-buffer", "256KiB")
    await relay.start()
    run = await procs.agent(relay.listen, writer.command, "--batch-size", "16KiB",
                            "--buffer-size", "256KiB")
    await fluentbit.wait_for(lambda: len(app_records(fluentbit)) >= 1000, timeout=SLOW,
                             what="the stream to flow")
    await fluentbit.stop()  # Fluent Bit is down

    def writer_stalled(for_seconds: float) -> bool:
        written, last = writer.progress()
        return written < writer.count and time.monotonic() - last >= for_seconds

    await wait_until(lambda: writer_stalled(1.0), "the app's writes to stall", timeout=SLOW)
    stalled_at = writer.progress()[0]
    # The relay's backlog is at its cap: the next batch would not fit.
    on_disk = relay.spool_bytes()
    assert spool_cap - max_batch_bytes(batch) <= on_disk <= spool_cap, on_disk
    await asyncio.sleep(1.0)  # hold the fault
    assert writer.progress()[0] == stalled_at, "the app was not stalled"
    assert relay.spool_bytes() <= spool_cap
    assert not writer.report_path.exists()

    await fluentbit.start()  # back
    assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
    report = await all_delivered(fluentbit, writer)
    blocked = writer.report()["max_write_s"]
    show("Fluent Bit down, spool cap 1 MiB", report, app_blocked_s=round(blocked, 2),
         stalled_at_line=stalled_at, spool_at_cap=on_disk, resent_frames=resent_chunks(fluentbit))
    assert report.lost == 0 and report.corrupted == 0, report
    # One write of the app blocked through the 1 s we watched it stall and the 1 s we
    # held the fault (less the writer's 10 ms tick), until Fluent Bit was back.
    assert blocked >= 1.9, blocked
    # Bound: Fluent Bit going down loses the acks of at most one window of frames
    # (one connection), each frame one agent batch.
    assert resent_chunks(fluentbit) <= len(fluentbit.close_reasons) * UPSTREAM_WINDOW
    assert report.duplicated <= UPSTREAM_WINDOW * max_records_per_batch(batch), report
    assert_duplicates_come_from_resent_chunks(fluentbit)
    # The backlog drained: acked segments are deleted, at most the active one is left.
    await wait_until(lambda: relay.spool_bytes() <= segment, "the spool to drain")


def bytes_read(pid: int) -> int:
    """Everything the process has read so far (/proc/PID/io rchar): files, pipes, sockets."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


@pytest.mark.slow
async def test_fluent_bit_down_pauses_the_file_source_and_the_file_is_the_buffer(
        procs: Procs, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """Fluent Bit down until the spool is at its cap: the agent's tail stops reading.

    The app writes to a file the agent tails (the agent runs no command). With the
    relay's spool full and the agent's buffer full, the tail pauses: the agent reads
    (almost) nothing more, by its own read counter, while the file grows by hundreds of
    KB. The file is the buffer: when Fluent Bit is back every line arrives.
    """
    log_file = sockdir / "app.log"
    writer = Writer("tail", 12_000, sockdir, ("--rate", "3000", "--size", "800"))
    out = log_file.open("wb")
    app = await asyncio.create_subprocess_exec(*writer.command, stdout=out,
                                               env=env_for_subprocess())
    out.close()
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url,
                        "--spool-size", "1MiB", "--spool-full", "block",
                        "--upstream-buffer", "256KiB")
    await relay.start()
    run = await procs.agent(relay.listen, [], "--file", str(log_file), "--batch-size",
                            "16KiB", "--buffer-size", "256KiB", "--poll-interval", "50ms")
    tag = "enclave.local.app.file"
    try:
        await fluentbit.wait_for(lambda: len(app_records(fluentbit, tag)) >= 1000,
                                 timeout=SLOW, what="the file's lines to flow")
        await fluentbit.stop()  # Fluent Bit is down

        def paused(for_seconds: float, since: list[tuple[int, float]]) -> bool:
            read = bytes_read(run.proc.pid)
            now = time.monotonic()
            if not since or read - since[0][0] > 16 << 10:  # it read a batch's worth
                since[:] = [(read, now)]
            return now - since[0][1] >= for_seconds

        marks: list[tuple[int, float]] = []
        await wait_until(lambda: paused(1.0, marks), "the tail to pause", timeout=SLOW)
        read, size = bytes_read(run.proc.pid), log_file.stat().st_size
        await wait_until(lambda: log_file.stat().st_size > size + 300_000,
                         "the app to go on writing", timeout=SLOW)
        read_while_growing = bytes_read(run.proc.pid) - read
        assert read_while_growing < 16 << 10, f"the tail read on: {read_while_growing} bytes"
        assert relay.spool_bytes() <= 1 << 20
        await fluentbit.start()  # back
        assert await app.wait() == 0
        report = await all_delivered_tagged(fluentbit, writer, tag)
        show("Fluent Bit down, file source", report, read_while_paused=read_while_growing,
             file_bytes=log_file.stat().st_size)
        assert report.lost == 0 and report.corrupted == 0, report
        assert report.duplicated <= UPSTREAM_WINDOW * max_records_per_batch(16 * 1024), report
    finally:
        if app.returncode is None:
            app.kill()
            await app.wait()
        run.signal(signal.SIGTERM)
        await run.wait(timeout=SLOW)


async def all_delivered_tagged(fb: FakeFluentBit, writer: Writer, tag: str) -> Report:
    def logs() -> list[str]:
        return [str(r.record.get("log")) for r in fb.records if r.tag == tag]

    await fb.wait_for(lambda: check(logs(), {writer.source: writer.count}).lost == 0,
                      timeout=SLOW, what=f"all {writer.count} lines of {writer.source}")
    return check(logs(), {writer.source: writer.count})


# -- Fluent Bit closing connections, acking slowly -------------------------------------------


async def test_a_frame_unacked_across_lost_connections_is_still_delivered(
        start_relay: StartRelay, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """A frame that was unacked when two connections were lost is sent again (alone).

    The relay suspects such a frame of being one Fluent Bit cannot take and sends it
    alone on a connection that has stayed up a moment; it must still be sent.
    """
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fluentbit.url)
    agent = await RawAgent.connect(sockdir / "relay.sock")
    await fluentbit.wait_for(lambda: any(r.record.get("event") == "enclave_connected"
                                         for r in fluentbit.records), timeout=DEADLINE,
                             what="the relay's own records")
    await delivered(relay)  # ... and acked, so the suspect is the only frame out
    fluentbit.send_acks = False
    await agent.send_batch(["suspect"])  # acked by the relay once spooled

    def suspect_sends() -> int:
        chunks = {r.chunk for r in fluentbit.records if r.record.get("log") == "suspect"}
        return sum(fluentbit.chunks_received.count(c) for c in chunks)

    for losses in range(1, 4):
        await fluentbit.wait_for(lambda n=losses: suspect_sends() >= n,  # type: ignore[misc]
                                 timeout=DEADLINE, what=f"send {losses}")
        if losses == 3:
            fluentbit.send_acks = True  # acks the next copy
        fluentbit.pause()  # every connection closes with the frame unacked
        fluentbit.resume()
    await delivered(relay)
    assert suspect_sends() >= 4
    assert {r.record["log"] for r in fluentbit.records if r.tag.startswith("enclave.")} == {
        "suspect"}
    await agent.close()


@dataclass
class Sample:
    t: float
    rss: int
    spool: int
    acks: int
    records: int


class Sampler:
    """Sample the relay's RSS and spool, and Fluent Bit's progress, every ``interval``."""

    def __init__(self, relay: RelayProc, fb: FakeFluentBit, interval: float = 50 * MS) -> None:
        self.relay, self.fb, self.interval = relay, fb, interval
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[Sample]:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.samples

    async def _run(self) -> None:
        while True:
            self.samples.append(Sample(time.monotonic(), self.relay.rss(),
                                       self.relay.spool_bytes(), len(self.fb.acks_sent),
                                       len(self.fb.records)))
            await asyncio.sleep(self.interval)


def thirds(samples: list[Sample]) -> tuple[list[Sample], list[Sample], list[Sample]]:
    n = len(samples) // 3
    return samples[:n], samples[n:2 * n], samples[2 * n:]


MiB = 1 << 20


@pytest.mark.slow
async def test_fluent_bit_closing_every_connection_repeatedly_loses_nothing_memory_flat(
        procs: Procs, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """Fluent Bit pauses (closes every connection) for 100 ms every 600 ms, at ~4 MB/s.

    Throughput keeps up with the offered rate, the relay's memory stays flat, and
    resends are bounded by (connections lost) x (upstream window): no resend storm.
    """
    rate, size, batch = 2000, 2000, 64 * 1024  # lines of ~2 KB: ~4 MB/s
    writer = Writer("pause", 12_000, sockdir, ("--rate", str(rate), "--size", str(size)))
    # Fluent Bit takes 50 ms to ack, so a pause finds frames unacked, as under load.
    fluentbit.ack_delay = 50 * MS
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url,
                        "--upstream-buffer", "1MiB")
    await relay.start()
    sampler = Sampler(relay, fluentbit)
    sampler.start()
    run = await procs.agent(relay.listen, writer.command, "--batch-size", "64KiB")
    pauses = 0
    started = time.monotonic()
    while writer.progress()[0] < writer.count:
        await asyncio.sleep(500 * MS)  # hold each state: Fluent Bit up, then paused
        fluentbit.pause()
        pauses += 1
        await asyncio.sleep(100 * MS)
        fluentbit.resume()
    written_in = time.monotonic() - started
    keeping_up = distinct_delivered(fluentbit, writer.source) / writer.count
    assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
    report = await all_delivered(fluentbit, writer)
    samples = await sampler.stop()
    losses = len(fluentbit.close_reasons)
    first, _, last = thirds(samples)
    rss_first, rss_last = max(s.rss for s in first), max(s.rss for s in last)
    show("Fluent Bit pausing every 600 ms", report, pauses=pauses, connections_lost=losses,
         resent_frames=resent_chunks(fluentbit), frames=len(fluentbit.chunks_received),
         delivered_while_writing=f"{keeping_up:.0%}",
         rss_mib=f"{samples[0].rss / MiB:.1f}/{rss_first / MiB:.1f}/{rss_last / MiB:.1f}"
                 " (start/first third/last third)")
    assert report.lost == 0 and report.corrupted == 0, report
    assert pauses >= 8 and losses >= pauses
    # No resend storm: each lost connection resends at most the frames that were unacked
    # on it, one upstream window; duplicates are exactly the records of resent frames.
    assert resent_chunks(fluentbit) <= losses * UPSTREAM_WINDOW
    assert report.duplicated <= losses * UPSTREAM_WINDOW * max_records_per_batch(batch)
    assert_duplicates_come_from_resent_chunks(fluentbit)
    # Throughput settles at the offered rate (Fluent Bit is up 5/6 of the time): the app
    # was not held back, and by the time it was done most of its lines had arrived.
    assert written_in <= writer.count / rate * 1.5 + 2, written_in
    assert keeping_up >= 0.6, f"only {keeping_up:.0%} delivered while the app wrote"
    # Memory flat: bounded by the configured buffers (the spool's 16 MiB read cache, the
    # 1 MiB upstream buffer, a 2 MiB read buffer per agent) and not growing with the
    # ~25 MB that went through.
    assert max(s.rss for s in samples) <= samples[0].rss + (16 + 1 + 2) * MiB + 16 * MiB
    assert rss_last <= rss_first + 8 * MiB, (rss_first, rss_last)


def agent_in_flight() -> int:
    """Bytes an agent with default options has sent and not yet had acked, at most."""
    defaults = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
    return int(defaults["window"]) * int(defaults["batch_bytes"])


@pytest.mark.slow
async def test_fluent_bit_acking_ten_times_slower_than_offered_no_resend_storm_memory_flat(
        procs: Procs, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """Fluent Bit acks each frame 1 s after it arrives: 1 frame/s through a window of 1.

    The agent offers ~10 batches/s (sealed every 50-100 ms), ten times that. The
    backlog goes to the spool's disk; throughput settles at Fluent Bit's rate; the
    relay's memory stays within its configured buffers and flat once they are full;
    the ack timeout (10 s) exceeds the ack latency, so nothing is resent. Then Fluent
    Bit speeds up and the backlog drains.
    """
    window, ack_delay = 1, 1.0
    rate, size = 2200, 3000  # lines of ~3 KB: ~6.6 MB/s
    writer = Writer("slow", 13_200, sockdir, ("--rate", str(rate), "--size", str(size)))
    fluentbit.ack_delay = ack_delay
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url,
                        "--upstream-window", str(window), "--ack-timeout", "10s",
                        "--upstream-buffer", "1MiB")
    await relay.start()
    sampler = Sampler(relay, fluentbit)
    sampler.start()
    run = await procs.agent(relay.listen, writer.command)
    await wait_until(lambda: writer.progress()[0] >= writer.count, "the app to write it all",
                     timeout=SLOW)
    slow = list(sampler.samples)
    fluentbit.ack_delay = 0.0  # Fluent Bit catches up: the backlog drains
    assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
    report = await all_delivered(fluentbit, writer)
    await sampler.stop()

    # Throughput while slow, from Fluent Bit's first ack on: acks came at window / ack_delay.
    first = next(s for s in slow if s.acks)
    span = slow[-1].t - first.t
    acks, expected_acks = slow[-1].acks - first.acks, span * window / ack_delay
    acks_per_s = acks / span
    records_per_s = (slow[-1].records - first.records) / span
    # Memory: the spool's read cache (16 MiB) and the upstream buffer (1 MiB) fill with
    # the backlog, then stay full; the rest of the backlog is only on disk.
    _, _, last = thirds(slow)
    backlog_mib = (writer.progress()[0] - slow[-1].records) * (size + 30) / MiB
    show("Fluent Bit acking 10x slower", report, acks_per_s=round(acks_per_s, 2),
         delivered_per_s=round(records_per_s), offered_per_s=rate,
         resent_frames=resent_chunks(fluentbit), backlog_mib=round(backlog_mib),
         rss_mib=f"{slow[0].rss / MiB:.1f}/{max(s.rss for s in slow) / MiB:.1f}"
                 f" (start/max), last third {min(s.rss for s in last) / MiB:.1f}"
                 f"..{max(s.rss for s in last) / MiB:.1f}")
    assert report.lost == 0 and report.corrupted == 0, report
    # No resend storm: no connection was lost (bound: 0 losses x window = 0 resends).
    assert resent_chunks(fluentbit) == 0 and report.duplicated == 0
    assert "no ack from Fluent Bit" not in relay.log()
    assert abs(acks - expected_acks) <= 1 + 0.25 * expected_acks, (acks, expected_acks)
    assert records_per_s <= rate / 6, "Fluent Bit was not ten times slower"
    assert backlog_mib >= 16 + 1 + 4, "the backlog never outgrew the relay's buffers"
    assert max(s.rss for s in slow) <= slow[0].rss + (16 + 1 + 2) * MiB + 16 * MiB
    # Flat: what the last third swings by is the batches in flight from the agent (at
    # most its window of batches, each held as read and as spooled), not a growth with
    # the ~13 MB the relay took in meanwhile. 6 MiB was one batch too tight (6.2 once).
    assert max(s.rss for s in last) - min(s.rss for s in last) <= 2 * agent_in_flight()


# -- a poison frame -------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_frame_fluent_bit_keeps_closing_on_is_dead_lettered_and_the_rest_arrives(
        procs: Procs, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """Fluent Bit closes the connection whenever it reads one batch (the marker's).

    The relay isolates that batch, gives up on it after five lost connections, sets
    it aside in <spool>/dead-letter.jsonl and says so in its log; every record around
    it arrives.
    """
    marker = "POISON marker: Fluent Bit closes the connection on this batch"
    fluentbit.close_on_chunk = lambda b: any(
        str(r.record.get("log", "")).startswith("POISON") for r in b.records)
    rate, batch = 2000, 16 * 1024
    # The marker goes to stderr: a batch of its own (the agent batches by tag).
    writer = Writer("poison", 6000, sockdir, ("--rate", str(rate), "--marker-at", "2000",
                                              "--marker", marker))
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fluentbit.url)
    await relay.start()
    run = await procs.agent(relay.listen, writer.command, "--batch-size", "16KiB")
    assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
    report = await all_delivered(fluentbit, writer)
    dead_letter = relay.spool / "dead-letter.jsonl"
    await wait_until(dead_letter.exists, "the dead-letter file", timeout=SLOW)
    (entry,) = [json.loads(line) for line in dead_letter.read_text().splitlines()]
    set_aside = [rec["log"] for _, rec in iter_entries(base64.b64decode(
        entry["entries_msgpack_b64"]))]
    losses = len([r for r in fluentbit.close_reasons if r == "close_on_chunk"])
    show("poison frame", report, dead_lettered=set_aside, connections_closed_on_it=losses,
         resent_frames=resent_chunks(fluentbit))
    assert report.lost == 0 and report.corrupted == 0, report
    assert set_aside == [marker] and entry["tag"] == APP_ERR and entry["count"] == 1
    assert "dead-lettered a batch of 1 records on enclave.local.app.stderr" in relay.log()
    assert marker not in {str(r.record.get("log")) for r in fluentbit.records}
    after = [seq for (source, seq) in report.copies if seq > 2000]
    assert len(after) == writer.count - 2001, "every record behind it arrived"
    # The relay gives up after poison_after (5) lost connections with it the oldest frame.
    assert losses == 5
    # Bound: each close resends at most the upstream window of frames.
    assert resent_chunks(fluentbit) <= len(fluentbit.close_reasons) * UPSTREAM_WINDOW
    assert report.duplicated <= losses * UPSTREAM_WINDOW * max_records_per_batch(batch)
    assert_duplicates_come_from_resent_chunks(fluentbit)


# -- the network between agent and relay --------------------------------------------------------


@pytest.mark.slow
async def test_network_between_agent_and_relay_cut_and_restored_repeatedly_under_load(
        start_relay: StartRelay, fluentbit: FakeFluentBit, sockdir: Path, procs: Procs) -> None:
    """Agent -(TCP)- proxy -(Unix)- relay: cuts, resets, acks lost, outages, stalls.

    Each round: a clean cut (FIN); a reset (RST); acks held back while batches still
    arrive, then a cut (the relay has batches the agent must resend); the network
    down for 300 ms (connections refused); a 300 ms stall. The agent reconnects and
    resends what was not acked; the relay takes a resent batch once (its spool knows
    the agent's boot id and sequence numbers), so nothing is lost and nothing is
    duplicated.
    """
    rate, batch = 3000, 16 * 1024
    writer = Writer("net", 15_000, sockdir, ("--rate", str(rate)))
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fluentbit.url)
    assert relay.spool is not None
    async with FaultProxy("tcp://127.0.0.1:0", f"unix://{sockdir}/relay.sock") as proxy:
        run = await procs.agent(proxy.url, writer.command, "--batch-size", "16KiB")
        rounds = 0

        async def connected() -> None:
            await wait_until(lambda: proxy.open_connections >= 1, "the agent to reconnect")

        # Each sleep holds a state (traffic flowing, or a fault) for a while.
        while writer.progress()[0] < writer.count:
            await connected()
            await asyncio.sleep(150 * MS)
            proxy.cut()
            await connected()
            await asyncio.sleep(150 * MS)
            proxy.reset()
            await connected()
            proxy.stall(True, direction="down")  # acks held, batches still arrive
            await asyncio.sleep(200 * MS)
            proxy.cut()
            proxy.stall(False, direction="down")
            proxy.refuse = True  # the network is down
            await asyncio.sleep(300 * MS)
            proxy.refuse = False
            await connected()
            proxy.stall(True)
            await asyncio.sleep(300 * MS)
            proxy.stall(False)
            rounds += 1
        assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
    await delivered(relay)
    report = await all_delivered(fluentbit, writer)
    resent, taken_once = agent_resent(run), relay.spool.stats.duplicate_batches
    show("network cut/reset/stall/refused", report, rounds=rounds, connections=proxy.connections,
         refused=proxy.refused, agent_resent_batches=resent, relay_took_once=taken_once)
    assert report.lost == 0 and report.corrupted == 0, report
    assert rounds >= 2 and proxy.refused >= rounds
    assert resent >= rounds and taken_once >= rounds, "the faults never hit batches in flight"
    # Bound: each lost connection resends at most the agent's window of batches, and
    # the spool takes a batch it already holds once: no duplicates at all.
    lost_connections = proxy.connections - 1
    assert report.duplicated <= lost_connections * AGENT_WINDOW * max_records_per_batch(batch)
    assert report.duplicated == 0, report


# -- a thousand agent boots ---------------------------------------------------------------------


async def boot_once(path: Path, n: int) -> None:
    """One short agent run as our agent does it: HELO, PING with a version, one batch."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    decoder = FrameDecoder(Role.CLIENT)

    async def next_frame() -> object:
        while True:
            data = await reader.read(65536)
            assert data, "the relay closed the connection"
            frames = decoder.feed(data)
            if frames:
                return frames[0]

    try:
        async with asyncio.timeout(DEADLINE):
            helo = await next_frame()
            assert isinstance(helo, Helo)
            handshake = ClientHandshake(hostname=f"boot-{n}", version=__version__)
            writer.write(handshake.ping(helo))
            pong = await next_frame()
            assert isinstance(pong, Pong)
            handshake.check(pong)
            chunk = chunk_id(os.urandom(8), 1)  # a fresh boot id, its first batch
            entries = pack_entry(EventTime.from_ns(time.time_ns()), {"log": f"boot {n}"})
            writer.write(encode_packed_forward("app.stdout", entries, {"chunk": chunk}))
            assert await next_frame() == Ack(chunk)
    finally:
        writer.close()
        await writer.wait_closed()


def live_relay_objects() -> collections.Counter[str]:
    """Live objects of the relay's types and asyncio's (futures, tasks, handles), by type."""
    gc.collect()
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        module = type(obj).__module__
        if isinstance(module, str) and module.startswith(
                ("parent_side", "fluent_forward", "asyncio", "_asyncio")):
            counts[f"{module}.{type(obj).__qualname__}"] += 1
    return counts


@pytest.mark.slow
async def test_a_thousand_agent_boots_leave_the_relays_memory_bounded(
        start_relay: StartRelay, fluentbit: FakeFluentBit, sockdir: Path) -> None:
    """1000 agent runs connect, each sends one batch under a fresh boot id, and leave.

    The relay remembers recent (boot id, seq) pairs to take resent batches once; it
    keeps at most ``dedup_boots`` runs. Lowered to 200 here so that 1000 boots go well
    past it: the table stays at 200, no connection state is left behind, and the
    number of live objects the relay (and asyncio under it) holds stops growing once
    the table is full: what runs leave behind is bounded, whatever their number.
    """
    boots, wave, dedup_boots = 1000, 25, 200
    # All runs come from one identity here (local), in waves of 25 at once: let them in.
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fluentbit.url,
                              max_connections_per_enclave=wave)
    spool = relay.spool
    assert spool is not None
    spool.runs.limit = dedup_boots
    path = sockdir / "relay.sock"
    before: collections.Counter[str] = collections.Counter()
    for first in range(0, boots, wave):
        if first == 3 * dedup_boots:  # the table has been full for a while
            await delivered(relay)
            await wait_until(lambda: not relay.listener._conns, "the connections to close")
            before = live_relay_objects()
        await asyncio.gather(*(boot_once(path, n) for n in range(first, first + wave)))
    await delivered(relay)
    grew: dict[str, int] = {}

    def nothing_left_behind() -> bool:
        # The last connections' transports and tasks go a loop iteration or two after
        # the relay let go of them: wait for that, not for a leak, which stays.
        after = live_relay_objects()
        grew.clear()
        grew.update({k: after[k] - before[k] for k in after if after[k] > before[k]})
        return sum(grew.values()) <= 10

    await wait_until(nothing_left_behind, "what 400 runs left in the relay to go")
    def boot_records() -> list[str]:
        return [str(r.record["log"]) for r in fluentbit.records if r.tag.startswith("enclave.")]

    await fluentbit.wait_for(lambda: len(boot_records()) >= boots, timeout=DEADLINE,
                             what="every boot's record")
    print(f"\n[oracle] {boots} agent boots: delivered {len(fluentbit.records)} records; "
          f"runs remembered {len(spool.runs)}, batches remembered {len(spool.resent.recent)}; "
          f"live relay and asyncio objects after {3 * dedup_boots} boots "
          f"{sum(before.values())}, more after {boots}: {sum(grew.values())}")
    assert sorted(boot_records()) == sorted(f"boot {n}" for n in range(boots))
    assert len(spool.runs) == dedup_boots
    assert len(spool.resent.recent) <= dedup_boots * 8 + spool.resent.window
    assert len(spool.resent.recent) == dedup_boots  # one batch per run, evicted with the run
    assert relay.listener.stats.open_connections == 0
    assert len(relay.listener.stats.peers) == 1  # per enclave identity, not per run
    # 400 more runs after the table was full left nothing behind (checked above, with
    # an allowance of 10 for timers in flight): without the cap each run leaves a _Boot
    # and the future of its batch, +800.
    assert sum(grew.values()) <= 10, grew
