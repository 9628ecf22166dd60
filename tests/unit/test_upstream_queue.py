"""The relay's upstream queue: which frame a lost connection is blamed on, and when a
suspect goes out again (parent_side.outputs.UpstreamQueue, no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from parent_side.outputs import PoisonFrame, UpstreamQueue

pytestmark = pytest.mark.asyncio

SETTLE = 0.05


async def queue_with(n: int) -> tuple[UpstreamQueue, list[asyncio.Future[None]]]:
    q = UpstreamQueue(boot_id=b"upstream", max_bytes=1 << 20, settle=SETTLE)
    futures = [await q.put("t", b"\x92\x00\x80", 1) for _ in range(n)]
    return q, futures


async def send(q: UpstreamQueue, n: int, window: int = 16) -> list[str]:
    chunks = []
    for _ in range(n):
        async with asyncio.timeout(1):
            chunks.append((await q.next_batch(window)).chunk)
    return chunks


async def test_a_lost_connection_is_blamed_on_the_oldest_unacked_frame_only() -> None:
    # Fluent Bit takes frames in order: the ones behind the oldest unacked frame were
    # never looked at, whatever closed the connection.
    q, _ = await queue_with(4)
    q.connection_up()
    first = await send(q, 4)
    q.ack(first[0])
    q.connection_down()
    assert q.requeue_unacked() == 3
    assert [item.failures for item in q._queue] == [1, 0, 0]


async def test_a_suspect_goes_out_alone_once_the_connection_has_settled() -> None:
    q, _ = await queue_with(3)
    for _ in range(2):  # two connections lost with the same frame first
        q.connection_up()
        await send(q, 3)
        q.connection_down()
        q.requeue_unacked()
    q.connection_up()
    loop = asyncio.get_running_loop()
    up = loop.time()
    (suspect,) = await send(q, 1)
    assert loop.time() - up >= SETTLE * 0.9, "sent before the connection settled"
    nxt = asyncio.ensure_future(q.next_batch(16))
    await asyncio.sleep(SETTLE * 2)
    assert not nxt.done(), "a frame went out alongside the suspect"
    q.ack(suspect)
    async with asyncio.timeout(1):
        await nxt  # the rest are not suspects: they flow again
    assert await send(q, 1)


async def test_a_frame_blamed_poison_after_times_alone_is_given_up() -> None:
    q, futures = await queue_with(2)
    for _ in range(q.poison_after):
        q.connection_up()
        await send(q, 1)
        q.connection_down()
        q.requeue_unacked()
    with pytest.raises(PoisonFrame):
        await futures[0]
    assert q.poisoned == 1 and not futures[1].done()
    q.connection_up()
    (nxt,) = await send(q, 1)
    assert q.ack(nxt) is not None and futures[1].done()


async def test_a_queued_frame_holds_the_batch_entries_themselves() -> None:
    # The entries go out as they came from the spool: no copy of a batch per send.
    q = UpstreamQueue(boot_id=b"upstream", max_bytes=1 << 20)
    entries = b"\x92\x00\x80" * 1000
    await q.put("t", entries, 1000)
    item = await q.next_batch(1)
    assert item.frame[1] is entries
    assert q.used == item.size == sum(map(len, item.frame)) > len(entries)
