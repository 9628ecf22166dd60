"""A fake Fluent Bit ``in_forward`` input: an independent Forward-protocol peer for tests.

It is written from the project's shared reference forward-protocol.md (cited as "ref §N") and from
Fluent Bit's plugins/in_forward/fw_prot.c and fw_conn.c, and held to a real Fluent Bit 4.2.8:
tests/fluentbit/test_probes.py runs the same exchanges against both (where the two
disagreed, the fake was corrected: see "Checked against a real Fluent Bit" below). It uses
only the standard library and msgpack, never the project's codec, so the project is tested
against a second reading of the protocol rather than against itself. The faults a real
Fluent Bit cannot be made to play (bogus or delayed acks, a frozen peer, closing on one
chunk) stay the fake's job.

Fluent Bit behaviours it copies:

* Listener: TCP or Unix stream socket, no UDP, no JSON mode (ref §2.1). A stale Unix socket
  file is unlinked at start and at stop; a path that is not a socket is an error.
* Frame dispatch as in ``fw_prot_process`` (ref §2.1 "Frame dispatch"): the root must be an
  array of >= 2 elements whose element 0 is a msgpack str tag, else the connection is closed.
  Element 1: array -> Forward; int >= 0 or ext -> Message (needs >= 3 elements and a map
  record); str or bin -> PackedForward; anything else (float, negative int, nil, bool, map)
  -> close. A root ``nil`` (the spec's heartbeat) or any non-array root -> close.
* Options (ref §2.1 "Options"): ``nil`` is tolerated; a non-map closes; a ``chunk`` that is
  not a str (e.g. bin) closes without ack; Message-mode ``metadata`` must be a map.
* Ack (ref §2.1 "Ack", §1 "Response"): the map ``{"ack": <same str>}``, written after the
  records are stored. Without ``chunk`` nothing is written and the connection stays open.
* Times (ref §2.1 "Time handling", §5 "Ext handling"): int >= 0, float (not as the
  Message-mode time) and ext type 0 of length 8. Ext -1 (msgpack Timestamp) is refused.
  ``time_ns``: int s -> s * 1e9; ext 0 -> s * 1e9 + ns; float -> rounded to the nearest ns
  (Fluent Bit truncates; 5.3 gives ...300000000 here, ...299999999 there).
  Entries may be ``[time, record]`` or the Fluent Bit v2 shape ``[[time, metadata], record]``.
  EventTime seconds 0xFFFFFFFF / 0xFFFFFFFE are group start/end markers, not records.
* Forward mode with a bad entry: the entries before it are kept, the rest dropped, the
  frame acked and the connection kept (default ``bad_entry="ack"``, as the real one does);
  ``bad_entry="close"`` closes with no ack instead, as ref §2.1 "Ack" states.
* PackedForward (ref §2.1 "Malformed input"): the payload is appended as-is by Fluent Bit, so
  the fake keeps every good entry and counts the bad ones in ``rejected_entries``.
  gzip is inflated when ``compressed`` is "gzip", or when the options map is present and the
  payload starts with 1F 8B (the magic wins over the option, v4.1.0+). zstd is recognised but
  not supported by the fake (closes). A payload or inflated payload larger than
  ``buffer_max_size`` closes the connection (v5.0.0+).
* ``buffer_max_size`` (default 6,144,000, ref §2.1 "Configuration"): reads go into a
  per-connection buffer of at most that size (fw_conn.c); when it is full of an incomplete
  frame and more bytes arrive, the connection is closed and the frame is lost. A frame of
  exactly ``buffer_max_size`` bytes still fits.
* Malformed msgpack closes the connection silently; frames parsed earlier on the same
  connection are already stored and acked (ref §2.1 "Malformed input").
* Secure-forward handshake (ref §2.1 "Secure-forward handshake", §1 "Handshake"): HELO right
  after accept, a map holding only ``nonce`` and ``auth``, each 16 random bytes packed as
  msgpack *str* (not valid UTF-8). PING must be a 6-element array of str; it is read into a
  buffer of at most 1023 bytes (several reads if the PING is split), one object is parsed
  and the rest of that read is discarded (ref §7 item 5: wait for PONG before sending).
  The digest is sha512_hex(salt + client_hostname + nonce + shared_key) over raw bytes; a
  mismatch closes without PONG. Success -> ``["PONG", true, "", self_hostname, digest]``.
* ``pause()`` copies ``in_fw_pause`` (ref §2.1 "Backpressure"): every open connection is
  closed, new ones are accepted then closed until ``resume()``.
* ``tag_prefix`` is prepended verbatim, with no separator (ref §2.1 "Configuration").

Checked against a real Fluent Bit 4.2.8 (tests/fluentbit/test_probes.py, both peers):

* Agree: the ack is exactly ``81 A3 "ack" <chunk str>``; without ``chunk`` nothing comes
  back and the connection stays open; a ``nil`` root (heartbeat), a ``bin`` or int
  ``chunk``, non-map options, a 3-element PackedForward whose options are ``nil``, a
  Message-mode float time and malformed msgpack all close the connection; Forward-mode
  ``nil`` options are accepted; without ``shared_key`` no HELO is sent; with it, HELO is
  ``["HELO", {"nonce", "auth"}]`` (16-byte str each, no ``keepalive``), a PING of str fields
  with the right key gets ``["PONG", true, "", self_hostname, digest]``, a wrong key or
  ``bin`` PING fields close without PONG, and bytes sent in the same write as the PING are
  discarded; a ``nil`` root after the handshake closes too; a frame of exactly
  ``buffer_max_size`` bytes is acked and one byte more closes the connection (the real
  one resets it, logging "incoming data exceed limit").
* Corrected: a bad entry does **not** close the connection. The reference (ref §2.1 "Ack")
  says a Forward-mode frame with a bad entry is closed without ack; the real one stores
  the entries before it, drops it and the rest, acks and keeps the connection, as
  fw_prot.c reads; a Message-mode ext -1 (or other ext) time is likewise dropped and
  acked. So ``bad_entry="ack"`` is now the default; ``bad_entry="close"`` keeps the
  reference's reading for the tests written against it.
* fw_prot.c closes a 3-element PackedForward frame whose options are ``nil``
  (``get_chunk_event_type`` wants a map), although ``nil`` is tolerated in the other modes.
  The real one does the same, and so does the fake.

Not modelled: ``security.users`` (user/password auth), ``buffer_chunk_size``, metrics and
traces (``fluent_signal`` 1 and 2 close the connection), output-side behaviour.

Run as a subprocess::

    python -m fakes.fluentbit --listen unix:///tmp/x/fb.sock [--shared-key K]
        [--ack-delay S] [--out FILE]

prints ``listening URL`` once ready and appends each stored record as a JSON line
``{"tag", "time_ns", "record"}`` to FILE (or stdout); SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import signal
import stat
import sys
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, TextIO

import msgpack

__all__ = ["DEFAULT_BUFFER_MAX_SIZE", "Batch", "FakeFluentBit", "Record", "main"]

log = logging.getLogger(__name__)

DEFAULT_BUFFER_MAX_SIZE = 6_144_000  # fw_conn.h FLB_IN_FW_CHUNK_MAX_SIZE
PING_READ_MAX = 1023  # fw_prot.c check_ping(): secure_forward_read(..., 1023, ...)
NONCE_SIZE = 16  # FLB_IN_FW_NONCE_SIZE / FLB_IN_FW_SALT_SIZE
READ_SIZE = 65536  # bytes handed to the parser per simulated read()
NS = 1_000_000_000
GROUP_START, GROUP_END = -1, -2  # EventTime seconds 0xFFFFFFFF / 0xFFFFFFFE as int32


class Record(NamedTuple):
    """One stored event, in arrival order."""

    tag: str
    time_ns: int
    record: dict[Any, Any]
    chunk: str | None


class Batch(NamedTuple):
    """What ``close_on_chunk`` is shown for each frame before its records are stored."""

    tag: str
    mode: str  # "message" | "forward" | "packed" | "compressed"
    chunk: str | None
    records: list[Record]


class _Map(tuple):  # type: ignore[type-arg]
    """A decoded msgpack map, kept as (key, value) pairs like msgpack-c's ``via.map``.

    A tuple, so that ``isinstance(x, list)`` means a msgpack array and nothing else.
    """


class _BadEntry(Exception):
    """An entry that Fluent Bit's log event decoder would refuse."""


class _Close(Exception):
    """Close the connection now; the message is the reason."""


_MARKER = object()  # a group start/end marker: neither a record nor an error
_CLOSE = object()  # queue item: close the connection after the acks before it


# --------------------------------------------------------------------------- decoding


def _unpacker(max_buffer_size: int) -> msgpack.Unpacker:
    # raw=False + surrogateescape tells str (-> str) from bin (-> bytes) and never fails on
    # non-UTF-8 str; object_pairs_hook keeps maps as pairs (non-str, duplicate, unhashable keys).
    return msgpack.Unpacker(
        raw=False,
        unicode_errors="surrogateescape",
        strict_map_key=False,
        object_pairs_hook=_Map,
        max_buffer_size=max_buffer_size,
        max_array_len=max_buffer_size,
        max_map_len=max_buffer_size // 2,
    )


def _raw(s: str) -> bytes:
    """The bytes of a msgpack str as they were on the wire."""
    return s.encode("utf-8", "surrogateescape")


def _is_uint(obj: Any) -> bool:
    return isinstance(obj, int) and not isinstance(obj, bool) and obj >= 0


def _is_ext(obj: Any) -> bool:
    return isinstance(obj, msgpack.ExtType | msgpack.Timestamp)


def _plain(obj: Any) -> Any:
    """Decoded msgpack -> plain Python (maps become dicts)."""
    if isinstance(obj, _Map):
        return {_key(k): _plain(v) for k, v in obj}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _key(obj: Any) -> Any:
    key = _plain(obj)
    if isinstance(key, list):
        key = tuple(key)
    try:
        hash(key)
    except TypeError:
        return repr(key)
    return key


def _int32(seconds: int) -> int:
    """``(int32_t) tv_sec`` as in flb_log_event_decoder_get_record_type()."""
    return (seconds + 2**31) % 2**32 - 2**31


def _decode_time(obj: Any) -> tuple[int, int]:
    """flb_log_event_decoder_decode_timestamp(): (seconds, nanoseconds)."""
    if _is_uint(obj):
        return obj, 0
    if isinstance(obj, float):
        try:
            seconds = int(obj)  # C truncates toward zero
        except (OverflowError, ValueError) as exc:
            raise _BadEntry("float time is not finite") from exc
        nanos = round((obj - seconds) * NS)  # Fluent Bit truncates; rounded here on purpose
        return seconds, nanos
    if isinstance(obj, msgpack.ExtType) and obj.code == 0 and len(obj.data) == 8:
        seconds = int.from_bytes(obj.data[:4], "big")
        nanos = int.from_bytes(obj.data[4:], "big")
        return _int32(seconds), nanos
    if isinstance(obj, msgpack.Timestamp):
        raise _BadEntry("ext -1 (msgpack Timestamp) time: WRONG_TIMESTAMP_TYPE")
    if isinstance(obj, msgpack.ExtType):
        raise _BadEntry(f"ext type {obj.code} length {len(obj.data)} time: WRONG_TIMESTAMP_TYPE")
    raise _BadEntry(f"time of type {type(obj).__name__}: WRONG_TIMESTAMP_TYPE")


def _decode_entry(entry: Any) -> tuple[int, _Map] | object:
    """flb_event_decoder_decode_object(): (time_ns, body), or _MARKER for a group marker."""
    if not isinstance(entry, list) or len(entry) != 2:
        raise _BadEntry("entry is not a 2-element array")
    header, body = entry
    if isinstance(header, list):  # Fluent Bit v2: [[time, metadata], record]
        if len(header) != 2:
            raise _BadEntry("v2 entry header is not [time, metadata]")
        when, metadata = header
        if not isinstance(metadata, _Map):
            raise _BadEntry("v2 entry metadata is not a map")
    else:
        when = header
    if not (_is_uint(when) or isinstance(when, float) or _is_ext(when)):
        raise _BadEntry(f"time of type {type(when).__name__}: WRONG_TIMESTAMP_TYPE")
    if not isinstance(body, _Map):
        raise _BadEntry("record is not a map")
    seconds, nanos = _decode_time(when)
    seconds32 = _int32(seconds)
    if seconds32 in (GROUP_START, GROUP_END):
        return _MARKER
    if seconds32 < 0:
        raise _BadEntry("negative time")
    return seconds * NS + nanos, body


def _options_value(root: list[Any], index: int, name: str) -> tuple[bool, Any]:
    """get_options_chunk()/get_options_metadata(): (found, value); _Close on a non-map."""
    if index >= len(root) or root[index] is None:  # nil: Docker 18 compatibility
        return False, None
    options = root[index]
    if not isinstance(options, _Map):
        raise _Close("options is not a map")
    for key, value in options:
        if isinstance(key, str) and key == name:
            return True, value
    return False, None


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate one or more concatenated gzip members, refusing more than ``limit`` bytes."""
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(wbits=31)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise _Close(f"gzip decompression failed: {exc}") from exc
        if len(out) > limit:
            raise _Close("decompressed payload exceeds buffer_max_size")
        if not inflater.eof:
            raise _Close("gzip decompression failed: truncated member")
        data = inflater.unused_data
    return bytes(out)


def _sniff(payload: bytes) -> str | None:
    if payload[:2] == b"\x1f\x8b":
        return "gzip"
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


def _pack_str_raw(data: bytes) -> bytes:
    """A msgpack str header + arbitrary bytes (msgpack-python only packs valid UTF-8 as str)."""
    n = len(data)
    if n < 32:
        header = bytes([0xA0 | n])
    elif n < 2**8:
        header = b"\xd9" + n.to_bytes(1, "big")
    elif n < 2**16:
        header = b"\xda" + n.to_bytes(2, "big")
    else:
        header = b"\xdb" + n.to_bytes(4, "big")
    return header + data


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


# --------------------------------------------------------------------------- connection


class _Conn(asyncio.Protocol):
    """One accepted connection: handshake, frame parsing, ordered (possibly delayed) acks."""

    def __init__(self, fake: FakeFluentBit) -> None:
        self.fake = fake
        self.transport: asyncio.Transport | None = None
        self.reading = False
        self.handshaking = False
        self.nonce = b""
        self.ping_buf = bytearray()
        self.unpacker = _unpacker(fake.buffer_max_size + READ_SIZE)
        self.fed = 0  # bytes given to the unpacker
        self.parsed = 0  # end offset of the last complete frame
        self.queue: deque[tuple[float, object]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        fake = self.fake
        fake.connections += 1
        fake._conns.add(self)
        fake._changed()
        if fake._stopping:
            self.abort("stopped")
        elif fake._paused:
            self.abort("paused: accepted then closed")
        elif fake.refuse:
            self.abort("refused: accepted then closed")
        elif fake.shared_key is not None:
            self.nonce = os.urandom(NONCE_SIZE)
            auth = os.urandom(NONCE_SIZE)
            transport.write(
                b"\x92"
                + _pack_str_raw(b"HELO")
                + b"\x82"
                + _pack_str_raw(b"nonce")
                + _pack_str_raw(self.nonce)
                + _pack_str_raw(b"auth")
                + _pack_str_raw(auth)
            )
            self.handshaking = self.reading = True
        else:
            self.reading = True

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.reading:
            if self.handshaking:
                taken = self._ping_read(view)
            else:
                taken = self._frames_read(view)
            view = view[taken:]

    def eof_received(self) -> bool:
        # Like read() == 0 in fw_conn.c, but let acks still waiting on ack_delay go out first.
        self.reading = False
        self._enqueue(_CLOSE, 0.0)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.reading = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.fake._conns.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
        self.fake._changed()

    # ---- closing

    def abort(self, reason: str) -> None:
        """Close now (pause, stop, refuse); acks not yet written are dropped."""
        self.reading = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.fake.close_reasons.append(reason)
            self.transport.close()
        self.fake._changed()

    def finish(self, reason: str) -> None:
        """Protocol-error close: stop reading; close after the acks already queued."""
        log.debug("fake fluent-bit closes a connection: %s", reason)
        self.reading = False
        self.fake.close_reasons.append(reason)
        self.fake._changed()
        self._enqueue(_CLOSE, 0.0)

    # ---- replies, in order, each after its delay

    def _enqueue(self, item: object, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + delay, item))
        self._flush()

    def _flush(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        transport = self.transport
        while self.queue:
            due, item = self.queue[0]
            if due > loop.time():
                self.timer = loop.call_at(due, self._flush)
                return
            self.queue.popleft()
            if transport is None or transport.is_closing():
                continue
            if item is _CLOSE:
                self.queue.clear()
                transport.close()
                return
            assert isinstance(item, str)
            transport.write(_ack_bytes(item))
            self.fake.acks_sent.append(item)
            self.fake._changed()

    # ---- handshake

    def _ping_read(self, view: memoryview) -> int:
        """Emulate secure_forward_read(): reads into a 1023-byte buffer until one object."""
        room = PING_READ_MAX - len(self.ping_buf)
        chunk = view[:room]
        self.ping_buf += chunk
        unpacker = _unpacker(PING_READ_MAX)
        unpacker.feed(bytes(self.ping_buf))
        try:
            ping = unpacker.unpack()
        except msgpack.OutOfData:
            if len(self.ping_buf) >= PING_READ_MAX:
                self.finish("handshake: no PING within 1023 bytes")
            return len(chunk)
        except Exception as exc:
            self.finish(f"handshake: PING is not msgpack ({type(exc).__name__})")
            return len(chunk)
        self.fake.discarded_bytes += len(self.ping_buf) - unpacker.tell()
        self.ping_buf.clear()  # check_ping(): conn->buf_len = 0, the rest of the read is lost
        self._check_ping(ping)
        return len(chunk)

    def _check_ping(self, ping: Any) -> None:
        fake = self.fake
        if not isinstance(ping, list) or len(ping) != 6:
            return self.finish("handshake: PING is not a 6-element array")
        if not all(isinstance(field, str) for field in ping):
            return self.finish("handshake: PING field is not str")
        if ping[0] != "PING":
            return self.finish("handshake: not a PING")
        _, hostname, salt, digest, _username, _password_digest = (_raw(f) for f in ping)
        key = fake._shared_key_bytes()
        expected = sha512_hex(salt, hostname, self.nonce, key)
        if digest[:128] != expected.encode():  # strncmp(serverside, digest, 128)
            return self.finish("handshake: shared_key mismatch")
        self.handshaking = False
        pong_digest = sha512_hex(salt, fake.self_hostname.encode(), self.nonce, key)
        assert self.transport is not None
        self.transport.write(msgpack.packb(["PONG", True, "", fake.self_hostname, pong_digest]))
        fake.handshakes += 1
        fake._changed()

    # ---- frames

    def _frames_read(self, view: memoryview) -> int:
        """One read() as in fw_conn.c: at most the room left in a buffer of buffer_max_size.

        A full buffer with more data to read closes the connection ("incoming data exceed
        limit"), so a frame larger than buffer_max_size can never be parsed.
        """
        fake = self.fake
        room = fake.buffer_max_size - (self.fed - self.parsed)
        if room < 1:
            self.finish("incoming data exceed limit (buffer_max_size)")
            return len(view)
        chunk = view[: min(room, READ_SIZE)]
        self.unpacker.feed(chunk)
        self.fed += len(chunk)
        while self.reading:
            try:
                root = next(self.unpacker)
            except StopIteration:
                break
            except Exception as exc:  # FormatError, StackError, ValueError, ...
                self.finish(f"msgpack parse error ({type(exc).__name__})")
                break
            self.parsed = self.unpacker.tell()  # tell() is exact only after a whole object
            fake.frames += 1
            try:
                fake._process_frame(self, root)
            except _Close as exc:
                self.finish(str(exc))
            fake._changed()
        return len(chunk)

    def ack(self, chunk: str) -> None:
        if self.fake.send_acks:
            self._enqueue(chunk, self.fake.ack_delay)


def _ack_bytes(chunk: str) -> bytes:
    """send_ack(): a 1-entry map, str key "ack", the chunk object echoed byte for byte."""
    return b"\x81" + _pack_str_raw(b"ack") + _pack_str_raw(_raw(chunk))


# --------------------------------------------------------------------------- the fake


class FakeFluentBit:
    """A Fluent Bit ``in_forward`` stand-in listening on ``tcp://HOST:PORT`` or ``unix:///path``.

    Use ``async with FakeFluentBit(url) as fb:`` or ``await fb.start()`` / ``await fb.stop()``.
    The knobs ``ack_delay``, ``send_acks``, ``refuse``, ``close_on_chunk`` and ``bad_entry``
    are plain attributes and may be changed while it runs.
    """

    def __init__(
        self,
        listen: str = "tcp://127.0.0.1:0",
        *,
        shared_key: str | bytes | None = None,
        self_hostname: str = "localhost",
        buffer_max_size: int = DEFAULT_BUFFER_MAX_SIZE,
        tag_prefix: str = "",
        ack_delay: float = 0.0,
        send_acks: bool = True,
        refuse: bool = False,
        close_on_chunk: Callable[[Batch], bool] | None = None,
        bad_entry: str = "ack",
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        if bad_entry not in ("close", "ack"):
            raise ValueError("bad_entry must be 'close' or 'ack'")
        if listen.startswith("unix://"):
            self.path: str | None = listen[len("unix://") :]
            self.host, self.port = "", 0
            if not self.path:
                raise ValueError(f"{listen!r}: empty Unix socket path")
        elif listen.startswith("tcp://"):
            host, sep, port = listen[len("tcp://") :].rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"{listen!r}: expected tcp://HOST:PORT")
            self.path = None
            self.host, self.port = host.strip("[]"), int(port)
        else:
            raise ValueError(f"{listen!r}: expected tcp://HOST:PORT or unix:///path")
        self.shared_key = shared_key
        self.self_hostname = self_hostname
        self.buffer_max_size = buffer_max_size
        self.tag_prefix = tag_prefix
        self.ack_delay = ack_delay
        self.send_acks = send_acks
        self.refuse = refuse
        self.close_on_chunk = close_on_chunk
        self.bad_entry = bad_entry
        self.on_record = on_record

        self.records: list[Record] = []
        self.chunks_received: list[str] = []
        self.acks_sent: list[str] = []
        self.close_reasons: list[str] = []
        self.connections = 0  # accepted, including those closed at once (pause, refuse)
        self.frames = 0  # root objects parsed after the handshake
        self.rejected_entries = 0  # entries Fluent Bit's decoder would refuse
        self.handshakes = 0  # successful PING/PONG exchanges
        self.discarded_bytes = 0  # bytes after a PING in the same read, thrown away

        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._paused = False
        self._stopping = False
        self._event = asyncio.Event()

    # ---- lifecycle

    @property
    def url(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def paused(self) -> bool:
        return self._paused

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        self._stopping = False
        if self.path is not None:
            self._unlink_stale_socket()
            self._server = await loop.create_unix_server(lambda: _Conn(self), self.path)
        else:
            self._server = await loop.create_server(lambda: _Conn(self), self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        self._changed()

    async def stop(self) -> None:
        """Close the listener and every connection (pending acks are dropped)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        conns = list(self._conns)
        for conn in conns:
            conn.abort("stopped")
        await asyncio.gather(*(conn.closed for conn in conns))
        await server.wait_closed()
        if self.path is not None:
            self._unlink_stale_socket()
        self._changed()

    async def restart(self) -> None:
        """Stop, then listen again on the same Unix path or TCP host and port."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> FakeFluentBit:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def pause(self) -> None:
        """in_fw_pause: close every open connection, accept-then-close new ones."""
        self._paused = True
        for conn in list(self._conns):
            conn.abort("paused")

    def resume(self) -> None:
        self._paused = False
        self._changed()

    def _unlink_stale_socket(self) -> None:
        assert self.path is not None
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{self.path} exists and is not a socket")
        os.unlink(self.path)

    def _shared_key_bytes(self) -> bytes:
        key = self.shared_key or b""
        return key.encode() if isinstance(key, str) else key

    # ---- waiting

    def _changed(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = ""
    ) -> None:
        """Wait until ``predicate()`` is true (re-checked on every change), or TimeoutError."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            name = what or getattr(predicate, "__name__", "condition")
            raise TimeoutError(
                f"fake fluent-bit: {name} not reached within {timeout}s; {self.summary()}"
            ) from None

    async def wait_records(self, n: int, timeout: float = 5.0) -> list[Record]:
        """Wait until at least ``n`` records are stored; return them all."""
        await self.wait_for(lambda: len(self.records) >= n, timeout, f"{n} record(s)")
        return self.records

    def summary(self) -> str:
        return (
            f"records={len(self.records)} frames={self.frames} "
            f"chunks_received={self.chunks_received[-5:]} acks_sent={self.acks_sent[-5:]} "
            f"close_reasons={self.close_reasons[-5:]} connections={self.connections} "
            f"open={self.open_connections} rejected_entries={self.rejected_entries} "
            f"paused={self._paused} running={self.running}"
        )

    # ---- fw_prot_process

    def _process_frame(self, conn: _Conn, root: Any) -> None:
        if root is None:
            raise _Close("root is nil (heartbeat)")
        if not isinstance(root, list):
            raise _Close("root is not an array")
        if len(root) < 2:
            raise _Close("root array has fewer than 2 elements")
        if not isinstance(root[0], str):
            raise _Close("tag is not str")
        tag = self.tag_prefix + root[0]
        second = root[1]
        if isinstance(second, list):
            self._forward(conn, tag, root)
        elif _is_uint(second) or _is_ext(second):
            self._message(conn, tag, root)
        elif isinstance(second, str | bytes):
            self._packed(conn, tag, root)
        else:
            raise _Close(f"invalid data format: element 1 is {_type_name(second)}")

    def _chunk(self, root: list[Any], index: int) -> str | None:
        found, chunk = _options_value(root, index, "chunk")
        if not found:
            return None
        if not isinstance(chunk, str):
            raise _Close("chunk is not str")
        self.chunks_received.append(chunk)
        self._changed()
        return chunk

    def _store(self, conn: _Conn, batch: Batch) -> None:
        if self.close_on_chunk is not None and self.close_on_chunk(batch):
            raise _Close("close_on_chunk")
        for record in batch.records:
            self.records.append(record)
            if self.on_record is not None:
                self.on_record(record)
        self._changed()

    def _forward(self, conn: _Conn, tag: str, root: list[Any]) -> None:
        chunk = self._chunk(root, 2)
        records: list[Record] = []
        bad: _BadEntry | None = None
        for entry in root[1]:
            try:
                event = _decode_entry(entry)
            except _BadEntry as exc:
                self.rejected_entries += 1
                bad = exc
                break  # fw_prot.c stops at the first entry that fails to encode
            if event is not _MARKER:
                assert isinstance(event, tuple)
                records.append(Record(tag, event[0], _plain(event[1]), chunk))
        self._store(conn, Batch(tag, "forward", chunk, records))
        if bad is not None and self.bad_entry == "close":
            raise _Close(f"forward entry {len(records)} refused: {bad}")
        if chunk is not None:
            conn.ack(chunk)

    def _message(self, conn: _Conn, tag: str, root: list[Any]) -> None:
        if len(root) < 3:
            raise _Close("message mode requires at least 3 elements")
        body = root[2]
        if not isinstance(body, _Map):
            raise _Close("message mode record is not a map")
        chunk = self._chunk(root, 3)
        found, metadata = _options_value(root, 3, "metadata")
        if found and not isinstance(metadata, _Map):
            raise _Close("options metadata is not a map")
        records: list[Record] = []
        try:
            seconds, nanos = _decode_time(root[1])  # int >= 0 or ext: dispatch saw to it
        except _BadEntry as exc:
            self.rejected_entries += 1
            if self.bad_entry == "close":
                raise _Close(f"message mode time refused: {exc}") from None
        else:
            records.append(Record(tag, seconds * NS + nanos, _plain(body), chunk))
        self._store(conn, Batch(tag, "message", chunk, records))
        if chunk is not None:
            conn.ack(chunk)

    def _packed(self, conn: _Conn, tag: str, root: list[Any]) -> None:
        chunk = self._chunk(root, 2)
        payload = root[1] if isinstance(root[1], bytes) else _raw(root[1])
        if len(payload) > self.buffer_max_size:
            raise _Close("packedforward payload exceeds buffer_max_size")
        mode = "packed"
        if len(root) == 3:  # fw_prot.c: contain_options only for a 3-element root
            options = root[2]
            _check_event_type(options)
            compression = _sniff(payload) or _compression_option(options)
            if compression == "zstd":
                raise _Close("zstd compression is not supported by the fake")
            if compression == "gzip":
                payload = _gunzip(payload, self.buffer_max_size)
                mode = "compressed"
        records: list[Record] = []
        unpacker = _unpacker(len(payload) + 1)
        unpacker.feed(payload)
        try:
            for entry in unpacker:
                try:
                    event = _decode_entry(entry)
                except _BadEntry:
                    self.rejected_entries += 1
                    continue
                if event is not _MARKER:
                    assert isinstance(event, tuple)
                    records.append(Record(tag, event[0], _plain(event[1]), chunk))
        except Exception:  # malformed msgpack inside the payload: nothing after it is readable
            self.rejected_entries += 1
        else:
            if unpacker.tell() < len(payload):  # a truncated last entry
                self.rejected_entries += 1
        self._store(conn, Batch(tag, mode, chunk, records))
        if chunk is not None:
            conn.ack(chunk)


def _check_event_type(options: Any) -> None:
    """get_chunk_event_type(): a map with str keys; fluent_signal 0 (logs) only, here."""
    if not isinstance(options, _Map):
        raise _Close("invalid options field (PackedForward options must be a map)")
    for key, value in options:
        if not isinstance(key, str):
            raise _Close("non-str key in PackedForward options")
        if key == "fluent_signal":
            if not _is_uint(value) or value not in (0, 1, 2):
                raise _Close("invalid fluent_signal")
            if value != 0:
                raise _Close("fluent_signal metrics/traces are not supported by the fake")
            return


def _compression_option(options: _Map) -> str | None:
    for key, value in options:
        if key == "compressed" and value in ("gzip", "zstd"):
            return str(value)
    return None


def _type_name(obj: Any) -> str:
    if obj is None:
        return "nil"
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, int):
        return "negative int"
    if isinstance(obj, _Map):
        return "map"
    return type(obj).__name__


# --------------------------------------------------------------------------- command line


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else repr(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return {"$bin": base64.b64encode(obj).decode()}
    if isinstance(obj, msgpack.Timestamp):
        return {"$timestamp_ns": obj.to_unix_nano()}
    if isinstance(obj, msgpack.ExtType):
        return {"$ext": obj.code, "data": base64.b64encode(obj.data).decode()}
    return obj


def record_json(record: Record) -> str:
    """The JSON line the CLI writes for a stored record (non-UTF-8 str is \\udcXX-escaped)."""
    return json.dumps(
        {"tag": record.tag, "time_ns": record.time_ns, "record": _jsonable(record.record)}
    )


async def _serve(args: argparse.Namespace, out: TextIO) -> None:
    def write(record: Record) -> None:
        out.write(record_json(record) + "\n")
        out.flush()

    fake = FakeFluentBit(
        args.listen,
        shared_key=args.shared_key,
        self_hostname=args.self_hostname,
        buffer_max_size=args.buffer_max_size,
        ack_delay=args.ack_delay,
        on_record=write,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await fake.start()
        print(f"listening {fake.url}", flush=True)
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fakes.fluentbit",
        description="Fake Fluent Bit forward input (test peer).",
    )
    parser.add_argument("--listen", default="tcp://127.0.0.1:0", help="tcp://H:P or unix:///p")
    parser.add_argument("--shared-key", default=None)
    parser.add_argument("--self-hostname", default="localhost")
    parser.add_argument("--ack-delay", type=float, default=0.0)
    parser.add_argument("--buffer-max-size", type=int, default=DEFAULT_BUFFER_MAX_SIZE)
    parser.add_argument("--out", default=None, help="append JSON lines here (default stdout)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.out:
            out = stack.enter_context(open(args.out, "a", encoding="utf-8"))
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
