"""A gap in an agent run's sequence is found once, by the relay's one ``Runs``.

An agent that dropped batches (overflow ``drop_oldest``) skips their numbers. The relay
counts the missing batches for the enclave and, with a spool, in the spool's status;
it warns once per gap; and with a spool it still knows the run after a restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fluent_forward import __version__
from parent_side.relay import Relay
from tests.conftest import StartRelay
from tests.helpers import wait_until
from tests.integration.test_relay_bad_input import RawAgent

pytestmark = pytest.mark.asyncio

BOOT = b"gappyrun"


async def connect(path: Path) -> RawAgent:
    """Our agent as the relay sees it: a versioned handshake, then numbered batches."""
    agent = await RawAgent.connect(path, version=__version__)
    agent.boot = BOOT
    return agent


async def send(agent: RawAgent, *seqs: int) -> None:
    """Send batches numbered ``seqs`` of the run, each acked."""
    for seq in seqs:
        agent.seq = seq - 1  # send_batch numbers it seq
        await agent.send_batch([f"batch {seq}"])


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
    agent = await connect(sock)
    await send(agent, 1, 2, 2, 5, 6, 9)  # a resend of 2; 3-4 and 7-8 never came
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
    agent = await connect(sock)
    await send(agent, 1, 2)
    await agent.close()
    first.stop()
    assert first.spool is not None
    await wait_until(lambda: first.spool is not None and first.spool._lock_fd < 0,
                     "the first relay to release its spool")
    second = await start_relay(f"unix://{sock}", upstream, spool=spool)
    agent = await connect(sock)
    await send(agent, 5)  # 3 and 4 were dropped while the relay restarted
    await agent.close()
    assert enclave_gaps(second) == 2, "the run was known from the spool"
    assert second.snapshot()["spool"]["gaps"] == 2
    assert len(warnings_of_gaps(caplog)) == 1

