"""What the stores hold, as records with a millisecond time.

Formats, told apart per file (gzip is opened either way):

- the relay's JSON lines: ``{"time": ISO-8601, "tag": ..., "record": {...}}``;
- Fluent Bit's ``file`` output (its default format): ``TAG: [SECONDS.NANOS, {...}]``;
- Fluent Bit's S3 output, ``json_lines``: the record with its time under ``date``
  (``json_date_key``; double, epoch or ISO-8601, as ``json_date_format`` says);
- CloudWatch Logs events as ``aws logs filter-log-events --output json`` prints them:
  ``{"events": [{"timestamp": ms, "message": "{...}", "logStreamName": ...}]}``.
  The log stream name stands for the tag (the shipped output names streams
  ``<instance id>.<tag>``), and CloudWatch's order within a millisecond is its own,
  so order is not checked there.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = ["InputError", "Item", "read_input"]


class InputError(ValueError):
    """An input that cannot be read or is in no known format."""


@dataclass(slots=True)
class Item:
    """One record as a store kept it."""

    where: str  # file:line, for the report
    tag: str | None
    ms: int | None
    record: dict[str, Any]
    ordered: bool  # does the store keep the order records arrived in?


_FB_FILE = re.compile(r"^(\S+): \[(-?[0-9.eE+-]+), (\{.*\})\]$")
_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)$")


def _decimal_ms(text: str) -> int:
    try:
        return int(Decimal(text) * 1000)
    except InvalidOperation:
        raise ValueError(f"bad time {text!r}") from None


def _iso_ms(text: str) -> int:
    m = _ISO.match(text)
    if not m:
        raise ValueError(f"bad time {text!r}")
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return int(base.timestamp()) * 1000 + int((m.group(2) or "0").ljust(9, "0")[:3])


def _any_time_ms(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("bad time")
    if isinstance(value, int):
        return value * 1000
    if isinstance(value, float):
        return round(value * 1000)  # the agent sends whole milliseconds when signing
    if isinstance(value, str):
        return _iso_ms(value) if "T" in value else _decimal_ms(value)
    raise ValueError("bad time")


def _open_text(path: Path) -> str:
    try:
        raw = path.read_bytes() if str(path) != "-" else open(0, "rb").read()  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: broken gzip ({exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None


def _cloudwatch(path: Path, doc: dict[str, Any]) -> Iterator[Item]:
    for i, event in enumerate(doc["events"]):
        if not isinstance(event, dict) or not isinstance(event.get("timestamp"), int):
            raise InputError(f"{path}: events[{i}] is not a CloudWatch event")
        message = event.get("message", "")
        try:
            record = json.loads(message)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = {"log": message}  # log_key: only the line (not verifiable)
        yield Item(f"{path}:events[{i}]", event.get("logStreamName"), event["timestamp"],
                   record, ordered=False)


def _line_item(where: str, line: str, time_key: str) -> Item:
    m = _FB_FILE.match(line)
    if m:
        record = json.loads(m.group(3))
        return Item(where, m.group(1), _decimal_ms(m.group(2)), record, ordered=True)
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if set(obj) >= {"time", "tag", "record"} and isinstance(obj["record"], dict):
        return Item(where, obj["tag"], _iso_ms(obj["time"]), obj["record"], ordered=True)
    ms = _any_time_ms(obj.pop(time_key)) if time_key in obj else None
    return Item(where, None, ms, obj, ordered=True)


def read_input(path: Path, *, time_key: str = "date") -> Iterator[Item]:
    """The records in one file, in the order it holds them; InputError if unreadable."""
    text = _open_text(path)
    if text.lstrip().startswith("{") and '"events"' in text[:4096]:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("events"), list):
            yield from _cloudwatch(path, doc)
            return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield _line_item(f"{path}:{n}", line, time_key)
        except (ValueError, KeyError) as exc:
            raise InputError(f"{path}:{n}: not a record of a known format ({exc})") from None
