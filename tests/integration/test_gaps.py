"""A gap in an agent run's sequence is found once, by the relay's one ``Runs``.

An agent that dropped batches (overflow ``drop_oldest``) skips their numbers. The relay
counts the missing batches for the enclave and, with a spool, in the spool's status;
it warns once per gap; and with a spool it still knows the run after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from fluent_forward import __version__
from fluent_forward.codec import (
    Ack,
    EventTime,
    FrameDecoder,
    Helo,
    Role,
    encode_packed_forward,
    pack_entry,
)
from fluent_forward.conventions import chunk_id
from fluent_forward.handshake import ClientHandshake, Pong
from parent_side.relay import Relay
from tests.conftest import StartRelay
from tests.helpers import wait_until, within

pytestmark = pytest.mark.asyncio

BOOT = b"gappyrun"


class Agent:
    """Our agent as the relay sees it: a versioned handshake, then numbered batches."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(Role.CLIENT)

    @classmethod
    async def connect(cls, path: Path) -> Agent:
        agent = cls(*await asyncio.open_unix_connection(str(path)))
        helo = await agent.next_frame()
        assert isinstance(helo, Helo)
        hs = ClientHandshake(hostname="gappy", version=__version__)
        agent.writer.write(hs.ping(helo))
        assert isinstance(await agent.next_frame(), Pong)
        return agent

    async def next_frame(self) -> object:
        while True:
            data = await within(self.reader.read(65536), "a frame from the relay")
            assert data, "the relay closed the connection"
            frames = self.decoder.feed(data)
            if frames:
                return frames[0]

    async def send(self, *seqs: int) -> None:
        for seq in seqs:
            chunk = chunk_id(BOOT, seq)
            entries = pack_entry(EventTime(1_700_000_000, 0), {"log": f"batch {seq}"})
            self.writer.write(encode_packed_forward("app.stdout", entries, {"chunk": chunk}))
            assert await self.next_frame() == Ack(chunk)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def warnings_of_gaps(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "skipped" in r.getMessage()]


def enclave_gaps(relay: Relay) -> int:
    (enclave,) = relay.snapshot()["enclaves"]
    return int(enclave["gaps"])


@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "memory-only"])
async def test_a_gap_is_counted_for_the_enclave_and_warned_once(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture,
        spooled: bool) -> None:
    caplog.set_level(logging.WARNING, logger="parent_side")
    sock = sockdir / "r.sock"
    options = {} if spooled else {"spool": None}
    relay = await start_relay(f"unix://{sock}", f"file://{sockdir / 'out.jsonl'}", **options)
    agent = await Agent.connect(sock)
    await agent.send(1, 2, 2, 5, 6, 9)  # a resend of 2; 3-4 and 7-8 never came
    await agent.close()
    assert enclave_gaps(relay) == 4
    if spooled:
        assert relay.snapshot()["spool"]["gaps"] == 4
    assert len(warnings_of_gaps(caplog)) == 2, warnings_of_gaps(caplog)
    assert "local: agent run" in warnings_of_gaps(caplog)[0], "the warning names the enclave"


async def test_the_spool_follows_a_run_across_a_relay_restart(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="parent_side")
    sock, spool = sockdir / "r.sock", str(sockdir / "spool")
    upstream = f"unix://{sockdir / 'nobody-listens.sock'}"  # batches stay in the spool
    first = await start_relay(f"unix://{sock}", upstream, spool=spool, shutdown_timeout=0.0)
    agent = await Agent.connect(sock)
    await agent.send(1, 2)
    await agent.close()
    first.stop()
    assert first.spool is not None
    await wait_until(lambda: first.spool is not None and first.spool._lock_fd < 0,
                     "the first relay to release its spool")
    second = await start_relay(f"unix://{sock}", upstream, spool=spool)
    agent = await Agent.connect(sock)
    await agent.send(5)  # 3 and 4 were dropped while the relay restarted
    await agent.close()
    assert enclave_gaps(second) == 2, "the run was known from the spool"
    assert second.snapshot()["spool"]["gaps"] == 2
    assert len(warnings_of_gaps(caplog)) == 1

