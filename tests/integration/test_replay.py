"""The replay window (issue 16): what Fluent Bit acked and then lost in an abrupt end
is sent again when a new Fluent Bit answers; a pause replays nothing; and every frame
the relay sends is PackedForward, the one mode whose ack Fluent Bit withholds when it
could not append (Forward and Message mode entries were acked anyway before v5.1).

Fluent Bit is the fake here, so the loss is exact: records it acked are taken out of
what it "stored", as fluent/fluent-bit#10952 reports of the real one after a SIGKILL.
tests/integration/test_real_fluentbit.py measures the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.fluentbit import Batch, FakeFluentBit
from tests.conftest import StartRelay
from tests.helpers import DEADLINE, wait_until
from tests.integration.test_relay_bad_input import RawAgent

pytestmark = pytest.mark.asyncio


def logs(fb: FakeFluentBit) -> list[str]:
    return [str(r.record.get("log")) for r in fb.records if r.tag.endswith("app.stdout")]


class Modes:
    """Records the Forward mode of every frame Fluent Bit is shown."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, batch: Batch) -> bool:
        self.seen.add(batch.mode)
        return False  # never close: only watching


async def test_what_fluent_bit_acked_then_lost_in_a_restart_is_sent_again(
        start_relay: StartRelay, sockdir: Path) -> None:
    modes = Modes()
    fb = FakeFluentBit(f"unix://{sockdir}/fb.sock", close_on_chunk=modes)
    await fb.start()
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, replay_window=3600.0)
    agent = await RawAgent.connect(sockdir / "relay.sock")
    try:
        lines = [f"batch {b} line {i}" for b in range(20) for i in range(50)]
        for b in range(20):
            await agent.send_batch(lines[b * 50:(b + 1) * 50])
        assert relay.spool is not None
        spool = relay.spool
        await wait_until(lambda: logs(fb) == lines and spool.backlog == 0,
                         "Fluent Bit to ack every batch")
        # It dies abruptly and loses the last five batches it had acked.
        lost = set(lines[15 * 50:])
        await fb.stop()
        fb.records[:] = [r for r in fb.records if r.record.get("log") not in lost]
        client = relay.output.client  # type: ignore[attr-defined]
        refused = client.stats.connect_failures
        await wait_until(lambda: client.stats.connect_failures > refused,
                         "the relay to find it gone")
        await fb.start()  # a new Fluent Bit
        await fb.wait_for(lambda: set(logs(fb)) == set(lines), timeout=DEADLINE,
                          what="the lost batches, sent again")
        assert relay.forwarder is not None and relay.forwarder.replays == 1
        # Duplicates: what was acked within the window and not lost, counted, bounded.
        assert len(logs(fb)) - len(lines) <= relay.forwarder.replayed_records - len(lost)
        assert modes.seen == {"packed"}, modes.seen
    finally:
        await agent.close()
        await fb.stop()


async def test_a_paused_fluent_bit_gets_no_replay(start_relay: StartRelay,
                                                  sockdir: Path) -> None:
    """Under backpressure Fluent Bit closes every connection, the same process all
    along: that loses nothing, so nothing is sent twice."""
    modes = Modes()
    fb = FakeFluentBit(f"unix://{sockdir}/fb.sock", close_on_chunk=modes)
    await fb.start()
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, replay_window=3600.0)
    agent = await RawAgent.connect(sockdir / "relay.sock")
    try:
        await agent.send_batch(["before the pause"])
        await fb.wait_for(lambda: logs(fb) == ["before the pause"], timeout=DEADLINE,
                          what="the first line")
        fb.pause()
        await wait_until(lambda: not relay.output.connected, "the pause to close the relay")
        fb.resume()
        await agent.send_batch(["after the pause"])
        await fb.wait_for(lambda: "after the pause" in logs(fb), timeout=DEADLINE,
                          what="the line after the pause")
        assert logs(fb) == ["before the pause", "after the pause"]
        assert relay.forwarder is not None and relay.forwarder.replays == 0
        assert modes.seen == {"packed"}
    finally:
        await agent.close()
        await fb.stop()
