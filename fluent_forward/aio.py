"""The one asyncio and socket module: connect, listen, and a framed connection.

Everything above this module speaks in ``Endpoint`` values and this package's
errors; ``OSError``, ``IncompleteReadError`` and ``TimeoutError`` are mapped here and
nowhere else.

AF_VSOCK goes through ``sock=``: asyncio cannot resolve vsock addresses, so the
client socket is connected with ``loop.sock_connect`` first and the listening socket
is bound before ``start_server`` takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .codec import Ack, Frame, FrameDecoder, Role
from .endpoints import Endpoint, Scheme
from .errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    HandshakeError,
    MalformedFrame,
    ProtocolError,
    ReadError,
    TransportError,
    TransportTimeout,
    WriteError,
)
from .handshake import ClientHandshake, Helo, Ping, Pong, ServerHandshake, encode_pong
from .retry import backoff

__all__ = [
    "READ_SIZE",
    "STREAM_LIMIT",
    "accept_handshake",
    "BatchSource",
    "ClientStats",
    "Connection",
    "ForwardClient",
    "OutboundBatch",
    "Peer",
    "map_exceptions",
    "open_connection",
    "bound_port",
    "first_error",
    "peer_of",
    "start_server",
]

#: Bytes asked of the kernel per read: big enough that a busy stream costs one
#: syscall per batch, not per record.
READ_SIZE = 256 * 1024
#: StreamReader buffer limit (it pauses reading at twice this).
STREAM_LIMIT = 1024 * 1024
#: vsock socket buffer: the kernel default is 256 KiB; more keeps two batches in flight.
VSOCK_BUFFER = 1024 * 1024

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.contextmanager
def map_exceptions(error: type[TransportError], what: str) -> Iterator[None]:
    """Turn OS and asyncio failures into ``error`` (or ``TransportTimeout``)."""
    try:
        yield
    except TransportError:
        raise
    except TimeoutError as exc:
        raise TransportTimeout(f"{what}: timed out") from exc
    except asyncio.IncompleteReadError as exc:
        raise ConnectionClosed(f"{what}: peer closed", len(exc.partial)) from exc
    except OSError as exc:
        raise error(f"{what}: {exc.strerror or exc}") from exc


def _vsock_socket() -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    for option in (socket.SO_VM_SOCKETS_BUFFER_MAX_SIZE, socket.SO_VM_SOCKETS_BUFFER_SIZE):
        # The size is clamped to [min, max]: raise max first. Old kernels may refuse.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.AF_VSOCK, option, VSOCK_BUFFER)
    sock.setblocking(False)
    return sock


async def open_connection(endpoint: Endpoint, *, timeout: float = 10.0,
                          limit: int = STREAM_LIMIT
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``endpoint``; raise ``ConnectError`` or ``TransportTimeout``."""
    with map_exceptions(ConnectError, f"connect to {endpoint}"):
        async with asyncio.timeout(timeout):
            if endpoint.scheme is Scheme.TCP:
                return await asyncio.open_connection(endpoint.host, endpoint.port, limit=limit)
            if endpoint.scheme is Scheme.UNIX:
                return await asyncio.open_unix_connection(endpoint.path, limit=limit)
            sock = _vsock_socket()
            try:
                await asyncio.get_running_loop().sock_connect(sock, (endpoint.cid, endpoint.port))
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock, limit=limit)
    raise AssertionError("unreachable")  # pragma: no cover


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
                       unix_mode: int | None = None, backlog: int = 128) -> asyncio.Server:
    """Listen on ``endpoint``; raise ``ConnectError`` if that is not possible.

    Args:
        handler: called with (reader, writer) for each accepted connection.
        unix_mode: permission bits for a Unix socket file (e.g. ``0o660``).
    """
    with map_exceptions(ConnectError, f"listen on {endpoint}"):
        if endpoint.scheme is Scheme.TCP:
            return await asyncio.start_server(handler, endpoint.host, endpoint.port,
                                              limit=limit, backlog=backlog)
        if endpoint.scheme is Scheme.UNIX:
            _prepare_unix_path(endpoint.path)
            server = await asyncio.start_unix_server(handler, endpoint.path, limit=limit,
                                                     backlog=backlog)
            if unix_mode is not None:
                os.chmod(endpoint.path, unix_mode)
            return server
        sock = _vsock_socket()
        try:
            sock.bind((endpoint.cid, endpoint.port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.start_server(handler, sock=sock, limit=limit, backlog=backlog)
    raise AssertionError("unreachable")  # pragma: no cover


def bound_port(server: asyncio.Server) -> int:
    """The port a TCP or vsock server is bound to (useful after listening on port 0)."""
    return int(server.sockets[0].getsockname()[1])


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end, as the kernel reports it.

    Attributes:
        scheme: the transport.
        cid: the vsock peer's context id (set by the hypervisor), or None.
        address: a printable address.
    """

    scheme: Scheme
    cid: int | None
    address: str


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """The peer of an accepted or connected stream."""
    sock = writer.get_extra_info("socket")
    name = writer.get_extra_info("peername")
    family = getattr(sock, "family", None)
    if family == socket.AF_VSOCK:
        cid, port = name
        return Peer(Scheme.VSOCK, int(cid), f"vsock://{cid}:{port}")
    if family == socket.AF_UNIX:
        try:
            pid, uid, _ = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            return Peer(Scheme.UNIX, None, f"unix:pid={pid},uid={uid}")
        except (OSError, AttributeError):
            return Peer(Scheme.UNIX, None, f"unix:{name or 'peer'}")
    host, port = name[0], name[1]
    return Peer(Scheme.TCP, None, f"tcp://{host}:{port}")


class Connection:
    """A Forward connection: one reader feeding one decoder, writes with drain.

    The loop every user runs is ``frames = await conn.read_frames()`` -> handle ->
    ``conn.write(...)`` -> ``await conn.drain()``; exactly one task reads.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 decoder: FrameDecoder, *, name: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = decoder
        self.peer = peer_of(writer)
        self.name = name or self.peer.address
        self.bytes_in = 0

    async def read_frames(self, timeout: float | None = None) -> list[Frame]:
        """Wait for bytes and return the frames they complete (maybe an empty list).

        Raises:
            ConnectionClosed: the peer closed (``partial`` counts bytes of a cut frame).
            ProtocolError: the bytes are not valid Forward; close the connection.
            TransportTimeout: nothing arrived within ``timeout``.
        """
        with map_exceptions(ReadError, f"read from {self.name}"):
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
        if not data:
            partial = self.decoder.buffered
            raise ConnectionClosed(f"{self.name} closed the connection"
                                   + (f" {partial} bytes into a frame" if partial else ""),
                                   partial)
        self.bytes_in += len(data)
        return self.decoder.feed(data)

    def write(self, data: bytes) -> None:
        """Queue bytes; follow with ``drain()``."""
        if self.writer.is_closing():
            raise WriteError(f"write to {self.name}: connection is closing")
        self.writer.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        with map_exceptions(WriteError, f"write to {self.name}"):
            await self.writer.drain()

    async def send(self, data: bytes) -> None:
        """``write`` then ``drain``."""
        self.write(data)
        await self.drain()

    async def close(self) -> None:
        """Close and wait for the transport to finish; never raises transport errors."""
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


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
    for task in tasks:
        if task in done and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


class OutboundBatch(Protocol):
    """What a ``ForwardClient`` sends: a complete frame and the chunk id it carries."""

    @property
    def chunk(self) -> str: ...

    @property
    def frame(self) -> bytes: ...


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
    batches_sent: int = 0
    batches_acked: int = 0
    batches_resent: int = 0
    bogus_acks: int = 0
    ack_timeouts: int = 0
    handshakes: int = 0
    last_error: str = ""


class ForwardClient:
    """Keep one Forward connection and move a source's batches over it, with acks.

    Connect (with capped, jittered backoff between attempts, forever), do the
    handshake if the server sends HELO, then send batches while fewer than
    ``window`` are unacked and read acks. When the connection is lost, every unacked
    batch goes back to the source to be resent first on the next connection.

    Args:
        endpoint: the server.
        source: the batches.
        handshake: our side of the handshake.
        handshake_wait: after connecting, wait this long for a HELO and go on without
            a handshake if none comes (0: do not wait; a HELO arriving later is then
            waited for, and answered, from the next connection on: see
            ``ClientHandshake.late_helo``).
        require_handshake: a HELO must come (we hold a shared key).
        window: most batches sent and not acked.
        ack_timeout: with batches unacked and nothing heard for this long, drop the
            connection and resend (None: wait forever; slow acks are backpressure).
        max_inbound_frame: largest frame accepted from the server (acks are tiny).
        name: used in log lines.
        on_connect, on_disconnect: called when a connection is up (after the
            handshake, before the first batch is taken) and when it is gone.
    """

    def __init__(self, endpoint: Endpoint, source: BatchSource, handshake: ClientHandshake, *,
                 handshake_wait: float = 0.5, require_handshake: bool = False,
                 window: int = 8, connect_timeout: float = 5.0, max_backoff: float = 5.0,
                 ack_timeout: float | None = None, max_inbound_frame: int = 64 * 1024,
                 name: str = "peer", logger: logging.Logger | None = None,
                 on_connect: Callable[[], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.source = source
        self.handshake = handshake
        self.handshake_wait = handshake_wait
        self.require_handshake = require_handshake
        self.window = window
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.ack_timeout = ack_timeout
        self.max_inbound_frame = max_inbound_frame
        self.name = name
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.log = logger or logging.getLogger(__name__)
        self.stats = ClientStats()
        self.connected = asyncio.Event()
        #: The server of the last connection, as the kernel names it.
        self.peer = ""
        self._unacked = 0

    async def run(self) -> None:
        """Run until cancelled. Never raises: a bug here is logged and the loop restarts."""
        while True:
            try:
                await self._run()
            except Exception:
                self.log.exception("%s client failed unexpectedly; restarting in 1s", self.name)
                self.source.requeue_unacked()
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        delays = backoff(initial=0.05, maximum=self.max_backoff)
        while True:
            try:
                conn = await self._connect()
            except (TransportError, ProtocolError) as exc:
                self.stats.connect_failures += 1
                self._failed(exc, first=self.stats.connect_failures == 1)
                await asyncio.sleep(next(delays))
                continue
            delays = backoff(initial=0.05, maximum=self.max_backoff)
            try:
                if self.on_connect is not None:
                    self.on_connect()
                await first_error(self._send_loop(conn), self._ack_loop(conn))
            except (TransportError, ProtocolError) as exc:
                self._failed(exc, first=True)
            finally:
                self.connected.clear()
                if self.on_disconnect is not None:
                    self.on_disconnect()
                self.stats.disconnects += 1
                await conn.close()
                self._unacked = 0
                requeued = self.source.requeue_unacked()
                if requeued:
                    self.stats.batches_resent += requeued
                    self.log.info("%s: %d unacked batches will be resent", self.name, requeued)
            await asyncio.sleep(next(delays))

    def _failed(self, exc: BaseException, *, first: bool) -> None:
        # The message, not the exception, goes to the log: a handler that keeps records
        # would otherwise pin its traceback and the connection's buffers with it.
        error = self.stats.last_error = str(exc)
        if isinstance(exc, AuthenticationError):
            self.log.error("%s %s refused the handshake: %s (check the shared keys)",
                           self.name, self.endpoint, error)
        elif first or self.log.isEnabledFor(logging.DEBUG):
            self.log.warning("%s %s: %s; retrying", self.name, self.endpoint, error)
        else:
            self.log.info("%s %s: %s; retrying", self.name, self.endpoint, error)

    async def _connect(self) -> Connection:
        reader, writer = await open_connection(self.endpoint, timeout=self.connect_timeout)
        decoder = FrameDecoder(Role.CLIENT, max_frame_bytes=self.max_inbound_frame, max_entries=1)
        conn = Connection(reader, writer, decoder, name=self.name)
        try:
            await self._handshake(conn)
        except BaseException:
            await conn.close()
            raise
        self.stats.connects += 1
        self.peer = peer_of(writer).address  # a Unix server's pid: a restart shows
        self.connected.set()
        self.log.info("connected to %s %s", self.name, self.endpoint)
        return conn

    async def _next_frame(self, conn: Connection, deadline: float) -> Frame:
        loop = asyncio.get_running_loop()
        while True:
            frames = await conn.read_frames(timeout=max(deadline - loop.time(), 0.0))
            if frames:
                if len(frames) > 1:
                    raise HandshakeError("server sent more than one handshake message")
                return frames[0]

    async def _handshake(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        wait = self.connect_timeout if self.require_handshake else self.handshake_wait
        if wait <= 0:
            return
        try:
            helo = await self._next_frame(conn, loop.time() + wait)
        except TransportTimeout:
            if self.require_handshake:
                raise HandshakeError("no HELO from the server, but we hold a shared key: "
                                     "is shared_key set on its side?") from None
            return  # a plain Forward input: no handshake
        if not isinstance(helo, Helo):
            raise HandshakeError(f"expected HELO, got {type(helo).__name__}")
        await conn.send(self.handshake.ping(helo))
        try:
            pong = await self._next_frame(conn, loop.time() + self.connect_timeout)
        except ConnectionClosed:
            # Fluent Bit closes without a PONG when the shared key does not match.
            raise AuthenticationError("it closed the connection instead of answering our "
                                      "PING: the shared keys probably differ") from None
        if not isinstance(pong, Pong):
            raise HandshakeError(f"expected PONG, got {type(pong).__name__}")
        self.handshake.check(pong)
        self.stats.handshakes += 1

    def _late_helo(self, helo: Helo) -> None:
        """A HELO after we began sending: wait for it, and answer it, from now on (the
        server let these frames through without one, or closes and we connect again)."""
        note = self.handshake.late_helo(helo)
        if self.handshake_wait < self.connect_timeout:
            self.handshake_wait = self.connect_timeout
            self.log.warning("%s %s %s", self.name, self.endpoint, note)

    async def _send_loop(self, conn: Connection) -> None:
        while True:
            batch = await self.source.next_batch(self.window)
            conn.write(batch.frame)
            self._unacked += 1
            self.stats.batches_sent += 1
            await conn.drain()

    async def _ack_loop(self, conn: Connection) -> None:
        while True:
            try:
                frames = await conn.read_frames(timeout=self.ack_timeout)
            except TransportTimeout:
                if self._unacked:
                    self.stats.ack_timeouts += 1
                    raise TransportTimeout(f"no ack from {self.name} in {self.ack_timeout}s "
                                           f"with {self._unacked} batches waiting") from None
                continue
            for frame in frames:
                if isinstance(frame, Helo):
                    self._late_helo(frame)
                    continue
                if not isinstance(frame, Ack):
                    raise MalformedFrame(f"unexpected {type(frame).__name__} after handshake")
                if self.source.ack(frame.chunk) is None:
                    # A peer that acks what we never sent is broken or lying; one that
                    # does so instead of acking what we did send would stall us forever.
                    self.stats.bogus_acks += 1
                    raise MalformedFrame(f"{self.name} acked a chunk we did not send on this "
                                         "connection")
                self._unacked = max(self._unacked - 1, 0)
                self.stats.batches_acked += 1


async def accept_handshake(conn: Connection, hs: ServerHandshake, *, timeout: float,
                           required: bool) -> tuple[Ping | None, list[Frame]]:
    """The server's side of the handshake on a fresh connection.

    Sends HELO and waits (at most ``timeout``) for the client's first frames. A PING
    is judged and answered with PONG. A client that goes on without one (a plain
    Forward client such as fluent-logger) is let through unless ``required``.

    Returns:
        The PING (None if there was none) and the frames that came after it.

    Raises:
        HandshakeError: nothing came in time.
        AuthenticationError: the PING failed, or was required and missing.
    """
    await conn.send(hs.helo())
    frames: list[Frame] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not frames:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise HandshakeError(f"nothing received within {timeout}s of connecting")
        try:
            frames = await conn.read_frames(timeout=remaining)
        except TransportTimeout:
            raise HandshakeError(f"nothing received within {timeout}s of connecting") from None
    if isinstance(frames[0], Ping):
        ping = frames.pop(0)
        assert isinstance(ping, Ping)
        pong = hs.check(ping)
        await conn.send(encode_pong(pong))
        if not pong.auth_result:
            raise AuthenticationError(pong.reason)
        return ping, frames
    if required:
        raise AuthenticationError("the client skipped the handshake, but a shared key is "
                                  "required")
    return None, frames
