"""Forward sessions, sans-I/O: the rules of one connection, for either role.

A session takes bytes in and gives events and bytes out; it never reads, writes or
sleeps. The I/O layer (``aio``) runs one loop shape over it::

    session.start_reading(now)                    # about to wait for the peer
    data = await read(timeout=session.timeout(now))
    session.receive_data(data, now)               # b"": the peer closed
    # or, when the read timed out:  session.on_timer(now)
    for event in session.events(): ...
    write(session.data_to_send())

The rules live here and nowhere else: the handshake order (HELO, PING, PONG and
the shared-key digests), going on without a handshake when no HELO comes, the
window of unacked chunks, the bogus-ack check, "unexpected frame after the
handshake", and the timers: the HELO wait, the handshake timeout, the ack timeout,
a frame's total deadline from its first byte, the idle timeout and keepalives.

Timers run on the *peer's* clock: only time spent waiting for the peer counts
(from ``start_reading`` to ``receive_data``). A relay that stops reading to push
back on an agent (its spool is full) must not then blame the agent for the frame
it left half read.

Errors are raised from ``receive_data`` and ``on_timer``; the session is then
``CLOSED`` and the connection must be closed (after sending ``data_to_send()``: a
failed PING is answered with its PONG first). ``ProtocolError`` means the peer
broke the rules, ``TransportTimeout`` a timer ran out, ``ConnectionClosed`` the peer
closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeAlias, TypeVar

from .codec import Ack, EventFrame, Frame, FrameDecoder, Heartbeat, Role
from .errors import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    MalformedFrame,
    TransportTimeout,
    UsageError,
)
from .handshake import ClientHandshake, Helo, Ping, Pong, ServerHandshake, encode_pong
from .window import InFlight

__all__ = [
    "HEARTBEAT",
    "MAX_INBOUND_FRAME",
    "Acked",
    "ClientSession",
    "Opened",
    "ServerEvent",
    "ServerSession",
    "Session",
    "State",
]

#: A msgpack nil: the spec's heartbeat. Sent only to our relay, never to Fluent Bit.
HEARTBEAT = b"\xc0"
#: The largest frame a client takes from a server: acks and handshake frames are tiny.
MAX_INBOUND_FRAME = 64 * 1024


class State(IntEnum):
    """Where a session is. Client: AWAIT_HELO -> AWAIT_PONG -> OPEN; server:
    AWAIT_PING -> OPEN; either may start OPEN (no handshake), and ends CLOSED."""

    AWAIT_HELO = 1
    AWAIT_PONG = 2
    AWAIT_PING = 3
    OPEN = 4
    CLOSED = 5


@dataclass(frozen=True, slots=True)
class Opened:
    """The server's handshake is over: ``ping`` is the client's PING, or None if it
    went on without one."""

    ping: Ping | None


@dataclass(frozen=True, slots=True)
class Acked:
    """The server acked ``chunk``, which this session had sent and not seen acked."""

    chunk: str | bytes


ServerEvent: TypeAlias = "EventFrame | Opened"
#: What a session hands its I/O layer: ``ServerEvent``s or ``Acked``s.
E = TypeVar("E")


class Session(Generic[E]):
    """What both roles share: the decoder, outgoing bytes, events, the peer clock, errors."""

    def __init__(self, decoder: FrameDecoder, *, now: float, name: str) -> None:
        self.decoder = decoder
        self.name = name
        self.state = State.OPEN
        self.bytes_in = 0
        self._out: list[bytes] = []
        self._events: list[E] = []
        # The peer clock: seconds spent waiting on the peer since the session began.
        self._peer = 0.0
        self._waiting_since: float | None = now
        self._heard = 0.0  # peer clock when bytes last came

    def events(self) -> list[E]:
        """Events since the last call, in the order they came."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        """Bytes to write now (maybe none)."""
        return b"".join(self.parts_to_send())

    def parts_to_send(self) -> list[bytes]:
        """``data_to_send`` as the parts queued, not joined: a batch's entries are
        written as they are, without a copy."""
        out, self._out = self._out, []
        return out

    def start_reading(self, now: float) -> None:
        """The I/O layer starts waiting for the peer: from now on, time is the peer's."""
        if self._waiting_since is None:
            self._waiting_since = now

    def _peer_clock(self, now: float) -> float:
        waiting = self._waiting_since
        return self._peer + (now - waiting if waiting is not None else 0.0)

    def _feed(self, data: bytes, now: float) -> list[Frame]:
        """Stop the peer clock at ``now``; decode ``data`` (b"": the peer closed)."""
        self._peer = self._peer_clock(now)
        self._waiting_since = None
        self._heard = self._peer
        if not data:
            partial = self.decoder.buffered
            raise ConnectionClosed(f"{self.name} closed the connection"
                                   + (f" {partial} bytes into a frame" if partial else ""),
                                   partial)
        self.bytes_in += len(data)
        return self.decoder.feed(data)

    def _deadline(self, now: float, peer_deadline: float) -> float:
        """Seconds from ``now`` until the peer clock reaches ``peer_deadline``."""
        return max(peer_deadline - self._peer_clock(now), 0.0)

    def receive_data(self, data: bytes, now: float) -> None:
        """Take bytes the peer sent (b"" when it closed); an error closes the session."""
        if self.state is State.CLOSED:
            raise UsageError("session used after it closed")
        try:
            self._receive(data, now)
        except BaseException:
            self.state = State.CLOSED
            raise

    def on_timer(self, now: float) -> None:
        """Act on the deadlines that passed; an error (the connection must end) closes
        the session."""
        left = self.timeout(now)
        if left is None or left > 0:
            return
        try:
            self._expired(now)
        except BaseException:
            self.state = State.CLOSED
            raise

    def timeout(self, now: float) -> float | None:
        """Seconds until ``on_timer`` must be called if no bytes come (None: never)."""
        raise NotImplementedError

    def _receive(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    def _expired(self, now: float) -> None:
        """Act on a deadline that passed (``timeout`` is 0)."""
        raise NotImplementedError


class ServerSession(Session[ServerEvent]):
    """The accepting side: send HELO, judge PING, pass event frames on (its events:
    ``Opened`` once, then ``EventFrame``s).

    Args:
        decoder: a ``Role.SERVER`` decoder with the connection's limits.
        handshake: our side of the handshake, or None to send no HELO at all.
        required: a PING must come and pass (we hold a shared key); otherwise a
            client that goes on without one (fluent-logger) is let through.
        handshake_timeout: the client's first frame must complete within this.
        frame_timeout: a frame must complete within this from its first byte.
        idle_timeout: with no frame begun, close after this long without a byte
            (None: never). Our agent sends a heartbeat well within it.
        now: the clock's time at accept.
    """

    def __init__(self, decoder: FrameDecoder, handshake: ServerHandshake | None, *,
                 required: bool = False, handshake_timeout: float = 10.0,
                 frame_timeout: float | None = None, idle_timeout: float | None = None,
                 now: float, name: str = "client") -> None:
        if decoder.role is not Role.SERVER:
            raise UsageError("a server session needs a Role.SERVER decoder")
        super().__init__(decoder, now=now, name=name)
        self.handshake = handshake
        self.required = required
        self.handshake_timeout = handshake_timeout
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.ping: Ping | None = None
        #: Acks the I/O layer still owes the client: a client waiting for them is not
        #: idle, so the idle timer starts again while any are owed.
        self.owed = 0
        self._frame_began: float | None = None  # peer clock at a partial frame's first byte
        if handshake is not None:
            self._out.append(handshake.helo())
            self.state = State.AWAIT_PING

    def _receive(self, data: bytes, now: float) -> None:
        began = self._frame_began if self.decoder.buffered else None
        frames = self._feed(data, now)
        # A frame left incomplete began in this read unless one was already partial
        # and nothing completed it.
        self._frame_began = (None if not self.decoder.buffered
                             else began if began is not None and not frames else self._peer)
        for frame in frames:
            if self.state is State.AWAIT_PING and self._greet(frame):
                continue  # the PING, answered
            if isinstance(frame, EventFrame):
                self._events.append(frame)
            elif not isinstance(frame, Heartbeat):
                raise HandshakeError(f"unexpected {type(frame).__name__} after the handshake")

    def _greet(self, frame: object) -> bool:
        """Judge the client's first frame; True if it was the PING (consumed)."""
        assert self.handshake is not None
        if isinstance(frame, Ping):
            pong = self.handshake.check(frame)
            self._out.append(encode_pong(pong))
            if not pong.auth_result:
                raise AuthenticationError(pong.reason)
            self.ping = frame
        elif self.required:
            raise AuthenticationError(
                "the client skipped the handshake, but a shared key is required")
        self.state = State.OPEN
        self._events.append(Opened(self.ping))
        return isinstance(frame, Ping)

    def timeout(self, now: float) -> float | None:
        """Seconds until ``on_timer`` must be called if no bytes come (None: never)."""
        if self.state is State.AWAIT_PING:
            return self._deadline(now, self.handshake_timeout)
        if self._frame_began is not None and self.frame_timeout is not None:
            return self._deadline(now, self._frame_began + self.frame_timeout)
        if self.idle_timeout is not None:
            return self._deadline(now, self._heard + self.idle_timeout)
        return None

    def _expired(self, now: float) -> None:
        if self.state is State.AWAIT_PING:
            raise HandshakeError(f"nothing received within {self.handshake_timeout}s of connecting")
        if self._frame_began is not None:
            raise TransportTimeout(
                f"a frame still incomplete ({self.decoder.buffered} bytes) "
                f"{self.frame_timeout}s after its first byte")
        if self.owed:
            self._heard = self._peer_clock(now)
            return
        raise TransportTimeout(f"nothing received for {self.idle_timeout}s")


@dataclass(frozen=True, slots=True)
class _Sent:
    """A chunk sent on this connection, in the order sent (the window's ``Sent``)."""

    chunk: str
    seq: int


class ClientSession(Session[Acked]):
    """The connecting side: answer HELO, check PONG, send batches, match acks (its
    events: an ``Acked`` per chunk acked).

    Args:
        handshake: our side of the handshake.
        handshake_wait: wait this long for a HELO and go on without a handshake if
            none comes (0: do not wait; a HELO arriving later sets ``late_helo``, or
            is a protocol error when we hold a key).
        require_handshake: a HELO must come (we hold a shared key); wait
            ``handshake_timeout`` for it.
        handshake_timeout: most time for the HELO (when required) and for the PONG.
        window: most batches sent and not acked.
        ack_timeout: with batches unacked and nothing heard for this long, give up
            the connection (None: wait forever; slow acks are backpressure).
        keepalive: after a HELO from our relay (it carries ``relay_version``), send a
            heartbeat when nothing was sent for this long, so its idle timeout never
            cuts an agent that has nothing to say (None: never).
    """

    def __init__(self, handshake: ClientHandshake, *, now: float, handshake_wait: float = 0.5,
                 require_handshake: bool = False, handshake_timeout: float = 5.0,
                 window: int = 8, ack_timeout: float | None = None,
                 keepalive: float | None = None, name: str = "server") -> None:
        super().__init__(FrameDecoder(Role.CLIENT, max_frame_bytes=MAX_INBOUND_FRAME,
                                      max_entries=1), now=now, name=name)
        if window < 1:
            raise UsageError("the window must be at least 1")
        self.handshake = handshake
        self.window = window
        self.ack_timeout = ack_timeout
        self.keepalive = keepalive
        self.require_handshake = require_handshake
        self.helo: Helo | None = None
        #: Set when a HELO came after we began sending: what to log; the next sessions
        #: wait for HELO (``ClientHandshake.expects_helo``).
        self.late_helo: str | None = None
        #: This connection's chunks not yet acked: the window it may send within, and
        #: what the server may ack. The same window type as the batch source's, which
        #: outlives connections and keeps the batches to resend.
        self.in_flight: InFlight[_Sent] = InFlight()
        self._sends = 0
        self._sent = now  # wall clock of our last write, for keepalives
        self._helo_wait = (handshake_timeout if require_handshake or handshake.expects_helo
                           else handshake_wait)
        self._handshake_timeout = handshake_timeout
        self._phase_began = 0.0  # peer clock when the current handshake wait began
        if self._helo_wait > 0:
            self.state = State.AWAIT_HELO

    @property
    def can_send(self) -> bool:
        """Whether ``send_batch`` may be called: open, and the window not full."""
        return self.state is State.OPEN and self.in_flight.has_room(self.window)

    def send_batch(self, chunk: str, frame: bytes | tuple[bytes, ...], now: float) -> None:
        """Queue a batch's frame (or its parts, in order); it stays in flight until
        the server acks ``chunk``."""
        if not self.can_send:
            raise UsageError(f"send_batch in state {self.state.name} with "
                             f"{len(self.in_flight)} of {self.window} in flight")
        self._sends += 1
        self.in_flight.add(_Sent(chunk, self._sends))
        self._out.extend(frame if isinstance(frame, tuple) else (frame,))
        self._sent = now

    def _receive(self, data: bytes, now: float) -> None:
        awaiting_pong = self.state is State.AWAIT_PONG
        try:
            frames = self._feed(data, now)
        except ConnectionClosed:
            if awaiting_pong:
                # Fluent Bit closes without a PONG when the shared key does not match.
                raise AuthenticationError("it closed the connection instead of answering "
                                          "our PING: the shared keys probably differ") from None
            raise
        for frame in frames:
            self._on_frame(frame, now)

    def _on_frame(self, frame: object, now: float) -> None:
        if self.state is State.AWAIT_HELO:
            if not isinstance(frame, Helo):
                raise HandshakeError(f"expected HELO, got {type(frame).__name__}")
            self.helo = frame
            self._out.append(self.handshake.ping(frame))
            self._sent = now
            self.state = State.AWAIT_PONG
            self._phase_began = self._peer
        elif self.state is State.AWAIT_PONG:
            if not isinstance(frame, Pong):
                raise HandshakeError(f"expected PONG, got {type(frame).__name__}")
            self.handshake.check(frame)
            self.state = State.OPEN
        elif isinstance(frame, Helo):
            # Only a keyless client goes on without waiting for HELO: a server that
            # asks anyway is answered from the next connection on (late_helo's rule).
            self.late_helo = self.handshake.late_helo(frame)
        elif not isinstance(frame, Ack):
            raise MalformedFrame(f"unexpected {type(frame).__name__} after handshake")
        elif self.in_flight.ack(frame.chunk) is None:
            # A peer that acks what we never sent is broken or lying; one that does so
            # instead of acking what we did send would stall us forever.
            raise MalformedFrame(f"{self.name} acked a chunk we did not send on this connection")
        else:
            self._events.append(Acked(frame.chunk))

    def timeout(self, now: float) -> float | None:
        """Seconds until ``on_timer`` must be called if no bytes come (None: never)."""
        if self.state is State.AWAIT_HELO:
            return self._deadline(now, self._helo_wait)
        if self.state is State.AWAIT_PONG:
            return self._deadline(now, self._phase_began + self._handshake_timeout)
        if self.state is not State.OPEN:
            return None
        waits: list[float] = []
        if self.in_flight and self.ack_timeout is not None:
            waits.append(self._deadline(now, self._heard + self.ack_timeout))
        if self.keepalive is not None and self.helo is not None and self.helo.version:
            waits.append(max(self._sent + self.keepalive - now, 0.0))
        return min(waits) if waits else None

    def _expired(self, now: float) -> None:
        # Go on without a HELO, send a keepalive, or raise.
        if self.state is State.AWAIT_HELO:
            if self.require_handshake:
                raise HandshakeError(
                    "no HELO from the server, but we hold a shared key: is shared_key set "
                    "on its side?")
            self.state = State.OPEN  # a plain Forward input: no handshake
        elif self.state is State.AWAIT_PONG:
            raise TransportTimeout(f"{self.name}: no PONG within {self._handshake_timeout}s")
        elif (self.in_flight and self.ack_timeout is not None
              and self._peer_clock(now) - self._heard >= self.ack_timeout):
            raise TransportTimeout(
                f"no ack from {self.name} in {self.ack_timeout}s with {len(self.in_flight)} "
                "batches waiting")
        else:
            self._out.append(HEARTBEAT)
            self._sent = now
