"""No outcome left unread and no task left unheld: a failed send nobody waits for is
read (asyncio would log "Future exception was never retrieved" for it, once a line),
and a task the relay starts on the side is held, and stopped with its owner."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest

from fluent_forward.entries import EventTime, pack_entry
from parent_side.console import _Sender
from parent_side.forwarder import Forwarder
from parent_side.identity import EnclaveInfo
from parent_side.outputs import RelayBatch
from parent_side.spool import Spool
from tests.helpers import wait_until

pytestmark = pytest.mark.asyncio


class RefusingOutput:
    """An output that takes every batch and fails it, as one whose Fluent Bit keeps
    refusing or is gone."""

    def __init__(self) -> None:
        self.submitted = 0

    async def submit(self, batch: RelayBatch) -> asyncio.Future[None]:
        self.submitted += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(ConnectionError("Fluent Bit refused the batch"))
        return fut


def never_retrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # an unread future's complaint comes when it is collected
    return [r.getMessage() for r in caplog.records
            if "never retrieved" in r.getMessage()]


async def test_console_lines_the_output_fails_are_counted_and_logged_not_left_unread(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    output = RefusingOutput()
    sender = _Sender(output)  # type: ignore[arg-type]
    sending = asyncio.create_task(sender.run())
    enclave = EnclaveInfo(cid=16, enclave_id="i-0abc-enc0def")
    try:
        for i in range(3):
            sender.write(enclave, b"line %d" % i, 1_700_000_000_000_000_000 + i)
        await wait_until(lambda: sender.failed == 3, "the three failures to be read")
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    assert output.submitted == 3
    warned = [r.getMessage() for r in caplog.records if "console lines so far" in r.getMessage()]
    assert warned == ["the output failed 1 console lines so far: Fluent Bit refused the batch"]
    assert never_retrieved(caplog) == []


async def test_a_retry_the_forwarder_started_is_stopped_with_it(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    spool.open()
    output = RefusingOutput()
    forwarder = Forwarder(spool, output, on_delivered=lambda *_: None)  # type: ignore[arg-type]
    running = asyncio.create_task(forwarder.run())
    try:
        entries = pack_entry(EventTime.from_ns(1_700_000_000_000_000_000), {"log": "x"})
        await spool.append("app.stdout", entries, 1)
        await wait_until(lambda: output.submitted == 1, "the batch to be sent and failed")

        def retries() -> list[asyncio.Task[object]]:
            return [t for t in asyncio.all_tasks() if not t.done()
                    and t.get_coro().__qualname__ == "Forwarder._retry"]  # type: ignore[union-attr]
        await wait_until(lambda: len(retries()) == 1, "a retry to wait out its backoff")
        retry = retries()[0]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await spool.close()
    assert retry.cancelled(), "the retry outlived the forwarder that started it"
