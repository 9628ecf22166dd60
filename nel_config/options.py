"""Options declared once: on the configuration dataclass's field, with all that derives.

A field of a side's frozen configuration dataclass becomes an option by its default::

    spool_bytes: int = option(1 << 30, SIZE, "--spool-size", restart=True,
                              help="cap on the spool's size")

From that one declaration come the flag (``--spool-size SIZE``), its help with the
default shown in the option's unit (``1GiB``), the environment variable
(``ENCLAVE_LOG_RELAY_SPOOL_SIZE``), the TOML key (``spool_size``), the value's checks
(``minimum``, ``validate``), its place in the effective-configuration dump, whether a
reload applies it (``restart``) and its row in the README's option table. Options that
are not a field (``--config``, the agent's sources) are ``Option`` values of their own.

A ``Kind`` says how a value is read from text (flags, environment) and from TOML,
and how it is shown. Nothing here raises anything but ``ConfigError`` for bad input.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "BOOL",
    "DURATION",
    "INT",
    "LOG_LEVELS",
    "OCTAL",
    "PATH_OR_NONE",
    "SIZE",
    "STR",
    "ConfigError",
    "Kind",
    "Option",
    "choice",
    "file_values",
    "hint",
    "option",
    "options_of",
    "read_config",
    "repeated",
]

T = TypeVar("T")

#: The log levels both programs take for their own diagnostics.
LOG_LEVELS = ("debug", "info", "warning", "error")

_METADATA = "nel_config.option"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


def hint(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True)
class Kind:
    """How one kind of value is read and shown.

    Attributes:
        metavar: its placeholder in help (``SIZE``, ``DURATION``, ``URL`` ...).
        parse: text (a flag, a variable, a TOML string) to the value; ``ValueError``
            says why not.
        show: the value as text, for help defaults and dumps.
        expected: what a TOML value of another type is told to be instead.
        toml_types: the TOML types taken as they are (not negative), besides strings.
        flag: a flag without a value (``--pty``), true when given; TOML: true or false.
        many: repeatable (``--allow-cid A --allow-cid B``); turns the texts into the value.
    """

    metavar: str | None
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = str
    expected: str = "a string (in quotes)"
    toml_types: tuple[type, ...] = ()
    flag: bool = False
    many: Callable[[list[str]], Any] | None = None

    def from_toml(self, value: Any, key: str) -> Any:
        """A TOML value as this kind, or ``ConfigError`` naming ``key``."""
        if self.many is not None:
            items = [value] if isinstance(value, str) else value
            if isinstance(items, list) and all(isinstance(v, str) for v in items):
                return items
        elif isinstance(value, str) and not self.flag:
            try:
                return self.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        elif type(value) in self.toml_types and not value < 0:  # bool is not an int here
            return float(value) if float in self.toml_types else value
        raise ConfigError(f"{key}: expected {self.expected}, got {value!r}")


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise ValueError(f"{text!r} is not an octal mode like 0660") from None


def _none_or(text: str) -> str | None:
    return None if text.lower() in ("none", "") else text


STR = Kind(None, str)
INT = Kind("N", int, expected="a whole number", toml_types=(int,))
SIZE = Kind("SIZE", parse_size, format_size, 'a size such as "32MiB", "512KiB" or 4096',
            (int,))
DURATION = Kind("DURATION", parse_duration, format_duration,
                'a duration such as "250ms", "2s" or 1.5', (int, float))
BOOL = Kind(None, str, lambda v: str(v).lower(), "true or false", (bool,), flag=True)
OCTAL = Kind("MODE", _octal, lambda v: f"0{v:o}", 'an octal mode such as "0660"', (int,))
#: A path, or ``none`` for none (None).
PATH_OR_NONE = Kind("PATH", _none_or, show=lambda v: "none" if v is None else str(v))


def choice(*values: str, of: type[enum.StrEnum] | None = None) -> Kind:
    """One of ``values`` (or of the ``StrEnum`` ``of``'s values, giving its members)."""
    names = tuple(m.value for m in of) if of is not None else values

    def parse(text: str) -> Any:
        if text not in names:
            raise ValueError(f"expected one of {', '.join(map(repr, names))}, got "
                             f"{text!r}{hint(text, names)}")
        return of(text) if of is not None else text
    return Kind("{" + ",".join(names) + "}", parse,
                expected="one of " + ", ".join(map(repr, names)))


def repeated(many: Callable[[list[str]], Any], metavar: str) -> Kind:
    """A repeatable option: every ``--flag X`` (or a TOML list) goes to ``many``."""
    return Kind(metavar, str, expected="a string or a list of strings", many=many)


@dataclass(frozen=True, slots=True)
class Option:
    """One option: what a user writes and where its value goes.

    Attributes:
        flag: the long flag; the TOML key and the environment name derive from it.
        kind: how its value is read and shown.
        help: what it does (the default is added from ``default``).
        default: the value when nothing sets it.
        field: the configuration attribute it sets (None: the side reads it itself).
        restart: a reload keeps the running value: it changes only on restart.
        secret: also ``FLAG-file PATH``; never shown in dumps.
        env: an environment variable may set it (not for requests like --check-config).
        minimum: the smallest value allowed.
        validate: a further check: ``validate(value, flag)`` raises ``ConfigError``
            naming the flag.
        default_text: how to show a default that is computed when parsing.
        dynamic: computes the default when parsing (the host's name ...).
        const: the value of the flag given without one (``--kmsg [PATH]``).
        metavar: its placeholder, if not the kind's.
    """

    flag: str
    kind: Kind
    help: str
    default: Any = None
    field: str | None = None
    restart: bool = False
    secret: bool = False
    env: bool = True
    minimum: Any = None
    validate: Callable[[Any, str], Any] | None = None
    default_text: str | None = None
    dynamic: Callable[[], Any] | None = None
    const: Any = None
    metavar: str | None = None

    @property
    def key(self) -> str:
        """The TOML key, the argparse dest, and the environment name in lower case."""
        return self.flag.removeprefix("--").replace("-", "_")

    def shown_default(self) -> str | None:
        if self.default_text is not None:
            return self.default_text
        if self.default is None or self.kind.flag:
            return None
        return self.kind.show(self.default)

    def file_option(self) -> Option:
        """The ``FLAG-file PATH`` companion of a secret option."""
        return Option(f"{self.flag}-file", STR, f"read {self.flag} from this file "
                      "(keeps it out of ps)", metavar="PATH", restart=self.restart,
                      env=self.env)


def option(default: T, kind: Kind = STR, flag: str | None = None, *, help: str,
           restart: bool = False, secret: bool = False, env: bool = True,
           minimum: Any = None, validate: Callable[[Any, str], Any] | None = None,
           default_text: str | None = None, dynamic: Callable[[], Any] | None = None,
           metavar: str | None = None) -> T:
    """Declare a configuration field an option (see the module's docstring).

    ``flag`` defaults to the field's name with dashes (``--max-connections``).
    """
    spec = Option(flag or "", kind, help, restart=restart, secret=secret, env=env,
                  minimum=minimum, validate=validate, default_text=default_text,
                  dynamic=dynamic, metavar=metavar)
    return dataclasses.field(default=default, metadata={_METADATA: spec})


def options_of(config: type) -> tuple[Option, ...]:
    """The options declared on a configuration dataclass, in field order, each followed
    by its ``-file`` companion if it is secret."""
    out: list[Option] = []
    for f in dataclasses.fields(config):
        spec = f.metadata.get(_METADATA)
        if spec is None:
            continue
        spec = dataclasses.replace(spec, field=f.name, default=f.default,
                                   flag=spec.flag or "--" + f.name.replace("_", "-"))
        out.append(spec)
        if spec.secret:
            out.append(spec.file_option())
    return tuple(out)


def read_config(path: str, read: Callable[[dict[str, Any]], T]) -> T:
    """``read`` of the TOML file ``path``; ``ConfigError`` says why it cannot be read,
    and ``read``'s own is prefixed with ``path``."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return read(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def file_values(doc: Mapping[str, Any], options: Sequence[Option],
                others: Collection[str] = ()) -> dict[str, Any]:
    """The option values a TOML document's top-level keys set, by option key.

    Keys are the long options without dashes (``spool_size``; ``spool-size`` too).
    ``options``: those a file may set (the declared fields, not requests such as
    ``--config``); ``others``: further keys the caller reads itself (the agent's
    source tables).
    """
    by_key = {o.key: o for o in options}
    known = [*by_key, *others]
    out: dict[str, Any] = {}
    for raw, value in doc.items():
        key = raw.replace("-", "_")
        if key in others:
            continue
        spec = by_key.get(key)
        if spec is None:
            raise ConfigError(f"{raw}: unknown key{hint(key, known)}; the keys are the long "
                              "options without their dashes")
        out[key] = spec.kind.from_toml(value, raw)
    return out
