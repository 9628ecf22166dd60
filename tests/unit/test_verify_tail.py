"""The verifier against the attacks the prior art teaches (README: Design notes).

systemd's CVE-2023-31438/31439 were verifiers that accepted a truncated log continued
later, and tags under another epoch's key; CloudTrail tells a reader only once an hour.
Here: a withheld tail, a stale log, a checkpoint replayed in place of a later one, a
rolled-back chain, and another boot's attestation document.
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclave_side import proof
from logverify import cli, testpki
from logverify.attestation import verify_document
from logverify.readers import read_input
from logverify.verify import verify
from tests.signedlog import PCR0, _records, lines, make_log, pki
from tests.unit.test_signing import check, root_sha

Rec = tuple[str, int, dict[str, Any]]


def _log(**kw: Any) -> list[Rec]:
    return _records(make_log([lines(10), lines(10, 10), lines(5, 20)], records=10, **kw))


def _text(recs: list[Rec]) -> str:
    return "".join(f"{tag}: [{ns // 10**9}.{ns % 10**9:09d}, "
                   f"{json.dumps(rec, separators=(',', ':'))}]\n" for tag, ns, rec in recs)


def _n(rec: dict[str, Any]) -> int | None:
    """The checkpoint number a checkpoint or attestation record is about."""
    if rec.get("event") == "checkpoint":
        return proof.parse_note(rec["log"])[0].n
    if rec.get("event") == "attestation":
        return proof.parse_attestation_line(rec["log"])[1]
    return None


def _last_n(recs: list[Rec]) -> int:
    return max(n for _, _, r in recs if (n := _n(r)) is not None)


def _without_tail(recs: list[Rec], *, keep_document: bool) -> list[Rec]:
    """The log as a store that withheld the final checkpoint and the records it covers."""
    last = _last_n(recs)
    final = next(proof.parse_note(r["log"])[0] for _, _, r in recs
                 if r.get("event") == "checkpoint" and _n(r) == last)
    covered = {(rng.stream, q) for rng in final.streams for q in range(rng.first, rng.last + 1)}
    out = []
    for tag, ns, rec in recs:
        seq = proof.parse_seq(rec.get(proof.SEQ_KEY))
        if seq is not None and (seq[1], seq[2]) in covered:
            continue
        if _n(rec) == last and (rec["event"] == "checkpoint" or not keep_document):
            continue
        out.append((tag, ns, rec))
    return out


def _cli(text: str, tmp_path: Path, *args: str) -> tuple[int, str]:
    path = tmp_path / "log"
    path.write_text(text)
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main([str(path), "--root-cert", str(pki() / "root.pem"), "--pcr0", PCR0,
                         *args])
    return code, out.getvalue()


def test_a_withheld_tail_is_told_and_a_finding_when_the_boot_must_have_ended(
        tmp_path: Path) -> None:
    cut = _text(_without_tail(_log(), keep_document=False))
    code, out = _cli(cut, tmp_path)
    # Nothing in the input can show the cut: the reader is told what is not proven.
    assert code == 0 and "no final checkpoint: what the enclave logged after" in out
    assert out.endswith("in order up to the last checkpoint\n")
    code, out = _cli(cut, tmp_path, "--require-final")
    assert code == 1 and "FINDING no_final_checkpoint" in out


def test_a_withheld_tail_whose_attestation_document_was_kept_is_missing_checkpoints(
        tmp_path: Path) -> None:
    recs = _log()
    report = check(_text(_without_tail(recs, keep_document=True)), tmp_path)
    assert {f.kind for f in report.findings} == {"missing_checkpoints"}
    assert f"-{_last_n(recs)} (the last named by AWS)" in report.findings[0].detail


def test_a_running_boot_whose_checkpoints_stopped_is_stale(tmp_path: Path) -> None:
    text = _text(_log(final=False))
    path = tmp_path / "log"
    path.write_text(text)
    report = check(text, tmp_path)
    (boot,) = report.boots.values()
    assert boot.last_time_ms is not None
    for age_s, kinds in ((1, set()), (7200, {"stale"})):
        report = verify(read_input(path), root_sha256=root_sha(), max_age_ms=60_000,
                        now_ms=boot.last_time_ms + age_s * 1000)
        assert {f.kind for f in report.findings} - {"unproven"} == kinds


def test_an_earlier_checkpoint_replayed_in_place_of_a_later_one(tmp_path: Path) -> None:
    recs = _log()
    one = next(r for r in recs if r[2].get("event") == "checkpoint" and _n(r[2]) == 1)
    two = next(i for i, r in enumerate(recs)
               if r[2].get("event") == "checkpoint" and _n(r[2]) == 2)
    recs[two] = one  # checkpoint 2 withheld, checkpoint 1 sent again where it was
    report = check(_text(recs), tmp_path)
    kinds = {f.kind for f in report.findings}
    assert "missing_checkpoints" in kinds and "chain_broken" not in kinds
    assert any(f.kind == "unproven" and f.stream == "app.stdout" for f in report.findings)


def test_a_chain_rolled_back_to_an_earlier_state_is_missing_checkpoints(
        tmp_path: Path) -> None:
    """Everything after checkpoint 1 withheld, while AWS's document for the final
    checkpoint says the chain went further."""
    recs = _log()
    kept = [r for r in recs if (_n(r[2]) or 0) <= 1 and
            ((s := proof.parse_seq(r[2].get(proof.SEQ_KEY))) is None or s[2] <= 10)
            or r[2].get("event") == "attestation"]
    report = check(_text(kept), tmp_path)
    assert "missing_checkpoints" in {f.kind for f in report.findings}


def test_another_boots_attestation_document_does_not_attest_this_boot(
        tmp_path: Path) -> None:
    """CVE-2023-31439's lesson for documents: one from the same image, for another boot's
    genesis, must not stand in for this boot's."""
    mine, theirs = _log(boot=b"bootbeef"), _log(boot=b"otherrun")
    their_doc = next(r for r in theirs if r[2].get("event") == "attestation"
                     and _n(r[2]) == 0)
    _, _, body = proof.parse_attestation_line(their_doc[2]["log"])
    swapped = [(t, ns, {**r, "log": proof.attestation_line(b"bootbeef".hex(), 0, body)})
               if r.get("event") == "attestation" and _n(r) == 0 else (t, ns, r)
               for t, ns, r in mine]
    report = check(_text(swapped), tmp_path)
    assert {f.kind for f in report.findings} == {"unattested"}
    assert "another genesis or key" in report.findings[0].detail


def test_a_test_chain_for_trying_sign_outside_an_enclave(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert testpki.main([str(tmp_path / "pki"), "--pcr0", PCR0]) == 0
    out = capsys.readouterr().out
    assert f"--nsm test-pki:{tmp_path / 'pki'}" in out and out.rstrip().endswith(PCR0)
    doc = testpki.TestAttester.load(tmp_path / "pki").attest(public_key=b"k", user_data=b"u")
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "root.pem").read_bytes())
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert fingerprint != root_sha()  # a chain of its own, not the session's
    assert verify_document(doc, root_sha256=fingerprint).pcrs[0].hex() == PCR0


def test_the_report_names_the_tags_of_records_it_did_not_check(tmp_path: Path) -> None:
    relay = 'relay.lifecycle: [1795726388.000000000, {"event":"relay_start"}]\n'
    code, out = _cli(_text(_log()) + relay * 2, tmp_path)
    assert code == 0
    assert "2 records without signature from other sources (not checked): " \
           "relay.lifecycle: 2\n" in out
