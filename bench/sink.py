"""A Forward sink for the benchmarks: acks every chunk, never decodes an entry.

It stands where Fluent Bit's forward input would (downstream of the relay) or where the
relay would (downstream of the agent, when the agent is measured alone). It reads only
the outer frame ``[tag, bin(entries), {options}]`` with a few header checks, takes the
record count from the ``size`` option (both the agent and the relay set it), acks the
``chunk``, and throws the entries away. No HELO is sent, so clients must not wait for
one (the agent runs with ``--handshake-wait 0``; the relay's output never waits).

Optionally it looks for ``ts=<19 digits>`` in the entries with one regex pass per frame
(``latency_from`` set): the write time the latency generator puts in one line in 16, to
give those lines' delay from the write to here. Lines written before ``latency_from`` (a
warm-up) count only towards ``cold_max``.

``python -m bench.sink`` measures its own capacity and that of the fake Fluent Bit
(``fakes/fluentbit.py``, which decodes every record) on the same frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import time
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = ["BenchSink", "parse_frame"]

_TS = re.compile(rb"ts=(\d{19})")


def _str_or_bin(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(start, end) of the str or bin at ``pos``; None if incomplete."""
    if pos >= len(buf):
        return None
    b = buf[pos]
    if 0xA0 <= b <= 0xBF:
        start, n = pos + 1, b & 0x1F
    elif b in (0xD9, 0xC4):
        if pos + 2 > len(buf):
            return None
        start, n = pos + 2, buf[pos + 1]
    elif b in (0xDA, 0xC5):
        if pos + 3 > len(buf):
            return None
        start, n = pos + 3, int.from_bytes(buf[pos + 1:pos + 3], "big")
    elif b in (0xDB, 0xC6):
        if pos + 5 > len(buf):
            return None
        start, n = pos + 5, int.from_bytes(buf[pos + 1:pos + 5], "big")
    else:
        raise ValueError(f"expected a str or bin at {pos}, found 0x{b:02x}")
    return (start, start + n) if start + n <= len(buf) else None


def parse_frame(buf: bytes | bytearray, pos: int
                ) -> tuple[int, bytes, int, int, dict[str, Any]] | None:
    """One PackedForward frame at ``pos``: (end, tag, entries start, entries end, options).

    None if the frame is not complete yet. Only the options map is decoded (it is small).
    """
    if pos >= len(buf):
        return None
    head = buf[pos]
    if head not in (0x92, 0x93):
        raise ValueError(f"not a PackedForward frame: 0x{head:02x}")
    tag = _str_or_bin(buf, pos + 1)
    if tag is None:
        return None
    entries = _str_or_bin(buf, tag[1])
    if entries is None:
        return None
    end, options = entries[1], {}
    if head == 0x93:
        up = msgpack.Unpacker(raw=False)
        up.feed(buf[end:end + 4096])  # options are a few dozen bytes
        try:
            options = up.unpack()
        except msgpack.OutOfData:
            return None
        end += up.tell()
    return end, bytes(buf[tag[0]:tag[1]]), entries[0], entries[1], options


class BenchSink:
    """The server. ``records`` counts per tag; ``on_frame`` sees every frame's arrival.

    Args:
        latency_from: extract ``ts=`` stamps and keep the delay (ns) of each line written
            from this time (ns) on in ``delays``; None: do not look.
    """

    def __init__(self, *, latency_from: int | None = None) -> None:
        self.latency_from = latency_from
        self.cold_max = 0  # the longest delay of any line, warm-up included
        self.records: collections.Counter[str] = collections.Counter()
        self.frames = 0
        self.bytes = 0
        self.delays: collections.Counter[int] = collections.Counter()  # delay ns -> lines
        self.on_frame: Callable[[BenchSink, str, int], None] | None = None
        #: Bytes a second it reads at most (None: as fast as it can): an upstream slower
        #: than its senders, for the fair share bench.
        self.read_rate: float | None = None
        self.server: asyncio.Server | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    async def start(self, url: str) -> None:
        if url.startswith("unix://"):
            path = url[len("unix://"):]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.server = await asyncio.start_unix_server(self._handle, path)
        else:
            host, port = url[len("tcp://"):].rsplit(":", 1)
            self.server = await asyncio.start_server(self._handle, host, int(port))

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def count(self, tag: str) -> int:
        """Records of ``tag``, also under a prefix the relay added (``enclave.NAME.``)."""
        suffix = "." + tag
        return sum(n for t, n in self.records.items() if t == tag or t.endswith(suffix))

    def reset(self) -> None:
        self.records.clear()
        self.delays.clear()
        self.cold_max = 0
        self.frames = self.bytes = 0
        self.read_rate = None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds (checked after each frame)."""
        if predicate():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, fut))
        async with asyncio.timeout(timeout):
            await fut

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return
                if self.read_rate:
                    await asyncio.sleep(len(data) / self.read_rate)
                buf += data
                pos = 0
                acks = []
                while (frame := parse_frame(buf, pos)) is not None:
                    pos, tag, start, end, options = frame
                    chunk = options.get("chunk")
                    count = options.get("size")
                    if count is None:
                        up = msgpack.Unpacker()
                        up.feed(buf[start:end])
                        count = _count(up)
                    self._frame(bytes(tag).decode(), int(count), buf, start, end)
                    if chunk is not None:
                        acks.append(msgpack.packb({"ack": chunk}))
                del buf[:pos]
                if acks:
                    writer.write(b"".join(acks))
        except (ConnectionError, ValueError):
            return
        finally:
            writer.close()

    def _frame(self, tag: str, count: int, buf: bytearray, start: int, end: int) -> None:
        now = time.time_ns()
        self.frames += 1
        self.bytes += end - start
        self.records[tag] += count
        if self.latency_from is not None:
            for raw, n in collections.Counter(_TS.findall(buf, start, end)).items():
                stamp = int(raw)
                self.cold_max = max(self.cold_max, now - stamp)
                if stamp >= self.latency_from:
                    self.delays[now - stamp] += n
        if self.on_frame is not None:
            self.on_frame(self, tag, count)
        if self._waiters:
            still = []
            for predicate, fut in self._waiters:
                if fut.done():
                    continue
                if predicate():
                    fut.set_result(None)
                else:
                    still.append((predicate, fut))
            self._waiters = still


def _count(up: msgpack.Unpacker) -> int:
    n = 0
    while True:
        try:
            up.skip()
        except msgpack.OutOfData:
            return n
        n += 1


async def _serve(kind: str, url: str) -> None:
    """Serve until SIGTERM: this sink, or the fake Fluent Bit (which decodes everything)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "fake":
        from fakes.fluentbit import FakeFluentBit

        fake = FakeFluentBit(url)
        await fake.start()
        print("ready", flush=True)
        await stop.wait()
        await fake.stop()
    else:
        sink = BenchSink()
        await sink.start(url)
        print("ready", flush=True)
        await stop.wait()
        await sink.close()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve(sys.argv[1], sys.argv[2]))
