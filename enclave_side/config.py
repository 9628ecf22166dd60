"""The agent's configuration: one frozen dataclass, with one per source inside."""

from __future__ import annotations

from dataclasses import dataclass, field

from fluent_forward.endpoints import Endpoint, parse_endpoint

from .buffer import Policy

__all__ = [
    "DEFAULT_LEVEL_KEYS",
    "DEFAULT_RELAY",
    "LEVELS",
    "RESERVED_TAG_PREFIX",
    "AgentConfig",
    "FileSource",
    "ForwardInput",
    "KmsgSource",
    "Processing",
    "RedactRuleConfig",
    "Redaction",
]

#: The parent instance is CID 3 as seen from an enclave.
DEFAULT_RELAY = "vsock://3:24224"
#: Tags of the agent's own records; an app's --tag may not start with it.
RESERVED_TAG_PREFIX = "agent"


#: Normalised level names and their order (syslog's eight fold into these).
LEVELS = {"trace": 5, "debug": 10, "info": 20, "notice": 25, "warning": 30, "error": 40,
          "critical": 50}
#: Fields of a structured record a level is read from, first found wins.
DEFAULT_LEVEL_KEYS = ("level", "severity", "levelname", "lvl", "loglevel", "log.level")


@dataclass(frozen=True, slots=True)
class Processing:
    """What is done to one source's records, in this order, before they are buffered.

    Attributes:
        multiline: ``"indent"``: indented lines (and Python/Java traceback lines)
            continue the previous record.
        multiline_start: a regex; lines that do not match it continue the record.
        multiline_flush: send a record nothing was appended to for this long.
        json: lines that are JSON objects become structured records.
        time_key: a JSON record's own time is in this key.
        time_format: ``iso8601``, ``unix``, ``unix_ms``, ``unix_us``, ``unix_ns``, or a
            ``strptime`` format (naive times are UTC).
        level_regex: a regex whose ``level`` group (or first group) is the level.
        level_keys: fields of structured records the level is read from.
        min_level: records below this level are dropped (unknown levels are kept).
        include: if set, only records matching one of these regexes are kept.
        exclude: records matching one of these regexes are dropped.
    """

    multiline: str | None = None
    multiline_start: str | None = None
    multiline_flush: float = 1.0
    json: bool = False
    time_key: str | None = None
    time_format: str = "iso8601"
    level_regex: str | None = None
    level_keys: tuple[str, ...] = DEFAULT_LEVEL_KEYS
    min_level: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """Whether anything is configured (if not, lines take the plain fast path)."""
        return bool(self.multiline or self.multiline_start or self.json or self.level_regex
                    or self.min_level or self.include or self.exclude)


@dataclass(frozen=True, slots=True)
class FileSource:
    """Files to tail.

    Attributes:
        path: a path or glob; new matches are picked up at every poll.
        tag: the records' tag (None: ``<agent tag>.file``).
        delete_rotated: delete a rotated file once all its lines are acked.
        copytruncate: the glob also matches copies made by copytruncate; recognise
            them by their first bytes and read only what the original did not give.
        processing: what is done to its lines.
    """

    path: str
    tag: str | None = None
    delete_rotated: bool = False
    copytruncate: bool = False
    processing: Processing = field(default_factory=Processing)


@dataclass(frozen=True, slots=True)
class ForwardInput:
    """A local Forward server for the app's logging libraries (fluent-logger ...).

    Attributes:
        listen: ``tcp://127.0.0.1:PORT`` or ``unix:///path`` (never vsock).
        shared_key: require the Forward handshake with this key.
        processing: levels and filters (multiline and json do not apply).
    """

    listen: Endpoint
    shared_key: str | None = None
    processing: Processing = field(default_factory=Processing)


@dataclass(frozen=True, slots=True)
class KmsgSource:
    """The kernel log (the OOM killer says why an app vanished only there)."""

    path: str = "/dev/kmsg"
    tag: str | None = None
    processing: Processing = field(default_factory=Processing)


@dataclass(frozen=True, slots=True)
class RedactRuleConfig:
    """A custom redaction rule."""

    name: str
    pattern: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Redaction:
    """Which rules run over every source's records before they are buffered.

    Attributes:
        builtin: names of built-in rules (see ``enclave_side.redact``).
        rules: custom rules, applied after the built-in ones.
        pattern_timeout: time limit of one pass of a user pattern over one read.
    """

    builtin: tuple[str, ...] = ()
    rules: tuple[RedactRuleConfig, ...] = ()
    pattern_timeout: float = 0.1

    @property
    def active(self) -> bool:
        return bool(self.builtin or self.rules)


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
        pty: give the app a pseudo-terminal for stdout and one for stderr.
        stdout: processing of the app's stdout.
        stderr: processing of the app's stderr.
        files: files to tail.
        forward_inputs: local Forward servers.
        kmsg: the kernel log source, or None.
        redaction: redaction rules for every source.
        poll_interval: how often tailed files are checked.
        rotated_idle: a rotated file is let go once read to its end and unchanged
            for this long (never while it grows).
        fingerprint_bytes: how many first bytes tell files apart (with dev and inode).
        metrics_interval: seconds between records on ``agent.metrics`` (0: none).
        sign: number every record and send signed checkpoints (``signing``).
        sign_records: a checkpoint once this many records were numbered since the last.
        sign_interval: a checkpoint at least this often, in seconds.
        nsm: the NSM device, or ``test-pki:DIR`` (tests).
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
    pty: bool = False
    tee_console: bool = False
    stdout: Processing = field(default_factory=Processing)
    stderr: Processing = field(default_factory=Processing)
    files: tuple[FileSource, ...] = ()
    forward_inputs: tuple[ForwardInput, ...] = ()
    kmsg: KmsgSource | None = None
    redaction: Redaction = field(default_factory=Redaction)
    poll_interval: float = 0.25
    rotated_idle: float = 2.0
    fingerprint_bytes: int = 256
    metrics_interval: float = 60.0
    sign: bool = False
    sign_records: int = 1000
    sign_interval: float = 10.0
    nsm: str = "/dev/nsm"
