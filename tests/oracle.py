"""The delivery oracle: numbered, checksummed lines in; lost, duplicated, corrupted out.

The writer is an app for the agent to run (``python -m tests.oracle write ...``). It
prints ``--count`` lines, numbered from 0, for one ``--source``::

    S <seq> <crc> <payload>

where ``<crc>`` is the CRC-32 (8 lowercase hex digits) of the UTF-8 bytes of the rest
of the line, ``S <seq> <payload>``, so a changed source, number or payload is caught.
Payloads vary in length (``--size`` is the mean, from a quarter of it to 1.75 times
it) and every third one holds non-ASCII text (2-, 3- and 4-byte UTF-8).

Pacing: ``--rate R`` writes R lines a second (in small groups, every 10 ms); without
it, as fast as the pipe takes them. Each write is one line unless ``--burst`` (64 KiB
blocks) or ``--rate`` (a group) says otherwise. ``--progress FILE`` is rewritten after
every write with ``<lines written> <monotonic time>``, so a test can see the writer
stall; ``--report FILE`` gets a JSON summary at the end, including the longest single
blocked write (``max_write_s``): a writer the agent stopped reading from shows it.
``--marker-at N --marker TEXT`` writes TEXT to stderr once line N is out (its own
batch, on the agent's stderr tag).

``check(lines, {source: count})`` reads delivered ``log`` values and returns a
``Report``: ``lost`` (numbers never delivered intact), ``duplicated`` (extra intact
copies), ``corrupted`` (lines that do not parse, name an unknown source or a number out
of range, or fail the checksum), ``out_of_order`` (first copies delivered after a
higher number of the same source).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Report", "check", "make_line", "parse_line", "payload"]

#: Printable ASCII to draw payloads from (no spaces at the ends matter: payload is last).
_ASCII = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "\\") * 64
#: Non-ASCII fragments: 2-byte, 3-byte and 4-byte UTF-8.
_NON_ASCII = ["é", "ß", "Ω", "€", "✓", "日本語", "𝄞", "🙂", "ñandú", "Привет"]


def payload(source: str, seq: int, size: int = 120) -> str:
    """The payload of line ``seq``: deterministic, of varying length, some non-ASCII."""
    h = zlib.crc32(f"{source}:{seq}".encode())
    lo = max(size // 4, 1)
    length = lo + h % (size * 7 // 4 - lo + 1)
    start = (h >> 8) % (len(_ASCII) - length)
    text = _ASCII[start:start + length]
    if seq % 3 == 0:
        word = _NON_ASCII[(h >> 4) % len(_NON_ASCII)]
        cut = length // 2
        text = text[:cut] + " " + word + " " + text[cut:]
    return text


def make_line(source: str, seq: int, size: int = 120) -> str:
    """One oracle line, without its newline."""
    body = payload(source, seq, size)
    crc = zlib.crc32(f"{source} {seq} {body}".encode())
    return f"{source} {seq} {crc:08x} {body}"


def parse_line(line: str) -> tuple[str, int] | None:
    """``(source, seq)`` of an intact oracle line, or None if it is corrupt."""
    parts = line.split(" ", 3)
    if len(parts) != 4:
        return None
    source, seq_text, crc_text, body = parts
    if not (seq_text.isascii() and seq_text.isdigit()) or seq_text != str(int(seq_text)):
        return None
    try:
        data = f"{source} {seq_text} {body}".encode()
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
        return None
    if crc_text != f"{zlib.crc32(data):08x}":
        return None
    return source, int(seq_text)


@dataclass
class Report:
    """What arrived, against what was written."""

    expected: int
    delivered: int
    lost: int
    duplicated: int
    corrupted: int
    out_of_order: int
    lost_sample: list[tuple[str, int]] = field(default_factory=list)
    corrupted_sample: list[str] = field(default_factory=list)
    copies: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        text = (f"lost={self.lost} duplicated={self.duplicated} corrupted={self.corrupted} "
                f"out_of_order={self.out_of_order} (delivered {self.delivered} lines for "
                f"{self.expected} written)")
        if self.lost_sample:
            text += f"; lost e.g. {self.lost_sample}"
        if self.corrupted_sample:
            text += f"; corrupted e.g. {self.corrupted_sample}"
        return text


def check(lines: Iterable[str], sources_counts: Mapping[str, int]) -> Report:
    """Judge delivered lines against ``{source: number of lines written}``."""
    copies: collections.Counter[tuple[str, int]] = collections.Counter()
    highest: dict[str, int] = {}
    delivered = corrupted = out_of_order = 0
    corrupted_sample: list[str] = []
    for line in lines:
        delivered += 1
        parsed = parse_line(line)
        if parsed is None or not 0 <= parsed[1] < sources_counts.get(parsed[0], 0):
            corrupted += 1
            if len(corrupted_sample) < 5:
                corrupted_sample.append(line[:80])
            continue
        source, seq = parsed
        copies[parsed] += 1
        if copies[parsed] == 1:
            if seq < highest.get(source, -1):
                out_of_order += 1
            highest[source] = max(highest.get(source, -1), seq)
    lost_sample: list[tuple[str, int]] = []
    lost = 0
    for source, count in sources_counts.items():
        for seq in range(count):
            if (source, seq) not in copies:
                lost += 1
                if len(lost_sample) < 10:
                    lost_sample.append((source, seq))
    duplicated = sum(n - 1 for n in copies.values())
    return Report(sum(sources_counts.values()), delivered, lost, duplicated, corrupted,
                  out_of_order, lost_sample, corrupted_sample, dict(copies))


# -- the writer --------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> float:
    """Write everything; return the seconds it took (the time the pipe was full)."""
    started = time.monotonic()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return time.monotonic() - started


def write(args: argparse.Namespace) -> int:
    out = sys.stdout.fileno()
    progress = (os.open(args.progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                if args.progress else -1)
    started = time.monotonic()
    max_write = total_write = 0.0
    writes = 0
    seq = 0
    tick = 0.01
    while seq < args.count:
        if args.rate:
            due = min(args.count, int((time.monotonic() - started) * args.rate) + 1)
            if due <= seq:
                time.sleep(tick)
                continue
        else:
            due = args.count
        block = []
        size = 0
        limit = 65536 if args.burst or args.rate else 1
        while seq < due and size < limit:
            line = (make_line(args.source, seq, args.size) + "\n").encode()
            block.append(line)
            size += len(line)
            seq += 1
        took = _write_all(out, b"".join(block))
        writes += 1
        total_write += took
        max_write = max(max_write, took)
        if progress >= 0:
            os.pwrite(progress, f"{seq:012d} {time.monotonic():.6f}\n".encode(), 0)
        if args.marker is not None and args.marker_at is not None and (
                seq - len(block) <= args.marker_at < seq):
            _write_all(sys.stderr.fileno(), (args.marker + "\n").encode())
    elapsed = time.monotonic() - started
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({"source": args.source, "count": args.count, "elapsed": elapsed,
                       "writes": writes, "max_write_s": max_write,
                       "total_write_s": total_write}, f)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.oracle",
                                     description="Write checkable lines (see the module doc).")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="print numbered, checksummed lines")
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--source", required=True)
    w.add_argument("--rate", type=float, default=0.0, help="lines per second (0: no limit)")
    w.add_argument("--burst", action="store_true", help="write 64 KiB blocks")
    w.add_argument("--size", type=int, default=120, help="mean payload length")
    w.add_argument("--progress", default=None)
    w.add_argument("--report", default=None)
    w.add_argument("--marker-at", type=int, default=None)
    w.add_argument("--marker", default=None)
    args = parser.parse_args(argv)
    if " " in args.source or not args.source:
        parser.error("--source must be one word")
    return write(args)


if __name__ == "__main__":
    sys.exit(main())
