"""The wire format of signed logs, shared by the agent and ``enclave-log-verify``.

With ``--sign`` every record the agent ships carries one more field, last in its map::

    "sig_seq": "<boot id, 16 hex>:<stream number>:<sequence number, 12 digits>"

and its time is cut to whole milliseconds (CloudWatch keeps no more). A record's
canonical form is its packed entry, exactly as the agent sent it: ``msgpack
[EventTime(seconds, milliseconds * 10**6), record]``. A reader rebuilds those bytes from
what a store kept (the time, the map in its order, up to and including ``sig_seq``)
with ``canonical_entry``, so one function defines the canonical form for both sides.

Checkpoints commit to *groups* of records, not to each record: a range ``first..last``
of a stream is cut into runs of ``GROUP`` numbers from ``first`` (the last run maybe
shorter), and a group's digest is the first 16 bytes of SHA-256 over its records'
canonical entries concatenated in number order (``group_digest``). One hash per record
costs more in Python (a hash object each) than the whole budget for signing a line;
one per group costs about the hashing of the bytes alone.

Checkpoints are C2SP signed notes (text, so a store that keeps only the ``log`` line
keeps them whole). A note's body::

    nitro-enclave-logs checkpoint v2
    boot 0123456789abcdef
    n 7
    prev <Base64 SHA-256 of checkpoint 6, the whole signed note>   ("-" for n 0)
    time_ms 1795726388123
    stream 1 1 458 <Base64 of 29 group digests>       (number, first, last, digests)
    tag 1 myapp.stdout                                (each stream the checkpoint covers)
    drop 1 200 299                                    (numbered records the agent dropped)
    final                                             (the boot's last checkpoint)

Checkpoint 0 (the genesis) also names the agent (``version``, ``config``) and its key
(``key``, Base64 of the raw Ed25519 public key); the NSM attestation document's
``user_data`` is the SHA-256 of that whole note. Later attestation documents name a
later checkpoint the same way, which dates it by AWS's clock.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter, methodcaller
from typing import Any
from urllib.parse import quote, unquote

import msgpack

from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.wire import str_header

__all__ = [
    "ATTESTATION_PREFIX",
    "DIGEST_BYTES",
    "GROUP",
    "ORIGIN",
    "SEQ_KEY",
    "SIGN_TAG",
    "Checkpoint",
    "FormatError",
    "StreamRange",
    "attestation_line",
    "b64",
    "canonical_entry",
    "group_count",
    "group_digest",
    "groups_of",
    "key_id",
    "note_hash",
    "number_entries",
    "parse_attestation_line",
    "parse_note",
    "parse_seq",
    "sign_note",
    "key_name",
    "unb64",
]

#: The field each signed record carries, last in its map.
SEQ_KEY = "sig_seq"
#: Tag of checkpoints and attestation documents (under the agent's own ``agent.*``).
SIGN_TAG = "agent.sign"
#: First line of every checkpoint note.
ORIGIN = "nitro-enclave-logs checkpoint v2"  # v1 listed a digest per record
#: How an attestation record's ``log`` starts.
ATTESTATION_PREFIX = "nitro-enclave-logs attestation v1"
#: Bytes of a group's digest kept in a checkpoint: 128 bits, so finding other records
#: with the same digest (a second preimage) takes about 2**128 hashes.
DIGEST_BYTES = 16
#: Records per group. Larger saves little more CPU (the hashing of the bytes stays) and
#: widens what a reader can pinpoint: an altered record is named as one of its group.
GROUP = 16
_ALG_ED25519 = b"\x01"  # C2SP signed-note signature type of Ed25519


class FormatError(ValueError):
    """A checkpoint or attestation record that does not parse."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise FormatError(f"bad Base64: {text[:20]!r}") from exc


def canonical_entry(ms: int, record: Any) -> bytes:
    """The packed entry the agent signed, for a record kept with a millisecond time."""
    return pack_entry(EventTime(ms // 1000, ms % 1000 * 1_000_000), record)


def parse_seq(value: Any) -> tuple[str, int, int] | None:
    """``(boot hex, stream, seq)`` of a ``sig_seq`` value, or None."""
    if not isinstance(value, str):
        return None
    parts = value.split(":")
    if len(parts) != 3 or len(parts[0]) != 16 or not parts[1].isdigit() \
            or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


def _ms(t: Any) -> int:
    if isinstance(t, msgpack.ExtType) and t.code == 0 and len(t.data) == 8:
        seconds = int.from_bytes(t.data[:4], "big")
        return seconds * 1000 + int.from_bytes(t.data[4:], "big") // 1_000_000
    if isinstance(t, int) and not isinstance(t, bool):
        return t * 1000
    if isinstance(t, float):
        return int(t * 1000)
    raise FormatError(f"entry time of type {type(t).__name__}")


def number_entries(parts: list[bytes], counts: list[int], boot_hex: str, stream: int,
                   first: int, uniform: list[bool] | None = None
                   ) -> tuple[list[bytes], list[bytes], int]:
    """Number a batch's entries ``first, first+1, ...``; times to whole milliseconds.

    ``parts`` are the batch's runs of entries as the sources added them, ``counts``
    how many each holds; ``uniform`` says of each whether the caller vouches that all
    its entries start with the same head (``Buffer.add(uniform=...)``). Returns the new
    entries in groups of ``GROUP`` (each one
    ``bytes``, the last maybe shorter; concatenated in order they are the batch), each
    group's digest (``group_digest``) and how many entries there are.
    A run of the agent's line shape (one read: every entry starts with the same head)
    is rewritten with C-level passes (a split, slice assignments and one join a group);
    anything else is unpacked and packed again, which also puts a Forward client's
    msgpack in the one form the verifier rebuilds.
    Both give the same bytes for the same records (the tests hold them to it).
    """
    fast = _number_runs(parts, counts, f"{boot_hex}:{stream}:", first,
                        uniform or [False] * len(parts))
    return fast if fast is not None else _number_any(b"".join(parts), boot_hex, stream, first)


def group_digest(entries: bytes) -> bytes:
    """A group's digest: SHA-256 over its records' canonical entries in sequence order,
    first ``DIGEST_BYTES``. No framing is added: a msgpack entry is self-delimiting (its
    own bytes say where it ends), so one concatenation splits into entries one way only,
    and a record cannot be moved across a boundary without changing the bytes hashed."""
    return hashlib.sha256(entries).digest()[:DIGEST_BYTES]


def groups_of(first: int, last: int) -> Iterator[tuple[int, int]]:
    """The groups of a checkpoint's range ``first..last``: runs of ``GROUP`` from ``first``."""
    for a in range(first, last + 1, GROUP):
        yield a, min(a + GROUP - 1, last)


def group_count(records: int) -> int:
    return -(-records // GROUP)


#: Zero-padded, so every record of a batch has a value of one length: the relay's fast
#: path then compares the records' other fields in one pass (fastpath.signed_shape_count).
_SEQ_DIGITS = 12
_SEQ_FORMAT = f"%0{_SEQ_DIGITS}d"
_ENTRY_HEAD = b"\x92\xd7\x00"  # fixarray 2, fixext 8 of type 0 (EventTime)
_HEAD = 16  # that, 8 time bytes, a fixmap header, "log" as a fixstr
_SEQ_FIELD = str_header(len(SEQ_KEY)) + SEQ_KEY.encode()
_DIGEST = itemgetter(slice(0, DIGEST_BYTES))
_FINISH = methodcaller("digest")
#: A number's last three digits, looked up: formatting an int costs more than the rest
#: of a record's numbering (about 0.12 µs of it).
_LOW_DIGITS = 3
_LOW = [b"%03d" % i for i in range(10 ** _LOW_DIGITS)]


def _split_run(part: bytes, count: int, uniform: bool) -> tuple[bytes, list[bytes]] | None:
    """The run's head with its time cut to milliseconds and its map one larger, and the
    rest of each entry; None unless the run is ``count`` entries all with that head.

    The head holds the read's time to the nanosecond, so it occurs at the start of
    every entry; an entry with another head would be glued to the one before it, and a
    line holding the head would be cut. Only a run whose every entry is known to start
    with the head (``uniform``: the line encoder's own reads) is split here: then
    ``count`` pieces say that no line holds it. Counting is not enough for other runs
    (a Forward client's entries of another time beside a line that holds the head give
    the same count), so they take the general path.
    """
    head = part[:_HEAD]
    if (not uniform or len(head) < _HEAD or not head.startswith(_ENTRY_HEAD)
            or head[12:] != b"\xa3log" or not 0x80 <= head[11] < 0x8F):
        return None
    pieces = part.split(head)
    if pieces[0] or len(pieces) - 1 != count:
        return None
    nanos = int.from_bytes(head[7:11], "big") // 1_000_000 * 1_000_000
    new_head = head[:7] + nanos.to_bytes(4, "big") + bytes((head[11] + 1,)) + head[12:]
    del pieces[0]
    return new_head, pieces


def _numbers(field: bytes, first: int, count: int) -> tuple[list[bytes], list[bytes]]:
    """For numbers ``first..first+count-1``: the field with each number's high digits, and
    its low digits; one list entry per number, made a thousand numbers per step."""
    highs: list[bytes] = []
    lows: list[bytes] = []
    seq, end = first, first + count
    high_format = b"%%0%dd" % (_SEQ_DIGITS - _LOW_DIGITS)
    while seq < end:
        high, low = divmod(seq, 10 ** _LOW_DIGITS)
        k = min(10 ** _LOW_DIGITS - low, end - seq)
        highs += [field + high_format % high] * k
        lows += _LOW[low:low + k]
        seq += k
    return highs, lows


def _grouped(pieces: list[bytes], per_entry: int, n: int) -> tuple[list[bytes], list[bytes]]:
    """``pieces`` (``per_entry`` of them an entry, ``n`` entries) joined into groups, and
    the groups' digests."""
    step = per_entry * GROUP
    groups = list(map(b"".join, [pieces[i:i + step] for i in range(0, per_entry * n, step)]))
    return groups, list(map(_DIGEST, map(_FINISH, map(hashlib.sha256, groups))))


def _number_runs(parts: list[bytes], counts: list[int], prefix: str, first: int,
                 uniform: list[bool]) -> tuple[list[bytes], list[bytes], int] | None:
    n = sum(counts)
    if first + n > 10 ** _SEQ_DIGITS:  # a longer number: the general path packs it
        return None
    # An entry becomes four pieces: the run's new head, the rest of the entry as it
    # was, the field with the value's header, prefix and high digits, the low digits.
    field = _SEQ_FIELD + str_header(len(prefix) + _SEQ_DIGITS) + prefix.encode()
    pieces: list[bytes] = []
    seq = first
    for part, count, same in zip(parts, counts, uniform, strict=True):
        run = _split_run(part, count, same)
        if run is None:
            return None
        head, bodies = run
        entry_pieces = [head] * (4 * count)
        entry_pieces[1::4] = bodies
        entry_pieces[2::4], entry_pieces[3::4] = _numbers(field, seq, count)
        pieces += entry_pieces
        seq += count
    groups, digests = _grouped(pieces, 4, n)
    return groups, digests, n


def _number_any(entries: bytes, boot_hex: str, stream: int, first: int
                ) -> tuple[list[bytes], list[bytes], int]:
    out: list[bytes] = []
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                unicode_errors="surrogateescape")
    unpacker.feed(entries)
    seq = first
    prefix = f"{boot_hex}:{stream}:"
    for t, record in unpacker:
        record.pop(SEQ_KEY, None)  # a key of the app's own keeps its place: make it last
        record[SEQ_KEY] = prefix + _SEQ_FORMAT % seq
        out.append(canonical_entry(_ms(t), record))
        seq += 1
    groups, digests = _grouped(out, 1, len(out))
    return groups, digests, len(out)


# -- checkpoints ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamRange:
    """One stream's records covered by a checkpoint: ``first..last`` and the digests of
    its groups (``groups_of``)."""

    stream: int
    first: int
    last: int
    digests: bytes  # DIGEST_BYTES a group, in sequence order

    def groups(self) -> Iterator[tuple[int, int, bytes]]:
        """``(first, last, digest)`` of each group."""
        for i, (a, b) in enumerate(groups_of(self.first, self.last)):
            yield a, b, self.digests[i * DIGEST_BYTES:(i + 1) * DIGEST_BYTES]


@dataclass(slots=True)
class Checkpoint:
    """A checkpoint's body, built by the agent or parsed by the verifier."""

    boot: str
    n: int
    prev: bytes | None  # SHA-256 of the previous whole note; None for the genesis
    time_ms: int
    streams: list[StreamRange] = field(default_factory=list)
    tags: dict[int, str] = field(default_factory=dict)
    drops: list[tuple[int, int, int]] = field(default_factory=list)  # stream, first, last
    final: bool = False
    version: str | None = None
    config: str | None = None
    key: bytes | None = None  # raw Ed25519 public key, genesis only

    def body(self) -> str:
        lines = [ORIGIN, f"boot {self.boot}", f"n {self.n}",
                 f"prev {b64(self.prev) if self.prev is not None else '-'}",
                 f"time_ms {self.time_ms}"]
        if self.version is not None:
            lines.append(f"version {self.version}")
        if self.config is not None:
            lines.append(f"config {self.config}")
        if self.key is not None:
            lines.append(f"key {b64(self.key)}")
        # Quoted: a Forward client's tag may hold spaces or newlines; ours read as they are.
        lines += [f"tag {s} {quote(t, safe='')}" for s, t in sorted(self.tags.items())]
        lines += [f"stream {r.stream} {r.first} {r.last} {b64(r.digests)}"
                  for r in self.streams]
        lines += [f"drop {s} {a} {b}" for s, a, b in self.drops]
        if self.final:
            lines.append("final")
        return "\n".join(lines) + "\n"


def key_name(boot: str) -> str:
    return f"nitro-enclave-logs/{boot}"


def key_id(name: str, public_key: bytes) -> bytes:
    """The C2SP signed-note key id: SHA-256(name, newline, type byte, key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + _ALG_ED25519 + public_key).digest()[:4]


def sign_note(body: str, boot: str, public_key: bytes, signature: bytes) -> str:
    """The whole signed note: body, a blank line, one signature line."""
    sig = b64(key_id(key_name(boot), public_key) + signature)
    return f"{body}\n\u2014 {key_name(boot)} {sig}\n"


def note_hash(note: str) -> bytes:
    return hashlib.sha256(note.encode("utf-8")).digest()


_INT = re.compile(r"^(0|[1-9][0-9]{0,18})$")


def _int(text: str) -> int:
    if not _INT.match(text):
        raise FormatError(f"not a number: {text[:20]!r}")
    return int(text)


def parse_note(note: str) -> tuple[Checkpoint, str, bytes, bytes]:
    """``(checkpoint, body, key id, signature)`` of a signed note; FormatError if malformed."""
    body, sep, sigs = note.partition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise FormatError("not a signed note")
    body += "\n"
    sig_lines = sigs[:-1].split("\n")
    if len(sig_lines) != 1 or not sig_lines[0].startswith("\u2014 "):
        raise FormatError("a checkpoint has exactly one signature line")
    _, name, sig = sig_lines[0].split(" ", 2) if sig_lines[0].count(" ") == 2 else ("", "", "")
    raw = unb64(sig)
    if len(raw) != 4 + 64:
        raise FormatError("bad signature length")
    cp = _parse_body(body)
    if name != key_name(cp.boot):
        raise FormatError(f"signature by {name!r}, not by boot {cp.boot}")
    return cp, body, raw[:4], raw[4:]


def _lines(body: str) -> Iterator[list[str]]:
    lines = body[:-1].split("\n")
    if lines[0] != ORIGIN:
        raise FormatError("not a nitro-enclave-logs checkpoint")
    for line in lines[1:]:
        yield line.split(" ")


def _parse_body(body: str) -> Checkpoint:
    head: dict[str, str] = {}
    cp = Checkpoint(boot="", n=-1, prev=None, time_ms=0)
    for words in _lines(body):
        match words:
            case ["stream", s, a, b, d]:
                cp.streams.append(StreamRange(_int(s), _int(a), _int(b), unb64(d)))
            case ["tag", s, t]:
                cp.tags[_int(s)] = unquote(t)
            case ["drop", s, a, b]:
                cp.drops.append((_int(s), _int(a), _int(b)))
            case ["final"]:
                cp.final = True
            case [key, value] if key in ("boot", "n", "prev", "time_ms", "version",
                                         "config", "key") and key not in head:
                head[key] = value
            case _:
                raise FormatError(f"unexpected line {' '.join(words)[:40]!r}")
    try:
        cp.boot, cp.n, cp.time_ms = head["boot"], _int(head["n"]), _int(head["time_ms"])
        prev = head["prev"]
    except KeyError as exc:
        raise FormatError(f"checkpoint without {exc.args[0]}") from None
    if not re.fullmatch(r"[0-9a-f]{16}", cp.boot):
        raise FormatError("bad boot id")
    cp.prev = None if prev == "-" else unb64(prev)
    cp.version, cp.config = head.get("version"), head.get("config")
    cp.key = unb64(head["key"]) if "key" in head else None
    for r in cp.streams:
        if r.last < r.first or \
                len(r.digests) != group_count(r.last - r.first + 1) * DIGEST_BYTES:
            raise FormatError(f"stream {r.stream}: digests do not match {r.first}..{r.last}")
    if cp.body() != body:  # one spelling per checkpoint: what was signed is what we read
        raise FormatError("checkpoint not in canonical form")
    return cp


# -- attestation records ----------------------------------------------------------------


def attestation_line(boot: str, n: int, document: bytes) -> str:
    """The ``log`` of a record carrying an NSM attestation document over checkpoint ``n``."""
    return f"{ATTESTATION_PREFIX} {boot} {n} {b64(document)}"


def parse_attestation_line(line: str) -> tuple[str, int, bytes]:
    words = line.split(" ")
    if len(words) != 6 or " ".join(words[:3]) != ATTESTATION_PREFIX:
        raise FormatError("not an attestation record")
    return words[3], _int(words[4]), unb64(words[5])
