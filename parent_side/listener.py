"""Accept agents: handshake, validate every frame, stamp the enclave, submit, ack.

One connection, one loop: read -> decode and validate (the codec) -> stamp the tag
-> ``output.submit`` (which waits while the output is full: backpressure) -> queue
the ack. A second task writes acks in order, each once the output says the batch
is safe. A malformed frame closes that connection only; it is counted and logged
once, rate-limited per peer, and every other connection carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fluent_forward import __version__
from fluent_forward.aio import Connection, first_error, start_server
from fluent_forward.codec import (
    EventFrame,
    FrameDecoder,
    Heartbeat,
    Role,
    encode_ack,
    parse_chunk_id,
    split_entries,
)
from fluent_forward.endpoints import Endpoint
from fluent_forward.errors import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    ProtocolError,
    TransportError,
)
from fluent_forward.handshake import Ping, ServerHandshake, encode_pong

from .forwarder import Sink
from .identity import Identity, identity_of
from .outputs import RelayBatch

__all__ = ["Listener", "ListenerConfig", "PeerStats"]

log = logging.getLogger(__name__)

#: Fluent Bit closes connections on frames over 6,144,000 bytes: split below that.
UPSTREAM_SPLIT_BYTES = 4 * 1024 * 1024
#: Chunks read but not yet acked, per connection, before the relay stops reading.
MAX_PENDING_ACKS = 64


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """What the listener needs from the relay's configuration."""

    endpoint: Endpoint
    hostname: str
    shared_key: str | None = None
    max_frame_bytes: int = 4 * 1024 * 1024
    max_decompressed_bytes: int = 16 * 1024 * 1024
    max_entries: int = 500_000
    handshake_timeout: float = 10.0
    unix_mode: int | None = 0o660


@dataclass(slots=True)
class PeerStats:
    """Counters for one enclave (one identity), across its connections."""

    name: str
    cid: int | None
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    records: int = 0
    bytes: int = 0
    acks: int = 0
    protocol_errors: int = 0
    claimed_hostname: str = ""
    agent_version: str = ""
    connected_since: float = 0.0
    last_seen: float = 0.0
    last_error: str = ""


@dataclass(slots=True)
class ListenerStats:
    connections: int = 0
    open_connections: int = 0
    protocol_errors: int = 0
    auth_failures: int = 0
    peers: dict[str, PeerStats] = field(default_factory=dict)


class _RateLimitedLog:
    """At most one warning per key per interval; the rest at debug."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) >= self.interval:
            if len(self._last) > 4096:
                self._last.clear()
            self._last[key] = now
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)


class Listener:
    """The relay's server side."""

    def __init__(self, config: ListenerConfig, sink: Sink) -> None:
        self.config = config
        self.sink = sink
        self.stats = ListenerStats()
        self.server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._warn = _RateLimitedLog()
        self._closing = False

    async def start(self) -> None:
        self.server = await start_server(self._handle, self.config.endpoint,
                                         unix_mode=self.config.unix_mode)

    async def close(self) -> None:
        """Stop accepting and close every connection (agents keep what was not acked)."""
        self._closing = True
        if self.server is not None:
            self.server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    def peer_stats(self, ident: Identity) -> PeerStats:
        st = self.stats.peers.get(ident.name)
        if st is None:
            st = self.stats.peers[ident.name] = PeerStats(ident.name, ident.cid)
        return st

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        cfg = self.config
        conn = Connection(reader, writer, FrameDecoder(
            Role.SERVER, max_frame_bytes=cfg.max_frame_bytes,
            max_decompressed_bytes=cfg.max_decompressed_bytes, max_entries=cfg.max_entries))
        ident = identity_of(conn.peer)
        peer = self.peer_stats(ident)
        self.stats.connections += 1
        self.stats.open_connections += 1
        peer.connections += 1
        peer.open_connections += 1
        peer.connected_since = peer.last_seen = time.time()
        log.info("%s connected from %s", ident.name, conn.peer.address)
        try:
            await self._serve(conn, ident, peer)
        except ConnectionClosed as exc:
            if exc.partial:
                log.info("%s closed %d bytes into a frame (it will resend)", ident.name,
                         exc.partial)
        except AuthenticationError as exc:
            self.stats.auth_failures += 1
            peer.last_error = str(exc)
            self._warn.warning(f"auth:{ident.name}", "%s (%s) failed the handshake: %s",
                               ident.name, conn.peer.address, exc)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            peer.protocol_errors += 1
            peer.last_error = str(exc)
            self._warn.warning(f"proto:{ident.name}", "closing connection from %s (%s): %s",
                               ident.name, conn.peer.address, exc)
        except TransportError as exc:
            log.info("%s: %s", ident.name, exc)
        except asyncio.CancelledError:
            # Our own shutdown (close()) cancels handlers; asyncio's stream server
            # logs a cancelled handler task as an error, so end quietly instead.
            if not self._closing:
                raise
        finally:
            self.stats.open_connections -= 1
            peer.open_connections -= 1
            await conn.close()
            self._conns.discard(task)
            log.info("%s disconnected", ident.name)

    async def _serve(self, conn: Connection, ident: Identity, peer: PeerStats) -> None:
        frames = await self._handshake(conn, peer)
        acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]] = asyncio.Queue(
            MAX_PENDING_ACKS)
        await first_error(self._read_loop(conn, ident, peer, frames, acks),
                          self._ack_loop(conn, peer, acks))

    async def _handshake(self, conn: Connection, peer: PeerStats) -> list[Any]:
        """Send HELO, judge the PING. Returns frames that came after it.

        A client that skips the handshake (fluent-logger, a plain Forward client) is
        accepted when no shared key is configured.
        """
        hs = ServerHandshake(hostname=self.config.hostname, shared_key=self.config.shared_key,
                             version=__version__)
        await conn.send(hs.helo())
        frames: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.handshake_timeout
        while not frames:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HandshakeError(f"nothing received within {self.config.handshake_timeout}s"
                                     " of connecting")
            frames = await conn.read_frames(timeout=remaining)
        if isinstance(frames[0], Ping):
            ping = frames.pop(0)
            pong = hs.check(ping)
            await conn.send(encode_pong(pong))
            if not pong.auth_result:
                raise AuthenticationError(pong.reason)
            peer.claimed_hostname = ping.hostname
            peer.agent_version = ping.version
        elif self.config.shared_key is not None:
            raise AuthenticationError("the client skipped the handshake, but a shared key "
                                      "is required")
        return frames

    async def _read_loop(self, conn: Connection, ident: Identity, peer: PeerStats,
                         frames: list[Any],
                         acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]]
                         ) -> None:
        prefix = ident.tag_prefix
        while True:
            for frame in frames:
                if isinstance(frame, EventFrame):
                    await self._on_event(frame, prefix, peer, acks)
                elif not isinstance(frame, Heartbeat):
                    raise HandshakeError(f"unexpected {type(frame).__name__} after the handshake")
            frames = await conn.read_frames()
            peer.last_seen = time.time()

    async def _on_event(self, frame: EventFrame, prefix: str, peer: PeerStats,
                        acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]]
                        ) -> None:
        peer.frames += 1
        peer.records += frame.count
        peer.bytes += len(frame.entries)
        tag = prefix + frame.tag
        # Our agents' chunk ids name their run and batch: the spool uses them to take
        # a resent batch once. Other clients' ids mean nothing of the kind.
        ids = parse_chunk_id(frame.chunk) if peer.agent_version else None
        boot, seq = ids if ids is not None else (None, None)
        if len(frame.entries) <= UPSTREAM_SPLIT_BYTES:
            futures = [await self.sink.submit(RelayBatch(tag, frame.entries, frame.count),
                                              boot, seq)]
        else:
            futures = [await self.sink.submit(RelayBatch(tag, part, n), None, None)
                       for part, n in split_entries(frame.entries, UPSTREAM_SPLIT_BYTES)]
        if frame.chunk is not None:
            await acks.put((frame.chunk, futures))

    async def _ack_loop(self, conn: Connection, peer: PeerStats,
                        acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]]
                        ) -> None:
        while True:
            chunk, futures = await acks.get()
            for fut in futures:
                # shield: a closing connection must not cancel the output's future
                await asyncio.shield(fut)
            conn.write(encode_ack(chunk))
            peer.acks += 1
            if acks.empty():
                await conn.drain()
