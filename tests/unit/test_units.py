"""nel_config.units and nel_config.argv: sizes, durations, environment defaults."""

from __future__ import annotations

import dataclasses

import pytest

from nel_config.argv import Parser, add_options, apply_env_defaults
from nel_config.options import (
    BOOL,
    DURATION,
    INT,
    SIZE,
    STR,
    choice,
    option,
    options_of,
    repeated,
)
from nel_config.units import parse_duration, parse_size


@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("4096", 4096), ("7b", 7), (" 7 B ", 7),
    ("1k", 1000), ("1kb", 1000), ("1KB", 1000), ("1Ki", 1024), ("512KiB", 512 * 1024),
    ("1KIB", 1024), ("2 MB", 2_000_000), ("32MiB", 32 * 1024**2), ("1GB", 10**9),
    ("1GiB", 2**30), ("1g", 10**9), ("2TB", 2 * 10**12), ("1TiB", 2**40),
    ("1.5KiB", 1536), ("0.5MiB", 512 * 1024), ("1.5", 1),
])
def test_parse_size_valid(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [
    "", " ", "abc", "KiB", "-1", "+1", "1.5.5", "1XB", "1 ib", "1i", "1e3", "1 2",
    "1KiBs", "1PB", ".5K", "1,000", "0x10",
])
def test_parse_size_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "size"), [("4.1MB", 4_100_000), ("8.2MB", 8_200_000)])
def test_parse_size_decimal_is_exact(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("50ms", 0.05), ("2s", 2.0), ("1.5", 1.5), ("5m", 300.0), ("1h", 3600.0),
    (" 10 MS ", 0.01), ("0.5h", 1800.0), ("2S", 2.0),
])
def test_parse_duration_valid(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", "ms", "-1", "1d", "1.2.3", "5 minutes", "1us", "1 s s", "1e3", "inf", "nan",
])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@dataclasses.dataclass(frozen=True)
class App:
    max_size: int = option(100, SIZE, help="size")
    timeout: float = option(1.0, DURATION, help="timeout")
    port: int = option(1, INT, help="port")
    name: str = option("n", STR, help="name")
    verbose: bool = option(False, BOOL, help="verbose")
    tag: tuple[str, ...] = option((), repeated(list, "TAG"), help="tags")
    mode: str = option("a", choice("a", "b"), help="mode")
    secret: str = option("s", STR, env=False, help="not from the environment")


OPTIONS = options_of(App)


def build_parser() -> Parser:
    p = Parser(prog="prog")
    p.add_argument("target", nargs="?", default="t")
    p.add_argument("--version", action="version", version="1")
    add_options(p, OPTIONS)
    return p


def test_env_defaults_apply() -> None:
    parser = build_parser()
    apply_env_defaults(parser, OPTIONS, "APP_", {
        "APP_MAX_SIZE": "1KiB", "APP_TIMEOUT": "50ms", "APP_PORT": "8", "APP_NAME": "x",
        "APP_VERBOSE": "yes", "APP_TAG": "a,b,", "APP_MODE": "b",
    })
    args = parser.parse_args([])
    assert args.max_size == 1024
    assert args.timeout == pytest.approx(0.05)
    assert args.port == 8
    assert args.name == "x"
    assert args.verbose is True
    assert args.tag == ["a", "b"]
    assert args.mode == "b"


def test_flags_win_over_env() -> None:
    parser = build_parser()
    apply_env_defaults(parser, OPTIONS, "APP_", {"APP_MAX_SIZE": "1KiB", "APP_PORT": "8"})
    args = parser.parse_args(["--max-size", "2KiB", "--port", "9"])
    assert (args.max_size, args.port) == (2048, 9)


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", ""])
def test_env_false_for_store_true(raw: str) -> None:
    parser = build_parser()
    apply_env_defaults(parser, OPTIONS, "APP_", {"APP_VERBOSE": raw})
    assert parser.parse_args([]).verbose is False


def test_env_ignores_other_prefixes_positionals_help_and_version() -> None:
    parser = build_parser()
    apply_env_defaults(parser, OPTIONS, "APP_", {
        "OTHER_PORT": "5", "APP_TARGET": "zz", "PORT": "5", "APP_HELP": "1", "APP_VERSION": "2"})
    args = parser.parse_args([])
    assert (args.port, args.target) == (1, "t")


@pytest.mark.parametrize(("env", "says"), [
    ({"APP_MAX_SIZE": "huge"}, "'huge' is not a size"),
    ({"APP_TIMEOUT": "soon"}, "'soon' is not a duration"),
    ({"APP_PORT": "eighty"}, "invalid literal"),
    ({"APP_MODE": "c"}, "expected one of 'a', 'b', got 'c'"),
])
def test_env_bad_value_exits_naming_the_variable(env: dict[str, str], says: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as info:
        apply_env_defaults(parser, OPTIONS, "APP_", env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    [name] = env
    assert f"environment variable {name}" in err
    assert says in err


def test_env_flag_gives_a_bool() -> None:
    parser = build_parser()
    apply_env_defaults(parser, OPTIONS, "APP_", {"APP_VERBOSE": "false"})
    assert type(parser.parse_args([]).verbose) is bool


def test_options_declared_without_a_variable_ignore_the_environment() -> None:
    parser = build_parser()
    apply_env_defaults(parser, OPTIONS, "APP_", {"APP_SECRET": "from env"})
    assert parser.parse_args([]).secret == "s"
