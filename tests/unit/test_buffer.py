"""The agent's bounded buffer: sealing, the unacked window, resend order, overflow."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from enclave_side.buffer import Buffer
from enclave_side.lines import EntryEncoder
from fluent_forward.codec import FrameDecoder, Role
from fluent_forward.conventions import DIAG_TAG, parse_chunk_id
from fluent_forward.conventions import Overflow as Policy
from tests.helpers import MS, wait_until, within

BOOT = b"\x01" * 8
ENC = EntryEncoder({"stream": "stdout"})


def entries(n: int, width: int = 10) -> bytes:
    return ENC.encode([b"%0*d" % (width, i) for i in range(n)], 1_000_000_000)


def make(max_bytes: int = 1 << 20, batch_bytes: int = 1 << 16, clock: list[float] | None = None
         ) -> Buffer:
    now = clock if clock is not None else [0.0]
    return Buffer(boot_id=BOOT, max_bytes=max_bytes, batch_bytes=batch_bytes,
                  flush_interval=0.05, clock=lambda: now[0])


@pytest.mark.asyncio
async def test_batches_seal_on_size_and_carry_boot_id_and_sequence() -> None:
    buf = make(batch_bytes=100)
    buf.add("app.stdout", entries(3), 3)  # ~100 bytes: seals
    buf.add("app.stdout", entries(3), 3)
    b1 = await within(buf.next_batch(8), "first batch")
    b2 = await within(buf.next_batch(8), "second batch")
    assert (b1.seq, b2.seq) == (1, 2)
    assert parse_chunk_id(b1.chunk) == (BOOT, 1)
    (frame,) = FrameDecoder(Role.SERVER).feed(b1.frame)
    assert frame.tag == "app.stdout" and frame.count == 3 and frame.chunk == b1.chunk


@pytest.mark.asyncio
async def test_batches_seal_on_age() -> None:
    clock = [0.0]
    buf = make(clock=clock)
    buf.add("t", entries(1), 1)
    buf.seal_due()
    assert buf.stats().queued_batches == 0
    clock[0] = 0.05
    buf.seal_due()
    assert buf.stats().queued_batches == 1


def test_a_new_batch_says_when_it_falls_due_once() -> None:
    clock = [3.0]
    buf = make(clock=clock)
    due: list[float] = []
    buf.on_open = due.append
    buf.add("t", entries(1), 1)
    clock[0] = 3.01
    buf.add("t", entries(1), 1)  # the same batch: no second call
    buf.add("u", entries(1), 1)  # another tag, another batch
    assert due == pytest.approx([3.05, 3.06])
    buf.seal_all()
    buf.add("t", entries(1), 1)  # a new batch again
    assert due == pytest.approx([3.05, 3.06, 3.06])


@pytest.mark.asyncio
async def test_window_limits_unacked_and_acks_free_memory() -> None:
    buf = make(batch_bytes=1)
    for _ in range(3):
        buf.add("t", entries(1), 1)
    used = buf.used
    a = await buf.next_batch(2)
    b = await buf.next_batch(2)
    blocked = asyncio.ensure_future(buf.next_batch(2))
    await asyncio.sleep(10 * MS)
    assert not blocked.done(), "a third batch went out with a window of two"
    assert buf.ack(a.chunk) is a
    c = await within(blocked, "the window to open")
    assert c.seq == 3
    assert buf.used == used - a.size
    assert buf.ack(a.chunk) is None, "a second ack of the same chunk must be ignored"
    assert buf.ack("bogus") is None
    assert buf.ack(b"\x00" * 16) is None
    buf.ack(b.chunk)
    buf.ack(c.chunk)
    assert buf.empty and buf.used == 0


@pytest.mark.asyncio
async def test_unacked_batches_are_resent_first_in_order() -> None:
    buf = make(batch_bytes=1)
    for _ in range(4):
        buf.add("t", entries(1), 1)
    sent = [await buf.next_batch(8) for _ in range(3)]
    buf.ack(sent[1].chunk)
    assert buf.requeue_unacked() == 2
    again = [await buf.next_batch(8) for _ in range(3)]
    assert [b.seq for b in again] == [1, 3, 4]
    assert again[0].sends == 2 and again[2].sends == 1
    assert again[0].frame == sent[0].frame, "a resend is byte-identical (same chunk id)"


@pytest.mark.asyncio
async def test_block_policy_keeps_everything_and_makes_sources_wait() -> None:
    buf = make(max_bytes=500, batch_bytes=100)
    kept = sum(buf.add("t", entries(3), 3) for _ in range(10))
    assert kept == 30, "block never drops"
    assert not buf.has_room()
    waiter = asyncio.ensure_future(buf.wait_for_room())
    await asyncio.sleep(10 * MS)
    assert not waiter.done()
    while not waiter.done():
        batch = await within(buf.next_batch(100), "a batch")
        buf.ack(batch.chunk)
        await asyncio.sleep(0)
    assert buf.has_room()


@pytest.mark.asyncio
async def test_drop_oldest_stays_under_the_cap_and_counts_exactly() -> None:
    buf = make(max_bytes=1000, batch_bytes=200)
    added = 0
    for _ in range(50):
        buf.add("t", entries(5), 5, policy=Policy.DROP_OLDEST)
        added += 5
        assert buf.used <= 1000
    st = buf.stats()
    # Everything added is either still held or counted as dropped.
    held = st.open_records + sum(b.count for b in buf._queue)
    assert held + st.dropped_records == added
    assert st.dropped_records > 0
    # The newest records survived: the oldest were dropped.
    batches = []
    while buf._queue:
        batches.append(await buf.next_batch(1000))
    first = batches[0]
    assert first.tag == DIAG_TAG, "the drop report goes out first"
    report = msgpack.unpackb(FrameDecoder(Role.SERVER).feed(first.frame)[0].entries, raw=False)
    assert report[1]["records"] == st.dropped_records
    assert report[1]["event"] == "dropped"


@pytest.mark.asyncio
async def test_drop_oldest_never_drops_sent_or_protected_batches() -> None:
    buf = make(max_bytes=800, batch_bytes=150)
    buf.add("t", entries(5), 5)
    buf.seal_all()
    sent = await buf.next_batch(8)
    buf.add_record("agent.lifecycle", 1, {"event": "child_exit"})
    buf.seal_all()
    protected = buf._queue[-1]
    assert protected.protected
    for _ in range(30):
        buf.add("t", entries(5), 5, policy=Policy.DROP_OLDEST)
    assert buf.dropped_records > 0
    assert [b.chunk for b in buf._unacked] == [sent.chunk], "a sent batch was dropped"
    assert protected in buf._queue, "a protected batch was dropped"
    assert buf.used <= 800


class Watcher:
    def __init__(self) -> None:
        self.acked = 0

    def parts_acked(self, parts: int) -> None:
        self.acked += parts


@pytest.mark.asyncio
async def test_owners_hear_when_every_batch_with_their_records_is_acked() -> None:
    buf = make(batch_bytes=150)
    a, b = Watcher(), Watcher()
    for _ in range(4):
        buf.add("t", entries(3), 3, owner=a)
    buf.add("t", entries(1), 1, owner=b)
    buf.add("t", entries(1), 1)
    buf.seal_all()
    batches = []
    while buf._queue:
        batches.append(await buf.next_batch(100))
    assert len(batches) > 1, "the records span several batches"
    for batch in batches[:-1]:
        buf.ack(batch.chunk)
    assert a.acked < 4 or b.acked < 1, "a watcher heard of all its parts before the last ack"
    buf.ack(batches[-1].chunk)
    assert (a.acked, b.acked) == (4, 1)


@pytest.mark.asyncio
async def test_an_add_seals_the_filling_batch_rather_than_outgrow_it() -> None:
    buf = make(batch_bytes=1000)
    one = entries(20)  # ~380 bytes
    for _ in range(5):
        buf.add("t", one, 20)
    buf.seal_all()
    sizes = [(await buf.next_batch(100)).size for _ in range(len(buf._queue))]
    assert all(s < 1000 + 64 for s in sizes), sizes


@pytest.mark.asyncio
async def test_drop_oldest_never_drops_records_of_sources_that_wait() -> None:
    buf = make(max_bytes=1000, batch_bytes=10_000)  # nothing seals by size
    kept = buf.add("file", entries(5), 5)  # a tailed file: Policy.BLOCK
    buf.seal_all()
    kept += buf.add("file", entries(5), 5)  # and a batch of it still filling
    for _ in range(30):
        buf.add("t", entries(5), 5, policy=Policy.DROP_OLDEST)
    assert kept == 10 and buf.dropped_records > 0
    buf.seal_all()
    held = sum(b.count for b in buf._queue if b.tag == "file")
    assert held == 10, "a waiting source's records were dropped to make room"


@pytest.mark.asyncio
async def test_the_agent_seals_a_batch_when_it_falls_due_not_at_a_tick() -> None:
    from enclave_side.agent import Agent
    from enclave_side.config import AgentConfig
    from fluent_forward.endpoints import parse_endpoint

    agent = Agent(AgentConfig(relay=parse_endpoint("unix:///nonexistent/relay.sock"),
                              flush_interval=0.2))
    agent.buffer.on_open = agent._seal_when_due  # as run() does; no ticker runs here
    agent.buffer.add("t", entries(1), 1)
    await asyncio.sleep(0.1)
    assert agent.buffer.stats().queued_batches == 0, "sealed before it was due"
    await within(agent.buffer.next_batch(8), "the batch sealed by its timer", timeout=2.0)


@pytest.mark.asyncio
async def test_batches_filled_before_their_time_wake_the_agent_once_not_once_each() -> None:
    from enclave_side.agent import Agent
    from enclave_side.config import AgentConfig
    from fluent_forward.endpoints import parse_endpoint

    agent = Agent(AgentConfig(relay=parse_endpoint("unix:///nonexistent/relay.sock"),
                              flush_interval=0.05, batch_bytes=1024))
    fired = 0
    seal_due = agent.buffer.seal_due

    def counted() -> None:
        nonlocal fired
        fired += 1
        seal_due()

    agent.buffer.seal_due = counted  # type: ignore[method-assign]
    agent.buffer.on_open = agent._seal_when_due  # as run() does; no ticker runs here
    for _ in range(20):  # 20 batches opened and sealed by size, then one left open
        agent.buffer.add("t", entries(40), 40)
    agent.buffer.add("t", entries(1), 1)
    # No shipper runs: every sealed batch stays queued.
    opened = agent.buffer.stats().queued_batches + 1
    await wait_until(lambda: agent.buffer.stats().queued_batches == opened,
                     "the last batch sealed by its timer")
    assert fired <= 2, f"{fired} timer wakeups for {opened} batches"
