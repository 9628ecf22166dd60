"""Check signed logs: attestation, checkpoint chain, every record against its checkpoint.

For each boot (one run of the agent) found in the input:

1. Its attestation document for checkpoint 0 must verify up to the pinned root, name
   the genesis checkpoint (``user_data``) and its key (``public_key``); its PCRs must
   be the expected ones, and not all zeros (a debug-mode enclave proves nothing).
2. Every checkpoint must be signed by that key, for that boot (a valid signature for
   another boot is not good enough: systemd's CVE-2023-31439 was a verifier that did
   not check which epoch a tag belonged to), and chain to the one before it.
3. Every group of records (``proof.groups_of``: runs of ``proof.GROUP`` numbers of a
   checkpoint's range) must match the digest its checkpoint lists for it. A group that
   does not is ``altered`` as a whole ("one or more of records a-b": the digest says
   that something in it changed, not what); a group with a number absent is
   ``missing`` that number, and the finding says that the rest of its group cannot be
   proven (not a finding of its own).

Findings (each makes the exit status 1): ``altered``, ``missing``, ``inserted``,
``reordered``, ``unproven`` (after the last checkpoint), ``missing_checkpoints``,
``forged_checkpoint``, ``chain_broken``, ``replayed`` (records of a boot the input
holds no proof for), ``unattested``, ``debug_enclave``, ``pcr_mismatch``,
``nothing_signed`` (no boot at all: an empty export proves nothing), and, when asked
for, ``no_final_checkpoint`` (``require_final``: the boot must have ended, so nothing
after its last checkpoint can be withheld) and ``stale`` (``max_age_ms``: a boot still
running must have signed a checkpoint that recently, so a withheld tail is seen within
one checkpoint interval). Copies of one record (at-least-once delivery) are counted,
never reported.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave_side import proof

from .attestation import AttestationError, Document, verify_document
from .readers import Item

__all__ = ["BootReport", "Finding", "Report", "StreamReport", "verify"]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    boot: str | None
    stream: str | None
    detail: str


@dataclass(slots=True)
class StreamReport:
    tag: str
    verified: int = 0
    duplicates: int = 0
    declared_drops: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class BootReport:
    boot: str
    pcrs: dict[int, str] = field(default_factory=dict)
    module_id: str | None = None
    root: str | None = None
    checkpoints: int = 0
    final: bool = False
    last_checkpoint: int | None = None  # its number: what is proven reaches that far
    last_time_ms: int | None = None  # when the enclave signed it, by its own clock
    aws_times: dict[int, str] = field(default_factory=dict)  # checkpoint n -> AWS time
    streams: dict[int, StreamReport] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    boots: dict[str, BootReport] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    unsigned: int = 0  # records of other sources (no signature, no signed stream's tag)
    unsigned_tags: dict[str, int] = field(default_factory=dict)  # their tags, how many

    def add(self, kind: str, boot: str | None, stream: str | None, detail: str) -> None:
        self.findings.append(Finding(kind, boot, stream, detail))


@dataclass(slots=True)
class _Rec:
    seq: int
    entry: bytes  # its canonical form (proof.canonical_entry), as this copy was kept
    item: Item
    index: int


@dataclass(slots=True)
class _Boot:
    notes: dict[str, Item] = field(default_factory=dict)  # note text -> first item
    docs: list[tuple[int, bytes, Item]] = field(default_factory=list)
    records: dict[int, list[_Rec]] = field(default_factory=lambda: defaultdict(list))


def _ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _fmt(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def _signed_part(record: dict[str, Any]) -> dict[str, Any]:
    """The record as signed: its keys up to ``sig_seq`` (later ones were added on the way)."""
    out = {}
    for key, value in record.items():
        out[key] = value
        if key == proof.SEQ_KEY:
            break
    return out


def _collect(items: Iterable[Item], report: Report) -> tuple[dict[str, _Boot], list[Item]]:
    boots: dict[str, _Boot] = defaultdict(_Boot)
    unsigned: list[Item] = []
    for index, item in enumerate(items):
        rec, log = item.record, item.record.get("log")
        if proof.SEQ_KEY not in rec:
            if isinstance(log, str) and log.startswith(proof.ORIGIN + "\n"):
                _collect_note(log, item, boots, report)
            elif isinstance(log, str) and log.startswith(proof.ATTESTATION_PREFIX + " "):
                try:
                    boot, n, doc = proof.parse_attestation_line(log)
                except proof.FormatError as exc:
                    report.add("forged_checkpoint", None, None, f"{item.where}: {exc}")
                    continue
                boots[boot].docs.append((n, doc, item))
            else:
                unsigned.append(item)
            continue
        parsed = proof.parse_seq(rec[proof.SEQ_KEY])
        if parsed is None or item.ms is None:
            report.add("inserted", None, None, f"{item.where}: malformed {proof.SEQ_KEY}")
            continue
        boot, stream, seq = parsed
        # The relay's --restamp-time moves the record's own time there: the digest says
        # whether it is the time the enclave signed.
        own = rec.get("enclave_time")
        ms = own // 1_000_000 if type(own) is int else item.ms
        entry = proof.canonical_entry(ms, _signed_part(rec))
        boots[boot].records[stream].append(_Rec(seq, entry, item, index))
    return boots, unsigned


def _collect_note(note: str, item: Item, boots: dict[str, _Boot], report: Report) -> None:
    try:
        cp = proof.parse_note(note)[0]
    except proof.FormatError as exc:
        report.add("forged_checkpoint", None, None, f"{item.where}: {exc}")
        return
    boots[cp.boot].notes.setdefault(note, item)


def _genesis(boot: str, b: _Boot, report: Report, br: BootReport, root: str,
             pcrs: dict[int, bytes]) -> tuple[bytes, str] | None:
    """The attested genesis: (key, note); None (and findings) if there is none."""
    geneses = {}
    for note in b.notes:
        cp, body, _, sig = proof.parse_note(note)
        if cp.n == 0 and cp.key is not None and _sig_ok(cp.key, body, sig):
            geneses[proof.note_hash(note)] = (cp.key, note)
    problems = []
    for n, data, item in b.docs:
        if n != 0:
            continue
        try:
            doc = verify_document(data, root_sha256=root)
        except AttestationError as exc:
            problems.append(f"{item.where}: {exc}")
            continue
        found = geneses.get(doc.user_data or b"")
        if found is None or _raw_key(doc.public_key) != found[0]:
            problems.append(f"{item.where}: document names another genesis or key")
            continue
        _check_pcrs(boot, doc, report, br, pcrs)
        return found
    if not b.docs and not b.notes:
        report.add("replayed", boot, None, f"{sum(map(len, b.records.values()))} records "
                   "of a boot the input holds no attestation or checkpoint for")
    else:
        report.add("unattested", boot, None, "; ".join(problems) or "no attestation document")
    return None


def _raw_key(der: bytes | None) -> bytes | None:
    try:
        key = serialization.load_der_public_key(der or b"")
    except ValueError:
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _sig_ok(key: bytes, body: str, sig: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key).verify(sig, body.encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_pcrs(boot: str, doc: Document, report: Report, br: BootReport,
                expected: dict[int, bytes]) -> None:
    br.pcrs = {i: doc.pcrs[i].hex() for i in sorted(doc.pcrs) if i in (0, 1, 2, 8)}
    br.module_id, br.root = doc.module_id, doc.root_sha256
    if doc.debug:
        report.add("debug_enclave", boot, None, "PCR0-2 are zeros: a debug-mode enclave, "
                   "whose memory the parent can read; its signatures prove nothing")
    for i, want in sorted(expected.items()):
        if doc.pcrs.get(i) != want:
            report.add("pcr_mismatch", boot, None,
                       f"PCR{i} is {doc.pcrs.get(i, b'').hex()}, expected {want.hex()}")


def _checkpoints(boot: str, b: _Boot, key: bytes, report: Report
                 ) -> dict[int, tuple[proof.Checkpoint, str]]:
    valid: dict[int, tuple[proof.Checkpoint, str]] = {}
    kid = proof.key_id(proof.key_name(boot), key)
    for note, item in b.notes.items():
        cp, body, note_kid, sig = proof.parse_note(note)
        if note_kid != kid or not _sig_ok(key, body, sig):
            report.add("forged_checkpoint", boot, None,
                       f"{item.where}: checkpoint {cp.n} not signed by this boot's key")
        elif cp.n in valid:
            report.add("chain_broken", boot, None, f"two different checkpoints {cp.n}")
        else:
            valid[cp.n] = (cp, note)
    missing = [n for n in range(max(valid, default=0) + 1) if n not in valid]
    if missing:
        report.add("missing_checkpoints", boot, None, f"checkpoints {_fmt(_ranges(missing))}")
    for n, (cp, _) in valid.items():
        if n and n - 1 in valid and cp.prev != proof.note_hash(valid[n - 1][1]):
            report.add("chain_broken", boot, None, f"checkpoint {n} does not follow {n - 1}")
    return valid


def _later_docs(boot: str, b: _Boot, valid: dict[int, tuple[proof.Checkpoint, str]],
                key: bytes, root: str, report: Report, br: BootReport) -> None:
    for n, data, item in b.docs:
        if n == 0:
            continue
        try:
            doc = verify_document(data, root_sha256=root)
        except AttestationError as exc:
            report.add("unattested", boot, None, f"{item.where}: {exc}")
            continue
        if _raw_key(doc.public_key) != key:
            report.add("unattested", boot, None, f"{item.where}: document for checkpoint {n} "
                       "names another key")
            continue
        if n not in valid:  # AWS vouches that checkpoint n existed
            if n > max(valid, default=0):
                report.add("missing_checkpoints", boot, None, f"checkpoints "
                           f"{max(valid, default=0) + 1}-{n} (the last named by AWS)")
            continue
        if doc.user_data != proof.note_hash(valid[n][1]):
            report.add("unattested", boot, None, f"{item.where}: document for checkpoint {n} "
                       "names another checkpoint")
            continue
        br.aws_times[n] = datetime.fromtimestamp(doc.timestamp_ms / 1000, UTC).isoformat(
            timespec="milliseconds")


@dataclass(slots=True)
class _Cover:
    tag: str | None = None  # None: no checkpoint in the input names it
    groups: list[tuple[int, int, bytes]] = field(default_factory=list)  # first, last, digest
    covered: set[int] = field(default_factory=set)  # the numbers the groups hold
    dropped: set[int] = field(default_factory=set)
    last: int = 0


def _coverage(valid: dict[int, tuple[proof.Checkpoint, str]]) -> dict[int, _Cover]:
    cover: dict[int, _Cover] = defaultdict(_Cover)
    for _, (cp, _) in sorted(valid.items()):
        for s, tag in cp.tags.items():
            cover[s].tag = tag
        for r in cp.streams:
            c = cover[r.stream]
            c.groups += r.groups()
            c.covered.update(range(r.first, r.last + 1))
            c.last = max(c.last, r.last)
        for s, a, b in cp.drops:
            cover[s].dropped.update(range(a, b + 1))
    return cover


def _tag_ok(item: Item, tag: str | None) -> bool:
    """Does the tag the store kept (if any) end with the tag the enclave gave?"""
    return item.tag is None or tag is None or item.tag == tag or item.tag.endswith("." + tag)


#: Different copies of a group's numbers (an inserted variant beside the real record)
#: are tried in every combination up to this many; beyond it the group is ``altered``.
MAX_COMBINATIONS = 256


def _match(want: bytes, copies: Sequence[list[_Rec]]) -> list[bytes] | None:
    """One copy's canonical form for each number, together giving the group's digest."""
    options = [list(dict.fromkeys(r.entry for r in recs)) for recs in copies]
    if math.prod(map(len, options)) > MAX_COMBINATIONS:
        return None
    for combination in itertools.product(*options):
        if proof.group_digest(b"".join(combination)) == want:
            return list(combination)
    return None


@dataclass(slots=True)
class _Verdicts:
    altered: list[int] = field(default_factory=list)  # records: the group held, the tag not
    altered_groups: list[tuple[int, int]] = field(default_factory=list)
    inserted: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    group_mates: list[int] = field(default_factory=list)  # unprovable beside a missing one
    unproven: list[int] = field(default_factory=list)
    firsts: list[_Rec] = field(default_factory=list)


def _group(a: int, b: int, want: bytes, by_seq: dict[int, list[_Rec]], c: _Cover,
           v: _Verdicts, sr: StreamReport) -> None:
    seqs = range(a, b + 1)
    if any(q in c.dropped for q in seqs):  # a dropped batch (whole groups): never sent
        v.inserted += [q for q in seqs if q in by_seq]
        return
    absent = [q for q in seqs if q not in by_seq]
    if absent:
        v.missing += absent
        v.group_mates += [q for q in seqs if q in by_seq]
        return
    chosen = _match(want, [by_seq[q] for q in seqs])
    if chosen is None:
        v.altered_groups.append((a, b))
        return
    for q, entry in zip(seqs, chosen, strict=True):
        copies = by_seq[q]
        good = [r for r in copies if r.entry == entry and _tag_ok(r.item, c.tag)]
        if not good:  # as signed, but kept under another tag
            v.altered.append(q)
            continue
        sr.verified += 1
        sr.duplicates += len(good) - 1
        v.inserted += [q] * (len(copies) - len(good))
        v.firsts.append(good[0])


def _stream(boot: str, s: int, recs: list[_Rec], c: _Cover, final: bool, report: Report,
            sr: StreamReport) -> None:
    name = c.tag or f"stream {s}"
    by_seq: dict[int, list[_Rec]] = defaultdict(list)
    for r in recs:
        by_seq[r.seq].append(r)
    v = _Verdicts()
    for a, b, want in c.groups:
        _group(a, b, want, by_seq, c, v, sr)
    for seq in by_seq:
        if seq not in c.covered:
            # Dropped by the agent, or after its last word: nobody sent it. Inside a
            # lost checkpoint's interval, or after the latest checkpoint: not provable.
            late = seq > c.last
            (v.inserted if seq in c.dropped or (late and final) else v.unproven).append(seq)
    # Numbers the checkpoints skip (a checkpoint lost with its records) are missing too.
    v.missing += [q for q in range(1, c.last + 1)
                  if q not in c.covered and q not in c.dropped and q not in by_seq]
    _report_stream(boot, name, v, report)
    sr.declared_drops = _ranges(c.dropped)
    _order(boot, name, v.firsts, report)


def _report_stream(boot: str, name: str, v: _Verdicts, report: Report) -> None:
    altered = []
    if v.altered:
        altered.append(f"{len(v.altered)} records kept under another tag: "
                       f"{_fmt(_ranges(v.altered))}")
    if len(v.altered_groups) == 1:
        altered.append(f"one or more of records {_fmt(v.altered_groups)} not as signed "
                       "(the digest of their group fails, and does not say which)")
    elif v.altered_groups:
        altered.append(f"one or more records in each of {_fmt(v.altered_groups)} not as "
                       "signed (the digests of those groups fail, and do not say which)")
    if altered:
        report.add("altered", boot, name, "; ".join(altered))
    if v.inserted:
        report.add("inserted", boot, name, f"{len(v.inserted)} records: "
                   f"{_fmt(_ranges(v.inserted))}")
    if v.missing:
        mates = (f"; the other {len(v.group_mates)} records of their groups cannot be "
                 f"proven: {_fmt(_ranges(v.group_mates))}") if v.group_mates else ""
        report.add("missing", boot, name, f"{len(v.missing)} records: "
                   f"{_fmt(_ranges(v.missing))}{mates}")
    if v.unproven:
        report.add("unproven", boot, name, f"{len(v.unproven)} records: "
                   f"{_fmt(_ranges(v.unproven))}")


def _order(boot: str, name: str, firsts: list[_Rec], report: Report) -> None:
    """Records a store that keeps order holds out of their enclave's order."""
    out_of_order = []
    top: dict[str, int] = {}
    for r in sorted(firsts, key=lambda r: r.index):
        if not r.item.ordered:
            continue
        where = r.item.where.rsplit(":", 1)[0]
        if r.seq < top.get(where, 0):
            out_of_order.append(r.seq)
        top[where] = max(top.get(where, 0), r.seq)
    if out_of_order:
        report.add("reordered", boot, name, f"{len(out_of_order)} records stored before "
                   f"records they followed: {_fmt(_ranges(out_of_order))}")


def _tail(boot: str, br: BootReport, report: Report, require_final: bool,
          max_age_ms: int | None, now_ms: int | None) -> None:
    """Without a final checkpoint, whatever the enclave logged after its last checkpoint
    may be withheld, and nothing in the input can show it: only a final checkpoint, or a
    recent enough one while the boot runs, rules that out."""
    if br.final or br.last_time_ms is None:
        return
    if require_final:
        report.add("no_final_checkpoint", boot, None, f"the last checkpoint is "
                   f"{br.last_checkpoint}: records after it may have been withheld")
    if max_age_ms is not None and now_ms is not None and \
            now_ms - br.last_time_ms > max_age_ms:
        report.add("stale", boot, None, f"the last checkpoint ({br.last_checkpoint}) was "
                   f"signed {(now_ms - br.last_time_ms) // 1000} s ago, more than "
                   f"{max_age_ms // 1000} s: later ones are withheld or the agent stopped")


def verify(items: Iterable[Item], *, root_sha256: str,
           pcrs: dict[int, bytes] | None = None, require_final: bool = False,
           max_age_ms: int | None = None, now_ms: int | None = None) -> Report:
    """Check everything ``items`` holds; the report lists per boot and stream.

    ``require_final`` and ``max_age_ms`` (against ``now_ms``) say how the tail of a boot
    without a final checkpoint is judged (module docstring).
    """
    report = Report()
    boots, unsigned = _collect(items, report)
    signed_tags: set[str] = set()
    for boot, b in sorted(boots.items()):
        br = report.boots[boot] = BootReport(boot)
        genesis = _genesis(boot, b, report, br, root_sha256, pcrs or {})
        if genesis is None:
            continue
        key = genesis[0]
        valid = _checkpoints(boot, b, key, report)
        _later_docs(boot, b, valid, key, root_sha256, report, br)
        br.checkpoints = len(valid)
        br.final = any(cp.final for cp, _ in valid.values())
        if valid:
            br.last_checkpoint = max(valid)
            br.last_time_ms = valid[br.last_checkpoint][0].time_ms
        _tail(boot, br, report, require_final, max_age_ms, now_ms)
        cover = _coverage(valid)
        for s in sorted(set(cover) | set(b.records)):
            c = cover[s]
            if c.tag is not None:
                signed_tags.add(c.tag)
            br.streams[s] = StreamReport(c.tag or f"stream {s}")
            _stream(boot, s, b.records.get(s, []), c, br.final, report, br.streams[s])
    if not boots:  # an empty export, or logs of an agent without --sign: nothing proven
        report.add("nothing_signed", None, None, "the input holds no signed records, "
                   "checkpoints or attestation documents")
    for item in unsigned:
        if item.tag is not None and any(_tag_ok(item, t) for t in signed_tags):
            report.add("inserted", None, item.tag, f"{item.where}: an unsigned record "
                       "in a signed stream")
        else:
            report.unsigned += 1
            tag = item.tag or "no tag"
            report.unsigned_tags[tag] = report.unsigned_tags.get(tag, 0) + 1
    return report
