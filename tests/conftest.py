"""Fixtures shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fluent_forward.endpoints import parse_endpoint
from parent_side.config import DEFAULT_ADMIN_SOCKET, DEFAULT_SPOOL, RelayConfig
from parent_side.outputs import parse_output
from parent_side.relay import Relay
from tests.fakes.nitro_cli import FakeNitroCli
from tests.helpers import short_tmpdir, within

StartRelay = Callable[..., Awaitable[Relay]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the vsock tier (a QEMU guest boot) last.

    In CI its guest image is built in the background while the other tests run
    (.ci/run); last, the tier waits for that build the least.
    """
    items.sort(key=lambda item: item.path.name == "test_vsock_tier.py")


@pytest.fixture
def sockdir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


@pytest.fixture
def nitro_cli(sockdir: Path) -> FakeNitroCli:
    """An executable fake nitro-cli whose describe-enclaves the test controls."""
    d = sockdir / "bin"
    d.mkdir()
    return FakeNitroCli(d)


@pytest_asyncio.fixture
async def start_relay() -> AsyncIterator[StartRelay]:
    """Start in-process relays; all are stopped at the end of the test.

    Each relay's spool and admin socket are in a temporary folder of its own: the
    defaults are the system paths a real relay on the same machine uses.
    """
    running: list[tuple[Relay, asyncio.Task[int]]] = []
    folders = contextlib.ExitStack()

    async def start(listen: str, output: str, **options: Any) -> Relay:
        """A relay; with a fresh spool directory unless ``spool=`` is given (None: off),
        and an admin socket beside it unless ``admin_socket=`` is given (None: none)."""
        folder = folders.enter_context(short_tmpdir())
        options.setdefault("spool", str(folder / "spool"))
        options.setdefault("admin_socket", str(folder / "admin.sock"))
        refuse_system_paths(options["spool"], options["admin_socket"])
        config = RelayConfig(listen=parse_endpoint(listen, listen=True),
                             output=parse_output(output), hostname="test-relay", **options)
        relay = Relay(config)
        task = asyncio.create_task(relay.run(handle_signals=False))
        ready = asyncio.ensure_future(relay.ready.wait())
        done, _ = await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()  # raises what stopped it
        running.append((relay, task))
        return relay

    yield start
    for relay, task in running:
        relay.stop()
        with contextlib.suppress(Exception):
            await within(task, "the relay to stop")
    folders.close()


#: Where a relay installed on this machine keeps its spool and admin socket.
SYSTEM_PATHS = (DEFAULT_SPOOL, os.path.dirname(DEFAULT_ADMIN_SOCKET))
_ABSENT_AT_START = pytest.StashKey[list[str]]()


def refuse_system_paths(*paths: str | None) -> None:
    """Fail a test whose relay would use a system path instead of its own folder."""
    for path in paths:
        if path is not None and any(path == p or path.startswith(p + "/")
                                    for p in SYSTEM_PATHS):
            pytest.fail(f"a test relay must not use {path}: give it a temporary folder")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_ABSENT_AT_START] = [p for p in SYSTEM_PATHS if not os.path.lexists(p)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI (one run on the machine), fail the run if a test created a system path.

    Elsewhere another run or a real relay may create them meanwhile, so it is not checked.
    """
    if os.environ.get("CI") != "true" or _ABSENT_AT_START not in session.stash:
        return
    created = [p for p in session.stash[_ABSENT_AT_START] if os.path.lexists(p)]
    if created:
        session.config.get_terminal_writer().line(
            f"error: tests created {', '.join(created)}: every test relay must keep its "
            "spool and admin socket in the test's own temporary folder", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED



def relay_url(relay: Relay) -> str:
    """The URL agents reach ``relay`` at (port 0 resolved)."""
    ep = relay.config.listen
    if ep.scheme.value == "tcp":
        assert relay.listener.server is not None
        port = relay.listener.server.sockets[0].getsockname()[1]
        return f"tcp://{ep.host}:{port}"
    return str(ep)


async def delivered(relay: Relay) -> None:
    """Wait until the relay's spool has handed everything to its output (acked)."""
    from tests.helpers import wait_until

    spool = relay.spool
    if spool is not None:
        await wait_until(lambda: spool.backlog == 0, "the spool to deliver its backlog")
