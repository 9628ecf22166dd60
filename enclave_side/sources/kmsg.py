"""The kernel log, ``/dev/kmsg``: in a small enclave the usual reason an app vanishes
is the OOM killer, and only the kernel log says so.

Each read of ``/dev/kmsg`` returns one record, ``PRI,SEQ,USEC,FLAGS;message``,
followed by indented ``KEY=value`` lines (skipped). ``EPIPE`` means records were
overwritten before we read them: the count is kept and reading goes on. The file is
read from its start, so the kernel's messages from boot on are shipped; then it is
polled. A regular file in the same format (a stand-in, in tests) is followed the
same way.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from typing import Any

from fluent_forward.entries import EventTime, pack_entry

from ..buffer import Buffer
from ..processing import Pipeline

__all__ = ["KmsgSource", "parse_kmsg_line"]

#: Syslog severities, as the agent's level names.
SEVERITIES = ("critical", "critical", "critical", "error", "warning", "notice", "info",
              "debug")
_OOM = (b"Out of memory", b"oom-kill", b"invoked oom-killer", b"oom_reaper")
READ_SIZE = 8192  # /dev/kmsg wants a buffer as large as a record (up to 8 KiB)


def parse_kmsg_line(line: bytes) -> dict[str, Any] | None:
    """The record for one ``PRI,SEQ,USEC,FLAGS;message`` line (None for others)."""
    head, sep, message = line.partition(b";")
    if not sep or line[:1] in (b" ", b""):
        return None
    fields = head.split(b",")
    try:
        pri, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except (ValueError, IndexError):
        return None
    record: dict[str, Any] = {
        "log": message.decode("utf-8", "backslashreplace"),
        "level": SEVERITIES[pri & 7], "priority": pri & 7, "facility": pri >> 3,
        "seq": seq, "uptime_us": usec}
    if any(word in message for word in _OOM):
        record["oom"] = True
    return record


class KmsgSource:
    """Poll the kernel log and buffer its records (tag ``<agent tag>.kmsg`` by default)."""

    def __init__(self, path: str, tag: str, buffer: Buffer, *, pipeline: Pipeline | None,
                 poll_interval: float) -> None:
        self.path = path
        self.tag = tag
        self.buffer = buffer
        self.pipeline = pipeline
        self.poll_interval = poll_interval
        self._fd: int | None = None
        self._carry = b""
        self.lines = 0
        self.bytes = 0
        self.overwritten = 0

    async def run(self) -> None:
        while True:
            self.read_available()
            await asyncio.sleep(self.poll_interval)

    def open(self) -> None:
        """Open the log; raises ``OSError`` if it cannot be read."""
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read_available(self) -> None:
        """Read every record there is now."""
        if self._fd is None:
            return
        chunks = []
        while self.buffer.has_room():
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the ring overwrote records we had not read
                    self.overwritten += 1
                    continue
                raise
            if not data:
                break
            chunks.append(data)
        if chunks:
            self._handle(b"".join(chunks))

    def _handle(self, data: bytes) -> None:
        self.bytes += len(data)
        lines = (self._carry + data).split(b"\n")
        self._carry = lines.pop()
        ns = time.time_ns()
        records = [(ns, r) for r in map(parse_kmsg_line, lines) if r is not None]
        self.lines += len(records)
        if not records:
            return
        if self.pipeline is not None:
            entries, count = self.pipeline.process_records(records)
        else:
            stamp = EventTime.from_ns(ns)
            entries = b"".join(pack_entry(stamp, r) for _, r in records)
            count = len(records)
        if count:
            self.buffer.add(self.tag, entries, count)
