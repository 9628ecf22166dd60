"""Group the spool's writes into commits: one thread writes and fdatasyncs them.

Appends queue their bytes here; a commit starts ``delay`` after the first of them, or
at once when ``max_bytes`` are waiting, and runs in a thread of its own so the event
loop never waits on the disk. One commit at a time: each file ends where its last
commit left it, so a failed commit can cut exactly its own bytes off again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .spool_format import Write, commit_group

__all__ = ["CommitQueue"]

Futures = list[asyncio.Future[None]]


class CommitQueue:
    """Writes waiting for the commit thread, and the futures their commit resolves.

    Args:
        delay: wait at most this long to group writes into one commit.
        max_bytes: commit at once when this much is waiting.
        writev, fsync: how the thread writes and syncs (test seams).
        done: called on the loop with the finished job, its writes and futures.
    """

    def __init__(self, *, delay: float, max_bytes: int,
                 writev: Callable[[int, list[bytes]], None], fsync: Callable[[int], None],
                 done: Callable[[asyncio.Future[None], list[Write], Futures], None]) -> None:
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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-commit")

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
        job = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(commit_group, writes, dir_fd, starts,
                                              writev=self._writev, fsync=self._fsync))
        job.add_done_callback(lambda j: self._finished(j, writes, futures))

    def _finished(self, job: asyncio.Future[None], writes: list[Write],
                  futures: Futures) -> None:
        self.busy = False
        self._done(job, writes, futures)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
