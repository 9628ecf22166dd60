"""The one asyncio and socket module: connect, listen, and a framed connection.

Everything above this module speaks in ``Endpoint`` values and this package's
errors; ``OSError`` and ``TimeoutError`` are mapped here and nowhere else.

AF_VSOCK goes through ``sock=``: asyncio cannot resolve vsock addresses, so the
client socket is connected with ``loop.sock_connect`` first and the listening socket
is bound before ``start_server`` takes it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from .endpoints import Endpoint, Scheme
from .errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ProtocolError,
    ReadError,
    TransportError,
    TransportTimeout,
    WriteError,
)
from .handshake import ClientHandshake
from .retry import backoff
from .session import ClientSession, Session, State

__all__ = [
    "READ_SIZE",
    "STREAM_LIMIT",
    "BatchSource",
    "ChunkReader",
    "ClientStats",
    "Connection",
    "Ending",
    "ForwardClient",
    "ForwardServer",
    "OutboundBatch",
    "PeerAddress",
    "map_exceptions",
    "open_connection",
    "ending_of",
    "first_error",
    "peer_of",
    "retrieved",
    "start_server",
    "start_task",
    "until",
]

#: Bytes asked of the kernel per read: big enough that a busy stream costs one
#: syscall per batch, not per record.
READ_SIZE = 256 * 1024
#: StreamReader buffer limit (it pauses reading at twice this).
STREAM_LIMIT = 1024 * 1024
#: vsock socket buffer: the kernel default is 256 KiB; more keeps two batches in flight.
VSOCK_BUFFER = 1024 * 1024

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def start_task(tasks: set[asyncio.Task[Any]], coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run ``coro`` as a task held in ``tasks`` until it ends: the event loop keeps only
    a weak reference to a task, so one nobody holds may be collected before it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def until(changed: asyncio.Event, done: Callable[[], bool]) -> None:
    """Return once ``done()``, looking again each time ``changed`` is set (whoever
    changes what ``done`` reads sets it)."""
    while not done():
        changed.clear()
        await changed.wait()


def retrieved(fut: asyncio.Future[Any]) -> None:
    """A done-callback for an outcome nobody waits for: reading it keeps asyncio from
    logging "exception was never retrieved" (a connection that waited for it may be
    gone, or the outcome changes nothing, as for a notice sent on a best-effort basis)."""
    if not fut.cancelled():
        fut.exception()


@contextlib.contextmanager
def map_exceptions(error: type[TransportError], what: str) -> Iterator[None]:
    """Turn OS and asyncio failures into ``error`` (or ``TransportTimeout``)."""
    try:
        yield
    except TransportError:
        raise
    except TimeoutError as exc:
        raise TransportTimeout(f"{what}: timed out") from exc
    except OSError as exc:
        # asyncio keeps a transport's error (the stream reader holds it to raise it
        # again), and its traceback holds the transport's frame and, once raised here,
        # ours: a cycle that pins the connection's buffers until the cyclic collector
        # runs, which under an attack can be hundreds of megabytes later. The message
        # is what we report; drop the frames.
        exc.__traceback__ = None
        raise error(f"{what}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _vsock_socket() -> Iterator[socket.socket]:
    """A non-blocking vsock socket for the block to connect or bind; closed if it fails."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        for option in (socket.SO_VM_SOCKETS_BUFFER_MAX_SIZE, socket.SO_VM_SOCKETS_BUFFER_SIZE):
            # The size is clamped to [min, max]: raise max first. Old kernels may refuse.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.AF_VSOCK, option, VSOCK_BUFFER)
        sock.setblocking(False)
        yield sock
    except BaseException:
        sock.close()
        raise


class ChunkReader(asyncio.StreamReader):
    """A ``StreamReader`` whose ``read`` hands over the bytes the transport read, uncopied.

    asyncio's (3.11) copies every read three times: into its buffer, out of it as a
    bytearray slice, and that into bytes; with batches at hundreds of MB/s that was a
    tenth of the relay's CPU. Here the transport's bytes objects wait in a queue and
    ``read(n)`` returns the first one whole (cut only past ``n``), with asyncio's flow
    control (reading pauses past twice ``limit`` queued, resumes at ``limit``). Only
    ``read`` is offered, which is what ``Connection`` uses; other readers (the admin
    socket's ``readline``) stay asyncio's own.
    """

    def __init__(self, limit: int = STREAM_LIMIT) -> None:
        super().__init__(limit=limit)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0

    # asyncio's private state (_eof, _paused, _transport, ...) is untyped: reached
    # through ``st``. Its names are those of CPython 3.11 to 3.13's streams.py.
    def feed_data(self, data: Any) -> None:
        st: Any = self
        assert not st._eof, "feed_data after feed_eof"
        if not data:
            return
        if type(data) is not bytes:  # keep nothing the transport may reuse
            data = bytes(data)
        self._chunks.append(data)
        self._queued += len(data)
        st._wakeup_waiter()
        if st._transport is not None and not st._paused and self._queued > 2 * st._limit:
            try:
                st._transport.pause_reading()
            except NotImplementedError:
                st._transport = None
            else:
                st._paused = True

    def at_eof(self) -> bool:
        st: Any = self
        return bool(st._eof and not self._chunks)

    async def read(self, n: int = -1) -> bytes:
        st: Any = self
        if n < 0:
            raise ValueError("ChunkReader reads at most n bytes at a time (n >= 0)")
        if st._exception is not None:
            raise st._exception
        if n == 0:
            return b""
        if not self._chunks and not st._eof:
            await st._wait_for_data("read")
        if not self._chunks:
            return b""  # end of stream
        data = self._chunks.popleft()
        if len(data) > n:
            self._chunks.appendleft(data[n:])
            data = data[:n]
        self._queued -= len(data)
        if st._paused and self._queued <= st._limit:
            st._paused = False
            st._transport.resume_reading()
        return data

    async def readline(self) -> bytes:
        raise NotImplementedError("ChunkReader offers read() only")

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        raise NotImplementedError("ChunkReader offers read() only")

    async def readexactly(self, n: int) -> bytes:
        raise NotImplementedError("ChunkReader offers read() only")


Reader = Callable[[int], asyncio.StreamReader]


async def open_connection(endpoint: Endpoint, *, timeout: float = 10.0,
                          limit: int = STREAM_LIMIT, reader: Reader = asyncio.StreamReader
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``endpoint``; raise ``ConnectError`` or ``TransportTimeout``.

    As ``asyncio.open_connection``, with ``reader(limit)`` making the stream reader
    (``ChunkReader`` for Forward connections)."""
    loop = asyncio.get_running_loop()
    stream = reader(limit)
    protocol = asyncio.StreamReaderProtocol(stream)
    with map_exceptions(ConnectError, f"connect to {endpoint}"):
        async with asyncio.timeout(timeout):
            if endpoint.scheme is Scheme.TCP:
                transport, _ = await loop.create_connection(lambda: protocol, endpoint.host,
                                                            endpoint.port)
            elif endpoint.scheme is Scheme.UNIX:
                transport, _ = await loop.create_unix_connection(lambda: protocol,
                                                                 endpoint.path)
            else:
                with _vsock_socket() as sock:
                    await loop.sock_connect(sock, (endpoint.cid, endpoint.port))
                transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    return stream, asyncio.StreamWriter(transport, protocol, stream, loop)


def _prepare_unix_path(path: str) -> None:
    """Remove a stale socket file; refuse to clobber anything else, or a live socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConnectError(f"listen on unix://{path}: the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from a process that died
            return
    raise ConnectError(f"listen on unix://{path}: another process is listening there")


async def start_server(handler: Handler, endpoint: Endpoint, *, limit: int = STREAM_LIMIT,
                       unix_mode: int | None = None, backlog: int = 128,
                       reader: Reader = asyncio.StreamReader) -> asyncio.Server:
    """Listen on ``endpoint``; raise ``ConnectError`` if that is not possible.

    As ``asyncio.start_server``, with ``reader(limit)`` making each connection's stream
    reader (``ChunkReader`` for Forward connections).

    Args:
        handler: called with (reader, writer) for each accepted connection.
        unix_mode: permission bits for a Unix socket file (e.g. ``0o660``).
    """
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(reader(limit), handler)

    with map_exceptions(ConnectError, f"listen on {endpoint}"):
        if endpoint.scheme is Scheme.TCP:
            return await loop.create_server(protocol, endpoint.host, endpoint.port,
                                             backlog=backlog)
        if endpoint.scheme is Scheme.UNIX:
            _prepare_unix_path(endpoint.path)
            server = await loop.create_unix_server(protocol, endpoint.path, backlog=backlog)
            if unix_mode is not None:
                os.chmod(endpoint.path, unix_mode)
            return server
        with _vsock_socket() as sock:
            sock.bind((endpoint.cid, endpoint.port))
        return await loop.create_server(protocol, sock=sock, backlog=backlog)


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Who is on the other end, as the kernel reports it.

    Attributes:
        scheme: the transport.
        cid: the vsock peer's context id (set by the hypervisor), or None.
        address: a printable address.
    """

    scheme: Scheme
    cid: int | None
    address: str


def peer_of(writer: asyncio.StreamWriter) -> PeerAddress:
    """The peer of an accepted or connected stream."""
    sock = writer.get_extra_info("socket")
    name = writer.get_extra_info("peername")
    family = getattr(sock, "family", None)
    if family == socket.AF_VSOCK:
        cid, port = name
        return PeerAddress(Scheme.VSOCK, int(cid), f"vsock://{cid}:{port}")
    if family == socket.AF_UNIX:
        try:
            pid, uid, _ = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            return PeerAddress(Scheme.UNIX, None, f"unix:pid={pid},uid={uid}")
        except (OSError, AttributeError):
            return PeerAddress(Scheme.UNIX, None, f"unix:{name or 'peer'}")
    host, port = name[0], name[1]
    return PeerAddress(Scheme.TCP, None, f"tcp://{host}:{port}")


class Connection:
    """A Forward connection driven by a sans-I/O session; writes with drain.

    The loop every user runs is ``await conn.receive(session)`` -> handle
    ``session.events()`` -> ``conn.write(...)`` -> ``await conn.drain()``; exactly
    one task reads.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 name: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer_of(writer)
        self.name = name or self.peer.address

    async def receive(self, session: Session[Any]) -> None:
        """Wait for bytes, or the session's next deadline, and hand either over.

        Whatever the session has to send then (a PONG, even a refusing one; a
        keepalive) is written, also when it raises.

        Raises:
            ConnectionClosed: the peer closed (``partial`` counts bytes of a cut frame).
            ProtocolError: the bytes broke the protocol; close the connection.
            TransportTimeout: one of the session's deadlines passed.
        """
        loop = asyncio.get_running_loop()
        self._flush(session)  # a HELO goes out before the first read
        session.start_reading(loop.time())
        try:
            with map_exceptions(ReadError, f"read from {self.name}"):
                async with asyncio.timeout(session.timeout(loop.time())):
                    data = await self.reader.read(READ_SIZE)
        except TransportTimeout:
            session.on_timer(loop.time())
        else:
            session.receive_data(data, loop.time())
        finally:
            self._flush(session)

    def _flush(self, session: Session[Any]) -> None:
        out = session.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)

    def write(self, data: bytes) -> None:
        """Queue bytes; follow with ``drain()``."""
        if self.writer.is_closing():
            raise WriteError(f"write to {self.name}: connection is closing")
        self.writer.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        with map_exceptions(WriteError, f"write to {self.name}"):
            await self.writer.drain()

    async def close(self) -> None:
        """Close and wait for the transport to finish; never raises transport errors."""
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except TimeoutError:
            pass
        except OSError as exc:  # the transport's own error again: see map_exceptions
            exc.__traceback__ = None


class Ending(StrEnum):
    """How a connection ended, for the counters and the log line each server keeps."""

    CLOSED = "closed"  # the peer closed
    AUTH = "auth"  # it failed the handshake
    PROTOCOL = "protocol"  # it broke the protocol
    TIMEOUT = "timeout"  # one of the session's deadlines passed
    TRANSPORT = "transport"  # the network failed under us


def ending_of(exc: TransportError | ProtocolError) -> Ending:
    """The ladder every server applies, most specific first."""
    if isinstance(exc, ConnectionClosed):
        return Ending.CLOSED
    if isinstance(exc, AuthenticationError):
        return Ending.AUTH
    if isinstance(exc, ProtocolError):
        return Ending.PROTOCOL
    if isinstance(exc, TransportTimeout):
        return Ending.TIMEOUT
    return Ending.TRANSPORT


class ForwardServer:
    """A listening endpoint, one task per connection, and a graceful close.

    Subclasses implement ``connection(reader, writer)``. ``close()`` stops accepting
    and cancels every connection; a connection cancelled by it ends quietly
    (asyncio's stream server would log a cancelled handler as an error).
    """

    def __init__(self, endpoint: Endpoint, *, unix_mode: int | None = 0o660) -> None:
        self.endpoint = endpoint
        self.unix_mode = unix_mode
        self.server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def start(self) -> None:
        """Listen; raise ``ConnectError`` if that is not possible."""
        self.server = await start_server(self._handle, self.endpoint, unix_mode=self.unix_mode,
                                         reader=ChunkReader)

    async def close(self) -> None:
        """Stop accepting and close every connection (what was not acked is resent)."""
        self._closing = True
        if self.server is not None:
            self.server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self.connection(reader, writer)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            self._conns.discard(task)

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection until it ends; close it."""
        raise NotImplementedError


async def first_error(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run ``coros`` together until one ends; cancel the rest; re-raise its error.

    A TaskGroup would wrap the error in an ExceptionGroup; connection loops want the
    one error that ended the connection, as itself.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    error = next((t.exception() for t in tasks
                  if t in done and not t.cancelled() and t.exception() is not None), None)
    # Raised here, the error's traceback holds this frame: were the tasks still in it
    # (one of which holds the error), that would be a cycle only the cyclic collector
    # frees, late, and with it every buffer of the connection. So they go first.
    del tasks, done, _
    if error is not None:
        try:
            raise error
        finally:
            del error


class OutboundBatch(Protocol):
    """What a ``ForwardClient`` sends: a complete frame (or its parts, in order,
    written one after the other) and the chunk id it carries."""

    @property
    def chunk(self) -> str: ...

    @property
    def frame(self) -> bytes | tuple[bytes, ...]: ...


class BatchSource(Protocol):
    """Where a ``ForwardClient`` takes batches from and reports acks to."""

    async def next_batch(self, window: int) -> OutboundBatch:
        """Wait until a batch may be sent with fewer than ``window`` unacked; take it."""
        ...

    def ack(self, chunk: str | bytes) -> object | None:
        """Free the batch ``chunk`` names; None if no such batch is unacked."""
        ...

    def requeue_unacked(self) -> int:
        """After a lost connection: put every unacked batch back, oldest first."""
        ...


@dataclass(slots=True)
class ClientStats:
    """Counters of one ``ForwardClient``."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    batches_resent: int = 0
    handshakes: int = 0  # connections opened with a HELO / PING / PONG exchange
    last_error: str = ""


class ForwardClient:
    """Keep one Forward connection and move a source's batches over it, with acks.

    Connect (with capped, jittered backoff between attempts, forever), run a
    ``ClientSession`` over the connection (its rules: the handshake, the window, the
    acks, the timers), and when the connection is lost put every unacked batch back
    in the source to be resent first on the next connection.

    Args:
        endpoint: the server.
        source: the batches.
        handshake: our side of the handshake.
        handshake_wait, require_handshake, window, ack_timeout, keepalive: each
            connection's ``ClientSession`` options;
            ``connect_timeout`` is also its handshake timeout.
        name: used in log lines.
        on_connect, on_disconnect: called when a connection is up (after the
            handshake, before the first batch is taken) and when it is gone.
    """

    def __init__(self, endpoint: Endpoint, source: BatchSource, handshake: ClientHandshake, *,
                 handshake_wait: float = 0.5, require_handshake: bool = False,
                 window: int = 8, connect_timeout: float = 5.0, max_backoff: float = 5.0,
                 ack_timeout: float | None = None, keepalive: float | None = None,
                 name: str = "peer", logger: logging.Logger | None = None,
                 on_connect: Callable[[], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.source = source
        #: Each connection's session, given that connection's clock.
        self.new_session = functools.partial(
            ClientSession, handshake, handshake_wait=handshake_wait,
            require_handshake=require_handshake, handshake_timeout=connect_timeout,
            window=window, ack_timeout=ack_timeout, keepalive=keepalive, name=name)
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.name = name
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.log = logger or logging.getLogger(__name__)
        self.stats = ClientStats()
        self.connected = asyncio.Event()
        #: The server of the last connection, as the kernel names it.
        self.peer = ""

    async def run(self) -> None:
        """Run until cancelled. Never raises: every failure is logged (a bug with its
        traceback) and the client connects again after a backoff."""
        delays = backoff(initial=0.05, maximum=self.max_backoff)
        while True:
            try:
                conn, session = await self._connect()
            except Exception as exc:
                self.stats.connect_failures += 1
                self._failed(exc, first=self.stats.connect_failures == 1)
                await asyncio.sleep(next(delays))
                continue
            delays = backoff(initial=0.05, maximum=self.max_backoff)
            try:
                if self.on_connect is not None:
                    self.on_connect()
                await first_error(self._send_loop(conn, session),
                                  self._receive_loop(conn, session))
            except Exception as exc:
                self._failed(exc, first=True)
            finally:
                await self._lost(conn)
            await asyncio.sleep(next(delays))

    async def _lost(self, conn: Connection) -> None:
        self.connected.clear()
        if self.on_disconnect is not None:
            self.on_disconnect()
        self.stats.disconnects += 1
        await conn.close()
        requeued = self.source.requeue_unacked()
        if requeued:
            self.stats.batches_resent += requeued
            self.log.info("%s: %d unacked batches will be resent", self.name, requeued)

    def _failed(self, exc: BaseException, *, first: bool) -> None:
        # The message, not the exception, goes to the log: a handler that keeps records
        # would otherwise pin its traceback and the connection's buffers with it.
        error = self.stats.last_error = str(exc)
        if not isinstance(exc, (TransportError, ProtocolError)):  # a bug, not the network
            self.log.error("%s client failed unexpectedly", self.name, exc_info=exc)
        elif isinstance(exc, AuthenticationError):
            self.log.error("%s %s refused the handshake: %s (check the shared keys)",
                           self.name, self.endpoint, error)
        elif first or self.log.isEnabledFor(logging.DEBUG):
            self.log.warning("%s %s: %s; retrying", self.name, self.endpoint, error)
        else:
            self.log.info("%s %s: %s; retrying", self.name, self.endpoint, error)

    async def _connect(self) -> tuple[Connection, ClientSession]:
        reader, writer = await open_connection(self.endpoint, timeout=self.connect_timeout,
                                               reader=ChunkReader)
        conn = Connection(reader, writer, name=self.name)
        session = self.new_session(now=asyncio.get_running_loop().time())
        try:
            while session.state is not State.OPEN:
                await conn.receive(session)
            await conn.drain()
        except BaseException:
            await conn.close()
            raise
        self.stats.connects += 1
        if session.helo is not None:
            self.stats.handshakes += 1
        self.peer = conn.peer.address  # a Unix server's pid: a restart shows
        self.connected.set()
        self.log.info("connected to %s %s", self.name, self.endpoint)
        return conn, session

    async def _send_loop(self, conn: Connection, session: ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.source.next_batch(session.window)
            session.send_batch(batch.chunk, batch.frame, loop.time())
            for part in session.parts_to_send():  # written apart: a batch is not copied
                conn.write(part)
            await conn.drain()

    async def _receive_loop(self, conn: Connection, session: ClientSession) -> None:
        while True:
            await conn.receive(session)
            if session.late_helo is not None:  # the next sessions wait for its HELO
                self.log.warning("%s %s %s", self.name, self.endpoint, session.late_helo)
                session.late_helo = None
            for acked in session.events():
                self.source.ack(acked.chunk)
