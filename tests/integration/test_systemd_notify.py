"""The relay under a fake systemd: a real AF_UNIX datagram socket as ``$NOTIFY_SOCKET``.

The relay runs as a real subprocess (``python -m parent_side``), listening on a Unix
socket with the stdout output, exactly as ``Type=notify`` with ``WatchdogSec=`` would
start it. The test reads the datagrams systemd would read.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    DEADLINE,
    MS,
    PYTHON,
    env_for_subprocess,
    short_tmpdir,
    stop_process,
    wait_until_sync,
)

#: systemd passes microseconds; the relay pings at half of it (100 ms here).
WATCHDOG_USEC = 200_000


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``: collects every assignment sent."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def poll(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.messages.append(data.decode().split("\n"))

    def count(self, assignment: str) -> int:
        self.poll()
        return sum(assignment in m for m in self.messages)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


def start_relay(sockdir: Path, notify_socket: str, **env: str) -> subprocess.Popen[bytes]:
    with (sockdir / "relay.err").open("wb") as err:
        return subprocess.Popen(
            [PYTHON, "-m", "parent_side", "--listen", f"unix://{sockdir}/relay.sock",
             "--output", "stdout", "--log-level", "warning", "--spool", f"{sockdir}/spool",
             "--admin-socket", f"{sockdir}/admin.sock"],
            stdout=subprocess.DEVNULL, stderr=err,
            env=env_for_subprocess(NOTIFY_SOCKET=notify_socket, **env))


def stderr_of(sockdir: Path) -> str:
    return (sockdir / "relay.err").read_text(errors="replace")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_relay_sends_ready_watchdog_pings_and_stopping(sockdir: Path, abstract: bool) -> None:
    address = f"@nel-notify-{sockdir.name}" if abstract else str(sockdir / "notify")
    systemd = FakeSystemd(address)
    relay = start_relay(sockdir, address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        wait_until_sync(lambda: systemd.count("READY=1") == 1 or relay.poll() is not None,
                        "READY=1")
        assert relay.poll() is None, stderr_of(sockdir)
        assert (sockdir / "relay.sock").is_socket(), "READY=1 only once listening"
        ready = next(m for m in systemd.messages if "READY=1" in m)
        assert any(a.startswith("STATUS=listening on unix://") for a in ready)

        already = systemd.count("WATCHDOG=1")
        start = time.monotonic()
        wait_until_sync(lambda: systemd.count("WATCHDOG=1") >= already + 4,
                        "four more WATCHDOG=1 pings")
        # Four more pings at 100 ms intervals take at least 0.3 s (the first may come
        # at once): pinging in a tight loop would be faster than that.
        assert time.monotonic() - start >= 250 * MS

        assert systemd.count("STOPPING=1") == 0
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(DEADLINE) == 0, stderr_of(sockdir)
        assert systemd.count("STOPPING=1") == 1
        assert systemd.count("READY=1") == 1
    finally:
        stop_process(relay)
        systemd.close()


def test_no_watchdog_pings_without_watchdog_usec(sockdir: Path) -> None:
    address = str(sockdir / "notify")
    systemd = FakeSystemd(address)
    relay = start_relay(sockdir, address)
    try:
        wait_until_sync(lambda: systemd.count("READY=1") == 1, "READY=1")
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(DEADLINE) == 0
        assert systemd.count("STOPPING=1") == 1
        assert systemd.count("WATCHDOG=1") == 0
    finally:
        stop_process(relay)
        systemd.close()
