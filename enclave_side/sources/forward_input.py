"""A local Forward server for the app's logging libraries (fluent-logger and its kin).

Lenient on input, strict on output: every mode (Message, Forward, PackedForward,
CompressedPackedForward), both entry shapes (``[time, record]`` and Fluent Bit's
``[[time, metadata], record]``), integer, float and EventTime times are accepted by
the shared codec, which turns floats into EventTime. Tags pass through, except tags
under the agent's reserved prefix, which are moved under ``forward.`` so an app
cannot speak for the agent.

A ``chunk`` is acked once its records are in the agent's buffer. When the buffer is
full the connection is not read (and so nothing more is acked) until there is room.
The server listens only inside the enclave: ``tcp://`` on a loopback address or
``unix://``; never vsock (``check_listen``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from fluent_forward.aio import Connection, Ending, ForwardServer, ending_of
from fluent_forward.codec import EventFrame, FrameDecoder, Role, encode_ack
from fluent_forward.endpoints import Endpoint, Scheme
from fluent_forward.entries import split_entries
from fluent_forward.errors import ProtocolError, TransportError
from fluent_forward.handshake import ServerHandshake
from fluent_forward.session import ServerSession

from ..buffer import Buffer
from ..config import RESERVED_TAG_PREFIX
from ..processing import Pipeline

__all__ = ["ForwardInputServer", "ForwardInputStats", "check_listen"]

log = logging.getLogger(__name__)

#: What a local client's gzip frame may inflate to (its frames: the codec's default
#: limit; its handshake: the session's default timeout).
MAX_DECOMPRESSED_BYTES = 8 * 1024 * 1024


def check_listen(endpoint: Endpoint) -> str | None:
    """Why ``endpoint`` may not be a Forward input address (None if it may)."""
    if endpoint.scheme is Scheme.VSOCK:
        return ("the Forward input listens only inside the enclave; vsock would let the "
                "parent inject records: use tcp://127.0.0.1:PORT or unix:///PATH")
    if endpoint.scheme is Scheme.TCP:
        try:
            loopback = ipaddress.ip_address(endpoint.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return (f"{endpoint.host!r} is not a loopback address; the Forward input "
                    "listens only inside the enclave: use tcp://127.0.0.1:PORT")
    return None


@dataclass(slots=True)
class ForwardInputStats:
    """Counters of one listening address, as its ``sources`` entry in the metrics."""

    connections: int = 0
    lines: int = 0  # records, named as every source's count
    bytes: int = 0
    acks: int = 0
    protocol_errors: int = 0
    auth_failures: int = 0


class ForwardInputServer(ForwardServer):
    """One listening address.

    Args:
        endpoint: where to listen (checked by ``check_listen``).
        buffer: where records go (``Overflow.BLOCK``: clients wait, nothing is dropped).
        pipeline: levels, filters and redaction, or None.
        shared_key: require the handshake with this key (None: no handshake).
        hostname: our name in PONG.
        batch_bytes: frames larger than this are split into several batches.
    """

    def __init__(self, endpoint: Endpoint, buffer: Buffer, *, pipeline: Pipeline | None,
                 shared_key: str | None, hostname: str, batch_bytes: int) -> None:
        reason = check_listen(endpoint)
        if reason is not None:
            raise ValueError(reason)
        super().__init__(endpoint)  # a Unix socket's mode: 0660
        self.buffer = buffer
        self.pipeline = pipeline
        self.shared_key = shared_key
        self.hostname = hostname
        self.batch_bytes = batch_bytes
        self.stats = ForwardInputStats()

    @property
    def address(self) -> str:
        """The address clients use (the bound port when listening on port 0)."""
        if self.endpoint.scheme is Scheme.TCP and self.server is not None:
            return f"tcp://{self.endpoint.host}:{self.server.sockets[0].getsockname()[1]}"
        return str(self.endpoint)

    async def start(self) -> None:
        await super().start()
        log.info("Forward input listening on %s", self.address)

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        # No HELO without a key: fluent-logger and Fluent Bit without one expect none.
        hs = (ServerHandshake(hostname=self.hostname, shared_key=self.shared_key)
              if self.shared_key is not None else None)
        session = ServerSession(FrameDecoder(Role.SERVER,
                                             max_decompressed_bytes=MAX_DECOMPRESSED_BYTES),
                                hs, required=True, now=asyncio.get_running_loop().time())
        self.stats.connections += 1
        try:
            while True:
                await conn.receive(session)
                for event in session.events():
                    if isinstance(event, EventFrame):
                        await self._on_event(conn, event)
                await self.buffer.wait_for_room()  # full: read (and ack) nothing more
        except (TransportError, ProtocolError) as exc:
            self._ended(exc)
        finally:
            await conn.close()

    def _ended(self, exc: TransportError | ProtocolError) -> None:
        # str(exc): a kept log record must not pin the connection's frames
        match ending_of(exc):
            case Ending.AUTH:
                self.stats.auth_failures += 1
                log.warning("Forward input %s: a client failed the handshake: %s",
                            self.address, str(exc))
            case Ending.PROTOCOL:
                self.stats.protocol_errors += 1
                log.warning("Forward input %s: closing a connection: %s", self.address,
                            str(exc))
            case Ending.TIMEOUT | Ending.TRANSPORT:
                log.info("Forward input %s: %s", self.address, str(exc))

    async def _on_event(self, conn: Connection, frame: EventFrame) -> None:
        st = self.stats
        st.lines += frame.count
        st.bytes += len(frame.entries)
        tag = frame.tag
        if tag.split(".")[0] == RESERVED_TAG_PREFIX:
            tag = "forward." + tag
        entries, count = frame.entries, frame.count
        if self.pipeline is not None:
            entries, count = self.pipeline.process_entries(entries, count)
        if count:
            if len(entries) <= self.batch_bytes:
                self.buffer.add(tag, entries, count)
            else:
                for part, n in split_entries(entries, self.batch_bytes):
                    self.buffer.add(tag, part, n)
        if frame.chunk is not None:
            conn.write(encode_ack(frame.chunk))
            await conn.drain()
            st.acks += 1
