"""ForwardClient's retry rule: the network's failures are retried quietly, a bug loudly.

What the client catches decides it (fluent_forward.aio): ``TransportError`` and
``ProtocolError`` are logged as one line and retried; anything else is a bug, logged
with its traceback, and the client still connects again instead of dying.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from enclave_side.buffer import Batch, Buffer
from fluent_forward.aio import ForwardClient
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.handshake import ClientHandshake
from tests.conftest import StartRelay, delivered
from tests.helpers import read_json_lines, wait_until

pytestmark = pytest.mark.asyncio

LOGGER = "tests.forward_client"


class BuggySource(Buffer):
    """A buffer whose first ``next_batch`` fails as a bug would."""

    def __init__(self) -> None:
        super().__init__(boot_id=b"buggy-ag", max_bytes=1 << 20, batch_bytes=1 << 16,
                         flush_interval=0.01)
        self.bugs = 1

    async def next_batch(self, window: int) -> Batch:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug in the source")
        return await super().next_batch(window)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_bug_is_logged_with_its_traceback_and_the_client_connects_again(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}")
    source = BuggySource()
    source.add("app", pack_entry(EventTime(1, 0), {"log": "after the bug"}), 1)
    source.seal_all()
    client = ForwardClient(parse_endpoint(f"unix://{sock}"), source,
                           ClientHandshake(hostname="buggy"), logger=logging.getLogger(LOGGER))
    task = asyncio.create_task(client.run())
    try:
        await wait_until(lambda: client.stats.connects == 2, "a second connection")
        await wait_until(lambda: source.stats().acked_batches == 1, "the batch's ack")
    finally:
        await stop(task)
    await delivered(relay)
    assert [r["record"]["log"] for r in read_json_lines(out)] == ["after the bug"]  # type: ignore[index]
    (bug,) = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert isinstance(bug.exc_info[1], RuntimeError)
    assert client.stats.last_error == "a bug in the source"


async def test_a_transport_error_is_retried_with_one_line_and_no_traceback(
        sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = Buffer(boot_id=b"nobody-a", max_bytes=1 << 20, batch_bytes=1 << 16,
                    flush_interval=0.01)
    client = ForwardClient(parse_endpoint(f"unix://{sockdir / 'nobody.sock'}"), source,
                           ClientHandshake(hostname="lonely"), max_backoff=0.01,
                           logger=logging.getLogger(LOGGER))
    task = asyncio.create_task(client.run())
    try:
        await wait_until(lambda: client.stats.connect_failures >= 3, "three failed connects")
    finally:
        await stop(task)
    mine = [r for r in caplog.records if r.name == LOGGER]
    assert mine and all(r.exc_info is None for r in mine)
    assert all("retrying" in r.getMessage() for r in mine)
    assert not any("unexpectedly" in r.getMessage() for r in mine)
