"""The relay's configuration: one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from fluent_forward.endpoints import Endpoint, parse_endpoint

from .identity import DEFAULT_ALLOWED_CIDS, CidSet, parse_cid_set
from .outputs import OutputSpec, parse_output
from .spool import Full

__all__ = ["DEFAULT_ADMIN_SOCKET", "DEFAULT_LISTEN", "DEFAULT_OUTPUT", "DEFAULT_SPOOL",
           "RelayConfig"]

DEFAULT_LISTEN = "vsock://any:24224"
#: A Unix socket keeps other local users from injecting records into Fluent Bit.
DEFAULT_OUTPUT = "unix:///run/fluent-bit/forward.sock"
#: The systemd unit's StateDirectory.
DEFAULT_SPOOL = "/var/lib/enclave-log-relay"
#: Where serve listens for, and status asks, the relay's state (the unit's RuntimeDirectory).
DEFAULT_ADMIN_SOCKET = "/run/enclave-log-relay/admin.sock"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything the relay needs to serve.

    Attributes:
        listen: where agents connect.
        output: where records go.
        hostname: our name in the handshake.
        shared_key: the key agents must prove, or None.
        upstream_shared_key: the key Fluent Bit's forward input holds, or None.
        listen_mode: permissions of a Unix listening socket.
        max_frame_bytes, max_decompressed_bytes, max_entries: per-frame limits.
        handshake_timeout: seconds a new connection has to say something.
        upstream_window: frames sent to Fluent Bit and not yet acked.
        upstream_buffer_bytes: memory for frames on their way to Fluent Bit.
        ack_timeout: seconds without an ack from Fluent Bit before reconnecting.
        shutdown_timeout: seconds to deliver what was taken when stopping.
        spool: the spool directory, or None for memory-only mode.
        spool_bytes: the spool's size cap.
        spool_full: what to do at the cap: block (backpressure) or drop the oldest.
        spool_segment_bytes: size of one spool segment file.
        allowed_cids: vsock peers allowed to connect (enclave CIDs, 4 and up, by default).
        nitro_cli: the ``nitro-cli`` to run ``describe-enclaves`` with, or None.
        describe_interval: seconds between describe-enclaves polls.
        require_known_enclave: refuse CIDs describe-enclaves does not list.
        stamp_records: add the enclave's identity fields to every record.
        max_connections: open connections in all.
        max_connections_per_enclave: open connections per enclave.
        rate_limit: an operator's cap, bytes per second read from one enclave (0: none;
            without it each enclave gets its fair share, parent_side/fairshare.py).
        frame_timeout: seconds a started frame has to complete.
        log_level: the relay's log level.
        admin_socket: the status socket, or None.
        status_interval: seconds between relay.status records (0: none).
        restamp_time: replace record times with the relay's receive time.
        config_file: the --config file this came from, if any.
    """

    listen: Endpoint = parse_endpoint(DEFAULT_LISTEN, listen=True)
    output: OutputSpec = parse_output(DEFAULT_OUTPUT)
    hostname: str = "relay"
    shared_key: str | None = None
    upstream_shared_key: str | None = None
    listen_mode: int = 0o660
    max_frame_bytes: int = 4 * 1024 * 1024
    max_decompressed_bytes: int = 16 * 1024 * 1024
    max_entries: int = 500_000
    handshake_timeout: float = 10.0
    upstream_window: int = 16
    upstream_buffer_bytes: int = 64 * 1024 * 1024
    ack_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    spool: str | None = DEFAULT_SPOOL
    spool_bytes: int = 1 << 30
    spool_full: Full = Full.BLOCK
    spool_segment_bytes: int = 32 << 20
    allowed_cids: CidSet = parse_cid_set([DEFAULT_ALLOWED_CIDS])
    nitro_cli: str | None = "nitro-cli"
    describe_interval: float = 30.0
    require_known_enclave: bool = False
    stamp_records: bool = False
    max_connections: int = 256
    max_connections_per_enclave: int = 8
    rate_limit: int = 0
    frame_timeout: float = 30.0
    log_level: str = "info"
    admin_socket: str | None = DEFAULT_ADMIN_SOCKET
    status_interval: float = 60.0
    restamp_time: bool = False
    config_file: str | None = None
