"""Signed logs: the canonical form, checkpoints, the signer's schedule, the verifier."""

from __future__ import annotations

import hashlib
import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import cbor2
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave_side import proof
from enclave_side.buffer import Buffer
from enclave_side.lines import EntryEncoder
from enclave_side.signing import Signer
from fluent_forward.conventions import Overflow as Policy
from fluent_forward.entries import EventTime, iter_entries, pack_entry
from logverify import cli
from logverify.attestation import AttestationError, verify_document
from logverify.readers import read_input
from logverify.testpki import TestAttester
from logverify.verify import verify
from tests.signedlog import FORMATS, PCR0, lines, make_log, pki, render

BOOT = "0123456789abcdef"


def root_sha() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate((pki() / "root.pem").read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check(text: str, tmp_path: Path, name: str = "log") -> Any:
    path = tmp_path / name
    path.write_text(text)
    return verify(read_input(path), root_sha256=root_sha(),
                  pcrs={0: bytes.fromhex(PCR0)})


# -- the canonical form ------------------------------------------------------------------


def test_numbering_puts_the_field_last_and_cuts_time_to_milliseconds() -> None:
    entry = pack_entry(EventTime(1795726388, 123456789), {"sig_seq": "app's", "log": "x"})
    (out,), digests, n = proof.number_entries([entry], [1], BOOT, 2, 41)
    ((t, rec),) = iter_entries(out)
    assert n == 1 and list(rec) == ["log", "sig_seq"] and rec["sig_seq"] == f"{BOOT}:2:000000000041"
    assert EventTime(1795726388, 123000000) == t
    assert digests == [hashlib.sha256(out).digest()[:16]]


def test_a_group_digest_covers_its_records_in_order_and_the_last_group_may_be_short(
        ) -> None:
    enc = EntryEncoder({"stream": "stdout"})
    n = proof.GROUP * 2 + 3
    groups, digests, count = proof.number_entries(
        [enc.encode([b"line %d" % i for i in range(n)], 1795726388_987654321)], [n], BOOT, 1, 7)
    entries = [pack_entry(t, r) for t, r in iter_entries(b"".join(groups))]
    assert count == n and [len(list(iter_entries(g))) for g in groups] == [16, 16, 3]
    assert digests == [hashlib.sha256(b"".join(entries[i:i + 16])).digest()[:16]
                       for i in range(0, n, 16)]
    assert list(proof.groups_of(7, 7 + n - 1)) == [(7, 22), (23, 38), (39, 41)]


def test_the_fast_path_gives_the_bytes_of_the_general_one() -> None:
    enc = EntryEncoder({"stream": "stdout"})
    parts = [enc.encode([b"a", b"b" * 40, "é".encode()], 1795726388_987654321),
             enc.encode([b"c" * 300], 1795726389_000999999)]
    assert enc.uniform
    fast = proof._number_runs(parts, [3, 1], f"{BOOT}:1:", 5, [True] * 2)
    assert fast is not None
    assert fast == proof._number_any(b"".join(parts), BOOT, 1, 5)
    # Parts the encoder does not vouch for (a Forward client's) are not split here.
    assert proof._number_runs(parts, [3, 1], f"{BOOT}:1:", 5, [False] * 2) is None


#: A read time whose EventTime bytes, then a fixmap header and "log", are valid UTF-8:
#: "kkkk", three NULs, then U+10A3 (e1 82 a3) and "log".
_CRAFTED_NS = 0x6B6B6B6B * 10**9 + 0xE1
_CRAFTED_LINE = b"\x00kkkk\x00\x00\x00\xe1\x82\xa3log".ljust(0x92D7, b"y")


@pytest.mark.parametrize("items", [
    # Its str16 header (da 92 d7) and the line hold the read's whole entry head.
    [_CRAFTED_LINE],
    # A flagged line (a larger map) after a plain one of the same read.
    [b"plain", (b"cut", 1)],
])
def test_runs_the_fast_path_cannot_cut_right_take_the_general_path(
        items: list[bytes | tuple[bytes, int]]) -> None:
    enc = EntryEncoder({"stream": "stdout"})
    part = enc.encode(items, _CRAFTED_NS)
    assert part.count(part[:16]) > 1 or len(items) > 1
    # The flagged read is not uniform (its entries start differently): checked, refused.
    assert enc.uniform == (len(items) == 1)
    assert proof._number_runs([part], [len(items)], f"{BOOT}:1:", 1, [enc.uniform]) is None
    out, _, n = proof.number_entries([part], [len(items)], BOOT, 1, 1, [enc.uniform])
    assert n == len(items)
    assert [r["sig_seq"] for _, r in iter_entries(b"".join(out))] == [f"{BOOT}:1:{i + 1:012d}"
                                                             for i in range(n)]


def test_entries_of_another_time_beside_a_line_holding_the_head_are_numbered_whole(
        ) -> None:
    # A Forward client's part: the second entry has another time (another head), the
    # third the first's head and a line holding it. Split on the head, the count still
    # comes out right (one cut short, one cut too many), so counting cannot refuse it.
    enc = EntryEncoder({"stream": "stdout"})
    part = (enc.encode([b"first"], _CRAFTED_NS) + enc.encode([b"second"], 1795726389_0)
            + enc.encode([_CRAFTED_LINE], _CRAFTED_NS))
    head = part[:16]
    assert part.count(head) == 3 and part.count(head[:11]) == 3
    out, _, n = proof.number_entries([part], [3], BOOT, 1, 1, [False])
    assert n == 3
    assert b"".join(out) == b"".join(proof._number_any(part, BOOT, 1, 1)[0])
    assert [r["log"] for _, r in iter_entries(b"".join(out))] == [
        "first", "second", _CRAFTED_LINE.decode()]


def test_a_record_verifies_after_a_json_round_trip() -> None:
    entry = pack_entry(EventTime(1795726388, 5_000_000),
                       {"log": "ü \"q\"", "n": 3, "ok": True, "nested": {"a": [1, None]}})
    (out,), digests, _ = proof.number_entries([entry], [1], BOOT, 1, 1)
    rec = json.loads(json.dumps(next(iter_entries(out))[1]))
    assert proof.group_digest(proof.canonical_entry(1795726388005, rec)) == digests[0]


def test_notes_round_trip_and_refuse_other_spellings() -> None:
    cp = proof.Checkpoint(BOOT, 3, b"\x01" * 32, 1795726388000,
                          streams=[proof.StreamRange(1, 5, 6, b"\x02" * 16)],  # one group
                          tags={1: "app.stdout", 2: "a client's\ntag"}, drops=[(1, 1, 4)],
                          final=True)
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes_raw()
    note = proof.sign_note(cp.body(), BOOT, raw, key.sign(cp.body().encode()))
    parsed, body, kid, sig = proof.parse_note(note)
    assert parsed == cp and body == cp.body()
    # C2SP signed-note key id: SHA-256(name || "\n" || 0x01 || key)[:4].
    name = f"nitro-enclave-logs/{BOOT}".encode()
    assert kid == hashlib.sha256(name + b"\n\x01" + raw).digest()[:4]
    key.public_key().verify(sig, body.encode())
    for bad in (note.replace("n 3", "n 03"), note.replace("final\n", "final \n"),
                note.replace("\n\n", "\n\nextra\n"), note.replace(f"boot {BOOT}", "boot x")):
        with pytest.raises(proof.FormatError):
            proof.parse_note(bad)


# -- the signer --------------------------------------------------------------------------


def test_a_checkpoint_every_n_records_and_one_when_idle() -> None:
    now = [0.0]
    buffer = Buffer(boot_id=b"bootbeef", max_bytes=10**7, batch_bytes=10**6, flush_interval=1)
    signer = Signer(b"bootbeef", TestAttester.load(pki()), records=5, interval=10.0,
                    version="t", config="c", clock=lambda: now[0])
    signer.start(buffer)
    enc = EntryEncoder({})
    buffer.add("app", enc.encode(lines(4), time.time_ns()), 4)
    buffer.seal_all()
    assert signer.checkpoints == 1  # the genesis only: 4 < 5
    buffer.add("app", enc.encode(lines(1), time.time_ns()), 1)
    buffer.seal_all()
    assert signer.checkpoints == 2
    signer.tick()
    assert signer.checkpoints == 2
    now[0] = 10.0  # nothing logged for an interval: a checkpoint all the same
    signer.tick()
    assert signer.checkpoints == 3


def test_numbered_records_the_buffer_drops_are_declared(tmp_path: Path) -> None:
    # A small buffer under drop_oldest: the oldest numbered batches are dropped unsent.
    batches = make_log([lines(20, i * 20) for i in range(30)], policy=Policy.DROP_OLDEST,
                       max_bytes=12_000)
    notes = [proof.parse_note(rec["log"])[0] for tag, e in batches if tag.endswith("agent.sign")
             for _, rec in iter_entries(e) if rec["event"] == "checkpoint"]
    assert any(cp.drops for cp in notes)
    report = check(render(batches, "fluentbit"), tmp_path)
    assert report.findings == []
    (stream,) = [s for b in report.boots.values() for s in b.streams.values()
                 if s.tag == "app.stdout"]
    assert stream.declared_drops and stream.verified < 600


# -- the verifier ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_store_format_verifies(fmt: str, tmp_path: Path) -> None:
    report = check(render(make_log([lines(30), lines(30, 30)]), fmt), tmp_path)
    assert report.findings == []
    (boot,) = report.boots.values()
    assert boot.final and boot.pcrs[0] == PCR0
    assert {s.tag: s.verified for s in boot.streams.values()}["app.stdout"] == 60


def test_duplicates_are_counted_not_reported(tmp_path: Path) -> None:
    text = render(make_log([lines(10)]), "fluentbit").splitlines()
    i = next(i for i, line in enumerate(text) if "line 3 " in line)
    text.insert(i + 5, text[i])  # a resent batch: the same record again, later
    report = check("\n".join(text) + "\n", tmp_path)
    assert report.findings == []
    assert sum(s.duplicates for b in report.boots.values() for s in b.streams.values()) == 1


def test_a_different_copy_beside_the_real_one_is_inserted_and_its_group_verifies(
        tmp_path: Path) -> None:
    text = render(make_log([lines(20)]), "fluentbit").splitlines()
    i = next(i for i, line in enumerate(text) if "line 3 " in line)
    text.insert(i + 2, text[i].replace("line 3 ", "line 3!"))  # same number, other text
    report = check("\n".join(text) + "\n", tmp_path)
    assert [(f.kind, f.detail) for f in report.findings] == [("inserted", "1 records: 4")]
    assert {s.tag: s.verified for b in report.boots.values()
            for s in b.streams.values()}["app.stdout"] == 20


def test_a_record_moved_to_another_tag_is_named_alone(tmp_path: Path) -> None:
    text = render(make_log([lines(20)]), "fluentbit").splitlines()
    i = next(i for i, line in enumerate(text) if "line 3 " in line)
    text[i] = text[i].replace("app.stdout:", "app.stderr:", 1)
    report = check("\n".join(text) + "\n", tmp_path)
    assert [(f.kind, f.detail) for f in report.findings] == [
        ("altered", "1 records kept under another tag: 4")]


def test_an_altered_record_names_its_group_and_a_deleted_one_its_group_mates(
        tmp_path: Path) -> None:
    text = render(make_log([lines(20)]), "fluentbit").splitlines()
    changed = next(i for i, line in enumerate(text) if "line 3 " in line)
    text[changed] = text[changed].replace("line 3 ", "line 4 ")
    del text[next(i for i, line in enumerate(text) if "line 18 " in line)]
    report = check("\n".join(text) + "\n", tmp_path)
    assert [(f.kind, f.detail) for f in report.findings] == [
        ("altered", "one or more of records 1-16 not as signed (the digest of their group "
         "fails, and does not say which)"),
        ("missing", "1 records: 19; the other 3 records of their groups cannot be proven: "
         "17-18, 20")]
    assert {s.tag: s.verified for b in report.boots.values()
            for s in b.streams.values()}["app.stdout"] == 0


def test_records_after_the_last_checkpoint_are_unproven(tmp_path: Path) -> None:
    report = check(render(make_log([lines(10), lines(3, 10)], records=10, final=False),
                          "fluentbit"), tmp_path)
    assert {f.kind for f in report.findings} == {"unproven"}


def test_a_checkpoint_for_this_boot_signed_by_another_boots_attested_key(
        tmp_path: Path) -> None:
    """CVE-2023-31439's kind of bug: a valid signature under the wrong epoch's key."""
    mine = render(make_log([lines(10)], boot=b"bootbeef"), "fluentbit")
    theirs = make_log([lines(10)], boot=b"otherrun")
    # The other boot's checkpoint 1, claimed for this boot: its signature is by a key
    # AWS attested, but for the other boot.
    note = next(rec["log"] for _, e in theirs for _, rec in iter_entries(e)
                if rec.get("event") == "checkpoint" and "\nn 1\n" in rec["log"])
    forged = note.replace(b"otherrun".hex(), b"bootbeef".hex())
    line = f"enclave.local.agent.sign: [1795726388.000000000, {json.dumps({'log': forged})}]\n"
    report = check(mine + render(theirs, "fluentbit") + line, tmp_path)
    assert {f.kind for f in report.findings} == {"forged_checkpoint"}


def test_a_document_from_another_root_is_unattested(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text(render(make_log([lines(5)]), "fluentbit"))
    report = verify(read_input(path), root_sha256="00" * 32)
    assert {f.kind for f in report.findings} == {"unattested"}
    assert "not the pinned" in report.findings[0].detail


def test_a_tampered_document_fails_its_signature() -> None:
    doc = TestAttester.load(pki()).attest(public_key=b"k", user_data=b"u")
    assert verify_document(doc, root_sha256=root_sha()).user_data == b"u"
    protected, unprotected, payload, sig = cbor2.loads(doc)
    other_payload = cbor2.dumps({**cbor2.loads(payload), "user_data": b"v"})
    with pytest.raises(AttestationError, match="COSE signature does not verify"):
        verify_document(cbor2.dumps([protected, unprotected, other_payload, sig]),
                        root_sha256=root_sha())


def test_unreadable_input_is_one_line_and_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a log\n")
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert cli.main([str(bad)]) == 2
        assert cli.main([str(tmp_path / "nothing")]) == 2
    first, second = err.getvalue().splitlines()
    assert first.startswith(f"enclave-log-verify: {bad}:1: not a record of a known format")
    assert second.endswith("No such file or directory")


def test_the_report_says_what_was_proven(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text(render(make_log([lines(7)]), "fluentbit"))
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main([str(path), "--root-cert", str(pki() / "root.pem"), "--pcr0", PCR0])
    text = out.getvalue()
    assert code == 0
    assert f"enclave image PCR0={PCR0}" in text and "app.stdout: 7 records verified" in text
    assert text.endswith("every record verified: intact, complete and in order\n")


def test_signing_output_is_plain_msgpack_any_relay_reads() -> None:
    """No relay change: a signed batch is ordinary entries with one more str field."""
    (tag, entries), *_ = [b for b in make_log([lines(3)]) if b[0].endswith("app.stdout")]
    for t, rec in msgpack.Unpacker(io.BytesIO(entries), raw=False):
        assert isinstance(t, msgpack.ExtType) and isinstance(rec["sig_seq"], str)


def test_a_batch_larger_than_a_checkpoint_is_split_across_checkpoints(tmp_path: Path) -> None:
    batches = make_log([lines(45), lines(45, 45)], records=20)  # batches of 45 records
    notes = [proof.parse_note(rec["log"])[0] for tag, e in batches if tag.endswith("agent.sign")
             for _, rec in iter_entries(e) if rec["event"] == "checkpoint"]
    sizes = [sum(r.last - r.first + 1 for r in cp.streams) for cp in notes]
    assert max(sizes) <= 20 and sum(sizes) == 90 and [cp.final for cp in notes][-1]
    # A batch's range is cut between its groups only: the group digests stay whole.
    assert all((r.last - r.first + 1) % proof.GROUP == 0 for cp in notes for r in cp.streams
               if r.last not in (45, 90))
    assert [cp.n for cp in notes] == list(range(len(notes)))
    assert check(render(batches, "fluentbit"), tmp_path).findings == []


def test_the_relays_restamped_times_verify_by_the_enclaves_own(tmp_path: Path) -> None:
    from parent_side.identity import stamp_entries
    batches = [(tag, stamp_entries(e, {"enclave_name": "x"}, restamp_ns=time.time_ns()))
               for tag, e in make_log([lines(10)])]
    report = check(render(batches, "relay"), tmp_path)
    assert report.findings == []
    assert {s.tag: s.verified for b in report.boots.values()
            for s in b.streams.values()}["app.stdout"] == 10


def test_records_sealed_after_the_final_checkpoint_get_another(tmp_path: Path) -> None:
    buffer = Buffer(boot_id=b"bootbeef", max_bytes=10**7, batch_bytes=10**6, flush_interval=1)
    signer = Signer(b"bootbeef", TestAttester.load(pki()), records=100, interval=3600,
                    version="t", config="c")
    signer.start(buffer)
    enc = EntryEncoder({})
    buffer.add("app", enc.encode(lines(3), time.time_ns()), 3)
    buffer.seal_all()
    signer.checkpoint(final=True)
    buffer.add("agent.log", enc.encode([b"drain: relay gone, retrying"], time.time_ns()), 1)
    buffer.seal_all()  # numbers it, and a last checkpoint opens a batch of its own
    buffer.seal_all()
    batches = [(f"enclave.local.{b.tag}", msgpack.unpackb(b.frame, raw=False)[1])
               for b in buffer._queue]
    from tests.signedlog import render
    report = check(render(batches, "fluentbit"), tmp_path)
    assert report.findings == []
    assert {s.tag: s.verified for b in report.boots.values()
            for s in b.streams.values()} == {"app": 3, "agent.log": 1}


def test_an_input_with_nothing_signed_is_a_finding(tmp_path: Path) -> None:
    unsigned = 'enclave.local.app.stdout: [1795726388.000000000, {"log":"hi"}]\n'
    assert [f.kind for f in check(unsigned, tmp_path).findings] == ["nothing_signed"]
    assert [f.kind for f in check("", tmp_path, "empty").findings] == ["nothing_signed"]


@pytest.mark.parametrize(("ns", "first"), [
    (0x25252525 * 10**9 + 0x25252525, 1),  # every time byte a "%": the format must not see it
    (1795726388_987654321, 10**12 - 3),  # the last 12-digit numbers: still the fast path
    (1795726388_987654321, 10**12 - 2),  # one reaches 13 digits: the general path
])
def test_the_fast_path_agrees_with_the_general_one_at_its_edges(ns: int, first: int) -> None:
    part = EntryEncoder({"stream": "stdout"}).encode([b"a%d", b"%s%%", b"c"], ns)
    assert b"%" in part[:16] or first > 1
    fast = proof._number_runs([part], [3], f"{BOOT}:1:", first, [True])
    general = proof._number_any(part, BOOT, 1, first)
    assert (fast is None) == (first + 3 > 10**12)
    assert fast is None or fast == general
    assert proof.number_entries([part], [3], BOOT, 1, first) == general
