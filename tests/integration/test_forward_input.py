"""The agent's local Forward input, fed by the real fluent-logger package and by a client
sending what Fluent Bit's forward output sends; delivered through the real relay."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fluent import asyncsender, handler, sender

from fluent_forward.codec import Frame, FrameDecoder, Role
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.handshake import ClientHandshake, Helo, Pong
from tests.agentproc import AgentRun, cleanup, start_agent
from tests.conftest import StartRelay, relay_url
from tests.file_oracle import Output
from tests.frames import encode_compressed_packed_forward, encode_forward
from tests.helpers import wait_until

pytestmark = pytest.mark.asyncio

Start = Callable[..., Awaitable[tuple[AgentRun, Output, str]]]


@pytest_asyncio.fixture
async def forward_agent(start_relay: StartRelay, sockdir: Path) -> AsyncIterator[Start]:
    """An agent with a Forward input; returns it, the relay's output and the input's URL."""
    runs: list[AgentRun] = []

    async def start(listen: str = "unix://{sockdir}/fwd.sock", *options: str,
                    relay: bool = True) -> tuple[AgentRun, Output, str]:
        out = sockdir / "out.jsonl"
        url = f"unix://{sockdir}/late.sock"
        if relay:
            url = relay_url(await start_relay(f"unix://{sockdir}/relay.sock", f"file://{out}"))
        run = await start_agent(url, (), "--forward-listen", listen.format(sockdir=sockdir),
                                *options)
        runs.append(run)
        await wait_until(lambda: b"Forward input listening on" in run.stderr,
                         "the Forward input to listen")
        m = re.search(rb"Forward input listening on (\S+)", run.stderr)
        assert m is not None
        return run, Output(out), m.group(1).decode()

    yield start
    for run in runs:
        await cleanup(run)


def host_port(url: str) -> tuple[str, int]:
    """fluent-logger's (host, port) for an input URL."""
    if url.startswith("unix://"):
        return url, 0
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def iso_ns(text: str) -> int:
    import calendar

    date, frac = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%S")) * 10**9 + int(frac)


def rows(out: Output, tag: str) -> list[dict[str, Any]]:
    return [r for r in out.refresh() if r["tag"] == f"enclave.local.{tag}"]


@pytest.mark.parametrize("listen", ["unix://{sockdir}/fwd.sock", "tcp://127.0.0.1:0"],
                         ids=["unix", "tcp"])
async def test_fluent_sender_without_nanosecond_precision(forward_agent: Start,
                                                          listen: str) -> None:
    run, out, url = await forward_agent(listen)
    host, port = host_port(url)
    t = 1_764_189_435.25

    def send() -> None:
        s = sender.FluentSender("myapp", host=host, port=port)
        assert s.emit("login", {"user": "alice"}), s.last_error
        assert s.emit_with_time("float", t, {"n": 1}), s.last_error  # a msgpack float
        s.close()

    await asyncio.to_thread(send)
    await wait_until(lambda: rows(out, "myapp.float"), "the float-time record")
    (login,) = rows(out, "myapp.login")
    assert login["record"] == {"user": "alice"}
    (rec,) = rows(out, "myapp.float")
    assert rec["record"] == {"n": 1}
    # Sent on as an EventTime: nanoseconds kept, no float ever leaves the agent.
    assert iso_ns(rec["time"]) == 1_764_189_435_250_000_000


async def test_fluent_sender_with_nanosecond_precision(forward_agent: Start) -> None:
    run, out, url = await forward_agent()
    host, port = host_port(url)

    def send() -> None:
        s = sender.FluentSender("myapp", host=host, port=port, nanosecond_precision=True)
        assert s.emit_with_time("ns", 1_764_189_435.123456, {"k": "v"}), s.last_error
        s.close()

    await asyncio.to_thread(send)
    await wait_until(lambda: rows(out, "myapp.ns"), "the record")
    (rec,) = rows(out, "myapp.ns")
    assert abs(iso_ns(rec["time"]) - 1_764_189_435_123_456_000) < 1000
    assert rec["record"] == {"k": "v"}


async def test_the_async_sender_delivers_everything_in_order(forward_agent: Start) -> None:
    run, out, url = await forward_agent()
    host, port = host_port(url)

    def send() -> None:
        s = asyncsender.FluentSender("bulk", host=host, port=port, queue_maxsize=50)
        for i in range(500):
            s.emit("item", {"i": i})
        s.close()  # flushes the queue

    await asyncio.to_thread(send)
    await wait_until(lambda: len(rows(out, "bulk.item")) >= 500, "500 records")
    assert [r["record"]["i"] for r in rows(out, "bulk.item")] == list(range(500))


async def test_the_logging_handler(forward_agent: Start) -> None:
    run, out, url = await forward_agent()
    host, port = host_port(url)

    def send() -> None:
        logger = logging.getLogger("test.fluent.handler")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        h = handler.FluentHandler("pyapp", host=host, port=port)
        h.setFormatter(handler.FluentRecordFormatter(
            {"level": "%(levelname)s", "where": "%(module)s"}))
        logger.addHandler(h)
        try:
            logger.warning({"event": "disk low", "free_mb": 12})
            logger.info('{"json": "in a string", "n": 3}')
        finally:
            logger.removeHandler(h)
            h.close()

    await asyncio.to_thread(send)
    await wait_until(lambda: len(rows(out, "pyapp")) >= 2, "the two log records")
    first, second = (r["record"] for r in rows(out, "pyapp"))
    assert first == {"level": "WARNING", "where": "test_forward_input", "event": "disk low",
                     "free_mb": 12}
    assert second["json"] == "in a string" and second["n"] == 3


class RawClient:
    """A blocking Forward client: what Fluent Bit's forward output sends, byte for byte."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10.0)
        self.sock.connect(path)
        self.decoder = FrameDecoder(Role.CLIENT)
        self.pending: list[Frame] = []

    def frame(self, timeout: float = 10.0) -> Frame | None:
        """The next frame from the server; None if it closed the connection."""
        self.sock.settimeout(timeout)
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


async def test_fluent_bit_shapes_v2_entries_gzip_and_chunk_acks(forward_agent: Start) -> None:
    run, out, url = await forward_agent()
    t = EventTime(1_764_189_435, 987_654_321)

    def send() -> list[Any]:
        c = RawClient(url.removeprefix("unix://"))
        try:
            # Forward mode with Fluent Bit v2 entries [[time, metadata], record].
            c.sock.sendall(encode_forward("fb.forward", [((t, {"m": 1}), {"log": "v2 one"}),
                                                         ((t, {}), {"log": "v2 two"})],
                                          {"chunk": "Y2h1bmstb25l", "size": 2,
                                           "fluent_signal": 0}))
            first = c.frame()
            entries = b"".join(pack_entry(t, {"log": f"gz {i}"}) for i in range(100))
            c.sock.sendall(encode_compressed_packed_forward("fb.gzip", entries,
                                                            {"chunk": "Y2h1bmstdHdv"}))
            second = c.frame()
            return [first, second]
        finally:
            c.close()

    acks = await asyncio.to_thread(send)
    assert [getattr(a, "chunk", None) for a in acks] == ["Y2h1bmstb25l", "Y2h1bmstdHdv"]
    await wait_until(lambda: len(rows(out, "fb.gzip")) >= 100, "the gzip records")
    assert [r["record"]["log"] for r in rows(out, "fb.forward")] == ["v2 one", "v2 two"]
    assert all(r["time"] == "2025-11-26T20:37:15.987654321Z" for r in rows(out, "fb.forward"))
    assert [r["record"]["log"] for r in rows(out, "fb.gzip")] == [f"gz {i}" for i in range(100)]


async def test_a_full_buffer_stops_acks_until_there_is_room(forward_agent: Start,
                                                            start_relay: StartRelay,
                                                            sockdir: Path) -> None:
    run, out, url = await forward_agent("unix://{sockdir}/fwd.sock", "--buffer-size", "64KiB",
                                        "--batch-size", "16KiB", "--drain-timeout", "30s",
                                        relay=False)
    c = RawClient(url.removeprefix("unix://"))
    frames = 40  # 40 x ~8 KiB: five times the buffer
    acked: list[str] = []
    try:
        def send_and_count() -> None:
            for i in range(frames):
                entries = b"".join(pack_entry(i, {"log": f"f{i} r{j} " + "x" * 70})
                                   for j in range(100))
                c.sock.sendall(_packed("ack.test", entries, f"c{i:04d}"))
            while True:
                try:
                    frame = c.frame(timeout=1.5)
                except TimeoutError:
                    return
                if frame is None:
                    return
                acked.append(getattr(frame, "chunk", ""))

        await asyncio.to_thread(send_and_count)
        assert 0 < len(acked) < frames, f"{len(acked)} of {frames} acked with no relay"
        # The relay comes: the agent drains, reads again, acks the rest.
        await start_relay(f"unix://{sockdir}/late.sock", f"file://{sockdir}/out.jsonl")

        def rest() -> None:
            while len(acked) < frames:
                frame = c.frame(timeout=20.0)
                assert frame is not None, "the agent closed the connection"
                acked.append(getattr(frame, "chunk", ""))

        await asyncio.to_thread(rest)
        assert acked == [f"c{i:04d}" for i in range(frames)]
        await wait_until(lambda: len(rows(out, "ack.test")) >= frames * 100, "every record")
        assert len(rows(out, "ack.test")) == frames * 100
    finally:
        c.close()


def _packed(tag: str, entries: bytes, chunk: str) -> bytes:
    from fluent_forward.codec import encode_packed_forward
    return encode_packed_forward(tag, entries, {"chunk": chunk})


async def test_shared_key_required_and_checked(forward_agent: Start, sockdir: Path,
                                              tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[[forward]]\nlisten = "unix://{sockdir}/keyed.sock"\n'
                    'shared_key = "s3cret"\n')
    run, out, url = await forward_agent("unix://{sockdir}/fwd.sock", "--config", str(conf))
    keyed = f"{sockdir}/keyed.sock"
    await wait_until(lambda: b"listening on unix://" + keyed.encode() in run.stderr,
                     "the keyed input")

    def with_key(key: str) -> Frame | None:
        c = RawClient(keyed)
        try:
            helo = c.frame()
            assert isinstance(helo, Helo)
            hs = ClientHandshake(hostname="client", shared_key=key)
            c.sock.sendall(hs.ping(helo))
            pong = c.frame()
            if pong is None:
                return None
            assert isinstance(pong, Pong)
            if not pong.auth_result:
                return pong
            hs.check(pong)
            c.sock.sendall(_packed("keyed", pack_entry(1, {"log": "authorised"}), "a2V5"))
            return c.frame()
        finally:
            c.close()

    def without_handshake() -> Frame | None:
        c = RawClient(keyed)
        try:
            assert isinstance(c.frame(), Helo)
            c.sock.sendall(_packed("keyed", pack_entry(1, {"log": "sneaky"}), "c25lYWt5"))
            return c.frame()
        finally:
            c.close()

    assert await asyncio.to_thread(without_handshake) is None
    refused = await asyncio.to_thread(with_key, "wrong")
    assert refused is None or (isinstance(refused, Pong) and not refused.auth_result)
    ack = await asyncio.to_thread(with_key, "s3cret")
    assert getattr(ack, "chunk", None) == "a2V5"
    # Records are buffered in the order they came: a refused one would be here by now.
    await wait_until(lambda: rows(out, "keyed"), "the authorised record")
    assert [r["record"]["log"] for r in rows(out, "keyed")] == ["authorised"]


async def test_reserved_tags_cannot_speak_for_the_agent(forward_agent: Start) -> None:
    run, out, url = await forward_agent()
    host, port = host_port(url)

    def send() -> None:
        s = sender.FluentSender("agent", host=host, port=port)
        assert s.emit("lifecycle", {"event": "child_exit", "exit_code": 0})
        s.close()

    await asyncio.to_thread(send)
    await wait_until(lambda: rows(out, "forward.agent.lifecycle"), "the moved record")
    assert not [r for r in rows(out, "agent.lifecycle")
                if r["record"].get("event") == "child_exit"]
