"""Where the relay sends batches: Fluent Bit's forward input, or JSON lines.

Every output has one contract: ``await output.submit(batch)`` waits while the output
is full (that wait is the backpressure agents feel) and returns a future that
resolves once the batch is safe at the destination: acked by Fluent Bit, written to
stdout, or written and fsynced to a file. The relay acks an agent's chunk only after
that future resolves.

Output URLs: ``unix:///path`` or ``tcp://host:port`` (a Fluent Bit forward input),
``stdout``, ``file:///path`` (JSON lines, one per record)::

    {"time":"2026-11-26T20:37:15.123456789Z","tag":"enclave.cid-16.app.stdout","record":{...}}
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import json
import logging
import os
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fluent_forward.aio import ForwardClient, until
from fluent_forward.codec import packed_forward_parts
from fluent_forward.conventions import chunk_id
from fluent_forward.endpoints import Endpoint, parse_endpoint
from fluent_forward.entries import iter_entries, time_to_ns
from fluent_forward.errors import EndpointError
from fluent_forward.handshake import ClientHandshake
from fluent_forward.window import InFlight

from .replay import RestartWatch

__all__ = [
    "FileOutput",
    "ForwardOutput",
    "Output",
    "OutputError",
    "OutputSpec",
    "PoisonFrame",
    "RelayBatch",
    "format_batch",
    "parse_output",
]

log = logging.getLogger(__name__)

OUTPUT_EXAMPLES = "unix:///run/fluent-bit/forward.sock, tcp://127.0.0.1:24224, stdout or file:///var/log/enclaves.jsonl"


class OutputError(Exception):
    """An output that cannot start: the message names the option and the fix."""


class PoisonFrame(Exception):
    """Downstream refused this batch again and again (closing the connection on it)."""


@dataclass(slots=True, eq=False)
class RelayBatch:
    """Entries on their way upstream, already stamped with the enclave's identity."""

    tag: str
    entries: bytes
    count: int


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """A parsed ``--output``: ``kind`` is ``forward``, ``stdout`` or ``file``."""

    kind: str
    endpoint: Endpoint | None = None
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "forward":
            return str(self.endpoint)
        return "stdout" if self.kind == "stdout" else f"file://{self.path}"


def parse_output(url: str) -> OutputSpec:
    """Parse an output URL; ``EndpointError`` says what is wrong."""
    if url == "stdout":
        return OutputSpec("stdout")
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise EndpointError(f"{url!r}: a file output needs an absolute path: "
                                "file:///var/log/enclaves.jsonl")
        return OutputSpec("file", path=path)
    if url.startswith("vsock://"):
        raise EndpointError(f"{url!r}: the output is Fluent Bit on this host; use "
                            f"one of {OUTPUT_EXAMPLES}")
    try:
        return OutputSpec("forward", endpoint=parse_endpoint(url))
    except EndpointError as exc:
        raise EndpointError(f"{exc} (outputs: {OUTPUT_EXAMPLES})") from None


class Output(ABC):
    """An output. Subclasses implement ``submit``; ``start`` and ``close`` as needed."""

    async def start(self) -> None:  # noqa: B027 - optional hook, nothing to open by default
        """Open what the output needs; raise ``OutputError`` if it cannot."""

    @abstractmethod
    async def submit(self, batch: RelayBatch) -> asyncio.Future[None]:
        """Wait for room, take ``batch``; the future resolves when it is safe."""

    async def close(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Deliver what was taken, for at most ``timeout`` seconds, then stop."""

    def status(self) -> dict[str, Any]:
        return {}

    @property
    def connected(self) -> bool:
        """Whether the output can take batches now (a stopping relay waits only then)."""
        return True

    #: Called when the destination restarted (a new Fluent Bit process), so that what
    #: it acked recently is sent again (the spool's replay window).
    on_restart: Callable[[], None] | None = None


# -- JSON lines ----------------------------------------------------------------------


def _iso(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):  # a msgpack bin: text if it is text, escaped if not
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


def _escape_surrogates(exc: UnicodeError) -> tuple[str, int]:
    r"""Encode error handler: a byte that was not UTF-8 (a lone surrogate from
    surrogateescape) becomes the JSON text ``\\xNN``, which reads back as ``\xNN``,
    as the agent writes such bytes."""
    assert isinstance(exc, UnicodeEncodeError)
    bad = exc.object[exc.start:exc.end]
    return "".join(f"\\\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else f"\\u{ord(c):04x}" for c in bad), exc.end


codecs.register_error("nel-json-escape", _escape_surrogates)


def format_batch(tag: str, entries: bytes) -> bytes:
    """JSON lines for a batch: ``{"time", "tag", "record"}`` with nanosecond times."""
    lines = []
    for t, record in iter_entries(entries):
        obj: dict[str, Any] = {}
        if type(t) is tuple:  # [[time, metadata], record]
            t, meta = t
            if meta:
                obj["metadata"] = meta
        obj = {"time": _iso(time_to_ns(t)), "tag": tag, "record": record, **obj}
        lines.append(json.dumps(obj, ensure_ascii=False, default=_json_default,
                                separators=(",", ":")))
    lines.append("")
    # Foreign clients may send invalid UTF-8 (kept as surrogates): write it escaped.
    return "\n".join(lines).encode("utf-8", "nel-json-escape")


class FileOutput(Output):
    """JSON lines appended to a file, or written to standard output (``path`` None: for
    trying it out, and for journald); acked once written, and once fsynced too when
    the file is a regular one.

    fsync runs in one thread, off the event loop; batches written while one fsync runs
    share the next.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.records = 0
        self.batches = 0
        self._fd = 1 if path is None else -1  # the file's: start() opens it
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self._waiting: list[asyncio.Future[None]] = []
        self._syncer: asyncio.Task[None] | None = None
        # fsync means nothing for a pipe or a device (/dev/null refuses it): a write is
        # all there is to wait for there. Standard output is acked once written.
        self._sync_needed = False

    async def start(self) -> None:
        if self.path is None:
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o640)
        except OSError as exc:
            raise OutputError(f"--output file://{self.path}: cannot open: {exc.strerror}; "
                              "pick a writable path or --output stdout") from None
        self._sync_needed = stat.S_ISREG(os.fstat(self._fd).st_mode)

    async def submit(self, batch: RelayBatch) -> asyncio.Future[None]:
        data = memoryview(format_batch(batch.tag, batch.entries))
        while data:
            data = data[os.write(self._fd, data):]
        self.records += batch.count
        self.batches += 1
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.create_task(self._sync(), name="fsync")
        return fut

    async def _sync(self) -> None:
        """fsync until nothing waits: batches written during one fsync share the next."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            error: OSError | None = None
            try:
                if self._sync_needed:
                    await loop.run_in_executor(self._executor, os.fsync, self._fd)
            except OSError as exc:
                error = exc
            for w in waiting:
                if w.done():
                    continue
                if error is not None:
                    w.set_exception(error)
                else:
                    w.set_result(None)

    async def close(self, timeout: float) -> None:
        if self._syncer is not None:
            await self._syncer
        if self.path is not None and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._executor.shutdown(wait=True)

    def status(self) -> dict[str, Any]:
        return {"records": self.records, "batches": self.batches}


# -- Fluent Bit's forward input -------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Pending:
    seq: int
    chunk: str
    frame: tuple[bytes, ...]  # the frame's parts: the entries are sent without a copy
    count: int
    size: int  # the frame's bytes
    done: asyncio.Future[None] = field(repr=False)
    failures: int = 0  # connections lost while it was the oldest unacked frame


class UpstreamQueue:
    """Frames waiting for Fluent Bit's ack, bounded by bytes; a ``BatchSource``.

    Poison frames: Fluent Bit closes the connection on a frame it cannot take, and
    would do so forever. It takes a connection's frames in order, so a lost
    connection is blamed on the oldest frame it left unacked only. A frame blamed
    ``isolate_after`` times is then sent alone, on a connection that has stayed up
    ``settle`` seconds (a paused Fluent Bit closes new connections at once, before it
    reads anything, so such closes are not blamed on the frame). Blamed
    ``poison_after`` times in all, the last ones alone, it is given up with
    ``PoisonFrame``.
    """

    def __init__(self, *, boot_id: bytes, max_bytes: int, isolate_after: int = 2,
                 poison_after: int = 5, settle: float = 0.2) -> None:
        self.boot_id = boot_id
        self.max_bytes = max_bytes
        self.isolate_after = isolate_after
        self.poison_after = poison_after
        self.settle = settle
        self._up_since: float | None = None
        self.poisoned = 0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._unacked: InFlight[_Pending] = InFlight()
        self._seq = 0
        self.used = 0
        self._changed = asyncio.Event()
        self.acked_records = 0

    async def put(self, tag: str, entries: bytes, count: int) -> asyncio.Future[None]:
        await until(self._changed, lambda: self.used < self.max_bytes)
        self._seq += 1
        chunk = chunk_id(self.boot_id, self._seq)
        frame = packed_forward_parts(tag, entries, {"chunk": chunk, "size": count})
        item = _Pending(self._seq, chunk, frame, count, sum(map(len, frame)),
                        asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self.used += item.size
        self._changed.set()
        return item.done

    def connection_up(self) -> None:
        self._up_since = asyncio.get_running_loop().time()

    def connection_down(self) -> None:
        self._up_since = None

    async def next_batch(self, window: int) -> _Pending:
        loop = asyncio.get_running_loop()
        while True:
            head = self._queue[0] if self._queue else None
            if head is not None and head.failures >= self.isolate_after:
                # A suspect goes alone, on a connection that has settled.
                up = self._up_since
                if not self._unacked and up is not None:
                    wait = up + self.settle - loop.time()
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                    continue
            elif head is not None and self._unacked.has_room(window) and not any(
                    i.failures >= self.isolate_after for i in self._unacked):
                break
            self._changed.clear()
            await self._changed.wait()
        item = self._queue.popleft()
        self._unacked.add(item)
        return item

    def ack(self, chunk: str | bytes) -> _Pending | None:
        item = self._unacked.ack(chunk)
        if item is None:
            return None
        self.used -= item.size
        self.acked_records += item.count
        if not item.done.done():
            item.done.set_result(None)
        self._changed.set()
        return item

    def requeue_unacked(self) -> int:
        items = self._unacked.take_all()
        if items:
            # Fluent Bit takes a connection's frames in order and acks them in order:
            # only the oldest unacked one can have made it close. The others were sent
            # behind it and are not suspects.
            items[0].failures += 1
        if len(items) == 1 and items[0].failures >= self.poison_after:
            item = items.pop()
            self.used -= item.size
            self.poisoned += 1
            if not item.done.done():
                item.done.set_exception(PoisonFrame(
                    f"Fluent Bit closed the connection {item.failures} times with this batch "
                    "unacked, the last times with it sent alone"))
        self._queue.extendleft(reversed(items))
        self._changed.set()
        return len(items)

    @property
    def depth(self) -> int:
        return len(self._queue) + len(self._unacked)

    def cancel_all(self) -> None:
        """Give up every frame not acked: their futures are cancelled."""
        for item in [*self._queue, *self._unacked.take_all()]:
            item.done.cancel()
        self._queue.clear()
        self.used = 0
        self._changed.set()

    async def wait_empty(self) -> None:
        await until(self._changed, lambda: not self.depth)


class ForwardOutput(Output):
    """Fluent Bit's forward input, over a Unix socket or TCP, with chunk acks.

    Retries forever with capped, jittered backoff: data waits in the queue (and,
    through backpressure, in the agents) until Fluent Bit is back.
    """

    def __init__(self, endpoint: Endpoint, *, hostname: str, shared_key: str | None,
                 window: int, max_queue_bytes: int, ack_timeout: float) -> None:
        self.endpoint = endpoint
        self.queue = UpstreamQueue(boot_id=os.urandom(8), max_bytes=max_queue_bytes)
        handshake = ClientHandshake(hostname=hostname, shared_key=shared_key)
        # Fluent Bit sends HELO only when it has a shared key: wait for one only then.
        self.client = ForwardClient(endpoint, self.queue, handshake, handshake_wait=0,
                                    require_handshake=shared_key is not None, window=window,
                                    max_backoff=30.0, ack_timeout=ack_timeout, name="Fluent Bit",
                                    logger=logging.getLogger("parent_side.upstream"),
                                    on_connect=self._connected,
                                    on_disconnect=self._disconnected)
        self._task: asyncio.Task[None] | None = None
        self._restarts = RestartWatch()
        self.restarts = 0

    def _connected(self) -> None:
        self.queue.connection_up()
        if self._restarts.connected(self.client.peer, self.client.stats.connect_failures):
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart()

    def _disconnected(self) -> None:
        self.queue.connection_down()
        self._restarts.lost(self.client.stats.connect_failures)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.client.run(), name="upstream")

    async def submit(self, batch: RelayBatch) -> asyncio.Future[None]:
        return await self.queue.put(batch.tag, batch.entries, batch.count)

    async def close(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.queue.wait_empty()
        except TimeoutError:
            log.warning("%d frames not acked by Fluent Bit at shutdown; they will be sent "
                        "again (from the spool, or by the agents in memory-only mode)",
                        self.queue.depth)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.queue.cancel_all()  # whoever submitted them sends them again elsewhere

    @property
    def connected(self) -> bool:
        return self.client.connected.is_set()

    def status(self) -> dict[str, Any]:
        s = self.client.stats
        return {"endpoint": str(self.endpoint), "connected": self.client.connected.is_set(),
                "queued_frames": self.queue.depth, "queued_bytes": self.queue.used,
                "acked_records": self.queue.acked_records, "poisoned": self.queue.poisoned,
                "connects": s.connects, "restarts": self.restarts,
                "disconnects": s.disconnects, "resent": s.batches_resent,
                "last_error": s.last_error}


def make_output(spec: OutputSpec, **forward_options: Any) -> Output:
    """Build the output ``spec`` names."""
    if spec.kind != "forward":
        return FileOutput(spec.path if spec.kind == "file" else None)
    assert spec.endpoint is not None
    return ForwardOutput(spec.endpoint, **forward_options)
