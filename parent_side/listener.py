"""Accept agents: handshake, validate every frame, stamp the enclave, submit, ack.

One connection, one loop: read -> decode and validate (the codec) -> stamp the tag
-> ``output.submit`` (which waits while the output is full: backpressure) -> queue
the ack. A second task writes acks in order, each once the output says the batch
is safe. A malformed frame closes that connection only; it is counted and logged
once, rate-limited per peer, and every other connection carries on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fluent_forward import __version__
from fluent_forward.aio import (
    Connection,
    Peer,
    accept_handshake,
    first_error,
    peer_of,
    start_server,
)
from fluent_forward.codec import (
    EventFrame,
    FrameDecoder,
    Heartbeat,
    Role,
    encode_ack,
    first_event_time,
    iter_entries,
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
    TransportTimeout,
)
from fluent_forward.handshake import ServerHandshake

from .fairshare import FairShare
from .forwarder import Sink
from .identity import CidSet, EnclaveRegistry, Identity, identity_of, stamp_entries
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
    allowed_cids: CidSet | None = None  # vsock peers outside it are refused; None: all
    require_known_enclave: bool = False
    max_connections: int = 256
    max_connections_per_enclave: int = 8
    rate_limit: int = 0  # an operator's cap, bytes per second per enclave; 0: none
    frame_timeout: float = 30.0  # a frame begun must complete within this
    stamp_records: bool = False
    restamp_time: bool = False


@dataclass(slots=True)
class PeerStats:
    """Counters for one enclave (one identity), across its connections."""

    name: str
    cid: int | None
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    records: int = 0
    bytes_in: int = 0
    acks: int = 0
    protocol_errors: int = 0
    claimed_hostname: str = ""
    agent_version: str = ""
    connected_since: float = 0.0
    last_seen: float = 0.0
    last_error: str = ""
    enclave_id: str = ""
    debug: bool = False
    records_out: int = 0  # delivered downstream (acked by the output)
    drops: int = 0  # records the agent reported dropping (overflow drop_oldest)
    gaps: int = 0  # batches missing from an agent run's sequence
    boots: dict[bytes, int] = field(default_factory=dict)  # agent run -> highest seq seen
    skew: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=64))

    @property
    def clock_skew_ms(self) -> float | None:
        """The enclave's clock minus ours, from recent batches' first entry times.

        A batch's first line was read at most a flush interval before the batch left,
        and delivery only adds delay, so the largest (enclave - relay) difference seen
        recently is the closest to the true offset; resends after an outage only make
        the difference more negative and do not disturb it.
        """
        return max(self.skew) / 1e6 if self.skew else None

    def snapshot(self) -> dict[str, Any]:
        skew = self.clock_skew_ms
        return {"name": self.name, "cid": self.cid, "enclave_id": self.enclave_id,
                "debug": self.debug, "connected": self.open_connections > 0,
                "connections_open": self.open_connections, "connections": self.connections,
                "agent_version": self.agent_version, "claimed_hostname": self.claimed_hostname,
                "connected_since": self.connected_since, "last_seen": self.last_seen,
                "records_in": self.records, "bytes_in": self.bytes_in,
                "records_out": self.records_out, "drops": self.drops, "gaps": self.gaps,
                "clock_skew_ms": round(skew, 1) if skew is not None else None,
                "protocol_errors": self.protocol_errors, "last_error": self.last_error}


@dataclass(slots=True)
class ListenerStats:
    connections: int = 0
    open_connections: int = 0
    protocol_errors: int = 0
    auth_failures: int = 0
    refused_cid: int = 0
    refused_limit: int = 0
    timeouts: int = 0
    peers: dict[str, PeerStats] = field(default_factory=dict)


class DeliveryFailed(Exception):
    """The sink failed a batch; the agent was not acked and will resend it."""


class TokenBucket:
    """Bytes per second for one enclave, across its connections.

    Reading past the rate makes the reader wait, which fills the socket buffers and
    slows the sender: backpressure, never a drop.
    """

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


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

    def __init__(self, config: ListenerConfig, sink: Sink,
                 registry: EnclaveRegistry | None = None,
                 fair: FairShare | None = None) -> None:
        self.config = config
        self.sink = sink
        self.registry = registry
        #: Each enclave's share of what the relay holds; ``delivered`` is told by the
        #: relay as batches leave. None: no sharing (a sink that tells nothing).
        self.fair = fair
        #: Called with ("connected" | "disconnected", identity, stats) for lifecycle records.
        self.on_lifecycle: Callable[[str, Identity, PeerStats], None] | None = None
        #: Who the kernel says the peer is. A seam: tests stand in vsock peers with
        #: Unix connections, since the test machines must not open AF_VSOCK sockets.
        self.peer_of = peer_of
        self.stats = ListenerStats()
        self._buckets: dict[str, TokenBucket] = {}
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

    async def _admit(self, writer: asyncio.StreamWriter) -> tuple[Identity, Peer] | None:
        """Decide, before reading a byte, whether this peer may talk to us, and who it is."""
        cfg = self.config
        peer = self.peer_of(writer)
        cid = peer.cid
        if cid is not None and cfg.allowed_cids is not None and cid not in cfg.allowed_cids:
            self.stats.refused_cid += 1
            self._warn.warning(f"cid:{cid}", "refused a connection from CID %d: not in the "
                               "allow-list (%s; see --allow-cid)", cid, cfg.allowed_cids)
            return None
        if self.stats.open_connections >= cfg.max_connections:
            self.stats.refused_limit += 1
            self._warn.warning("max-conn", "refused a connection from %s: %d connections "
                               "open (--max-connections)", peer.address, cfg.max_connections)
            return None
        enclave = None
        if cid is not None and self.registry is not None:
            enclave = await self.registry.lookup(cid)
            if enclave is None and cfg.require_known_enclave:
                self.stats.refused_cid += 1
                self._warn.warning(f"unknown:{cid}", "refused a connection from CID %d: "
                                   "describe-enclaves does not list it "
                                   "(--require-known-enclave)", cid)
                return None
        ident = identity_of(peer, enclave)
        st = self.stats.peers.get(ident.name)
        if st is not None and st.open_connections >= cfg.max_connections_per_enclave:
            self.stats.refused_limit += 1
            self._warn.warning(f"enc-conn:{ident.name}", "refused a connection from %s: it "
                               "has %d open (--max-connections-per-enclave)", ident.name,
                               st.open_connections)
            return None
        return ident, peer

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            admitted = await self._admit(writer)
            if admitted is None:
                writer.close()  # before a single byte is read
                return
            await self._connection(reader, writer, *admitted)
        except asyncio.CancelledError:
            # Our own shutdown (close()) cancels handlers; asyncio's stream server
            # logs a cancelled handler task as an error, so end quietly instead.
            if not self._closing:
                raise
        finally:
            self._conns.discard(task)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          ident: Identity, peer_address: Peer) -> None:
        cfg = self.config
        conn = Connection(reader, writer, FrameDecoder(
            Role.SERVER, max_frame_bytes=cfg.max_frame_bytes,
            max_decompressed_bytes=cfg.max_decompressed_bytes, max_entries=cfg.max_entries))
        conn.peer = peer_address
        peer = self.peer_stats(ident)
        if ident.enclave is not None:
            peer.enclave_id, peer.debug = ident.enclave.enclave_id, ident.enclave.debug
        self.stats.connections += 1
        self.stats.open_connections += 1
        peer.connections += 1
        peer.open_connections += 1
        peer.connected_since = peer.last_seen = time.time()
        where = conn.peer.address
        if ident.enclave is not None:
            where += f", {ident.enclave.enclave_id}" + (", DEBUG MODE" if ident.enclave.debug
                                                        else "")
        log.info("%s connected (%s)", ident.name, where)
        greeted: list[bool] = []

        def connected() -> None:
            greeted.append(True)
            self._lifecycle("connected", ident, peer)

        try:
            await self._serve(conn, ident, peer, connected)
        except ConnectionClosed as exc:
            if exc.partial:
                log.info("%s closed %d bytes into a frame (it will resend)", ident.name,
                         exc.partial)
        # Messages, not exception objects, go to the log: a handler that keeps records
        # (pytest's capture, a MemoryHandler) would otherwise pin each exception's
        # traceback, and with it this connection's frames and buffers.
        except AuthenticationError as exc:
            self.stats.auth_failures += 1
            peer.last_error = str(exc)
            self._warn.warning(f"auth:{ident.name}", "%s (%s) failed the handshake: %s",
                               ident.name, conn.peer.address, peer.last_error)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            peer.protocol_errors += 1
            peer.last_error = str(exc)
            self._warn.warning(f"proto:{ident.name}", "closing connection from %s (%s): %s",
                               ident.name, conn.peer.address, peer.last_error)
        except TransportTimeout as exc:
            self.stats.timeouts += 1
            peer.last_error = str(exc)
            self._warn.warning(f"timeout:{ident.name}", "closing connection from %s (%s): %s",
                               ident.name, conn.peer.address, peer.last_error)
        except DeliveryFailed as exc:
            self._warn.warning(f"store:{ident.name}", "closing connection from %s: %s "
                               "(it will resend)", ident.name, str(exc))
        except TransportError as exc:
            log.info("%s: %s", ident.name, str(exc))
        finally:
            self.stats.open_connections -= 1
            peer.open_connections -= 1
            await conn.close()
            log.info("%s disconnected", ident.name)
            if greeted:  # every "connected" record gets its "disconnected"
                self._lifecycle("disconnected", ident, peer)

    def _lifecycle(self, event: str, ident: Identity, peer: PeerStats) -> None:
        if self.on_lifecycle is not None:
            self.on_lifecycle(event, ident, peer)

    async def _serve(self, conn: Connection, ident: Identity, peer: PeerStats,
                     greeted: Callable[[], None]) -> None:
        frames = await self._handshake(conn, peer)
        greeted()
        acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]] = asyncio.Queue(
            MAX_PENDING_ACKS)
        await first_error(self._read_loop(conn, ident, peer, frames, acks),
                          self._ack_loop(conn, peer, acks))

    async def _handshake(self, conn: Connection, peer: PeerStats) -> list[Any]:
        """Send HELO, judge the PING; return the frames that came after it.

        A client that skips the handshake (fluent-logger, a plain Forward client) is
        accepted when no shared key is configured.
        """
        hs = ServerHandshake(hostname=self.config.hostname, shared_key=self.config.shared_key,
                             version=__version__)
        ping, frames = await accept_handshake(conn, hs, timeout=self.config.handshake_timeout,
                                              required=self.config.shared_key is not None)
        if ping is not None:
            peer.claimed_hostname = ping.hostname
            peer.agent_version = ping.version
        return frames

    async def _read_loop(self, conn: Connection, ident: Identity, peer: PeerStats,
                         frames: list[Any],
                         acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]]
                         ) -> None:
        while True:
            for frame in frames:
                if isinstance(frame, EventFrame):
                    await self._on_event(frame, ident, peer, acks)
                elif not isinstance(frame, Heartbeat):
                    raise HandshakeError(f"unexpected {type(frame).__name__} after the handshake")
            if self.fair is not None:
                await self.fair.wait(ident.name)
            before = conn.bytes_in
            cfg = self.config  # read again each time: a reload may have changed it
            try:
                # Between frames an agent may be quiet for hours; inside one, it may not.
                frames = await conn.read_frames(
                    timeout=cfg.frame_timeout if conn.decoder.buffered else None)
            except TransportTimeout:
                raise TransportTimeout(f"half a frame ({conn.decoder.buffered} bytes) and "
                                       f"nothing more for {cfg.frame_timeout}s") from None
            peer.last_seen = time.time()
            bucket = self._bucket(ident.name)
            if bucket is not None:
                await bucket.take(conn.bytes_in - before)

    def _bucket(self, name: str) -> TokenBucket | None:
        """The enclave's rate bucket, following the configured rate (None: no limit)."""
        rate = self.config.rate_limit
        if not rate:
            return None
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = TokenBucket(rate, max(rate, 1 << 20))
        elif bucket.rate != rate:
            bucket.rate, bucket.burst = rate, max(rate, 1 << 20)
        return bucket

    async def _on_event(self, frame: EventFrame, ident: Identity, peer: PeerStats,
                        acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]]
                        ) -> None:
        peer.frames += 1
        peer.records += frame.count
        peer.bytes_in += len(frame.entries)
        now = time.time_ns()
        first = first_event_time(frame.entries)
        if first is not None:
            peer.skew.append(first - now)
        tag = ident.tag_prefix + frame.tag
        entries = frame.entries
        if frame.tag == "agent.log":  # rare and small: look for the agent's drop reports
            peer.drops += sum(int(r.get("records", 0)) for _, r in iter_entries(entries)
                              if isinstance(r, dict) and r.get("event") == "dropped")
        cfg = self.config
        if cfg.stamp_records or cfg.restamp_time:
            fields: dict[str, object] = {}
            if cfg.stamp_records:
                fields = ident.fields()
                if peer.claimed_hostname:  # what the agent says of itself: a claim, apart
                    fields["claimed_hostname"] = peer.claimed_hostname
            entries = stamp_entries(entries, fields, restamp_ns=now if cfg.restamp_time else None)
        # Our agents' chunk ids name their run and batch: the spool uses them to take
        # a resent batch once, and a jump in the sequence is a gap (dropped batches).
        # Other clients' ids mean nothing of the kind.
        ids = parse_chunk_id(frame.chunk) if peer.agent_version else None
        boot, seq = ids if ids is not None else (None, None)
        if boot is not None and seq is not None:
            self._track_sequence(peer, boot, seq)
        if len(entries) <= UPSTREAM_SPLIT_BYTES:
            futures = [await self.sink.submit(RelayBatch(tag, entries, frame.count), boot, seq)]
        else:
            futures = [await self.sink.submit(RelayBatch(tag, part, n), None, None)
                       for part, n in split_entries(entries, UPSTREAM_SPLIT_BYTES)]
        if self.fair is not None:
            self.fair.add(ident.name, len(entries))
        if frame.chunk is not None:
            await acks.put((frame.chunk, futures))

    def _track_sequence(self, peer: PeerStats, boot: bytes, seq: int) -> None:
        last = peer.boots.pop(boot, None)
        if last is not None and seq > last + 1:
            peer.gaps += seq - last - 1
            self._warn.warning(f"gap:{peer.name}", "%s: agent run %s skipped %d batch(es) "
                               "(%d..%d): it dropped them", peer.name, boot.hex(),
                               seq - last - 1, last + 1, seq - 1)
        peer.boots[boot] = max(seq, last or 0)  # re-inserted: most recent last
        while len(peer.boots) > 16:
            del peer.boots[next(iter(peer.boots))]

    async def _ack_loop(self, conn: Connection, peer: PeerStats,
                        acks: asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]]
                        ) -> None:
        while True:
            chunk, futures = await acks.get()
            for fut in futures:
                try:
                    # shield: a closing connection must not cancel the output's future
                    await asyncio.shield(fut)
                except Exception as exc:
                    # The spool or output could not keep the batch (a disk error): no
                    # ack; closing makes the agent resend it.
                    raise DeliveryFailed(f"could not store a batch: {exc}") from exc
            conn.write(encode_ack(chunk))
            peer.acks += 1
            if acks.empty():
                await conn.drain()
