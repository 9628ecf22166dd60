"""Signed logs end to end: agent --sign -> relay -> a real Fluent Bit -> file -> verify.

One pipeline run (two boots of the agent, so one boot's records can be replayed into
the other's log) writes Fluent Bit's file output; every tamper test edits a copy of
it and checks that enclave-log-verify reports that attack and nothing else. The NSM
is the test attester (``--nsm test-pki:DIR``): no real NSM is exercised here.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave_side import proof
from logverify import cli
from logverify.testpki import TestAttester, make_test_pki
from tests.helpers import (
    DEADLINE,
    PYTHON,
    env_for_subprocess,
    short_tmpdir,
    stop_process,
    wait_until_sync,
)
from tests.realfb import fluent_bit_binary

pytestmark = [pytest.mark.fluentbit, pytest.mark.slow]

PCR0 = "ab" * 48
LINES = 300
FB_CONF = """\
[SERVICE]
    flush     0.2
    log_level warn
[INPUT]
    name      forward
    unix_path {sock}
[OUTPUT]
    name      file
    match     *
    path      {out}
    file      out.txt
# The JSON lines Fluent Bit's S3 output writes come from the same formatter.
[OUTPUT]
    name             stdout
    match            *
    format           json_lines
    json_date_key    date
    json_date_format iso8601
"""


def _final_checkpoints(out: Path) -> int:
    return out.read_text().count("\\nfinal\\n") if out.exists() else 0


def _run_agent(tmp: Path, pki: Path) -> None:
    # Written over ~0.3 s in bursts, so that checkpoints (every 50 ms) split it.
    app = ("import sys, time\n"
           f"for i in range({LINES}):\n"
           "    print(f'line {i} ' + 'x' * 100, flush=True)\n"
           "    if i % 10 == 9: time.sleep(0.01)\n"
           "print('to stderr', file=sys.stderr)")
    proc = subprocess.run(
        [PYTHON, "-m", "enclave_side", "--relay", f"unix://{tmp}/relay.sock", "--sign",
         "--nsm", f"test-pki:{pki}", "--sign-records", "100", "--sign-interval", "50ms",
         "--tag", "app", "--", PYTHON, "-c", app],
        env=env_for_subprocess(), capture_output=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.fixture(scope="module")
def pipeline() -> Iterator[tuple[Path, Path]]:
    """Fluent Bit's file output after two signing agent runs, and the test root."""
    binary = fluent_bit_binary()
    with short_tmpdir() as tmp:
        pki = tmp / "pki"
        root = make_test_pki(pki, pcr0=PCR0)
        (tmp / "fb.conf").write_text(FB_CONF.format(sock=tmp / "fb.sock", out=tmp))
        json_lines = (tmp / "json-lines.txt").open("wb")
        fb = subprocess.Popen([binary, "-c", str(tmp / "fb.conf")],
                              stdout=json_lines, stderr=subprocess.DEVNULL)
        relay = None
        try:
            wait_until_sync(lambda: (tmp / "fb.sock").exists(), "Fluent Bit's socket")
            relay = subprocess.Popen(
                [PYTHON, "-m", "parent_side", "serve", "--listen", f"unix://{tmp}/relay.sock",
                 "--output", f"unix://{tmp}/fb.sock", "--spool", str(tmp / "spool"),
                 "--admin-socket", str(tmp / "admin.sock")],
                env=env_for_subprocess(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until_sync(lambda: (tmp / "relay.sock").exists(), "the relay's socket")
            for _ in range(2):
                _run_agent(tmp, pki)
            for name in ("out.txt", "json-lines.txt"):
                wait_until_sync(lambda n=name: _final_checkpoints(tmp / n) == 2,  # type: ignore[misc]
                                f"both boots' final checkpoints in Fluent Bit's {name}")
        finally:
            if relay is not None:
                stop_process(relay)
            stop_process(fb)
            json_lines.close()
        saved = tmp / "saved"
        saved.mkdir()
        for name in ("out.txt", "json-lines.txt"):
            (saved / name).write_bytes((tmp / name).read_bytes())
        (saved / "root.pem").write_bytes(root.read_bytes())
        (saved / "pki").mkdir()
        for f in pki.iterdir():
            (saved / "pki" / f.name).write_bytes(f.read_bytes())
        yield saved / "out.txt", saved / "root.pem"


# -- editing Fluent Bit's file output --------------------------------------------------------

_LINE = re.compile(r"^(\S+): \[([0-9.]+), (\{.*\})\]$")


def parse(line: str) -> tuple[str, str, dict[str, object]]:
    m = _LINE.match(line)
    assert m, line
    return m.group(1), m.group(2), json.loads(m.group(3))


def unparse(tag: str, t: str, record: dict[str, object]) -> str:
    return f"{tag}: [{t}, {json.dumps(record, separators=(',', ':'))}]"


def boots(lines: list[str]) -> list[str]:
    """Boot ids in the order their genesis appears."""
    found = re.findall(r"\\nboot ([0-9a-f]{16})\\nn 0\\n", "\n".join(lines))
    return list(dict.fromkeys(found))


def stdout_lines(lines: list[str], boot: str) -> list[int]:
    return [i for i, line in enumerate(lines)
            if line.startswith("enclave.") and ".app.stdout:" in line and f'"{boot}:' in line]


def verify(tmp: Path, lines: list[str], root: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    path = tmp / "edited.txt"
    path.write_text("\n".join(lines) + "\n")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main([str(path), "--root-cert", str(root), "--json", *extra])
    return code, json.loads(buf.getvalue())


def kinds(report: dict) -> set[str]:  # type: ignore[type-arg]
    return {f["kind"] for f in report["findings"]}


@pytest.fixture
def log(pipeline: tuple[Path, Path]) -> list[str]:
    return pipeline[0].read_text().splitlines()


@pytest.fixture
def root(pipeline: tuple[Path, Path]) -> Path:
    return pipeline[1]


def test_clean_logs_verify_with_every_line_counted(log: list[str], root: Path,
                                                   tmp_path: Path) -> None:
    code, report = verify(tmp_path, log, root, "--pcr0", PCR0)
    assert code == 0, report["findings"]
    assert len(report["boots"]) == 2
    for b in report["boots"].values():
        assert b["final"] and b["pcrs"]["0"] == PCR0
        streams = {s["tag"]: s["verified"] for s in b["streams"].values()}
        assert streams["app.stdout"] == LINES and streams["app.stderr"] == 1
        # The agent's own records are signed too: start and exit, the metrics at exit.
        assert streams["agent.lifecycle"] == 2 and streams["agent.metrics"] == 1
        assert b["aws_times"], "the final checkpoint has an attestation document"


def test_fluent_bits_json_lines_as_s3_writes_them_verify(pipeline: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    lines = (pipeline[0].parent / "json-lines.txt").read_text().splitlines()
    assert lines[0].startswith('{"date":"')
    code, report = verify(tmp_path, lines, pipeline[1], "--pcr0", PCR0)
    assert code == 0, report["findings"]
    for b in report["boots"].values():
        assert {s["tag"]: s["verified"] for s in b["streams"].values()}["app.stdout"] == LINES


def test_one_byte_changed_is_altered(log: list[str], root: Path, tmp_path: Path) -> None:
    i = stdout_lines(log, boots(log)[1])[150]
    log[i] = log[i].replace("line 150 x", "line 150 y")
    code, report = verify(tmp_path, log, root)
    assert code == 1 and kinds(report) == {"altered"}
    # Checkpoints commit to groups: the finding names the group that holds record 151.
    m = re.match(r"one or more of records (\d+)-(\d+) not as signed",
                 report["findings"][0]["detail"])
    assert m, report["findings"][0]["detail"]
    first, last = int(m.group(1)), int(m.group(2))
    assert first <= 151 <= last and last - first + 1 <= proof.GROUP


def test_a_deleted_record_is_missing(log: list[str], root: Path, tmp_path: Path) -> None:
    del log[stdout_lines(log, boots(log)[1])[10]]
    code, report = verify(tmp_path, log, root)
    assert code == 1 and kinds(report) == {"missing"}
    assert "1 records: 11" in report["findings"][0]["detail"]
    # Its group's other records cannot be proven: said in that finding, not as another.
    m = re.search(r"the other (\d+) records of their groups cannot be proven",
                  report["findings"][0]["detail"])
    assert m and 1 <= int(m.group(1)) < proof.GROUP, report["findings"][0]["detail"]


def test_an_inserted_record_is_inserted(log: list[str], root: Path, tmp_path: Path) -> None:
    i = stdout_lines(log, boots(log)[1])[20]
    tag, t, record = parse(log[i])
    record["log"] = "line 20 forged"
    log.insert(i + 1, unparse(tag, t, record))
    code, report = verify(tmp_path, log, root)
    assert code == 1 and kinds(report) == {"inserted"}


def test_two_swapped_records_are_reordered(log: list[str], root: Path, tmp_path: Path) -> None:
    i, j = stdout_lines(log, boots(log)[1])[30:32]
    log[i], log[j] = log[j], log[i]
    code, report = verify(tmp_path, log, root)
    assert code == 1 and kinds(report) == {"reordered"}


def test_a_whole_checkpoint_interval_dropped(log: list[str], root: Path,
                                              tmp_path: Path) -> None:
    boot = boots(log)[1]
    # The first checkpoint after the genesis that covers records and is not the last.
    cp_line, ranges = next(
        (i, {(r.stream, q) for r in cp.streams for q in range(r.first, r.last + 1)})
        for i, line in enumerate(log) if f"\\nboot {boot}\\n" in line
        for cp in [proof.parse_note(str(parse(line)[2]["log"]))[0]]
        if cp.n and cp.streams and not cp.final)
    keep = []
    for i, line in enumerate(log):
        m = re.search(rf'"sig_seq":"{boot}:(\d+):(\d+)"', line)
        if i == cp_line or (m and (int(m.group(1)), int(m.group(2))) in ranges):
            continue
        keep.append(line)
    code, report = verify(tmp_path, keep, root)
    assert code == 1 and kinds(report) == {"missing_checkpoints", "missing"}, report["findings"]


def test_records_replayed_from_another_boot(log: list[str], root: Path,
                                             tmp_path: Path) -> None:
    first, second = boots(log)
    other = [line for line in log if first in line]
    edited = [line for line in log if first not in line]
    edited[10:10] = [line for line in other if ".app.stdout:" in line][:5]
    code, report = verify(tmp_path, edited, root)
    assert code == 1 and kinds(report) == {"replayed"}


def test_a_checkpoint_forged_with_another_key(log: list[str], root: Path,
                                               tmp_path: Path) -> None:
    boot = boots(log)[1]
    i = next(i for i, line in enumerate(log) if f"\\nboot {boot}\\nn 1\\n" in line)
    tag, t, record = parse(log[i])
    cp = proof.parse_note(str(record["log"]))[0]
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes_raw()
    body = cp.body()
    record["log"] = proof.sign_note(body, boot, raw, key.sign(body.encode()))
    log.append(unparse(tag, t, record))
    code, report = verify(tmp_path, log, root)
    assert code == 1 and kinds(report) == {"forged_checkpoint"}


def _replace_genesis_document(log: list[str], root: Path, pcrs: dict[int, bytes]) -> str:
    boot = boots(log)[1]
    genesis = next(parse(line)[2]["log"] for line in log
                   if f"\\nboot {boot}\\nn 0\\n" in line)
    i = next(i for i, line in enumerate(log) if f"attestation v1 {boot} 0 " in line)
    tag, t, record = parse(log[i])
    key = proof.parse_note(str(genesis))[0].key
    assert key is not None
    real = TestAttester.load(root.parent / "pki")
    attester = TestAttester(real.key, real.leaf, real.cabundle, pcrs)
    der = ed25519.Ed25519PublicKey.from_public_bytes(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    doc = attester.attest(public_key=der, user_data=proof.note_hash(str(genesis)))
    record["log"] = proof.attestation_line(boot, 0, doc)
    log[i] = unparse(tag, t, record)
    return doc.hex()


def test_a_debug_enclave_is_untrusted(log: list[str], root: Path, tmp_path: Path) -> None:
    _replace_genesis_document(log, root, {i: bytes(48) for i in (0, 1, 2, 3, 4, 8)})
    code, report = verify(tmp_path, log, root)
    assert code == 1 and kinds(report) == {"debug_enclave"}


def test_another_pcr0_than_expected(log: list[str], root: Path, tmp_path: Path) -> None:
    code, report = verify(tmp_path, log, root, "--pcr0", "cd" * 48)
    assert code == 1 and kinds(report) == {"pcr_mismatch"}
    assert len(report["findings"]) == 2  # both boots


def test_without_the_test_root_nothing_is_attested(log: list[str], tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("\n".join(log) + "\n")
    assert cli.main([str(path)]) == 1  # the pinned AWS root: the test chain is refused


def test_sign_without_an_nsm_is_one_clear_error_and_the_app_does_not_start(
        tmp_path: Path) -> None:
    marker = tmp_path / "app-ran"
    proc = subprocess.run(
        [PYTHON, "-m", "enclave_side", "--relay", f"unix://{tmp_path}/none.sock", "--sign",
         "--nsm", str(tmp_path / "nsm"), "--", PYTHON, "-c", f"open({str(marker)!r}, 'w')"],
        env=env_for_subprocess(), capture_output=True, timeout=DEADLINE)
    assert proc.returncode == 78
    assert b"cannot sign: cannot open" in proc.stderr and b"Nitro Enclave" in proc.stderr
    assert b"Traceback" not in proc.stderr and not marker.exists()


def test_sign_without_the_sign_extra_is_one_error_line(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['cryptography'] = None\n"  # as if not installed
            "from enclave_side.cli import main\n"
            "raise SystemExit(main(['--sign', '--', 'true']))")
    proc = subprocess.run([PYTHON, "-c", code], env=env_for_subprocess(),
                          capture_output=True, timeout=DEADLINE)
    assert proc.returncode == 2
    [line] = proc.stderr.decode().strip().splitlines()  # one line, as every option error
    assert line.startswith("enclave-log-agent: error: --sign needs cryptography and cbor2: "
                           "pip install 'nitro-enclave-logs[sign]'")
