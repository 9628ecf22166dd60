"""The agent under a hostile parent: Nitro's threat model has the parent untrusted.

A scripted relay misbehaves on its first connections (garbage, a huge frame, a PONG
with a wrong digest, acks for chunks never sent, a HELO and then silence), then
serves honestly. The agent must neither crash nor hang nor drop what was not acked:
every line arrives, and it exits with its child's status.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgpack
import pytest

from fluent_forward.codec import EventFrame, FrameDecoder, Role, encode_ack
from fluent_forward.entries import iter_entries
from fluent_forward.handshake import Ping, Pong, ServerHandshake, encode_pong
from tests.agentproc import cleanup, python_child, start_agent
from tests.helpers import DEADLINE

pytestmark = pytest.mark.asyncio


class ScriptedRelay:
    """Serve each connection with the next behaviour of ``script``, then honestly."""

    def __init__(self, path: Path, script: list[str], shared_key: str | None = None) -> None:
        self.path = path
        self.script = list(script)
        self.shared_key = shared_key
        self.lines: list[str] = []
        self.served: list[str] = []
        self.server: asyncio.Server | None = None
        self.peak_hostile_bytes = 0

    async def __aenter__(self) -> ScriptedRelay:
        self.server = await asyncio.start_unix_server(self.handle, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.script.pop(0) if self.script else "honest"
        self.served.append(mode)
        try:
            await getattr(self, "mode_" + mode.replace("-", "_"))(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        *, lie: bool = False) -> FrameDecoder:
        hs = ServerHandshake(hostname="parent", shared_key=self.shared_key, version="9.9")
        writer.write(hs.helo())
        decoder = FrameDecoder(Role.SERVER)
        frames: list[object] = []
        while not frames:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            frames = decoder.feed(data)
        ping = frames[0]
        assert isinstance(ping, Ping)
        pong = hs.check(ping)
        if lie:
            pong = Pong(True, "", "parent", "0" * 128)
        writer.write(encode_pong(pong))
        return decoder

    async def mode_garbage(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        await self.handshake(reader, writer)
        writer.write(b"\xc1\xc1 garbage \xff" * 100)
        await writer.drain()
        await reader.read(65536)

    async def mode_huge_frame(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        await self.handshake(reader, writer)
        writer.write(b"\x81\xa3ack\xc6\x00\x80\x00\x00")  # an ack map claiming an 8 MiB bin
        for _ in range(64):  # ... and then actually 8 MiB of it, if the agent keeps reading
            writer.write(b"\x00" * (128 << 10))
            await writer.drain()
            self.peak_hostile_bytes += 128 << 10

    async def mode_wrong_pong(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        await self.handshake(reader, writer, lie=True)
        await reader.read(65536)

    async def mode_helo_then_silence(self, reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
        writer.write(ServerHandshake(hostname="parent").helo())
        await writer.drain()
        await reader.read(65536)  # the PING; never answered
        await reader.read(65536)  # until the agent gives up

    async def mode_bogus_acks(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        decoder = await self.handshake(reader, writer)
        await self.serve(reader, writer, decoder, bogus=True)

    async def mode_honest(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        decoder = await self.handshake(reader, writer)
        await self.serve(reader, writer, decoder)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    decoder: FrameDecoder, *, bogus: bool = False) -> None:
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                if not isinstance(frame, EventFrame):
                    continue
                if bogus:  # acks for chunks it never sent, and a malformed one
                    writer.write(encode_ack("AAAAAAAAAAAAAAAAAAAAAA==") + encode_ack(b"\x00"))
                    writer.write(msgpack.packb({"ack": "x" * 24}))
                    continue  # and never the real ack
                for _, record in iter_entries(frame.entries):
                    if frame.tag.startswith("app."):
                        self.lines.append(record["log"])
                assert frame.chunk is not None
                writer.write(encode_ack(frame.chunk))
            await writer.drain()


def tracebacks_above_debug(stderr: str) -> list[str]:
    """The agent's log records above DEBUG that carry a traceback, and any stray one.

    ``make test`` runs with PYTHONASYNCIODEBUG=1, which the agent inherits; in that
    mode asyncio logs a peer's broken pipe with its traceback at DEBUG ("Fatal write
    error on socket transport"). That is the event loop's own diagnostics, not an
    error of the agent, so only records at INFO and above count.
    """
    records: list[str] = []
    for line in stderr.splitlines(keepends=True):
        if line.startswith("enclave-log-agent: ") or not records:
            records.append(line)
        else:
            records[-1] += line
    return [r for r in records if "Traceback" in r
            and not r.startswith("enclave-log-agent: DEBUG ")]


SCRIPT = ["garbage", "huge-frame", "wrong-pong", "helo-then-silence", "bogus-acks", "garbage"]


async def test_a_hostile_parent_cannot_crash_hang_or_make_the_agent_drop(sockdir: Path) -> None:
    n = 300
    async with ScriptedRelay(sockdir / "relay.sock", SCRIPT, shared_key="k") as relay:
        run = await start_agent(
            f"unix://{sockdir}/relay.sock",
            python_child(f"import time\nfor i in range({n}):\n"
                         "    print(f'line {i}', flush=True)\n    time.sleep(0.002)\n"),
            "--shared-key", "k", "--drain-timeout", "60s")
        try:
            assert await run.wait(timeout=3 * DEADLINE) == 0
        finally:
            await cleanup(run)
    stderr = run.stderr.decode(errors="replace")
    assert not tracebacks_above_debug(stderr), stderr
    assert relay.served[: len(SCRIPT)] == SCRIPT and "honest" in relay.served
    assert set(relay.lines) == {f"line {i}" for i in range(n)}, "a line was dropped"
    assert relay.peak_hostile_bytes < 8 << 20, "the agent kept reading a huge frame"
    for evidence in ("refused the handshake", "not valid msgpack", "acked a chunk we did not"):
        assert evidence in stderr, f"no log line says {evidence!r}"
