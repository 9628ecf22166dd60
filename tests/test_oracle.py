"""Tests of the delivery oracle (tests/oracle.py): the writer and the checker."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import PYTHON, env_for_subprocess
from tests.oracle import check, make_line, parse_line, payload


def lines(source: str, n: int, size: int = 120) -> list[str]:
    return [make_line(source, i, size) for i in range(n)]


def test_a_line_is_source_seq_crc_payload_and_parses_back() -> None:
    line = make_line("src", 42)
    source, seq, crc, body = line.split(" ", 3)
    assert (source, seq, body) == ("src", "42", payload("src", 42))
    assert len(crc) == 8 and int(crc, 16) >= 0
    assert parse_line(line) == ("src", 42)


def test_payloads_vary_in_length_and_some_are_not_ascii() -> None:
    got = lines("v", 300, size=100)
    lengths = {len(payload("v", i, 100)) for i in range(300)}
    assert len(lengths) > 50 and min(lengths) >= 25 and max(lengths) <= 175 + 20
    non_ascii = [i for i, line in enumerate(got) if not line.isascii()]
    assert non_ascii == list(range(0, 300, 3))
    assert any(len(c.encode()) == 4 for line in got for c in line), "4-byte UTF-8 too"
    assert all("\n" not in line for line in got)


def test_everything_once_in_order_is_clean() -> None:
    report = check(lines("a", 100) + lines("b", 50), {"a": 100, "b": 50})
    assert (report.lost, report.duplicated, report.corrupted, report.out_of_order) == (0, 0, 0, 0)
    assert (report.expected, report.delivered) == (150, 150)


def test_missing_lines_are_lost() -> None:
    got = lines("a", 100)
    del got[50]
    del got[10:13]
    report = check(got, {"a": 100, "b": 5})
    assert report.lost == 4 + 5
    assert report.lost_sample[:4] == [("a", 10), ("a", 11), ("a", 12), ("a", 50)]
    assert "lost=9" in str(report)


def test_extra_copies_are_duplicates_not_reordering() -> None:
    got = lines("a", 20)
    got = got[:10] + got[5:10] + got[10:] + [got[0], got[0]]  # a resent window, a late resend
    report = check(got, {"a": 20})
    assert (report.lost, report.duplicated, report.out_of_order) == (0, 7, 0)
    assert report.copies[("a", 0)] == 3


def test_first_copies_after_a_higher_number_are_out_of_order() -> None:
    got = lines("a", 10)
    got[3], got[7] = got[7], got[3]  # 0 1 2 7 4 5 6 3 8 9: 4, 5, 6 and 3 come after 7
    report = check(got, {"a": 10})
    assert report.out_of_order == 4 and report.lost == 0 and report.duplicated == 0
    late_batch = lines("a", 30)
    report = check(late_batch[10:20] + late_batch[:10] + late_batch[20:], {"a": 30})
    assert report.out_of_order == 10


@pytest.mark.parametrize("damage", [
    lambda s: s[:-1],                                   # truncated
    lambda s: s[:-1] + ("x" if s[-1] != "x" else "y"),  # a changed payload character
    lambda s: s.replace("a 5 ", "a 6 ", 1),             # another (valid) number
    lambda s: s.replace("a 5 ", "b 5 ", 1),             # another (known) source
    lambda s: s.replace("a 5 ", "a 05 ", 1),            # the same number spelt otherwise
    lambda s: s.upper(),                                # crc in upper case, payload changed
    lambda s: s.split(" ", 3)[3],                       # only the payload
    lambda s: "",                                       # nothing
    lambda s: s + "\udcff",                             # bytes that were not UTF-8
    lambda s: s.replace("a 5 ", "a ٥ ", 1),             # a non-ASCII digit
], ids=["truncated", "payload", "seq", "source", "leading-zero", "upper", "payload-only",
        "empty", "surrogate", "arabic-digit"])
def test_damaged_lines_are_corrupted_and_their_number_lost(damage) -> None:  # type: ignore[no-untyped-def]
    got = lines("a", 10)
    got[5] = damage(got[5])
    report = check(got, {"a": 10, "b": 10})
    assert report.corrupted == 1, report
    assert ("a", 5) in report.lost_sample
    assert report.duplicated == 0


def test_unknown_sources_and_numbers_out_of_range_are_corrupted() -> None:
    report = check(lines("a", 5) + lines("zz", 2) + [make_line("a", 5)], {"a": 5})
    assert report.corrupted == 3 and report.lost == 0


# -- the writer, as a child process ---------------------------------------------------------


def run_writer(tmp_path: Path, *args: str, stdout: int | None = subprocess.PIPE
               ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PYTHON, "-m", "tests.oracle", "write", *args], stdout=stdout,
                            stderr=subprocess.PIPE, env=env_for_subprocess())


@pytest.mark.parametrize("mode", [[], ["--burst"], ["--rate", "20000"]],
                         ids=["per-line", "burst", "rate"])
def test_the_writer_prints_checkable_lines_and_reports(tmp_path: Path, mode: list[str]) -> None:
    report_path, progress = tmp_path / "report.json", tmp_path / "progress"
    proc = run_writer(tmp_path, "--count", "2000", "--source", "w1", "--report", str(report_path),
                      "--progress", str(progress), "--marker-at", "1500", "--marker", "MARK",
                      *mode)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    got = out.decode().splitlines()
    report = check(got, {"w1": 2000})
    assert (report.lost, report.duplicated, report.corrupted, report.out_of_order) == (0, 0, 0, 0)
    assert err == b"MARK\n"
    summary = json.loads(report_path.read_text())
    assert summary["count"] == 2000 and summary["writes"] >= 1
    assert progress.read_text().split()[0] == "000000002000"
    if not mode:
        assert summary["writes"] == 2000, "one write per line"


def test_the_writer_keeps_its_rate(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_writer(tmp_path, "--count", "100", "--source", "r", "--rate", "200")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert time.monotonic() - started >= 0.45, "100 lines at 200/s take half a second"
    assert check(out.decode().splitlines(), {"r": 100}).lost == 0


def test_the_writer_measures_how_long_a_full_pipe_blocked_it(tmp_path: Path) -> None:
    report_path, progress = tmp_path / "report.json", tmp_path / "progress"
    proc = run_writer(tmp_path, "--count", "5000", "--source", "b",
                      "--report", str(report_path), "--progress", str(progress))
    assert proc.stdout is not None
    deadline = time.monotonic() + 10
    while not progress.exists() or not progress.read_text():
        assert time.monotonic() < deadline, "the writer never wrote"
        time.sleep(0.01)
    time.sleep(0.8)  # hold the fault: nobody reads the pipe, so the writer blocks
    written = int(progress.read_text().split()[0])
    assert written < 5000, "the writer did not block on a full pipe"
    out, _ = proc.communicate(timeout=30)
    summary = json.loads(report_path.read_text())
    assert summary["max_write_s"] >= 0.6, summary
    assert check(out.decode().splitlines(), {"b": 5000}).lost == 0
