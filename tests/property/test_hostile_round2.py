"""The second hostile round (issue 17): chunk ids, a corrupt spool, tags, slots.

Each test here failed on the code before the fix it names:

- chunk ids are bounded, and a connection that dies with a reset leaves nothing of
  itself allocated, without waiting for the cyclic garbage collector;
- (the rest of the round's cases follow below).
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import socket
import termios
import tracemalloc

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluent_forward.codec import (
    MAX_CHUNK_ID_BYTES,
    EventTime,
    FrameDecoder,
    Role,
    chunk_id,
    encode_packed_forward,
    pack_entry,
)
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.errors import MalformedFrame
from parent_side.listener import Listener, ListenerConfig
from tests.helpers import wait_until
from tests.property.test_hostile_input import Recorder

ENTRY = pack_entry(EventTime(1_700_000_000, 0), {"log": "x" * 100})


# -- 1. chunk ids and what a dead connection leaves behind -------------------------------

chunk_ids = st.integers(0, 3 * MAX_CHUNK_ID_BYTES).flatmap(
    lambda n: st.text(min_size=n, max_size=n) | st.binary(min_size=n, max_size=n))


@given(chunk_ids)
def test_a_chunk_id_is_taken_up_to_its_limit_and_refused_past_it(chunk: str | bytes) -> None:
    frame = msgpack.packb(["app", ENTRY, {"chunk": chunk}], use_bin_type=True)
    decoder = FrameDecoder(Role.SERVER)
    if len(chunk) <= MAX_CHUNK_ID_BYTES:
        (event,) = decoder.feed(frame)
        assert event.chunk == chunk  # type: ignore[union-attr]
    else:
        with pytest.raises(MalformedFrame, match="chunk"):
            decoder.feed(frame)


def test_chunk_ids_of_every_known_client_fit() -> None:
    assert len(chunk_id(b"12345678", 2**64 - 1)) == 24  # ours, Fluent Bit's, fluent-logger's
    assert 25 <= MAX_CHUNK_ID_BYTES  # Fluentd's: Base64 with its trailing newline


def unread_bytes(sock: socket.socket) -> int:
    """Bytes we sent that the peer has not read yet (SIOCOUTQ)."""
    return int.from_bytes(fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"), "little")


async def die_with_unread_acks(listener: Listener, frames: int, partial: int) -> None:
    """A peer that sends ``frames`` batches and ``partial`` bytes of a big frame, reads
    nothing (not even HELO), and goes: its socket closes with data unread, so the
    relay's side fails with ECONNRESET, the path that left reference cycles behind."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    handler = asyncio.ensure_future(listener._handle(reader, writer))
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    for n in range(frames):
        await loop.sock_sendall(theirs, encode_packed_forward(
            "app", ENTRY, {"chunk": chunk_id(b"attacker", n)}))
    big = encode_packed_forward("app", ENTRY * 30_000, {"chunk": chunk_id(b"attacker", frames)})
    await loop.sock_sendall(theirs, big[:partial])
    await wait_until(lambda: unread_bytes(theirs) == 0, "the relay to read it all")
    theirs.close()
    await asyncio.wait_for(handler, 10)
    handler.result()


def test_a_connection_reset_with_acks_unread_leaves_nothing_allocated() -> None:
    """Before the fix, the reset's exception and its traceback formed reference cycles
    with the transport and the connection's frames: each dead connection pinned its
    decoder's buffer and queued acks until the cyclic collector ran (under the chunk-id
    attack, hundreds of megabytes, for as long as no collection came)."""
    listener = Listener(ListenerConfig(endpoint=parse_endpoint("unix:///unused"),
                                       hostname="relay", handshake_timeout=5, frame_timeout=5),
                        Recorder())
    loop = asyncio.new_event_loop()
    loop.run_until_complete(die_with_unread_acks(listener, 10, 1 << 20))  # warm up
    gc.collect()
    gc.disable()  # nothing may depend on the cyclic collector
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(4):
            loop.run_until_complete(die_with_unread_acks(listener, 100, 3 << 20))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
        loop.close()
    assert listener.stats.open_connections == 0
    assert listener.stats.peers["local"].frames == 10 + 4 * 100
    assert after - before < 1 << 20, f"{after - before} bytes still allocated"
