"""``enclave-log-relay [serve] [OPTIONS]``: the parent-side relay.

``serve`` is the default subcommand, so ``enclave-log-relay --output stdout`` serves.
Every ``serve`` option can also come from an ``ENCLAVE_LOG_RELAY_<OPTION>``
environment variable (``--output`` from ``ENCLAVE_LOG_RELAY_OUTPUT``); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence

from fluent_forward import __version__
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.errors import ConnectError, EndpointError
from fluent_forward.units import apply_env_defaults, duration_arg, size_arg

from .config import DEFAULT_LISTEN, DEFAULT_OUTPUT, DEFAULT_SPOOL, RelayConfig
from .identity import DEFAULT_ALLOWED_CIDS, parse_cid_set
from .outputs import OutputError, parse_output
from .relay import Relay
from .spool import Full, SpoolError

__all__ = ["build_parser", "main", "parse_args"]

ENV_PREFIX = "ENCLAVE_LOG_RELAY_"
SUBCOMMANDS = ("serve",)

log = logging.getLogger("parent_side")


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0660") from None


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    d = RelayConfig()
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
                   help="memory for frames on their way to Fluent Bit; when full, agents "
                        "wait (default: 64MiB)")
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
                   help="how often to run describe-enclaves (default: 30s; also run when an "
                        "unknown CID connects)")
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
                   help="bytes per second read from one enclave; past it the relay reads "
                        "more slowly, it never drops (default: 64MiB; 0: no limit)")
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
    p = argparse.ArgumentParser(
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


def parse_args(argv: Sequence[str] | None = None,
               environ: dict[str, str] | None = None) -> tuple[str, RelayConfig]:
    """Parse the command line into ``(command, config)``; exit 2 with a message on error."""
    parser, serve = _build()
    args = _with_default_command(list(sys.argv[1:] if argv is None else argv))
    apply_env_defaults(serve, ENV_PREFIX, os.environ if environ is None else environ)
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
    return ns.command, RelayConfig(
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
        frame_timeout=ns.frame_timeout, log_level=ns.log_level)


def _serve(config: RelayConfig) -> int:
    try:
        return asyncio.run(Relay(config).run())
    except ConnectError as exc:
        log.error("%s (choose another address with --listen)", exc)
        return 1
    except (OutputError, SpoolError) as exc:
        log.error("%s", exc)
        return 1


COMMANDS: dict[str, Callable[[RelayConfig], int]] = {"serve": _serve}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a relay subcommand; return its exit status."""
    command, config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="enclave-log-relay: %(levelname)s %(name)s: %(message)s")
    return COMMANDS[command](config)
