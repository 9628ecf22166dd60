"""``enclave-log-relay console``: debug-mode consoles followed, as enclaves come and go.

A fake ``nitro-cli`` lists enclaves (debug and not) and serves ``console`` streams the
test writes; the real command runs as a subprocess in both output modes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.nitro_cli import ENCLAVES, FakeNitroCli
from tests.helpers import PYTHON, env_for_subprocess, read_json_lines, stop_process, wait_until_sync

DEBUG_A = dict(ENCLAVES[1], EnclaveName="debug-a", EnclaveID="i-1-enc000a", EnclaveCID=20)
DEBUG_B = dict(ENCLAVES[1], EnclaveName="debug-b", EnclaveID="i-1-enc000b", EnclaveCID=21)
PROD = ENCLAVES[0]  # not in debug mode: it has no console


def console(nitro: FakeNitroCli, *args: str, stdout: Path | None = None
            ) -> subprocess.Popen[bytes]:
    """Run the console command; its log goes to ``console.log`` beside the fake nitro-cli."""
    out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
    err = (nitro.dir / "console.log").open("wb")
    try:
        return subprocess.Popen([PYTHON, "-m", "parent_side", "console", "--nitro-cli",
                                 str(nitro.path), "--interval", "100ms", *args],
                                stdout=out, stderr=err, env=env_for_subprocess())
    finally:
        err.close()
        if stdout is not None:
            out.close()  # type: ignore[union-attr]


def logged(nitro: FakeNitroCli) -> str:
    return (nitro.dir / "console.log").read_text(errors="replace")


def lines_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


@pytest.fixture
def proc_cleanup() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop_process(p)


def test_stdout_mode_follows_debug_enclaves_and_reattaches(
        nitro_cli: FakeNitroCli, sockdir: Path,
        proc_cleanup: list[subprocess.Popen[bytes]]) -> None:
    nitro_cli.set([PROD, DEBUG_A])
    out = sockdir / "console.jsonl"
    proc = console(nitro_cli, "--stdout", "--admin-socket", "none", stdout=out)
    proc_cleanup.append(proc)
    wait_until_sync(lambda: nitro_cli.attaches("i-1-enc000a") == 1, "the first attach")
    nitro_cli.console("i-1-enc000a", "boot 1", "app says hi")
    nitro_cli.console("i-0abc-enc0001", "never read: no console without debug mode")
    wait_until_sync(lambda: len(lines_of(out)) == 2, "the first lines")
    first = lines_of(out)
    assert [x["log"] for x in first] == ["boot 1", "app says hi"]
    assert first[0]["enclave"] == "debug-a" and first[0]["enclave_id"] == "i-1-enc000a"
    assert first[0]["cid"] == 20 and isinstance(first[0]["time"], float)

    # The console stream ends while the enclave still runs: it re-attaches.
    nitro_cli.end_console("i-1-enc000a")
    wait_until_sync(lambda: nitro_cli.attaches("i-1-enc000a") == 2, "a re-attach")
    nitro_cli.console("i-1-enc000a", "after re-attach")
    # A second debug enclave appears.
    nitro_cli.set([PROD, DEBUG_A, DEBUG_B])
    wait_until_sync(lambda: nitro_cli.attaches("i-1-enc000b") == 1, "b's attach")
    nitro_cli.console("i-1-enc000b", "b is up")
    wait_until_sync(lambda: {x["log"] for x in lines_of(out)} >= {"after re-attach", "b is up"},
                    "lines from both")
    # debug-a restarts: a new EnclaveID under the same name.
    restarted = dict(DEBUG_A, EnclaveID="i-1-enc000c")
    nitro_cli.set([PROD, restarted, DEBUG_B])
    wait_until_sync(lambda: nitro_cli.attaches("i-1-enc000c") == 1, "the new attach")
    nitro_cli.console("i-1-enc000c", "a again")
    wait_until_sync(lambda: any(x["log"] == "a again" and x["enclave_id"] == "i-1-enc000c"
                                for x in lines_of(out)), "the restarted enclave")
    # debug-b vanishes: its console is no longer followed.
    nitro_cli.set([PROD, restarted])
    wait_until_sync(lambda: "no longer following debug-b's console: it is gone" in
                    logged(nitro_cli), "debug-b to be let go")
    nitro_cli.console("i-1-enc000b", "b is gone, this is never read")
    nitro_cli.console("i-1-enc000c", "marker")
    wait_until_sync(lambda: any(x["log"] == "marker" for x in lines_of(out)), "the marker")
    logs = [x["log"] for x in lines_of(out)]
    assert "b is gone, this is never read" not in logs
    assert "never read: no console without debug mode" not in logs
    assert nitro_cli.attaches("i-0abc-enc0001") == 0
    assert len(logs) == len(set(logs)), "a line was sent twice"


def test_output_mode_sends_through_the_relays_output_tagged_per_enclave(
        nitro_cli: FakeNitroCli, sockdir: Path,
        proc_cleanup: list[subprocess.Popen[bytes]]) -> None:
    nitro_cli.set([DEBUG_A, DEBUG_B])
    out = sockdir / "out.jsonl"
    proc_cleanup.append(console(nitro_cli, "--output", f"file://{out}", "--admin-socket",
                                "none"))
    wait_until_sync(lambda: nitro_cli.attaches("i-1-enc000a") == 1
                    and nitro_cli.attaches("i-1-enc000b") == 1, "both attaches")
    nitro_cli.console("i-1-enc000a", "from a")
    nitro_cli.console("i-1-enc000b", "from b")
    wait_until_sync(lambda: len(read_json_lines(out)) == 2, "both lines")
    got = {r["record"]["log"]: r for r in read_json_lines(out)}  # type: ignore[index]
    assert got["from a"]["tag"] == "enclave.debug-a.console"
    assert got["from b"]["tag"] == "enclave.debug-b.console"
    assert got["from a"]["record"]["enclave_id"] == "i-1-enc000a"  # type: ignore[index]


class FakeRelayStatus:
    """A relay admin socket that says which enclaves have their agent connected."""

    def __init__(self, path: Path, connected: list[str]) -> None:
        self.path = path
        self.connected = connected
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                snap = {"relay": {}, "spool": {}, "upstream": {}, "enclaves": [
                    {"name": "x", "enclave_id": e, "connected": True} for e in self.connected]}
                conn.sendall(json.dumps(snap).encode())

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)


def test_an_enclave_whose_agent_is_connected_is_skipped(
        nitro_cli: FakeNitroCli, sockdir: Path,
        proc_cleanup: list[subprocess.Popen[bytes]]) -> None:
    nitro_cli.set([DEBUG_A, DEBUG_B])
    status = FakeRelayStatus(sockdir / "admin.sock", connected=["i-1-enc000a"])
    out = sockdir / "console.jsonl"
    try:
        proc_cleanup.append(console(nitro_cli, "--stdout", "--admin-socket",
                                    str(status.path), stdout=out))
        wait_until_sync(lambda: nitro_cli.attaches("i-1-enc000b") == 1, "b's attach")
        nitro_cli.console("i-1-enc000a", "a has an agent: this would be a duplicate")
        nitro_cli.console("i-1-enc000b", "b has no agent")
        wait_until_sync(lambda: lines_of(out), "b's line")
        nitro_cli.console("i-1-enc000b", "marker")
        wait_until_sync(lambda: len(lines_of(out)) == 2, "the marker")
        assert [x["log"] for x in lines_of(out)] == ["b has no agent", "marker"]
        assert nitro_cli.attaches("i-1-enc000a") == 0
    finally:
        status.close()
