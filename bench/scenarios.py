"""The benchmark scenarios: each runs once and returns its figures as a flat dict.

Every scenario runs the agent and the relay as real subprocesses (``python -m
enclave_side``, ``python -m parent_side``) over Unix sockets or TCP on 127.0.0.1, with
``BenchSink`` (in this process) downstream. Throughput and CPU are taken over a window
that opens when the first frame reaches the sink and closes when the last line does:
``lines/s = (N - first frame's lines) / (t_last - t_first)``, and CPU per line is the
process's CPU over that same window divided by the same lines. End to end also splits
that window where the sink has a fifth of its lines (``head_lines_per_s`` before,
``rest_lines_per_s`` after), so a slow start shows apart from the steady rate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Proc, bench_env, cpu_mask, io_calls, run_queue_wait
from bench.sink import BenchSink
from enclave_side.lines import EntryEncoder
from fluent_forward.aio import ForwardClient
from fluent_forward.codec import encode_packed_forward
from fluent_forward.conventions import chunk_id
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.handshake import ClientHandshake

__all__ = ["LINE_BYTES", "Env", "app_source", "line", "split_cores", "write_lines"]

LINE_BYTES = 150  # with its newline
TAG = "bench"
RUN_TIMEOUT = 180.0

# A clean log line (nothing any redaction prefilter looks for), 150 bytes with "\n".
_PREFIX = ("2026-11-26T22:13:43.{us:06d}Z INFO worker-{w} request handled seq={i:09d} "
           "method=GET path=/api/v1/items status=200 duration_ms=12.5 ")
_PAD = "abcdefghijklmnopqrstuvwxyz" * 4
_PAD_LEN = LINE_BYTES - 1 - len(_PREFIX.format(us=0, w=0, i=0))


def line(i: int) -> str:
    """Line ``i`` without its newline."""
    return _PREFIX.format(us=i % 1_000_000, w=i % 8, i=i) + _PAD[:_PAD_LEN]


def app_source() -> str:
    """The app: prints N lines with print() (block-buffered into a pipe), then writes
    its own elapsed time and CPU to the file named by argv[2]."""
    return f"""\
import json, resource, sys, time
n, out = int(sys.argv[1]), sys.argv[2]
prefix, pad = {_PREFIX!r}, {_PAD[:_PAD_LEN]!r}
start, t0 = time.time(), time.perf_counter()
for i in range(n):
    print(prefix.format(us=i % 1000000, w=i % 8, i=i) + pad)
sys.stdout.flush()
elapsed = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
with open(out, "w") as f:
    json.dump({{"start": start, "elapsed": elapsed, "cpu": ru.ru_utime + ru.ru_stime,
               "syscalls": int(io["syscr"]) + int(io["syscw"]) + 2}}, f)  # + this write, close
"""


def write_lines(path: Path, n: int) -> None:
    with open(path, "w", encoding="ascii") as f:
        step = 10_000
        for base in range(0, n, step):
            f.write("".join(line(i) + "\n" for i in range(base, min(base + step, n))))


@dataclass
class Env:
    """Where a run happens: a temp dir, the transport, and the sink."""

    tmp: Path
    transport: str  # "unix" | "tcp"
    sink: BenchSink
    sink_url: str
    procs: list[Proc] = field(default_factory=list)
    profile: Path | None = None  # py-spy profiles of the agent and the relay go here
    cpus: dict[str, set[int]] = field(default_factory=dict)  # process name -> its CPUs
    _n: int = 0

    def url(self, name: str) -> str:
        """A fresh listening address for ``name``."""
        self._n += 1
        if self.transport == "unix":
            return f"unix://{self.tmp}/{name}{self._n}.sock"
        return f"tcp://127.0.0.1:{_free_port()}"

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc.python(name, args, log=self.tmp / f"{name}{self._n}.log", env=env,
                           cpus=self.cpus.get(name))
        self.procs.append(proc)
        if self.profile is not None and name in ("agent", "relay"):
            proc.profile(self.profile / f"{self.tmp.name}-{name}.txt")
        return proc

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()
        self.procs.clear()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_args(relay: str, *extra: str) -> list[str]:
    return ["-m", "enclave_side", "--relay", relay, "--tag", TAG, "--log-level", "warning",
            *extra]


def relay_args(listen: str, output: str, spool: Path, *extra: str) -> list[str]:
    return ["-m", "parent_side", "serve", "--listen", listen, "--output", output,
            "--spool", str(spool), "--admin-socket", "none", "--nitro-cli", "none",
            "--log-level", "warning", *extra]


async def wait_listening(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """Wait until something accepts connections at ``url``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.exited():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.tail_log()}")
        try:
            if url.startswith("unix://"):
                _, w = await asyncio.open_unix_connection(url[len("unix://"):])
            else:
                host, port = url[len("tcp://"):].rsplit(":", 1)
                _, w = await asyncio.open_connection(host, int(port))
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} is not listening on {url}") from None
            await asyncio.sleep(0.02)


#: End to end: the share of the window's lines that ``head_lines_per_s`` covers.
HEAD_FRACTION = 0.2


class Window:
    """CPU and time from the first frame at the sink to the ``total``-th line of ``tag``."""

    def __init__(self, sink: BenchSink, tag: str, total: int, procs: list[Proc]) -> None:
        self.tag, self.total, self.procs = tag, total, procs
        self.t0 = self.t1 = 0.0
        self.lines0 = 0
        self.cpu0: list[tuple[float, float]] = []
        self.cpu1: list[tuple[float, float]] = []
        self.wait0: list[float] = []
        self.wait1: list[float] = []
        self.self0 = self.self1 = 0.0
        self.io0: list[tuple[int, int]] = []
        self.io1: list[tuple[int, int]] = []
        #: (time, lines of ``tag`` so far) at each of its frames in the window.
        self.arrivals: list[tuple[float, int]] = []
        sink.on_frame = self._frame

    def _frame(self, sink: BenchSink, tag: str, count: int) -> None:
        if tag != self.tag and not tag.endswith("." + self.tag):
            return
        if not self.t0:
            self.t0 = time.monotonic()
            self.lines0 = sink.count(self.tag)
            self.cpu0 = [p.cpu_split() for p in self.procs]
            self.wait0 = [run_queue_wait(p.pid) for p in self.procs]
            self.io0 = [io_calls(p.pid) for p in self.procs]
            self.self0 = time.process_time()
        if not self.t1:
            self.arrivals.append((time.monotonic(), sink.count(self.tag)))
        if not self.t1 and sink.count(self.tag) >= self.total:
            self.t1 = time.monotonic()
            self.cpu1 = [p.cpu_split() for p in self.procs]
            self.wait1 = [run_queue_wait(p.pid) for p in self.procs]
            self.io1 = [io_calls(p.pid) for p in self.procs]
            self.self1 = time.process_time()

    @property
    def lines(self) -> int:
        return self.total - self.lines0

    def rate(self) -> float:
        return self.lines / (self.t1 - self.t0)

    def split_rates(self, fraction: float = HEAD_FRACTION) -> tuple[float, float]:
        """Lines/s before and after the first frame that brings the window's lines to
        ``fraction`` of them: a slow start makes the first the lower."""
        target = self.lines0 + fraction * self.lines
        t, count = next((t, c) for t, c in self.arrivals if c >= target)
        return ((count - self.lines0) / max(t - self.t0, 1e-9),
                (self.total - count) / max(self.t1 - t, 1e-9))

    def us_per_line(self, i: int) -> float:
        """User + system CPU microseconds per line of process ``i``."""
        return (sum(self.cpu1[i]) - sum(self.cpu0[i])) / self.lines * 1e6

    def wait_pct(self, i: int) -> float:
        """The share of the window process ``i`` spent waiting for a CPU (%)."""
        return (self.wait1[i] - self.wait0[i]) / (self.t1 - self.t0) * 100

    def sys_us_per_line(self, i: int) -> float:
        """The system (kernel) part of it."""
        return (self.cpu1[i][1] - self.cpu0[i][1]) / self.lines * 1e6

    def io_per_kline(self, i: int) -> float:
        """Read and write syscalls of process ``i`` per 1,000 lines."""
        calls = sum(self.io1[i]) - sum(self.io0[i])
        return calls / self.lines * 1000

    def sink_us_per_line(self) -> float:
        return (self.self1 - self.self0) / self.lines * 1e6


async def _until(sink: BenchSink, tag: str, total: int, procs: list[Proc]) -> None:
    """Wait for ``total`` lines of ``tag``; fail early if a process dies."""
    waiter = asyncio.ensure_future(sink.wait_for(lambda: sink.count(tag) >= total,
                                                 RUN_TIMEOUT))
    try:
        while not waiter.done():
            for p in procs:
                if p.exited():
                    raise RuntimeError(f"{p.name} exited (status {p.popen.returncode}) "
                                       f"after {sink.count(tag)} of {total} lines:\n"
                                       f"{p.tail_log()}")
            await asyncio.wait([waiter], timeout=0.1)
        waiter.result()
    finally:
        waiter.cancel()


# -- 1. the agent capturing a child's stdout ---------------------------------------------


async def app_into_cat(tmp: Path, n: int) -> dict[str, float]:
    """The baseline: the same app writing into a pipe drained by ``cat > /dev/null``."""
    app = tmp / "app.py"
    app.write_text(app_source())
    out = tmp / "baseline.json"
    proc = await asyncio.create_subprocess_shell(
        f"{sys.executable} {app} {n} {out} | cat > /dev/null", env=bench_env())
    await proc.wait()
    import json

    data = json.loads(out.read_text())
    return {"app_elapsed_s": data["elapsed"], "app_cpu_s": data["cpu"]}


async def agent_child(env: Env, n: int) -> dict[str, float]:
    import json

    app = env.tmp / "app.py"
    app.write_text(app_source())
    out = env.tmp / "app.json"
    tag = f"{TAG}.stdout"
    agent = env.start("agent", agent_args(env.sink_url, "--handshake-wait", "0",
                                           "--overflow", "block", "--",
                                           sys.executable, str(app), str(n), str(out)))
    window = Window(env.sink, tag, n, [agent])
    await _until(env.sink, tag, n, [])
    code = await agent.wait(60.0)
    data = json.loads(out.read_text())
    if code != 0 or env.sink.count(tag) != n:
        raise RuntimeError(f"agent exit {code}, {env.sink.count(tag)} of {n} lines")
    return {"lines_per_s": window.rate(), "agent_us_per_line": window.us_per_line(0),
            "agent_sys_us_per_line": window.sys_us_per_line(0),
            # The agent reaped the app before the window closed, and Linux then adds a
            # child's read/write counts to its parent's: take the app's own out.
            "agent_syscalls_per_kline": window.io_per_kline(0) - data["syscalls"] / n * 1000,
            "agent_peak_rss_mib": agent.peak_rss_kib / 1024,
            "app_elapsed_s": data["elapsed"], "app_cpu_s": data["cpu"],
            "sink_us_per_line": window.sink_us_per_line(), "drops": n - env.sink.count(tag)}


# -- 2. the agent tailing a file ----------------------------------------------------------


async def agent_tail(env: Env, n: int, data_file: Path, redact: bool,
                     sink_rate: float | None = None) -> dict[str, float]:
    """The agent tailing ``data_file`` into the sink, reading at most ``sink_rate``
    bytes a second if given."""
    tag = f"{TAG}.file"
    env.sink.read_rate = sink_rate
    extra = ["--redact", "all"] if redact else []
    agent = env.start("agent", agent_args(env.sink_url, "--handshake-wait", "0",
                                           "--file", str(data_file), *extra))
    window = Window(env.sink, tag, n, [agent])
    await _until(env.sink, tag, n, [agent])
    agent.sample()
    await env.stop_all()
    return {"lines_per_s": window.rate(), "agent_us_per_line": window.us_per_line(0),
            "agent_sys_us_per_line": window.sys_us_per_line(0),
            "agent_syscalls_per_kline": window.io_per_kline(0),
            "agent_peak_rss_mib": agent.peak_rss_kib / 1024,
            "sink_us_per_line": window.sink_us_per_line()}


# -- 3. the relay alone --------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    chunk: str
    frame: bytes
    count: int


class FeedSource:
    """Agent-shaped batches for the relay: prebuilt entries, fresh chunk ids, window 8."""

    def __init__(self, payloads: list[tuple[bytes, int]], total: int) -> None:
        self.payloads = payloads
        self.total = total
        self.boot = os.urandom(8)
        self.sent = 0
        self.acked = 0
        self.seq = 0
        self.unacked: dict[str, _Batch] = {}
        self.requeued: collections.deque[_Batch] = collections.deque()
        self.changed = asyncio.Event()

    async def next_batch(self, window: int) -> _Batch:
        while len(self.unacked) >= window or (not self.requeued and self.sent >= self.total):
            self.changed.clear()
            await self.changed.wait()
        if self.requeued:
            batch = self.requeued.popleft()
        else:
            entries, count = self.payloads[self.seq % len(self.payloads)]
            if self.sent + count > self.total:  # the last batch: just what is left
                count = self.total - self.sent
                entries = _first_entries(entries, count)
            self.seq += 1
            chunk = chunk_id(self.boot, self.seq)
            batch = _Batch(chunk, encode_packed_forward(
                f"{TAG}.stdout", entries, {"chunk": chunk, "size": count}), count)
            self.sent += count
        self.unacked[batch.chunk] = batch
        return batch

    def ack(self, chunk: str | bytes) -> object | None:
        batch = self.unacked.pop(chunk, None)  # type: ignore[call-overload]
        if batch is not None:
            self.acked += batch.count
        self.changed.set()
        return batch

    def requeue_unacked(self) -> int:
        items = list(self.unacked.values())
        self.unacked.clear()
        self.requeued.extendleft(reversed(items))
        self.changed.set()
        return len(items)


def _first_entries(entries: bytes, count: int) -> bytes:
    import msgpack

    up = msgpack.Unpacker()
    up.feed(entries)
    for _ in range(count):
        up.skip()
    return entries[:up.tell()]


def agent_payloads(batch_bytes: int = 512 * 1024, batches: int = 4) -> list[tuple[bytes, int]]:
    """Entries as the agent packs them, ``batch_bytes`` per batch."""
    enc = EntryEncoder({"stream": "stdout"})
    per = batch_bytes // (LINE_BYTES + 30)
    out = []
    for b in range(batches):
        lines = [line(b * per + i).encode() for i in range(per)]
        out.append((enc.encode(lines, time.time_ns()), per))  # type: ignore[arg-type]
    return out


async def relay_alone(env: Env, n: int, payloads: list[tuple[bytes, int]] | None = None
                      ) -> dict[str, float]:
    listen = env.url("relay")
    tag = f"{TAG}.stdout"
    relay = env.start("relay", relay_args(listen, env.sink_url, env.tmp / "spool"))
    await wait_listening(listen, relay)
    source = FeedSource(payloads or agent_payloads(), n)
    client = ForwardClient(parse_endpoint(listen), source, ClientHandshake(hostname="bench"),
                           handshake_wait=2.0, window=8, name="relay")
    window = Window(env.sink, tag, n, [relay])
    task = asyncio.create_task(client.run())
    try:
        await _until(env.sink, tag, n, [relay])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    relay.sample()
    await env.stop_all()
    return {"lines_per_s": window.rate(), "relay_us_per_line": window.us_per_line(0),
            "relay_sys_us_per_line": window.sys_us_per_line(0),
            "relay_syscalls_per_kline": window.io_per_kline(0),
            "relay_peak_rss_mib": relay.peak_rss_kib / 1024,
            "harness_us_per_line": window.sink_us_per_line()}


async def sink_capacity(env: Env, kind: str, n: int) -> dict[str, float]:
    """How fast a sink takes relay-shaped frames: this bench's sink, or the fake Fluent
    Bit of the tests (which decodes every record), each in its own process."""
    url = env.url(kind)
    server = env.start(f"sink-{kind}", ["-m", "bench.sink", kind, url])
    await wait_listening(url, server)
    source = FeedSource(agent_payloads(), n)
    client = ForwardClient(parse_endpoint(url), source, ClientHandshake(hostname="bench"),
                           handshake_wait=0, window=16, name=kind)
    task = asyncio.create_task(client.run())
    t0, cpu0 = time.monotonic(), server.cpu()
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            while source.acked < n:
                source.changed.clear()
                await source.changed.wait()
        t1, cpu1 = time.monotonic(), server.cpu()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await env.stop_all()
    return {"lines_per_s": n / (t1 - t0), "sink_us_per_line": (cpu1 - cpu0) / n * 1e6}


# -- 4. end to end -------------------------------------------------------------------------


async def _pipeline(env: Env, data_file: Path, *relay_extra: str, sign: bool = False
                    ) -> tuple[Proc, Proc]:
    listen = env.url("relay")
    relay = env.start("relay", relay_args(listen, env.sink_url, env.tmp / "spool",
                                          *relay_extra))
    await wait_listening(listen, relay)
    agent_extra = ["--file", str(data_file)]
    if sign:  # attested by a test chain: the bench has no NSM either
        from logverify.testpki import make_test_pki
        make_test_pki(env.tmp / "pki")
        agent_extra += ["--sign", "--nsm", f"test-pki:{env.tmp / 'pki'}"]
    agent = env.start("agent", agent_args(listen, *agent_extra))
    return agent, relay


def split_cores() -> tuple[set[int], set[int]] | None:
    """The split topology's two sides: the agent's CPU and the parent's (relay and sink);
    None on a machine (or under an affinity mask) with fewer than two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 else None


@contextlib.contextmanager
def _pinned(env: Env, split: bool) -> Iterator[None]:
    """With ``split``, the agent on one CPU and the relay and the sink on the other, as
    on Nitro, where the agent runs on the enclave's own vCPUs and the relay and Fluent
    Bit on the parent's. The sink is this process, so it is pinned for the run."""
    if not split:
        yield
        return
    sides = split_cores()
    if sides is None:
        raise RuntimeError("the split topology needs two CPUs; this process may use "
                           f"{sorted(os.sched_getaffinity(0))}")
    # Every thread of this process, not only the one running the event loop.
    mine = {tid: os.sched_getaffinity(tid) for tid in map(int, os.listdir("/proc/self/task"))}
    env.cpus = {"agent": sides[0], "relay": sides[1]}
    for tid in mine:
        os.sched_setaffinity(tid, sides[1])
    try:
        yield
    finally:
        for tid, cpus in mine.items():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)
        env.cpus = {}


def cpu_ceiling(agent_us: float, relay_us: float, sink_us: float, split: bool) -> float:
    """The lines/s the processes' CPU per line allows at most, other work aside: split,
    the slower side (the agent's CPU, or the relay's and the sink's); on two shared
    cores, all three within the cores' worth and none faster than one core. It assumes
    the processes overlap perfectly, so it bounds the rate rather than predicts it; but
    where wall-clock figures on a loaded machine follow the neighbours' load too
    (``*_wait_pct``), this one follows only what the pipeline itself costs."""
    if split:
        return 1e6 / max(agent_us, relay_us + sink_us)
    cores = len(os.sched_getaffinity(0))
    return 1e6 * min(cores / (agent_us + relay_us + sink_us),
                     1 / max(agent_us, relay_us, sink_us))


async def end_to_end(env: Env, n: int, data_file: Path, relay_extra: tuple[str, ...],
                     sign: bool = False, split: bool = False) -> dict[str, float]:
    """A file through the agent and the relay into the sink. ``split``: the agent on a
    CPU of its own, the relay and the sink on the other (``_pinned``); else all three
    share whatever CPUs this process may use."""
    tag = f"{TAG}.file"
    with _pinned(env, split):
        agent, relay = await _pipeline(env, data_file, *relay_extra, sign=sign)
        window = Window(env.sink, tag, n, [agent, relay])
        try:
            await _until(env.sink, tag, n, [agent, relay])
            agent.sample()
            relay.sample()
            # Where every thread was allowed to run at the end (the JSON shows the split
            # held): bit i is CPU i; the sink's is this process's.
            masks = {"agent_cpu_mask": cpu_mask(agent.pid), "relay_cpu_mask": cpu_mask(relay.pid),
                     "sink_cpu_mask": cpu_mask(os.getpid())}
        finally:
            await env.stop_all()
    agent_us, relay_us, sink_us = (window.us_per_line(0), window.us_per_line(1),
                                   window.sink_us_per_line())
    head, rest = window.split_rates()
    return {**masks, "lines_per_s": window.rate(), "agent_us_per_line": window.us_per_line(0),
            "head_lines_per_s": head, "rest_lines_per_s": rest,
            "cpu_ceiling_lines_per_s": cpu_ceiling(agent_us, relay_us, sink_us, split),
            "agent_wait_pct": window.wait_pct(0), "relay_wait_pct": window.wait_pct(1),
            "relay_us_per_line": window.us_per_line(1),
            "agent_sys_us_per_line": window.sys_us_per_line(0),
            "relay_sys_us_per_line": window.sys_us_per_line(1),
            "agent_syscalls_per_kline": window.io_per_kline(0),
            "relay_syscalls_per_kline": window.io_per_kline(1),
            "agent_peak_rss_mib": agent.peak_rss_kib / 1024,
            "relay_peak_rss_mib": relay.peak_rss_kib / 1024,
            "sink_us_per_line": window.sink_us_per_line()}


#: Writes ``rate`` lines a second, every millisecond what is due, in one write(); one line
#: in ``SAMPLE`` (the first of each group of 16) carries its write time as ``ts=``, the
#: others ``tq=`` (same length): the sink's regex then makes one object per 16 lines, and
#: 16 lines written together leave together, so the sample is the distribution. Given
#: several paths (comma-separated), it writes the same to each: one process for several
#: tailed files, so that the writers do not take a core of their own.
WRITER = """\
import os, sys, time
paths, rate, seconds = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
SAMPLE = 16
pad = "abcdefghijklmnopqrstuvwxyz" * 6
def line(mark, ns):
    head = "2026-11-26T22:13:43.000000Z INFO latency probe %s=%019d " % (mark, ns)
    return (head + pad[:149 - len(head)] + "\\n").encode()
fds = [os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for path in paths]
start = time.monotonic()
written = 0
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    due = (int((now - start) * rate) - written) // SAMPLE * SAMPLE
    if due > 0:
        ns = time.time_ns()
        data = (line("ts", ns) + line("tq", ns) * (SAMPLE - 1)) * (due // SAMPLE)
        for fd in fds:
            os.write(fd, data)
        written += due
    time.sleep(0.001)
for fd in fds:
    os.close(fd)
print(written * len(fds))
"""


async def latency(env: Env, rate: float, seconds: float, relay_extra: tuple[str, ...],
                  warmup: float = 2.0) -> dict[str, float]:
    """Lines written at ``rate`` into a tailed file; the delay of one line in 16 (see
    ``WRITER``) from its write to the sink. Lines of the first ``warmup`` seconds are
    left out of p50/p99: an idle agent looks at the file every --poll-interval (250 ms),
    so a burst's first lines wait up to that long, and at half the maximum rate the
    backlog they leave takes up to a second or so to drain; ``cold_max_ms`` is the
    longest delay of any sampled line, warm-up included."""
    data_file = env.tmp / "latency.log"
    data_file.write_bytes(b"")
    agent, relay = await _pipeline(env, data_file, *relay_extra)
    await asyncio.sleep(1.5)  # connected and idle
    env.sink.latency_from = time.time_ns() + int(warmup * 1e9)
    writer = env.start("writer", ["-c", WRITER, str(data_file), str(rate),
                                  str(seconds + warmup)])
    await writer.wait(seconds + warmup + 30.0)
    written = int(writer.log.read_text().split()[-1])
    tag = f"{TAG}.file"
    await _until(env.sink, tag, written, [agent, relay])
    env.sink.latency_from = None
    await env.stop_all()
    p50, p99 = percentiles(env.sink.delays, (0.5, 0.99))
    return {"rate": rate, "p50_ms": p50 / 1e6, "p99_ms": p99 / 1e6,
            "max_ms": max(env.sink.delays) / 1e6, "cold_max_ms": env.sink.cold_max / 1e6,
            "sampled_lines": sum(env.sink.delays.values()), "written": written}


def percentiles(counts: collections.Counter[int], qs: tuple[float, ...]) -> list[float]:
    """The ``qs`` quantiles of values given as value -> count."""
    total = sum(counts.values())
    out: list[float] = []
    seen = 0
    items = iter(sorted(counts.items()))
    value = 0
    for q in qs:
        while seen < q * total:
            value, c = next(items)
            seen += c
        out.append(float(value))
    return out


# -- 5. memory at rest ---------------------------------------------------------------------


async def idle(env: Env, settle: float = 3.0) -> dict[str, Any]:
    """Agent (tailing an empty file) and relay, connected and idle: RSS, and CPU as a
    share of one core over ``settle`` seconds after a second to start."""
    data_file = env.tmp / "idle.log"
    data_file.write_bytes(b"")
    agent, relay = await _pipeline(env, data_file)
    await asyncio.sleep(1.0)
    cpu0 = agent.cpu(), relay.cpu()
    await asyncio.sleep(settle)
    cpu1 = agent.cpu(), relay.cpu()
    agent.sample()
    relay.sample()
    out = {"agent_idle_rss_mib": agent.last_rss_kib / 1024,
           "relay_idle_rss_mib": relay.last_rss_kib / 1024,
           "agent_idle_cpu_pct": (cpu1[0] - cpu0[0]) / settle * 100,
           "relay_idle_cpu_pct": (cpu1[1] - cpu0[1]) / settle * 100}
    await env.stop_all()
    return out
