"""The spool's relation to its disk: how much it may hold, and how far it got.

- ``DiskRoom``: the effective cap, the smaller of ``--spool-size`` and what the
  filesystem can still take (the spool's bytes plus the free space, minus a reserve
  left to the rest of the machine). The spool blocks at that cap as at a full spool,
  so a small disk means backpressure, not write errors.
- ``is_disk_full``: the write errors that mean "no room (now)": ENOSPC, EDQUOT, and
  EIO (a disk that failed may come back; the data is still in memory and rewritten).
  Those stall the spool (backpressure, retried on a timer) instead of failing batches.
- ``Gate``: whether appends go through, and why not, told once per change.
- ``AckedMark``: the ``acked`` file, rewritten in place on every ack. A process crash
  keeps the page cache, so after a SIGKILL the mark is exact and only the batches in
  flight to Fluent Bit are sent again; ``sync`` (on a timer) covers machine crashes.
  In place, with a fixed width, it needs no new disk block: it works on a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .spool_format import SpoolError

__all__ = ["DISK_FULL_ERRNOS", "AckedMark", "DiskRoom", "Gate", "is_disk_full", "lock_directory",
           "read_mark"]

log = logging.getLogger("parent_side.spool")

#: Write errors that stall the spool instead of failing the batches.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})

#: The reserve: 2% of the filesystem, at most this much (and at least one page).
MAX_RESERVE = 64 << 20


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` means the disk has no room (now), so the write is retried."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class DiskRoom:
    """The room the filesystem leaves the spool, refreshed at most every ``refresh`` s.

    Args:
        path: the spool directory.
        reserve: bytes left free for others; None: 2% of the filesystem, at most
            ``MAX_RESERVE``.
        statvfs: the statvfs function (a test seam).
    """

    def __init__(self, path: str, *, reserve: int | None = None, refresh: float = 1.0,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        self.path = path
        self.reserve = reserve
        self.refresh = refresh
        self._statvfs = statvfs
        self._limit = 1 << 62
        self._free = 0
        self._stamp = -refresh

    def limit(self, spooled: int, *, now: float | None = None) -> int:
        """The most the spool may hold, ``spooled`` being its bytes on disk now.

        The spool's own bytes plus the free space stay the same as it writes, so a
        reading a second old is still right for the spool's own writes.
        """
        now = time.monotonic() if now is None else now
        if now - self._stamp >= self.refresh:
            self._stamp = now
            try:
                st = self._statvfs(self.path)
            except OSError:
                return self._limit  # keep the last reading
            self._free = st.f_bavail * st.f_frsize
            reserve = self.reserve
            if reserve is None:
                reserve = max(min(st.f_blocks * st.f_frsize // 50, MAX_RESERVE), 4096)
            self._limit = max(spooled + self._free - reserve, 0)
        return self._limit

    def expire(self) -> None:
        """Read the filesystem again next time (space may have been freed)."""
        self._stamp = -self.refresh

    @property
    def free(self) -> int:
        """Free bytes at the last reading."""
        return self._free


#: ``segment offset`` in fixed width: every rewrite covers the last one exactly.
_MARK = "{:016d} {:016d}\n"


def read_mark(path: str) -> tuple[int, int] | None:
    """The (segment, offset) an ``acked`` file holds, or None."""
    try:
        with open(path, encoding="ascii") as f:
            seg, off = f.read().split()
            return int(seg), int(off)
    except (OSError, ValueError):
        return None


class AckedMark:
    """The ``acked`` file: everything before (segment, offset) was acked downstream."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._written: tuple[int, int] | None = None
        self._dirty = False

    def write(self, mark: tuple[int, int]) -> None:
        """Record ``mark`` (in the page cache: a process crash keeps it)."""
        if mark == self._written:
            return
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.pwrite(self._fd, _MARK.format(*mark).encode("ascii"), 0)
        self._written = mark
        self._dirty = True

    def sync(self) -> None:
        """Make the last mark durable (for machine crashes); on a timer."""
        if self._dirty and self._fd >= 0:
            self._dirty = False
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.sync()
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._written = None


class Gate:
    """Whether the spool takes appends, and why not: each change logged and reported
    once (a spool that sits at its cap logs at most once a minute).

    ``why`` is "" (appends go through), "full" (at the cap) or "disk: <error>" (the disk
    refused a write; ``error`` holds it until a write goes through again).
    """

    def __init__(self, path: str, *, retry_interval: float,
                 details: Callable[[], dict[str, Any]], quiet_for: float = 60.0) -> None:
        self.path = path
        self.retry_interval = retry_interval
        self.details = details
        self.quiet_for = quiet_for
        self.why = ""
        self.error = ""
        self.full_episodes = 0
        self.disk_errors = 0
        #: Called with ("full" | "disk_error" | "resumed", details) as appends stop and go.
        self.on_state: Callable[[str, dict[str, Any]], None] | None = None
        self._since = 0.0
        self._told = False
        self._last_full_report = -quiet_for

    @property
    def state(self) -> str:
        return "disk_error" if self.error else (self.why or "ok")

    def _reported(self, why: str) -> bool:
        """Whether this change is told (logged and reported), not just recorded."""
        if why != "full":
            return True
        return time.monotonic() - self._last_full_report >= self.quiet_for

    def close(self, why: str) -> None:
        """Appends wait from now on: agents are not acked, so they slow down."""
        if self.why == why:
            return
        self.why = why
        self._since = time.monotonic()
        self.full_episodes += why == "full"
        self._told = self._reported(why)
        if not self._told:
            return
        details = self.details()
        if why == "full":
            self._last_full_report = time.monotonic()
            log.warning("spool %s full (%d of %d bytes, %d free on its filesystem): agents "
                        "are not acked and wait until Fluent Bit takes more. If the output is "
                        "down, start it; if the disk is small, give the spool more room or a "
                        "smaller --spool-size", self.path, details["bytes"],
                        details["effective_max_bytes"], details["disk_free_bytes"])
        if self.on_state is not None:
            self.on_state("full" if why == "full" else "disk_error", details)

    def open(self) -> None:
        """Appends go through again."""
        if not self.why:
            return
        self.why = ""
        waited = time.monotonic() - self._since
        if not self._told:
            return  # its start was not told either
        log.info("spool %s takes batches again, after %.1fs", self.path, waited)
        if self.on_state is not None:
            self.on_state("resumed", {**self.details(), "waited_s": round(waited, 1)})

    def disk_error(self, exc: OSError) -> None:
        """The disk refused a write: log it once per episode, and close."""
        self.disk_errors += 1
        if self.error:
            return
        self.error = exc.strerror or str(exc)
        log.error("spool %s: cannot write (%s): agents are not acked and wait; retrying "
                  "every %gs, it resumes by itself. Free space on the spool's filesystem, "
                  "or set --spool-size below its free space", self.path, self.error,
                  self.retry_interval)
        self.close(f"disk: {self.error}")

    def clear_error(self) -> None:
        """A write went through: the disk has room again."""
        self.error = ""
        self.open()


def lock_directory(path: str) -> tuple[int, int]:
    """Create the spool directory if needed and take its lock: one relay per spool.

    Returns the directory's fd (to fsync it) and the lock file's, which holds the lock
    until closed. Raises ``SpoolError`` naming ``--spool`` and the fix.
    """
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        lock_fd = os.open(os.path.join(path, "lock"),
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise SpoolError(
            f"--spool {path}: {exc.strerror}. Give the relay a directory it can "
            "write (the systemd unit's StateDirectory is /var/lib/enclave-log-relay), "
            "another --spool DIR, or --spool none for memory-only mode") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(lock_fd)
        os.close(dir_fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SpoolError(f"--spool {path} is in use by another relay; two "
                             "relays cannot share a spool: give each its own "
                             "--spool DIR") from None
        raise
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    return dir_fd, lock_fd
