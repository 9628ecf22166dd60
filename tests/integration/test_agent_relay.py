"""The real agent (a subprocess with a real child) through the in-process relay.

The relay writes JSON lines to a file, so each test reads exactly what a user of the
embedded output would see. The relay listens on TCP and on a Unix socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from enclave_side.lines import unescape_line
from parent_side.relay import Relay
from tests.agentproc import cleanup, python_child, start_agent
from tests.conftest import StartRelay, delivered, relay_url
from tests.helpers import PYTHON, env_for_subprocess, read_json_lines, wait_until

pytestmark = pytest.mark.asyncio

LISTENS = ["tcp://127.0.0.1:0", "unix://{sockdir}/relay.sock"]


def records(path: Path, tag_suffix: str) -> list[dict[str, object]]:
    return [r for r in read_json_lines(path) if str(r["tag"]).endswith(tag_suffix)]


def lifecycle(path: Path, event: str) -> list[dict[str, object]]:
    return [r["record"] for r in records(path, "agent.lifecycle")  # type: ignore[misc]
            if r["record"]["event"] == event]  # type: ignore[index]


async def relay_to_file(start_relay: StartRelay, sockdir: Path, listen: str = LISTENS[1]
                        ) -> tuple[str, Path]:
    out = sockdir / "out.jsonl"
    relay = await start_relay(listen.format(sockdir=sockdir), f"file://{out}")
    RELAYS[str(out)] = relay
    return relay_url(relay), out


RELAYS: dict[str, Relay] = {}


async def settled(out: Path) -> None:
    """The agent was acked once the spool had each batch: wait for the file output too."""
    await delivered(RELAYS[str(out)])


@pytest.mark.parametrize("listen", LISTENS, ids=["tcp", "unix"])
async def test_every_line_arrives_once_in_order_with_tag_and_stream(
        start_relay: StartRelay, sockdir: Path, listen: str) -> None:
    url, out = await relay_to_file(start_relay, sockdir, listen)
    n = 3000
    child = python_child(
        "import sys\n"
        f"for i in range({n}):\n"
        "    print(f'out {i:06d}', flush=(i % 7 == 0))\n"
        "    print(f'err {i:06d}', file=sys.stderr, flush=(i % 5 == 0))\n")
    before = time.time_ns()
    run = await start_agent(url, child, "--tag", "svc")
    try:
        assert await run.wait() == 0, run.stderr.decode()
        await settled(out)
        await wait_until(lambda: len(records(out, "svc.stderr")) >= n, "stderr lines")
        after = time.time_ns()
        for stream, word in (("stdout", "out"), ("stderr", "err")):
            got = records(out, f"svc.{stream}")
            assert [r["record"]["log"] for r in got] == [f"{word} {i:06d}" for i in range(n)]  # type: ignore[index]
            assert {r["tag"] for r in got} == {f"enclave.local.svc.{stream}"}
            assert {r["record"]["stream"] for r in got} == {stream}  # type: ignore[index]
            for r in got[:: n // 10]:
                ns = iso_to_ns(str(r["time"]))
                assert before <= ns <= after, "records are timed when read, in nanoseconds"
    finally:
        await cleanup(run)


def iso_to_ns(text: str) -> int:
    import calendar

    date, frac = text.rstrip("Z").split(".")
    seconds = calendar.timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%S"))
    assert len(frac) == 9, "nanosecond precision"
    return seconds * 1_000_000_000 + int(frac)


async def test_agent_exits_with_child_status_and_reports_it(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    run = await start_agent(url, python_child("print('bye'); raise SystemExit(3)"))
    try:
        assert await run.wait() == 3
        await settled(out)
        await wait_until(lambda: lifecycle(out, "child_exit"), "the exit record")
        (exit_record,) = lifecycle(out, "child_exit")
        assert exit_record["exit_code"] == 3
        assert [r["record"]["log"] for r in records(out, "app.stdout")] == ["bye"]  # type: ignore[index]
        assert lifecycle(out, "agent_start"), "the agent's start is recorded"
    finally:
        await cleanup(run)


@pytest.mark.parametrize("buffer", ["32MiB", "64KiB"], ids=["roomy", "full-buffer"])
async def test_lines_written_just_before_exit_all_arrive(
        start_relay: StartRelay, sockdir: Path, buffer: str) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    n = 100_000
    # One big write, then exit without flushing anything else: the lines sit in the
    # pipe when the child is reaped.
    child = python_child(
        "import os\n"
        f"data = b''.join(b'last words %06d\\n' % i for i in range({n}))\n"
        "view = memoryview(data)\n"
        "while view: view = view[os.write(1, view):]\n"
        "os._exit(0)\n")
    # With a small buffer the agent is still paused on the pipe when the child is
    # reaped: what is left in the pipe must be read all the same.
    run = await start_agent(url, child, "--buffer-size", buffer, "--batch-size", "16KiB")
    try:
        assert await run.wait() == 0
        await settled(out)
        got = [r["record"]["log"] for r in records(out, "app.stdout")]  # type: ignore[index]
        assert got == [f"last words {i:06d}" for i in range(n)]
    finally:
        await cleanup(run)


async def test_sigterm_to_the_agent_reaches_the_child(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    child = python_child(
        "import signal, sys, time\n"
        "def bye(sig, frame):\n"
        "    print('child got SIGTERM', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n")
    run = await start_agent(url, child)
    try:
        await wait_until(lambda: records(out, "app.stdout"), "the child to start")
        run.signal(signal.SIGTERM)
        assert await run.wait() == 0
        await settled(out)
        logs = [r["record"]["log"] for r in records(out, "app.stdout")]  # type: ignore[index]
        assert logs == ["ready", "child got SIGTERM"]
    finally:
        await cleanup(run)


async def test_a_child_killed_by_a_signal_reports_the_signal(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    run = await start_agent(url, python_child(
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    try:
        assert await run.wait() == 128 + signal.SIGKILL
        await settled(out)
        await wait_until(lambda: lifecycle(out, "child_exit"), "the exit record")
        (rec,) = lifecycle(out, "child_exit")
        assert rec["signal"] == signal.SIGKILL and rec["signal_name"] == "SIGKILL"
    finally:
        await cleanup(run)


async def test_orphaned_grandchildren_do_not_hide_the_childs_exit(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    # The grandchild inherits stdout and outlives the child: the pipe stays open.
    child = ["/bin/sh", "-c", "sleep 60 & echo grandchild started; exit 5"]
    run = await start_agent(url, child)
    started = time.monotonic()
    try:
        assert await run.wait(timeout=20) == 5
        await settled(out)
        assert time.monotonic() - started < 15, "the agent waited for the grandchild"
        (rec,) = lifecycle(out, "child_exit")
        assert rec["exit_code"] == 5
        assert [r["record"]["log"] for r in records(out, "app.stdout")] == ["grandchild started"]  # type: ignore[index]
    finally:
        await cleanup(run)
        # The child ran in its own process group; its orphan is still in it.
        pgid = int(lifecycle(out, "child_exit")[0]["pid"])  # type: ignore[arg-type]
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_a_10mb_line_is_cut_and_flagged_and_the_next_lines_arrive(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    child = python_child(
        "import sys\n"
        "sys.stdout.write('before\\n')\n"
        "sys.stdout.write('x' * (10 * 1024 * 1024) + '\\n')\n"
        "sys.stdout.write('after 1\\nafter 2\\n')\n")
    run = await start_agent(url, child, "--max-line-bytes", "64KiB")
    try:
        assert await run.wait() == 0
        await settled(out)
        got = [r["record"] for r in records(out, "app.stdout")]
        assert [g["log"][:10] for g in got] == ["before", "x" * 10, "after 1", "after 2"]  # type: ignore[index]
        assert got[1]["truncated"] is True and len(got[1]["log"]) == 64 * 1024  # type: ignore[arg-type,index]
        assert "truncated" not in got[2]
    finally:
        await cleanup(run)


async def test_invalid_utf8_arrives_escaped_and_the_stream_goes_on(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    raw = b"bad \xff\xfe bytes \\ here"
    child = python_child(
        "import sys\n"
        f"sys.stdout.buffer.write(b'good 1\\n' + {raw!r} + b'\\ngood 2\\n')\n")
    run = await start_agent(url, child)
    try:
        assert await run.wait() == 0
        await settled(out)
        got = [r["record"] for r in records(out, "app.stdout")]
        assert [g["log"] for g in got][0::2] == ["good 1", "good 2"]  # type: ignore[index]
        assert got[1]["escaped"] is True  # type: ignore[index]
        assert unescape_line(got[1]["log"]) == raw  # type: ignore[arg-type,index]
    finally:
        await cleanup(run)


async def test_agent_started_before_the_relay_delivers_once_it_is_up(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock = sockdir / "late.sock"
    out = sockdir / "out.jsonl"
    run = await start_agent(f"unix://{sock}", python_child(
        "import time\nfor i in range(50):\n    print(i, flush=True); time.sleep(0.01)\n"),
        "--drain-timeout", "30s")
    try:
        await wait_until(lambda: b"retrying" in run.stderr,
                         "the agent to fail its first connection")
        RELAYS[str(out)] = await start_relay(f"unix://{sock}", f"file://{out}")
        assert await run.wait() == 0
        await settled(out)
        assert [r["record"]["log"] for r in records(out, "app.stdout")] == [  # type: ignore[index]
            str(i) for i in range(50)]
        # The failure before the relay came up went through the pipeline too.
        diag = [r["record"]["log"] for r in records(out, "agent.log")]  # type: ignore[index]
        assert any("retrying" in str(d) for d in diag)
    finally:
        await cleanup(run)


async def test_without_a_command_the_agent_runs_until_sigterm(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    run = await start_agent(url)
    try:
        await wait_until(lambda: lifecycle(out, "agent_start"), "the agent to start")
        run.signal(signal.SIGTERM)
        assert await run.wait() == 0
        await settled(out)
    finally:
        await cleanup(run)


async def test_a_missing_command_is_reported_and_exits_127(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    run = await start_agent(url, ["/nonexistent/app"])
    try:
        assert await run.wait() == 127
        await settled(out)
        (rec,) = lifecycle(out, "child_exit")
        assert rec["exit_code"] == 127 and "cannot start" in str(rec["log"])
    finally:
        await cleanup(run)



async def test_tee_console_copies_the_apps_output_to_the_agents_own(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "enclave_side", "--relay", url, "--tee-console", "--log-level", "error",
        "--", *python_child("import sys\nprint('to the console too')\n"
                            "print('and this', file=sys.stderr)\n"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env_for_subprocess())
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0
    assert stdout == b"to the console too\n", "stdout is copied as it came, and only stdout"
    assert b"and this\n" in stderr
    await settled(out)
    assert [r["record"]["log"] for r in records(out, "app.stdout")] == [  # type: ignore[index]
        "to the console too"], "the copy does not replace shipping"


async def test_without_a_command_sighup_does_not_end_the_agent(
        start_relay: StartRelay, sockdir: Path) -> None:
    url, out = await relay_to_file(start_relay, sockdir)
    run = await start_agent(url)
    try:
        await wait_until(lambda: lifecycle(out, "agent_start"), "the agent to start")
        run.signal(signal.SIGHUP)
        await wait_until(lambda: b"SIGHUP ignored" in run.stderr, "the agent to note it")
        assert run.proc.returncode is None, "SIGHUP ended the agent"
        run.signal(signal.SIGTERM)
        assert await run.wait() == 0
        await settled(out)
        metrics = [r["record"] for r in records(out, "agent.metrics")]
        assert metrics, "the last metrics record goes out when the agent stops"
        counters = json.loads(str(metrics[-1]["log"]).removeprefix("agent metrics "))  # type: ignore[index]
        assert counters["acked_batches"] == metrics[-1]["acked_batches"]  # type: ignore[index]
    finally:
        await cleanup(run)
