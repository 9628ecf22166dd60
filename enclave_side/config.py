"""The agent's configuration: one frozen dataclass, with one per source inside."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from fluent_forward.conventions import Overflow
from fluent_forward.endpoints import FORWARD_PORT, VMADDR_CID_PARENT, Endpoint, parse_endpoint
from fluent_forward.tags import tag_problem
from nel_config.options import (
    BOOL,
    DURATION,
    INT,
    LOG_LEVELS,
    SIZE,
    STR,
    ConfigError,
    Kind,
    choice,
    option,
    options_of,
)

__all__ = [
    "AGENT_OPTIONS",
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
    "check_tag",
]

#: The parent instance, as seen from an enclave, on the Forward port.
DEFAULT_RELAY = f"vsock://{VMADDR_CID_PARENT}:{FORWARD_PORT}"
#: Tags of the agent's own records; an app's --tag may not start with it.
RESERVED_TAG_PREFIX = "agent"
#: What the agent appends to --tag (TAG.stdout, TAG.stderr, TAG.file, TAG.kmsg): the
#: longest must still make a tag the relay takes as it is.
DERIVED_SUFFIXES = (".stdout", ".stderr", ".file", ".kmsg")


#: Normalised level names and their order (syslog's eight fold into these).
LEVELS = {"trace": 5, "debug": 10, "info": 20, "notice": 25, "warning": 30, "error": 40,
          "critical": 50}
#: Fields of a structured record a level is read from, first found wins.
DEFAULT_LEVEL_KEYS = ("level", "severity", "levelname", "lvl", "loglevel", "log.level")


def check_tag(tag: str, key: str, *, derived: bool = False) -> None:
    """``ConfigError`` naming ``key`` unless ``tag`` is a tag an app may use: one the
    relay takes as it is (``fluent_forward.tags``, the one rule both sides use), not
    the agent's own; ``derived``: also the tags the agent makes from it."""
    shown = repr(tag) if len(tag) <= 80 else f"{tag[:40]!r}... ({len(tag)} characters)"
    problem = tag_problem(tag)
    if problem is not None:
        raise ConfigError(f"{key} {shown}: {problem}")
    for suffix in DERIVED_SUFFIXES if derived else ():
        problem = tag_problem(tag + suffix)
        if problem is not None:
            raise ConfigError(f"{key} {shown}: TAG{suffix} would be {problem}")
    if tag.split(".")[0] == RESERVED_TAG_PREFIX:
        raise ConfigError(f"{key} {tag!r}: tags starting with '{RESERVED_TAG_PREFIX}' are "
                          "reserved for the agent's own records; pick another")


def _at_most_10000(n: int, key: str) -> None:
    if n > 10000:  # a checkpoint's digests stay under CloudWatch's 256 KiB event limit
        raise ConfigError(f"{key} must be at most 10000")


def _more_than_zero(seconds: float, key: str) -> None:
    if seconds <= 0:
        raise ConfigError(f"{key} must be more than 0")


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
    """Everything the agent needs to run. The fields declared with ``option`` are its
    options (flags, ``ENCLAVE_LOG_AGENT_*`` variables, ``--config`` keys): their help
    says what they do. The others:

    Attributes:
        command: the app to run (empty: no child, run until SIGTERM).
        connect_timeout: seconds for one connection attempt.
        max_backoff: cap on the delay between reconnects.
        exit_grace: seconds of silence on the pipes, after the app exits, before the
            agent stops reading them (grandchildren may hold them open).
        stdout, stderr: processing of the app's stdout and stderr.
        files: files to tail.
        forward_inputs: local Forward servers.
        kmsg: the kernel log source, or None.
        redaction: redaction rules for every source.
        fingerprint_bytes: how many first bytes tell files apart (with dev and inode).
        sign: number every record and send signed checkpoints (``signing``).
        sign_records: a checkpoint once this many records were numbered since the last.
        sign_interval: a checkpoint at least this often, in seconds.
        nsm: the NSM device, or ``test-pki:DIR`` (tests).
    """

    relay: Endpoint = option(
        parse_endpoint(DEFAULT_RELAY), Kind("URL", parse_endpoint),
        default_text=f"{DEFAULT_RELAY}, the parent instance",
        help="the relay: vsock://CID:PORT, tcp://HOST:PORT or unix:///PATH")
    command: tuple[str, ...] = ()
    tag: str = option("app", STR, validate=lambda tag, key: check_tag(tag, key, derived=True),
                      help="tag of the app's records: TAG.stdout and TAG.stderr")
    hostname: str = option("enclave", STR, dynamic=lambda: socket.gethostname() or "enclave",
                           default_text="this host's name", help="name sent in the handshake")
    shared_key: str | None = option(None, STR, secret=True, metavar="KEY",
                                    help="Forward shared key, if the relay requires one")
    buffer_bytes: int = option(32 * 1024 * 1024, SIZE, "--buffer-size",
                               help="memory cap for records not yet acked")
    batch_bytes: int = option(512 * 1024, SIZE, "--batch-size",
                              help="seal a batch at this size")
    flush_interval: float = option(0.05, DURATION, help="seal a batch after this long")
    max_line_bytes: int = option(64 * 1024, SIZE,
                                 help="cut longer lines and flag them truncated")
    partial_flush: float = option(
        1.0, DURATION,
        help="send a line still missing its newline after this much silence, flagged "
             "partial")
    overflow: Overflow = option(
        Overflow.BLOCK, choice(of=Overflow),
        help="when the buffer is full: block the app (no loss) or drop the oldest unsent "
             "records, counted")
    window: int = option(8, INT, minimum=1,
                         help="batches in flight before waiting for acks")
    handshake_wait: float = option(
        0.5, DURATION,
        help="wait this long for the relay's HELO, then go on without a handshake")
    connect_timeout: float = 5.0
    max_backoff: float = 5.0
    drain_timeout: float = option(10.0, DURATION,
                                  help="how long to keep shipping after the app exits")
    exit_grace: float = 0.5
    log_level: str = option("info", choice(*LOG_LEVELS), help="the agent's own log level")
    pty: bool = option(
        False, BOOL,
        help="give the app a pseudo-terminal for stdout and one for stderr, so it "
             "line-buffers as on a console (streams stay apart)")
    tee_console: bool = option(
        False, BOOL,
        help="also copy the app's stdout and stderr, as they come, to the agent's own (the "
             "enclave console), so 'nitro-cli console' keeps working in debug builds; a slow "
             "console then slows the agent")
    stdout: Processing = field(default_factory=Processing)
    stderr: Processing = field(default_factory=Processing)
    files: tuple[FileSource, ...] = ()
    forward_inputs: tuple[ForwardInput, ...] = ()
    kmsg: KmsgSource | None = None
    redaction: Redaction = field(default_factory=Redaction)
    poll_interval: float = option(
        0.25, DURATION,
        help="how often idle tailed files are checked; after a read the next check comes "
             "within 10ms, the wait doubling while nothing is new")
    rotated_idle: float = option(
        2.0, DURATION,
        help="let a rotated file go once read to its end and unchanged this long; never "
             "while it grows")
    fingerprint_bytes: int = 256
    metrics_interval: float = option(60.0, DURATION,
                                     help="seconds between records on agent.metrics; 0 for none")
    sign: bool = option(
        False, BOOL,
        help="prove the logs: number every record, sign checkpoints with a key the NSM "
             "attests (needs the [sign] extra; README: Logs you can prove)")
    sign_records: int = option(1000, INT, minimum=1, validate=_at_most_10000, metavar="N",
                               help="with --sign, a checkpoint every N records")
    sign_interval: float = option(
        10.0, DURATION, validate=_more_than_zero,
        help="with --sign, a checkpoint at least this often, even when idle")
    nsm: str = option("/dev/nsm", STR, metavar="PATH",
                      help="the Nitro Security Module device; test-pki:DIR for tests")


#: The agent's options declared above, in order.
AGENT_OPTIONS = options_of(AgentConfig)
