"""Property tests: arbitrary bytes and well-formed-but-wrong frames, never a crash.

Two targets: the decoder (pure), and a live relay connection (the listener serving a
real socketpair). For each, only our protocol error may come out, and memory stays
bounded. CI runs the ``ci`` profile; ``HYPOTHESIS_PROFILE=large`` runs 100,000 cases
per test (see the README's security section)::

    HYPOTHESIS_PROFILE=large .venv/bin/python -m pytest tests/property -q
"""

from __future__ import annotations

import asyncio
import os
import socket
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluent_forward.codec import EventFrame, FrameDecoder, Role
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.entries import iter_entries
from fluent_forward.errors import ProtocolError
from parent_side.config import RelayConfig
from parent_side.listener import Listener
from parent_side.outputs import RelayBatch

settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("large", max_examples=100_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
#: A relay connection per case costs more; CI takes fewer of those.
RELAY_EXAMPLES = 50 if PROFILE == "ci" else settings().max_examples

# msgpack values of every type, including the ones Forward forbids where it forbids them.
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20)
           | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
           | st.builds(msgpack.Timestamp, st.integers(-(2**40), 2**40), st.integers(0, 10**9 - 1)))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), inner,
                                        max_size=3), max_leaves=8)
times = (st.integers(-5, 2**33) | st.floats(-1, 2**33, allow_nan=False)
         | st.builds(lambda s, n: msgpack.ExtType(0, s.to_bytes(4, "big") + n.to_bytes(4, "big")),
                     st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)) | values)
entries = st.lists(st.tuples(times, values), max_size=5)
options = st.none() | values | st.fixed_dictionaries(
    {}, optional={"chunk": values, "size": values, "compressed": values})


@st.composite
def wrong_frames(draw: st.DrawFn) -> bytes:
    """Frames of the right outline with anything in them."""
    tag = draw(st.text(max_size=8) | values)
    shape = draw(st.sampled_from(["message", "forward", "packed", "anything"]))
    if shape == "message":
        frame: list[Any] = [tag, draw(times), draw(values)]
    elif shape == "forward":
        frame = [tag, draw(entries)]
    elif shape == "packed":
        body = b"".join(msgpack.packb(e) for e in draw(entries))
        frame = [tag, body + draw(st.binary(max_size=8))]
    else:
        frame = draw(st.lists(values, max_size=5))
    if draw(st.booleans()):
        frame.append(draw(options))
    return msgpack.packb(frame)


def strict_output(frame: EventFrame) -> None:
    """What the decoder lets through is what Fluent Bit takes: int/EventTime, map."""
    n = 0
    for t, record in iter_entries(frame.entries):
        if type(t) in (list, tuple):
            t = t[0]
        assert type(t) is int or (isinstance(t, msgpack.ExtType) and t.code == 0)
        assert isinstance(record, dict)
        n += 1
    assert n == frame.count


def feed_all(data: bytes, step: int) -> None:
    decoder = FrameDecoder(Role.SERVER, max_frame_bytes=1 << 16)
    try:
        for i in range(0, len(data), step):
            for frame in decoder.feed(data[i:i + step]):
                if isinstance(frame, EventFrame):
                    strict_output(frame)
    except ProtocolError:
        pass


@given(st.binary(max_size=2048), st.integers(1, 64))
def test_the_decoder_takes_arbitrary_bytes(data: bytes, step: int) -> None:
    feed_all(data, step)


@given(st.lists(wrong_frames(), min_size=1, max_size=4), st.integers(1, 64))
def test_the_decoder_takes_well_formed_but_wrong_frames(frames: list[bytes], step: int) -> None:
    feed_all(b"".join(frames), step)


class Recorder:
    """A sink that takes every batch at once."""

    def __init__(self) -> None:
        self.batches = 0

    async def submit(self, batch: RelayBatch, boot_id: bytes | None,
                     seq: int | None) -> asyncio.Future[None]:
        self.batches += 1
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def serve_once(listener: Listener, data: bytes) -> None:
    """One connection: the client sends ``data`` and closes; the handler must end cleanly."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    creader, cwriter = await asyncio.open_connection(sock=theirs)
    handler = asyncio.ensure_future(listener._handle(reader, writer))
    cwriter.write(data)
    cwriter.write_eof()
    await asyncio.wait_for(handler, 10)  # raises whatever escaped the handler
    handler.result()
    cwriter.close()
    try:
        await cwriter.wait_closed()
    except ConnectionError:
        pass
    del creader


@pytest.mark.parametrize("kind", ["bytes", "frames"])
def test_a_relay_connection_takes_anything_and_memory_stays_bounded(kind: str) -> None:
    loop = asyncio.new_event_loop()
    listener = Listener(RelayConfig(listen=parse_endpoint("unix:///unused"),
                                    hostname="relay", max_frame_bytes=1 << 16,
                                    handshake_timeout=5, frame_timeout=5), Recorder())
    strategy = (st.binary(max_size=4096) if kind == "bytes"
                else st.lists(wrong_frames(), min_size=1, max_size=4).map(b"".join))
    tracemalloc.start()
    warm: list[int] = []
    peak = 0

    @settings(max_examples=RELAY_EXAMPLES)
    @given(strategy)
    def check(data: bytes) -> None:
        nonlocal peak
        # The peak of this one case, over what was live when it began: hypothesis's own
        # bookkeeping grows over a long run, and is not ours to bound.
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loop.run_until_complete(serve_once(listener, data))
        peak = max(peak, tracemalloc.get_traced_memory()[1] - before)
        if not warm:
            warm.append(held_by_us())

    try:
        check()
        held = held_by_us()
    finally:
        tracemalloc.stop()
        loop.close()
    stats = listener.stats
    assert stats.open_connections == 0, "a connection was left open"
    assert stats.connections >= 1
    # Whatever it was fed, our code holds on to almost nothing afterwards (hypothesis's
    # own bookkeeping is traced too, so only allocations made by our modules count).
    assert held - warm[0] < 1 << 20, f"our code now holds {held - warm[0]} more bytes"
    assert peak < 64 << 20, f"one connection's case peaked at {peak} bytes"


def held_by_us() -> int:
    """Bytes still allocated from lines of the relay's and codec's own modules."""
    snapshot = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(True, "*/parent_side/*"),
        tracemalloc.Filter(True, "*/fluent_forward/*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))
