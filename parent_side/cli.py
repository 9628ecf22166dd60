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
import socket
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from fluent_forward import __version__
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.errors import ConnectError, EndpointError
from fluent_forward.units import (
    apply_env_defaults,
    apply_file_defaults,
    duration_arg,
    size_arg,
)

from .config import (
    DEFAULT_ADMIN_SOCKET,
    DEFAULT_LISTEN,
    DEFAULT_OUTPUT,
    DEFAULT_SPOOL,
    RelayConfig,
)
from .console import ConsoleOptions, console_command
from .identity import DEFAULT_ALLOWED_CIDS, parse_cid_set
from .outputs import OutputError, parse_output
from .relay import Relay
from .spool import Full, SpoolError
from .status import status_command

__all__ = ["ConfigError", "StatusOptions", "build_parser", "main", "parse_args", "serve_config"]

ENV_PREFIX = "ENCLAVE_LOG_RELAY_"
SUBCOMMANDS = ("serve", "status", "console")

log = logging.getLogger("parent_side")


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0660") from None


class ConfigError(Exception):
    """A configuration mistake found while reloading: the message names the key."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ``ConfigError`` instead of exiting when asked to
    (a SIGHUP reload must not end the relay over a typo)."""

    raising = False

    def error(self, message: str) -> NoReturn:
        if _Parser.raising:
            raise ConfigError(message)
        super().error(message)


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    d = RelayConfig()
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a TOML file of options (keys as the options without dashes); "
                        "re-read on SIGHUP")
    p.add_argument("--admin-socket", default=DEFAULT_ADMIN_SOCKET, metavar="PATH",
                   help="Unix socket the status command asks (default: %(default)s; "
                        "'none' for no socket)")
    p.add_argument("--status-interval", type=duration_arg, default=d.status_interval,
                   metavar="DURATION",
                   help="send the relay's status as a record on relay.status this often "
                        "(default: 60s; 0: never)")
    p.add_argument("--restamp-time", action="store_true",
                   help="give every record the relay's receive time, keeping the enclave's "
                        "own as enclave_time (for enclaves whose clocks drift); costs CPU")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="URL",
                   help="where agents connect: vsock://any:PORT, tcp://HOST:PORT or "
                        "unix:///PATH (default: %(default)s)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="URL",
                   help="where records go: unix:///PATH or tcp://HOST:PORT (a Fluent Bit "
                        "forward input), stdout, or file:///PATH (JSON lines) "
                        "(default: %(default)s)")
    p.add_argument("--hostname", default=None, help="our name in the handshake")
    p.add_argument("--shared-key", default=None, metavar="KEY",
                   help="shared key agents must prove (Forward handshake)")
    p.add_argument("--shared-key-file", default=None, metavar="PATH",
                   help="read --shared-key from this file")
    p.add_argument("--upstream-shared-key", default=None, metavar="KEY",
                   help="shared key of Fluent Bit's forward input, if it has one")
    p.add_argument("--upstream-shared-key-file", default=None, metavar="PATH",
                   help="read --upstream-shared-key from this file")
    p.add_argument("--listen-mode", type=_octal, default=d.listen_mode, metavar="MODE",
                   help="permissions of a unix:// listening socket (default: 0660)")
    p.add_argument("--max-frame-size", type=size_arg, default=d.max_frame_bytes,
                   metavar="SIZE", help="largest frame accepted from an agent (default: 4MiB)")
    p.add_argument("--max-decompressed-size", type=size_arg,
                   default=d.max_decompressed_bytes, metavar="SIZE",
                   help="largest payload a gzip frame may inflate to (default: 16MiB)")
    p.add_argument("--handshake-timeout", type=duration_arg, default=d.handshake_timeout,
                   metavar="DURATION",
                   help="time a new connection has to speak (default: 10s)")
    p.add_argument("--upstream-window", type=int, default=d.upstream_window, metavar="N",
                   help="frames sent to Fluent Bit and not yet acked (default: %(default)s)")
    p.add_argument("--upstream-buffer", type=size_arg, default=d.upstream_buffer_bytes,
                   metavar="SIZE",
                   help="memory for frames on their way to Fluent Bit; when full, the "
                        "spool keeps the backlog (with --spool none, agents wait) "
                        "(default: 64MiB)")
    p.add_argument("--spool", default=DEFAULT_SPOOL, metavar="DIR",
                   help="spool directory: batches are on disk before agents are acked "
                        "(default: %(default)s); 'none' for memory-only mode")
    p.add_argument("--spool-size", type=size_arg, default=d.spool_bytes, metavar="SIZE",
                   help="cap on the spool's size (default: 1GiB)")
    p.add_argument("--spool-full", choices=[f.value for f in Full], default=d.spool_full.value,
                   help="when the spool is full: block (agents wait; nothing is lost) or "
                        "drop_oldest (counted) (default: %(default)s)")
    p.add_argument("--allow-cid", action="append", default=None, metavar="CIDS",
                   help="vsock peers that may connect: a CID, a range (16-20), '4-' (4 and up) "
                        "or 'any'; repeatable (default: 4-, enclaves only; the parent's own "
                        "processes appear as CID 1 or 3 and are refused)")
    p.add_argument("--nitro-cli", default="nitro-cli", metavar="PATH",
                   help="nitro-cli to map CIDs to enclaves with describe-enclaves "
                        "(default: %(default)s; 'none' to name enclaves by CID)")
    p.add_argument("--describe-interval", type=duration_arg, default=d.describe_interval,
                   metavar="DURATION",
                   help="how often to run describe-enclaves (default: 30s; also run for each "
                        "new vsock connection, at most every 2s)")
    p.add_argument("--require-known-enclave", action="store_true",
                   help="refuse CIDs that describe-enclaves does not list")
    p.add_argument("--stamp-records", action="store_true",
                   help="add enclave_name, enclave_cid, enclave_id, enclave_debug, enclave_pcr0 "
                        "(and the agent's claimed_hostname) to every record; costs CPU")
    p.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N",
                   help="open connections in all (default: %(default)s)")
    p.add_argument("--max-connections-per-enclave", type=int,
                   default=d.max_connections_per_enclave, metavar="N",
                   help="open connections per enclave (default: %(default)s)")
    p.add_argument("--rate-limit", type=size_arg, default=d.rate_limit, metavar="SIZE",
                   help="a cap on the bytes per second read from one enclave; past it the "
                        "relay reads more slowly, it never drops (default: 0, none: each "
                        "enclave gets its fair share, and all of it alone)")
    p.add_argument("--frame-timeout", type=duration_arg, default=d.frame_timeout,
                   metavar="DURATION",
                   help="close a connection that sends half a frame and then nothing for "
                        "this long (default: 30s)")
    p.add_argument("--ack-timeout", type=duration_arg, default=d.ack_timeout,
                   metavar="DURATION",
                   help="reconnect to Fluent Bit after this long without an ack (default: 60s)")
    p.add_argument("--log-level", default=d.log_level,
                   choices=["debug", "info", "warning", "error"],
                   help="log level (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``parse_args`` also needs the serve subparser)."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    p = _Parser(
        prog="enclave-log-relay",
        description="Relay logs from Nitro Enclave agents (AF_VSOCK) to Fluent Bit.",
        epilog="serve is the default: 'enclave-log-relay --output stdout' serves.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="accept agents and forward their records",
                           description="Accept agents and forward their records.",
                           epilog=f"Options may also be set as {ENV_PREFIX}<OPTION> "
                                  "environment variables.")
    _add_serve_options(serve)
    status = sub.add_parser(
        "status", help="show a running relay's enclaves, spool and upstream",
        description="Ask a running relay, over its admin socket, for its state: per "
                    "enclave, the spool, and Fluent Bit. --json prints JSON lines, one "
                    "record each, for Fluent Bit's exec input.")
    status.add_argument("--admin-socket", default=DEFAULT_ADMIN_SOCKET, metavar="PATH",
                        help="the relay's admin socket (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    console = sub.add_parser(
        "console", help="follow the consoles of debug-mode enclaves (no agent needed)",
        description="Follow 'nitro-cli console' for every enclave describe-enclaves lists in "
                    "debug mode, re-attaching as enclaves come, go and restart, and skipping "
                    "those whose agent is connected to the relay. Lines go to --output tagged "
                    "enclave.<name>.console, or with --stdout as JSON lines for Fluent Bit's "
                    "exec input (Threaded on, a JSON parser).")
    console.add_argument("--stdout", action="store_true",
                         help="print JSON lines instead of sending to --output")
    console.add_argument("--output", default=DEFAULT_OUTPUT, metavar="URL",
                         help="where lines go, as for serve (default: %(default)s)")
    console.add_argument("--upstream-shared-key", default=None, metavar="KEY",
                         help="shared key of Fluent Bit's forward input, if it has one")
    console.add_argument("--upstream-shared-key-file", default=None, metavar="PATH",
                         help="read --upstream-shared-key from this file (keeps it out of ps)")
    console.add_argument("--nitro-cli", default="nitro-cli", metavar="PATH",
                         help="nitro-cli to run (default: %(default)s)")
    console.add_argument("--interval", type=duration_arg, default=5.0, metavar="DURATION",
                         help="how often to look for enclaves (default: 5s)")
    console.add_argument("--admin-socket", default=DEFAULT_ADMIN_SOCKET, metavar="PATH",
                         help="the relay to ask which enclaves have an agent connected "
                              "(default: %(default)s)")
    console.add_argument("--log-level", default="info",
                         choices=["debug", "info", "warning", "error"],
                         help="log level (default: %(default)s)")
    return p, serve


def _read_key(parser: argparse.ArgumentParser, key: str | None, path: str | None,
              option: str) -> str | None:
    if not path:
        return key
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        parser.error(f"{option}-file {path}: {exc.strerror}")


def _with_default_command(argv: list[str]) -> list[str]:
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help", "--version")):
        return argv
    return ["serve", *argv]


def _config_file(args: list[str], environ: Mapping[str, str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(args)
    return known.config or environ.get(ENV_PREFIX + "CONFIG") or None


def _load_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        parser.error(f"--config {path}: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"--config {path}: not valid TOML: {exc}")


@dataclass(frozen=True, slots=True)
class StatusOptions:
    """What ``enclave-log-relay status`` needs."""

    admin_socket: str
    json: bool
    log_level: str = "warning"


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
               ) -> tuple[str, RelayConfig | StatusOptions | ConsoleOptions]:
    """Parse the command line into ``(command, options)``; exit 2 with a message on error."""
    parser, serve = _build()
    env = os.environ if environ is None else environ
    args = _with_default_command(list(sys.argv[1:] if argv is None else argv))
    if args[0] == "status":
        ns = parser.parse_args(args)
        admin = env.get(ENV_PREFIX + "ADMIN_SOCKET") if "--admin-socket" not in args else None
        return "status", StatusOptions(admin or ns.admin_socket, ns.json)
    if args[0] == "console":
        ns = parser.parse_args(args)
        try:
            output = None if ns.stdout else parse_output(ns.output)
        except EndpointError as exc:
            parser.error(f"--output: {exc}")
        return "console", ConsoleOptions(
            nitro_cli=ns.nitro_cli, interval=ns.interval, output=output,
            admin_socket=None if ns.admin_socket.lower() == "none" else ns.admin_socket,
            hostname=socket.gethostname() or "relay",
            upstream_shared_key=_read_key(parser, ns.upstream_shared_key,
                                          ns.upstream_shared_key_file, "--upstream-shared-key"),
            log_level=ns.log_level)
    return "serve", serve_config(args, env)


def serve_config(args: list[str], env: Mapping[str, str], *, raising: bool = False
                 ) -> RelayConfig:
    """The serve configuration from flags, environment and ``--config`` file.

    With ``raising``, mistakes raise ``ConfigError`` instead of exiting (reload).
    """
    _Parser.raising = raising
    try:
        return _serve_config(args, env)
    finally:
        _Parser.raising = False


def _serve_config(args: list[str], env: Mapping[str, str]) -> RelayConfig:
    parser, serve = _build()
    path = _config_file(args[1:], env)
    if path:
        apply_file_defaults(serve, _load_file(serve, path), f"--config {path}")
    apply_env_defaults(serve, ENV_PREFIX, env)
    ns = parser.parse_args(args)
    try:
        listen = parse_endpoint(ns.listen, listen=True)
    except EndpointError as exc:
        serve.error(f"--listen: {exc}")
    try:
        output = parse_output(ns.output)
    except EndpointError as exc:
        serve.error(f"--output: {exc}")
    if ns.upstream_window < 1:
        serve.error("--upstream-window must be at least 1")
    if ns.max_frame_size < 1024:
        serve.error("--max-frame-size must be at least 1KiB")
    spool = None if ns.spool.lower() in ("none", "") else ns.spool
    if spool is not None and not spool.startswith("/"):
        serve.error(f"--spool {ns.spool}: give an absolute path, or 'none' for memory-only mode")
    if ns.spool_size < 1 << 20:
        serve.error("--spool-size must be at least 1MiB")
    try:
        allowed = parse_cid_set(ns.allow_cid or [DEFAULT_ALLOWED_CIDS])
    except ValueError as exc:
        serve.error(f"--allow-cid: {exc}")
    for option in ("max_connections", "max_connections_per_enclave"):
        if getattr(ns, option) < 1:
            serve.error(f"--{option.replace('_', '-')} must be at least 1")
    return RelayConfig(
        listen=listen, output=output,
        hostname=ns.hostname or socket.gethostname() or "relay",
        shared_key=_read_key(serve, ns.shared_key, ns.shared_key_file, "--shared-key"),
        upstream_shared_key=_read_key(serve, ns.upstream_shared_key,
                                      ns.upstream_shared_key_file, "--upstream-shared-key"),
        listen_mode=ns.listen_mode, max_frame_bytes=ns.max_frame_size,
        max_decompressed_bytes=ns.max_decompressed_size,
        handshake_timeout=ns.handshake_timeout, upstream_window=ns.upstream_window,
        upstream_buffer_bytes=ns.upstream_buffer, ack_timeout=ns.ack_timeout,
        spool=spool, spool_bytes=ns.spool_size, spool_full=Full(ns.spool_full),
        allowed_cids=allowed,
        nitro_cli=None if ns.nitro_cli.lower() == "none" else ns.nitro_cli,
        describe_interval=ns.describe_interval, require_known_enclave=ns.require_known_enclave,
        stamp_records=ns.stamp_records, max_connections=ns.max_connections,
        max_connections_per_enclave=ns.max_connections_per_enclave, rate_limit=ns.rate_limit,
        frame_timeout=ns.frame_timeout, log_level=ns.log_level,
        admin_socket=None if ns.admin_socket.lower() == "none" else ns.admin_socket,
        status_interval=ns.status_interval, restamp_time=ns.restamp_time, config_file=path)


def _serve(config: RelayConfig, args: list[str]) -> int:
    def reload() -> RelayConfig:
        return serve_config(args, os.environ, raising=True)

    try:
        return asyncio.run(Relay(config, reload=reload).run())
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
