"""Group the spool's writes into commits: one thread writes and fdatasyncs them.

Appends queue their bytes here; a commit starts ``delay`` after the first of them, or
at once when ``max_bytes`` are waiting, and runs in a thread of its own so the event
loop never waits on the disk. One commit at a time: each file ends where its last
commit left it, so a failed commit can cut exactly its own bytes off again.

The thread takes commits from a queue and hands each result back with one
``call_soon_threadsafe``: a commit costs the loop one wakeup, where
``run_in_executor`` cost it a concurrent future, its chaining to an asyncio future and
a done callback more (about half the CPU of a commit's round trip, which at one commit
a 512 KiB batch is tens of nanoseconds a line).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable

from .spool_format import Write, commit_group

__all__ = ["CommitQueue"]

Futures = list[asyncio.Future[None]]
#: A commit for the thread: the work, the loop to answer on, and what to call there
#: with the exception the work raised (None: it succeeded).
_Job = tuple[Callable[[], None], asyncio.AbstractEventLoop,
             Callable[[BaseException | None], None]]


class CommitQueue:
    """Writes waiting for the commit thread, and the futures their commit resolves.

    Args:
        delay: wait at most this long to group writes into one commit.
        max_bytes: commit at once when this much is waiting.
        writev, fsync: how the thread writes and syncs (test seams).
        done: called on the loop once a commit is over, with what it raised (None: it
            succeeded), its writes and their futures.
    """

    def __init__(self, *, delay: float, max_bytes: int = 256 << 10,
                 writev: Callable[[int, list[bytes]], None], fsync: Callable[[int], None],
                 done: Callable[[BaseException | None, list[Write], Futures], None]) -> None:
        self.delay = delay
        self.max_bytes = max_bytes
        self._writev = writev
        self._fsync = fsync
        self._done = done
        self.writes: list[Write] = []
        self.bytes = 0
        self.futures: Futures = []
        self.dir_fd = -1  # the directory, synced with the next commit when dir_dirty
        self.dir_dirty = False
        self.busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> bool:
        """Something to commit: writes, or a directory to sync."""
        return bool(self.writes) or self.dir_dirty

    def queue(self, write: Write) -> None:
        self.writes.append(write)
        self.bytes += write.size
        write.seg.size += write.size

    def requeue(self, writes: list[Write], futures: Futures) -> None:
        """A commit the disk refused: first in line again (its segments' sizes already
        count it), with the directory sync it may have carried."""
        self.writes[:0] = writes
        self.futures[:0] = futures
        self.bytes += sum(w.size for w in writes)
        self.dir_dirty = True

    def schedule(self) -> None:
        """Commit soon: at once if enough is waiting, else after ``delay``."""
        if self.busy:
            return
        if self.bytes >= self.max_bytes:
            self.cancel_timer()
            self.start()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.start)

    def start(self) -> None:
        """Hand everything waiting to the commit thread, unless a commit is running."""
        self._timer = None
        if self.busy or not self.waiting:
            return
        self.busy = True
        writes, self.writes = self.writes, []
        futures, self.futures = self.futures, []
        self.bytes = 0
        dir_fd = self.dir_fd if self.dir_dirty else -1
        self.dir_dirty = False
        starts = {w.seg.fd: w.seg.committed for w in writes}
        work = functools.partial(commit_group, writes, dir_fd, starts,
                                 writev=self._writev, fsync=self._fsync)
        loop = asyncio.get_running_loop()
        if self._thread is None:
            # A daemon: a spool never closed must not keep the process from exiting
            # (nothing it holds is acked before its commit ends).
            self._thread = threading.Thread(target=_run_commits, args=(self._jobs,),
                                            name="spool-commit", daemon=True)
            self._thread.start()
        self._jobs.put((work, loop, lambda exc: self._finished(exc, writes, futures)))

    def _finished(self, exc: BaseException | None, writes: list[Write],
                  futures: Futures) -> None:
        self.busy = False
        self._done(exc, writes, futures)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self) -> None:
        """End the thread once the commit it runs (if any) is over."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None


def _run_commits(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """The commit thread: run each commit, then answer on its loop."""
    while (job := jobs.get()) is not None:
        work, loop, answer = job
        exc: BaseException | None = None
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - handed to the loop, as an executor would
            exc = e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(answer, exc)
