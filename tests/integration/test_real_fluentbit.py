"""The relay against the real Fluent Bit (tests/fluentbit/peer.py): what the fake cannot prove.

Skipped, saying why, where no Fluent Bit is found; under CI=true they must run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StartRelay
from tests.fluentbit.peer import RealFluentBit
from tests.helpers import DEADLINE, wait_until
from tests.integration.test_faults import (
    SLOW,
    UPSTREAM_WINDOW,
    Procs,
    Writer,
    max_records_per_batch,
    procs,  # noqa: F401 - a fixture
    show,
)
from tests.integration.test_relay_bad_input import RawAgent
from tests.oracle import check, parse_line
from tests.realfb import fluent_bit_binary

pytestmark = pytest.mark.asyncio


async def test_fluent_bit_with_an_empty_shared_key_gets_its_helo_answered(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``empty_shared_key true`` makes Fluent Bit greet with HELO and wait for a PING
    (whose digest uses the empty key) before it takes anything; a relay with no key
    answers it from its second connection on."""
    fb = RealFluentBit(fluent_bit_binary(), sockdir / "fb",
                       input_options=[("empty_shared_key", "true")])
    await fb.start()
    try:
        relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, spool=None)
        agent = await RawAgent.connect(sockdir / "relay.sock")
        await agent.send_batch(["keyless handshake"])  # acked once Fluent Bit acked it
        await wait_until(lambda: "keyless handshake" in fb.out.all_logs(),
                         "the line in Fluent Bit's output", timeout=DEADLINE)
        assert relay.output.status()["connected"]
        assert "asks for a handshake although no shared key" in caplog.text
        assert relay.output.client.stats.handshakes >= 1
        await agent.close()
    finally:
        await fb.stop()


@pytest.mark.slow
async def test_fluent_bit_sigkilled_under_load_loses_nothing_thanks_to_the_replay_window(
        procs: Procs, sockdir: Path) -> None:  # noqa: F811
    """The real Fluent Bit, with filesystem storage, storage.sync full and checksums,
    loses records it acked when SIGKILLed (fluent/fluent-bit#10952; 4 runs of 5 lost
    545 to 1,575 lines here without the window). The relay's replay window sends again
    what it acked in the last second before it died."""
    rate, batch, window = 10_000, 512 * 1024, 1.0
    # Filesystem storage, synced and checksummed: the set-up of fluent-bit#10952.
    fb = RealFluentBit(fluent_bit_binary(), sockdir / "fb", storage="filesystem",
                       service_options=[("storage.sync", "full"), ("storage.checksum", "on"),
                                        ("storage.backlog.mem_limit", "64M")])
    await fb.start()
    relay = procs.relay(f"unix://{sockdir}/relay.sock", fb.url, "--admin-socket", "none",
                        "--replay-window", f"{window}s")
    writer = Writer("fbkill", 30_000, sockdir, ("--rate", str(rate)))
    try:
        await relay.start()
        run = await procs.agent(relay.listen, writer.command)
        await wait_until(lambda: writer.progress()[0] >= writer.count // 2, "half the lines",
                         timeout=SLOW)
        await fb.kill()
        await wait_until(lambda: "No such file" in relay.log() or "refused" in relay.log(),
                         "the relay to find Fluent Bit gone")
        await fb.start()
        assert await run.wait(timeout=SLOW) == 0, run.stderr.decode(errors="replace")[-3000:]
        await wait_until(lambda: distinct(fb, writer.source) >= writer.count,
                         "every line in Fluent Bit's output", timeout=SLOW)
        report = check([x for x in fb.out.all_logs() if x.startswith(writer.source + " ")],
                       {writer.source: writer.count})
        show("Fluent Bit SIGKILL, replay window 1s", report)
        assert report.lost == 0 and report.corrupted == 0, report
        assert "Fluent Bit restarted: sending again" in relay.log()
        # Bound: what Fluent Bit acked within the window (at the writer's rate), and the
        # frames that were in flight when it died.
        bound = int(window * rate) + UPSTREAM_WINDOW * max_records_per_batch(batch)
        assert report.duplicated <= bound, (report, bound)
    finally:
        await fb.stop()


def distinct(fb: RealFluentBit, source: str) -> int:
    return len({p[1] for line in fb.out.all_logs() if (p := parse_line(line)) and p[0] == source})
