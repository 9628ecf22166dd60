"""Side by side: our two hops and Fluent Bit's own, into the same real Fluent Bit sink.

Runs only when a ``fluent-bit`` binary is on PATH or named by ``FLUENT_BIT``. Both
pipelines ship the same file to the same kind of sink: a fresh Fluent Bit with a
``forward`` input on 127.0.0.1 and a ``counter`` output, flushing every ``SINK_FLUSH``
seconds, which prints the running total of records at each flush (read from its log
as it grows). Not the HTTP server's ``/api/v1/metrics``: Fluent Bit refreshes those
once a second, which rounded every run to whole seconds.

- ours: ``tail`` in our agent -> TCP -> our relay (default options: spool on, every
  entry validated) -> TCP -> the sink;
- Fluent Bit's: a Fluent Bit ``tail`` -> ``forward`` with ``Require_ack_response`` ->
  TCP -> the sink;
- and, not to compare but to tell the agent's own CPU from the cost of sharing the
  cores: our agent alone straight into a sink (``agent_into_fluent_bit``).

lines/s is over the time from starting the shipper (our agent, Fluent Bit's sender)
to the sink having taken every line: the time it takes to ship the file, start
included. The rate once lines flow, over a window from the first lines at the sink to
the last, is reported too, but only when that window holds at least half the lines:
Fluent Bit's sender flushes what it has read every ``Flush`` seconds, so a file read
within one flush reaches the sink in one burst and such a window is empty (the
ZeroDivisionError an earlier version of this module died of). CPU per line: see
``ship_and_count``. The sender's ``tail`` keeps its default buffers (32k).

The sender's ``Flush`` is ``SENDER_FLUSH`` (Fluent Bit's default is 1 s, which would
add up to a second of waiting to a run of a few seconds: that measures the flush
timer, not the pipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import scenarios as sc
from bench.procs import Proc, cpu_seconds

__all__ = ["AGENT_OWN_RECORDS", "OWN_RECORDS", "SENDER_FLUSH", "FluentBitSink",
           "agent_into_fluent_bit", "find_fluent_bit", "fluent_bit_two_hops",
           "in_page_cache", "ours_into_fluent_bit", "ship_and_count"]

#: The sender's flush interval, in seconds (see the module docstring).
SENDER_FLUSH = 0.1
#: The sink's: the resolution of the end of a run.
SINK_FLUSH = 0.01
#: Records our pipeline sends the (fresh) sink besides the file's lines: the relay's
#: ``relay_start`` and ``connected`` (``relay.lifecycle``), the agent's ``agent_start``.
OWN_RECORDS = 3
#: The agent's own records when it sends straight to the sink: its ``agent_start``.
AGENT_OWN_RECORDS = 1
#: How often the sink's log is read while a run goes on.
POLL_INTERVAL = 0.005

SINK = """\
[SERVICE]
    Flush        {flush}
    Log_Level    warn

[INPUT]
    Name    forward
    Listen  127.0.0.1
    Port    {port}

[OUTPUT]
    Name   counter
    Match  *
"""
#: What the counter output prints at each flush: ``TIME,COUNT (total = N)``.
_TOTAL = re.compile(rb"\(total = (\d+)\)")

SENDER = """\
[SERVICE]
    Flush      {flush}
    Log_Level  warn

[INPUT]
    Name             tail
    Path             {path}
    Read_from_Head   On
    Refresh_Interval 1

[OUTPUT]
    Name                  forward
    Match                 *
    Host                  127.0.0.1
    Port                  {port}
    Require_ack_response  On
"""


def in_page_cache(path: Path) -> None:
    """Read ``path`` through, so that the next shipper finds it in the page cache.

    Fluent Bit's tail drops a file's pages from the cache as it reads them (the file
    is then 0 B resident, `fincore`), so whichever pipeline ran after it read the whole
    file from the disk: that cost our agent about 0.2 µs of CPU a line more, and its
    side-by-side figure swung with the order of the runs. Each run now starts warm,
    as a log its writer has just written is.
    """
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def find_fluent_bit() -> str | None:
    """``$FLUENT_BIT`` if set, else ``fluent-bit`` on PATH, else None."""
    named = os.environ.get("FLUENT_BIT")
    if named:
        return named if os.access(named, os.X_OK) else None
    return shutil.which("fluent-bit")


class FluentBitSink:
    """A real Fluent Bit forward input with a counter output, counting what it takes."""

    def __init__(self, binary: str, tmp: Path, port: int) -> None:
        self.binary, self.tmp, self.port = binary, tmp, port
        self.proc: Proc | None = None
        self.log = tmp / "fb-sink.log"
        self._seen = 0  # bytes of the log read
        self._total = 0

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        conf = self.tmp / "fb-sink.conf"
        conf.write_text(SINK.format(flush=SINK_FLUSH, port=self.port))
        # stdbuf: the counter prints with printf, block-buffered into a file otherwise.
        self.proc = proc = Proc("fluent-bit sink", ["stdbuf", "-oL", self.binary, "-c",
                                                    str(conf)], log=self.log)
        await sc.wait_listening(self.url, proc)

    def records(self) -> int:
        """Records taken so far (as of the last flush), from the log's new lines."""
        with open(self.log, "rb") as f:
            f.seek(self._seen)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._seen += end
        totals = _TOTAL.findall(data, 0, end)
        if totals:
            self._total = int(totals[-1])
        return self._total

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop()


@dataclass
class _Run:
    """What the measuring thread saw: at the first lines at the sink, and the last."""

    seconds: float = 0.0  # from the shipper's start to the last line
    first_seconds: float = 0.0  # from the shipper's start to the first lines
    first: int = 0  # lines at the sink when it was first seen to have some
    cpu_first: tuple[float, ...] = ()
    cpu_last: tuple[float, ...] = ()
    got: int = 0
    failed: str = ""


def _measure(sink: FluentBitSink, n: int, procs: Sequence[Proc], started: float,
             timeout: float, before: int) -> _Run:
    """Poll the sink until it has ``n`` lines (in a thread: it blocks).

    ``before`` is what the (fresh) sink counts besides the lines: the records the
    pipeline adds of its own (``OWN_RECORDS``). The window opens at the first count
    above it, so at the first lines, in whatever order they came; ``_Run.first`` is the
    lines then (up to ``before`` too few if some of those records came later).
    """
    run = _Run()
    deadline = started + timeout
    while True:
        got = sink.records()
        run.got = got = max(got - before, 0)
        now = time.monotonic()
        if got and not run.cpu_first:
            run.first, run.cpu_first = got, tuple(cpu_seconds(p.pid) for p in procs)
            run.first_seconds = now - started
        if got >= n:
            run.seconds, run.cpu_last = now - started, tuple(cpu_seconds(p.pid) for p in procs)
            return run
        dead = [p.name for p in procs if p.exit_cpu is not None]  # seen by its sampler
        if dead or now > deadline:
            run.failed = f"{', '.join(dead) or 'nothing'} exited; timed out: {now > deadline}"
            return run
        time.sleep(POLL_INTERVAL)


async def ship_and_count(sink: FluentBitSink, n: int, start: Callable[[], Proc],
                         others: Sequence[Proc], names: Sequence[str], *,
                         own_records: int = 0, timeout: float = 300.0) -> dict[str, float]:
    """Start the shipper, wait for ``n`` lines at the sink; lines/s and µs/line.

    ``others`` are already running (the relay). The window runs from the first lines at
    the sink to the last; the pipeline's records of its own (``own_records``, see
    ``OWN_RECORDS``) neither open it nor count as lines (counting them opened it as our
    agent started, and charged its start-up to its lines).

    - ``lines_per_s``: the file's lines over the whole run, from the shipper's start.
    - ``lines_per_s_steady``: the lines in the window over its length, the rate once
      lines flow (start-up apart: our agent spends some 0.3 s before its first read).
    - ``{name}_us_per_line``: each process's CPU over the window, per line in it.
    - ``{shipper}_cpu_to_first_s``: the shipper's CPU before the window opened, its
      start-up and first reads (our agent's imports alone are 0.1 to 0.25 s).

    If fewer than half the lines came after the first ones (a small file, sent in one
    flush), CPU is taken from the start instead and there is no steady rate. Reported
    under ``names``: the shipper, ``others``, the sink.
    """
    assert sink.proc is not None
    base = [sink.proc, *others]
    cpu_base = [cpu_seconds(p.pid) for p in base]
    started = time.monotonic()
    shipper = start()
    procs = [shipper, *others, sink.proc]
    run = await asyncio.get_running_loop().run_in_executor(
        None, _measure, sink, n, procs, started, timeout, own_records)
    if run.failed:
        raise RuntimeError(f"the sink took {run.got} of {n} lines ({run.failed}):\n"
                           + "\n".join(p.tail_log() for p in procs))
    lines = n - run.first
    cpu0: Sequence[float] = run.cpu_first
    out = {"lines_per_s": n / run.seconds, "seconds": run.seconds}
    if lines < n / 2:
        lines, cpu0 = n, [0.0, *cpu_base[1:], cpu_base[0]]  # the shipper started at zero
    else:
        out["lines_per_s_steady"] = lines / (run.seconds - run.first_seconds)
        out[f"{names[0]}_cpu_to_first_s"] = run.cpu_first[0]
    out["cpu_window_lines"] = float(lines)
    for name, c0, c1 in zip(names, cpu0, run.cpu_last, strict=True):
        out[f"{name}_us_per_line"] = (c1 - c0) / lines * 1e6
    return out


async def fluent_bit_two_hops(binary: str, tmp: Path, data_file: Path, n: int,
                              sink: FluentBitSink) -> dict[str, float]:
    """One run of Fluent Bit's tail -> forward (acks) into ``sink`` (started)."""
    conf = tmp / "fb-sender.conf"
    conf.write_text(SENDER.format(flush=SENDER_FLUSH, port=sink.port, path=data_file))
    started: list[Proc] = []

    def start() -> Proc:
        started.append(Proc("fluent-bit sender", [binary, "-c", str(conf)],
                            log=tmp / "fb-sender.log"))
        return started[0]

    try:
        return await ship_and_count(sink, n, start, (), ("sender", "sink"))
    finally:
        for p in started:
            with contextlib.suppress(Exception):
                await p.stop()


async def ours_into_fluent_bit(tmp: Path, data_file: Path, n: int, sink: FluentBitSink,
                               relay_extra: Sequence[str] = (), profile: Path | None = None
                               ) -> dict[str, float]:
    """One run of our agent (tail) -> relay (default options) into ``sink`` (started);
    with ``profile``, py-spy samples both into that directory."""
    listen = f"tcp://127.0.0.1:{sc._free_port()}"
    relay = Proc.python("relay", sc.relay_args(listen, sink.url, tmp / "spool", *relay_extra),
                        log=tmp / "relay.log")
    started = [relay]
    if profile is not None:
        relay.profile(profile / f"{tmp.name}-relay.txt")

    def start() -> Proc:
        started.append(Proc.python("agent", sc.agent_args(listen, "--file", str(data_file)),
                                   log=tmp / "agent.log"))
        if profile is not None:
            started[-1].profile(profile / f"{tmp.name}-agent.txt")
        return started[-1]

    try:
        await sc.wait_listening(listen, relay)
        return await ship_and_count(sink, n, start, (relay,), ("agent", "relay", "sink"),
                                    own_records=OWN_RECORDS)
    finally:
        for p in reversed(started):
            with contextlib.suppress(Exception):
                await p.stop()


async def agent_into_fluent_bit(tmp: Path, data_file: Path, n: int, sink: FluentBitSink
                                ) -> dict[str, float]:
    """One run of our agent alone, straight into ``sink`` (started): no relay.

    Not a pipeline to compare: the agent's CPU per line in the same minutes as the
    side-by-side runs, with one process fewer sharing the cores, so that the agent's
    figure there can be told apart from what the relay's presence costs it.
    """
    started: list[Proc] = []

    def start() -> Proc:
        started.append(Proc.python("agent", sc.agent_args(
            sink.url, "--handshake-wait", "0", "--file", str(data_file)),
            log=tmp / "agent.log"))
        return started[0]

    try:
        return await ship_and_count(sink, n, start, (), ("agent", "sink"),
                                    own_records=AGENT_OWN_RECORDS)
    finally:
        for p in started:
            with contextlib.suppress(Exception):
                await p.stop()
