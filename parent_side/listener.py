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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fluent_forward import __version__
from fluent_forward.aio import (
    Connection,
    Ending,
    ForwardServer,
    PeerAddress,
    ending_of,
    first_error,
    peer_of,
)
from fluent_forward.codec import EventFrame, FrameDecoder, Role, encode_ack
from fluent_forward.errors import ProtocolError, TransportError
from fluent_forward.handshake import ServerHandshake
from fluent_forward.session import Opened, ServerSession
from fluent_forward.tags import tag_problem

from .admission import Slots, refusal
from .config import RelayConfig
from .fairshare import FairShare
from .forwarder import Sink
from .identity import EnclaveRegistry, Identity, identity_of
from .intake import EnclaveStats, take_frame
from .runs import Runs

__all__ = ["Listener"]

log = logging.getLogger(__name__)

#: Chunks read but not yet acked, per connection, before the relay stops reading.
MAX_PENDING_ACKS = 64

#: A connection's chunks read, each with the futures of its batches, in the order read.
Acks = asyncio.Queue[tuple[str | bytes, list[asyncio.Future[None]]]]


@dataclass(slots=True)
class ListenerStats:
    connections: int = 0
    open_connections: int = 0
    protocol_errors: int = 0
    auth_failures: int = 0
    refused_cid: int = 0
    refused_limit: int = 0
    timeouts: int = 0
    tags_escaped: int = 0
    peers: dict[str, EnclaveStats] = field(default_factory=dict)


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


class Listener(ForwardServer):
    """The relay's server side, configured by the relay's own ``RelayConfig``: a
    listener option is declared once, there, like every other."""

    def __init__(self, config: RelayConfig, sink: Sink, *, runs: Runs | None = None,
                 fair: FairShare | None = None) -> None:
        super().__init__(config.listen, unix_mode=config.listen_mode)
        self.config = config
        self.sink = sink
        #: Who vsock peers are (describe-enclaves), if anyone says: ``use_registry``.
        self.registry: EnclaveRegistry | None = None
        #: Where agent runs' sequences are followed and gaps found: the spool's, which
        #: follows runs across relay restarts, or (None) one of the listener's own.
        self.runs = runs if runs is not None else Runs()
        #: Each enclave's share of what the relay holds; ``delivered`` is told by the
        #: relay as batches leave. None: no sharing (a sink that tells nothing).
        self.fair = fair
        #: Called with ("connected" | "disconnected", identity, stats) for lifecycle records.
        self.on_lifecycle: Callable[[str, Identity, EnclaveStats], None] = lambda *_: None
        #: Who the kernel says the peer is. A seam: tests stand in vsock peers with
        #: Unix connections, since the test machines must not open AF_VSOCK sockets.
        self.peer_of = peer_of
        self.stats = ListenerStats()
        self._buckets: dict[str, TokenBucket] = {}
        self._warn = _RateLimitedLog()

    def reconfigure(self, config: RelayConfig) -> None:
        """Take a reloaded configuration: connections read it at their next frame.

        The endpoint and the socket's mode are those of the socket already bound.
        """
        self.config = config

    def use_registry(self, registry: EnclaveRegistry | None) -> None:
        """Name new vsock peers from ``registry`` (None: by CID) from now on."""
        self.registry = registry

    async def _admit(self, writer: asyncio.StreamWriter) -> tuple[Identity, PeerAddress] | None:
        """Decide, before reading a byte, whether this peer may talk to us, and who it is."""
        cfg = self.config
        peer = self.peer_of(writer)
        cid = peer.cid
        if cid is not None and cid not in cfg.allowed_cids:
            self.stats.refused_cid += 1
            self._warn.warning(f"cid:{cid}", "refused a connection from CID %d: not in the "
                               "allow-list (%s; see --allow-cid)", cid, cfg.allowed_cids)
            return None
        if self.stats.open_connections >= cfg.max_connections:  # before any lookup
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
        why = refusal(Slots(cfg.max_connections, cfg.max_connections_per_enclave,
                            cfg.reserved_connections),
                      self.stats.open_connections, st.open_connections if st else 0)
        if why is not None:
            self.stats.refused_limit += 1
            self._warn.warning(f"enc-conn:{ident.name}", "refused a connection from %s: %s",
                               ident.name, why)
            return None
        return ident, peer

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        admitted = await self._admit(writer)
        if admitted is None:
            writer.close()  # before a single byte is read
            return
        ident, address = admitted
        conn = Connection(reader, writer)
        conn.peer = address  # as the peer_of seam says
        peer = self.stats.peers.get(ident.name)
        if peer is None:
            peer = self.stats.peers[ident.name] = EnclaveStats(ident.name, ident.cid,
                                                               boots=self.runs)
        self.stats.connections += 1
        self.stats.open_connections += 1
        peer.connections += 1
        peer.open_connections += 1
        peer.connected_since = peer.last_seen = time.time()
        where = conn.peer.address
        if ident.enclave is not None:
            peer.enclave_id, peer.debug = ident.enclave.enclave_id, ident.enclave.debug
            where += f", {ident.enclave.enclave_id}" + (", DEBUG MODE" if ident.enclave.debug
                                                        else "")
        log.info("%s connected (%s)", ident.name, where)
        greeted: list[bool] = []
        try:
            await self._serve(conn, ident, peer, greeted)
        except (TransportError, ProtocolError, DeliveryFailed) as exc:
            self._ended(exc, ident, peer, conn.peer.address)
        finally:
            self.stats.open_connections -= 1
            peer.open_connections -= 1
            await conn.close()
            log.info("%s disconnected", ident.name)
            if greeted:  # every "connected" record gets its "disconnected"
                self.on_lifecycle("disconnected", ident, peer)

    def _ended(self, exc: TransportError | ProtocolError | DeliveryFailed, ident: Identity,
               peer: EnclaveStats, address: str) -> None:
        # Messages, not exception objects, go to the log: a handler that keeps records
        # (pytest's capture, a MemoryHandler) would otherwise pin each exception's
        # traceback, and with it this connection's frames and buffers.
        error = str(exc)
        if isinstance(exc, DeliveryFailed):
            self._warn.warning(f"store:{ident.name}", "closing connection from %s: %s "
                               "(it will resend)", ident.name, error)
            return
        what = "closing connection from %s (%s): %s"
        match ending_of(exc):
            case Ending.CLOSED:
                partial = getattr(exc, "partial", 0)
                if partial:
                    log.info("%s closed %d bytes into a frame (it will resend)", ident.name,
                             partial)
                return
            case Ending.AUTH:
                self.stats.auth_failures += 1
                what = "%s (%s) failed the handshake: %s"
            case Ending.PROTOCOL:
                self.stats.protocol_errors += 1
                peer.protocol_errors += 1
            case Ending.TIMEOUT:
                self.stats.timeouts += 1
            case Ending.TRANSPORT:
                log.info("%s: %s", ident.name, error)
                return
        peer.last_error = error
        self._warn.warning(f"{ending_of(exc)}:{ident.name}", what, ident.name, address, error)

    async def _serve(self, conn: Connection, ident: Identity, peer: EnclaveStats,
                     greeted: list[bool]) -> None:
        cfg = self.config
        hs = ServerHandshake(hostname=cfg.hostname, shared_key=cfg.shared_key,
                             version=__version__)
        session = ServerSession(
            FrameDecoder(Role.SERVER, max_frame_bytes=cfg.max_frame_bytes,
                         max_decompressed_bytes=cfg.max_decompressed_bytes,
                         max_entries=cfg.max_entries),
            hs, required=cfg.shared_key is not None, handshake_timeout=cfg.handshake_timeout,
            now=asyncio.get_running_loop().time(), name=ident.name)
        acks: Acks = asyncio.Queue(MAX_PENDING_ACKS)
        await first_error(self._read_loop(conn, session, ident, peer, greeted, acks),
                          self._ack_loop(conn, session, peer, acks))

    async def _read_loop(self, conn: Connection, session: ServerSession, ident: Identity,
                         peer: EnclaveStats, greeted: list[bool], acks: Acks) -> None:
        while True:
            if self.fair is not None:  # over its share: wait for deliveries first
                await self.fair.wait(ident.name)
            # Read again each time: a reload may have changed them.
            session.frame_timeout = self.config.frame_timeout
            session.idle_timeout = self.config.idle_timeout or None  # 0: never
            before = session.bytes_in
            await conn.receive(session)
            if session.bytes_in != before:
                peer.last_seen = time.time()
                bucket = self._bucket(ident.name)
                if bucket is not None:
                    await bucket.take(session.bytes_in - before)
            for event in session.events():
                if isinstance(event, Opened):
                    if event.ping is not None:
                        peer.claimed_hostname = event.ping.hostname
                        peer.agent_version = event.ping.version
                    greeted.append(True)
                    self.on_lifecycle("connected", ident, peer)
                else:
                    if event.chunk is not None:
                        session.owed += 1  # until the ack loop writes its ack
                    await self._on_event(event, ident, peer, acks)

    def _bucket(self, name: str) -> TokenBucket | None:
        """The enclave's rate bucket, following the configured rate (None: no limit)."""
        rate = self.config.rate_limit
        if not rate:
            return None
        bucket = self._buckets.get(name)
        if bucket is None or bucket.rate != rate:  # new, or a reload changed the rate
            bucket = self._buckets[name] = TokenBucket(rate, max(rate, 1 << 20))
        return bucket

    async def _on_event(self, frame: EventFrame, ident: Identity, peer: EnclaveStats,
                        acks: Acks) -> None:
        cfg = self.config
        intake = take_frame(frame, ident, peer, now_ns=time.time_ns(),
                            stamp_records=cfg.stamp_records, restamp_time=cfg.restamp_time)
        if intake.escaped_tag is not None:
            self._escaped(frame.tag, intake.escaped_tag, ident)
        futures = [await self.sink.submit(sub.batch, sub.boot, sub.seq)
                   for sub in intake.submissions]
        if self.fair is not None:
            self.fair.add(ident.name, sum(len(sub.batch.entries) for sub in intake.submissions))
        if frame.chunk is not None:
            await acks.put((frame.chunk, futures))

    def _escaped(self, tag: str, safe: str, ident: Identity) -> None:
        """Log an escaped tag with the reason (at most once a minute per enclave)."""
        self.stats.tags_escaped += 1
        shown = ascii(tag[:64]) + ("..." if len(tag) > 64 else "")
        self._warn.warning(f"tag:{ident.name}", "%s sent the tag %s (%s): forwarded as %s",
                           ident.name, shown, tag_problem(tag), safe[:64])

    async def _ack_loop(self, conn: Connection, session: ServerSession, peer: EnclaveStats,
                        acks: Acks) -> None:
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
            session.owed -= 1
            peer.acks += 1
            # Wait while the peer is not reading its acks: what one connection has
            # queued to write stays under the transport's high-water mark, and once
            # MAX_PENDING_ACKS batches wait here, the read loop stops reading it.
            await conn.drain()
