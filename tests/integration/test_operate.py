"""Operating the relay: status, lifecycle records, clock skew, reload, old agents."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fluent_forward.codec import encode_packed_forward
from fluent_forward.conventions import chunk_id
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.fastpath import entry_check
from fluent_forward.handshake import ClientHandshake
from parent_side import cli as relay_cli
from parent_side.status import format_table, json_lines, query
from tests.agentproc import cleanup, python_child, start_agent
from tests.conftest import StartRelay, delivered
from tests.fakes.nitro_cli import ENCLAVES, FakeNitroCli
from tests.helpers import (
    DEADLINE,
    PYTHON,
    env_for_subprocess,
    read_json_lines,
    stop_process,
    wait_until,
    wait_until_sync,
    within,
)
from tests.integration.test_relay_bad_input import RawAgent
from tests.integration.test_trust import refused, relay_with_enclaves


def relay_records(out: Path, event: str | None = None) -> list[dict[str, object]]:
    recs = [r["record"] for r in read_json_lines(out, relay_records=True)
            if str(r["tag"]).startswith("relay.")]
    return [r for r in recs if event is None or r.get("event") == event]  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_status_shows_each_enclave_the_spool_and_upstream(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    admin = sockdir / "admin.sock"
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli,
                                                         admin_socket=str(admin))
    await wait_until(admin.exists, "the admin socket")
    pay = await as_cid.connect(sock, 16)
    dbg = await as_cid.connect(sock, 17)
    await pay.send_batch(["p1", "p2", "p3"])
    await dbg.send_batch(["d1"])
    await dbg.close()  # one disconnects
    await wait_until(lambda: relay.listener.stats.open_connections == 1, "the disconnect")
    await delivered(relay)

    snap = await asyncio.to_thread(query, str(admin))
    enclaves = {e["name"]: e for e in snap["enclaves"]}
    assert enclaves["payments"]["connected"] is True
    assert enclaves["payments"]["cid"] == 16 and enclaves["payments"]["records_in"] == 3
    assert enclaves["payments"]["records_out"] == 3
    assert enclaves["payments"]["enclave_id"] == "i-0abc-enc0001"
    assert enclaves["debug_box"]["connected"] is False and enclaves["debug_box"]["debug"] is True
    assert snap["spool"]["backlog"] == 0 and snap["upstream"]["kind"] == "file"
    assert snap["relay"]["entry_check"] in ("c", "python")

    # The command itself, as a user and as Fluent Bit's exec input run it.
    table = await asyncio.to_thread(run_status, admin)
    assert "payments" in table and "connected" in table and "gone" in table
    lines = [json.loads(x) for x in (await asyncio.to_thread(run_status, admin, "--json"))
             .splitlines()]
    assert [x["type"] for x in lines] == ["relay", "enclave", "enclave", "spool", "upstream"]
    assert {x["name"] for x in lines if x["type"] == "enclave"} == {"payments", "debug_box"}
    await pay.close()


def run_status(admin: Path, *flags: str) -> str:
    proc = subprocess.run([PYTHON, "-m", "parent_side", "status", "--admin-socket", str(admin),
                           *flags], capture_output=True, text=True, timeout=30,
                          env=env_for_subprocess())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_without_a_relay_says_so() -> None:
    proc = subprocess.run([PYTHON, "-m", "parent_side", "status", "--admin-socket",
                           "/nonexistent/admin.sock"], capture_output=True, text=True,
                          timeout=30, env=env_for_subprocess())
    assert proc.returncode == 1
    assert "no relay answers at /nonexistent/admin.sock" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_table_and_json_lines_come_from_one_snapshot() -> None:
    snap = {"relay": {"version": "0.1.0", "hostname": "h", "uptime_s": 120, "listen": "x",
                      "output": "y", "connections_open": 1, "protocol_errors": 0, "refused": 2},
            "enclaves": [{"name": "a", "cid": 16, "connected": True, "agent_version": "0.1.0",
                          "connected_since": 0, "records_in": 5, "records_out": 4,
                          "bytes_in": 2048, "drops": 1, "gaps": 2, "clock_skew_ms": 3600000.0,
                          "last_seen": 100}],
            "spool": {"mode": "memory-only"}, "upstream": {"kind": "stdout"}}
    table = format_table(snap, now=130)
    assert "+3600000 ms" in table and "30s ago" in table and "memory-only" in table
    assert json.loads(json_lines(snap)[1]) == {"type": "enclave", **snap["enclaves"][0]}


@pytest.mark.asyncio
async def test_an_agent_an_hour_ahead_shows_its_skew_and_restamping_fixes_times(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli,
                                                         restamp_time=True)
    agent = await as_cid.connect(sock, 16)
    # The enclave's clock is an hour fast: its times say so.
    ahead = time.time_ns() + 3600 * 10**9
    agent.seq += 1
    chunk = chunk_id(agent.boot, agent.seq)
    entries = pack_entry(EventTime.from_ns(ahead), {"log": "from the future"})
    agent.writer.write(encode_packed_forward("app.stdout", entries, {"chunk": chunk}))
    await agent.next_frame()
    skew = relay.listener.stats.peers["payments"].clock_skew_ms
    assert skew is not None and abs(skew - 3_600_000) < 5_000, skew
    snap = relay.snapshot()
    assert abs(snap["enclaves"][0]["clock_skew_ms"] - 3_600_000) < 5_000
    await agent.close()
    await delivered(relay)
    (rec,) = read_json_lines(out)
    assert rec["record"]["enclave_time"] == ahead  # type: ignore[index]
    assert str(rec["time"]) < time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 60))


@pytest.mark.asyncio
async def test_lifecycle_records_follow_enclaves_and_the_relay(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli)
    relay.registry = relay.listener.registry
    assert relay.registry is not None
    relay.registry.on_terminated = relay._terminated
    agent = await as_cid.connect(sock, 16)
    await agent.send_batch(["hello"])
    await agent.close()
    nitro_cli.set(ENCLAVES[1:])  # payments terminated; the others still run
    await relay.registry.refresh()
    await wait_until(lambda: relay_records(out, "enclave_terminated"), "the terminated record")
    await delivered(relay)
    (start,) = relay_records(out, "relay_start")
    (conn,) = relay_records(out, "enclave_connected")
    (disc,) = relay_records(out, "enclave_disconnected")
    (term,) = relay_records(out, "enclave_terminated")
    assert start["version"] and conn["enclave"] == "payments" and conn["cid"] == 16
    assert start["entry_check"] == entry_check()  # "c" unless built without a compiler
    assert conn["enclave_id"] == "i-0abc-enc0001" and conn["claimed_hostname"] == "honest"
    assert disc["records_in"] == 1
    assert term["enclave_id"] == "i-0abc-enc0001"


@pytest.mark.asyncio
async def test_an_old_agent_without_a_version_is_served(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}")
    for version in ("", "0.0.1"):  # none (a 6-field PING), and an older one
        reader, writer = await asyncio.open_unix_connection(str(sock))
        agent = RawAgent(reader, writer)
        helo = await agent.next_frame()
        hs = ClientHandshake(hostname="old", version=version)
        writer.write(hs.ping(helo))  # type: ignore[arg-type]
        hs.check(await agent.next_frame())  # type: ignore[arg-type]
        await agent.send_batch([f"old agent {version or 'unversioned'}"])
        await agent.close()
    await delivered(relay)
    assert [r["record"]["log"] for r in read_json_lines(out)] == [  # type: ignore[index]
        "old agent unversioned", "old agent 0.0.1"]


@pytest.mark.asyncio
async def test_reload_narrows_the_allow_list_for_the_next_connection_only(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    config = sockdir / "relay.toml"
    config.write_text('allow_cid = ["4-"]\n')
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli)
    args = ["serve", "--config", str(config), "--listen", f"unix://{sock}",
            "--output", f"file://{out}", "--spool", str(relay.config.spool)]
    relay._reloader = lambda: relay_cli.serve_config(args, {}, raising=True)
    staying = await as_cid.connect(sock, 17)
    await staying.send_batch(["before"])
    config.write_text('allow_cid = ["16"]\n')
    assert "allowed_cids" in relay.reload()
    as_cid.cids.append(17)
    reader, writer = await asyncio.open_unix_connection(str(sock))
    assert await refused(reader), "CID 17 left the allow-list but still got in"
    writer.close()
    await staying.send_batch(["after: open connections are not dropped"])
    ok = await as_cid.connect(sock, 16)
    await ok.send_batch(["16 is allowed"])
    for agent in (staying, ok):
        await agent.close()
    config.write_text('allow_cid = ["nonsense"]\n')
    assert relay.reload().startswith("failed"), "a bad file is refused, not applied"
    assert str(relay.config.allowed_cids) == "16"
    await delivered(relay)
    assert {r["record"]["log"] for r in read_json_lines(out)} == {  # type: ignore[index]
        "before", "after: open connections are not dropped", "16 is allowed"}


@pytest.mark.asyncio
async def test_reload_switches_outputs_without_losing_what_was_in_flight(
        start_relay: StartRelay, sockdir: Path) -> None:
    from fakes.fluentbit import FakeFluentBit

    sock, first = sockdir / "r.sock", sockdir / "first.jsonl"
    async with FakeFluentBit(f"unix://{sockdir}/fb.sock") as fb:
        fb.send_acks = False  # the first output takes batches but never acks them
        relay = await start_relay(f"unix://{sock}", fb.url, shutdown_timeout=0.2)
        args = ["serve", "--listen", f"unix://{sock}", "--output", f"file://{first}",
                "--spool", str(relay.config.spool)]
        relay._reloader = lambda: relay_cli.serve_config(args, {}, raising=True)
        agent = await RawAgent.connect(sock)
        await agent.send_batch(["in flight"])  # acked by the spool, stuck upstream
        await fb.wait_records(1, timeout=DEADLINE)
        assert "output" in relay.reload()
        await agent.send_batch(["after the switch"])
        await agent.close()
        await delivered(relay)
    logs = [r["record"]["log"] for r in read_json_lines(first)]  # type: ignore[index]
    assert sorted(logs) == ["after the switch", "in flight"]


def test_sighup_reloads_a_running_relay(sockdir: Path) -> None:
    config = sockdir / "relay.toml"
    config.write_text("max_connections = 5\n")
    admin, sock, out = sockdir / "admin.sock", sockdir / "r.sock", sockdir / "out.jsonl"
    log = sockdir / "relay.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [PYTHON, "-m", "parent_side", "--config", str(config), "--listen", f"unix://{sock}",
             "--output", f"file://{out}", "--spool", str(sockdir / "spool"),
             "--admin-socket", str(admin)], env=env_for_subprocess(), stderr=err)
    try:
        wait_until_sync(admin.exists, "the relay to start")
        assert query(str(admin))["relay"]["reloads"] == 0
        config.write_text("max_connections = 1\nlog_level = 'debug'\n")
        proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: query(str(admin))["relay"]["reloads"] == 1, "the reload")
        assert b"changed: max_connections, log_level" in log.read_bytes()
        config.write_text("no_such_option = 1\n")
        proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: b"no_such_option: unknown key" in log.read_bytes(),
                        "the bad file to be reported")
        assert proc.poll() is None, "a bad file on reload ended the relay"
    finally:
        stop_process(proc)
    assert proc.returncode == 0


@pytest.mark.asyncio
async def test_a_child_killed_by_a_signal_is_a_lifecycle_record_over_the_relay(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}")
    run = await start_agent(f"unix://{sock}", python_child(
        "import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGTERM)"))
    try:
        assert await within(run.wait(), "the agent") == 128 + signal.SIGTERM
        await delivered(relay)
        exits = [r["record"] for r in read_json_lines(out)
                 if r["record"].get("event") == "child_exit"]  # type: ignore[union-attr]
        assert exits and exits[0]["signal_name"] == "SIGTERM"  # type: ignore[index]
        starts = [r["record"] for r in read_json_lines(out)
                  if r["record"].get("event") == "agent_start"]  # type: ignore[union-attr]
        assert starts and starts[0]["boot_id"] and starts[0]["clock_ns"]  # type: ignore[index]
    finally:
        await cleanup(run)



@pytest.mark.asyncio
async def test_a_connection_that_never_sends_a_frame_still_gets_its_disconnected_record(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli)
    agent = await as_cid.connect(sock, 16)  # the handshake, then nothing
    await agent.close()
    await wait_until(lambda: relay_records(out, "enclave_disconnected"),
                     "the disconnected record")
    assert len(relay_records(out, "enclave_connected")) == 1


@pytest.mark.asyncio
async def test_reload_changes_the_rate_limit_of_enclaves_already_seen(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli,
                                                         rate_limit=64 << 20)
    agent = await as_cid.connect(sock, 16)
    await agent.send_batch(["seen at the old rate"])
    config = sockdir / "relay.toml"
    config.write_text('rate_limit = "256KiB"\n')
    args = ["serve", "--config", str(config), "--listen", f"unix://{sock}",
            "--output", f"file://{out}", "--spool", str(relay.config.spool)]
    relay._reloader = lambda: relay_cli.serve_config(args, {}, raising=True)
    assert "rate_limit" in relay.reload()
    big = ["r" * 1000] * 400  # ~0.4 MB a batch
    started = time.monotonic()
    for _ in range(5):  # 2 MB at 256 KiB/s after a 1 MiB burst: about 4 s
        await agent.send_batch(big)
    assert time.monotonic() - started > 2.0, "the new, lower rate was not applied"
    await agent.close()


@pytest.mark.asyncio
async def test_a_stopping_relay_delivers_its_spool_before_it_exits(
        start_relay: StartRelay, sockdir: Path) -> None:
    from fakes.fluentbit import FakeFluentBit

    async with FakeFluentBit(f"unix://{sockdir}/fb.sock", ack_delay=0.05) as fb:
        relay = await start_relay(f"unix://{sockdir}/r.sock", fb.url)
        agent = await RawAgent.connect(sockdir / "r.sock")
        for i in range(20):
            await agent.send_batch([f"line {i}"])  # acked once spooled, not delivered yet
        await agent.close()
        assert relay.spool is not None and relay.spool.backlog > 0, "nothing left to drain"
        relay.stop()
        await wait_until(lambda: relay.spool is not None and relay.spool._closed,
                         "the relay to stop")
        got = {r.record["log"] for r in fb.records if r.tag.startswith("enclave.")}
        assert got == {f"line {i}" for i in range(20)}
        assert any(r.record.get("event") == "relay_stop" for r in fb.records)


@pytest.mark.asyncio
async def test_reload_answers_what_it_applied_and_what_needs_a_restart(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}")
    spool_bytes = relay.config.spool_bytes
    args = ["serve", "--listen", f"unix://{sock}", "--output", f"file://{out}",
            "--spool", str(relay.config.spool), "--hostname", "test-relay",
            "--admin-socket", str(relay.config.admin_socket),
            "--spool-size", "2GiB", "--max-connections", "3"]
    relay._reloader = lambda: relay_cli.serve_config(args, {}, raising=True)
    assert relay.reload() == "changed: max_connections; needs a restart: spool_bytes"
    assert relay.listener.config.max_connections == 3, "the listener took its new config"
    assert relay.config.spool_bytes == spool_bytes == relay_cli.RelayConfig().spool_bytes
