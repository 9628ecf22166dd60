"""nel_config: one declaration gives the flag, the variable, the TOML key and the rest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nel_config.argv import Parser, add_options, apply_env_defaults, option_values
from nel_config.options import (
    BOOL,
    DURATION,
    INT,
    PATH_OR_NONE,
    SIZE,
    STR,
    ConfigError,
    choice,
    file_values,
    option,
    options_of,
    repeated,
)
from nel_config.units import format_duration, format_size
from parent_side import relay as relay_module
from parent_side.config import SERVE_OPTIONS, RelayConfig


@dataclasses.dataclass(frozen=True)
class Toy:
    spool_bytes: int = option(1 << 30, SIZE, "--spool-size", restart=True, minimum=1 << 20,
                              help="cap")
    idle: float = option(300.0, DURATION, help="idle")
    workers: int = option(4, INT, minimum=1, help="workers")
    verbose: bool = option(False, BOOL, help="say more")
    mode: str = option("a", choice("a", "b"), help="mode")
    key: str | None = option(None, STR, secret=True, help="key")
    home: str | None = option("/x", PATH_OR_NONE, help="home")
    tags: tuple[str, ...] = option((), repeated(tuple, "TAG"), "--tag", help="tags")
    internal: int = 7  # not an option


OPTIONS = options_of(Toy)


def parse(argv: list[str], env: dict[str, str] | None = None,
          doc: dict[str, object] | None = None) -> Toy:
    parser = Parser(prog="toy", raising=True)
    add_options(parser, OPTIONS)
    parser.set_defaults(**file_values(doc or {}, OPTIONS))
    apply_env_defaults(parser, OPTIONS, "TOY_", env or {})
    return Toy(**option_values(parser.parse_args(argv), OPTIONS, parser))


def test_the_declaration_names_the_flag_key_and_variable() -> None:
    assert [o.flag for o in OPTIONS] == [
        "--spool-size", "--idle", "--workers", "--verbose", "--mode", "--key", "--key-file",
        "--home", "--tag"]
    spool = OPTIONS[0]
    assert (spool.key, spool.field, spool.default, spool.restart) == (
        "spool_size", "spool_bytes", 1 << 30, True)
    assert spool.shown_default() == "1GiB" and OPTIONS[1].shown_default() == "5m"


def test_each_source_sets_the_same_value_and_flags_win() -> None:
    assert parse([]) == Toy()
    assert parse(["--spool-size", "2GiB"]).spool_bytes == 2 << 30
    assert parse([], env={"TOY_SPOOL_SIZE": "2GiB"}).spool_bytes == 2 << 30
    assert parse([], doc={"spool_size": "2GiB"}).spool_bytes == 2 << 30
    assert parse([], doc={"spool-size": 2 << 30}).spool_bytes == 2 << 30
    assert parse([], env={"TOY_IDLE": "1m"}, doc={"idle": 5}).idle == 60.0, "env over file"
    assert parse(["--idle", "2s"], env={"TOY_IDLE": "1m"}).idle == 2.0, "flag over env"
    assert parse([], doc={"verbose": True, "home": "none", "tag": ["a", "b"]}) == Toy(
        verbose=True, home=None, tags=("a", "b"))
    assert parse(["--tag", "a", "--tag", "b"]).tags == ("a", "b")


def test_a_secret_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    assert parse(["--key-file", str(secret)]).key == "s3cret"
    with pytest.raises(ConfigError, match=r"--key-file .*/nope: No such file"):
        parse(["--key-file", str(tmp_path / "nope")])


@pytest.mark.parametrize(("argv", "doc", "message"), [
    (["--workers", "0"], None, "--workers must be at least 1"),
    (["--spool-size", "1KiB"], None, "--spool-size must be at least 1MiB"),
    (["--mode", "c"], None, "expected one of 'a', 'b', got 'c'"),
    (["--idle", "soon"], None, "'soon' is not a duration"),
    ([], {"spool_sise": "1GiB"}, "spool_sise: unknown key (did you mean 'spool_size'?)"),
    ([], {"verbose": "yes"}, "verbose: expected true or false, got 'yes'"),
    ([], {"workers": 1.5}, "workers: expected a whole number, got 1.5"),
    ([], {"idle": "soon"}, "idle: 'soon' is not a duration"),
    ([], {"mode": "c"}, "mode: expected one of 'a', 'b', got 'c'"),
    (["--spol"], None, "unknown option --spol"),
])
def test_mistakes_name_the_option_and_the_fix(argv: list[str], doc: dict[str, object] | None,
                                              message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(argv, doc=doc)
    assert message in str(info.value)


def test_the_relays_restart_only_fields_are_those_declared_so() -> None:
    declared = {o.field for o in SERVE_OPTIONS if o.restart}
    assert relay_module._RESTART_ONLY == declared
    assert {"listen", "spool", "spool_bytes", "admin_socket"} <= declared
    assert "max_connections" not in declared


def test_every_field_the_relay_declares_is_a_flag_with_help_and_no_field_twice() -> None:
    fields = [o.field for o in SERVE_OPTIONS if o.field]
    assert len(fields) == len(set(fields))
    assert set(fields) <= {f.name for f in dataclasses.fields(RelayConfig)}
    assert all(o.help for o in SERVE_OPTIONS)


@pytest.mark.parametrize(("size", "text"), [(0, "0"), (1000, "1000"), (1024, "1KiB"),
                                            (512 * 1024, "512KiB"), (1 << 30, "1GiB")])
def test_sizes_are_shown_as_written(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [(0.05, "50ms"), (0.5, "500ms"), (1.0, "1s"),
                                               (60.0, "60s"), (300.0, "5m"), (7200.0, "2h"),
                                               (1.5, "1500ms")])
def test_durations_are_shown_as_written(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
