"""Per-source record processing: multiline, JSON, levels, filters, redaction.

Used only by sources that have something configured; the others pack lines straight
from ``LineSplitter`` to ``EntryEncoder``. Even here the unit of work is one read:
every user pattern runs once over the read's lines joined (``UserPattern``), and
the plain lines that survive are packed in runs by ``EntryEncoder``. Only JSON
records are objects.

Order: lines -> multiline records -> JSON objects (and their own time) -> level ->
filters (min level, include, exclude; on the original text) -> redaction (on what
will be sent) -> entries.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fluent_forward.entries import EventTime, iter_entries, pack_entry

from .config import LEVELS, Processing
from .lines import FLAG_FIELDS, PARTIAL, TRUNCATED, EntryEncoder, Item, escape_line
from .patterns import UserPattern
from .redact import Redactor

__all__ = ["Multiline", "Pipeline", "normalize_level", "parse_time"]

_ALIASES = {
    "trc": "trace", "dbg": "debug", "debu": "debug", "verbose": "debug", "fine": "debug",
    "information": "info", "informational": "info", "inf": "info",
    "warn": "warning", "wrn": "warning", "err": "error", "eror": "error",
    "t": "trace", "d": "debug", "i": "info", "w": "warning", "e": "error", "f": "critical",
    "crit": "critical", "fatal": "critical", "alert": "critical", "emerg": "critical",
    "emergency": "critical", "panic": "critical", "severe": "critical",
}


def normalize_level(value: Any) -> str | None:
    """``"WARN"`` -> ``"warning"``; None for what is not a level name."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    return name if name in LEVELS else _ALIASES.get(name)


#: With ``min_level`` and no ``level_regex``: logfmt ``level=x`` or an upper-case word.
_DEFAULT_LEVEL = re.compile(
    rb"\b(?:level|lvl|severity)[=:] ?\"?([A-Za-z]+)"
    rb"|\b(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|CRIT|FATAL|PANIC)\b")

_ISO = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
                  r"\s*(Z|[+-]\d\d:?\d\d)?$")
_UNIX = {"unix": 10**9, "unix_ms": 10**6, "unix_us": 10**3, "unix_ns": 1}


def parse_time(value: Any, fmt: str) -> int | None:
    """Unix nanoseconds of a record's own time, or None if it does not parse."""
    if fmt in _UNIX:
        if isinstance(value, str):
            try:
                value = float(value) if "." in value else int(value)
            except ValueError:
                return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        # Decimal of the float's shortest repr: 1795726388.25 s is ...250000000 ns exactly.
        ns = (int(Decimal(repr(value)) * _UNIX[fmt]) if isinstance(value, float)
              else value * _UNIX[fmt])
        return ns if 0 <= ns < 2**32 * 10**9 else None
    if not isinstance(value, str):
        return None
    if fmt == "iso8601":
        m = _ISO.match(value.strip())
        if not m:
            return None
        y, mo, d, h, mi, s, frac, tz = m.groups()
        try:
            seconds = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
        except ValueError:
            return None
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            hh, mm = int(tz[1:3]), int(tz[-2:])
            seconds -= sign * (hh * 3600 + mm * 60)
        return seconds * 10**9 + int((frac or "0").ljust(9, "0"))
    try:
        dt = datetime.strptime(value, fmt)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


# -- multiline ---------------------------------------------------------------------------

_NORMAL, _IN_TRACEBACK, _AFTER_TRACEBACK = 0, 1, 2
_PY_TB = b"Traceback (most recent call last):"
_PY_CHAIN = (b"During handling of the above exception",
             b"The above exception was the direct cause")
_JAVA_CONT = (b"Caused by: ", b"Suppressed: ")


class Multiline:
    """Join continuation lines to the record they continue.

    With ``start`` (a pattern), a line that does not match it continues the record.
    Without, the indentation rule: an indented line continues, and so do Python
    traceback lines (``Traceback ...``, the exception line after the indented frames,
    chained-exception lines and the blank lines between them) and Java's
    ``Caused by:``. A record is sent when the next one starts, or once nothing was
    added for ``flush`` seconds. Records are capped at ``max_bytes`` (flagged
    truncated).
    """

    def __init__(self, start: UserPattern | None, flush: float, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start = start
        self.flush = flush
        self.max_bytes = max_bytes
        self._clock = clock
        self._parts: list[bytes] = []
        self._size = 0
        self._flags = 0
        self._ns = 0
        self._last = 0.0
        self._state = _NORMAL

    def _continues(self, line: bytes) -> bool:
        state = self._state
        if not line:
            return state == _AFTER_TRACEBACK
        if line[0] in b" \t":
            if state == _AFTER_TRACEBACK:
                self._state = _IN_TRACEBACK
            return True
        if line.startswith(_PY_TB):
            self._state = _IN_TRACEBACK
            return True
        if line.startswith(_PY_CHAIN):
            self._state = _AFTER_TRACEBACK
            return True
        if line.startswith(_JAVA_CONT):
            return True
        if state == _IN_TRACEBACK:  # the exception line closes the frames
            self._state = _AFTER_TRACEBACK
            return True
        self._state = _NORMAL
        return False

    def feed(self, lines: list[bytes], flags: list[int], ns: int,
             out: tuple[list[bytes], list[int], list[int]]) -> None:
        """Add a read's lines; append completed records to ``out`` (lines, flags, times)."""
        starts: set[int] = set()
        if self.start is not None:
            found, undecided = self.start.search_lines(lines)
            starts = set(found) | set(undecided)  # undecided: never glue
        for i, line in enumerate(lines):
            cont = (i not in starts) if self.start is not None else self._continues(line)
            if cont and self._parts:
                self._append(line, flags[i])
            else:
                self.take(out)
                self._parts, self._size, self._flags, self._ns = [line], len(line), flags[i], ns
                if self._size > self.max_bytes:
                    self._parts = [line[:self.max_bytes]]
                    self._flags |= TRUNCATED
        self._last = self._clock()

    def _append(self, line: bytes, flags: int) -> None:
        self._flags |= flags & ~PARTIAL
        if self._flags & TRUNCATED and self._size >= self.max_bytes:
            return
        room = self.max_bytes - self._size - 1
        if len(line) > room:
            line = line[:max(room, 0)]
            self._flags |= TRUNCATED
        self._parts.append(line)
        self._size += len(line) + 1

    def take(self, out: tuple[list[bytes], list[int], list[int]]) -> None:
        """Send the record being built, complete or not."""
        if not self._parts:
            return
        parts = self._parts
        while len(parts) > 1 and not parts[-1]:  # blank lines held after a traceback
            parts.pop()
        out[0].append(b"\n".join(parts) if len(parts) > 1 else parts[0])
        out[1].append(self._flags)
        out[2].append(self._ns)
        self._parts = []
        self._state = _NORMAL

    def due(self, now: float) -> bool:
        return bool(self._parts) and now - self._last >= self.flush


# -- the pipeline -------------------------------------------------------------------------


class Pipeline:
    """One source's processing, from split lines (or records) to packed entries.

    Args:
        processing: what to do.
        fields: the source's constant fields (``stream``, ``file`` ...).
        redactor: shared by every source (its counts are the agent's), or None.
        max_record_bytes: cap on a multiline record.
        pattern_timeout: time limit of one pass of a user pattern over a read.
        what: the configuration key of this source, for error messages.
    """

    def __init__(self, processing: Processing, fields: dict[str, str],
                 redactor: Redactor | None, *, max_record_bytes: int,
                 pattern_timeout: float = 0.1, what: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        p = processing
        self.fields = dict(fields)
        self.redactor = redactor

        def pattern(key: str, text: str) -> UserPattern:  # named in errors as configured
            return UserPattern(text, what=f"{what}.{key}", timeout=pattern_timeout)
        start = pattern("multiline_start", p.multiline_start) if p.multiline_start else None
        self.multiline = (Multiline(start, p.multiline_flush, max_record_bytes, clock)
                          if start is not None or p.multiline == "indent" else None)
        self.processing = processing
        self.level_regex = pattern("level_regex", p.level_regex) if p.level_regex else None
        self.detect_levels = p.level_regex is not None or p.min_level is not None
        self.min_level = LEVELS[p.min_level] if p.min_level else None
        self.include = [pattern(f"include[{i}]", t) for i, t in enumerate(p.include)]
        self.exclude = [pattern(f"exclude[{i}]", t) for i, t in enumerate(p.exclude)]
        #: Levels or filters: records are judged one by one, not passed on as they are.
        self.filters = bool(self.detect_levels or self.include or self.exclude)
        self._encoders: dict[str | None, EntryEncoder] = {}
        self.filtered = 0
        self.time_errors = 0

    @property
    def pattern_timeouts(self) -> int:
        """Passes of this source's user patterns that ran out of time."""
        patterns = [*self.include, *self.exclude, self.level_regex,
                    self.multiline.start if self.multiline is not None else None]
        return sum(p.timeouts for p in patterns if p is not None)

    def _encoder(self, level: str | None) -> EntryEncoder:
        enc = self._encoders.get(level)
        if enc is None:
            fields = self.fields if level is None else {**self.fields, "level": level}
            enc = self._encoders[level] = EntryEncoder(fields)
        return enc

    # -- lines (the app's streams, files) -------------------------------------------------

    def process_lines(self, items: list[Item], ns: int) -> tuple[bytes, int]:
        """Packed entries for a read's lines, and how many."""
        if self.multiline is None and not (self.processing.json or self.filters):
            return self._redact_read(items, ns)
        lines = [i if isinstance(i, bytes) else i[0] for i in items]
        flags = [0 if isinstance(i, bytes) else i[1] for i in items]
        if self.multiline is None:
            return self._finish(lines, flags, [ns] * len(lines))
        out: tuple[list[bytes], list[int], list[int]] = ([], [], [])
        self.multiline.feed(lines, flags, ns, out)
        return self._finish(*out)

    def _redact_read(self, items: list[Item], ns: int) -> tuple[bytes, int]:
        """Redaction alone: lines in, lines out, packed in one run as the fast path does."""
        assert self.redactor is not None
        lines = [i if isinstance(i, bytes) else i[0] for i in items]
        redacted = self.redactor.lines(lines)
        if redacted is not lines:  # a line changed; a flagged one keeps its flags
            items = [r if isinstance(i, bytes) else (r, i[1])
                     for i, r in zip(items, redacted, strict=True)]
        return self._encoder(None).encode(items, ns), len(items)

    def flush_due(self, now: float, force: bool = False) -> tuple[bytes, int]:
        """A multiline record whose time is up (or any, with ``force``)."""
        if self.multiline is None or not (force or self.multiline.due(now)):
            return b"", 0
        out: tuple[list[bytes], list[int], list[int]] = ([], [], [])
        self.multiline.take(out)
        return self._finish(*out)

    def _finish(self, lines: list[bytes], flags: list[int], times: list[int]
                ) -> tuple[bytes, int]:
        n = len(lines)
        if not n:
            return b"", 0
        objs: list[dict[str, Any] | None] = [None] * n
        if self.processing.json:
            self._parse_json(lines, objs, times)
        levels: list[str | None] = [None] * n
        if self.detect_levels:
            self._levels(lines, objs, levels)
        keep = self._keep(lines, levels)
        if self.redactor is not None:
            plain = [i for i in keep if objs[i] is None]
            redacted = self.redactor.lines([lines[i] for i in plain])
            for i, line in zip(plain, redacted, strict=True):
                lines[i] = line
            for i in keep:
                if objs[i] is not None:
                    objs[i] = self.redactor.record(objs[i])
        return self._encode(keep, lines, flags, times, objs, levels)

    def _parse_json(self, lines: list[bytes], objs: list[dict[str, Any] | None],
                    times: list[int]) -> None:
        time_key = self.processing.time_key
        for i, line in enumerate(lines):
            if line[:1] != b"{" and line.lstrip()[:1] != b"{":
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if type(obj) is not dict:
                continue
            objs[i] = obj
            if time_key is not None and time_key in obj:
                t = parse_time(obj[time_key], self.processing.time_format)
                if t is None:
                    self.time_errors += 1
                else:
                    times[i] = t

    def _levels(self, lines: list[bytes], objs: list[dict[str, Any] | None],
                levels: list[str | None]) -> None:
        plain = []
        for i, obj in enumerate(objs):
            if obj is None:
                plain.append(i)
            else:
                levels[i] = self._level_of(obj)
        if not plain:
            return
        if self.level_regex is not None:
            found, _ = self.level_regex.search_lines([lines[i] for i in plain])
            for j, m in found.items():
                group = m.group("level") if "level" in m.re.groupindex else (
                    m.group(1) if m.re.groups else m.group())
                levels[plain[j]] = normalize_level(group)
        else:
            for i in plain:
                m = _DEFAULT_LEVEL.search(lines[i])
                if m:
                    levels[i] = normalize_level(m.group(1) or m.group(2))

    def _level_of(self, record: dict[str, Any]) -> str | None:
        """The level under the first of ``level_keys`` the record has."""
        for key in self.processing.level_keys:
            if key in record:
                return normalize_level(record[key])
        return None

    def _keep(self, lines: list[bytes], levels: list[str | None]) -> list[int]:
        keep = list(range(len(lines)))
        if self.min_level is not None:
            floor = self.min_level
            keep = [i for i in keep if levels[i] is None or LEVELS[levels[i]] >= floor]  # type: ignore[index]
        if self.include:
            matched: set[int] = set()
            for pat in self.include:
                found, _ = pat.search_lines(lines)  # undecided: not included
                matched.update(found)
            keep = [i for i in keep if i in matched]
        for pat in self.exclude:
            found, undecided = pat.search_lines(lines)  # undecided: excluded
            drop = set(found) | set(undecided)
            keep = [i for i in keep if i not in drop]
        self.filtered += len(lines) - len(keep)
        return keep

    def _encode(self, keep: list[int], lines: list[bytes], flags: list[int], times: list[int],
                objs: list[dict[str, Any] | None], levels: list[str | None]
                ) -> tuple[bytes, int]:
        """Objects packed one by one; lines in runs of one level and one time."""
        parts: list[bytes] = []
        run: list[Item] = []
        run_level: str | None = None
        run_ns = 0
        for i in keep:
            obj = objs[i]
            packed = None if obj is None else self._pack_object(obj, flags[i], times[i])
            level = levels[i] if obj is None else None
            if run and (packed is not None or (level, times[i]) != (run_level, run_ns)):
                parts.append(self._encoder(run_level).encode(run, run_ns))
                run = []
            if packed is not None:
                parts.append(packed)
            else:
                run_level, run_ns = level, times[i]
                run.append(lines[i] if not flags[i] else (lines[i], flags[i]))
        if run:
            parts.append(self._encoder(run_level).encode(run, run_ns))
        return b"".join(parts), len(keep)

    def _pack_object(self, obj: dict[str, Any], flags: int, ns: int) -> bytes | None:
        for k, v in self.fields.items():
            obj.setdefault(k, v)
        obj.update({name: True for bit, name in FLAG_FIELDS if flags & bit})
        try:
            return pack_entry(EventTime.from_ns(ns), obj)
        except (OverflowError, ValueError, TypeError):
            return None  # e.g. an integer msgpack cannot hold: sent as the line it was

    # -- records (the kernel log) and packed entries (the Forward input) ------------------

    def process_records(self, records: list[tuple[int, dict[str, Any]]]) -> tuple[bytes, int]:
        """Filter and redact structured records (``level`` already set); pack them."""
        texts = [escape_line(str(rec.get("log", "")).encode("utf-8", "surrogateescape"))
                 for _, rec in records]
        levels = [normalize_level(rec.get("level")) for _, rec in records]
        stamped = [(EventTime.from_ns(ns), rec) for ns, rec in records]
        return self._pack_kept(stamped, texts, levels)

    def process_entries(self, entries: bytes, count: int) -> tuple[bytes, int]:
        """Filter and redact packed entries from a Forward client."""
        if not self.filters:
            if self.redactor is not None:
                entries = self.redactor.entries(entries)
            return entries, count
        decoded = list(iter_entries(entries))
        texts = []
        for _, rec in decoded:
            text = rec.get("log", rec.get("message", ""))
            texts.append(text.encode("utf-8", "surrogateescape") if isinstance(text, str)
                         else b"")
        levels = [self._level_of(rec) for _, rec in decoded]
        return self._pack_kept(decoded, texts, levels)

    def _pack_kept(self, records: list[tuple[Any, dict[str, Any]]], texts: list[bytes],
                   levels: list[str | None]) -> tuple[bytes, int]:
        """The records the filters keep (judged on ``texts``), redacted and packed."""
        keep = self._keep(texts, levels)
        red = self.redactor
        return b"".join(pack_entry(records[i][0], red.record(records[i][1]) if red else
                                   records[i][1]) for i in keep), len(keep)
