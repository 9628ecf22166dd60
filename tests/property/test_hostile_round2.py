"""The second hostile round (issue 17): chunk ids, a corrupt spool, tags, slots.

Each test here failed on the code before the fix it names:

- chunk ids are bounded, and a connection that dies with a reset leaves nothing of
  itself allocated, without waiting for the cyclic garbage collector;
- one corrupt stretch anywhere in a spool segment costs only the entries it touches:
  the spool resynchronises past it and sets the bytes aside;
- one enclave's connections, however many its cap allows, never lock out an enclave
  that has none open (a reserve of slots);
- a tag that would break Fluent Bit routing, a CloudWatch stream name or a log viewer
  is escaped to the one tag rule (fluent_forward.tags), counted and logged.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import os
import socket
import tempfile
import termios
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluent_forward.codec import MAX_CHUNK_ID_BYTES, FrameDecoder, Role, encode_packed_forward
from fluent_forward.conventions import chunk_id
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.entries import EventTime, iter_entries, pack_entry
from fluent_forward.errors import MalformedFrame
from fluent_forward.tags import TAG_MAX_LENGTH, escape_tag, tag_problem
from parent_side.admission import Slots, refusal
from parent_side.config import RelayConfig
from parent_side.listener import Listener
from parent_side.outputs import RelayBatch
from parent_side.spool import Spool
from parent_side.spool_format import FRAME, HEADER
from tests.helpers import wait_until
from tests.integration.test_relay_bad_input import RawAgent
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
    listener = Listener(RelayConfig(listen=parse_endpoint("unix:///unused"),
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


# -- 2. corruption in the middle of a spool segment -------------------------------------

SPOOLED = 60


def spool_segment() -> tuple[bytes, list[tuple[int, int]]]:
    """A segment of SPOOLED one-record batches (record n logs n), and each entry's
    ``[start, end)``: written by the real spool, once."""
    async def write(path: str) -> bytes:
        spool = Spool(path, fsync=lambda fd: None)
        spool.open()
        futs = [await spool.append("enclave.cid-16.app.stdout", pack_entry(
            EventTime(1_700_000_000, n), {"log": f"{n:06d}" + "x" * (n % 7) * 30}), 1,
            boot_id=b"bootboot", seq=n + 1) for n in range(SPOOLED)]
        await asyncio.gather(*futs)
        (segment,) = Path(path).glob("*.seg")
        data = segment.read_bytes()
        await spool.close()
        return data

    with tempfile.TemporaryDirectory(prefix="nel-") as tmp:
        data = asyncio.run(write(os.path.join(tmp, "spool")))
    spans, pos = [], HEADER.size
    while pos < len(data):
        length, _ = FRAME.unpack_from(data, pos)
        spans.append((pos, pos + FRAME.size + length))
        pos = spans[-1][1]
    return data, spans


SEGMENT, SPANS = spool_segment()


async def recover(path: Path) -> tuple[list[int], Spool]:
    spool = Spool(str(path), fsync=lambda fd: None)
    spool.open()
    got = []
    for _ in range(spool.backlog):
        entry = await spool.next_entry()
        got.extend(int(r["log"][:6]) for _, r in iter_entries(entry.entries))
        spool.ack(entry)
    return got, spool


@given(st.integers(HEADER.size, len(SEGMENT) - 1), st.binary(min_size=1, max_size=64))
def test_corruption_anywhere_in_a_segment_costs_only_the_entries_it_touches(
        offset: int, garbage: bytes) -> None:
    data = bytearray(SEGMENT)
    data[offset:offset + len(garbage)] = garbage[:len(data) - offset]
    changed = [i for i in range(offset, offset + len(garbage)) if i < len(data)
               and data[i] != SEGMENT[i]]
    touched = {n for n, (start, end) in enumerate(SPANS)
               if changed and start <= changed[-1] and changed[0] < end}
    with tempfile.TemporaryDirectory(prefix="nel-") as tmp:
        spool_dir = Path(tmp) / "spool"
        spool_dir.mkdir()
        (spool_dir / "0000000000000001.seg").write_bytes(bytes(data))
        got, spool = asyncio.run(recover(spool_dir))
        stats = spool.stats
        asyncio.run(spool.close())
        letters = spool_dir / "dead-letter.jsonl"
        set_aside = ([json.loads(line) for line in letters.read_text().splitlines()]
                     if letters.exists() else [])
    assert got == [n for n in range(SPOOLED) if n not in touched], \
        f"corruption at {offset} touched {sorted(touched)}"
    later = [n for n in range(SPOOLED) if n > max(touched, default=SPOOLED)]
    if touched and later:  # in the middle: set aside, reported as the spool's
        assert stats.corrupt_bytes_set_aside >= len(changed)
        assert stats.torn_bytes_cut == 0
        assert sum(r["length"] for r in set_aside) == stats.corrupt_bytes_set_aside
    else:  # at the tail (or nothing changed): a torn tail is cut, as before
        assert set_aside == []


# -- 3. a reserve of slots ------------------------------------------------------------

@given(st.integers(1, 64), st.integers(0, 20),
       st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=300))
def test_an_enclave_with_none_open_always_gets_a_slot_while_the_reserve_lasts(
        max_connections: int, reserved: int, events: list[tuple[int, bool]]) -> None:
    """Whatever the others open and close (their own cap raised to all the slots): an
    enclave with no connection open is admitted as long as fewer enclaves hold
    connections than there are reserved slots (a parent runs a handful of enclaves)."""
    slots = Slots(max_connections, max_connections, reserved)
    reserve = max_connections - slots.shared
    held = [0] * 6
    for enclave, opening in events:
        if not opening:
            held[enclave] = max(0, held[enclave] - 1)
            continue
        why = refusal(slots, sum(held), held[enclave])
        if why is None:
            held[enclave] += 1
        elif held[enclave] == 0:
            assert sum(1 for n in held if n) >= reserve, why
        assert sum(held) <= max_connections


# -- 4. tags ----------------------------------------------------------------------------

#: The first round's hostile tags (issue 17), as a peer sends them.
HOSTILE_TAGS = ["../x", "x\nrelay.lifecycle", "a\x00b", "x\u202etxt.exe", "caf\udce9",
                "*", "x.**", "", "t" * 10_000, "a:b", "a..b", ".a", "a.", "a b"]
#: Tags in Fluent Bit's and CloudWatch's safe alphabet, as every known client sends them.
SAFE_TAG = r"[A-Za-z0-9_-]{1,20}(\.[A-Za-z0-9_-]{1,20}){0,5}"

any_tag = (st.text() | st.sampled_from(HOSTILE_TAGS)
           | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")))


@given(any_tag)
def test_any_tag_escapes_to_one_that_follows_the_rule(tag: str) -> None:
    safe = escape_tag(tag)
    assert tag_problem(safe) is None, (tag, safe)
    assert len(safe) <= TAG_MAX_LENGTH
    assert ":" not in safe and "*" not in safe and "/" not in safe  # CloudWatch, paths
    assert escape_tag(safe) == safe
    assert (safe == tag) == (tag_problem(tag) is None)


@given(st.from_regex(SAFE_TAG, fullmatch=True))
def test_a_tag_that_follows_the_rule_passes_unchanged(tag: str) -> None:
    assert tag_problem(tag) is None
    assert escape_tag(tag) == tag


@given(st.lists(any_tag, min_size=1, max_size=5))
def test_a_relay_forwards_only_tags_that_follow_the_rule_and_counts_the_rest(
        tags: list[str]) -> None:
    asyncio.run(relay_tags(tags))


async def relay_tags(tags: list[str]) -> None:
    listener = Listener(RelayConfig(listen=parse_endpoint("unix:///unused"),
                                    hostname="relay"), TagRecorder())
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    handler = asyncio.ensure_future(listener._handle(reader, writer))
    agent = RawAgent(*await asyncio.open_connection(sock=theirs))
    await agent.next_frame()  # HELO; no handshake: no key is set
    for n, tag in enumerate(tags):
        chunk = chunk_id(b"tagtests", n)
        agent.writer.write(msgpack.packb([tag, ENTRY, {"chunk": chunk}], use_bin_type=True,
                                         unicode_errors="surrogateescape"))
        await agent.next_frame()  # its ack
    await agent.close()
    await asyncio.wait_for(handler, 10)
    sink = listener.sink
    assert isinstance(sink, TagRecorder)
    assert sink.tags == [f"enclave.local.{escape_tag(t)}" for t in tags]
    assert all(tag_problem(t.removeprefix("enclave.local.")) is None for t in sink.tags)
    assert listener.stats.tags_escaped == sum(1 for t in tags if tag_problem(t) is not None)


class TagRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    async def submit(self, batch: RelayBatch, boot_id: bytes | None,
                     seq: int | None) -> asyncio.Future[None]:
        self.tags.append(batch.tag)
        return await super().submit(batch, boot_id, seq)
