"""Agent -> relay over real AF_VSOCK: what arrives, under which name, and the child's exit.

One agent run feeds the four tests here (an agent start costs seconds under TCG): it
connects to ``vsock://1:PORT`` (CID 1 is the guest's own loopback), its child writes
numbered lines on stdout and stderr, one line of 1.5 MiB, and a last burst just before
it exits with status 3. The relay listens on ``vsock://any:PORT`` and writes its file
output. Each test checks one property of that run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.vsock.support import Relay, logs_of, output_size, read_records, start_agent

TAG = "pipe"
PREFIX = f"enclave.cid-1.{TAG}"
N_OUT = 2000  # stdout lines: 1000, the big one, then 1000 in a burst right before exit
N_ERR = 1000
N_BEFORE = 1000  # stdout lines before the big one
EXIT = 3
#: Larger than the vsock socket buffer: the kernel default (256 KiB) and the 1 MiB the
#: project sets (fluent_forward.aio.VSOCK_BUFFER); one record travels in one frame.
BIG = 1536 * 1024


def tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])


def big_line() -> str:
    """1.5 MiB of a pattern that changes everywhere (a lost or repeated piece shows)."""
    out = []
    size = 0
    i = 0
    while size < BIG:
        piece = hashlib.sha256(str(i).encode()).hexdigest()
        out.append(piece)
        size += len(piece)
        i += 1
    return "".join(out)[:BIG]


@dataclass
class Run:
    status: int
    records: list[dict[str, Any]]
    big: str
    agent_log: str
    relay_log: str


@pytest.fixture(scope="module")
def run(shared_relay: Relay, workdir: Path) -> Run:
    big = big_line()
    big_file = workdir / "big.txt"
    big_file.write_text(big + "\n")
    script = (
        f"seq -f 'out %06g' 0 {N_BEFORE - 1}\n"
        f"seq -f 'err %06g' 0 {N_ERR - 1} >&2\n"
        f"cat {big_file}\n"
        f"seq -f 'out %06g' {N_BEFORE} {N_OUT - 1}\n"
        f"exit {EXIT}\n"
    )
    start = output_size(shared_relay.output)
    agent = start_agent(shared_relay.port, TAG, ["/bin/sh", "-c", script],
                        workdir / "pipe-agent.log",
                        # small batches, so order is checked across many frames; lines
                        # up to 2 MiB, so the big one is one record in one frame
                        "--batch-size", "16KiB", "--max-line-bytes", "2MiB")
    started = time.monotonic()
    try:
        agent.wait_for_log(r"connected to relay vsock://1:", "the agent to connect")
        connected = time.monotonic()
        status = agent.wait()
    finally:
        agent.stop()
    print(f"pipeline: the agent connected after {connected - started:.1f} s and exited "
          f"after {time.monotonic() - started:.1f} s")
    assert not agent.tracebacks(), agent.log_tail()
    # Read at once, without waiting: the agent exits only when the relay has acked
    # everything, and the relay acks only what its file output has fsynced.
    return Run(status, read_records(shared_relay.output, start), big, agent.log(),
               shared_relay.log())


def test_records_arrive_exactly_once_and_in_order(run: Run) -> None:
    out = [line for line in logs_of(run.records, f"{TAG}.stdout") if len(line) < 100]
    err = logs_of(run.records, f"{TAG}.stderr")
    assert out == [f"out {i:06d}" for i in range(N_OUT)], "stdout lost, repeated or reordered"
    assert err == [f"err {i:06d}" for i in range(N_ERR)], "stderr lost, repeated or reordered"


def test_the_relay_stamps_the_peer_cid(run: Run) -> None:
    """The relay names the agent by the CID the kernel reports for the vsock peer."""
    ours = [r for r in run.records if r["tag"].endswith((f"{TAG}.stdout", f"{TAG}.stderr"))]
    assert ours, "no records from the agent"
    assert {r["tag"] for r in ours} == {f"{PREFIX}.stdout", f"{PREFIX}.stderr"}, (
        "records are not tagged with the vsock peer's CID (enclave.cid-1.*)")
    assert "cid-1 connected (vsock://1:" in run.relay_log, (
        "the relay did not log the vsock peer's CID:\n" + tail(run.relay_log))


def test_a_frame_larger_than_the_vsock_buffer_arrives_intact(run: Run) -> None:
    bigs = [line for line in logs_of(run.records, f"{TAG}.stdout") if len(line) >= 100]
    assert len(bigs) == 1, f"expected the big line once, got {len(bigs)} long lines"
    got = bigs[0]
    assert len(got) == BIG and got == run.big, "the 1.5 MiB record arrived altered"
    stdout = logs_of(run.records, f"{TAG}.stdout")
    assert stdout[N_BEFORE - 1] == f"out {N_BEFORE - 1:06d}" and stdout[N_BEFORE] == got, (
        "the big record is out of place")


def test_the_childs_exit_drains_over_vsock(run: Run) -> None:
    """The agent exits with the child's status only after everything went over vsock."""
    assert run.status == EXIT, tail(run.agent_log)
    exits = [r for r in run.records if r["tag"].endswith(".agent.lifecycle")
             and r["record"]["event"] == "child_exit"]
    assert [r["record"].get("exit_code") for r in exits] == [EXIT], (
        f"expected one child_exit record with exit_code {EXIT}, got {exits}")
    # The last burst sat in the pipe when the child was reaped; it arrived all the same.
    assert logs_of(run.records, f"{TAG}.stdout")[-1] == f"out {N_OUT - 1:06d}"
    assert "drain timed out" not in run.agent_log
