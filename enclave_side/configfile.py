"""The agent's TOML configuration file (``--config FILE``): load, check, explain.

Top-level keys are the command-line options with ``_`` for ``-`` (``buffer_size =
"32MiB"``); flags and ``ENCLAVE_LOG_AGENT_*`` variables override them. Sources are
tables: ``[stdout]`` and ``[stderr]`` (processing of the app's streams),
``[[file]]``, ``[[forward]]``, ``[kmsg]``, and ``[redact]`` with ``[[redact.rule]]``.
Every error names the key and says what to write instead; nothing here raises
anything but ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fluent_forward.endpoints import Endpoint, parse_endpoint
from fluent_forward.errors import EndpointError
from nel_config.options import (
    BOOL,
    DURATION,
    STR,
    ConfigError,
    choice,
    file_values,
    hint,
    read_config,
    repeated,
)

from .config import (
    AGENT_OPTIONS,
    LEVELS,
    AgentConfig,
    FileSource,
    ForwardInput,
    KmsgSource,
    Processing,
    Redaction,
    RedactRuleConfig,
    check_tag,
)
from .patterns import PatternError, UserPattern
from .redact import BUILTIN_RULES
from .sources.forward_input import check_listen

__all__ = ["ConfigError", "check_tag", "effective", "load_config_file", "parse_config",
           "redact_names"]

T = TypeVar("T")
#: Reads one TOML value (the key given for errors), or raises ``ConfigError``.
Checker = Callable[[Any, str], Any]


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
            raise ConfigError(f"{key}: unknown rule {n!r}{hint(n, BUILTIN_RULES)}; the "
                              f"built-in rules are {', '.join(BUILTIN_RULES)} (or \"all\")")
    return tuple(names)


# -- value checkers for the source tables: each returns the value or raises ConfigError --

_str = STR.from_toml
_bool = BOOL.from_toml
_duration = DURATION.from_toml
#: A string or a list of them, as every repeatable option takes them.
_TEXTS = repeated(tuple, "TEXT")


def _strings(v: Any, key: str) -> tuple[str, ...]:
    return tuple(_TEXTS.from_toml(v, key))


def _pattern(v: Any, key: str) -> str:
    text: str = _str(v, key)
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


_PROCESSING: dict[str, Checker] = {
    "multiline": choice("indent").from_toml, "multiline_start": _pattern,
    "multiline_flush": _duration, "json": _bool, "time_key": _str, "time_format": _str,
    "level_regex": _pattern, "level_keys": _strings, "min_level": choice(*LEVELS).from_toml,
    "include": _patterns, "exclude": _patterns,
}
_RECORD_PROCESSING = {k: _PROCESSING[k]
                      for k in ("level_keys", "min_level", "include", "exclude")}


def _values(v: Any, where: str, checks: Mapping[str, Checker], need: tuple[str, ...] = (),
            how: str = "", not_here: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A table's values by key, each read by its checker; ``need``: keys it must have,
    and ``how`` to write them; ``not_here``: keys refused with the reason given."""
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a table ([{where}])")
    for k in [k for k in v if k not in checks]:  # the first in the file is named
        if not_here and k in not_here:
            raise ConfigError(f"{where}.{k}: {not_here[k]}")
        raise ConfigError(f"{where}.{k}: unknown key{hint(k, checks)}; the keys here are "
                          f"{', '.join(sorted(checks))}")
    if any(k not in v for k in need):
        raise ConfigError(f"{where}: needs {how}")
    return {k: check(v[k], f"{where}.{k}") for k, check in checks.items() if k in v}


def _tables(v: Any, key: str, what: str) -> list[Any]:
    """The tables of an array of tables (``[[key]]``)."""
    if not isinstance(v, list):
        raise ConfigError(f"{key}: write each {what} as its own [[{key}]] table")
    return v


def _processing(values: dict[str, Any], where: str) -> Processing:
    if "multiline" in values and "multiline_start" in values:
        raise ConfigError(f"{where}: set multiline = \"indent\" or multiline_start, not both")
    if "time_key" in values and not values.get("json"):
        raise ConfigError(f"{where}.time_key: only JSON records have keys; add json = true")
    return Processing(**values)


#: The line keys, which a source of structured records refuses, saying why.
_NOT_FOR_RECORDS = {k: "does not apply here: these records are structured already; remove it"
                    for k in _PROCESSING.keys() - _RECORD_PROCESSING.keys()}


def _source(cls: Callable[..., T], t: Any, where: str, own: Mapping[str, Checker],
            processing: Mapping[str, Checker], need: tuple[str, ...] = (), how: str = "") -> T:
    """A source table: its own keys (``need``: those it must have, and ``how`` to write
    them), then what is done to its records; its tag, if set, is one an app may use."""
    # A source of structured records: a line key there is told why it does not apply.
    values = _values(t, where, {**own, **processing}, need, how,
                     _NOT_FOR_RECORDS if processing is _RECORD_PROCESSING else None)
    if "tag" in values:
        check_tag(values["tag"], f"{where}.tag")
    lines = _processing({k: values.pop(k) for k in processing if k in values}, where)
    return cls(**values, processing=lines)


def _files(v: Any) -> list[FileSource]:
    own = {"path": _str, "tag": _str, "delete_rotated": _bool, "copytruncate": _bool}
    return [_source(FileSource, t, f"file[{i}]", own, _PROCESSING, ("path",),
                    'a path, e.g. path = "/var/log/app/*.log"')
            for i, t in enumerate(_tables(v, "file", "file"))]


def _forward(v: Any) -> list[ForwardInput]:
    own = {"listen": lambda u, key: listen_endpoint(_str(u, key), key), "shared_key": _str}
    return [_source(ForwardInput, t, f"forward[{i}]", own, _RECORD_PROCESSING, ("listen",),
                    'listen = "unix:///run/app/forward.sock" or "tcp://127.0.0.1:24224"')
            for i, t in enumerate(_tables(v, "forward", "listener"))]


def listen_endpoint(url: str, key: str) -> Endpoint:
    """The address a Forward input listens on; ``ConfigError`` names ``key``."""
    try:
        endpoint = parse_endpoint(url, listen=True)
    except EndpointError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    reason = check_listen(endpoint)
    if reason is not None:
        raise ConfigError(f"{key} {url!r}: {reason}")
    return endpoint


def _kmsg(v: Any) -> KmsgSource:
    return _source(KmsgSource, v, "kmsg", {"path": _str, "tag": _str}, _RECORD_PROCESSING)


_RULE: dict[str, Checker] = {"name": _str, "pattern": _pattern, "replacement": _str}


def _redaction(v: Any) -> Redaction:
    t = _values(v, "redact", {"builtin": redact_names, "pattern_timeout": _duration,
                              "rule": lambda r, key: _tables(r, key, "rule")})
    names = set(t.get("builtin", ()))
    rules = []
    for i, r in enumerate(t.pop("rule", [])):
        where = f"redact.rule[{i}]"
        rule = _values(r, where, _RULE, ("name", "pattern"),
                       "a name and a pattern (name = \"internal_id\", pattern = 'CUST-\\d{8}')")
        name = rule["name"]
        if name in names or name in BUILTIN_RULES:
            raise ConfigError(f"{where}.name {name!r}: already used; rule names count "
                              "redactions in metrics, so each must be unique")
        names.add(name)
        rules.append(RedactRuleConfig(name, rule["pattern"],
                                      rule.get("replacement", f"[REDACTED:{name}]")))
    return Redaction(**t, rules=tuple(rules))


def parse_config(doc: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a parsed TOML document; return what it sets: option values (by option key)
    and sources (by ``AgentConfig`` field)."""
    tables: dict[str, Callable[[Any], Any]] = {
        "stdout": lambda v: _processing(_values(v, "stdout", _PROCESSING), "stdout"),
        "stderr": lambda v: _processing(_values(v, "stderr", _PROCESSING), "stderr"),
        "file": _files, "forward": _forward, "kmsg": _kmsg, "redact": _redaction}
    options = file_values(doc, AGENT_OPTIONS, others=tables)
    field_of = {"file": "files", "forward": "forward_inputs", "redact": "redaction"}
    return options, {field_of.get(k, k): tables[k](v) for k, v in doc.items() if k in tables}


def load_config_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and check ``path``; ``ConfigError`` says what is wrong and where."""
    return read_config(path, parse_config)


def effective(config: AgentConfig) -> dict[str, Any]:
    """The configuration as JSON-able data, secrets elided (a Forward input's key too)."""
    secrets = {o.field for o in AGENT_OPTIONS if o.secret}

    def plain(value: Any) -> Any:
        if isinstance(value, Endpoint):
            return str(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: "(set)" if f.name in secrets and getattr(value, f.name)
                    else plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    data: dict[str, Any] = plain(config)
    return data
