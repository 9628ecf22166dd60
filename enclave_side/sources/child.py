"""The supervised app: spawn it, read its stdout and stderr, reap it, relay signals.

``--pty`` gives the app a pseudo-terminal for stdout and another for stderr: C stdio
(and Python, and most runtimes) block-buffer stdout into a pipe, so an app that
logs a line now and then would have it shipped minutes later, or lost in a crash;
on a terminal they line-buffer. Two terminals, not one, keep stdout and stderr
apart. Both are put in raw mode, so a newline stays a newline (no ``\r\n``). When
the app and everything holding the terminal is gone, reading the master side fails
with EIO instead of returning EOF; that is taken as EOF.

The agent reaps children itself, on SIGCHLD, with ``waitpid(-1, WNOHANG)``: as PID 1
(Docker, a dev box) orphaned grandchildren are re-parented to it and must be reaped,
and a second waiter (asyncio's child watcher) would race it for the app's own status.
A pid reaped before anyone asked for it is remembered, so a child that exits at once
is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import math
import os
import signal
import subprocess
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fluent_forward.aio import start_task
from fluent_forward.conventions import Overflow

from ..buffer import Buffer
from ..processing import Pipeline
from .stream import LineStream

__all__ = ["FORWARDED_SIGNALS", "PIPE_BYTES", "READ_NAP", "ExitStatus", "PipeSource", "Reaper",
           "spawn"]

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

    def install(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
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
            exit_status = ExitStatus.from_wait_status(status)
            fut = self._waiters.pop(pid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(exit_status)
            elif len(self._unclaimed) < self.MAX_UNCLAIMED:
                self._unclaimed[pid] = exit_status


def _pty() -> tuple[int, int]:
    """A pseudo-terminal in raw mode: (master, slave), neither inherited (as ``openpty``
    makes them)."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no \n -> \r\n, no echo, no line editing
    return master, slave


#: The app's pipes hold this much (the kernel's default is 64 KiB): room for what the
#: app writes while the agent lets a pipe fill (``READ_NAP``), so that it does not wait
#: for the agent then. Pages are used only while the agent is behind; 1 MiB is what an
#: unprivileged process may ask for.
PIPE_BYTES = 1 << 20
#: After a read shorter than ``NAP_BELOW``, the agent waits this long before reading the
#: pipe again. An app flushing 8 KiB at a time would otherwise cost one wakeup, one read
#: and one pass through the hot path every 55 lines (~11 us each: 0.4 us per line);
#: 2 ms later one read takes everything written meanwhile. Lines wait 2 ms more, next
#: to the 50 ms a batch waits to be sealed.
READ_NAP = 0.002
NAP_BELOW = 64 * 1024


def _pipe() -> tuple[int, int]:
    """A pipe (read end, write end) of ``PIPE_BYTES`` if the kernel allows it."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # EPERM past the user's pipe-page quota: keep 64 KiB
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return r, w


def spawn(argv: Sequence[str], *, pty: bool = False
          ) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start the app with its stdout and stderr on two pipes (or two pseudo-terminals);
    return it and the two fds to read.

    The app gets its own process group, so a terminal's Ctrl-C reaches the agent
    alone and is passed on once, not twice.
    """
    out_r, out_w = _pty() if pty else _pipe()
    try:
        err_r, err_w = _pty() if pty else _pipe()
    except BaseException:
        os.close(out_r)
        os.close(out_w)
        raise
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

    With ``Overflow.BLOCK`` it stops reading when the buffer is full, so the app blocks
    on a full pipe and nothing is lost; with ``Overflow.DROP_OLDEST`` it never stops.
    With ``nap`` (seconds), a short read is followed by that long without reading, so
    that the next read takes many of the app's writes at once (see ``READ_NAP``).
    """

    def __init__(self, stream: str, tag: str, buffer: Buffer, *, policy: Overflow,
                 max_line_bytes: int, pipeline: Pipeline | None = None,
                 clock: Callable[[], float] = time.monotonic, tee: int | None = None,
                 nap: float = 0.0) -> None:
        self.name = stream
        self.tee = tee  # a file descriptor to copy the raw output to (--tee-console)
        self.buffer = buffer
        self.policy = policy
        self.stream = LineStream(tag, {"stream": stream}, buffer, policy=policy,
                                 max_line_bytes=max_line_bytes, pipeline=pipeline, clock=clock)
        self._clock = clock
        self.transport: asyncio.ReadTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False  # the buffer is full
        self.nap = nap
        self.napping = False  # letting the pipe fill after a short read
        self.naps = 0
        self._finished = False
        self._waiting: set[asyncio.Task[None]] = set()  # for room in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.tee is not None:
            self._copy(data)
        # A read (up to 256 KiB from a 1 MiB pipe) goes to the buffer in pieces of at
        # most a quarter of its cap: under drop_oldest a piece whose records cannot fit
        # even in an empty buffer is dropped whole, and a small --buffer-size must not
        # lose whole reads for it.
        # (A read within one piece is fed as it is: a slice of all of a bytes is itself.)
        step = max(self.buffer.max_bytes // 4, 4096)
        for at in range(0, len(data), step):
            self.stream.feed(data[at:at + step])
        assert self.transport is not None
        if self.policy is Overflow.BLOCK and not self.buffer.has_room() and not self.paused:
            self.paused = True
            self.transport.pause_reading()
            start_task(self._waiting, self._resume_when_room())
        elif self.nap and len(data) < NAP_BELOW and not self.napping:
            self.napping = True
            self.naps += 1
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(self.nap, self._wake)

    def _wake(self) -> None:
        self.napping = False
        self._resume()

    def _resume(self) -> None:
        if (not self.paused and not self.napping and self.transport is not None
                and not self.transport.is_closing()):
            self.transport.resume_reading()

    def _copy(self, data: bytes) -> None:
        """Copy to the console as it came; a console that went away stops the copying."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.tee, view):]  # type: ignore[arg-type]
        except OSError:
            self.tee = None

    async def _resume_when_room(self) -> None:
        await self.buffer.wait_for_room()
        self.paused = False
        # The app's silence is counted from now: what it wrote meanwhile is in the pipe.
        self.stream.last_data = self._clock()
        self._resume()

    def tick(self, now: float, partial_flush: float) -> None:
        """Flush a line waiting for its newline, or a multiline record, when due.

        Not while reading is paused because the buffer is full: the rest of the line
        may be waiting in the pipe, and the app is not quiet, the agent is not reading.
        """
        self.stream.tick(now, math.inf if self.paused else partial_flush)

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.stream.flush_all(eof=True)

    def connection_lost(self, exc: Exception | None) -> None:
        # A pseudo-terminal's master reports the end as EIO, not EOF.
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            self._finish()
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Stop reading (e.g. when orphaned grandchildren keep the pipe open)."""
        if self.transport is not None:
            self.transport.close()
