"""Parse the sizes and durations that configuration takes (pure)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from decimal import Decimal

__all__ = [
    "apply_env_defaults",
    "apply_file_defaults",
    "duration_arg",
    "parse_duration",
    "parse_size",
    "size_arg",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
            "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
            "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
            "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str) -> int:
    """Bytes in ``"512KiB"``, ``"32MiB"``, ``"1GB"``, ``"4096"``; ValueError otherwise."""
    m = _SIZE.match(str(text))
    if not m or (m.group(2) or "").lower() not in _FACTORS:
        raise ValueError(f"{text!r} is not a size; write e.g. 4096, 512KiB, 32MiB or 1GiB")
    # Decimal, not float: "4.1MB" is 4100000 bytes, not 4099999.
    return int(Decimal(m.group(1)) * _FACTORS[(m.group(2) or "").lower()])


def parse_duration(text: str) -> float:
    """Seconds in ``"50ms"``, ``"2s"``, ``"1.5"``, ``"5m"``; ValueError otherwise."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration; write e.g. 50ms, 2s, 1.5 or 5m")
    return float(m.group(1)) * _SECONDS[(m.group(2) or "").lower()]


def size_arg(text: str) -> int:
    """``argparse`` type for sizes."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> float:
    """``argparse`` type for durations."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def apply_env_defaults(parser: argparse.ArgumentParser, prefix: str,
                       environ: Mapping[str, str], *, skip: frozenset[str] = frozenset()
                       ) -> None:
    """Let ``PREFIX_OPTION`` environment variables set option defaults (flags still win).

    Options in ``skip`` (requests such as ``--check-config``, not settings) have no
    variable. A bad value is reported as a usage error that names the variable.
    """
    for action in parser._actions:  # argparse has no public iterator over options
        if (not action.option_strings or action.dest in ("help", "version")
                or action.dest in skip):
            continue
        name = prefix + action.dest.upper()
        if name not in environ:
            continue
        raw = environ[name]
        truthy = raw.strip().lower() in ("1", "true", "yes", "on")
        try:
            value: object
            if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
                value = truthy
            elif isinstance(action, argparse._StoreFalseAction):
                value = not truthy
            elif isinstance(action, argparse._StoreConstAction):
                value = action.const if truthy else action.default
            elif isinstance(action, argparse._CountAction):
                value = int(raw)
            else:
                convert = action.type if callable(action.type) else str
                if isinstance(action, argparse._AppendAction):
                    value = [convert(v) for v in raw.split(",") if v]
                else:
                    value = convert(raw)
            if action.choices is not None and value not in action.choices:
                raise argparse.ArgumentTypeError(
                    f"{raw!r} is not one of {', '.join(map(str, action.choices))}")
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"environment variable {name}: {exc}")
        parser.set_defaults(**{action.dest: value})


def apply_file_defaults(parser: argparse.ArgumentParser, values: Mapping[str, object],
                        source: str) -> None:
    """Let a config file's keys set option defaults (flags and environment still win).

    Keys are option names without dashes (``spool_size`` or ``spool-size``). A key
    that names no option, or a value the option does not take, is a usage error that
    names the file, the key and what would be right.
    """
    actions = {a.dest: a for a in parser._actions
               if a.option_strings and a.dest not in ("help", "version", "config")}
    for key, raw in values.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(actions))
            parser.error(f"{source}: unknown key {key!r}; the keys are: {known}")
        try:
            value = _file_value(action, raw)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            parser.error(f"{source}: key {key!r}: {exc}")
        parser.set_defaults(**{dest: value})


def _file_value(action: argparse.Action, raw: object) -> object:
    convert = action.type if callable(action.type) else str
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not true or false")
        return raw if isinstance(action, argparse._StoreTrueAction) else not raw
    if isinstance(action, argparse._AppendAction):
        items = raw if isinstance(raw, list) else [raw]
        return [convert(str(item)) for item in items]
    if isinstance(raw, (dict, list)):
        raise ValueError(f"expected a single value, got {type(raw).__name__}")
    value = convert(str(raw).lower() if isinstance(raw, bool) else str(raw))
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{raw!r} is not one of {', '.join(map(str, action.choices))}")
    return value
