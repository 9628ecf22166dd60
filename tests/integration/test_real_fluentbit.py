"""The relay against the real Fluent Bit (tests/realfb.py): what the fake cannot prove.

Skipped, saying why, where no Fluent Bit is found; under CI=true they must run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StartRelay
from tests.helpers import DEADLINE, wait_until
from tests.integration.test_relay_bad_input import RawAgent
from tests.realfb import RealFluentBit

pytestmark = pytest.mark.asyncio


async def test_fluent_bit_with_an_empty_shared_key_gets_its_helo_answered(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``empty_shared_key true`` makes Fluent Bit greet with HELO and wait for a PING
    (whose digest uses the empty key) before it takes anything; a relay with no key
    answers it from its second connection on."""
    fb = RealFluentBit(sockdir / "fb", input_extra="empty_shared_key true")
    await fb.start()
    try:
        relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, spool=None)
        agent = await RawAgent.connect(sockdir / "relay.sock")
        await agent.send_batch(["keyless handshake"])  # acked once Fluent Bit acked it
        await wait_until(lambda: "keyless handshake" in fb.logs(), "the line in Fluent Bit's "
                         "output", timeout=DEADLINE)
        assert relay.output.status()["connected"]
        assert "asks for a handshake although no shared key" in caplog.text
        assert relay.output.client.stats.handshakes >= 1
        await agent.close()
    finally:
        await fb.stop()
