"""ChunkReader: the transport's reads handed over uncopied, in order, with asyncio's
flow control and end-of-stream behaviour (fluent_forward.aio)."""

from __future__ import annotations

import asyncio

import pytest

from fluent_forward.aio import ChunkReader

pytestmark = pytest.mark.asyncio


class Transport:
    """What a StreamReader asks of its transport: pausing and resuming reads."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


async def test_reads_are_the_transports_bytes_objects_in_order() -> None:
    reader = ChunkReader(limit=1024)
    first, second = b"a" * 100, b"b" * 50
    reader.feed_data(first)
    reader.feed_data(second)
    assert (await reader.read(1000)) is first  # not a copy
    assert (await reader.read(1000)) is second


async def test_a_read_shorter_than_a_chunk_takes_its_start_and_leaves_the_rest() -> None:
    reader = ChunkReader(limit=1024)
    reader.feed_data(b"0123456789")
    reader.feed_data(b"after")
    assert await reader.read(4) == b"0123"
    assert await reader.read(100) == b"456789"
    assert await reader.read(100) == b"after"


async def test_a_waiting_read_wakes_on_data_and_at_the_end() -> None:
    reader = ChunkReader(limit=1024)
    waiting = asyncio.create_task(reader.read(100))
    await asyncio.sleep(0)
    assert not waiting.done()
    reader.feed_data(bytearray(b"xy"))  # copied: the transport may reuse its buffer
    assert await waiting == b"xy"
    reader.feed_data(b"last")
    reader.feed_eof()
    assert not reader.at_eof()
    assert await reader.read(100) == b"last"
    assert reader.at_eof()
    assert await reader.read(100) == b""


async def test_a_transport_error_is_raised_by_the_next_read() -> None:
    reader = ChunkReader(limit=1024)
    waiting = asyncio.create_task(reader.read(100))
    await asyncio.sleep(0)
    reader.set_exception(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await waiting


async def test_reading_pauses_past_twice_the_limit_and_resumes_at_it() -> None:
    reader = ChunkReader(limit=100)
    transport = Transport()
    reader.set_transport(transport)  # type: ignore[arg-type]
    for _ in range(4):
        reader.feed_data(b"x" * 50)  # 200 queued: not past twice the limit
    assert transport.paused == 0
    reader.feed_data(b"x" * 50)  # 250
    assert transport.paused == 1
    await reader.read(1000)  # 200 left
    await reader.read(1000)  # 150
    assert transport.resumed == 0
    await reader.read(1000)  # 100: at the limit
    assert transport.resumed == 1


async def test_only_read_is_offered() -> None:
    reader = ChunkReader()
    reader.feed_data(b"line\n")
    for call in (reader.readline(), reader.readuntil(b"\n"), reader.readexactly(2)):
        with pytest.raises(NotImplementedError):
            await call
    with pytest.raises(ValueError):
        await reader.read(-1)
    assert await reader.read(0) == b""
