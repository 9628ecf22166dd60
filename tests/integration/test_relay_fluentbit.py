"""Agent -> relay -> Fluent Bit (the fake in fakes/fluentbit.py, which copies in_forward's quirks).

The relay acks an agent's batch only once Fluent Bit acked it, resends what Fluent
Bit did not ack after it closed the connection (as in_forward does when it pauses),
and does the shared-key handshake when Fluent Bit asks for one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import pytest_asyncio

from fakes.fluentbit import FakeFluentBit
from tests.agentproc import cleanup, python_child, start_agent
from tests.conftest import StartRelay, relay_url
from tests.helpers import DEADLINE, MS, wait_until
from tests.integration.test_relay_bad_input import RawAgent

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def fluentbit(sockdir: Path):  # type: ignore[no-untyped-def]
    fb = FakeFluentBit(f"unix://{sockdir}/fb.sock")
    await fb.start()
    yield fb
    await fb.stop()


def logs(fb: FakeFluentBit, tag: str) -> list[str]:
    return [str(r.record["log"]) for r in fb.records if r.tag == tag]


@pytest.mark.parametrize(("listen", "upstream"), [
    ("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"), ("unix://{d}/relay.sock", "unix://{d}/fb.sock")],
    ids=["tcp", "unix"])
async def test_lines_reach_fluent_bit_once_in_order_with_nanosecond_times(
        start_relay: StartRelay, sockdir: Path, listen: str, upstream: str) -> None:
    async with FakeFluentBit(upstream.format(d=sockdir)) as fb:
        relay = await start_relay(listen.format(d=sockdir), fb.url)
        n = 5000
        before = time.time_ns()
        run = await start_agent(relay_url(relay), python_child(
            f"import sys\nfor i in range({n}):\n    print(f'line {{i}}')\n"
            "    print(f'oops {i}', file=sys.stderr)\n"))
        try:
            assert await run.wait() == 0
            await fb.wait_for(lambda: len(logs(fb, "enclave.local.app.stderr")) == n
                              and len(logs(fb, "enclave.local.app.stdout")) == n,
                              timeout=DEADLINE, what="every line")
            after = time.time_ns()
            assert logs(fb, "enclave.local.app.stdout") == [f"line {i}" for i in range(n)]
            assert logs(fb, "enclave.local.app.stderr") == [f"oops {i}" for i in range(n)]
            times = [r.time_ns for r in fb.records if r.tag.endswith("app.stdout")]
            assert all(before <= t <= after for t in times)
            assert any(t % 1_000_000_000 for t in times), "nanoseconds survive both hops"
            assert all(isinstance(c, str) and len(c) == 24 for c in fb.chunks_received)
            assert len(fb.chunks_received) == len(set(fb.chunks_received)), "no resends"
            assert fb.close_reasons == [], "Fluent Bit never had to close on us"
        finally:
            await cleanup(run)


async def test_memory_only_an_agent_batch_is_acked_only_after_fluent_bit_acked_it(
        start_relay: StartRelay, sockdir: Path, fluentbit: FakeFluentBit) -> None:
    fluentbit.ack_delay = 300 * MS
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fluentbit.url, spool=None)
    agent = await RawAgent.connect(Path(relay_url(relay)[len("unix://"):]))
    started = time.monotonic()
    await agent.send_batch(["slow ack"])  # returns when the relay's ack arrives
    assert fluentbit.acks_sent, "the relay acked before Fluent Bit did"
    assert time.monotonic() - started >= 250 * MS
    await agent.close()


async def test_memory_only_no_ack_from_fluent_bit_means_no_ack_to_the_agent(
        start_relay: StartRelay, sockdir: Path, fluentbit: FakeFluentBit) -> None:
    fluentbit.send_acks = False
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fluentbit.url, spool=None)
    agent = await RawAgent.connect(Path(relay_url(relay)[len("unix://"):]))
    send = asyncio.ensure_future(agent.send_batch(["never acked"]))
    await fluentbit.wait_records(1, timeout=DEADLINE)
    await asyncio.sleep(200 * MS)  # a window in which a wrong ack would have arrived
    assert not send.done()
    fluentbit.send_acks = True  # not retroactive: the relay resends after its ack timeout
    send.cancel()
    await agent.close()


async def test_fluent_bit_pausing_closes_connections_and_nothing_is_lost(
        start_relay: StartRelay, sockdir: Path, fluentbit: FakeFluentBit) -> None:
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fluentbit.url)
    n = 4000
    run = await start_agent(relay_url(relay), python_child(
        "import time\n"
        f"for i in range({n}):\n"
        "    print(f'p {i}', flush=True)\n"
        "    if i % 100 == 0: time.sleep(0.01)\n"), "--batch-size", "4KiB")
    try:
        for _ in range(3):  # pause and resume under load, as mem_buf_limit would
            count = len(fluentbit.records)
            await fluentbit.wait_for(lambda c=count: len(fluentbit.records) > c + 300,  # type: ignore[misc]
                                     timeout=DEADLINE, what="more records")
            fluentbit.pause()
            await asyncio.sleep(50 * MS)
            fluentbit.resume()
        assert await run.wait() == 0
        want = {f"p {i}" for i in range(n)}
        # The agent was acked once the relay's spool had each batch; the spool goes on
        # delivering after the agent exits.
        await fluentbit.wait_for(lambda: set(logs(fluentbit, "enclave.local.app.stdout")) >= want,
                                 timeout=DEADLINE, what="every record")
        got = logs(fluentbit, "enclave.local.app.stdout")
        assert set(got) == want, "a record was lost"
        assert "paused" in " ".join(fluentbit.close_reasons)
        # Each pause may resend at most the unacked window: 16 frames of one 4 KiB
        # batch each, and an entry here is at least 30 bytes.
        dupes = len(got) - n
        assert dupes <= 3 * relay.config.upstream_window * (4096 // 30), dupes
    finally:
        await cleanup(run)


async def test_fluent_bit_restarting_mid_stream_loses_nothing(
        start_relay: StartRelay, sockdir: Path, fluentbit: FakeFluentBit) -> None:
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fluentbit.url)
    n = 3000
    run = await start_agent(relay_url(relay), python_child(
        "import time\n"
        f"for i in range({n}):\n"
        "    print(f'r {i}', flush=True)\n"
        "    if i % 100 == 0: time.sleep(0.01)\n"), "--drain-timeout", "30s")
    try:
        await fluentbit.wait_for(lambda: len(fluentbit.records) > 500, timeout=DEADLINE,
                                 what="some records")
        await fluentbit.stop()
        await asyncio.sleep(300 * MS)  # the relay retries against a closed socket
        await fluentbit.start()
        assert await run.wait() == 0
        want = {f"r {i}" for i in range(n)}
        await fluentbit.wait_for(lambda: set(logs(fluentbit, "enclave.local.app.stdout")) >= want,
                                 timeout=DEADLINE, what="every record")
    finally:
        await cleanup(run)


async def test_the_relay_does_the_handshake_when_fluent_bit_has_a_shared_key(
        start_relay: StartRelay, sockdir: Path) -> None:
    async with FakeFluentBit(f"unix://{sockdir}/fb.sock", shared_key="fb-key") as fb:
        relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url,
                                  upstream_shared_key="fb-key")
        agent = await RawAgent.connect(Path(relay_url(relay)[len("unix://"):]))
        await agent.send_batch(["secured"])
        await agent.close()
        assert fb.handshakes >= 1
        assert logs(fb, "enclave.local.app.stdout") == ["secured"]


async def test_a_wrong_upstream_key_delivers_nothing_and_says_why(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeFluentBit(f"unix://{sockdir}/fb.sock", shared_key="right") as fb:
        relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url,
                                  upstream_shared_key="wrong", spool=None)
        agent = await RawAgent.connect(Path(relay_url(relay)[len("unix://"):]))
        send = asyncio.ensure_future(agent.send_batch(["not delivered"]))
        await wait_until(lambda: "shared key" in caplog.text or "handshake" in caplog.text,
                         "the relay to log the failed handshake")
        assert [r for r in fb.records if r.tag.startswith("enclave.")] == []
        assert not send.done()
        send.cancel()
        await agent.close()


async def test_fluent_bit_with_a_key_the_relay_lacks_is_named_in_the_log(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeFluentBit(f"unix://{sockdir}/fb.sock", shared_key="k") as fb:
        relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url, spool=None)
        agent = await RawAgent.connect(Path(relay_url(relay)[len("unix://"):]))
        send = asyncio.ensure_future(agent.send_batch(["x"]))
        await wait_until(lambda: "asks for a handshake" in caplog.text,
                         "the relay to explain the missing key")
        send.cancel()
        await agent.close()


async def test_a_relay_whose_output_is_another_relay_answers_its_keyless_helo(
        start_relay: StartRelay, sockdir: Path, fluentbit: FakeFluentBit,
        caplog: pytest.LogCaptureFixture) -> None:
    """Relay A's output is relay B, which has no shared key and greets with HELO: A
    learns it, and answers it with an empty-key PING on its next connection."""
    downstream = f"unix://{sockdir}/b.sock"
    relay_b = await start_relay(downstream, fluentbit.url)
    relay_a = await start_relay(f"unix://{sockdir}/a.sock", downstream)
    agent = await RawAgent.connect(sockdir / "a.sock")
    try:
        await agent.send_batch(["through two relays"])
        await fluentbit.wait_for(lambda: any(r.record.get("log") == "through two relays"
                                             for r in fluentbit.records),
                                 timeout=DEADLINE, what="the line through both relays")
        assert "asks for a handshake although no shared key is configured" in caplog.text
        # B restarts: A connects again and, this time, answers B's HELO.
        relay_b.stop()
        await wait_until(lambda: not relay_a.output.status()["connected"], "A to lose B")
        relay_b2 = await start_relay(downstream, fluentbit.url)
        await agent.send_batch(["after the handshake"])
        await fluentbit.wait_for(lambda: any(r.record.get("log") == "after the handshake"
                                             for r in fluentbit.records),
                                 timeout=DEADLINE, what="the line after the handshake")
        peers = list(relay_b2.listener.stats.peers.values())
        assert [p.claimed_hostname for p in peers] == ["test-relay"], "B2 saw A's PING"
        assert "refused the handshake" not in caplog.text
    finally:
        await agent.close()
