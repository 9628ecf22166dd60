"""The agent's TOML configuration file (``--config FILE``): load, check, explain.

Top-level keys are the command-line options with ``_`` for ``-`` (``buffer_size =
"32MiB"``); flags and ``ENCLAVE_LOG_AGENT_*`` variables override them. Sources are
tables: ``[stdout]`` and ``[stderr]`` (processing of the app's streams),
``[[file]]``, ``[[forward]]``, ``[kmsg]``, and ``[redact]`` with ``[[redact.rule]]``.
Every error names the key and says what to write instead; nothing here raises
anything but ``ConfigError``.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fluent_forward.conventions import Overflow
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.errors import EndpointError
from fluent_forward.units import parse_duration, parse_size

from .config import (
    LEVELS,
    RESERVED_TAG_PREFIX,
    FileSource,
    ForwardInput,
    KmsgSource,
    Processing,
    Redaction,
    RedactRuleConfig,
)
from .patterns import PatternError, UserPattern
from .redact import BUILTIN_RULES
from .sources.forward_input import check_listen

__all__ = ["ConfigError", "FileSettings", "check_tag", "load_config_file", "parse_config",
           "redact_names"]

_TAG = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


@dataclass(slots=True)
class FileSettings:
    """What a configuration file says: option values (by argparse dest) and sources."""

    options: dict[str, Any] = field(default_factory=dict)
    stdout: Processing = field(default_factory=Processing)
    stderr: Processing = field(default_factory=Processing)
    files: list[FileSource] = field(default_factory=list)
    forward: list[ForwardInput] = field(default_factory=list)
    kmsg: KmsgSource | None = None
    redaction: Redaction = field(default_factory=Redaction)


def check_tag(tag: str, key: str) -> None:
    if not _TAG.match(tag):
        raise ConfigError(f"{key} {tag!r}: use letters, digits, '_' and '-', in parts "
                          "separated by dots (e.g. myapp or payments.api)")
    if tag.split(".")[0] == RESERVED_TAG_PREFIX:
        raise ConfigError(f"{key} {tag!r}: tags starting with '{RESERVED_TAG_PREFIX}' are "
                          "reserved for the agent's own records; pick another")


def redact_names(value: Any, key: str) -> tuple[str, ...]:
    """Built-in rule names from ``"all"``, ``"email,card"`` or a list."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{key}: expected rule names such as [\"email\", \"card\"] or "
                          "\"all\"")
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return tuple(BUILTIN_RULES)
    for n in names:
        if n not in BUILTIN_RULES:
            raise ConfigError(f"{key}: unknown rule {n!r}{_hint(n, BUILTIN_RULES)}; the "
                              f"built-in rules are {', '.join(BUILTIN_RULES)} (or \"all\")")
    return tuple(names)


# -- value checkers: each returns the converted value or raises ConfigError ---------------

def _hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _size(v: Any, key: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    try:
        if isinstance(v, str):
            return parse_size(v)
    except ValueError:
        pass
    raise ConfigError(f"{key}: expected a size such as \"32MiB\", \"512KiB\" or 4096, got {v!r}")


def _duration(v: Any, key: str) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
        return float(v)
    try:
        if isinstance(v, str):
            return parse_duration(v)
    except ValueError:
        pass
    raise ConfigError(f"{key}: expected a duration such as \"250ms\", \"2s\" or 1.5, "
                      f"got {v!r}")


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string (in quotes), got {v!r}")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _int(v: Any, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"{key}: expected a whole number of at least 1, got {v!r}")
    return v


def _strings(v: Any, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{key}: expected a list of strings, e.g. [\"^GET \", \"^POST \"]")
    return tuple(v)


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def check(v: Any, key: str) -> str:
        if v not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, choices))}, got "
                              f"{v!r}{_hint(str(v), choices)}")
        return str(v)
    return check


def _pattern(v: Any, key: str) -> str:
    text = _str(v, key)
    try:
        UserPattern(text, what=key)
    except PatternError as exc:
        raise ConfigError(str(exc)) from None
    return text


def _patterns(v: Any, key: str) -> tuple[str, ...]:
    texts = _strings(v, key)
    for i, text in enumerate(texts):
        _pattern(text, f"{key}[{i}]")
    return texts


#: Top-level keys: argparse dest -> checker.
_OPTIONS: dict[str, Callable[[Any, str], Any]] = {
    "relay": _str, "tag": _str, "hostname": _str, "shared_key": _str,
    "shared_key_file": _str, "buffer_size": _size,
    "overflow": _choice(*(p.value for p in Overflow)), "batch_size": _size,
    "flush_interval": _duration, "max_line_bytes": _size, "partial_flush": _duration,
    "window": _int, "drain_timeout": _duration, "handshake_wait": _duration,
    "log_level": _choice("debug", "info", "warning", "error"), "pty": _bool,
    "tee_console": _bool,
    "metrics_interval": _duration, "poll_interval": _duration, "rotated_idle": _duration,
}

_PROCESSING: dict[str, Callable[[Any, str], Any]] = {
    "multiline": _choice("indent"), "multiline_start": _pattern,
    "multiline_flush": _duration, "json": _bool, "time_key": _str, "time_format": _str,
    "level_regex": _pattern, "level_keys": _strings, "min_level": _choice(*LEVELS),
    "include": _patterns, "exclude": _patterns,
}
_RECORD_PROCESSING = {k: _PROCESSING[k]
                      for k in ("level_keys", "min_level", "include", "exclude")}


def _table(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: expected a table ([{key}])")
    return v


def _check_keys(table: Mapping[str, Any], allowed: Mapping[str, Any], where: str,
                not_here: Mapping[str, str] | None = None) -> None:
    for k in table:
        if k in allowed:
            continue
        prefix = f"{where}.{k}" if where else k
        if not_here and k in not_here:
            raise ConfigError(f"{prefix}: {not_here[k]}")
        raise ConfigError(f"{prefix}: unknown key{_hint(k, allowed)}; the keys here are "
                          f"{', '.join(sorted(allowed))}")


def _processing(table: Mapping[str, Any], where: str,
                allowed: Mapping[str, Callable[[Any, str], Any]]) -> Processing:
    values = {k: allowed[k](v, f"{where}.{k}") for k, v in table.items() if k in allowed}
    if "multiline" in values and "multiline_start" in values:
        raise ConfigError(f"{where}: set multiline = \"indent\" or multiline_start, not both")
    if "time_key" in values and not values.get("json"):
        raise ConfigError(f"{where}.time_key: only JSON records have keys; add json = true")
    return Processing(**values)


_NOT_FOR_RECORDS = {k: "does not apply here: these records are structured already; "
                    "remove it" for k in ("multiline", "multiline_start", "multiline_flush",
                                          "json", "time_key", "time_format", "level_regex")}


def _files(v: Any) -> list[FileSource]:
    if not isinstance(v, list):
        raise ConfigError("file: write each file as its own [[file]] table with a path")
    out = []
    own: dict[str, Callable[[Any, str], Any]] = {
        "path": _str, "tag": _str, "delete_rotated": _bool, "copytruncate": _bool}
    for i, t in enumerate(v):
        where = f"file[{i}]"
        t = _table(t, where)
        _check_keys(t, {**own, **_PROCESSING}, where)
        if "path" not in t:
            raise ConfigError(f"{where}: needs a path, e.g. path = \"/var/log/app/*.log\"")
        values = {k: own[k](t[k], f"{where}.{k}") for k in own if k in t}
        if "tag" in values:
            check_tag(values["tag"], f"{where}.tag")
        out.append(FileSource(**values, processing=_processing(t, where, _PROCESSING)))
    return out


def _forward(v: Any) -> list[ForwardInput]:
    if not isinstance(v, list):
        raise ConfigError("forward: write each listener as its own [[forward]] table")
    out = []
    own = {"listen": _str, "shared_key": _str}
    for i, t in enumerate(v):
        where = f"forward[{i}]"
        t = _table(t, where)
        _check_keys(t, {**own, **_RECORD_PROCESSING}, where, _NOT_FOR_RECORDS)
        if "listen" not in t:
            raise ConfigError(f"{where}: needs listen = \"unix:///run/app/forward.sock\" or "
                              "\"tcp://127.0.0.1:24224\"")
        out.append(ForwardInput(listen_endpoint(_str(t["listen"], f"{where}.listen"),
                                                f"{where}.listen", check_listen),
                                shared_key=_str(t["shared_key"], f"{where}.shared_key")
                                if "shared_key" in t else None,
                                processing=_processing(t, where, _RECORD_PROCESSING)))
    return out


def listen_endpoint(url: str, key: str, check: Callable[[Any], str | None]) -> Any:
    try:
        endpoint = parse_endpoint(url, listen=True)
    except EndpointError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    reason = check(endpoint)
    if reason is not None:
        raise ConfigError(f"{key} {url!r}: {reason}")
    return endpoint


def _kmsg(v: Any) -> KmsgSource:
    t = _table(v, "kmsg")
    own: dict[str, Callable[[Any, str], Any]] = {"path": _str, "tag": _str}
    _check_keys(t, {**own, **_RECORD_PROCESSING}, "kmsg", _NOT_FOR_RECORDS)
    values = {k: own[k](t[k], f"kmsg.{k}") for k in own if k in t}
    if "tag" in values:
        check_tag(values["tag"], "kmsg.tag")
    return KmsgSource(**values, processing=_processing(t, "kmsg", _RECORD_PROCESSING))


def _redaction(v: Any) -> Redaction:
    t = _table(v, "redact")
    _check_keys(t, {"builtin": None, "rule": None, "pattern_timeout": None}, "redact")
    builtin = redact_names(t.get("builtin", []), "redact.builtin")
    timeout = _duration(t.get("pattern_timeout", 0.1), "redact.pattern_timeout")
    rules = []
    raw = t.get("rule", [])
    if not isinstance(raw, list):
        raise ConfigError("redact.rule: write each rule as its own [[redact.rule]] table")
    names = set(builtin)
    for i, r in enumerate(raw):
        where = f"redact.rule[{i}]"
        r = _table(r, where)
        _check_keys(r, {"name": None, "pattern": None, "replacement": None}, where)
        for need in ("name", "pattern"):
            if need not in r:
                raise ConfigError(f"{where}: needs {need} (name = \"internal_id\", "
                                  "pattern = 'CUST-\\d{8}')")
        name = _str(r["name"], f"{where}.name")
        if name in names or name in BUILTIN_RULES:
            raise ConfigError(f"{where}.name {name!r}: already used; rule names count "
                              "redactions in metrics, so each must be unique")
        names.add(name)
        pattern = _pattern(r["pattern"], f"{where}.pattern")
        replacement = _str(r.get("replacement", f"[REDACTED:{name}]"), f"{where}.replacement")
        rules.append(RedactRuleConfig(name, pattern, replacement))
    return Redaction(builtin, tuple(rules), timeout)


def parse_config(doc: Mapping[str, Any]) -> FileSettings:
    """Check a parsed TOML document; return what it sets."""
    tables: dict[str, Callable[[Any], Any]] = {
        "stdout": lambda v: _processing(_keys_ok(v, "stdout"), "stdout", _PROCESSING),
        "stderr": lambda v: _processing(_keys_ok(v, "stderr"), "stderr", _PROCESSING),
        "file": _files, "forward": _forward, "kmsg": _kmsg, "redact": _redaction}
    _check_keys(doc, {**_OPTIONS, **tables}, "")
    settings = FileSettings()
    for key, value in doc.items():
        if key in _OPTIONS:
            settings.options[key] = _OPTIONS[key](value, key)
        else:
            setattr(settings, "forward" if key == "forward" else
                    "files" if key == "file" else "redaction" if key == "redact" else key,
                    tables[key](value))
    if "tag" in settings.options:
        check_tag(settings.options["tag"], "tag")
    return settings


def _keys_ok(v: Any, where: str) -> dict[str, Any]:
    t = _table(v, where)
    _check_keys(t, _PROCESSING, where)
    return t


def load_config_file(path: str) -> FileSettings:
    """Read and check ``path``; ``ConfigError`` says what is wrong and where."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return parse_config(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
