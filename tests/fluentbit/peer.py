"""A real Fluent Bit for the tier: a process on a generated configuration, and its file output.

The binary is the one tests/realfb.py finds (``FLUENT_BIT``, the project's test copy,
``fluent-bit`` on PATH; skip, or fail under CI=true, without one). ``RealFluentBit`` writes
a classic configuration into a work directory (a forward input on a Unix socket or on
127.0.0.1, a ``file`` output into ``<workdir>/out``), starts the process with its log in
``<workdir>/fluent-bit.log``, waits for the input to accept connections (never a fixed
sleep), and can be stopped (SIGTERM), killed (SIGKILL) and started again on the same
socket, port and storage. ``FileOutput`` reads what the ``file`` output wrote.

What the ``file`` output writes (observed with Fluent Bit 4.2.8): one file per tag, named
after the tag, one line per record, ``TAG: [SEC.NNNNNNNNN, {json}]``: the time always has
nine decimals, so nanoseconds survive (``1700000000.000000005``), and integer times come out
as ``SEC.000000000``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tests.helpers import DEADLINE, env_for_subprocess, wait_until

__all__ = ["FileOutput", "OutRecord", "RealFluentBit", "Section", "can_connect",
           "classic_config", "descendants", "error_lines", "free_port", "kill",
           "parse_out_line", "start_process", "tail", "wait_accepting"]

Section = tuple[str, Sequence[tuple[str, object]]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def classic_config(sections: Iterable[Section]) -> str:
    """Sections in Fluent Bit's classic format (keys may repeat: a list of pairs)."""
    out = []
    for name, entries in sections:
        out.append(f"[{name}]")
        out += [f"    {key} {value}" for key, value in entries]
        out.append("")
    return "\n".join(out)


def can_connect(url: str) -> bool:
    """Whether a stream connection to ``unix:///path`` or ``tcp://host:port`` succeeds now."""
    if url.startswith("unix://"):
        family, address = socket.AF_UNIX, url[len("unix://"):]
    else:
        host, _, port = url[len("tcp://"):].rpartition(":")
        family, address = socket.AF_INET, (host, int(port))  # type: ignore[assignment]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(address)
        except OSError:
            return False
    return True


async def wait_accepting(url: str, proc: subprocess.Popen[bytes], log: Path, start: int = 0,
                         *, probe: bool = True) -> None:
    """Wait until ``url`` accepts connections; fail with the log if ``proc`` exits first.

    Ready means Fluent Bit logged ``listening on`` for it after offset ``start`` of its
    log (it logs that after listen()),
    and with ``probe`` a connection succeeds too. Without ``probe`` (a ``shared_key``
    input) no connection is made: one closed before its PING is an ``[error]`` line
    ("handshake error expecting PING") in the log the tests check for errors.
    """
    where = url if url.startswith("unix://") else url[len("tcp://"):]

    def listening() -> bool:
        with log.open("rb") as f:
            f.seek(start)
            return f"listening on {where}".encode() in f.read()

    await wait_until(lambda: proc.poll() is not None or (
        listening() and (not probe or can_connect(url))), f"Fluent Bit to accept on {url}")
    if proc.poll() is not None:
        raise AssertionError(f"Fluent Bit exited with status {proc.returncode} before "
                             f"accepting on {url}; its log:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class OutRecord(NamedTuple):
    """One record the ``file`` output wrote."""

    tag: str
    time_ns: int
    record: dict[str, Any]


_LINE = re.compile(r"^\[(\d+)\.(\d{9}), (\{.*\})\]$")


def parse_out_line(tag: str, line: str) -> OutRecord:
    """``TAG: [SEC.NNNNNNNNN, {json}]`` -> OutRecord (the tag is also the file's name)."""
    prefix = f"{tag}: "
    if not line.startswith(prefix):
        raise AssertionError(f"file output line without its tag {tag!r}: {line[:120]!r}")
    match = _LINE.match(line[len(prefix):])
    if match is None:
        raise AssertionError(f"unexpected file output line: {line[:120]!r}")
    seconds, nanos, body = match.groups()
    return OutRecord(tag, int(seconds) * 1_000_000_000 + int(nanos), json.loads(body))


@dataclass
class FileOutput:
    """Reads the ``file`` output's directory incrementally (only complete lines).

    A Fluent Bit killed (SIGKILL) while its file output writes leaves the last line
    torn: a record's first part, with no newline, to which the next start appends
    whole lines. Such a fragment is kept in ``torn`` (the record comes again: its chunk
    was not done, and a filesystem-buffered input flushes it again after the restart),
    and the whole record written after it on the same line is read as usual.
    """

    dir: Path
    records: list[OutRecord] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    _offsets: dict[str, int] = field(default_factory=dict)

    def poll(self) -> list[OutRecord]:
        """Read what was appended since the last poll; return every record so far."""
        if not self.dir.exists():
            return self.records
        for path in sorted(self.dir.iterdir()):
            offset = self._offsets.get(path.name, 0)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            for line in data[:end].decode("utf-8", "replace").splitlines():
                self._line(path.name, line)
            self._offsets[path.name] = offset + end
        return self.records

    def _line(self, tag: str, line: str) -> None:
        start = line.rfind(f"{tag}: [")
        if start > 0:
            self.torn.append(line[:start])
            line = line[start:]
        self.records.append(parse_out_line(tag, line))

    def tagged(self, tag: str) -> list[OutRecord]:
        return [r for r in self.poll() if r.tag == tag]

    def logs(self, tag: str) -> list[str]:
        return [str(r.record.get("log")) for r in self.tagged(tag)]

    def all_logs(self) -> list[str]:
        """The ``log`` of every record of every tag that has one (the enclaves'),
        file by file."""
        return [str(r.record["log"]) for r in self.poll() if "log" in r.record]


class RealFluentBit:
    """A Fluent Bit process: a forward input and a ``file`` output, in ``workdir``.

    Args:
        binary: the fluent-bit executable.
        workdir: its configuration, log, storage and output go here.
        transport: ``"unix"`` (``workdir/fb.sock``) or ``"tcp"`` (a free port on 127.0.0.1).
        shared_key: the forward input's ``shared_key``, or None.
        storage: the input's ``storage.type``: ``memory`` or ``filesystem``.
        input_options: more forward-input keys (``mem_buf_limit``, ...).
        service_options: more [SERVICE] keys.
    """

    def __init__(self, binary: str, workdir: Path, *, transport: str = "unix",
                 shared_key: str | None = None, storage: str = "memory",
                 input_options: Sequence[tuple[str, object]] = (),
                 service_options: Sequence[tuple[str, object]] = ()) -> None:
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = FileOutput(workdir / "out")
        self.log_path = workdir / "fluent-bit.log"
        self.config_path = workdir / "fluent-bit.conf"
        if transport == "unix":
            self.url = f"unix://{workdir / 'fb.sock'}"
            listen: list[tuple[str, object]] = [("unix_path", workdir / "fb.sock")]
        elif transport == "tcp":
            port = free_port()
            self.url = f"tcp://127.0.0.1:{port}"
            listen = [("listen", "127.0.0.1"), ("port", port)]
        else:
            raise ValueError(f"transport {transport!r}: unix or tcp")
        key = [("shared_key", shared_key), ("self_hostname", "fluent-bit")] if shared_key else []
        self.config_path.write_text(classic_config([
            ("SERVICE", [("flush", "0.2"), ("grace", 1), ("log_level", "info"),
                         ("storage.path", workdir / "storage"), *service_options]),
            ("INPUT", [("name", "forward"), *listen, *key, ("storage.type", storage),
                       *input_options]),
            ("OUTPUT", [("name", "file"), ("match", "*"), ("path", self.out.dir)]),
        ]))
        self.out.dir.mkdir(exist_ok=True)
        self.shared_key = shared_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        """Start it (again) and wait until its forward input accepts connections."""
        assert not self.running, "already running"
        with self.log_path.open("ab") as log:
            start = log.tell()
            self.proc = start_process([self.binary, "-c", str(self.config_path)], log)
        self.starts += 1
        await wait_accepting(self.url, self.proc, self.log_path, start,
                             probe=self.shared_key is None)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``); the status."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else 0
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await wait_until(lambda: proc.poll() is not None, "Fluent Bit to exit", timeout)
        finally:
            kill(proc)
        return proc.returncode

    async def kill(self) -> int:
        return await self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Kill it if it still runs (fixtures' cleanup: never leaves a process behind)."""
        if self.proc is not None:
            kill(self.proc)


def start_process(argv: list[str], log: Any, **env: str) -> subprocess.Popen[bytes]:
    """A process with stdout and stderr into ``log`` (stdin closed)."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, env=env_for_subprocess(**env))


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children first found, then theirs), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL it and what it started (its exec inputs' commands), and reap it.

    The exec input runs each command in a process group of its own, which a Fluent Bit
    killed leaves running (a console companion would follow its enclave for ever).
    """
    if proc.poll() is None:
        started = descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=DEADLINE)


def error_lines(log: str) -> list[str]:
    """Lines of a Fluent Bit log that report an error or an unknown key."""
    return [line for line in log.splitlines()
            if "[error]" in line or "unknown configuration property" in line]

