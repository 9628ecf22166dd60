"""Redaction rules: positive and negative cases per rule, prefilters, bounded custom rules."""

from __future__ import annotations

import time

import msgpack
import pytest

from enclave_side.patterns import PatternError, UserPattern
from enclave_side.redact import BUILTIN_RULES, CustomRule, Redactor, luhn_ok
from fluent_forward.entries import EventTime, iter_entries, pack_entry

ALL = list(BUILTIN_RULES)
JWT = ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")

# (rule, text containing a secret, what must be gone)
POSITIVE = [
    ("email", "user alice.smith+tag@example.co.uk logged in", "alice.smith+tag@example.co.uk"),
    ("email", "to:bob@mail.internal.example.com;", "bob@mail.internal.example.com"),
    ("card", "paid with 4111 1111 1111 1111 ok", "4111 1111 1111 1111"),
    ("card", "card=4012888888881881", "4012888888881881"),
    ("card", "amex 3782-822463-10005 charged", "3782-822463-10005"),
    ("ssn", "ssn 123-45-6789 on file", "123-45-6789"),
    ("aws_access_key_id", "key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_access_key_id", "temp=ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
    ("bearer", "Authorization: Bearer abcDEF123._~+/-xyz==", "abcDEF123._~+/-xyz=="),
    ("bearer", "authorization: bearer 0123456789abcdef", "0123456789abcdef"),
    ("jwt", f"token {JWT} x", JWT),
]

# (rule, text that must come out unchanged)
NEGATIVE = [
    ("email", "user @alice mentioned a@b in chat"),
    ("email", "version 1.2@build3"),
    ("card", "order 4111111111111112 failed Luhn"),  # 16 digits, Luhn fails
    ("card", "id 123456789012 short"),  # 12 digits
    ("card", "trace 12345678901234567890123 too long"),  # 23 digits
    ("card", "2026-11-26T20:53:08.898443272Z took 1234 ms"),
    ("ssn", "ssn 000-12-3456 invalid area"),
    ("ssn", "ssn 123-00-4567 invalid group"),
    ("ssn", "date 2026-11-26 and phone 555-123-4567"),
    ("ssn", "part 123-45-67890 longer"),
    ("aws_access_key_id", "AKIAshort and XAKIAIOSFODNN7EXAMPLEX glued"),
    ("aws_access_key_id", "AIDAIOSFODNN7EXAMPLE is a user id, not a key"),
    ("bearer", "Bearer short"),
    ("bearer", "the bearer of bad news"),
    ("jwt", "eyJ alone and eyJhbGciOiJIUzI1NiJ9 without the rest"),
]


@pytest.mark.parametrize(("rule", "text", "secret"), POSITIVE)
def test_each_rule_redacts_its_secret(rule: str, text: str, secret: str) -> None:
    r = Redactor([rule])
    (out,) = r.lines([text.encode()])
    assert secret.encode() not in out
    assert b"[REDACTED:" + rule.encode() + b"]" in out
    assert r.counts[rule] == 1


@pytest.mark.parametrize(("rule", "text"), NEGATIVE)
def test_each_rule_leaves_lookalikes_alone(rule: str, text: str) -> None:
    r = Redactor(ALL)
    (out,) = r.lines([text.encode()])
    assert out == text.encode()
    assert sum(r.counts.values()) == 0


def test_luhn() -> None:
    assert luhn_ok(b"4111111111111111")
    assert luhn_ok(b"79927398713")
    assert not luhn_ok(b"4111111111111112")
    assert not luhn_ok(b"79927398710")


def test_many_lines_keep_their_count_order_and_clean_ones_are_untouched() -> None:
    r = Redactor(ALL)
    lines = [b"clean %d" % i for i in range(100)]
    lines[10] = b"mail me: x@example.org"
    lines[50] = b"ssn 123-45-6789 and card 4111-1111-1111-1111"
    out = r.lines(list(lines))
    assert len(out) == 100
    assert out[10] == b"mail me: [REDACTED:email]"
    assert out[50] == b"ssn [REDACTED:ssn] and card [REDACTED:card]"
    assert [o for i, o in enumerate(out) if i not in (10, 50)] == [
        line for i, line in enumerate(lines) if i not in (10, 50)]
    assert (r.counts["email"], r.counts["ssn"], r.counts["card"]) == (1, 1, 1)


def test_clean_lines_come_back_as_the_same_list() -> None:
    r = Redactor(ALL)
    lines = [b"GET /health 200 3ms"] * 10
    assert r.lines(lines) is lines


def test_custom_rule_with_group_reference() -> None:
    rule = CustomRule("password", UserPattern(r"(password=)\S+", what="t"), rb"\1***")
    r = Redactor([], [rule])
    assert r.lines([b"login password=hunter2 ok", b"no secret"]) == [
        b"login password=*** ok", b"no secret"]
    assert r.counts["password"] == 1


def test_custom_rule_that_crosses_lines_is_applied_per_line() -> None:
    rule = CustomRule("kv", UserPattern(r"secret\s+\w+", what="t"), b"X")
    r = Redactor([], [rule])
    assert r.lines([b"a secret", b"word b", b"secret  x"]) == [b"a secret", b"word b", b"X"]


def test_structured_records_have_string_fields_redacted_keys_kept() -> None:
    r = Redactor(ALL)
    rec = {"msg": "from a@example.com", "n": 4111111111111111, "email@x.io": 1,
           "nested": {"list": ["ssn 123-45-6789", 3]}}
    out = r.record(rec)
    assert out == {"msg": "from [REDACTED:email]", "n": 4111111111111111, "email@x.io": 1,
                   "nested": {"list": ["ssn [REDACTED:ssn]", 3]}}


def test_packed_entries_clean_pass_untouched_dirty_are_repacked() -> None:
    r = Redactor(ALL)
    t = EventTime(1_700_000_000, 5)
    clean = pack_entry(t, {"log": "fine"}) + pack_entry(((t, {})), {"log": "v2 shape"})
    assert r.entries(clean) is clean
    dirty = clean + pack_entry(5, {"log": "Bearer abcdefghijklmnop"})
    out = list(iter_entries(r.entries(dirty)))
    assert out[0] == (t, {"log": "fine"})
    assert out[1] == ((t, {}), {"log": "v2 shape"})
    assert out[2] == (5, {"log": "Bearer [REDACTED:bearer]"})
    assert msgpack.unpackb(pack_entry(t, {}))[0] == t


def test_unknown_rule_names_are_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        Redactor(["email", "nope"])


def test_a_pathological_pattern_is_refused_at_start() -> None:
    with pytest.raises(PatternError, match="backtracks catastrophically"):
        UserPattern(r"(a|aa)+$", what="redact.rule[0].pattern")


def test_an_invalid_pattern_names_the_key() -> None:
    with pytest.raises(PatternError, match=r"redact.rule\[1\].pattern.*not a valid"):
        UserPattern(r"(unclosed", what="redact.rule[1].pattern")


def test_a_pattern_that_runs_out_of_time_fails_closed_and_is_bounded() -> None:
    # Passes the probe (the probe lines have no 'b'), catastrophic on this line.
    pattern = UserPattern(r"(b|bb)+$", what="t", timeout=0.02)
    r = Redactor([], [CustomRule("slow", pattern, b"X")])
    evil = b"b" * 5000 + b"!"
    started = time.monotonic()
    out = r.lines([b"fine line", evil, b"another"])
    elapsed = time.monotonic() - started
    assert out[1] == b"[REDACTED:slow:timeout]", "an undecided line must not go out as is"
    assert out[0] == b"fine line" and out[2] == b"another"
    assert r.timeouts >= 1
    assert elapsed < 2.0, f"one read took {elapsed:.2f}s"


def test_multiline_records_and_strings_with_newlines_keep_their_shape() -> None:
    r = Redactor(ALL, [CustomRule("pw", UserPattern(r"pw=\S+", what="t"), b"pw=*")])
    recs = [b"ERROR for a@example.com\n  at x pw=1\n  at y", b"plain", b"one\ntwo pw=2"]
    assert r.lines(recs) == [b"ERROR for [REDACTED:email]\n  at x pw=*\n  at y", b"plain",
                             b"one\ntwo pw=*"]
    assert r.record({"cmd": ["python", "-c", "x = 1\nmail('b@example.com')"]}) == {
        "cmd": ["python", "-c", "x = 1\nmail('[REDACTED:email]')"]}
    clean = [b"a\nb", b"c"]
    assert r.lines(clean) is clean


def test_without_the_regex_module_a_custom_pattern_is_a_config_error_saying_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from enclave_side.patterns import PatternError, UserPattern

    monkeypatch.setitem(sys.modules, "regex", None)  # as in the single-file agent
    with pytest.raises(PatternError, match="pip install regex") as info:
        UserPattern("CUST-[0-9]+", what="redact.rule[0].pattern")
    assert "redact.rule[0].pattern" in str(info.value)
