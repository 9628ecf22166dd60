"""The real agent with the rest of its sources and controls: overflow policies with the
relay gone, --pty, the kernel log, level filters, redaction and self-metrics."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import cleanup, python_child, start_agent
from tests.conftest import StartRelay, relay_url
from tests.file_oracle import Output
from tests.helpers import DEADLINE, wait_until

pytestmark = pytest.mark.asyncio


async def relay_out(start_relay: StartRelay, sockdir: Path, name: str = "relay.sock"
                    ) -> tuple[str, Output]:
    out = sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sockdir}/{name}", f"file://{out}")
    return relay_url(relay), Output(out)


def writer(n: int, done: Path, width: int = 100) -> list[str]:
    """A child writing ``n`` numbered lines as fast as it can, then touching ``done``."""
    return python_child(
        "import sys, pathlib\n"
        f"for i in range({n}):\n"
        f"    sys.stdout.write('line %08d ' % i + 'x' * {width} + '\\n')\n"
        "sys.stdout.flush()\n"
        f"pathlib.Path({str(done)!r}).touch()\n")


# -- the buffer fills with the relay gone ---------------------------------------------------


@pytest.mark.slow
async def test_block_stalls_the_child_and_loses_nothing(start_relay: StartRelay,
                                                        sockdir: Path) -> None:
    done = sockdir / "done"
    n = 40_000  # ~4.5 MB against a 256 KiB buffer and a 64 KiB pipe
    sock = sockdir / "late.sock"
    run = await start_agent(f"unix://{sock}", writer(n, done), "--buffer-size", "256KiB",
                            "--batch-size", "32KiB", "--overflow", "block",
                            "--drain-timeout", "60s")
    try:
        await wait_until(lambda: b"retrying" in run.stderr, "the agent to miss the relay")
        # Writing 4.5 MB takes milliseconds when nothing stops it; give it a second.
        with pytest.raises(AssertionError):
            await wait_until(done.exists, "the child to finish", timeout=1.0)
        out = sockdir / "out.jsonl"
        await start_relay(f"unix://{sock}", f"file://{out}")
        assert await run.wait(timeout=2 * DEADLINE) == 0
        assert done.exists()
        logs = Output(out).logs("app.stdout")
        assert [int(x.split()[1]) for x in logs] == list(range(n))
    finally:
        await cleanup(run)


async def test_drop_oldest_keeps_the_child_running_under_the_cap_and_counts_drops(
        start_relay: StartRelay, sockdir: Path) -> None:
    done = sockdir / "done"
    n = 40_000
    cap = 256 * 1024
    sock = sockdir / "late.sock"
    run = await start_agent(f"unix://{sock}", writer(n, done), "--buffer-size", str(cap),
                            "--batch-size", "32KiB", "--overflow", "drop_oldest",
                            "--drain-timeout", "60s", "--metrics-interval", "50ms")
    try:
        await wait_until(done.exists, "the child to write everything without waiting")
        out_path = sockdir / "out.jsonl"
        await start_relay(f"unix://{sock}", f"file://{out_path}")
        assert await run.wait(timeout=2 * DEADLINE) == 0
        out = Output(out_path)
        seqs = [int(x.split()[1]) for x in out.logs("app.stdout")]
        assert seqs == sorted(set(seqs)), "duplicated or reordered lines"
        assert seqs[-1] == n - 1, "the newest lines were dropped instead of the oldest"
        reports = [r for r in out.tagged("agent.log") if r.get("event") == "dropped"]
        dropped = sum(int(r["records"]) for r in reports)
        assert dropped > 0
        assert len(seqs) + dropped == n, f"{len(seqs)} delivered + {dropped} reported != {n}"
        metrics = out.tagged("agent.metrics")
        assert metrics, "no metrics while the relay was gone"
        assert max(int(m["buffer_bytes"]) for m in metrics) <= cap
        assert max(int(m["dropped_records"]) for m in metrics) == dropped
    finally:
        await cleanup(run)


# -- --pty ------------------------------------------------------------------------------------

PY_WRITER = (
    "import os, sys, time\n"
    "print('first line, then a pause', flush=False)\n"  # block-buffered into a pipe
    "print('on stderr', file=sys.stderr)\n"
    "deadline = time.monotonic() + 10\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
    "print('isatty', os.isatty(1), os.isatty(2))\n")

C_WRITER = r"""
#include <stdio.h>
#include <unistd.h>
#include <time.h>
int main(int argc, char **argv) {
    printf("first line, then a pause\n");  /* stdio: block-buffered unless a tty */
    fprintf(stderr, "on stderr\n");
    for (int i = 0; i < 1000 && access(argv[1], F_OK) != 0; i++) {
        struct timespec t = {0, 10000000}; nanosleep(&t, NULL);
    }
    printf("isatty %s %s\n", isatty(1) ? "True" : "False", isatty(2) ? "True" : "False");
    return 0;
}
"""


def c_writer(tmp: Path) -> list[str] | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    (tmp / "w.c").write_text(C_WRITER)
    subprocess.run([cc, "-O0", "-o", str(tmp / "w"), str(tmp / "w.c")], check=True)
    return [str(tmp / "w")]


@pytest.mark.parametrize("lang", ["python", "c"])
@pytest.mark.parametrize("pty", [True, False], ids=["pty", "pipe"])
async def test_pty_makes_a_block_buffered_writer_line_buffer(
        start_relay: StartRelay, sockdir: Path, tmp_path: Path, lang: str, pty: bool) -> None:
    go = sockdir / "go"
    cmd = python_child(PY_WRITER) if lang == "python" else c_writer(tmp_path)
    if cmd is None:
        pytest.skip("no C compiler")
    url, out = await relay_out(start_relay, sockdir)
    # PYTHONUNBUFFERED (set on some CI machines) would hide what buffering does.
    run = await start_agent(url, [*cmd, str(go)], *(["--pty"] if pty else []),
                            PYTHONUNBUFFERED="")
    try:
        await wait_until(lambda: out.logs("app.stderr"), "stderr")
        if pty:
            # Line-buffered on a terminal: the first line arrives while the app waits.
            await wait_until(lambda: out.logs("app.stdout"), "the first line before exit")
        else:
            assert not out.logs("app.stdout"), "a pipe should hold the block-buffered line"
        go.touch()
        assert await run.wait() == 0
        assert out.logs("app.stdout") == ["first line, then a pause",
                                          f"isatty {pty} {pty}"]
        assert out.logs("app.stderr") == ["on stderr"], "stdout and stderr stay apart"
    finally:
        await cleanup(run)


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


# -- /dev/kmsg --------------------------------------------------------------------------------

async def test_kernel_log_lines_from_a_stand_in_file(start_relay: StartRelay,
                                                     sockdir: Path, tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"6,1,1000,-;Linux version 6.1 (enclave)\n"
                     b" SUBSYSTEM=cpu\n"
                     b"4,2,2000,-;nsm: warning\n")
    url, out = await relay_out(start_relay, sockdir)
    run = await start_agent(url, (), "--kmsg", str(kmsg), "--poll-interval", "50ms",
                            "--tag", "enc")
    try:
        await wait_until(lambda: len(out.tagged("enc.kmsg")) >= 2, "the boot messages")
        append(kmsg, b"3,3,3000,-;Out of memory: Killed process 42 (app) total-vm:1024kB\n")
        await wait_until(lambda: len(out.tagged("enc.kmsg")) >= 3, "the OOM kill")
        run.signal(signal.SIGTERM)
        assert await run.wait() == 0
        recs = out.tagged("enc.kmsg")
        assert [(r["log"], r["level"], r["seq"]) for r in recs] == [
            ("Linux version 6.1 (enclave)", "info", 1), ("nsm: warning", "warning", 2),
            ("Out of memory: Killed process 42 (app) total-vm:1024kB", "error", 3)]
        assert recs[2]["oom"] is True and "oom" not in recs[0]
    finally:
        await cleanup(run)


# -- levels, filters, redaction, metrics, via the config file -----------------------------------

async def test_level_filters_redaction_and_metrics_from_a_config_file(
        start_relay: StartRelay, sockdir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'metrics_interval = "100ms"\n'
        '[stdout]\nmin_level = "warning"\nexclude = ["healthcheck"]\n'
        '[stderr]\njson = true\nmin_level = "error"\n'
        '[redact]\nbuiltin = ["email", "card"]\n'
        '[[redact.rule]]\nname = "session"\npattern = "sid=[0-9a-f]{8}"\n'
        'replacement = "sid=[REDACTED]"\n')
    child = python_child(
        "import sys, json\n"
        "for line in ['DEBUG cache warm', 'INFO started', 'WARN disk 91% full',\n"
        "             'ERROR mail to bob@example.com failed sid=deadbeef',\n"
        "             'ERROR healthcheck failed', 'no level, kept']:\n"
        "    print(line)\n"
        "for rec in [{'level': 'info', 'm': 'x'},\n"
        "            {'level': 'error', 'card': '4111111111111111'}]:\n"
        "    print(json.dumps(rec), file=sys.stderr)\n")
    url, out = await relay_out(start_relay, sockdir)
    run = await start_agent(url, child, "--config", str(conf))
    try:
        assert await run.wait() == 0
        got = out.tagged("app.stdout")
        assert [(r["log"], r.get("level")) for r in got] == [
            ("WARN disk 91% full", "warning"),
            ("ERROR mail to [REDACTED:email] failed sid=[REDACTED]", "error"),
            ("no level, kept", None)]
        assert [r for r in out.tagged("app.stderr")] == [
            {"level": "error", "card": "[REDACTED:card]", "stream": "stderr"}]
        await wait_until(lambda: any(m["redacted"].get("session") for m in
                                     out.tagged("agent.metrics")), "the metrics")
        m: dict[str, Any] = out.tagged("agent.metrics")[-1]
        # Once in the app's output, once in the command line of the agent_start record.
        assert m["redacted"] == {"email": 2, "card": 2, "session": 2}
        assert m["filtered"] == 4
        assert m["sources"]["stdout"]["lines"] == 6
        assert m["sources"]["stderr"]["lines"] == 2
        for key in ("dropped_records", "buffer_bytes", "unacked_batches", "reconnects"):
            assert key in m
        text = out.path.read_text()
        for secret in ("bob@example.com", "deadbeef", "4111111111111111"):
            assert secret not in text, f"{secret} left the enclave"
    finally:
        await cleanup(run)


async def test_metrics_come_every_interval(start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_out(start_relay, sockdir)
    run = await start_agent(url, (), "--metrics-interval", "100ms")
    try:
        started = time.monotonic()
        await wait_until(lambda: len(out.tagged("agent.metrics")) >= 3, "three metrics records")
        assert time.monotonic() - started < 5.0
        m = out.tagged("agent.metrics")[-1]
        assert m["event"] == "metrics" and m["connected"] is True
        assert m["buffer_max_bytes"] == 32 * 1024 * 1024
        run.signal(signal.SIGTERM)
        assert await run.wait() == 0
    finally:
        await cleanup(run)


async def test_a_source_that_cannot_start_is_reported_not_fatal(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_out(start_relay, sockdir)
    run = await start_agent(url, python_child("print('app ran')"), "--kmsg",
                            str(sockdir / "no-such-kmsg"))
    try:
        assert await run.wait() == 0
        assert out.logs("app.stdout") == ["app ran"]
        assert any("cannot read the kernel log" in x for x in out.logs("agent.log"))
    finally:
        await cleanup(run)

