"""The sd_notify helper: environment parsing and datagrams, over a real socketpair-free bind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from parent_side.systemd import Notifier, notify_address
from tests.helpers import short_tmpdir


def test_abstract_addresses_start_with_a_nul_byte() -> None:
    assert notify_address("@foo/bar") == b"\0foo/bar"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_from_environ_outside_systemd_is_inert() -> None:
    n = Notifier.from_environ({})
    assert n == Notifier(None, None)
    assert not n.notify("READY=1")
    assert n.start_watchdog() is None


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1234"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "999"}, None),  # another process's
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(
        env: dict[str, str], interval: float | None) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/x", **env}, pid=1234)
    assert n.watchdog_interval == interval


def test_no_watchdog_without_a_notify_socket() -> None:
    assert Notifier.from_environ({"WATCHDOG_USEC": "1000000"}).watchdog_interval is None


@pytest.fixture
def receiver() -> Iterator[tuple[str, socket.socket]]:
    with short_tmpdir() as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        path = str(Path(d) / "notify")
        s.bind(path)
        s.settimeout(5)
        yield path, s


def test_ready_and_stopping_datagrams(receiver: tuple[str, socket.socket]) -> None:
    path, s = receiver
    n = Notifier(path)
    assert n.ready("listening")
    assert s.recv(4096) == b"READY=1\nSTATUS=listening"
    assert n.stopping()
    assert s.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "gone"))
    assert not n.notify("READY=1")
    assert "cannot notify systemd" in caplog.text


@pytest.mark.asyncio
async def test_watchdog_task_pings_until_stopped(receiver: tuple[str, socket.socket]) -> None:
    path, s = receiver
    s.setblocking(False)
    n = Notifier(path, watchdog_interval=0.01)
    task = n.start_watchdog()
    assert task is not None
    loop = asyncio.get_running_loop()
    for _ in range(3):
        assert await asyncio.wait_for(loop.sock_recv(s, 4096), 5) == b"WATCHDOG=1"
    await Notifier.stop_watchdog(task)
    assert task.cancelled()
