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
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fluent_forward import __version__
from fluent_forward.codec import DEFAULT_MAX_FRAME_BYTES
from nel_config.argv import Parser, add_options, apply_env_defaults, config_path, option_values
from nel_config.options import STR, ConfigError, Option, repeated
from nel_config.units import format_size

from .agent import Agent
from .config import AGENT_OPTIONS, AgentConfig, FileSource, ForwardInput, KmsgSource, Redaction
from .configfile import effective, listen_endpoint, load_config_file, redact_names
from .redact import BUILTIN_RULES
from .signing import SigningError, require_signing

__all__ = ["build_parser", "main", "parse_args"]

ENV_PREFIX = "ENCLAVE_LOG_AGENT_"

log = logging.getLogger("enclave_side")

#: Options that are no field of AgentConfig: requests, and sources added to the file's.
REQUESTS = (
    Option("--config", STR, "read options and sources from this TOML file (flags override "
           "it)", metavar="FILE"),
    Option("--check-config", STR, "print the effective configuration from FILE and these "
           "flags as JSON and exit (2 if it has errors)", metavar="FILE", env=False),
)
SOURCES = (
    Option("--file", repeated(list, "GLOB"), "tail files matching GLOB (repeatable; new "
           "matches are picked up at every poll); records are tagged TAG.file"),
    Option("--forward-listen", repeated(list, "URL"), "accept Forward clients "
           "(fluent-logger ...) on tcp://127.0.0.1:PORT or unix:///PATH (repeatable)"),
    Option("--kmsg", STR, "ship the kernel log (default path /dev/kmsg), tagged TAG.kmsg",
           const="/dev/kmsg", metavar="PATH"),
    Option("--redact", STR, "redact with built-in rules: all, or a comma list of "
           + ", ".join(BUILTIN_RULES), metavar="RULES"),
)
ALL_OPTIONS = (*REQUESTS, *AGENT_OPTIONS, *SOURCES)


def build_parser() -> Parser:
    p = Parser(
        prog="enclave-log-agent",
        usage="%(prog)s [OPTIONS] [-- CMD [ARGS...]]",
        extra_hint="the app's command goes after '--': enclave-log-agent [OPTIONS] -- CMD "
                   "[ARGS...]",
        description="Run CMD, capture its stdout and stderr as log records, and ship them "
                    "to the parent's enclave-log-relay. Without CMD, run until SIGTERM.",
        epilog=f"Options may also be set as {ENV_PREFIX}<OPTION> environment variables, "
               f"e.g. {ENV_PREFIX}RELAY=vsock://3:24224.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_options(p, ALL_OPTIONS)
    return p


def _split_command(argv: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], tuple(argv[i + 1:])
    return argv, ()


def parse_args(argv: Sequence[str] | None = None,
               environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Parse the command line into an ``AgentConfig``; exit 2 with a message on error.

    ``--check-config`` is answered here, as argparse answers ``--help``: the effective
    configuration printed as JSON, then exit 0.
    """
    parser = build_parser()
    env = os.environ if environ is None else environ
    options, command = _split_command(sys.argv[1:] if argv is None else argv)
    path, check = config_path(options, env, ENV_PREFIX, check=True)
    try:
        defaults, sources = load_config_file(path) if path else ({}, {})
        parser.set_defaults(**defaults)
        apply_env_defaults(parser, ALL_OPTIONS, ENV_PREFIX, env)
        ns = parser.parse_args(options)
        config = _build(option_values(ns, AGENT_OPTIONS, parser), ns, command, sources)
    except (ConfigError, SigningError) as exc:
        parser.error(str(exc))
    if check:
        sys.stdout.write(json.dumps(effective(config), indent=2) + "\n")
        parser.exit()
    return config


def _build(values: dict[str, Any], ns: argparse.Namespace, command: tuple[str, ...],
           sources: dict[str, Any]) -> AgentConfig:
    """The configuration: the options' values, checked together, and the sources of the
    file (by field) with those the flags add."""
    if values["batch_bytes"] >= DEFAULT_MAX_FRAME_BYTES:
        raise ConfigError(f"--batch-size must stay under {format_size(DEFAULT_MAX_FRAME_BYTES)}"
                          " (the relay's frame limit)")
    if values["buffer_bytes"] < 2 * values["batch_bytes"]:
        raise ConfigError("--buffer-size must be at least twice --batch-size")
    if values["sign"]:  # what it needs is installed: said now, in one line
        require_signing()
    files = list(sources.get("files", ()))
    known = {f.path for f in files}
    files += [FileSource(path=g) for g in ns.file or () if g not in known]
    forward = list(sources.get("forward_inputs", ()))
    forward += [ForwardInput(listen_endpoint(url, "--forward-listen"))
                for url in ns.forward_listen or ()]
    sources.update(files=tuple(files), forward_inputs=tuple(forward))
    if ns.kmsg is not None:  # the flag names the device; the file's table the rest
        sources["kmsg"] = dataclasses.replace(sources.get("kmsg") or KmsgSource(), path=ns.kmsg)
    if ns.redact is not None:
        sources["redaction"] = dataclasses.replace(sources.get("redaction", Redaction()),
                                                   builtin=redact_names(ns.redact, "--redact"))
    return AgentConfig(**values, **sources, command=command)


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
