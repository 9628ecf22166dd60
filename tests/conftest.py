"""Fixtures shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fluent_forward.endpoints import parse_endpoint
from parent_side.config import RelayConfig
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
    """Start in-process relays; all are stopped at the end of the test."""
    running: list[tuple[Relay, asyncio.Task[int]]] = []
    spools = contextlib.ExitStack()

    async def start(listen: str, output: str, **options: Any) -> Relay:
        """A relay; with a fresh spool directory unless ``spool=`` is given (None: off)."""
        if "spool" not in options:
            options["spool"] = str(spools.enter_context(short_tmpdir()) / "spool")
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
    spools.close()


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
