"""Declared options on the command line: the parser, the environment, the values.

``Parser`` is an ``ArgumentParser`` whose errors are one line and a hint, that
suggests the nearest option or command for a mistyped one, and that raises
``ConfigError`` instead of exiting when built with ``raising=True`` (a reload must
not end the relay over a typo). Layers, lowest first: the declared default, the
``--config`` file, ``PREFIX_OPTION`` variables, the flags.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from .options import ConfigError, Option, hint

__all__ = [
    "Parser",
    "add_options",
    "apply_env_defaults",
    "config_path",
    "option_values",
    "read_secret",
]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with one-line errors that name the nearest right spelling.

    Args:
        raising: raise ``ConfigError`` instead of printing and exiting 2.
        extra_hint: said of arguments left over after the options (the agent: the
            app's command belongs after ``--``).
    """

    def __init__(self, *args: Any, raising: bool = False, extra_hint: str = "",
                 **kwargs: Any) -> None:
        self.raising = raising
        self.extra_hint = extra_hint
        self.flags: list[str] = []
        self.commands: dict[str, Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        self.flags += [a for a in args if isinstance(a, str) and a.startswith("--")]
        return super().add_argument(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        def make(**options: Any) -> Parser:
            parser = Parser(raising=self.raising, **options)
            self.commands[str(options["prog"]).rsplit(" ", 1)[-1]] = parser
            return parser
        kwargs.setdefault("parser_class", make)
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        if self.raising:
            raise ConfigError(message)
        self.exit(2, f"{self.prog}: error: {message}; try {self.prog} --help\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self.commands.get(str(getattr(ns, "command", "")))
            (command or self).reject(extras)
        return ns

    def reject(self, extras: list[str]) -> NoReturn:
        """Say what is wrong with the first argument no option took."""
        first = extras[0]
        if first.startswith("-") and first != "-":
            name = first.split("=", 1)[0]
            close = difflib.get_close_matches(name, self.flags, n=1)
            self.error(f"unknown option {name}"
                       + (f" (did you mean {close[0]}?)" if close else ""))
        self.error(f"unexpected argument {first!r}" + (f"; {self.extra_hint}"
                                                       if self.extra_hint else ""))

    def unknown_command(self, word: str) -> NoReturn:
        self.error(f"unknown command {word!r}" + (
            hint(word, self.commands) or f"; the commands are {', '.join(self.commands)}"))


def _type(option: Option) -> Any:
    def convert(text: str) -> Any:
        try:
            return option.kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = option.kind.metavar or "value"
    return convert


def _help(option: Option) -> str:
    text = option.help
    shown = option.shown_default()
    if shown is not None:
        text += f" (default: {shown})"
    if option.restart:
        text += "; only a restart changes it (a reload keeps it)"
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add each declared option to ``parser`` (dest: the option's key)."""
    for o in options:
        common: dict[str, Any] = {"dest": o.key, "help": _help(o)}
        metavar = o.metavar or o.kind.metavar
        if o.kind.flag:
            parser.add_argument(o.flag, action="store_true", default=bool(o.default), **common)
        elif o.kind.many is not None:
            parser.add_argument(o.flag, action="append", default=None, metavar=metavar,
                                **common)
        elif o.const is not None:
            parser.add_argument(o.flag, nargs="?", const=o.const, default=o.default,
                                type=_type(o), metavar=metavar, **common)
        else:
            parser.add_argument(o.flag, type=_type(o), metavar=metavar,
                                default=None if o.dynamic else o.default, **common)


def read_secret(path: str, flag: str) -> str:
    """The secret in a ``--*-file``, stripped; ``ConfigError`` names the flag."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{flag}-file {path}: {exc.strerror}") from None


def option_values(ns: argparse.Namespace, options: Sequence[Option],
                  parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The configuration fields the parsed options set, checked; errors go to
    ``parser.error``, naming the flag."""
    values: dict[str, Any] = {}
    for o in options:
        if o.field is None:
            continue
        value = getattr(ns, o.key)
        try:
            if o.kind.many is not None:
                value = o.default if value is None else o.kind.many(value)
            if value is None and o.dynamic is not None:
                value = o.dynamic()
            if o.secret and getattr(ns, o.key + "_file", None):
                value = read_secret(getattr(ns, o.key + "_file"), o.flag)
            if o.minimum is not None and value < o.minimum:
                raise ConfigError(f"{o.flag} must be at least {o.kind.show(o.minimum)}")
            if o.validate is not None:
                o.validate(value, o.flag)
        except ConfigError as exc:  # its message names the flag
            parser.error(str(exc))
        except ValueError as exc:  # a repeatable option's parser's
            parser.error(f"{o.flag}: {exc}")
        values[o.field] = value
    return values


def config_path(args: Sequence[str], environ: Mapping[str, str], prefix: str,
                *, check: bool = False) -> tuple[str | None, bool]:
    """The configuration file (``--config``, else ``PREFIX_CONFIG``), and, with
    ``check``, whether it came from ``--check-config`` (a command-line request only)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    if check:
        pre.add_argument("--check-config")
    known, _ = pre.parse_known_args(args)
    if check and known.check_config:
        return known.check_config, True
    return known.config or environ.get(prefix + "CONFIG") or None, False


def apply_env_defaults(parser: argparse.ArgumentParser, options: Sequence[Option],
                       prefix: str, environ: Mapping[str, str]) -> None:
    """Let ``PREFIX_OPTION`` environment variables set the defaults of ``options``
    (added to ``parser`` by ``add_options``; flags still win).

    Options declared ``env=False`` (requests such as ``--check-config``, not settings)
    have no variable. A flag is set by 1, true, yes or on; a repeatable option takes a
    comma list. A value its kind refuses is a usage error that names the variable.
    """
    values: dict[str, Any] = {}
    for o in options:
        name = prefix + o.key.upper()
        if not o.env or name not in environ:
            continue
        raw = environ[name]
        try:
            if o.kind.flag:
                values[o.key] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif o.kind.many is not None:
                values[o.key] = [v for v in raw.split(",") if v]
            else:
                values[o.key] = o.kind.parse(raw)
        except ValueError as exc:
            parser.error(f"environment variable {name}: {exc}")
    parser.set_defaults(**values)
