"""Bad input to the relay closes that connection only, counted and logged once.

A second, honest agent stays connected to the same relay throughout and keeps
getting its batches acked and delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgpack
import pytest

from enclave_side.buffer import Buffer
from fluent_forward.aio import ForwardClient
from fluent_forward.codec import Ack, FrameDecoder, Helo, Role, encode_packed_forward
from fluent_forward.conventions import chunk_id
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.handshake import ClientHandshake, Pong
from tests.conftest import StartRelay, delivered
from tests.helpers import MS, read_json_lines, wait_until, within

pytestmark = pytest.mark.asyncio


class RawAgent:
    """A minimal Forward client: handshake, then frames with chunk ids, reading acks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(Role.CLIENT)
        self.seq = 0
        self.boot = b"honest!!"

    @classmethod
    async def connect(cls, path: Path, *, handshake: bool = True, version: str = ""
                      ) -> RawAgent:
        """Connect and shake hands; with ``version``, as our agent (the relay then reads
        its chunk ids as runs and sequence numbers)."""
        reader, writer = await asyncio.open_unix_connection(str(path))
        agent = cls(reader, writer)
        helo = await agent.next_frame()
        assert isinstance(helo, Helo), "the relay greets with HELO"
        if handshake:
            hs = ClientHandshake(hostname="honest", version=version)
            writer.write(hs.ping(helo))
            pong = await agent.next_frame()
            assert isinstance(pong, Pong) and pong.auth_result
        return agent

    async def next_frame(self) -> object:
        while True:
            data = await within(self.reader.read(65536), "a frame from the relay")
            assert data, "the relay closed the connection"
            frames = self.decoder.feed(data)
            if frames:
                assert len(frames) == 1
                return frames[0]

    async def send_batch(self, lines: list[str]) -> None:
        self.seq += 1
        chunk = chunk_id(self.boot, self.seq)
        entries = b"".join(pack_entry(EventTime(1_700_000_000, i), {"log": line})
                           for i, line in enumerate(lines))
        self.writer.write(encode_packed_forward("app.stdout", entries, {"chunk": chunk}))
        ack = await self.next_frame()
        assert ack == Ack(chunk)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the peer closed: read returns EOF (or the connection is reset)."""
    try:
        while await within(reader.read(65536), "the relay to close the connection"):
            pass
    except ConnectionResetError:
        pass
    return True


def deep_nesting(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def gzip_bomb(inflated: int) -> bytes:
    import zlib

    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = co.compress(b"\x00" * inflated) + co.flush()
    return msgpack.packb(["t", body, {"compressed": "gzip", "chunk": "c"}])


BAD_INPUTS = {
    "garbage": b"\xc1\xc1\xc1 not msgpack at all",
    "not-an-array": msgpack.packb({"tag": "x"}),
    "tag-not-a-string": msgpack.packb([42, 1, {"log": "x"}]),
    "record-not-a-map": msgpack.packb(["t", 1, ["not", "a", "map"]]),
    "negative-time": msgpack.packb(["t", -5, {"log": "x"}]),
    "options-not-a-map": msgpack.packb(["t", 1, {"log": "x"}, "opts"]),
    "bad-packed-entry": msgpack.packb(["t", b"\x92\x01", {"chunk": "x"}]),
    "int-map-keys": msgpack.packb(["t", 1, {1: "x"}]),
    "deeply-nested": b"\x93\xa1t\x01" + deep_nesting(5000),
    "oversize": msgpack.packb(["t", b"\x00" * (200 * 1024)]),
    "claims-gigabytes": b"\x92\xa1t\xc6\xff\xff\xff\xf0",
    "gzip-bomb": gzip_bomb(64 << 20),  # 64 MiB of zeros in ~64 KiB: over the 16 MiB cap
    "map-claims-billions": b"\x93\xa1t\x01\xdf\xff\xff\xff\xff",
    "array-claims-billions": b"\x92\xa1t\xdd\xff\xff\xff\xff",
    "string-time": msgpack.packb(["t", "yesterday", {"log": "x"}]),
    "ext-5-time": msgpack.packb(["t", msgpack.ExtType(5, b"12345678"), {"log": "x"}]),
    "huge-forward-of-tiny-maps": b"\x92\xa1t\xdd\x00\x10\x00\x00" + b"\x80" * (1 << 20),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
async def test_bad_input_closes_only_that_connection_and_is_logged_once(
        start_relay: StartRelay, sockdir: Path, case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}",
                              max_frame_bytes=64 * 1024 if case == "oversize" else 4 << 20)
    honest = await RawAgent.connect(sock)
    await honest.send_batch(["honest 1"])

    caplog.set_level(logging.WARNING, logger="parent_side")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        await reader.read(65536)  # HELO
        writer.write(BAD_INPUTS[case])
        await writer.drain()
        assert await closed_by_peer(reader)
    finally:
        writer.close()
        await writer.wait_closed()

    await wait_until(lambda: relay.listener.stats.protocol_errors == 1, "the error to be counted")
    warnings = [r for r in caplog.records if "closing connection" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    # The record holds the message, not the exception: a handler that keeps records
    # would otherwise keep the closed connection's frames and buffers alive.
    assert not [a for a in warnings[0].args or () if isinstance(a, BaseException)]
    # The honest agent never noticed.
    await honest.send_batch(["honest 2", "honest 3"])
    await honest.close()
    await delivered(relay)
    logs = [r["record"]["log"] for r in read_json_lines(out)]  # type: ignore[index]
    assert logs == ["honest 1", "honest 2", "honest 3"]


@pytest.mark.parametrize("what", ["nothing", "half-a-frame"])
async def test_a_silent_peer_is_timed_out_and_others_carry_on(
        start_relay: StartRelay, sockdir: Path, what: str) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}", handshake_timeout=0.3,
                              frame_timeout=0.3)
    honest = await RawAgent.connect(sock)
    reader, writer = await asyncio.open_unix_connection(str(sock))
    await reader.read(65536)  # HELO
    if what == "half-a-frame":
        writer.write(msgpack.packb(["x", 1, {"log": "y"}])[:5])  # after the handshake wait
    await honest.send_batch(["meanwhile"])
    assert await closed_by_peer(reader)
    writer.close()
    await writer.wait_closed()
    stats = relay.listener.stats
    assert stats.timeouts + stats.protocol_errors == 1
    await honest.send_batch(["after"])
    await honest.close()
    await delivered(relay)
    assert [r["record"]["log"] for r in read_json_lines(out)] == ["meanwhile", "after"]  # type: ignore[index]


async def test_a_drip_of_one_byte_per_read_does_not_outlive_the_frame_timeout(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}", frame_timeout=300 * MS)
    dripper = await RawAgent.connect(sock)
    frame = encode_packed_forward("app.stdout", pack_entry(EventTime(1_700_000_000, 0),
                                                           {"log": "x" * 400}), {"chunk": "drip"})
    closed = asyncio.ensure_future(closed_by_peer(dripper.reader))
    sent = 0
    # Each byte comes well within the frame timeout of the one before: a timeout that
    # restarts on every read never fires, and the frame would take 10s to complete.
    while sent < len(frame) and not closed.done():
        dripper.writer.write(frame[sent:sent + 1])
        sent += 1
        await asyncio.wait([closed], timeout=25 * MS)  # the drip's pace
    assert closed.done() and sent < len(frame), "the relay let the drip run to the end"
    assert relay.listener.stats.timeouts == 1
    dripper.writer.close()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}", idle_timeout=300 * MS)
    idle = await RawAgent.connect(sock)
    await idle.send_batch(["then nothing"])
    assert await closed_by_peer(idle.reader)
    assert relay.listener.stats.timeouts == 1
    (peer,) = relay.listener.stats.peers.values()
    assert "nothing received for 0.3s" in peer.last_error
    idle.writer.close()


async def test_an_idle_agent_is_kept_open_by_its_keepalives(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}", idle_timeout=300 * MS)
    buffer = Buffer(boot_id=b"idle-agt", max_bytes=1 << 20, batch_bytes=1 << 16,
                    flush_interval=0.01)
    client = ForwardClient(parse_endpoint(f"unix://{sock}"), buffer,
                           ClientHandshake(hostname="idle"), keepalive=50 * MS)
    task = asyncio.create_task(client.run())
    try:
        await wait_until(client.connected.is_set, "the agent to connect")
        start = time.monotonic()
        await wait_until(lambda: time.monotonic() > start + 1200 * MS,
                         "four idle timeouts to pass")
        assert relay.listener.stats.timeouts == 0
        assert (client.stats.connects, client.stats.disconnects) == (1, 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_invalid_utf8_in_a_record_is_content_not_an_attack(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    decoder = FrameDecoder(Role.CLIENT)
    await reader.read(65536)  # HELO; go on without a handshake
    # A record whose str values are not UTF-8: msgpack allows any bytes in a str.
    bad = b"\x92\xd7\x00" + b"\x00" * 8 + b"\x81\xa3log\xa4ab\xff\xfe"
    writer.write(encode_packed_forward("app.stdout", bad, {"chunk": "abc"}))
    (ack,) = decoder.feed(await within(reader.read(65536), "the ack"))
    assert ack == Ack("abc"), "the connection must not be closed for it"
    writer.close()
    await writer.wait_closed()
    await delivered(relay)
    (line,) = read_json_lines(out)
    assert line["record"]["log"] == "ab\\xff\\xfe", "written escaped, never lost"  # type: ignore[index]
    assert relay.listener.stats.protocol_errors == 0


async def test_a_frame_cut_by_a_disconnect_is_not_a_protocol_error(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    await reader.read(65536)
    frame = msgpack.packb(["t", b"\x92\x01\x80" * 100, {"chunk": "abc"}])
    writer.write(frame[: len(frame) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: relay.listener.stats.connections == 1
                     and relay.listener.stats.open_connections == 0, "the relay to notice")
    assert relay.listener.stats.protocol_errors == 0
    assert read_json_lines(out) == []


async def test_clients_without_a_handshake_are_served_when_no_key_is_set(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    await start_relay(f"unix://{sock}", f"file://{out}")
    plain = await RawAgent.connect(sock, handshake=False)
    await plain.send_batch(["no handshake"])
    await plain.close()
    assert [r["record"]["log"] for r in read_json_lines(out)] == ["no handshake"]  # type: ignore[index]


async def test_a_wrong_shared_key_is_refused_and_a_right_one_served(
        start_relay: StartRelay, sockdir: Path) -> None:
    sock, out = sockdir / "r.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}", shared_key="s3cret")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    decoder = FrameDecoder(Role.CLIENT)
    (helo,) = decoder.feed(await reader.read(65536))
    assert isinstance(helo, Helo)
    writer.write(ClientHandshake(hostname="x", shared_key="wrong").ping(helo))
    (pong,) = decoder.feed(await within(reader.read(65536), "PONG"))
    assert isinstance(pong, Pong) and not pong.auth_result
    assert await closed_by_peer(reader)
    writer.close()
    await writer.wait_closed()
    assert relay.listener.stats.auth_failures == 1

    reader, writer = await asyncio.open_unix_connection(str(sock))
    agent = RawAgent(reader, writer)
    helo = await agent.next_frame()
    hs = ClientHandshake(hostname="ok", shared_key="s3cret")
    writer.write(hs.ping(helo))  # type: ignore[arg-type]
    pong = await agent.next_frame()
    hs.check(pong)  # type: ignore[arg-type]
    await agent.send_batch(["with key"])
    await agent.close()
