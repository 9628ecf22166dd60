"""fluent_forward.session: both roles' rules, byte by byte, with no socket and no loop.

Times are plain numbers handed to the sessions: a test moves its own clock.
"""

from __future__ import annotations

import pytest

from fluent_forward.codec import EventFrame, FrameDecoder, Role, encode_ack, encode_packed_forward
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.errors import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    MalformedFrame,
    TransportTimeout,
    UsageError,
)
from fluent_forward.handshake import ClientHandshake, Pong, ServerHandshake, encode_pong
from fluent_forward.session import (
    HEARTBEAT,
    Acked,
    ClientSession,
    Opened,
    ServerSession,
    State,
)

ENTRIES = b"".join(pack_entry(EventTime(1700000000, i), {"log": f"line {i}"}) for i in range(3))
FRAME = encode_packed_forward("app", ENTRIES, {"chunk": "c1", "size": 3})


def server(*, key: str | None = None, handshake: bool = True, required: bool = False,
           version: str = "1.0", **timers: float) -> ServerSession:
    hs = ServerHandshake(hostname="relay", shared_key=key, version=version) if handshake else None
    return ServerSession(FrameDecoder(Role.SERVER), hs, required=required, now=0.0,
                         **timers)  # type: ignore[arg-type]


def client(*, key: str | None = None, **options: float | bool | int) -> ClientSession:
    return ClientSession(ClientHandshake(hostname="agent", shared_key=key, version="1.0"),
                         now=0.0, **options)  # type: ignore[arg-type]


def bytewise(session: ServerSession | ClientSession, data: bytes, now: float = 0.0) -> None:
    for i in range(len(data)):
        session.receive_data(data[i:i + 1], now)


def shake(c: ClientSession, s: ServerSession, *, split: bool = True) -> None:
    """Carry bytes both ways until neither side has any to send."""
    feed = bytewise if split else (lambda sess, data: sess.receive_data(data, 0.0))
    while True:
        to_client, to_server = s.data_to_send(), c.data_to_send()
        if not (to_client or to_server):
            return
        if to_client:
            feed(c, to_client)
        if to_server:
            feed(s, to_server)


def open_client(window: int = 8, **options: float) -> ClientSession:
    c = client(handshake_wait=0, window=window, **options)  # type: ignore[arg-type]
    assert c.state is State.OPEN
    return c


# -- the handshake ----------------------------------------------------------------


@pytest.mark.parametrize("split", [True, False], ids=["byte-by-byte", "whole"])
@pytest.mark.parametrize("key", [None, "s3cret"])
def test_the_full_handshake_opens_both_sides(split: bool, key: str | None) -> None:
    s, c = server(key=key, required=key is not None), client(key=key)
    assert (s.state, c.state) == (State.AWAIT_PING, State.AWAIT_HELO)
    shake(c, s, split=split)
    assert (s.state, c.state) == (State.OPEN, State.OPEN)
    (opened,) = s.events()
    assert isinstance(opened, Opened) and opened.ping is not None
    assert (opened.ping.hostname, opened.ping.version) == ("agent", "1.0")
    assert c.helo is not None and c.can_send


def test_a_wrong_shared_key_is_answered_with_a_refusing_pong_then_refused() -> None:
    s, c = server(key="right", required=True), client(key="wrong")
    c.receive_data(s.data_to_send(), 0.0)
    with pytest.raises(AuthenticationError, match="shared key mismatch"):
        bytewise(s, c.data_to_send())
    assert s.state is State.CLOSED
    pong = s.data_to_send()
    assert pong, "the PONG that says why goes out before the close"
    with pytest.raises(AuthenticationError, match="refused the handshake"):
        c.receive_data(pong, 0.0)
    assert c.state is State.CLOSED


def test_a_pong_with_a_wrong_digest_is_refused_by_the_client() -> None:
    s, c = server(key=None), client(key="mine")  # the server holds no key: it cannot prove one
    c.receive_data(s.data_to_send(), 0.0)
    s.receive_data(c.data_to_send(), 0.0)
    with pytest.raises(AuthenticationError, match="PONG digest is wrong"):
        c.receive_data(s.data_to_send(), 0.0)


def test_a_server_that_closes_instead_of_a_pong_means_the_keys_differ() -> None:
    s, c = server(key="x"), client(key="y")
    c.receive_data(s.data_to_send(), 0.0)
    assert c.state is State.AWAIT_PONG and c.data_to_send()
    with pytest.raises(AuthenticationError, match="shared keys probably differ"):
        c.receive_data(b"", 0.0)


def test_a_client_that_skips_the_handshake_is_let_through_without_a_key() -> None:
    s = server()
    assert s.data_to_send(), "HELO goes out at once"
    bytewise(s, FRAME)
    opened, frame = s.events()
    assert opened == Opened(None)
    assert isinstance(frame, EventFrame) and frame.entries == ENTRIES


def test_a_client_that_skips_the_handshake_is_refused_when_a_key_is_required() -> None:
    s = server(key="k", required=True)
    with pytest.raises(AuthenticationError, match="skipped the handshake"):
        s.receive_data(FRAME, 0.0)
    assert s.state is State.CLOSED


def test_a_server_without_a_handshake_sends_no_helo() -> None:
    s = server(handshake=False)
    assert s.state is State.OPEN and s.data_to_send() == b""
    s.receive_data(HEARTBEAT + FRAME, 0.0)
    assert [type(e) for e in s.events()] == [EventFrame], "heartbeats are no events"


def test_the_server_times_out_a_client_that_says_nothing() -> None:
    s = server(handshake_timeout=10.0)
    assert s.timeout(4.0) == 6.0
    s.on_timer(9.0)  # early: nothing happens
    with pytest.raises(HandshakeError, match="nothing received within 10.0s"):
        s.on_timer(10.0)


def test_a_ping_after_the_handshake_is_unexpected() -> None:
    s, c = server(), client()
    shake(c, s)
    ping = ClientHandshake(hostname="again").ping(c.helo)  # type: ignore[arg-type]
    with pytest.raises(HandshakeError, match="unexpected Ping after the handshake"):
        s.receive_data(ping, 0.0)


def test_without_a_helo_the_client_goes_on_after_the_wait() -> None:
    c = client(handshake_wait=0.5)
    assert not c.can_send and c.timeout(0.2) == pytest.approx(0.3)
    c.on_timer(0.4)
    assert c.state is State.AWAIT_HELO
    c.on_timer(0.5)
    assert c.state is State.OPEN and c.data_to_send() == b""  # type: ignore[comparison-overlap]


def test_without_a_helo_a_client_with_a_key_gives_up() -> None:
    c = client(key="k", require_handshake=True, handshake_timeout=5.0)
    with pytest.raises(HandshakeError, match="is shared_key set on its side"):
        c.on_timer(5.0)


def test_the_client_wants_helo_first_then_pong() -> None:
    with pytest.raises(HandshakeError, match="expected HELO, got Ack"):
        client().receive_data(encode_ack("x"), 0.0)
    s, c = server(), client()
    c.receive_data(s.data_to_send(), 0.0)
    with pytest.raises(HandshakeError, match="expected PONG, got Ack"):
        c.receive_data(encode_ack("x"), 0.0)


def test_a_pong_that_never_comes_times_out_from_the_ping() -> None:
    s, c = server(), client(handshake_timeout=5.0)
    c.start_reading(0.0)
    c.receive_data(s.data_to_send(), 3.0)  # the HELO came late; the PONG has 5s from now
    c.start_reading(3.0)
    assert c.state is State.AWAIT_PONG and c.timeout(3.0) == 5.0
    with pytest.raises(TransportTimeout, match="no PONG within 5.0s"):
        c.on_timer(8.0)


def test_a_helo_after_going_on_without_one_is_answered_from_the_next_connection() -> None:
    # Issue 16: a keyless server (another relay) sends HELO too; a keyless client that
    # went on without waiting says so once, and its I/O layer waits for HELO from now on.
    s, c = server(key="k"), open_client()
    c.receive_data(s.data_to_send(), 0.0)
    assert c.late_helo is not None and "no shared key is configured here" in c.late_helo
    assert c.state is State.OPEN


def test_after_a_late_helo_the_next_session_waits_for_helo_as_with_a_key() -> None:
    hs = ClientHandshake(hostname="agent")
    first = ClientSession(hs, now=0.0, handshake_wait=0)
    assert first.state is State.OPEN
    first.receive_data(server().data_to_send(), 0.0)
    assert first.late_helo is not None
    second = ClientSession(hs, now=0.0, handshake_wait=0, handshake_timeout=5.0)
    assert second.state is State.AWAIT_HELO and second.timeout(0.0) == 5.0
    s = server()
    shake(second, s)
    assert second.state is State.OPEN and s.ping is not None


def test_a_helo_in_the_middle_of_a_keyed_stream_is_a_protocol_error() -> None:
    c = client(key="k", handshake_wait=0)
    assert c.state is State.OPEN
    with pytest.raises(HandshakeError, match="a HELO in the middle of the stream"):
        c.receive_data(server(key="k").data_to_send(), 0.0)


# -- batches and acks -------------------------------------------------------------


def test_acks_out_of_order_free_each_batch_once() -> None:
    c = open_client()
    for chunk in ("a", "b", "c"):
        c.send_batch(chunk, b"frame-" + chunk.encode(), 0.0)
    assert c.data_to_send() == b"frame-aframe-bframe-c"
    bytewise(c, encode_ack("c") + encode_ack("a"))
    c.receive_data(encode_ack("b"), 0.0)
    assert c.events() == [Acked("c"), Acked("a"), Acked("b")]
    assert not c.in_flight


def test_a_batch_sent_in_parts_is_handed_back_in_parts_uncopied() -> None:
    c = open_client()
    entries = b"entries" * 100
    c.send_batch("a", (b"head", entries, b"tail"), 0.0)
    parts = c.parts_to_send()
    assert parts == [b"head", entries, b"tail"] and parts[1] is entries
    assert [b.chunk for b in c.in_flight] == ["a"] and c.data_to_send() == b""


@pytest.mark.parametrize("acks", [["nope"], ["a", "a"]], ids=["bogus", "duplicate"])
def test_an_ack_for_a_chunk_not_in_flight_closes_the_connection(acks: list[str]) -> None:
    c = open_client()
    c.send_batch("a", b"f", 0.0)
    with pytest.raises(MalformedFrame, match="acked a chunk we did not send"):
        c.receive_data(b"".join(encode_ack(a) for a in acks), 0.0)
    assert c.state is State.CLOSED


def test_anything_but_acks_after_the_handshake_is_malformed() -> None:
    with pytest.raises(MalformedFrame, match="unexpected Pong after handshake"):
        open_client().receive_data(encode_pong(Pong(True, "", "h", "d")), 0.0)


def test_the_window_bounds_batches_in_flight() -> None:
    c = open_client(window=2)
    c.send_batch("a", b"", 0.0)
    c.send_batch("b", b"", 0.0)
    assert not c.can_send
    with pytest.raises(UsageError, match="2 of 2 in flight"):
        c.send_batch("c", b"", 0.0)
    c.receive_data(encode_ack("a"), 0.0)
    assert c.can_send


def test_no_ack_within_the_ack_timeout_drops_the_connection() -> None:
    c = open_client(ack_timeout=30.0)
    assert c.timeout(0.0) is None, "nothing in flight: nothing to wait for"
    c.send_batch("a", b"", 0.0)
    c.start_reading(0.0)
    with pytest.raises(TransportTimeout, match="no ack from server in 30.0s with 1 batches"):
        c.on_timer(30.0)


def test_time_we_were_not_reading_is_not_the_peers() -> None:
    c = open_client(ack_timeout=30.0)
    c.send_batch("a", b"", 0.0)
    c.start_reading(0.0)
    c.receive_data(encode_ack("a"), 10.0)
    c.send_batch("b", b"", 10.0)
    c.start_reading(100.0)  # we were busy for 90s
    assert c.timeout(100.0) == 30.0
    c.on_timer(129.0)


def test_the_client_sends_keepalives_to_our_relay_only() -> None:
    s, c = server(version="1.0"), client(keepalive=60.0)
    shake(c, s)
    assert c.timeout(59.0) == 1.0
    c.on_timer(60.0)
    assert c.data_to_send() == HEARTBEAT
    c.send_batch("a", b"x", 70.0)
    assert c.timeout(70.0) == 60.0, "a batch is as good as a keepalive"
    plain, c = server(version=""), client(keepalive=60.0)  # Fluent Bit: no relay_version
    shake(c, plain)
    assert c.timeout(1000.0) is None


def test_the_client_reports_a_close_and_what_it_cut() -> None:
    c = open_client()
    c.receive_data(encode_ack("x")[:3], 0.0)
    with pytest.raises(ConnectionClosed) as info:
        c.receive_data(b"", 0.0)
    assert info.value.partial == 3
    with pytest.raises(UsageError):
        c.receive_data(b"more", 0.0)


# -- frames on the server ---------------------------------------------------------


@pytest.mark.parametrize("offset", range(1, len(FRAME)))
def test_a_frame_split_at_any_offset_is_one_frame(offset: int) -> None:
    s = server(handshake=False)
    s.receive_data(FRAME[:offset], 0.0)
    assert s.events() == []
    s.receive_data(FRAME[offset:] + FRAME[:offset], 0.0)
    (frame,) = s.events()
    assert isinstance(frame, EventFrame) and (frame.tag, frame.entries, frame.count,
                                              frame.chunk) == ("app", ENTRIES, 3, "c1")


def test_a_drip_does_not_outlive_the_frame_deadline() -> None:
    s = server(handshake=False, frame_timeout=30.0)
    now = 0.0
    with pytest.raises(TransportTimeout, match="30.0s after its first byte"):
        for i in range(len(FRAME) - 1):  # one byte a second, every read within the timeout
            s.start_reading(now)
            now += 1.0
            s.on_timer(now)
            s.receive_data(FRAME[i:i + 1], now)
    assert now == 31.0, "the deadline runs from the frame's first byte"


def test_the_frame_deadline_restarts_with_each_frame() -> None:
    s = server(handshake=False, frame_timeout=30.0)
    s.receive_data(FRAME + FRAME[:5], 20.0)
    s.start_reading(20.0)
    assert s.timeout(20.0) == 30.0


def test_the_frame_deadline_does_not_count_backpressure() -> None:
    s = server(handshake=False, frame_timeout=30.0)
    s.receive_data(FRAME[:5], 0.0)
    s.start_reading(300.0)  # the relay stopped reading for 300s: its spool was full
    assert s.timeout(300.0) == 30.0


def test_an_idle_connection_is_closed_and_heartbeats_keep_it() -> None:
    s, c = server(idle_timeout=600.0), client()
    shake(c, s)
    s.start_reading(0.0)
    s.receive_data(HEARTBEAT, 599.0)
    s.start_reading(599.0)
    s.on_timer(1198.0)
    with pytest.raises(TransportTimeout, match="nothing received for 600.0s"):
        s.on_timer(1199.0)


def test_the_server_reports_a_close_mid_frame() -> None:
    s = server(handshake=False)
    s.receive_data(FRAME[:7], 0.0)
    with pytest.raises(ConnectionClosed, match="7 bytes into a frame") as info:
        s.receive_data(b"", 0.0)
    assert info.value.partial == 7


def test_a_server_session_needs_a_server_decoder() -> None:
    with pytest.raises(UsageError):
        ServerSession(FrameDecoder(Role.CLIENT), None, now=0.0)


def test_a_client_waiting_for_acks_we_owe_is_not_idle() -> None:
    s = server(handshake=False, idle_timeout=600.0)
    s.receive_data(FRAME, 0.0)
    s.owed = 1  # the I/O layer has not acked the frame yet: the spool is full
    s.start_reading(0.0)
    s.on_timer(600.0)
    assert s.timeout(600.0) == 600.0, "the idle timer starts again"
    s.owed = 0
    with pytest.raises(TransportTimeout, match="nothing received for 600.0s"):
        s.on_timer(1200.0)
