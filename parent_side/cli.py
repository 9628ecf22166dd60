"""``enclave-log-relay [serve|status] [OPTIONS]``: the parent-side relay.

``serve`` is the default subcommand, so ``enclave-log-relay --output stdout`` serves.
Every ``serve`` option can also come from a TOML file (``--config``, keys named like
the options: ``spool_size = "2GiB"``) and from an ``ENCLAVE_LOG_RELAY_<OPTION>``
environment variable (``--output`` from ``ENCLAVE_LOG_RELAY_OUTPUT``); flags win over
the environment, which wins over the file. SIGHUP re-reads all three.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fluent_forward import __version__
from fluent_forward.errors import ConnectError
from nel_config.argv import Parser, add_options, apply_env_defaults, config_path, option_values
from nel_config.options import (
    BOOL,
    STR,
    ConfigError,
    Option,
    file_values,
    option,
    options_of,
    read_config,
)

from .config import SERVE_OPTIONS, RelayConfig, serve_options
from .console import CONSOLE_OPTIONS, ConsoleOptions, console_command
from .outputs import OutputError
from .relay import Relay
from .spool_format import SpoolError
from .status import status_command

__all__ = ["ConfigError", "StatusOptions", "build_parser", "main", "nitro_warning",
           "parse_args", "serve_config"]

ENV_PREFIX = "ENCLAVE_LOG_RELAY_"
#: Present on an EC2 instance that can run Nitro Enclaves (the Nitro Enclaves driver).
NITRO_DEVICE = "/dev/nitro_enclaves"

log = logging.getLogger("parent_side")

#: Read before the other options, which it may set.
CONFIG = Option("--config", STR, "a TOML file of options (keys as the options without "
                "dashes); re-read on SIGHUP", metavar="FILE")


def build_parser(raising: bool = False) -> Parser:
    """The whole command line; with ``raising``, mistakes raise ``ConfigError`` instead
    of exiting."""
    p = Parser(
        prog="enclave-log-relay", raising=raising,
        description="Relay logs from Nitro Enclave agents (AF_VSOCK) to Fluent Bit.",
        epilog="serve is the default: 'enclave-log-relay --output stdout' serves.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="accept agents and forward their records",
                           description="Accept agents and forward their records.",
                           epilog=f"Options may also be set as {ENV_PREFIX}<OPTION> "
                                  "environment variables.")
    add_options(serve, (CONFIG, *SERVE_OPTIONS))
    status = sub.add_parser(
        "status", help="show a running relay's enclaves, spool and upstream",
        description="Ask a running relay, over its admin socket, for its state: per "
                    "enclave, the spool, and Fluent Bit. --json prints JSON lines, one "
                    "record each, for Fluent Bit's exec input.")
    add_options(status, STATUS_OPTIONS)
    console = sub.add_parser(
        "console", help="follow the consoles of debug-mode enclaves (no agent needed)",
        description="Follow 'nitro-cli console' for every enclave describe-enclaves lists in "
                    "debug mode, re-attaching as enclaves come, go and restart, and skipping "
                    "those whose agent is connected to the relay. Lines go to --output tagged "
                    "enclave.<name>.console, or with --stdout as JSON lines for Fluent Bit's "
                    "exec input (Threaded on, a JSON parser).")
    add_options(console, CONSOLE_OPTIONS)
    return p


def _with_default_command(argv: list[str]) -> list[str]:
    if argv and (argv[0] in COMMAND_OPTIONS or argv[0] in ("-h", "--help", "--version")):
        return argv
    if argv and not argv[0].startswith("-"):
        # Options come after the command: a first word that is not one is a typo.
        build_parser().unknown_command(argv[0])
    return ["serve", *argv]


@dataclass(frozen=True, slots=True)
class StatusOptions:
    """What ``enclave-log-relay status`` needs: ``STATUS_OPTIONS`` set it."""

    admin_socket: str
    json: bool = option(False, BOOL, env=False, help="JSON lines instead of a table")
    log_level: str = "warning"


#: status's options: serve's --admin-socket (a path here: status must ask one) and --json.
STATUS_OPTIONS = (*serve_options("admin_socket", kind=STR, metavar="PATH", restart=False,
                                 help="the relay's admin socket"), *options_of(StatusOptions))
#: Each subcommand's options (serve's --config is read before the others).
COMMAND_OPTIONS = {"serve": SERVE_OPTIONS, "status": STATUS_OPTIONS,
                   "console": CONSOLE_OPTIONS}


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
               ) -> tuple[str, RelayConfig | StatusOptions | ConsoleOptions]:
    """Parse the command line into ``(command, options)``; exit 2 with a message on error."""
    env = os.environ if environ is None else environ
    args = _with_default_command(list(sys.argv[1:] if argv is None else argv))
    if args[0] == "serve":
        return "serve", serve_config(args, env)
    values, ns = _values(args, env)
    if args[0] == "status":
        return "status", StatusOptions(**values)
    if ns.stdout:
        values["output"] = None
    return "console", ConsoleOptions(**values)


def serve_config(args: list[str], env: Mapping[str, str], *, raising: bool = False
                 ) -> RelayConfig:
    """The serve configuration from flags, environment and ``--config`` file.

    With ``raising``, mistakes raise ``ConfigError`` instead of exiting (reload).
    """
    path, _ = config_path(args[1:], env, ENV_PREFIX)
    return RelayConfig(**_values(args, env, path, raising)[0], config_file=path)


def _values(args: list[str], env: Mapping[str, str], path: str | None = None,
            raising: bool = False) -> tuple[dict[str, Any], argparse.Namespace]:
    """A subcommand's option values, from its flags, the environment and, for serve, the
    ``--config`` file at ``path``; and the parsed flags."""
    parser = build_parser(raising)
    if args[0] not in COMMAND_OPTIONS:
        parser.parse_args(args)  # -h, --help or --version: argparse answers and exits
    sub, options = parser.commands[args[0]], COMMAND_OPTIONS[args[0]]
    try:
        if path:
            sub.set_defaults(**read_config(path, lambda doc: file_values(doc, options)))
    except ConfigError as exc:
        sub.error(f"--config: {exc}")
    apply_env_defaults(sub, options, ENV_PREFIX, env)
    ns = parser.parse_args(args)
    return option_values(ns, options, sub), ns


def nitro_warning(config: RelayConfig, device: str = NITRO_DEVICE) -> str | None:
    """What to say when the relay listens on vsock on a machine that is no Nitro parent.

    Only then: a tcp:// or unix:// listen is a development set-up, and a vsock one with
    the Nitro Enclaves device present is production. The relay still starts (a vsock
    test guest has no such device).
    """
    if config.listen.scheme.value != "vsock" or os.path.exists(device):
        return None
    return (f"listening on {config.listen}, but this machine is not a Nitro Enclaves parent "
            f"(no {device}): no enclave can connect; to try the relay here, use --listen "
            "tcp://127.0.0.1:24224 or unix:///PATH")


def _serve(config: RelayConfig, args: list[str]) -> int:
    warning = nitro_warning(config)
    if warning is not None:
        log.warning("%s", warning)

    try:
        # SIGHUP reads the same flags, the environment and the file again.
        relay = Relay(config, reload=lambda: serve_config(args, os.environ, raising=True))
        return asyncio.run(relay.run())
    except ConnectError as exc:
        log.error("%s (choose another address with --listen)", exc)
        return 1
    except (OutputError, SpoolError) as exc:
        log.error("%s", exc)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run a relay subcommand; return its exit status."""
    args = _with_default_command(list(sys.argv[1:] if argv is None else argv))
    command, options = parse_args(args)
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr,
                        format="enclave-log-relay: %(levelname)s %(name)s: %(message)s")
    if isinstance(options, StatusOptions):
        return status_command(options.admin_socket, as_json=options.json)
    if isinstance(options, ConsoleOptions):
        return console_command(options)
    return _serve(options, args)
