"""``enclave-log-agent [OPTIONS] [-- CMD [ARGS...]]``.

Every option can also come from an ``ENCLAVE_LOG_AGENT_<OPTION>`` environment
variable (``--buffer-size`` from ``ENCLAVE_LOG_AGENT_BUFFER_SIZE``) and from the
``--config`` file (``buffer_size = "32MiB"``); flags win over variables, variables
over the file. Sources given as flags (``--file``, ``--forward-listen``) are added
to those of the file. ``--check-config FILE`` prints the effective configuration as
JSON and exits 0, or prints what is wrong and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fluent_forward import __version__
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.errors import EndpointError
from fluent_forward.units import apply_env_defaults, duration_arg, size_arg

from .agent import Agent
from .buffer import Policy
from .config import DEFAULT_RELAY, AgentConfig, FileSource, ForwardInput, KmsgSource, Redaction
from .configfile import (
    ConfigError,
    FileSettings,
    check_tag,
    listen_endpoint,
    load_config_file,
    redact_names,
)
from .signing import SigningError, require_signing
from .sources.forward_input import check_listen

__all__ = ["build_parser", "main", "parse_args"]

ENV_PREFIX = "ENCLAVE_LOG_AGENT_"

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
    p.add_argument("--config", metavar="FILE",
                   help="read options and sources from this TOML file (flags override it)")
    p.add_argument("--check-config", metavar="FILE",
                   help="print the effective configuration from FILE and these flags as "
                        "JSON and exit (2 if it has errors)")
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
    p.add_argument("--tee-console", action="store_true", default=d.tee_console,
                   help="also copy the app's stdout and stderr, as they come, to the agent's "
                        "own (the enclave console), so 'nitro-cli console' keeps working in "
                        "debug builds; a slow console then slows the agent")
    p.add_argument("--pty", action="store_true", default=d.pty,
                   help="give the app a pseudo-terminal for stdout and one for stderr, so "
                        "it line-buffers as on a console (streams stay apart)")
    p.add_argument("--file", action="append", metavar="GLOB",
                   help="tail files matching GLOB (repeatable; new matches are picked up "
                        "at every poll); records are tagged TAG.file")
    p.add_argument("--forward-listen", action="append", metavar="URL",
                   help="accept Forward clients (fluent-logger ...) on tcp://127.0.0.1:PORT "
                        "or unix:///PATH (repeatable)")
    p.add_argument("--kmsg", nargs="?", const="/dev/kmsg", default=None, metavar="PATH",
                   help="ship the kernel log (default path /dev/kmsg), tagged TAG.kmsg")
    p.add_argument("--redact", default=None, metavar="RULES",
                   help="redact with built-in rules: all, or a comma list of email, card, "
                        "ssn, aws_access_key_id, bearer, jwt")
    p.add_argument("--poll-interval", type=duration_arg, default=d.poll_interval,
                   metavar="DURATION",
                   help="how often idle tailed files are checked; after a read the next "
                        "check comes within 10ms, the wait doubling while nothing is "
                        "new (default: 250ms)")
    p.add_argument("--rotated-idle", type=duration_arg, default=d.rotated_idle,
                   metavar="DURATION",
                   help="let a rotated file go once read to its end and unchanged this "
                        "long; never while it grows (default: 2s)")
    p.add_argument("--metrics-interval", type=duration_arg, default=d.metrics_interval,
                   metavar="DURATION",
                   help="seconds between records on agent.metrics; 0 for none "
                        "(default: 60s)")
    p.add_argument("--sign", action="store_true", default=d.sign,
                   help="prove the logs: number every record, sign checkpoints with a key "
                        "the NSM attests (needs the [sign] extra; README: Logs you can prove)")
    p.add_argument("--sign-records", type=int, default=d.sign_records, metavar="N",
                   help="with --sign, a checkpoint every N records (default: %(default)s)")
    p.add_argument("--sign-interval", type=duration_arg, default=d.sign_interval,
                   metavar="DURATION",
                   help="with --sign, a checkpoint at least this often, even when idle "
                        "(default: 10s)")
    p.add_argument("--nsm", default=d.nsm, metavar="PATH",
                   help="the Nitro Security Module device (default: %(default)s); "
                        "test-pki:DIR for tests")
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


def _config_path(options: list[str], environ: Mapping[str, str] | None = None
                 ) -> tuple[str | None, bool]:
    """The configuration file (``--config``, else ``ENCLAVE_LOG_AGENT_CONFIG``), and
    whether only to check it (``--check-config``, a command-line request only)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--check-config")
    known, _ = pre.parse_known_args(options)
    if known.check_config:
        return known.check_config, True
    env = os.environ if environ is None else environ
    return known.config or env.get(ENV_PREFIX + "CONFIG") or None, False


def parse_args(argv: Sequence[str] | None = None,
               environ: dict[str, str] | None = None) -> AgentConfig:
    """Parse the command line into an ``AgentConfig``; exit 2 with a message on error."""
    parser = build_parser()
    options, command = _split_command(sys.argv[1:] if argv is None else argv)
    path, _ = _config_path(options, environ)
    settings = FileSettings()
    try:
        if path:
            settings = load_config_file(path)
    except ConfigError as exc:
        parser.error(f"config {exc}")
    parser.set_defaults(**settings.options)
    apply_env_defaults(parser, ENV_PREFIX, os.environ if environ is None else environ,
                       skip=frozenset({"check_config"}))
    ns = parser.parse_args(options)
    try:
        return _build(ns, command, settings, parser)
    except ConfigError as exc:
        parser.error(str(exc))


def _build(ns: argparse.Namespace, command: tuple[str, ...], settings: FileSettings,
           parser: argparse.ArgumentParser) -> AgentConfig:
    try:
        relay = parse_endpoint(ns.relay)
    except EndpointError as exc:
        raise ConfigError(f"--relay: {exc}") from None
    check_tag(ns.tag, "--tag")
    key = ns.shared_key
    if ns.shared_key_file:
        try:
            with open(ns.shared_key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"--shared-key-file {ns.shared_key_file}: {exc.strerror}") from None
    if ns.window < 1:
        raise ConfigError("--window must be at least 1")
    if ns.batch_size >= 4 * 1024 * 1024:
        raise ConfigError("--batch-size must stay under 4MiB (the relay's frame limit)")
    if ns.buffer_size < 2 * ns.batch_size:
        raise ConfigError("--buffer-size must be at least twice --batch-size")
    if not 1 <= ns.sign_records <= 10000:  # a checkpoint's digests stay under 256 KiB
        raise ConfigError("--sign-records must be between 1 and 10000")
    if ns.sign_interval <= 0:
        raise ConfigError("--sign-interval must be more than 0")
    if ns.sign:
        try:
            require_signing()
        except SigningError as exc:
            raise ConfigError(str(exc)) from None
    files = list(settings.files)
    known = {f.path for f in files}
    files += [FileSource(path=g) for g in ns.file or () if g not in known]
    forward = list(settings.forward)
    forward += [ForwardInput(listen_endpoint(url, "--forward-listen", check_listen))
                for url in ns.forward_listen or ()]
    kmsg = settings.kmsg
    if ns.kmsg is not None:
        kmsg = KmsgSource(path=ns.kmsg) if kmsg is None else dataclasses.replace(
            kmsg, path=ns.kmsg)
    redaction = settings.redaction
    if ns.redact is not None:
        redaction = Redaction(redact_names(ns.redact, "--redact"), redaction.rules,
                              redaction.pattern_timeout)
    return AgentConfig(
        relay=relay, command=command, tag=ns.tag,
        hostname=ns.hostname or socket.gethostname() or "enclave", shared_key=key,
        buffer_bytes=ns.buffer_size, batch_bytes=ns.batch_size,
        flush_interval=ns.flush_interval, max_line_bytes=ns.max_line_bytes,
        partial_flush=ns.partial_flush,
        overflow=Policy(ns.overflow), window=ns.window, handshake_wait=ns.handshake_wait,
        drain_timeout=ns.drain_timeout, log_level=ns.log_level, pty=ns.pty,
        tee_console=ns.tee_console,
        stdout=settings.stdout, stderr=settings.stderr, files=tuple(files),
        forward_inputs=tuple(forward), kmsg=kmsg, redaction=redaction,
        poll_interval=ns.poll_interval, rotated_idle=ns.rotated_idle,
        metrics_interval=ns.metrics_interval, sign=ns.sign, sign_records=ns.sign_records,
        sign_interval=ns.sign_interval, nsm=ns.nsm)


def effective(config: AgentConfig) -> dict[str, Any]:
    """The configuration as JSON-able data, secrets elided."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if type(value).__name__ == "Endpoint":
                return str(value)
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    data: dict[str, Any] = plain(config)
    if data.get("shared_key"):
        data["shared_key"] = "(set)"
    for forward in data["forward_inputs"]:
        if forward.get("shared_key"):
            forward["shared_key"] = "(set)"
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; return the app's exit status."""
    config = parse_args(argv)
    options, _ = _split_command(sys.argv[1:] if argv is None else argv)
    if _config_path(options)[1]:
        sys.stdout.write(json.dumps(effective(config), indent=2) + "\n")
        return 0
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
