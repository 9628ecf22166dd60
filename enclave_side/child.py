"""The supervised app: spawn it, read its stdout and stderr, reap it, relay signals.

The agent reaps children itself, on SIGCHLD, with ``waitpid(-1, WNOHANG)``: as PID 1
(Docker, a dev box) orphaned grandchildren are re-parented to it and must be reaped,
and a second waiter (asyncio's child watcher) would race it for the app's own status.
A pid reaped before anyone asked for it is remembered, so a child that exits at once
is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .buffer import Buffer, Policy
from .lines import EntryEncoder, Item, LineSplitter

__all__ = ["FORWARDED_SIGNALS", "ExitStatus", "PipeSource", "Reaper", "spawn"]

#: Signals the agent passes on to the app instead of acting on them.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How the app ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.waitstatus_to_exitcode(status))

    @property
    def shell_code(self) -> int:
        """What a shell would report: the code, or 128 + the signal."""
        return self.code if self.code is not None else 128 + (self.signal or 0)

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by signal {self.signal} ({signal.Signals(self.signal).name})"
        return f"exited with status {self.code}"

    def record(self) -> dict[str, object]:
        """Fields for the lifecycle record."""
        if self.signal is not None:
            return {"signal": self.signal, "signal_name": signal.Signals(self.signal).name}
        return {"exit_code": self.code}


class Reaper:
    """Reap every child on SIGCHLD; hand out the statuses of the pids we watch."""

    #: Remember at most this many statuses nobody asked for (orphans, as PID 1).
    MAX_UNCLAIMED = 1024

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[ExitStatus]] = {}
        self._unclaimed: dict[int, ExitStatus] = {}
        self.reaped = 0

    def install(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    def wait(self, pid: int) -> asyncio.Future[ExitStatus]:
        """A future for ``pid``'s exit status (done at once if it was reaped already)."""
        fut = asyncio.get_running_loop().create_future()
        if pid in self._unclaimed:
            fut.set_result(self._unclaimed.pop(pid))
        else:
            self._waiters[pid] = fut
            self.reap()  # it may have exited before the handler was installed
        return fut

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped += 1
            exit_status = ExitStatus.from_wait_status(status)
            fut = self._waiters.pop(pid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(exit_status)
            elif len(self._unclaimed) < self.MAX_UNCLAIMED:
                self._unclaimed[pid] = exit_status


def spawn(argv: Sequence[str]) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start the app with its stdout and stderr on two pipes; return it and the read fds.

    The app gets its own process group, so a terminal's Ctrl-C reaches the agent
    alone and is passed on once, not twice.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(list(argv), stdout=out_w, stderr=err_w, close_fds=True,
                                process_group=0)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return proc, out_r, err_r


class PipeSource(asyncio.Protocol):
    """One of the app's output streams: split into lines, pack, buffer.

    With ``Policy.BLOCK`` it stops reading when the buffer is full, so the app blocks
    on a full pipe and nothing is lost; with ``Policy.DROP_OLDEST`` it never stops.
    """

    def __init__(self, stream: str, tag: str, buffer: Buffer, *, policy: Policy,
                 max_line_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tag = tag
        self.buffer = buffer
        self.policy = policy
        self.splitter = LineSplitter(max_line_bytes)
        self.encoder = EntryEncoder({"stream": stream})
        self._clock = clock
        self.transport: asyncio.ReadTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False
        self.last_data = clock()
        self.lines = 0
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data = self._clock()
        self.bytes += len(data)
        self._emit(self.splitter.feed(data))
        if self.policy is Policy.BLOCK and not self.buffer.has_room() and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._resume_when_room())

    async def _resume_when_room(self) -> None:
        await self.buffer.wait_for_room()
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _emit(self, items: list[Item]) -> None:
        if items:
            self.lines += len(items)
            entries = self.encoder.encode(items, time.time_ns())
            self.buffer.add(self.tag, entries, len(items), policy=self.policy)

    def flush_partial(self, older_than: float) -> None:
        """Send a line still waiting for its newline after ``older_than`` seconds."""
        if self.splitter.pending and self._clock() - self.last_data >= older_than:
            self._emit(self.splitter.flush())

    def eof_received(self) -> bool | None:
        # At EOF the last line is as complete as it will ever be: no partial flag.
        items: list[Item] = [i if isinstance(i, bytes) else i[0] for i in self.splitter.flush()]
        self._emit(items)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Stop reading (e.g. when orphaned grandchildren keep the pipe open)."""
        if self.transport is not None:
            self.transport.close()
