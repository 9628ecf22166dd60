"""parent_side.intake: a frame and who sent it -> batches to submit, with no socket."""

from __future__ import annotations

from fluent_forward.codec import EventFrame, FrameKind
from fluent_forward.conventions import DIAG_TAG, chunk_id, drop_report
from fluent_forward.entries import EventTime, iter_entries, pack_entry, time_to_ns
from parent_side.identity import Identity
from parent_side.intake import EnclaveStats, Gap, take_frame

NOW = 1_700_000_000 * 10**9
BOOT = b"agentrun"
IDENT = Identity("payments", 16)


def frame(n: int = 2, *, tag: str = "app.stdout", chunk: str | None = None,
          record: dict[str, object] | None = None) -> EventFrame:
    entries = b"".join(pack_entry(EventTime(1_700_000_000 - 2, i), record or {"log": f"l{i}"})
                       for i in range(n))
    return EventFrame(FrameKind.PACKED_FORWARD, tag, entries, n, chunk)


def agent_stats() -> EnclaveStats:
    return EnclaveStats("payments", 16, agent_version="1.0")


def test_a_frame_is_counted_tagged_and_submitted_byte_for_byte() -> None:
    stats, f = agent_stats(), frame(3)
    (sub,) = take_frame(f, IDENT, stats, now_ns=NOW).submissions
    assert (sub.batch.tag, sub.batch.entries, sub.batch.count) == (
        "enclave.payments.app.stdout", f.entries, 3)
    assert (stats.frames, stats.records, stats.bytes_in) == (1, 3, len(f.entries))
    assert stats.clock_skew_ms == -2000.0


def test_our_agents_chunk_ids_name_the_run_and_reveal_a_gap_once() -> None:
    stats = agent_stats()
    seqs = []
    gaps = []
    for seq in (1, 2, 2, 5):  # a resend of 2, then 3 and 4 never came
        intake = take_frame(frame(chunk=chunk_id(BOOT, seq)), IDENT, stats, now_ns=NOW)
        seqs.append((intake.submissions[0].boot, intake.submissions[0].seq))
        gaps.append(intake.gap)
    assert seqs == [(BOOT, 1), (BOOT, 2), (BOOT, 2), (BOOT, 5)]
    assert gaps == [None, None, None, Gap(BOOT, 3, 4)]
    assert stats.gaps == 2


def test_other_clients_chunk_ids_mean_nothing() -> None:
    stats = EnclaveStats("local", None)  # no agent version: not our agent
    intake = take_frame(frame(chunk=chunk_id(BOOT, 7)), IDENT, stats, now_ns=NOW)
    assert (intake.submissions[0].boot, intake.submissions[0].seq, intake.gap) == (
        None, None, None)


def test_the_agents_drop_reports_are_counted() -> None:
    stats = agent_stats()
    take_frame(frame(1, tag=DIAG_TAG, record=drop_report(40, 4000)), IDENT, stats, now_ns=NOW)
    take_frame(frame(1, tag="app.stdout", record=drop_report(9, 9)), IDENT, stats, now_ns=NOW)
    assert stats.drops == 40, "only the agent's own tag carries drop reports"


def test_a_large_frame_is_split_below_the_limit_and_its_sequence_still_followed() -> None:
    stats = agent_stats()
    f = frame(10, chunk=chunk_id(BOOT, 1))
    subs = take_frame(f, IDENT, stats, now_ns=NOW, split_bytes=len(f.entries) // 3).submissions
    assert len(subs) > 1 and all(s.boot is None for s in subs)
    assert b"".join(s.batch.entries for s in subs) == f.entries
    assert sum(s.batch.count for s in subs) == 10
    assert stats.boots == {BOOT: 1}


def test_stamping_adds_what_the_parent_knows_and_the_claim_apart() -> None:
    stats = agent_stats()
    stats.claimed_hostname = "says-who"
    (sub,) = take_frame(frame(1), IDENT, stats, now_ns=NOW, stamp_records=True,
                        restamp_time=True).submissions
    ((t, record),) = list(iter_entries(sub.batch.entries))
    assert record["enclave_name"] == "payments" and record["enclave_cid"] == 16
    assert record["claimed_hostname"] == "says-who"
    assert time_to_ns(t) == NOW, "--restamp-time: the relay's receive time"
