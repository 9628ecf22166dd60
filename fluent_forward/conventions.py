"""What our agent and our relay agree on beyond the Forward spec (pure).

Both sides import these names; neither matches the other's strings by hand. A
plain Forward peer (Fluent Bit, fluent-logger) knows none of this and needs none
of it: our relay announces its version in HELO (``VERSION_KEY``), our agent then
appends its own to PING, and the rest is used only between the two.

- Chunk ids are 128-bit: the agent run's random boot id (8 bytes) and the batch's
  sequence number (8 bytes), Base64 as a str. The relay takes a resent batch once
  and sees a jump in the sequence as batches the agent dropped.
- The agent's own diagnostics travel on ``DIAG_TAG``; a drop report is one of them.
- An idle agent sends a heartbeat every ``KEEPALIVE`` seconds; the relay's idle
  timeout defaults to ten of them.
"""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Any

from .errors import UsageError

__all__ = [
    "DIAG_TAG",
    "IDLE_TIMEOUT",
    "KEEPALIVE",
    "Overflow",
    "VERSION_KEY",
    "chunk_id",
    "drop_report",
    "dropped_records",
    "parse_chunk_id",
]

#: Tag of the agent's own diagnostics and drop reports.
DIAG_TAG = "agent.log"
#: The HELO option our relay announces its version in; our agent answers with its own.
VERSION_KEY = "relay_version"
#: Seconds without a write after which the agent sends a heartbeat to our relay.
KEEPALIVE = 60.0
#: The relay's default idle timeout: ten keepalives, so an idle agent is never cut.
IDLE_TIMEOUT = 10 * KEEPALIVE


class Overflow(StrEnum):
    """What happens when a bounded store is full: the agent's buffer, the relay's spool."""

    BLOCK = "block"  # the writer waits (backpressure): nothing is lost
    DROP_OLDEST = "drop_oldest"  # the oldest never-sent records make room, counted


def chunk_id(boot_id: bytes, seq: int) -> str:
    """A 128-bit chunk id: 8-byte boot id + 8-byte sequence number, Base64 (24 chars)."""
    if len(boot_id) != 8:
        raise UsageError("boot_id must be 8 bytes")
    return base64.b64encode(boot_id + seq.to_bytes(8, "big")).decode("ascii")


def parse_chunk_id(chunk: Any) -> tuple[bytes, int] | None:
    """``(boot_id, seq)`` of a chunk id made by ``chunk_id``, or None for foreign ids."""
    if not isinstance(chunk, str) or len(chunk) != 24:
        return None
    try:
        raw = base64.b64decode(chunk, validate=True)
    except ValueError:
        return None
    return (raw[:8], int.from_bytes(raw[8:], "big")) if len(raw) == 16 else None


def drop_report(records: int, size: int) -> dict[str, object]:
    """The record the agent sends on ``DIAG_TAG`` after dropping records."""
    return {"log": f"buffer full: dropped {records} records ({size} bytes) under drop_oldest",
            "level": "warning", "event": "dropped", "records": records, "bytes": size}


def dropped_records(record: Any) -> int:
    """How many records a drop report says were dropped (0 for any other record)."""
    if isinstance(record, dict) and record.get("event") == "dropped":
        return int(record.get("records", 0))
    return 0
