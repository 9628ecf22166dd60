"""The fake Fluent Bit held to the real one: the same exchanges, byte for byte, with both.

Each test takes ``peer`` (or ``keyed_peer``, whose forward input has a ``shared_key``),
once as fakes/fluentbit.py and once as a real Fluent Bit, speaks raw msgpack to it
(no project code on the client side) and asserts what comes back and what is stored.
A difference found here is corrected in the fake and written in its docstring. Without a
real binary the real half skips (fails under CI=true) and the fake half still runs.

"Nothing came back" is never waited for: a second frame with a chunk follows, and its
ack being the first reply shows the first frame got none.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_asyncio

from fakes.fluentbit import FakeFluentBit
from tests.fluentbit.peer import RealFluentBit
from tests.helpers import DEADLINE, wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.fluentbit]

KEY = "probe-key"
EOF_ = "EOF"  # what recv() returns once the peer closed


def et(seconds: int, nanos: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanos))


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


@dataclass
class Peer:
    """A forward input under test: the fake or the real one, read the same way."""

    kind: str
    url: str
    fake: FakeFluentBit | None = None
    real: RealFluentBit | None = None

    def stored(self, tag: str) -> list[tuple[int, dict[str, Any]]]:
        if self.fake is not None:
            return [(r.time_ns, r.record) for r in self.fake.records if r.tag == tag]
        assert self.real is not None
        return [(r.time_ns, r.record) for r in self.real.out.tagged(tag)]

    async def wait_stored(self, tag: str, n: int) -> list[tuple[int, dict[str, Any]]]:
        await wait_until(lambda: len(self.stored(tag)) >= n, f"{n} record(s) on {tag}")
        return self.stored(tag)


async def make_peer(request: pytest.FixtureRequest, sockdir: Path, shared_key: str | None,
                    buffer_max_size: int | None = None) -> AsyncIterator[Peer]:
    if request.param == "fake":
        limit = {} if buffer_max_size is None else {"buffer_max_size": buffer_max_size}
        fake = FakeFluentBit(f"unix://{sockdir}/fake.sock", shared_key=shared_key,
                             self_hostname="fluent-bit", **limit)
        await fake.start()
        try:
            yield Peer("fake", fake.url, fake=fake)
        finally:
            await fake.stop()
    else:
        make = request.getfixturevalue("make_fluentbit")
        # Plain numbers: Fluent Bit reads "64K" as 64000 bytes.
        options = [] if buffer_max_size is None else [
            ("buffer_chunk_size", buffer_max_size // 2), ("buffer_max_size", buffer_max_size)]
        real = make("probe", shared_key=shared_key, input_options=options)
        await real.start()
        yield Peer("real", real.url, real=real)


@pytest_asyncio.fixture(params=["fake", "real"])
async def peer(request: pytest.FixtureRequest, sockdir: Path) -> AsyncIterator[Peer]:
    async for p in make_peer(request, sockdir, None):
        yield p


@pytest_asyncio.fixture(params=["fake", "real"])
async def keyed_peer(request: pytest.FixtureRequest, sockdir: Path) -> AsyncIterator[Peer]:
    async for p in make_peer(request, sockdir, KEY):
        yield p


SMALL_BUFFER = 65536


@pytest_asyncio.fixture(params=["fake", "real"])
async def small_peer(request: pytest.FixtureRequest, sockdir: Path) -> AsyncIterator[Peer]:
    """A forward input whose buffer_max_size is 64 KiB."""
    async for p in make_peer(request, sockdir, None, SMALL_BUFFER):
        yield p


class Client:
    """A raw Forward client: writes bytes, reads msgpack objects (str kept as bytes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.unpacker = msgpack.Unpacker(raw=True)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str) -> AsyncIterator[Client]:
        reader, writer = await asyncio.open_unix_connection(url[len("unix://"):])
        try:
            yield cls(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def recv(self) -> Any:
        """The next object the peer sends, or EOF_ once it closed."""
        async with asyncio.timeout(DEADLINE):
            while True:
                for obj in self.unpacker:
                    return obj
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return EOF_
                if not data:
                    return EOF_
                self.unpacker.feed(data)

    async def ack_of(self, chunk: str) -> None:
        """Send a good frame with ``chunk``; its ack must be the next thing read."""
        self.send(packb(["probe.next", [[et(1, 0), {"next": chunk}]], {"chunk": chunk}]))
        assert await self.recv() == {b"ack": chunk.encode()}


ENTRY = packb([et(1_700_000_000, 5), {"log": "x"}])


async def test_the_ack_is_the_chunk_echoed_in_a_one_entry_map(peer: Peer) -> None:
    async with Client.connect(peer.url) as c:
        c.send(packb(["probe.ack", ENTRY, {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==", "size": 1}]))
        raw = b"\x81\xa3ack\xb8p8n9gmxTQVC8/nh2wlKKeQ=="  # fixmap 1, fixstr, str8 24
        assert await asyncio.wait_for(c.reader.readexactly(len(raw)), DEADLINE) == raw
    assert await peer.wait_stored("probe.ack", 1) == [(1_700_000_000 * 10**9 + 5, {"log": "x"})]


async def test_without_a_key_no_helo_and_no_chunk_no_reply(peer: Peer) -> None:
    async with Client.connect(peer.url) as c:
        c.send(packb(["probe.nochunk", ENTRY, {"size": 1}]))
        await c.ack_of("after")  # no HELO first, and nothing for the chunkless frame
    assert len(await peer.wait_stored("probe.nochunk", 1)) == 1


@pytest.mark.parametrize(("name", "frame"), [
    ("nil heartbeat", packb(None)),
    ("bin chunk", packb(["probe.bad", ENTRY, {"chunk": b"bin-chunk"}])),
    ("int chunk", packb(["probe.bad", ENTRY, {"chunk": 7}])),
    ("options not a map", packb(["probe.bad", ENTRY, [1]])),
    ("packed, nil options", packb(["probe.bad", ENTRY, None])),
    ("message, float time", packb(["probe.bad", 1.5, {"a": 1}, {"chunk": "c"}])),
    ("not msgpack", b"\xc1"),
])
async def test_what_closes_the_connection(peer: Peer, name: str, frame: bytes) -> None:
    async with Client.connect(peer.url) as c:
        c.send(frame)
        assert await c.recv() == EOF_, name


async def test_forward_mode_nil_options_are_accepted(peer: Peer) -> None:
    async with Client.connect(peer.url) as c:
        c.send(packb(["probe.fwdnil", [[et(2, 0), {"a": 1}]], None]))
        await c.ack_of("after-nil")
    assert await peer.wait_stored("probe.fwdnil", 1) == [(2 * 10**9, {"a": 1})]


@pytest.mark.parametrize("bad_time", [msgpack.Timestamp(1, 0), -1],
                         ids=["ext -1", "negative int"])
async def test_a_bad_forward_entry_keeps_those_before_drops_the_rest_and_acks(
        peer: Peer, bad_time: Any) -> None:
    async with Client.connect(peer.url) as c:
        c.send(packb(["probe.badentry", [[et(1, 0), {"n": 1}], [bad_time, {"n": 2}],
                                         [et(3, 0), {"n": 3}]], {"chunk": "bad"}]))
        assert await c.recv() == {b"ack": b"bad"}
        c.send(packb(["probe.badentry", [[et(4, 0), {"n": 4}]], {"chunk": "later"}]))
        assert await c.recv() == {b"ack": b"later"}  # the connection stayed open
    stored = await peer.wait_stored("probe.badentry", 2)
    assert [r for _, r in stored] == [{"n": 1}, {"n": 4}]


async def test_a_message_with_an_ext_minus_1_time_is_dropped_and_acked(peer: Peer) -> None:
    async with Client.connect(peer.url) as c:
        c.send(packb(["probe.msgts", msgpack.Timestamp(1, 0), {"n": 1}, {"chunk": "ts"}]))
        assert await c.recv() == {b"ack": b"ts"}
        c.send(packb(["probe.msgts", et(2, 0), {"n": 2}, {"chunk": "ok"}]))
        assert await c.recv() == {b"ack": b"ok"}
    assert [r for _, r in await peer.wait_stored("probe.msgts", 1)] == [{"n": 2}]


def digest(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def ping(helo: Any, key: str, salt: bytes = b"0123456789abcdef") -> tuple[bytes, bytes]:
    """A PING of str fields for ``helo``; and the digest the PONG must carry."""
    nonce = helo[1][b"nonce"]
    frame = packb(["PING", "probe-client", salt.decode(),
                   digest(salt, b"probe-client", nonce, key.encode()), "", ""])
    return frame, digest(salt, b"fluent-bit", nonce, key.encode()).encode()


async def test_with_a_key_helo_then_pong_then_acks(keyed_peer: Peer) -> None:
    async with Client.connect(keyed_peer.url) as c:
        helo = await c.recv()
        assert helo[0] == b"HELO" and sorted(helo[1]) == [b"auth", b"nonce"]
        assert len(helo[1][b"nonce"]) == len(helo[1][b"auth"]) == 16
        frame, expected = ping(helo, KEY)
        c.send(frame)
        assert await c.recv() == [b"PONG", True, b"", b"fluent-bit", expected]
        await c.ack_of("secured")


async def test_a_wrong_key_or_bin_ping_closes_without_pong(keyed_peer: Peer) -> None:
    async with Client.connect(keyed_peer.url) as c:
        c.send(ping(await c.recv(), "wrong")[0])
        assert await c.recv() == EOF_
    async with Client.connect(keyed_peer.url) as c:
        helo = await c.recv()
        salt = b"0123456789abcdef"
        c.send(packb(["PING", b"probe-client", salt,
                      digest(salt, b"probe-client", helo[1][b"nonce"], KEY.encode()), "", ""]))
        assert await c.recv() == EOF_


async def test_bytes_after_the_ping_in_the_same_write_are_discarded(keyed_peer: Peer) -> None:
    async with Client.connect(keyed_peer.url) as c:
        frame, expected = ping(await c.recv(), KEY)
        c.send(frame, packb(["probe.pipelined", ENTRY, {"chunk": "lost"}]))
        assert await c.recv() == [b"PONG", True, b"", b"fluent-bit", expected]
        await c.ack_of("kept")  # not the ack of "lost"
        c.send(packb(None))  # and a nil heartbeat closes after the handshake too
        assert await c.recv() == EOF_
    await keyed_peer.wait_stored("probe.next", 1)  # flushed with anything sent before it
    assert keyed_peer.stored("probe.pipelined") == []


def frame_of_size(size: int, chunk: str) -> bytes:
    """A PackedForward frame of exactly ``size`` bytes (one record, its log padded)."""
    def frame(pad: int) -> bytes:
        return packb(["probe.big", packb([et(1, 0), {"log": "x" * pad}]), {"chunk": chunk}])

    pad = size - len(frame(0))
    while len(frame(pad)) > size:  # longer str headers as the string grows
        pad -= 1
    assert len(frame(pad)) == size
    return frame(pad)


async def test_a_frame_of_buffer_max_size_fits_and_one_byte_more_closes(
        small_peer: Peer) -> None:
    async with Client.connect(small_peer.url) as c:
        c.send(frame_of_size(SMALL_BUFFER, "fits"))
        assert await c.recv() == {b"ack": b"fits"}
    async with Client.connect(small_peer.url) as c:
        c.send(frame_of_size(SMALL_BUFFER + 1, "too-big"))
        assert await c.recv() == EOF_


def str_header(n: int) -> bytes:
    """A msgpack str header (msgpack-python packs only valid UTF-8 as str)."""
    if n < 32:
        return bytes([0xA0 | n])
    return (b"\xd9" + n.to_bytes(1, "big") if n < 256 else b"\xda" + n.to_bytes(2, "big"))


TWO = packb([et(7, 70), {"n": 1}]) + packb([et(8, 80), {"n": 2}])


@pytest.mark.parametrize(("name", "frame"), [
    ("message, int time", packb(["probe.shape", 7, {"n": 1}, {"chunk": "s"}])),
    ("forward, v2 entries", packb(["probe.shape", [[[et(7, 70), {}], {"n": 1}],
                                                   [[et(8, 80), {"m": 1}], {"n": 2}]],
                                   {"chunk": "s"}])),
    ("packed, entries as str", b"\x93" + packb("probe.shape") + str_header(len(TWO)) + TWO
     + packb({"chunk": "s"})),
    ("packed, gzip", packb(["probe.shape", gzip.compress(TWO),
                            {"chunk": "s", "compressed": "gzip"}])),
])
async def test_the_frame_shapes_both_accept(peer: Peer, name: str, frame: bytes) -> None:
    async with Client.connect(peer.url) as c:
        c.send(frame)
        assert await c.recv() == {b"ack": b"s"}, name
        await c.ack_of("after")
    expected = ([(7 * 10**9, {"n": 1})] if name.startswith("message") else
                [(7 * 10**9 + 70, {"n": 1}), (8 * 10**9 + 80, {"n": 2})])
    await peer.wait_stored("probe.shape", len(expected))
    await peer.wait_stored("probe.next", 1)  # and nothing more came before it
    assert peer.stored("probe.shape") == expected, name
