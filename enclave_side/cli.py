"""``enclave-log-agent [OPTIONS] [-- CMD [ARGS...]]``.

Every option can also come from an ``ENCLAVE_LOG_AGENT_<OPTION>`` environment
variable (``--buffer-size`` from ``ENCLAVE_LOG_AGENT_BUFFER_SIZE``); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import sys
from collections.abc import Sequence

from fluent_forward import __version__
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.errors import EndpointError
from fluent_forward.units import apply_env_defaults, duration_arg, size_arg

from .agent import Agent
from .buffer import Policy
from .config import DEFAULT_RELAY, RESERVED_TAG_PREFIX, AgentConfig

__all__ = ["build_parser", "main", "parse_args"]

ENV_PREFIX = "ENCLAVE_LOG_AGENT_"
_TAG = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

log = logging.getLogger("enclave_side")


def build_parser() -> argparse.ArgumentParser:
    d = AgentConfig()
    p = argparse.ArgumentParser(
        prog="enclave-log-agent",
        usage="%(prog)s [OPTIONS] [-- CMD [ARGS...]]",
        description="Run CMD, capture its stdout and stderr as log records, and ship them "
                    "to the parent's enclave-log-relay. Without CMD, run until SIGTERM.",
        epilog=f"Options may also be set as {ENV_PREFIX}<OPTION> environment variables, "
               f"e.g. {ENV_PREFIX}RELAY=vsock://3:24224.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--relay", default=DEFAULT_RELAY, metavar="URL",
                   help="the relay: vsock://CID:PORT, tcp://HOST:PORT or unix:///PATH "
                        "(default: %(default)s, the parent instance)")
    p.add_argument("--tag", default=d.tag,
                   help="tag of the app's records: TAG.stdout and TAG.stderr "
                        "(default: %(default)s)")
    p.add_argument("--hostname", default=None,
                   help="name sent in the handshake (default: this host's name)")
    p.add_argument("--shared-key", default=None, metavar="KEY",
                   help="Forward shared key, if the relay requires one")
    p.add_argument("--shared-key-file", default=None, metavar="PATH",
                   help="read the shared key from this file instead")
    p.add_argument("--buffer-size", type=size_arg, default=d.buffer_bytes, metavar="SIZE",
                   help="memory cap for records not yet acked (default: 32MiB)")
    p.add_argument("--overflow", choices=[x.value for x in Policy], default=d.overflow.value,
                   help="when the buffer is full: block the app (no loss) or drop the oldest "
                        "unsent records, counted (default: %(default)s)")
    p.add_argument("--batch-size", type=size_arg, default=d.batch_bytes, metavar="SIZE",
                   help="seal a batch at this size (default: 512KiB)")
    p.add_argument("--flush-interval", type=duration_arg, default=d.flush_interval,
                   metavar="DURATION", help="seal a batch after this long (default: 50ms)")
    p.add_argument("--max-line-bytes", type=size_arg, default=d.max_line_bytes, metavar="SIZE",
                   help="cut longer lines and flag them truncated (default: 64KiB)")
    p.add_argument("--partial-flush", type=duration_arg, default=d.partial_flush,
                   metavar="DURATION",
                   help="send a line still missing its newline after this much silence, "
                        "flagged partial (default: 1s)")
    p.add_argument("--window", type=int, default=d.window,
                   help="batches in flight before waiting for acks (default: %(default)s)")
    p.add_argument("--drain-timeout", type=duration_arg, default=d.drain_timeout,
                   metavar="DURATION",
                   help="how long to keep shipping after the app exits (default: 10s)")
    p.add_argument("--handshake-wait", type=duration_arg, default=d.handshake_wait,
                   metavar="DURATION",
                   help="wait this long for the relay's HELO, then go on without a "
                        "handshake (default: 500ms)")
    p.add_argument("--log-level", default=d.log_level,
                   choices=["debug", "info", "warning", "error"],
                   help="the agent's own log level (default: %(default)s)")
    return p


def _split_command(argv: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], tuple(argv[i + 1:])
    return argv, ()


def parse_args(argv: Sequence[str] | None = None,
               environ: dict[str, str] | None = None) -> AgentConfig:
    """Parse the command line into an ``AgentConfig``; exit 2 with a message on error."""
    parser = build_parser()
    apply_env_defaults(parser, ENV_PREFIX, os.environ if environ is None else environ)
    options, command = _split_command(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(options)
    try:
        relay = parse_endpoint(ns.relay)
    except EndpointError as exc:
        parser.error(f"--relay: {exc}")
    if not _TAG.match(ns.tag):
        parser.error(f"--tag {ns.tag!r}: use letters, digits, '_' and '-', in parts "
                     "separated by dots (e.g. myapp or payments.api)")
    if ns.tag.split(".")[0] == RESERVED_TAG_PREFIX:
        parser.error(f"--tag {ns.tag!r}: tags starting with '{RESERVED_TAG_PREFIX}' are "
                     "reserved for the agent's own records; pick another")
    key = ns.shared_key
    if ns.shared_key_file:
        try:
            with open(ns.shared_key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError as exc:
            parser.error(f"--shared-key-file {ns.shared_key_file}: {exc.strerror}")
    for name in ("window",):
        if getattr(ns, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if ns.batch_size >= 4 * 1024 * 1024:
        parser.error("--batch-size must stay under 4MiB (the relay's frame limit)")
    if ns.buffer_size < 2 * ns.batch_size:
        parser.error("--buffer-size must be at least twice --batch-size")
    return AgentConfig(
        relay=relay, command=command, tag=ns.tag,
        hostname=ns.hostname or socket.gethostname() or "enclave", shared_key=key,
        buffer_bytes=ns.buffer_size, batch_bytes=ns.batch_size,
        flush_interval=ns.flush_interval, max_line_bytes=ns.max_line_bytes,
        partial_flush=ns.partial_flush,
        overflow=Policy(ns.overflow), window=ns.window, handshake_wait=ns.handshake_wait,
        drain_timeout=ns.drain_timeout, log_level=ns.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; return the app's exit status."""
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="enclave-log-agent: %(levelname)s %(message)s")
    agent = Agent(config)
    try:
        return asyncio.run(agent.run())
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled inside run()
        return 130
    except Exception:
        # A bug. On Nitro the enclave dies with the agent, so never exit while the
        # app lives: report, then wait for it and exit with its status.
        log.exception("agent failed; waiting for the app to exit")
        if agent.child_pid is not None:
            _, status = os.waitpid(agent.child_pid, 0)
            return os.waitstatus_to_exitcode(status) % 256
        return 70  # EX_SOFTWARE
