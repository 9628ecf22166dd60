"""Tests of the fake Fluent Bit forward input itself (fakes/fluentbit.py).

Each test names one Fluent Bit in_forward behaviour from
the project's shared reference forward-protocol.md §2.1 and fails if the fake stops copying it.
Client frames are built here with msgpack directly, never with the project's codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import shutil
import signal
import struct
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from fakes.fluentbit import DEFAULT_BUFFER_MAX_SIZE, Batch, FakeFluentBit, Record

ROOT = Path(__file__).resolve().parents[1]
EOF = object()  # what Client.recv returns when the fake closed the connection
CHUNK = "p8n9gmxTQVC8/nh2wlKKeQ=="
TAG = "app.test"


# --------------------------------------------------------------------------- helpers


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def raw_str(data: bytes) -> bytes:
    """A msgpack str holding arbitrary bytes (msgpack-python packs only UTF-8 as str)."""
    assert len(data) < 32
    return bytes([0xA0 | len(data)]) + data


def ext0(seconds: int, nanos: int = 0) -> msgpack.ExtType:
    """Fluent EventTime: ext type 0, uint32 BE seconds + uint32 BE nanoseconds."""
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanos))


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class Client:
    """A raw Forward client: write bytes, read msgpack replies or EOF, with deadlines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")

    def send(self, *frames: Any) -> None:
        """Write frames (objects are packed, bytes are sent as they are) in one write."""
        self.writer.write(b"".join(f if isinstance(f, bytes) else pack(f) for f in frames))

    async def recv(self, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(StopIteration):
                    return next(self.unpacker)
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return EOF
                if not data:
                    return EOF
                self.unpacker.feed(data)

    async def expect_eof(self, timeout: float = 5.0) -> None:
        got = await self.recv(timeout)
        assert got is EOF, f"expected the fake to close the connection, got {got!r}"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Client]:
    if url.startswith("unix://"):
        reader, writer = await asyncio.open_unix_connection(url[len("unix://") :])
    else:
        host, port = url[len("tcp://") :].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
    client = Client(reader, writer)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="fb-", dir="/tmp")  # AF_UNIX paths: 108 bytes at most
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def url(sock_dir: str) -> str:
    return f"unix://{sock_dir}/fb.sock"


def forward(chunk: str | None = CHUNK, *entries: Any, tag: str = TAG) -> list[Any]:
    frame: list[Any] = [tag, list(entries) or [[1700000000, {"msg": "hi"}]]]
    if chunk is not None:
        frame.append({"chunk": chunk})
    return frame


def frames_by_mode(mode: str, chunk: str) -> list[Any]:
    entries = [[ext0(1700000000, 5), {"n": 1}], [ext0(1700000001, 6), {"n": 2}]]
    if mode == "message":
        return [TAG, ext0(1700000000, 5), {"n": 1}, {"chunk": chunk}]
    if mode == "forward":
        return [TAG, entries, {"chunk": chunk}]
    payload = b"".join(pack(e) for e in entries)
    if mode == "packed":
        return [TAG, payload, {"chunk": chunk}]
    assert mode == "compressed"
    return [TAG, gzip.compress(payload), {"chunk": chunk, "compressed": "gzip"}]


# --------------------------------------------------------------------------- acks


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["message", "forward", "packed", "compressed"])
async def test_ack_echoes_the_str_chunk_in_every_mode(url: str, mode: str) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(frames_by_mode(mode, CHUNK))
        assert await client.recv() == {"ack": CHUNK}
        expected = [Record(TAG, 1700000000 * 10**9 + 5, {"n": 1}, CHUNK)]
        if mode != "message":
            expected.append(Record(TAG, 1700000001 * 10**9 + 6, {"n": 2}, CHUNK))
        assert fb.records == expected
        assert fb.chunks_received == [CHUNK]
        assert fb.acks_sent == [CHUNK]
        assert fb.close_reasons == []


@pytest.mark.asyncio
async def test_ack_is_a_one_entry_map_with_str_key_and_the_chunk_bytes_echoed(url: str) -> None:
    chunk = b"c\xff\x00k"  # a str chunk that is not UTF-8: echoed byte for byte
    frame = b"\x93" + raw_str(TAG.encode()) + pack([[1, {}]]) + b"\x81"
    frame += raw_str(b"chunk") + raw_str(chunk)
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(frame)
        data = await asyncio.wait_for(client.reader.read(100), 5)
        assert data == b"\x81" + raw_str(b"ack") + raw_str(chunk)
        assert fb.acks_sent == [chunk.decode("utf-8", "surrogateescape")]


@pytest.mark.asyncio
async def test_no_chunk_means_no_reply_and_the_connection_stays_open(url: str) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(forward(None), [TAG, 1, {"m": 1}], forward("second"))
        assert await client.recv() == {"ack": "second"}  # nothing came back for the first two
        assert len(fb.records) == 3
        assert fb.chunks_received == ["second"]


@pytest.mark.asyncio
async def test_bin_chunk_closes_the_connection_without_ack(url: str) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, [[1, {"a": 1}]], {"chunk": CHUNK.encode()}])  # bin, not str
        await client.expect_eof()
        assert fb.records == []
        assert fb.acks_sent == []
        assert fb.close_reasons == ["chunk is not str"]


@pytest.mark.asyncio
async def test_send_acks_false_stores_but_never_acks(url: str) -> None:
    async with FakeFluentBit(url, send_acks=False) as fb, connect(fb.url) as client:
        client.send(forward("unacked"))
        await fb.wait_records(1)
        fb.send_acks = True
        client.send(forward("acked"))
        assert await client.recv() == {"ack": "acked"}  # the first reply is the second ack
        assert fb.chunks_received == ["unacked", "acked"]
        assert fb.acks_sent == ["acked"]


# --------------------------------------------------------------------------- frame dispatch


@pytest.mark.asyncio
async def test_nil_root_heartbeat_closes_after_earlier_frames_are_stored_and_acked(
    url: str,
) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(forward("before"), None, forward("after"))
        assert await client.recv() == {"ack": "before"}
        await client.expect_eof()
        assert [r.chunk for r in fb.records] == ["before"]
        assert fb.close_reasons == ["root is nil (heartbeat)"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (7, "root is not an array"),
        ("tag", "root is not an array"),
        ({"tag": TAG}, "root is not an array"),
        ([TAG], "root array has fewer than 2 elements"),
        ([TAG.encode(), [[1, {}]]], "tag is not str"),
        ([1, [[1, {}]]], "tag is not str"),
    ],
)
async def test_root_must_be_an_array_of_two_or_more_with_a_str_tag(
    url: str, frame: Any, reason: str
) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(frame)
        await client.expect_eof()
        assert fb.close_reasons == [reason]
        assert fb.records == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("second", "kind"),
    [(-1, "negative int"), (None, "nil"), ({"a": 1}, "map"), (True, "bool"), (1.5, "float")],
)
async def test_other_element_1_types_close(url: str, second: Any, kind: str) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, second, {"a": 1}, {"chunk": CHUNK}])
        await client.expect_eof()
        assert fb.close_reasons == [f"invalid data format: element 1 is {kind}"]
        assert fb.records == [] and fb.acks_sent == []


@pytest.mark.asyncio
async def test_float_message_mode_time_closes_though_float_entry_times_pass(url: str) -> None:
    async with FakeFluentBit(url) as fb:
        async with connect(fb.url) as client:
            client.send([TAG, 1.5, {"msg": "x"}, {"chunk": "message"}])
            await client.expect_eof()
        assert fb.records == [] and fb.acks_sent == []
        async with connect(fb.url) as client:
            client.send(forward("forward", [1.5, {"msg": "x"}]))
            assert await client.recv() == {"ack": "forward"}
        assert fb.records == [Record(TAG, 1_500_000_000, {"msg": "x"}, "forward")]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "frame",
    [[TAG, 1], [TAG, 1, "not a map"], [TAG, ext0(1), [1, 2]]],
    ids=["two-elements", "str-record", "array-record"],
)
async def test_message_mode_needs_three_elements_and_a_map_record(url: str, frame: Any) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(frame)
        await client.expect_eof()
        assert fb.records == []
        assert fb.close_reasons[0].startswith("message mode")


# --------------------------------------------------------------------------- options


@pytest.mark.asyncio
@pytest.mark.parametrize("options", ["chunk", 1, [CHUNK]], ids=["str", "int", "array"])
@pytest.mark.parametrize("mode", ["forward", "message"])
async def test_non_map_options_close(url: str, options: Any, mode: str) -> None:
    frame = [TAG, [[1, {"a": 1}]], options] if mode == "forward" else [TAG, 1, {"a": 1}, options]
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(frame)
        await client.expect_eof()
        assert fb.close_reasons == ["options is not a map"]
        assert fb.records == []


@pytest.mark.asyncio
async def test_nil_options_are_accepted_in_forward_and_message_mode(url: str) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, [[1, {"a": 1}]], None], [TAG, 2, {"b": 2}, None], forward("then"))
        assert await client.recv() == {"ack": "then"}
        assert [r.record for r in fb.records][:2] == [{"a": 1}, {"b": 2}]
        assert fb.close_reasons == []


@pytest.mark.asyncio
async def test_nil_options_close_a_packed_forward_frame(url: str) -> None:
    # fw_prot.c get_chunk_event_type() wants a map when the root has 3 elements.
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, pack([1, {"a": 1}]), None])
        await client.expect_eof()
        assert fb.records == []
        assert "PackedForward options must be a map" in fb.close_reasons[0]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "options",
    [{1: "x", "chunk": CHUNK}, {"fluent_signal": 7, "chunk": CHUNK}],
    ids=["non-str-key", "bad-fluent_signal"],
)
async def test_packed_forward_options_are_checked_strictly(url: str, options: Any) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, pack([1, {"a": 1}]), options])
        await client.expect_eof()
        assert fb.records == [] and fb.acks_sent == []


@pytest.mark.asyncio
async def test_tag_prefix_is_prepended_without_separator(url: str) -> None:
    async with FakeFluentBit(url, tag_prefix="fwd") as fb, connect(fb.url) as client:
        client.send(forward())
        await client.recv()
        assert fb.records[0].tag == "fwd" + TAG


# --------------------------------------------------------------------------- entries and times


@pytest.mark.asyncio
async def test_time_ns_from_int_float_and_event_time(url: str) -> None:
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(
            forward(None, [5, {"k": "int"}], [5.3, {"k": "float"}], [ext0(7, 123), {"k": "ev"}]),
            [TAG, ext0(9, 999_999_999), {"k": "message-ev"}, {"chunk": CHUNK}],
        )
        await client.recv()
        assert [(r.time_ns, r.record["k"]) for r in fb.records] == [
            (5_000_000_000, "int"),
            (5_300_000_000, "float"),  # rounded: 5.3 - 5 is 0.29999999999999982
            (7_000_000_123, "ev"),
            (9_999_999_999, "message-ev"),
        ]


@pytest.mark.asyncio
async def test_fluent_bit_v2_entry_shape_is_accepted(url: str) -> None:
    v2 = [[ext0(1700000000, 42), {"otel": True}], {"msg": "v2"}]
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, [v2], {"chunk": "fwd"}], [TAG, pack(v2), {"chunk": "packed"}])
        assert await client.recv() == {"ack": "fwd"}
        assert await client.recv() == {"ack": "packed"}
        assert [(r.time_ns, r.record) for r in fb.records] == [
            (1700000000 * 10**9 + 42, {"msg": "v2"})
        ] * 2
        assert fb.rejected_entries == 0


@pytest.mark.asyncio
async def test_forward_bad_entry_keeps_earlier_entries_and_closes_without_ack(url: str) -> None:
    bad = [msgpack.Timestamp(1, 0), {"n": 2}]  # ext -1: WRONG_TIMESTAMP_TYPE
    async with FakeFluentBit(url, bad_entry="close") as fb, connect(fb.url) as client:
        client.send(forward(CHUNK, [1, {"n": 1}], bad, [3, {"n": 3}]))
        await client.expect_eof()
        assert [r.record for r in fb.records] == [{"n": 1}]
        assert fb.acks_sent == []
        assert fb.rejected_entries == 1


@pytest.mark.asyncio
async def test_forward_bad_entry_in_fw_prot_c_mode_acks_and_drops_the_rest(url: str) -> None:
    bad = [-1, {"n": 2}]  # negative int time
    async with FakeFluentBit(url, bad_entry="ack") as fb, connect(fb.url) as client:
        client.send(forward(CHUNK, [1, {"n": 1}], bad, [3, {"n": 3}]), forward("next"))
        assert await client.recv() == {"ack": CHUNK}
        assert await client.recv() == {"ack": "next"}  # still open
        assert [r.record for r in fb.records] == [{"n": 1}, {"msg": "hi"}]


@pytest.mark.asyncio
async def test_message_mode_ext_minus_1_time_is_refused(url: str) -> None:
    async with FakeFluentBit(url, bad_entry="close") as fb, connect(fb.url) as client:
        client.send([TAG, msgpack.Timestamp(1, 0), {"a": 1}, {"chunk": CHUNK}])
        await client.expect_eof()
        assert fb.records == [] and fb.rejected_entries == 1


@pytest.mark.asyncio
async def test_packed_forward_counts_bad_entries_and_keeps_the_good_ones(url: str) -> None:
    payload = b"".join(
        [
            pack([1, {"n": 1}]),
            pack([-5, {"bad": "negative time"}]),
            pack("not an entry"),
            pack([ext0(0xFFFFFFFF), {}]),  # group start marker: skipped, not a record
            pack([msgpack.Timestamp(2, 0), {"bad": "ext -1"}]),
            pack([2, "record not a map"]),
            pack([[3, {"meta": 1}], {"n": 3}]),
        ]
    )
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, payload, {"chunk": CHUNK}])
        assert await client.recv() == {"ack": CHUNK}
        assert [r.record for r in fb.records] == [{"n": 1}, {"n": 3}]
        assert fb.rejected_entries == 4


@pytest.mark.asyncio
async def test_packed_forward_accepts_legacy_str_payload(url: str) -> None:
    payload = pack([1, {"n": 1}])
    frame = b"\x93" + raw_str(TAG.encode()) + b"\xd9" + bytes([len(payload)]) + payload
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(frame + pack({"chunk": CHUNK}))
        assert await client.recv() == {"ack": CHUNK}
        assert [r.record for r in fb.records] == [{"n": 1}]


@pytest.mark.asyncio
async def test_gzip_magic_is_sniffed_only_when_an_options_map_is_present(url: str) -> None:
    body = gzip.compress(pack([1, {"n": 1}])) + gzip.compress(pack([2, {"n": 2}]))
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send([TAG, body, {"chunk": "sniffed"}])  # no "compressed" option
        assert await client.recv() == {"ack": "sniffed"}
        assert [r.record for r in fb.records] == [{"n": 1}, {"n": 2}]  # two gzip members
        client.send([TAG, body], forward("after"))  # no options: gzip bytes read as entries
        assert await client.recv() == {"ack": "after"}
        assert len(fb.records) == 3
        assert fb.rejected_entries > 0


@pytest.mark.asyncio
async def test_non_utf8_str_is_stored_with_surrogateescape(url: str) -> None:
    frame = b"\x94" + raw_str(b"tag.\xff") + pack(1) + b"\x81" + raw_str(b"msg")
    frame += raw_str(b"\xfe\xff ok") + pack({"chunk": CHUNK})
    async with FakeFluentBit(url) as fb, connect(fb.url) as client:
        client.send(frame)
        assert await client.recv() == {"ack": CHUNK}
        record = Record("tag.\udcff", 1_000_000_000, {"msg": "\udcfe\udcff ok"}, CHUNK)
        assert fb.records == [record]


# --------------------------------------------------------------------------- buffer_max_size


def frame_of_size(size: int, chunk: str) -> bytes:
    def build(n: int) -> bytes:
        return pack([TAG, [[1, {"pad": "x" * n}]], {"chunk": chunk}])

    overhead = len(build(300)) - 300  # str16 header from 256 to 65535 characters
    frame = build(size - overhead)
    assert len(frame) == size
    return frame


@pytest.mark.asyncio
async def test_frame_over_buffer_max_size_closes_and_is_lost(url: str) -> None:
    async with FakeFluentBit(url, buffer_max_size=4096) as fb:
        async with connect(fb.url) as client:
            client.send(frame_of_size(4096, "fits"))
            assert await client.recv() == {"ack": "fits"}
            client.send(frame_of_size(4097, "too-big"))
            await client.expect_eof()
        assert fb.chunks_received == ["fits"]
        assert len(fb.records) == 1
        assert fb.close_reasons == ["incoming data exceed limit (buffer_max_size)"]
    assert FakeFluentBit(url).buffer_max_size == DEFAULT_BUFFER_MAX_SIZE == 6_144_000


@pytest.mark.asyncio
async def test_decompressed_payload_over_buffer_max_size_closes(url: str) -> None:
    body = gzip.compress(pack([1, {"pad": "x" * 10_000}]))
    assert len(body) < 1000
    async with FakeFluentBit(url, buffer_max_size=4096) as fb, connect(fb.url) as client:
        client.send([TAG, body, {"chunk": CHUNK, "compressed": "gzip"}])
        await client.expect_eof()
        assert fb.records == []
        assert fb.close_reasons == ["decompressed payload exceeds buffer_max_size"]


# --------------------------------------------------------------------------- handshake


async def handshake(client: Client, key: bytes, hostname: str = "client-host") -> Any:
    helo = await client.recv()
    nonce = enc(helo[1]["nonce"])
    salt = "0123456789abcdef"
    digest = sha512_hex(salt.encode(), hostname.encode(), nonce, key)
    client.send(["PING", hostname, salt, digest, "", ""])
    return await client.recv()


@pytest.mark.asyncio
async def test_handshake_helo_holds_16_byte_str_nonce_and_auth_then_pong(url: str) -> None:
    async with FakeFluentBit(url, shared_key="s3cret") as fb, connect(fb.url) as client:
        helo = await client.recv()
        assert helo[0] == "HELO"
        assert sorted(helo[1]) == ["auth", "nonce"]  # no keepalive
        for field in ("nonce", "auth"):
            assert isinstance(helo[1][field], str)  # msgpack str, bin would decode to bytes
            assert len(enc(helo[1][field])) == 16
        nonce = enc(helo[1]["nonce"])
        salt = "\u00e9salt"  # the digest covers the salt bytes as sent
        client.send(["PING", "me", salt, sha512_hex(enc(salt), b"me", nonce, b"s3cret"), "", ""])
        pong = await client.recv()
        assert pong == [
            "PONG",
            True,
            "",
            "localhost",
            sha512_hex(enc(salt), b"localhost", nonce, b"s3cret"),
        ]
        client.send(forward())
        assert await client.recv() == {"ack": CHUNK}
        assert fb.handshakes == 1 and len(fb.records) == 1


@pytest.mark.asyncio
async def test_handshake_wrong_key_closes_without_pong(url: str) -> None:
    async with FakeFluentBit(url, shared_key="right") as fb, connect(fb.url) as client:
        helo = await client.recv()
        nonce = enc(helo[1]["nonce"])
        client.send(["PING", "me", "salt", sha512_hex(b"salt", b"me", nonce, b"wrong"), "", ""])
        await client.expect_eof()  # no PONG first
        assert fb.close_reasons == ["handshake: shared_key mismatch"]


@pytest.mark.asyncio
@pytest.mark.parametrize("field", [1, 2, 3])
async def test_handshake_ping_fields_must_be_str_not_bin(url: str, field: int) -> None:
    async with FakeFluentBit(url, shared_key="k") as fb, connect(fb.url) as client:
        helo = await client.recv()
        nonce = enc(helo[1]["nonce"])
        ping: list[Any] = ["PING", "me", "salt", sha512_hex(b"salt", b"me", nonce, b"k"), "", ""]
        ping[field] = ping[field].encode()  # same bytes, as bin
        client.send(ping)
        await client.expect_eof()
        assert fb.close_reasons == ["handshake: PING field is not str"]


@pytest.mark.asyncio
async def test_bytes_after_ping_in_the_same_write_are_discarded(url: str) -> None:
    async with FakeFluentBit(url, shared_key="k", self_hostname="fb") as fb:
        async with connect(fb.url) as client:
            helo = await client.recv()
            nonce = enc(helo[1]["nonce"])
            ping = ["PING", "me", "salt", sha512_hex(b"salt", b"me", nonce, b"k"), "", ""]
            early = pack(forward("early"))
            client.send(ping, early)  # one write: PING then a frame
            pong = await client.recv()
            assert pong[:4] == ["PONG", True, "", "fb"]
            client.send(forward("late"))
            assert await client.recv() == {"ack": "late"}  # not "early"
        assert fb.chunks_received == ["late"]
        assert len(fb.records) == 1
        assert fb.discarded_bytes == len(early)


@pytest.mark.asyncio
async def test_handshake_accepts_a_ping_split_across_writes(url: str) -> None:
    async with FakeFluentBit(url, shared_key="k") as fb, connect(fb.url) as client:
        helo = await client.recv()
        nonce = enc(helo[1]["nonce"])
        ping = pack(["PING", "me", "salt", sha512_hex(b"salt", b"me", nonce, b"k"), "", ""])
        client.send(ping[:10])
        await client.writer.drain()
        await fb.wait_for(lambda: fb.open_connections == 1)
        client.send(ping[10:])
        assert (await client.recv())[:2] == ["PONG", True]


# --------------------------------------------------------------------------- knobs


@pytest.mark.asyncio
async def test_pause_closes_every_connection_and_refuses_new_ones_until_resume(url: str) -> None:
    async with FakeFluentBit(url) as fb:
        async with connect(fb.url) as first, connect(fb.url) as second:
            await fb.wait_for(lambda: fb.open_connections == 2)
            fb.pause()
            await first.expect_eof()
            await second.expect_eof()
        async with connect(fb.url) as third:  # accepted, then closed
            third.send(forward("while-paused"))
            await third.expect_eof()
        assert fb.records == [] and fb.acks_sent == []
        assert fb.connections == 3
        assert fb.close_reasons == ["paused", "paused", "paused: accepted then closed"]
        fb.resume()
        async with connect(fb.url) as fourth:
            fourth.send(forward("resumed"))
            assert await fourth.recv() == {"ack": "resumed"}


@pytest.mark.asyncio
async def test_refuse_accepts_then_closes(url: str) -> None:
    async with FakeFluentBit(url, refuse=True) as fb:
        async with connect(fb.url) as client:
            await client.expect_eof()
        fb.refuse = False
        async with connect(fb.url) as client:
            client.send(forward())
            assert await client.recv() == {"ack": CHUNK}
        assert fb.connections == 2
        assert fb.close_reasons == ["refused: accepted then closed"]


@pytest.mark.asyncio
async def test_ack_delay_delays_acks_after_storing_and_keeps_their_order(url: str) -> None:
    loop = asyncio.get_running_loop()
    async with FakeFluentBit(url, ack_delay=0.3) as fb, connect(fb.url) as client:
        started = loop.time()
        client.send(forward("a"))
        await fb.wait_records(1)
        assert fb.acks_sent == []  # stored, ack still pending
        assert await client.recv() == {"ack": "a"}
        assert loop.time() - started >= 0.29
        # b is queued with a 0.3 s delay, c with none: c's ack still comes after b's.
        client.send(forward("b"))
        await fb.wait_for(lambda: "b" in fb.chunks_received)
        fb.ack_delay = 0
        client.send(forward("c"))
        assert [await client.recv(), await client.recv()] == [{"ack": "b"}, {"ack": "c"}]
        # A protocol-error close waits for the acks queued before it, as Fluent Bit wrote them.
        fb.ack_delay = 0.2
        client.send(forward("d"), None)
        assert await client.recv() == {"ack": "d"}
        await client.expect_eof()
        assert fb.acks_sent == ["a", "b", "c", "d"]


@pytest.mark.asyncio
async def test_close_on_chunk_rejects_a_poison_frame_every_time(url: str) -> None:
    seen: list[Batch] = []

    def poison(batch: Batch) -> bool:
        seen.append(batch)
        return any(r.record.get("poison") for r in batch.records)

    async with FakeFluentBit(url, close_on_chunk=poison) as fb:
        for _ in range(2):
            async with connect(fb.url) as client:
                client.send(forward("bad", [1, {"poison": True}]))
                await client.expect_eof()
        async with connect(fb.url) as client:
            client.send(forward("good"))
            assert await client.recv() == {"ack": "good"}
        assert fb.chunks_received == ["bad", "bad", "good"]
        assert [r.chunk for r in fb.records] == ["good"]
        assert fb.close_reasons == ["close_on_chunk", "close_on_chunk"]
        assert [(b.mode, b.chunk) for b in seen] == [("forward", "bad")] * 2 + [("forward", "good")]


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["unix", "tcp"])
async def test_restart_listens_again_on_the_same_address(sock_dir: str, scheme: str) -> None:
    listen = f"unix://{sock_dir}/fb.sock" if scheme == "unix" else "tcp://127.0.0.1:0"
    async with FakeFluentBit(listen) as fb:
        address = fb.url
        assert not address.endswith(":0")
        async with connect(address) as client:
            client.send(forward("before"))
            assert await client.recv() == {"ack": "before"}
            await fb.restart()
            assert fb.url == address
            await client.expect_eof()
        async with connect(address) as client:
            client.send(forward("after"))
            assert await client.recv() == {"ack": "after"}
        assert fb.close_reasons == ["stopped"]
        await fb.stop()
        # Stopped: nothing listens, and the Unix socket file is gone (ENOENT, not ECONNREFUSED).
        gone = FileNotFoundError if scheme == "unix" else ConnectionRefusedError
        with pytest.raises(gone):
            async with connect(address):
                pass


@pytest.mark.asyncio
async def test_wait_helpers_time_out_with_a_helpful_message(url: str) -> None:
    async with FakeFluentBit(url) as fb:
        message = r"1 record\(s\) not reached within 0.05s.*records=0"
        with pytest.raises(TimeoutError, match=message):
            await fb.wait_records(1, timeout=0.05)


# --------------------------------------------------------------------------- subprocess


async def read_line(stream: asyncio.StreamReader | None, timeout: float = 20.0) -> str:
    assert stream is not None
    async with asyncio.timeout(timeout):
        return (await stream.readline()).decode()


@contextlib.asynccontextmanager
async def run_cli(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fakes.fluentbit", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


@pytest.mark.asyncio
async def test_cli_writes_json_lines_to_a_file_and_exits_on_sigterm(sock_dir: str) -> None:
    out = Path(sock_dir, "records.jsonl")
    listen = f"unix://{sock_dir}/fb.sock"
    async with run_cli("--listen", listen, "--out", str(out), "--shared-key", "k") as proc:
        assert await read_line(proc.stdout) == f"listening {listen}\n"
        async with connect(listen) as client:
            assert (await handshake(client, b"k"))[:2] == ["PONG", True]
            client.send([TAG, [[ext0(1, 2), {"msg": "hello", "raw": b"\x00"}]], {"chunk": "c"}])
            assert await client.recv() == {"ack": "c"}  # written and flushed before the ack
        lines = (await asyncio.to_thread(out.read_text)).splitlines()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
        assert proc.returncode == 0
    assert [json.loads(line) for line in lines] == [
        {"tag": TAG, "time_ns": 1_000_000_002, "record": {"msg": "hello", "raw": {"$bin": "AA=="}}}
    ]


@pytest.mark.asyncio
async def test_cli_prints_records_on_stdout_without_out(sock_dir: str) -> None:
    async with run_cli("--listen", "tcp://127.0.0.1:0", "--ack-delay", "0.01") as proc:
        first = await read_line(proc.stdout)
        assert first.startswith("listening tcp://127.0.0.1:") and not first.endswith(":0\n")
        listen = first.split()[1]
        async with connect(listen) as client:
            client.send([TAG, 3, {"msg": "x"}, {"chunk": "c"}])
            assert await client.recv() == {"ack": "c"}
        assert json.loads(await read_line(proc.stdout)) == {
            "tag": TAG,
            "time_ns": 3_000_000_000,
            "record": {"msg": "x"},
        }
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
        assert proc.returncode == 0
