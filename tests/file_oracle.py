"""For the file tests: a writer that appends numbered lines to a file, an oracle that
counts lost, duplicated and corrupted lines, and a reader of the relay's JSON lines.

tests/oracle.py is the same idea for an app the agent runs (a child writing to its
stdout, several sources); this one writes files itself, as the tail tests need.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def make_line(seq: int, width: int = 60) -> bytes:
    payload = (b"%08d" % seq) * (width // 8)
    return b"seq=%08d crc=%08x %s\n" % (seq, zlib.crc32(payload), payload)


class LineWriter:
    """Appends numbered lines to ``path`` (``O_APPEND``, as logging libraries do)."""

    def __init__(self, path: Path, width: int = 60) -> None:
        self.path = path
        self.width = width
        self.next = 0
        self.fd = -1
        self.reopen()

    def reopen(self) -> None:
        """Open ``path`` again (after a rename or delete, as an app told to reopen does)."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, n: int) -> range:
        """Write ``n`` lines in one call; return their sequence numbers."""
        first = self.next
        self.next += n
        os.write(self.fd, b"".join(make_line(s, self.width) for s in range(first, self.next)))
        return range(first, self.next)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Report:
    delivered: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: int = 0
    corrupted: int = 0

    def __str__(self) -> str:
        lost = self.lost[:10]
        return (f"delivered {self.delivered}, lost {len(self.lost)} (first: {lost}), "
                f"duplicated {self.duplicated}, corrupted {self.corrupted}")


def check(logs: list[str], expected: range) -> Report:
    """Compare the ``log`` values delivered with the lines written."""
    seen: Counter[int] = Counter()
    report = Report(delivered=len(logs))
    for text in logs:
        try:
            head, crc, payload = text.split(" ", 2)
            seq = int(head.removeprefix("seq="))
            ok = int(crc.removeprefix("crc="), 16) == zlib.crc32(payload.encode())
        except ValueError:
            ok = False
        if not ok:
            report.corrupted += 1
            continue
        seen[seq] += 1
    report.duplicated = sum(n - 1 for n in seen.values() if n > 1)
    report.lost = [s for s in expected if s not in seen]
    return report


class Output:
    """Reads the relay's JSON-lines file as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._carry = b""

    def refresh(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            self._offset += len(data)
            lines = (self._carry + data).split(b"\n")
            self._carry = lines.pop()
            self.records += [json.loads(line) for line in lines if line]
        return self.records

    def tagged(self, suffix: str) -> list[dict[str, Any]]:
        return [r["record"] for r in self.refresh() if str(r["tag"]).endswith(suffix)]

    def logs(self, suffix: str) -> list[str]:
        return [str(r.get("log")) for r in self.tagged(suffix)]
