"""The relay's configuration: one frozen dataclass whose fields declare the options.

Each option is declared once, here (``nel_config.options.option``): its flag, kind,
default, help and whether a reload applies it. ``enclave-log-relay serve``'s flags, its
``ENCLAVE_LOG_RELAY_*`` variables, its ``--config`` keys, what a reload keeps, and the
README's table derive from these declarations. Fields without a declaration are not
options (set by code and tests).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

from fluent_forward.codec import DEFAULT_MAX_DECOMPRESSED_BYTES, DEFAULT_MAX_FRAME_BYTES
from fluent_forward.conventions import IDLE_TIMEOUT, Overflow
from fluent_forward.endpoints import FORWARD_PORT, Endpoint, parse_endpoint
from fluent_forward.entries import DEFAULT_MAX_ENTRIES
from nel_config.options import (
    BOOL,
    DURATION,
    INT,
    LOG_LEVELS,
    OCTAL,
    PATH_OR_NONE,
    SIZE,
    STR,
    ConfigError,
    Kind,
    Option,
    choice,
    option,
    options_of,
    repeated,
)

from .admission import DEFAULT_RESERVED_CONNECTIONS
from .identity import DEFAULT_ALLOWED_CIDS, CidSet, parse_cid_set
from .outputs import OutputSpec, parse_output

__all__ = ["DEFAULT_ADMIN_SOCKET", "DEFAULT_LISTEN", "DEFAULT_OUTPUT", "DEFAULT_SPOOL",
           "SERVE_OPTIONS", "RelayConfig", "local_hostname", "serve_options"]

DEFAULT_LISTEN = f"vsock://any:{FORWARD_PORT}"
#: A Unix socket keeps other local users from injecting records into Fluent Bit.
DEFAULT_OUTPUT = "unix:///run/fluent-bit/forward.sock"
#: The systemd unit's StateDirectory.
DEFAULT_SPOOL = "/var/lib/enclave-log-relay"
#: Where serve listens for, and status asks, the relay's state (the unit's RuntimeDirectory).
DEFAULT_ADMIN_SOCKET = "/run/enclave-log-relay/admin.sock"


def _listen(text: str) -> Endpoint:
    return parse_endpoint(text, listen=True)


def _spool_dir(path: str | None, flag: str) -> None:
    if path is None:
        return
    if not path.startswith("/"):
        raise ConfigError(f"{flag} {path}: give an absolute path, or 'none' for memory-only "
                         "mode")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file, not a directory: name a directory for "
                         f"the spool (created if missing), or {flag} none for memory-only mode")


def local_hostname() -> str:
    """This host's name, the relay's name in handshakes unless --hostname says otherwise."""
    return socket.gethostname() or "relay"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything the relay needs to serve; each option's help says what it does.

    Attributes not declared as options:
        max_entries: entries one frame may hold.
        shutdown_timeout: seconds to deliver what was taken when stopping.
        spool_segment_bytes: size of one spool segment file.
        config_file: the --config file this came from, if any.
    """

    listen: Endpoint = option(
        _listen(DEFAULT_LISTEN), Kind("URL", _listen), restart=True,
        help="where agents connect: vsock://any:PORT, tcp://HOST:PORT or unix:///PATH")
    output: OutputSpec = option(
        parse_output(DEFAULT_OUTPUT), Kind("URL", parse_output),
        help="where records go: unix:///PATH or tcp://HOST:PORT (a Fluent Bit forward "
             "input), stdout, or file:///PATH (JSON lines)")
    hostname: str = option("relay", STR, restart=True, dynamic=local_hostname,
                           default_text="this host's name", help="our name in the handshake")
    shared_key: str | None = option(None, STR, secret=True, metavar="KEY",
                                    help="shared key agents must prove (Forward handshake)")
    upstream_shared_key: str | None = option(
        None, STR, secret=True, metavar="KEY",
        help="shared key of Fluent Bit's forward input, if it has one")
    listen_mode: int = option(0o660, OCTAL, restart=True,
                              help="permissions of a unix:// listening socket")
    max_frame_bytes: int = option(DEFAULT_MAX_FRAME_BYTES, SIZE, "--max-frame-size",
                                  minimum=1024, help="largest frame accepted from an agent")
    max_decompressed_bytes: int = option(
        DEFAULT_MAX_DECOMPRESSED_BYTES, SIZE, "--max-decompressed-size",
        help="largest payload a gzip frame may inflate to")
    max_entries: int = DEFAULT_MAX_ENTRIES
    handshake_timeout: float = option(10.0, DURATION,
                                      help="time a new connection has to speak")
    upstream_window: int = option(16, INT, minimum=1,
                                  help="frames sent to Fluent Bit and not yet acked")
    upstream_buffer_bytes: int = option(
        64 * 1024 * 1024, SIZE, "--upstream-buffer",
        help="memory for frames on their way to Fluent Bit; when full, the spool keeps the "
             "backlog (with --spool none, agents wait)")
    ack_timeout: float = option(60.0, DURATION,
                                help="reconnect to Fluent Bit after this long without an ack")
    shutdown_timeout: float = 10.0
    spool: str | None = option(
        DEFAULT_SPOOL, PATH_OR_NONE, restart=True, validate=_spool_dir, metavar="DIR",
        help="spool directory: batches are on disk before agents are acked; 'none' for "
             "memory-only mode")
    spool_bytes: int = option(1 << 30, SIZE, "--spool-size", restart=True, minimum=1 << 20,
                              help="cap on the spool's size")
    spool_full: Overflow = option(
        Overflow.BLOCK, choice(of=Overflow), restart=True,
        help="when the spool is full: block (agents wait; nothing is lost) or drop_oldest "
             "(counted)")
    spool_segment_bytes: int = 32 << 20
    replay_window: float = option(
        5.0, DURATION,
        help="keep batches this long after Fluent Bit acked them, and send them again when "
             "a new Fluent Bit process answers (it may have lost what it acked before it "
             "died): duplicates instead of loss; 0 turns it off")
    allowed_cids: CidSet = option(
        parse_cid_set([DEFAULT_ALLOWED_CIDS]), repeated(parse_cid_set, "CIDS"), "--allow-cid",
        default_text="4-, enclaves only; the parent's own processes appear as CID 1 or 3 "
                     "and are refused",
        help="vsock peers that may connect: a CID, a range (16-20), '4-' (4 and up) or "
             "'any'; repeatable")
    nitro_cli: str | None = option(
        "nitro-cli", PATH_OR_NONE,
        help="nitro-cli to map CIDs to enclaves with describe-enclaves ('none' to name "
             "enclaves by CID)")
    describe_interval: float = option(
        30.0, DURATION,
        help="how often to run describe-enclaves (also run for each new vsock connection, "
             "at most every 2s)")
    require_known_enclave: bool = option(
        False, BOOL, help="refuse CIDs that describe-enclaves does not list")
    stamp_records: bool = option(
        False, BOOL,
        help="add enclave_name, enclave_cid, enclave_id, enclave_debug, enclave_pcr0 (and the "
             "agent's claimed_hostname) to every record; costs CPU")
    max_connections: int = option(256, INT, minimum=1, help="open connections in all")
    max_connections_per_enclave: int = option(8, INT, minimum=1,
                                              help="open connections per enclave")
    reserved_connections: int = option(
        DEFAULT_RESERVED_CONNECTIONS, INT, minimum=0,
        help="of --max-connections, slots kept for enclaves with no connection open, so "
             "one enclave's connections never lock the others out (at most half of them)")
    rate_limit: int = option(
        0, SIZE,
        help="a cap on the bytes per second read from one enclave; past it the relay reads "
             "more slowly, it never drops (0: none: each enclave gets its fair share, and "
             "all of it alone)")
    frame_timeout: float = option(
        30.0, DURATION,
        help="close a connection whose frame is not complete this long after its first byte")
    idle_timeout: float = option(
        IDLE_TIMEOUT, DURATION,
        help="close a connection that sends nothing for this long; our agent sends a "
             "heartbeat every minute when idle (0: never)")
    log_level: str = option("info", choice(*LOG_LEVELS), help="log level")
    admin_socket: str | None = option(
        DEFAULT_ADMIN_SOCKET, PATH_OR_NONE, restart=True,
        help="Unix socket the status command asks ('none' for no socket)")
    status_interval: float = option(
        60.0, DURATION,
        help="send the relay's status as a record on relay.status this often (0: never)")
    restamp_time: bool = option(
        False, BOOL,
        help="give every record the relay's receive time, keeping the enclave's own as "
             "enclave_time (for enclaves whose clocks drift); costs CPU")
    config_file: str | None = None


#: ``enclave-log-relay serve``'s options, as declared above.
SERVE_OPTIONS = options_of(RelayConfig)


def serve_options(*keys: str, **changes: Any) -> tuple[Option, ...]:
    """serve's declarations of the options ``keys`` (a secret's ``-file`` companion with
    it), for another subcommand that takes them too, with ``changes`` (``env=False``,
    its own help ...): flag, default and field stay declared once, above."""
    return tuple(dataclasses.replace(o, **changes) for o in SERVE_OPTIONS
                 if o.key.removesuffix("_file") in keys)
