"""Signed logs made in-process (Buffer + Signer + test attester), written as the stores
write them: for the verifier's unit and property tests, which need many logs fast.
The real path (agent -> relay -> Fluent Bit) is tests/integration/test_signed_logs.py.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack

from enclave_side.buffer import Buffer
from enclave_side.lines import EntryEncoder
from enclave_side.signing import Signer
from fluent_forward.conventions import Overflow as Policy
from fluent_forward.entries import iter_entries, time_to_ns
from logverify.testpki import TestAttester, make_test_pki
from parent_side.outputs import format_batch

PCR0 = "ab" * 48
FORMATS = ("fluentbit", "relay", "s3", "cloudwatch")


@functools.cache
def pki() -> Path:
    """One test chain for the session (making P-384 keys takes a while)."""
    d = Path(tempfile.mkdtemp(prefix="nel-pki-"))
    make_test_pki(d, pcr0=PCR0)
    return d


def make_log(reads: list[list[bytes]], *, records: int = 20, boot: bytes = b"bootbeef",
             policy: Policy = Policy.BLOCK, max_bytes: int = 10**7,
             final: bool = True) -> list[tuple[str, bytes]]:
    """Batches ``(tag, entries)`` of one signing agent run that read ``reads`` on stdout."""
    buffer = Buffer(boot_id=boot, max_bytes=max_bytes, batch_bytes=2000, flush_interval=1.0)
    signer = Signer(boot, TestAttester.load(pki()), records=records, interval=3600,
                    version="test", config="0" * 16)
    signer.start(buffer)
    enc = EntryEncoder({"stream": "stdout"})
    batches = []
    for lines in reads:
        buffer.add("app.stdout", enc.encode(lines, time.time_ns()), len(lines), policy=policy)
        buffer.seal_all()
    if final:
        signer.checkpoint(final=True)
    buffer.seal_all()
    for batch in list(buffer._queue):
        tag, entries, _ = msgpack.unpackb(batch.frame, raw=False)
        batches.append((f"enclave.local.{tag}", entries))
    return batches


def _records(batches: list[tuple[str, bytes]]) -> list[tuple[str, int, dict[str, Any]]]:
    return [(tag, time_to_ns(t), rec) for tag, entries in batches
            for t, rec in iter_entries(entries)]


def render(batches: list[tuple[str, bytes]], fmt: str) -> str:
    """The batches as one store keeps them."""
    if fmt == "relay":
        return "".join(format_batch(tag, entries).decode() for tag, entries in batches)
    recs = _records(batches)
    if fmt == "fluentbit":
        return "".join(f"{tag}: [{ns // 10**9}.{ns % 10**9:09d}, "
                       f"{json.dumps(rec, separators=(',', ':'))}]\n" for tag, ns, rec in recs)
    if fmt == "s3":  # json_date_format iso8601: microseconds
        return "".join(json.dumps({"date": datetime.fromtimestamp(ns / 1e9, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"), **rec}) + "\n" for _, ns, rec in recs)
    assert fmt == "cloudwatch"
    events = [{"logStreamName": f"i-0123.{tag}", "timestamp": ns // 10**6,
               "message": json.dumps(rec), "ingestionTime": ns // 10**6 + 5,
               "eventId": str(i)} for i, (tag, ns, rec) in enumerate(recs)]
    return json.dumps({"events": events, "searchedLogStreams": []}, indent=4)


def lines(n: int, start: int = 0) -> list[bytes]:
    return [b"line %d " % i + b"x" * 60 for i in range(start, start + n)]
