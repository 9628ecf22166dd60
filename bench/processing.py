"""What each processing option costs per line, in one process: the README's table.

    python -m bench.processing [--lines 200000] [--runs 3]

Feeds 150-byte log lines in 64 KiB reads through the agent's ``LineStream`` (the
splitter, then the plain encoder or ``Pipeline.process_lines``, as a pipe or a tailed
file does) and times, in CPU seconds of this process, everything up to the packed
entries handed to the buffer. The buffer is a counter here: its cost is the same for
every configuration and ``make bench`` measures the whole agent. Prints min / median /
max per line and lines/s per configuration, with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.run import machine
from enclave_side.buffer import Buffer
from enclave_side.config import Processing
from enclave_side.processing import Pipeline
from enclave_side.redact import BUILTIN_RULES, Redactor
from enclave_side.signing import Signer
from enclave_side.sources.stream import LineStream
from fluent_forward.conventions import Overflow

LINE_BYTES = 150
READ_BYTES = 64 * 1024
SECRETS = b" user=jane.doe@example.com card=4111 1111 1111 1111 ssn=123-45-6789"


def _pad(head: bytes) -> bytes:
    return (head + b" " + b"x" * LINE_BYTES)[:LINE_BYTES - 1] + b"\n"


def plain_lines(n: int) -> list[bytes]:
    return [_pad(b"2026-11-27T00:00:00.%06dZ INFO request id=%08d path=/api/v1/items "
                 b"status=200 bytes=5120 took=12ms" % (i % 1_000_000, i)) for i in range(n)]


def secret_lines(n: int, every: int) -> list[bytes]:
    """One line in ``every`` carries an email, a card number and an SSN."""
    out = plain_lines(n)
    for i in range(0, n, every):
        out[i] = _pad(b"2026-11-27T00:00:00Z INFO payment" + SECRETS)
    return out


def indented_lines(n: int) -> list[bytes]:
    """A record of one line and three indented continuation lines, over and over."""
    out = plain_lines(n)
    for i in range(n):
        if i % 4:
            out[i] = _pad(b"    at com.example.Handler.handle(Handler.java:%d)" % i)
    return out


def json_lines(n: int) -> list[bytes]:
    return [_pad(b'{"time":"2026-11-27T00:00:00.%06dZ","level":"info","msg":"request",'
                 b'"id":%d,"path":"/api/v1/items","pad":"' % (i % 1_000_000, i))[:-3] + b'"}\n'
            for i in range(n)]


@dataclass(frozen=True)
class Case:
    name: str
    lines: Callable[[int], list[bytes]]
    processing: Processing | None = None
    redact: tuple[str, ...] = ()
    #: records expected out of n lines, and redactions per rule out of n lines
    records: Callable[[int], int] = lambda n: n
    redacted: Callable[[int], int] = lambda n: 0
    #: into the agent's real buffer, batches sealed (None: a counter); True: with --sign
    sign: bool | None = None


CASES = (
    Case("nothing configured (the plain path)", plain_lines),
    Case("`--redact all`, clean lines", plain_lines, redact=tuple(BUILTIN_RULES)),
    Case("`--redact all`, one line in ten with an email, a card and an SSN",
         lambda n: secret_lines(n, 10), redact=tuple(BUILTIN_RULES),
         redacted=lambda n: (n + 9) // 10),
    Case("`--redact all`, every line with all three",
         lambda n: secret_lines(n, 1), redact=tuple(BUILTIN_RULES), redacted=lambda n: n),
    Case("`min_level` (the built-in level regex)", plain_lines, Processing(min_level="info")),
    Case("one `exclude` pattern", plain_lines, Processing(exclude=(r"path=/healthz",))),
    Case('`multiline = "indent"`', indented_lines, Processing(multiline="indent"),
         records=lambda n: (n + 3) // 4),
    Case("`json = true` with `time_key`", json_lines, Processing(json=True, time_key="time")),
    # Signing happens as batches are sealed: these two include the real buffer, so their
    # difference is what `--sign` adds (numbering, digests, checkpoints every 1000).
    Case("the plain path into the real buffer, batches sealed", plain_lines, sign=False),
    Case("the same with `--sign`", plain_lines, sign=True),
)


class _NoDocument:
    """The bench does not verify: the genesis' attestation document is not measured."""

    def attest(self, *, public_key: bytes, user_data: bytes) -> bytes:
        return b"not a document"


def real_buffer(sign: bool) -> Buffer:
    buffer = Buffer(boot_id=b"benchrun", max_bytes=1 << 30, batch_bytes=512 * 1024,
                    flush_interval=3600)
    if sign:
        Signer(b"benchrun", _NoDocument(), records=1000, interval=3600, version="bench",
               config="0" * 16).start(buffer)
    return buffer


def _sealed_records(buffer: Buffer) -> int:
    buffer.seal_all()
    return sum(b.count for b in buffer._queue if b.tag == "app.stdout")


class CountingBuffer:
    """Stands in for the agent's buffer: takes the entries, keeps the count."""

    def __init__(self) -> None:
        self.records = 0

    def add(self, tag: str, entries: bytes, count: int, **_: Any) -> None:
        self.records += count


def reads(lines: list[bytes]) -> list[bytes]:
    data = b"".join(lines)
    return [data[i:i + READ_BYTES] for i in range(0, len(data), READ_BYTES)]


def measure(case: Case, chunks: list[bytes], n: int) -> dict[str, float]:
    buffer: Any = CountingBuffer() if case.sign is None else real_buffer(case.sign)
    redactor = Redactor(case.redact) if case.redact else None
    pipeline = None
    if case.processing is not None or redactor is not None:
        pipeline = Pipeline(case.processing or Processing(), {"stream": "stdout"}, redactor,
                            max_record_bytes=16 * 1024, what="stdout")
    stream = LineStream("app.stdout", {"stream": "stdout"}, buffer,  # type: ignore[arg-type]
                        policy=Overflow.BLOCK, max_line_bytes=16 * 1024, pipeline=pipeline)
    start = time.process_time()
    for chunk in chunks:
        stream.feed(chunk)
    if pipeline is not None:
        stream._add(*pipeline.flush_due(0.0, force=True))
    if case.sign is not None:
        buffer.records = _sealed_records(buffer)
    cpu = time.process_time() - start
    if case.sign and buffer.sealer.checkpoints < n // 1000:
        raise SystemExit(f"{case.name}: {buffer.sealer.checkpoints} checkpoints for {n} "
                         "records; the benchmark is broken")
    # A configuration that silently did nothing would look fast: check it did its work.
    if buffer.records != case.records(n):
        raise SystemExit(f"{case.name}: {buffer.records} records out, expected "
                         f"{case.records(n)}; the benchmark is broken")
    if redactor is not None:
        for rule in ("email", "card", "ssn"):
            if redactor.counts.get(rule, 0) != case.redacted(n):
                raise SystemExit(f"{case.name}: {redactor.counts.get(rule, 0)} {rule} redactions, "
                                 f"expected {case.redacted(n)}")
    if case.processing is not None and case.processing.json and pipeline is not None \
            and pipeline.time_errors:
        raise SystemExit(f"{case.name}: {pipeline.time_errors} times not parsed")
    return {"us_per_line": cpu / n * 1e6, "lines_per_s": n / cpu if cpu else float("inf"),
            "records": buffer.records}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    m = machine()
    results: dict[str, dict[str, list[float]]] = {}
    inputs = {c.name: reads(c.lines(args.lines)) for c in CASES}
    for _ in range(args.runs):  # interleaved, so load from other jobs falls on every case
        for case in CASES:
            r = measure(case, inputs[case.name], args.lines)
            row = results.setdefault(case.name, {"us_per_line": [], "lines_per_s": []})
            row["us_per_line"].append(r["us_per_line"])
            row["lines_per_s"].append(r["lines_per_s"])
    if args.json:
        json.dump({"machine": m, "lines": args.lines, "runs": args.runs, "results": results},
                  sys.stdout, indent=1)
        print()
        return 0
    print(f"machine: {m['cores']} cores, {m['cpu']}, {m['implementation']} {m['python']}, "
          f"msgpack {m['msgpack']}{' (C)' if m['msgpack_c'] else ''}")
    print(f"{args.lines:,} lines of {LINE_BYTES} bytes in {READ_BYTES // 1024} KiB reads, "
          f"{args.runs} runs: min / median / max CPU per line\n")
    print("| configuration | per line (µs) | lines/s (median) |")
    print("|---|---|---|")
    for name, row in results.items():
        us = row["us_per_line"]
        print(f"| {name} | {min(us):.2f} / {statistics.median(us):.2f} / {max(us):.2f} | "
              f"{statistics.median(row['lines_per_s']) / 1000:,.0f} k |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
