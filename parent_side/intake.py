"""The relay's per-frame work, pure: a frame and who sent it -> what to submit.

Counters and the clock skew, the tag and record stamping, the agent's drop reports,
chunk ids and the run's sequence (told to the relay's one ``runs.Runs``, which finds
gaps: batches the agent dropped), and splitting below Fluent Bit's frame limit.
No I/O and no waiting: the listener submits what comes out and acks the frame once
all of it is safe.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from fluent_forward.codec import DEFAULT_MAX_FRAME_BYTES, EventFrame
from fluent_forward.conventions import DIAG_TAG, dropped_records, parse_chunk_id
from fluent_forward.entries import first_event_time, iter_entries, split_entries
from fluent_forward.tags import escape_tag

from .identity import Identity, stamp_entries
from .outputs import RelayBatch
from .runs import Gap, Runs

__all__ = ["EnclaveStats", "Gap", "Intake", "Submission", "take_frame"]


@dataclass(slots=True)
class EnclaveStats:
    """Counters for one enclave (one identity), across its connections."""

    name: str
    cid: int | None
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    records: int = 0
    bytes_in: int = 0
    acks: int = 0
    protocol_errors: int = 0
    tags_escaped: int = 0  # frames whose tag broke the tag rule (fluent_forward.tags)
    claimed_hostname: str = ""
    agent_version: str = ""
    connected_since: float = 0.0
    last_seen: float = 0.0
    last_error: str = ""
    enclave_id: str = ""
    debug: bool = False
    records_out: int = 0  # delivered downstream (acked by the output)
    drops: int = 0  # records the agent reported dropping (overflow drop_oldest)
    gaps: int = 0  # batches missing from this enclave's agent runs' sequences
    #: Where its agent runs' sequences are followed: the relay's one ``Runs``, shared by
    #: every enclave (the listener passes it); a lone ``EnclaveStats`` has its own.
    boots: Runs = field(default_factory=Runs)
    skew: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=64))

    @property
    def clock_skew_ms(self) -> float | None:
        """The enclave's clock minus ours, from recent batches' first entry times.

        A batch's first line was read at most a flush interval before the batch left,
        and delivery only adds delay, so the largest (enclave - relay) difference seen
        recently is the closest to the true offset; resends after an outage only make
        the difference more negative and do not disturb it.
        """
        return max(self.skew) / 1e6 if self.skew else None

    def snapshot(self) -> dict[str, Any]:
        skew = self.clock_skew_ms
        return {"name": self.name, "cid": self.cid, "enclave_id": self.enclave_id,
                "debug": self.debug, "connected": self.open_connections > 0,
                "connections_open": self.open_connections, "connections": self.connections,
                "agent_version": self.agent_version, "claimed_hostname": self.claimed_hostname,
                "connected_since": self.connected_since, "last_seen": self.last_seen,
                "records_in": self.records, "bytes_in": self.bytes_in,
                "records_out": self.records_out, "drops": self.drops, "gaps": self.gaps,
                "clock_skew_ms": round(skew, 1) if skew is not None else None,
                "protocol_errors": self.protocol_errors, "tags_escaped": self.tags_escaped,
                "last_error": self.last_error}


@dataclass(frozen=True, slots=True)
class Submission:
    """A batch to submit, with its agent run and sequence number when it has them
    (the spool takes a resent batch once by them)."""

    batch: RelayBatch
    boot: bytes | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Intake:
    """What one frame becomes; ``escaped_tag`` is the tag it is forwarded under when
    the sender's broke the tag rule (None: taken as sent)."""

    submissions: list[Submission]
    gap: Gap | None = None
    escaped_tag: str | None = None


def take_frame(frame: EventFrame, ident: Identity, stats: EnclaveStats, *, now_ns: int,
               stamp_records: bool = False, restamp_time: bool = False,
               split_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Intake:
    """Count ``frame`` in ``stats`` and turn it into the batches to submit; a frame over
    ``split_bytes`` is split (Fluent Bit closes connections on frames over 6,144,000
    bytes, and our frame limit is below that)."""
    stats.frames += 1
    stats.records += frame.count
    stats.bytes_in += len(frame.entries)
    first = first_event_time(frame.entries)
    if first is not None:
        stats.skew.append(first - now_ns)
    entries = frame.entries
    if frame.tag == DIAG_TAG:  # rare and small: look for the agent's drop reports
        stats.drops += sum(dropped_records(r) for _, r in iter_entries(entries))
    if stamp_records or restamp_time:
        fields: dict[str, object] = {}
        if stamp_records:
            fields = ident.fields()
            if stats.claimed_hostname:  # what the agent says of itself: a claim, apart
                fields["claimed_hostname"] = stats.claimed_hostname
        entries = stamp_entries(entries, fields, restamp_ns=now_ns if restamp_time else None)
    safe = escape_tag(frame.tag)
    escaped = safe if safe != frame.tag else None
    if escaped is not None:
        stats.tags_escaped += 1
    tag = ident.tag_prefix + safe
    # Our agents' chunk ids name their run and batch; other clients' ids mean nothing
    # of the kind.
    ids = parse_chunk_id(frame.chunk) if stats.agent_version else None
    gap = stats.boots.advance(*ids, who=stats.name) if ids is not None else None
    if gap is not None:
        stats.gaps += gap.batches
    if len(entries) > split_bytes:
        return Intake([Submission(RelayBatch(tag, part, n))
                       for part, n in split_entries(entries, split_bytes)], gap, escaped)
    return Intake([Submission(RelayBatch(tag, entries, frame.count), *(ids or ()))], gap, escaped)
