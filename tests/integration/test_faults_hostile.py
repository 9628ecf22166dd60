"""Fault tests of issue 17: a relay attacked as an attacker would, an honest agent alongside.

Each failed on the code before its fix: a reserve of connection slots keeps an
honest enclave in while another holds all the rest; huge chunk ids from peers that
never read their acks no longer grow the relay's memory (measured from /proc, a real
relay subprocess); a corrupt stretch in the middle of a spool segment costs only the
batch it hit, across a SIGKILL and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.conftest import StartRelay, delivered
from tests.fakes.nitro_cli import FakeNitroCli
from tests.helpers import read_json_lines
from tests.integration.test_relay_bad_input import RawAgent
from tests.integration.test_trust import refused, relay_with_enclaves

pytestmark = pytest.mark.asyncio


async def test_one_enclave_holding_every_slot_it_may_never_locks_another_out(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    """Its own cap raised to all the slots, one enclave opens connections until
    refused and holds them; another enclave, with none open, still gets in (issue 17:
    256 drip connections held every slot and the honest agent was refused)."""
    relay, as_cid, sock, out = await relay_with_enclaves(
        start_relay, sockdir, nitro_cli, max_connections=40, max_connections_per_enclave=40)
    held: list[RawAgent] = []
    try:
        while True:
            as_cid.cids.append(16)
            reader, writer = await asyncio.open_unix_connection(str(sock))
            if await refused(reader):  # else it read the relay's HELO
                writer.close()
                break
            held.append(RawAgent(reader, writer))
            assert len(held) <= 40
        assert len(held) < 40, "the hog took every slot"
        honest = await as_cid.connect(sock, 17)
        await honest.send_batch(["an enclave with none open gets in"])
        await honest.close()
        # And the hog cannot take the reserve with a second enclave's name: it has one.
        as_cid.cids.append(16)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert await refused(reader)
        writer.close()
    finally:
        for agent in held:
            with contextlib.suppress(ConnectionError):
                await agent.close()
    await delivered(relay)
    assert [r["record"]["log"] for r in read_json_lines(out)] == [  # type: ignore[index]
        "an enclave with none open gets in"]
    assert relay.listener.stats.refused_limit == 2
