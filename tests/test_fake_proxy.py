"""Tests of the fault-injecting proxy (tests/fakes/proxy.py): each knob does what it says.

Every test talks through the proxy with plain asyncio streams to an upstream server
the test controls, over TCP and over Unix sockets, and fails if the knob is broken
(e.g. a reset that sends FIN instead of RST, a stall that lets bytes through, a delay
that adds nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.fakes.proxy import FaultProxy
from tests.helpers import MS, wait_until, within

pytestmark = pytest.mark.asyncio

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Upstream:
    """A server whose accepted connections the test drives by hand."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[Streams] = asyncio.Queue()
        self.count = 0
        self.server: asyncio.Server | None = None
        self.url = ""
        self._held: list[asyncio.StreamWriter] = []

    async def start(self, kind: str, sockdir: Path) -> None:
        if kind == "tcp":
            self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.url = f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        else:
            path = sockdir / "up.sock"
            self.server = await asyncio.start_unix_server(self._accept, str(path))
            self.url = f"unix://{path}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        self._held.append(writer)
        await self.accepted.put((reader, writer))

    async def next(self) -> Streams:
        return await within(self.accepted.get(), "the proxy to connect upstream")  # type: ignore[return-value]

    async def close(self) -> None:
        for writer in self._held:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture(params=["tcp", "unix"])
async def pair(request: pytest.FixtureRequest, sockdir: Path
               ) -> AsyncIterator[tuple[FaultProxy, Upstream, str]]:
    kind = request.param
    upstream = Upstream()
    await upstream.start(kind, sockdir)
    listen = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{sockdir}/proxy.sock"
    proxy = FaultProxy(listen, upstream.url)
    await proxy.start()
    yield proxy, upstream, kind
    await proxy.stop()
    await upstream.close()


async def connect(proxy: FaultProxy) -> Streams:
    url = proxy.url
    if url.startswith("unix://"):
        return await asyncio.open_unix_connection(url[len("unix://"):])
    host, _, port = url[len("tcp://"):].rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def read_exactly(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> bytes:
    return await within(reader.readexactly(n), f"{n} bytes", timeout)  # type: ignore[return-value]


async def outcome(reader: asyncio.StreamReader) -> str:
    """'eof', 'reset' or 'data' for the next read."""
    try:
        data = await within(reader.read(100), "the next read")
    except ConnectionResetError:
        return "reset"
    return "data" if data else "eof"


async def test_bytes_go_both_ways_and_are_counted(pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    reader, writer = await connect(proxy)
    writer.write(b"hello")
    up_reader, up_writer = await upstream.next()
    assert await read_exactly(up_reader, 5) == b"hello"
    up_writer.write(b"world!")
    assert await read_exactly(reader, 6) == b"world!"
    assert (proxy.connections, proxy.open_connections) == (1, 1)
    assert (proxy.bytes_up, proxy.bytes_down) == (5, 6)
    writer.close()


async def test_eof_is_a_half_close_and_the_other_side_may_still_answer(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    reader, writer = await connect(proxy)
    writer.write(b"last words")
    writer.write_eof()
    up_reader, up_writer = await upstream.next()
    assert await within(up_reader.read(), "EOF upstream") == b"last words"
    up_writer.write(b"ack")
    up_writer.close()
    assert await within(reader.read(), "the answer, then EOF") == b"ack"
    await wait_until(lambda: proxy.open_connections == 0, "the link to go")
    writer.close()


async def test_cut_closes_both_ends_with_eof_and_new_connections_still_work(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    conns = []
    for _ in range(3):
        reader, writer = await connect(proxy)
        writer.write(b"x")
        up = await upstream.next()
        assert await read_exactly(up[0], 1) == b"x"
        conns.append(((reader, writer), up))
    assert proxy.cut() == 3
    for (reader, _), (up_reader, _) in conns:
        assert await outcome(reader) == "eof"
        assert await outcome(up_reader) == "eof"
    assert proxy.open_connections == 0 and proxy.cuts == 1
    reader, writer = await connect(proxy)
    writer.write(b"again")
    up_reader, _ = await upstream.next()
    assert await read_exactly(up_reader, 5) == b"again"
    for (_, w), _ in conns:
        w.close()
    writer.close()


async def test_reset_sends_rst_on_tcp_and_closes_on_unix(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, kind = pair
    reader, writer = await connect(proxy)
    writer.write(b"x")
    up_reader, _ = await upstream.next()
    assert await read_exactly(up_reader, 1) == b"x"
    assert proxy.reset() == 1
    # A Unix socket has no RST: closing it is all a reset can do.
    want = "reset" if kind == "tcp" else "eof"
    assert await outcome(reader) == want
    assert await outcome(up_reader) == want
    assert proxy.open_connections == 0 and proxy.resets == 1
    writer.close()


async def test_stall_holds_bytes_but_keeps_the_connection_open(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    reader, writer = await connect(proxy)
    writer.write(b"a")
    up_reader, up_writer = await upstream.next()
    assert await read_exactly(up_reader, 1) == b"a"
    proxy.stall(True)
    writer.write(b"held up")
    up_writer.write(b"held down")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(300 * MS):  # hold the fault: nothing may get through
            await up_reader.read(100)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(100 * MS):
            await reader.read(100)
    assert proxy.open_connections == 1 and proxy.bytes_up == 1 and proxy.bytes_down == 0
    proxy.stall(False)
    assert await read_exactly(up_reader, 7) == b"held up"
    assert await read_exactly(reader, 9) == b"held down"
    writer.close()


async def test_stall_one_direction_holds_only_that_direction(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    reader, writer = await connect(proxy)
    writer.write(b"a")
    up_reader, up_writer = await upstream.next()
    assert await read_exactly(up_reader, 1) == b"a"
    proxy.stall(True, direction="down")  # e.g. acks held back while frames still arrive
    writer.write(b"frame")
    assert await read_exactly(up_reader, 5) == b"frame"
    up_writer.write(b"ack")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(300 * MS):
            await reader.read(100)
    proxy.stall(False, direction="down")
    assert await read_exactly(reader, 3) == b"ack"
    writer.close()


async def test_delay_is_added_to_every_chunk_each_way(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    reader, writer = await connect(proxy)
    writer.write(b"0")
    up_reader, up_writer = await upstream.next()
    assert await read_exactly(up_reader, 1) == b"0"

    async def round_trip() -> float:
        started = time.monotonic()
        writer.write(b"p")
        assert await read_exactly(up_reader, 1) == b"p"
        up_writer.write(b"q")
        assert await read_exactly(reader, 1) == b"q"
        return time.monotonic() - started

    proxy.delay = 0.25
    slow = await round_trip()
    proxy.delay = 0.0
    fast = await round_trip()
    assert slow >= 0.5, f"two chunks at 0.25 s each took only {slow:.3f}s"
    assert fast < slow - 0.3, (fast, slow)
    writer.close()


async def test_refuse_accepts_then_closes_without_connecting_upstream(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    proxy.refuse = True
    reader, writer = await connect(proxy)  # the connect itself succeeds
    assert await outcome(reader) == "eof"
    assert proxy.refused == 1 and proxy.connections == 1 and upstream.count == 0
    writer.close()
    proxy.refuse = False
    reader, writer = await connect(proxy)
    writer.write(b"ok")
    up_reader, _ = await upstream.next()
    assert await read_exactly(up_reader, 2) == b"ok"
    writer.close()


async def test_an_unreachable_upstream_closes_the_client(
        pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    await upstream.close()  # nothing listens upstream any more
    if upstream.url.startswith("unix://"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upstream.url[len("unix://"):])
    reader, writer = await connect(proxy)
    assert await outcome(reader) in ("eof", "reset")
    assert proxy.upstream_failures == 1 and proxy.open_connections == 0
    writer.close()


async def test_stop_closes_every_connection(pair: tuple[FaultProxy, Upstream, str]) -> None:
    proxy, upstream, _ = pair
    reader, writer = await connect(proxy)
    writer.write(b"x")
    up_reader, _ = await upstream.next()
    assert await read_exactly(up_reader, 1) == b"x"
    proxy.stall(True)  # a stalled link must not keep stop() waiting
    await within(proxy.stop(), "the proxy to stop")
    assert await outcome(reader) == "eof"
    assert await outcome(up_reader) == "eof"
    writer.close()
