"""Redaction inside the enclave: what the parent sees is disclosed.

Built-in rules (all linear-time ``re`` patterns over bytes, none matching a newline):

===================== ============================================ =====================
rule                  matches                                      prefilter (C-level)
===================== ============================================ =====================
``jwt``               ``eyJ….eyJ….sig`` (three base64url parts)    ``b"eyJ" in data``
``bearer``            the token after ``Bearer`` (any case)        ``b"earer"``/``b"EARER"``
``aws_access_key_id`` ``AKIA``/``ASIA`` + 16 upper-case alnum      ``b"AKIA"``/``b"ASIA"``
``email``             ``local@domain.tld``                         ``b"@" in data``
``card``              13-19 digits, spaces or dashes between,      one regex pass
                      that pass the Luhn check
``ssn``               US SSN ``AAA-GG-SSSS`` (valid ranges only)   one regex pass
===================== ============================================ =====================

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
from typing import Any

from fluent_forward.codec import iter_entries, pack_entry

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


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    pattern: re.Pattern[bytes]
    literals: tuple[bytes, ...]  # empty: no literal prefilter, the regex pass is the test
    replacement: bytes | None = None  # None: the rule has its own callable


_R = b"[REDACTED:%s]"

BUILTIN_RULES: dict[str, _Rule] = {r.name: r for r in (
    _Rule("jwt", re.compile(rb"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
          (b"eyJ",), _R % b"jwt"),
    _Rule("bearer", re.compile(rb"(?i)(\bbearer[ \t]+)[A-Za-z0-9._~+/-]{8,}=*"),
          (b"earer", b"EARER"), rb"\g<1>[REDACTED:bearer]"),
    _Rule("aws_access_key_id", re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
          (b"AKIA", b"ASIA"), _R % b"aws_access_key_id"),
    # The lookbehind makes a match start only at the start of a run of local-part
    # characters, so a long run costs one pass, not one per start position.
    _Rule("email", re.compile(
        rb"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}"
        rb"(?![A-Za-z0-9-])"), (b"@",), _R % b"email"),
    _Rule("card", re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])"), ()),
    _Rule("ssn", re.compile(
        rb"(?<![0-9-])(?!000|666|9[0-9][0-9])[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9-])"),
        (), _R % b"ssn"),
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
        self._card: Callable[[re.Match[bytes]], bytes] = self._replace_card

    def _replace_card(self, m: re.Match[bytes]) -> bytes:
        text = m.group()
        if luhn_ok(text.replace(b" ", b"").replace(b"-", b"")):
            self.counts["card"] += 1
            return _R % b"card"
        return text

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
                flat = list(flat)
                for i in undecided:
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
        """Every built-in rule whose prefilter hits, once over the whole read."""
        changed = False
        for rule in self.rules:
            if rule.literals and not any(lit in blob for lit in rule.literals):
                continue
            if rule.replacement is None:
                before = self.counts["card"]
                blob = rule.pattern.sub(self._card, blob)
                changed |= self.counts["card"] != before
            else:
                blob, n = rule.pattern.subn(rule.replacement, blob)
                if n:
                    self.counts[rule.name] += n
                    changed = True
        return blob, changed

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
            if rule.literals:
                if any(lit in data for lit in rule.literals):
                    return True
            elif rule.pattern.search(data):
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
