"""A relay that dies, and a relay that stops reading, over real AF_VSOCK.

Both tests use sequence-numbered lines, so a lost line and a repeated one both show.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from fluent_forward.entries import EventTime, pack_entry
from tests.vsock.support import (
    PORT_RESTART,
    Relay,
    events_of,
    logs_of,
    output_size,
    python_child,
    read_records,
    start_agent,
    start_relay,
    wait_until,
)

# A child that writes LINES_PER_WRITE numbered lines every few ms until a file appears,
# then says on stderr how many it wrote.
PACED_WRITER = """\
import os, sys, time
stop, per_write = sys.argv[1], int(sys.argv[2])
i = 0
while not os.path.exists(stop):
    os.write(1, b"".join(b"seq %06d\\n" % n for n in range(i, i + per_write)))
    i += per_write
    time.sleep(0.02)
os.write(2, b"wrote %d\\n" % i)
"""
LINES_PER_WRITE = 2
WINDOW = 8
BATCH = 4096


def seqs(path: Path, tag: str) -> list[int]:
    return [int(line.split()[1]) for line in logs_of(read_records(path), tag)]


def lines_per_batch() -> int:
    """The most numbered lines one of the agent's batches can hold.

    A batch is sealed once its entries reach ``--batch-size``; the read that crosses the
    size is kept whole, and the paced child writes LINES_PER_WRITE lines at a time.
    """
    entry = len(pack_entry(EventTime.from_ns(0), {"log": "seq 000000", "stream": "stdout"}))
    return -(-BATCH // entry) + LINES_PER_WRITE


def test_relay_killed_and_restarted_mid_stream_loses_nothing(workdir: Path) -> None:
    """SIGKILL the relay with batches in flight, start a new one: every line arrives.

    What the relay had spooled survives in its spool; what it had not acked when it
    died is still in the agent, which reconnects and resends it. A line is repeated
    only if it was spooled and not yet acked to the agent: at most the agent's window
    of batches.
    """
    out = workdir / "restart.jsonl"
    stop_file = workdir / "restart.stop"
    tag = "restart.stdout"
    t0 = time.monotonic()
    phases: list[str] = []

    def phase(what: str) -> None:
        phases.append(f"{what} {time.monotonic() - t0:.1f}")

    relay = start_relay(PORT_RESTART, out, workdir / "restart-relay-1.log")
    phase("relay up")
    agent = start_agent(PORT_RESTART, "restart",
                        python_child(PACED_WRITER, str(stop_file), str(LINES_PER_WRITE)),
                        workdir / "restart-agent.log",
                        "--batch-size", f"{BATCH}B", "--window", str(WINDOW))
    relay2: Relay | None = None
    try:
        wait_until(lambda: len(seqs(out, tag)) >= 100, "the first lines through the relay")
        phase("100 lines")
        # Freeze the relay for a moment so the agent has batches sent and not acked,
        # then kill it: mid-stream, with a full window in flight.
        relay.signal(signal.SIGSTOP)
        time.sleep(1.0)
        relay.signal(signal.SIGKILL)
        assert relay.wait() == -signal.SIGKILL
        at_kill = max(seqs(out, tag))
        resent = agent.wait_for_log(r"(\d+) unacked batches will be resent",
                                    "the agent to notice the lost connection")
        assert 1 <= int(resent.group(1)) <= WINDOW
        phase("killed")
        relay2 = start_relay(PORT_RESTART, out, workdir / "restart-relay-2.log")
        phase("relay 2 up")
        wait_until(lambda: max(seqs(out, tag)) >= at_kill + 100,
                   "new lines through the restarted relay")
        phase("100 more lines")
        stop_file.touch()
        status = agent.wait()
        phase("agent exited")
        assert status == 0, agent.log_tail()
        assert len(re.findall(r"connected to relay vsock://1:", agent.log())) >= 2
    finally:
        stop_file.touch()
        agent.stop()
        relay.stop()
        if relay2 is not None:
            relay2.stop()
    records = read_records(out)
    (wrote,) = logs_of(records, "restart.stderr")
    total = int(wrote.split()[1])
    got = seqs(out, tag)
    lost = sorted(set(range(total)) - set(got))
    duplicates = len(got) - len(set(got))
    bound = WINDOW * lines_per_batch()
    print(f"restart: {total} lines, {len(lost)} lost, {duplicates} duplicates "
          f"(bound {bound}), {resent.group(0)}; at s: {', '.join(phases)}")
    assert not lost, f"{len(lost)} lines lost, first {lost[:10]}"
    assert set(got) == set(range(total)), "lines the child never wrote arrived"
    assert duplicates <= bound, f"{duplicates} duplicates, more than the window ({bound})"
    first_seen = list(dict.fromkeys(got))
    assert first_seen == sorted(first_seen), "lines arrived out of order"
    for proc in (agent, relay, relay2):
        assert proc is None or not proc.tracebacks(), f"a traceback in the {proc.name} log"


# A child that waits for a file, then writes N lines of ~1 KiB as fast as the pipe takes
# them, 16 per write, and reports its longest single write on stderr.
FAST_WRITER = """\
import os, sys, time
go, n = sys.argv[1], int(sys.argv[2])
while not os.path.exists(go):
    time.sleep(0.02)
pad = b"x" * 1000
longest = 0.0
for start in range(0, n, 16):
    view = memoryview(b"".join(b"stall %06d " % i + pad + b"\\n"
                               for i in range(start, min(start + 16, n))))
    t = time.monotonic()
    while view:
        view = view[os.write(1, view):]
    longest = max(longest, time.monotonic() - t)
os.write(2, b"longest write %.3f s\\n" % longest)
"""
STALL_LINES = 1536  # 1.5 MiB: far more than the agent's 256 KiB buffer and the pipe
STOP_SECONDS = 3.0


def test_a_relay_that_stops_reading_makes_the_agent_wait_not_drop(
        shared_relay: Relay, workdir: Path) -> None:
    """SIGSTOP the relay while the child writes: the child blocks, nothing is dropped."""
    go = workdir / "stall.go"
    tag = "stall.stdout"
    start = output_size(shared_relay.output)
    agent = start_agent(shared_relay.port, "stall",
                        python_child(FAST_WRITER, str(go), str(STALL_LINES)),
                        workdir / "stall-agent.log",
                        "--buffer-size", "256KiB", "--batch-size", "16KiB",
                        "--overflow", "block")
    try:
        agent.wait_for_log(r"connected to relay vsock://1:", "the agent to connect")
        shared_relay.signal(signal.SIGSTOP)
        try:
            go.touch()
            time.sleep(STOP_SECONDS)
            assert agent.proc.poll() is None, "the agent finished while the relay was stopped"
        finally:
            shared_relay.signal(signal.SIGCONT)
        status = agent.wait()
        assert status == 0, agent.log_tail()
    finally:
        agent.stop()
    records = read_records(shared_relay.output, start)
    got = logs_of(records, tag)
    assert [line[:12] for line in got] == [f"stall {i:06d}" for i in range(STALL_LINES)], (
        "lines lost, repeated or reordered")
    assert not events_of(records, "agent.log", "dropped"), "the agent dropped records"
    (longest,) = logs_of(records, "stall.stderr")
    stalled = float(longest.split()[2])
    print(f"stall: the child's longest write blocked {stalled:.1f} s "
          f"(relay stopped {STOP_SECONDS:.0f} s)")
    assert stalled >= STOP_SECONDS / 2, (
        f"the child's writes never blocked for long ({longest}): the agent did not make it "
        "wait")
    assert not agent.tracebacks(), agent.log_tail()
