"""Per-source processing: multiline, JSON, levels, filters, redaction, as packed entries."""

from __future__ import annotations

from typing import Any

import pytest

from enclave_side.config import Processing
from enclave_side.lines import PARTIAL, TRUNCATED
from enclave_side.patterns import PatternError
from enclave_side.processing import Pipeline, normalize_level, parse_time
from enclave_side.redact import Redactor
from fluent_forward.entries import EventTime, iter_entries, pack_entry, time_to_ns

NS = 1_764_189_435_123_456_789


def make(clock: list[float] | None = None, redact: Redactor | None = None, **kw: Any
         ) -> Pipeline:
    now = clock if clock is not None else [0.0]
    return Pipeline(Processing(**kw), {"stream": "stdout"}, redact, max_record_bytes=1000,
                    what="stdout", clock=lambda: now[0])


def records(entries: bytes) -> list[dict[str, Any]]:
    return [rec for _, rec in iter_entries(entries)]


def logs(result: tuple[bytes, int]) -> list[str]:
    entries, count = result
    out = [r["log"] for r in records(entries)]
    assert len(out) == count
    return out


def test_multiline_start_pattern_joins_continuations_across_reads() -> None:
    p = make(multiline_start=r"^\d{4}-")
    assert logs(p.process_lines([b"2026-01-01 first", b"  more", b"tail"], NS)) == []
    assert logs(p.process_lines([b"also", b"2026-01-02 second"], NS)) == [
        "2026-01-01 first\n  more\ntail\nalso"]
    assert logs(p.flush_due(0.0, force=True)) == ["2026-01-02 second"]


def test_multiline_flush_timeout_sends_the_held_record() -> None:
    clock = [100.0]
    p = make(clock, multiline="indent", multiline_flush=1.0)
    p.process_lines([b"ERROR boom", b"  at x"], NS)
    assert logs(p.flush_due(100.5)) == []
    clock[0] = 101.0
    assert logs(p.flush_due(101.0)) == ["ERROR boom\n  at x"]
    assert logs(p.flush_due(105.0)) == []


PY_TRACEBACK = [
    b"2026-01-01 ERROR request failed",
    b"Traceback (most recent call last):",
    b'  File "app.py", line 3, in <module>',
    b"    f()",
    b"ValueError: inner",
    b"",
    b"During handling of the above exception, another exception occurred:",
    b"",
    b"Traceback (most recent call last):",
    b'  File "app.py", line 5, in <module>',
    b"KeyError: 'x'",
]

JAVA_TRACE = [
    b'Exception in thread "main" java.lang.IllegalStateException: outer',
    b"\tat com.example.Main.run(Main.java:10)",
    b"Caused by: java.lang.NullPointerException",
    b"\tat com.example.Main.inner(Main.java:20)",
    b"\t... 1 more",
]


def test_indent_rule_keeps_python_and_java_tracebacks_whole() -> None:
    p = make(multiline="indent")
    lines = [*PY_TRACEBACK, b"", b"2026-01-01 INFO next", *JAVA_TRACE, b"after"]
    got = logs(p.process_lines(lines, NS)) + logs(p.flush_due(0, force=True))
    assert got == ["\n".join(x.decode() for x in PY_TRACEBACK), "2026-01-01 INFO next",
                   "\n".join(x.decode() for x in JAVA_TRACE), "after"]


def test_multiline_records_are_capped_and_flagged() -> None:
    p = make(multiline="indent")
    p.process_lines([b"head"] + [b"  " + b"x" * 98] * 30, NS)
    (rec,) = records(p.flush_due(0, force=True)[0])
    assert len(rec["log"]) <= 1000 and rec["truncated"] is True


def test_json_lines_become_records_with_their_own_time() -> None:
    p = make(json=True, time_key="ts", time_format="iso8601")
    entries, n = p.process_lines([b'{"msg": "hi", "ts": "2026-11-26T20:53:08.123456789Z"}',
                                  b"plain line", b"{not json", b'["a list"]'], NS)
    got = list(iter_entries(entries))
    assert n == 4
    assert got[0][1] == {"msg": "hi", "ts": "2026-11-26T20:53:08.123456789Z",
                         "stream": "stdout"}
    assert got[0][0] == EventTime.from_ns(parse_time("2026-11-26T20:53:08.123456789Z",
                                                     "iso8601") or 0)
    assert time_to_ns(got[0][0]) % 10**9 == 123456789
    assert [g[1]["log"] for g in got[1:]] == ["plain line", "{not json", '["a list"]']
    assert all(g[0] == EventTime.from_ns(NS) for g in got[1:])


@pytest.mark.parametrize(("value", "fmt", "ns"), [
    ("2026-11-26T20:53:08Z", "iso8601", 1_795_726_388 * 10**9),
    ("2026-11-26T22:53:08.5+02:00", "iso8601", 1_795_726_388 * 10**9 + 5 * 10**8),
    (1_795_726_388, "unix", 1_795_726_388 * 10**9),
    (1_795_726_388.25, "unix", 1_795_726_388_250_000_000),
    ("1795726388250", "unix_ms", 1_795_726_388_250_000_000),
    ("26/11/2026 20:53:08", "%d/%m/%Y %H:%M:%S", 1_795_726_388 * 10**9),
    ("yesterday", "iso8601", None),
    (True, "unix", None),
])
def test_parse_time(value: object, fmt: str, ns: int | None) -> None:
    assert parse_time(value, fmt) == ns


def test_levels_from_regex_and_json_and_min_level_filter() -> None:
    p = make(json=True, min_level="warning")
    lines = [b"2026 DEBUG noise", b"2026 WARN disk", b"level=error msg=x", b"no level here",
             b'{"level": "info", "m": 1}', b'{"severity": "CRITICAL", "m": 2}']
    entries, n = p.process_lines(lines, NS)
    got = records(entries)
    assert [g.get("log", g.get("m")) for g in got] == [
        "2026 WARN disk", "level=error msg=x", "no level here", 2]
    assert [g.get("level") for g in got[:3]] == ["warning", "error", None]
    assert p.filtered == 2


def test_custom_level_regex_names_group() -> None:
    p = make(level_regex=r"^\[(?P<level>\w)\]")
    got = records(p.process_lines([b"[E] bad", b"[I] fine", b"[?] odd"], NS)[0])
    assert [g.get("level") for g in got] == ["error", "info", None]


def test_include_and_exclude() -> None:
    p = make(include=[r"^GET ", r"^POST "], exclude=[r"/health"])
    got = logs(p.process_lines([b"GET /a", b"GET /health", b"POST /b", b"DELETE /c"], NS))
    assert got == ["GET /a", "POST /b"]
    assert p.filtered == 2


def test_redaction_runs_after_filters_on_lines_and_json_fields() -> None:
    p = make(redact=Redactor(["email"]), json=True, exclude=[r"secret@"])
    got = records(p.process_lines([b"from a@example.com", b"secret@example.com drop me",
                                   b'{"user": "b@example.com"}'], NS)[0])
    assert got[0]["log"] == "from [REDACTED:email]"
    assert got[1]["user"] == "[REDACTED:email]"
    assert len(got) == 2


def test_flags_survive_processing() -> None:
    p = make(include=["x"])
    got = records(p.process_lines([(b"x cut", TRUNCATED), (b"x half", PARTIAL)], NS)[0])
    assert got[0]["truncated"] is True and got[1]["partial"] is True


def test_records_and_entries_paths() -> None:
    p = make(redact=Redactor(["ssn"]), min_level="error")
    entries, n = p.process_records([(NS, {"log": "ssn 123-45-6789", "level": "critical"}),
                                    (NS, {"log": "fine", "level": "info"})])
    assert n == 1 and records(entries) == [{"log": "ssn [REDACTED:ssn]", "level": "critical"}]
    packed = (pack_entry(5, {"message": "a", "severity": "ERROR"})
              + pack_entry(6, {"message": "b", "level": "debug"}))
    entries, n = p.process_entries(packed, 2)
    assert n == 1 and list(iter_entries(entries)) == [(5, {"message": "a",
                                                           "severity": "ERROR"})]


def test_bad_patterns_name_their_key() -> None:
    with pytest.raises(PatternError, match=r"stdout\.exclude\[1\]"):
        make(exclude=["ok", "(bad"])


def test_normalize_level() -> None:
    assert [normalize_level(x) for x in ("WARN", "err", b"Fatal", "Info", "x", 3)] == [
        "warning", "error", "critical", "info", None, None]


def test_a_filter_that_runs_out_of_time_drops_the_line_and_is_counted() -> None:
    p = Pipeline(Processing(exclude=(r"(b|bb)+$",)), {"stream": "stdout"}, None,
                 max_record_bytes=1000, pattern_timeout=0.02)
    got = logs(p.process_lines([b"fine", b"b" * 5000 + b"!", b"also fine"], NS))
    assert got == ["fine", "also fine"]
    assert p.pattern_timeouts >= 1 and p.filtered == 1
