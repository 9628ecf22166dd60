"""The agent's configuration: one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from fluent_forward.endpoints import Endpoint, parse_endpoint

from .buffer import Policy

__all__ = ["DEFAULT_RELAY", "RESERVED_TAG_PREFIX", "AgentConfig"]

#: The parent instance is CID 3 as seen from an enclave.
DEFAULT_RELAY = "vsock://3:24224"
#: Tags of the agent's own records; an app's --tag may not start with it.
RESERVED_TAG_PREFIX = "agent"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs to run.

    Attributes:
        relay: where to ship.
        command: the app to run (empty: no child, run until SIGTERM).
        tag: the app's tag; stdout goes to ``TAG.stdout``, stderr to ``TAG.stderr``.
        hostname: sent in the handshake (a claim; the relay stamps its own view).
        shared_key: the Forward shared key, or None.
        buffer_bytes: memory cap for everything held.
        batch_bytes: seal a batch at this size.
        flush_interval: seal a batch after this many seconds.
        max_line_bytes: longer lines are cut and flagged ``truncated``.
        partial_flush: send a line without newline after this many idle seconds.
        overflow: what the app's output does when the buffer is full.
        window: batches in flight before waiting for acks.
        handshake_wait: seconds to wait for a HELO before going on without one.
        connect_timeout: seconds for one connection attempt.
        max_backoff: cap on the delay between reconnects.
        drain_timeout: seconds to keep shipping after the app exits.
        exit_grace: seconds of silence on the pipes, after the app exits, before the
            agent stops reading them (grandchildren may hold them open).
        log_level: the agent's own log level.
    """

    relay: Endpoint = parse_endpoint(DEFAULT_RELAY)
    command: tuple[str, ...] = ()
    tag: str = "app"
    hostname: str = "enclave"
    shared_key: str | None = None
    buffer_bytes: int = 32 * 1024 * 1024
    batch_bytes: int = 512 * 1024
    flush_interval: float = 0.05
    max_line_bytes: int = 64 * 1024
    partial_flush: float = 1.0
    overflow: Policy = Policy.BLOCK
    window: int = 8
    handshake_wait: float = 0.5
    connect_timeout: float = 5.0
    max_backoff: float = 5.0
    drain_timeout: float = 10.0
    exit_grace: float = 0.5
    log_level: str = "info"
