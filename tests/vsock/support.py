"""Processes for the vsock tier: the relay, the agent and socat, started inside the guest.

Everything here is synchronous (``subprocess`` and polling): the tests drive real
processes and read what the relay wrote, and the guest runs Python 15-25x slower than
the host, so the test process stays light (no asyncio, no hypothesis, no project
imports beyond the codec).

Nothing here opens a socket itself; the relay, the agent and socat do. Every process
start goes through ``require_guest()`` first, so even a test that forgot its skip
cannot make the host open AF_VSOCK.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Set by tools/vsock_vm.py in the guest, and only there.
IN_GUEST = os.environ.get("NEL_VSOCK_GUEST") == "1"
#: Why the tier skips outside the guest.
NOT_IN_GUEST = (
    "vsock tier: runs only inside the QEMU guest (NEL_VSOCK_GUEST=1); AF_VSOCK is never "
    "opened on the host. Run it with `make vsock-test` (see tests/vsock/README.md)"
)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
#: The longest a condition may take to become true in the guest (TCG is slow, and the
#: host may be busy): generous, since a passing run never waits this long.
DEADLINE = 60.0

# vsock ports of the tier (any free ones: nothing else listens in the guest). Not 9000
# (the enclave boot signal) nor 8000 (vsock-proxy).
PORT_SHARED = 5301
PORT_RESTART = 5302
PORT_SOCAT = 5303
PORT_DEFAULT_ALLOW = 5304


def require_guest() -> None:
    """Refuse to start anything that opens AF_VSOCK unless we run in the QEMU guest."""
    if not IN_GUEST:
        raise RuntimeError("refusing to start vsock processes outside the QEMU guest: "
                           + NOT_IN_GUEST)


def wait_until(predicate: Callable[[], object], what: str, timeout: float = DEADLINE,
               interval: float = 0.1) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A process of the tier, its stderr going to a log file the test reads."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        require_guest()
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the log, for failure messages (a looping error can fill megabytes)."""
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, what: str, timeout: float = DEADLINE) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) in the log; fail early if the process exits."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.search(pattern, self.log())
            if m:
                found.append(m)
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode} while we "
                                     f"waited for {what}; its log ends:\n{self.log_tail()}")
            return False

        wait_until(seen, f"{what} (/{pattern}/ in the {self.name} log)", timeout)
        return found[0]

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.name} did not exit within {timeout:.0f}s; its log "
                                 f"ends:\n{self.log_tail()}") from None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGCONT (it may be stopped), SIGTERM, then SIGKILL; return the exit status."""
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tracebacks(self) -> list[str]:
        return re.findall(r"Traceback \(most recent call last\):[\s\S]*?\n\S[^\n]*", self.log())


# --------------------------------------------------------------------------- the relay


def relay_has_allow_cid() -> bool:
    """Whether the relay has the trust issue's ``--allow-cid`` option, from ``serve --help``.

    The host-side entry (tests/test_vsock_tier.py) reads ``serve --help`` natively and
    passes the answer as NEL_VSOCK_RELAY_ALLOW_CID=0/1, which saves a Python start in the
    guest; run by hand, the guest asks the relay itself.
    """
    known = os.environ.get("NEL_VSOCK_RELAY_ALLOW_CID")
    if known in ("0", "1"):
        return known == "1"
    help_text = subprocess.run([PYTHON, "-m", "parent_side", "serve", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    return "--allow-cid" in help_text


def allow_cid_1() -> list[str]:
    """Relay options that let the guest's peers (CID 1, loopback) in, if it filters CIDs."""
    return ["--allow-cid", "1"] if relay_has_allow_cid() else []


class Relay(Proc):
    """``python -m parent_side`` listening on vsock://any:PORT, writing JSON lines to a file."""

    def __init__(self, port: int, output: Path, log: Path, *options: str,
                 allow_list: Sequence[str] | None = None) -> None:
        self.port = port
        self.output = output
        # Its own spool per port (a restarted relay finds what it spooled), no admin
        # socket (several relays run at once), and no nitro-cli in the guest.
        argv = [PYTHON, "-m", "parent_side", "serve", "--listen", f"vsock://any:{port}",
                "--output", f"file://{output}", "--hostname", "vsock-tier-relay",
                "--spool", str(output.parent / f"spool-{port}"), "--admin-socket", "none",
                "--nitro-cli", "none",
                *(allow_cid_1() if allow_list is None else allow_list), *options]
        super().__init__(f"relay :{port}", argv, log)

    def wait_ready(self) -> Relay:
        self.wait_for_log(r"listening on vsock://any:\d+", "the relay to listen")
        return self


def start_relay(port: int, output: Path, log: Path, *options: str,
                allow_list: Sequence[str] | None = None) -> Relay:
    return Relay(port, output, log, *options, allow_list=allow_list).wait_ready()


# --------------------------------------------------------------------------- the agent


def start_agent(port: int, tag: str, command: Sequence[str], log: Path,
                *options: str) -> Proc:
    """``python -m enclave_side --relay vsock://1:PORT --tag TAG OPTIONS -- COMMAND``."""
    argv = [PYTHON, "-m", "enclave_side", "--relay", f"vsock://1:{port}", "--tag", tag,
            "--log-level", "debug", *options, "--", *command]
    return Proc(f"agent {tag}", argv, log)


def python_child(code: str, *args: str) -> list[str]:
    """A child running ``code`` with this Python, without site (starts faster under TCG)."""
    return [PYTHON, "-S", "-c", code, *args]


# --------------------------------------------------------------------------- the output


def output_size(path: Path) -> int:
    """Where the next record will start in a relay's output file (see ``read_records``)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_records(path: Path, start: int = 0) -> list[dict[str, Any]]:
    """The relay's JSON lines from byte ``start`` on (a line still being written is left out).

    Tests sharing a relay take ``output_size()`` before they start their agent and read
    from there: the agent's own records (``agent.lifecycle``, ``agent.log``) carry the
    same tags for every agent.
    """
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n") if line.endswith("}")]


def logs_of(records: list[dict[str, Any]], tag: str) -> list[str]:
    """The ``log`` field of the records with this agent tag, in file order.

    ``tag`` is the agent's (``app.stdout``) and matches whatever enclave name the relay
    stamped in front of it: only the tests about the peer's CID check that name, so a
    relay that gets the name wrong fails those, by name, and not every test.
    """
    return [r["record"]["log"] for r in records
            if r["tag"] == tag or r["tag"].endswith("." + tag)]


def events_of(records: list[dict[str, Any]], tag_suffix: str, event: str
              ) -> list[dict[str, Any]]:
    return [r for r in records
            if r["tag"].endswith(tag_suffix) and r["record"].get("event") == event]


# --------------------------------------------------------------------------- socat


def read_objects(fd: int, want: int, timeout: float) -> list[Any]:
    """Read msgpack objects from ``fd`` until ``want`` came, or EOF, or ``timeout``."""
    import msgpack

    unpacker = msgpack.Unpacker(raw=False)
    objects: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(objects) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        data = os.read(fd, 65536)
        if not data:
            break
        unpacker.feed(data)
        objects.extend(unpacker)
    return objects


def socat_forward(port: int, tag: str, line: str, chunk: str, want: int,
                  timeout: float = DEADLINE) -> list[Any]:
    """Send one PackedForward frame, built by hand, with ``socat - VSOCK-CONNECT:1:PORT``.

    Returns the msgpack objects the relay sent back (up to ``want``; fewer if it closed
    the connection or ``timeout`` passed): HELO, then the ack.
    """
    require_guest()
    import msgpack

    entries = msgpack.packb([1_700_000_000, {"log": line}])
    frame = msgpack.packb([tag, entries, {"chunk": chunk, "size": 1}])
    with subprocess.Popen(["socat", "-", f"VSOCK-CONNECT:1:{port}"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(frame)
            proc.stdin.flush()
            return read_objects(proc.stdout.fileno(), want, timeout)
        finally:
            proc.kill()
