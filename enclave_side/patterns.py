"""Regular expressions from the configuration: checked at start, bounded when run.

Python's ``re`` cannot be interrupted, so one pathological pattern (``(a|aa)+$`` on a
long line of ``a``) would stall a source for minutes. Patterns that users write
(custom redaction rules, include/exclude filters, level and multiline regexes) are
compiled with the ``regex`` module instead, whose matching functions take a
``timeout``. Each pattern is:

- compiled at start (a syntax error is a configuration error naming the key);
- probed at start on a few long, repetitive lines: a pattern that backtracks
  catastrophically on them is refused with the reason;
- run once per read over all the read's lines joined (one C-level call, not one per
  line), with a time limit. When the limit is hit, the read is retried line by line
  within a budget; lines left over are reported as undecided, and callers fail
  closed (a redaction rule blanks them, a filter drops them).

Built-in patterns are vetted, linear-time ``re`` patterns and do not go through here.

``regex`` is imported only when a user pattern is configured, so the single-file agent
(Python and msgpack only) runs without it as long as no custom pattern is asked for;
with one, the missing module is a configuration error that says what to install.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

__all__ = ["PatternError", "UserPattern"]

#: Lines the start-up probe runs each pattern on (long runs of one character class).
_PROBES = [c * 4096 + tail for c in (b"a", b"0", b" ", b"x.", b"a@", b"-", b"/", b"=")
           for tail in (b"", b"!")]
#: A pattern slower than this on a probe line is refused.
PROBE_TIMEOUT = 0.2
#: Per-read budget for line-by-line retries, as a multiple of the pattern's timeout.
RETRY_BUDGET = 10


class PatternError(ValueError):
    """A pattern from the configuration that cannot be used; the message says why."""


class UserPattern:
    """A user's regular expression over bytes, with a time limit.

    Args:
        text: the pattern (matched against UTF-8 bytes; ``^`` and ``$`` match at
            line starts and ends).
        what: the configuration key, for error messages.
        timeout: seconds one call may take.
    """

    def __init__(self, text: str, *, what: str, timeout: float = 0.1) -> None:
        self.timeout = timeout
        self.timeouts = 0
        try:
            import regex  # here: only a configured pattern needs it
        except ImportError:
            raise PatternError(f"{what}: custom patterns need the 'regex' module, for their "
                               "time limit (Python's re cannot be interrupted): pip install "
                               "regex; the single-file agent does not bundle it") from None
        try:
            self.rx: Any = regex.compile(text.encode("utf-8"), regex.MULTILINE | regex.V0)
        except regex.error as exc:
            raise PatternError(f"{what}: {text!r} is not a valid regular expression: "
                               f"{exc}") from None
        for probe in _PROBES:
            try:
                self.rx.search(probe, timeout=PROBE_TIMEOUT)
            except TimeoutError:
                raise PatternError(
                    f"{what}: {text!r} takes over {PROBE_TIMEOUT:g}s on a {len(probe)}-byte "
                    "line: it backtracks catastrophically (nested or overlapping "
                    "repetition such as (a+)+ or (a|aa)+); rewrite it without them") from None

    def search_lines(self, lines: Sequence[bytes]) -> tuple[dict[int, Any], list[int]]:
        """The first match in each line, by line index, and the undecided lines.

        One call over the joined lines; a match that crosses a line end is checked
        again on its line alone. Undecided lines are those the time limit left.
        """
        blob = b"\n".join(lines)
        # Where each line starts in the blob.
        starts = [0, *accumulate(len(line) + 1 for line in lines[:-1])] if lines else []
        found: dict[int, Any] = {}
        recheck: list[int] = []
        try:
            for m in self.rx.finditer(blob, timeout=self.timeout):
                i = bisect_right(starts, m.start()) - 1
                if i in found:
                    continue
                if m.end() > starts[i] + len(lines[i]):
                    recheck.append(i)
                else:
                    found[i] = m
        except TimeoutError:
            self.timeouts += 1
            found, recheck = {}, list(range(len(lines)))

        def search(i: int) -> None:
            m = self.rx.search(lines[i], timeout=self.timeout)
            if m is not None:
                found[i] = m
        return found, self._one_by_one(recheck, search)

    def sub_lines(self, repl: bytes, lines: list[bytes]) -> tuple[list[bytes], int, list[int]]:
        """Replace matches in each line: ``(lines, replacements, undecided line indexes)``.

        One call over the joined lines; if a match crossed a line end (the line count
        changed) or the time ran out, line by line within the budget.
        """
        blob = b"\n".join(lines)
        try:
            out, n = self.rx.subn(repl, blob, timeout=self.timeout)
        except TimeoutError:
            self.timeouts += 1
        else:
            if not n:
                return lines, 0, []
            split = out.split(b"\n")
            if len(split) == len(lines):
                return split, n, []
        result = list(lines)
        counts = [0] * len(lines)

        def sub(i: int) -> None:
            result[i], counts[i] = self.rx.subn(repl, lines[i], timeout=self.timeout)
        undecided = self._one_by_one(range(len(lines)), sub)
        return result, sum(counts), undecided

    def _one_by_one(self, indexes: Sequence[int], one: Callable[[int], None]) -> list[int]:
        """``one(i)`` for each line index, each call under the time limit, all within
        the retry budget; the undecided indexes: those that ran out of time, and those
        the budget did not reach."""
        undecided: list[int] = []
        deadline = time.monotonic() + RETRY_BUDGET * self.timeout
        for k, i in enumerate(indexes):
            if time.monotonic() >= deadline:
                undecided.extend(indexes[k:])
                break
            try:
                one(i)
            except TimeoutError:
                self.timeouts += 1
                undecided.append(i)
        return undecided
