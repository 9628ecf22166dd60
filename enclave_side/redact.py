"""Redaction inside the enclave: what the parent sees is disclosed.

Built-in rules (all linear-time ``re`` patterns over bytes, none matching a newline):

===================== ============================================ =====================
rule                  matches                                      prefilter (C-level)
===================== ============================================ =====================
``jwt``               ``eyJ….eyJ….sig`` (three base64url parts)    ``b"eyJ" in data``
``bearer``            the token after ``Bearer`` (any case)        ``b"earer"``/``b"EARER"``
``aws_access_key_id`` ``AKIA``/``ASIA`` + 16 upper-case alnum      ``b"AKIA"``/``b"ASIA"``
``email``             ``local@domain.tld``                         ``b"@" in data``
``card``              13-19 digits, spaces or dashes between,      13 digits in a row once
                      that pass the Luhn check                     spaces and dashes go
``ssn``               US SSN ``AAA-GG-SSSS`` (valid ranges only)   the shape ``000-00-0000``
===================== ============================================ =====================

The digit prefilters map every digit to ``0`` with one ``bytes.translate`` and look
for the shape with ``in``: C-level passes that can only say "maybe" when the regex
could match, since ``re`` has no fast scan for a character class (run over every
read, the card and SSN regexes cost microseconds per line; the prefilters, a few
nanoseconds).

A read's lines are redacted together: joined once, each rule's prefilter is tested
on the whole read, and only a rule whose prefilter hits runs its regex, once, over
the whole read. Clean lines cost a join and a few ``in`` scans. Custom rules are
``UserPattern``s (bounded in time); a line a custom rule could not finish in time is
replaced whole (fail closed). Matches are replaced by ``[REDACTED:<rule>]`` (custom
rules choose their replacement); only counts per rule are kept, never the values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from fluent_forward.entries import iter_entries, pack_entry

from .patterns import UserPattern

__all__ = ["BUILTIN_RULES", "CustomRule", "Redactor", "luhn_ok"]


def luhn_ok(digits: bytes) -> bool:
    """Whether ASCII ``digits`` pass the Luhn check (card numbers do)."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = c - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


#: Digits to ``0``; spaces, dashes and newlines kept; anything else to ``x``.
_SHAPE = bytes(0x30 if 0x30 <= c <= 0x39 else c if c in (0x20, 0x2D, 0x0A) else 0x78
               for c in range(256))


Span: TypeAlias = "tuple[int, int] | None"


@dataclass(frozen=True, slots=True)
class _Rule:
    """A built-in rule: a pattern that starts with a literal or a character class (so
    ``re`` skips ahead in C instead of trying it at every position), and ``accept``,
    which checks a match in Python (boundaries, Luhn) and says what to replace."""

    name: str
    pattern: re.Pattern[bytes]
    literals: tuple[bytes, ...] = ()  # any of them in the data: the rule may match
    # or a digit-shape prefilter: shape in data.translate(_SHAPE, delete)
    shape: bytes = b""
    delete: bytes = b""
    accept: Callable[[bytes, re.Match[bytes]], Span] | None = None

    def may_match(self, data: bytes) -> bool:
        if self.shape:
            return self.shape in data.translate(_SHAPE, self.delete)
        return any(lit in data for lit in self.literals)


_R = b"[REDACTED:%s]"
_DIGIT_OR_DASH = frozenset(b"0123456789-")
_DIGIT = frozenset(b"0123456789")
_UPPER_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_EMAIL_LOCAL = re.compile(rb"[A-Za-z0-9._%+-]{1,64}\Z")


def _after(data: bytes, start: int, banned: frozenset[int]) -> bool:
    """Whether the match at ``start`` is not glued to a ``banned`` byte before it."""
    return start == 0 or data[start - 1] not in banned


def _card(data: bytes, m: re.Match[bytes]) -> Span:
    if not _after(data, m.start(), _DIGIT):
        return None
    return m.span() if luhn_ok(m.group().replace(b" ", b"").replace(b"-", b"")) else None


def _ssn(data: bytes, m: re.Match[bytes]) -> Span:
    text = m.group()
    if (not _after(data, m.start(), _DIGIT_OR_DASH) or text[:3] in (b"000", b"666")
            or text[4:6] == b"00" or text[7:] == b"0000"):
        return None
    return m.span()


def _aws(data: bytes, m: re.Match[bytes]) -> Span:
    return m.span() if _after(data, m.start(), _UPPER_ALNUM) else None


def _email(data: bytes, m: re.Match[bytes]) -> Span:
    """The match starts at ``@``; the local part is found backwards from it."""
    at = m.start()
    local = _EMAIL_LOCAL.search(data, max(at - 64, 0), at)
    return (local.start(), m.end()) if local else None


def _bearer(data: bytes, m: re.Match[bytes]) -> Span:
    return m.span(2) if _after(data, m.start(), frozenset(b"abcdefghijklmnopqrstuvwxyz"
                                                           b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")) else None


BUILTIN_RULES: dict[str, _Rule] = {r.name: r for r in (
    _Rule("jwt", re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
          (b"eyJ",)),
    _Rule("bearer", re.compile(rb"([Bb][Ee][Aa][Rr][Ee][Rr][ \t]+)([A-Za-z0-9._~+/-]{8,}=*)"),
          (b"earer", b"EARER"), accept=_bearer),
    _Rule("aws_access_key_id", re.compile(rb"A(?:KIA|SIA)[A-Z0-9]{16}(?![A-Z0-9])"),
          (b"AKIA", b"ASIA"), accept=_aws),
    _Rule("email", re.compile(rb"@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"),
          (b"@",), accept=_email),
    _Rule("card", re.compile(rb"[0-9](?:[ -]?[0-9]){12,18}(?![0-9])"),
          shape=b"0" * 13, delete=b" -", accept=_card),
    _Rule("ssn", re.compile(rb"[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9-])"),
          shape=b"000-00-0000", accept=_ssn),
)}


@dataclass(frozen=True, slots=True)
class CustomRule:
    """A user's rule: a bounded pattern and what replaces its matches."""

    name: str
    pattern: UserPattern
    replacement: bytes


class Redactor:
    """Apply the configured rules; count replacements per rule.

    Args:
        builtin: names from ``BUILTIN_RULES``, applied in the table's order.
        custom: user rules, applied after the built-in ones, in order.
    """

    def __init__(self, builtin: Sequence[str] = (), custom: Sequence[CustomRule] = ()) -> None:
        unknown = set(builtin) - set(BUILTIN_RULES)
        if unknown:
            raise ValueError(f"unknown redaction rules: {', '.join(sorted(unknown))}")
        self.rules = [r for name, r in BUILTIN_RULES.items() if name in builtin]
        self.custom = list(custom)
        self.counts: dict[str, int] = {r.name: 0 for r in self.rules}
        self.counts.update({r.name: 0 for r in self.custom})
        self.timeouts = 0

    # -- lines ------------------------------------------------------------------------

    def lines(self, lines: list[bytes]) -> list[bytes]:
        """The lines with every match replaced (the same list if nothing matched).

        A line may hold newlines (a multiline record); rules still see one line at a
        time, and the result has one item per item given.
        """
        if not lines:
            return lines
        blob = b"\n".join(lines)
        nested = blob.count(b"\n") != len(lines) - 1
        blob, changed = self._builtin(blob)
        if not (changed or self.custom):
            return lines
        flat = blob.split(b"\n") if changed or nested else lines
        for custom in self.custom:
            flat, n, undecided = custom.pattern.sub_lines(custom.replacement, flat)
            self.counts[custom.name] += n + len(undecided)
            changed |= bool(n or undecided)
            if undecided:
                self.timeouts += len(undecided)
                blank = _R % f"{custom.name}:timeout".encode()
                for i in undecided:  # sub_lines gave a list of its own, to change
                    flat[i] = blank
        if not changed:
            return lines
        if not nested:
            return flat
        out, at = [], 0
        for line in lines:
            k = line.count(b"\n") + 1
            out.append(b"\n".join(flat[at:at + k]))
            at += k
        return out

    def _builtin(self, blob: bytes) -> tuple[bytes, bool]:
        """Every built-in rule whose prefilter hits the read, on the lines it hits.

        The regexes are ``re`` patterns that start with a character class, which
        ``re`` tries at every position: run over a whole read they cost microseconds
        per line, so they run only on the lines whose own prefilter hits.
        """
        changed = False
        lines: list[bytes] | None = None
        for rule in self.rules:
            if rule.shape:
                shaped = blob.translate(_SHAPE, rule.delete)
                if rule.shape not in shaped:
                    continue
                hits = [i for i, s in enumerate(shaped.split(b"\n")) if rule.shape in s]
            else:
                present = [lit for lit in rule.literals if lit in blob]
                if not present:
                    continue
                if lines is None:
                    lines = blob.split(b"\n")
                hits = [i for i, line in enumerate(lines) if any(lit in line for lit in present)]
            if lines is None:
                lines = blob.split(b"\n")  # a prefilter keeps newlines: same line count
            edited = False
            for i in hits:
                new = self._sub(rule, lines[i])
                if new is not lines[i]:
                    lines[i] = new
                    edited = True
            if edited:
                blob = b"\n".join(lines)
                changed = True
        return blob, changed

    def _sub(self, rule: _Rule, data: bytes) -> bytes:
        """``data`` with the rule's matches replaced; ``data`` itself if none was."""
        out: list[bytes] = []
        last = n = 0
        replacement = _R % rule.name.encode()
        for m in rule.pattern.finditer(data):
            span = m.span() if rule.accept is None else rule.accept(data, m)
            if span is None or span[0] < last:
                continue
            out += (data[last:span[0]], replacement)
            last = span[1]
            n += 1
        if not n:
            return data
        out.append(data[last:])
        self.counts[rule.name] += n
        return b"".join(out)

    # -- structured records -------------------------------------------------------------

    def text(self, value: str) -> str:
        """One string field."""
        raw = value.encode("utf-8", "surrogateescape")
        if not self.may_match(raw):
            return value
        (out,) = self.lines([raw])
        return value if out is raw else out.decode("utf-8", "surrogateescape")

    def record(self, obj: Any) -> Any:
        """A record with every string value (nested too) redacted; keys are left alone."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: self.record(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.record(v) for v in obj]
        return obj

    def may_match(self, data: bytes) -> bool:
        """Whether any rule might match somewhere in ``data`` (cheap, no false negatives)."""
        for rule in self.rules:
            if rule.may_match(data) and rule.pattern.search(data):
                return True
        for custom in self.custom:
            try:
                if custom.pattern.rx.search(data, timeout=custom.pattern.timeout):
                    return True
            except TimeoutError:
                return True
        return False

    def entries(self, entries: bytes) -> bytes:
        """Packed entries with their records redacted; untouched bytes when clean.

        The prefilter runs on the packed bytes (strings are stored as they are in
        msgpack), so clean frames are never decoded.
        """
        if not self.may_match(entries):
            return entries
        return b"".join(pack_entry(t, self.record(rec)) for t, rec in iter_entries(entries))
