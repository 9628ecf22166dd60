"""Follow log files by path or glob, across rotation and truncation, by polling.

An enclave has no inotify guarantees and its files live in RAM, so this polls
(``poll_interval``) with ``stat``/``fstat`` and reads with ``pread``. Offsets are
kept in memory only: there is no disk to keep them on, and the enclave's files do
not outlive the agent either.

- **Identity** is (device, inode, fingerprint): the fingerprint is the file's first
  ``fingerprint_bytes`` bytes (fewer while the file is shorter; two fingerprints
  agree when the shorter is a prefix of the longer). An inode number freed by a
  deleted file and given to a new one is told apart by its first bytes.
- **One fd per followed file**: a file renamed away (rotation) is read to its end
  through its fd; it is let go only once at its end and unchanged for
  ``rotated_idle`` (never while it grows, whatever the time). The new file under
  the old name is read from 0.
- **A rotated file the glob matches again** (``app.log*`` matching ``app.log.1``)
  is the same file: it continues from its offset. Once let go, its identity and
  offset are remembered for as long as the glob still shows it (a file missing from
  one listing, renamed while the directory was read, is not forgotten until the next
  poll misses it too).
- **Truncation** (size below the offset, or the first bytes changed) restarts at 0,
  counted; a partial line cut by it is dropped, counted, never glued.
- **copytruncate copies** (opt-in, ``copytruncate = true``): a new file whose first
  bytes are those of a file we read before it was truncated is its copy, read from
  where we had got to: the lines written between our last read and the truncation
  are recovered, none is read twice.
- **When the buffer is full** reading waits: the file is the buffer. It resumes once
  the buffer is below ``RESUME_BELOW`` (three quarters) of its cap, then reads in a run.
- **Polling adapts**: after a poll that read something the next one comes after
  ``ACTIVE_POLL`` (10 ms), and the wait doubles with each empty poll up to
  ``poll_interval``, so a busy file is followed closely and an idle one cheaply.
- **delete_rotated**: a rotated file is deleted (RAM freed) once all of it is acked.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fluent_forward.conventions import Overflow

from ..buffer import Buffer
from ..config import FileSource
from ..processing import Pipeline
from .stream import LineStream

__all__ = ["FollowedFile", "TailSource"]

log = logging.getLogger(__name__)

#: One read, and so one turn of the event loop in which the shipper cannot write.
#: 256 KiB turns (1.5-2 ms with ``--sign``, which numbers and hashes each record)
#: let the relay's input come in bursts, and a read's entries were more than half a
#: 512 KiB batch, so each batch held one read. 128 KiB: three reads a batch, the same
#: CPU a line as 256 KiB (64 KiB costs more: four times the reads of 256 KiB).
#: Figures in the README (Signing: what it costs).
READ_SIZE = 128 * 1024
#: After a poll that read something, the next comes this soon; each poll that finds
#: nothing doubles the wait, up to ``poll_interval``. A file being written is followed
#: within milliseconds, an idle one costs what ``poll_interval`` says.
ACTIVE_POLL = 0.01
#: Reading that waited for room in the buffer resumes once it is below this share of
#: its cap, not at the first ack: then it reads a run of chunks in one go instead of
#: one chunk per ack, each after a wakeup on cold caches.
RESUME_BELOW = 0.75
#: Reads per file per poll before the other files get their turn.
READS_PER_TURN = 16
#: Most identities of let-go files remembered.
MAX_REMEMBERED = 4096
#: Most fingerprints of truncated files remembered (copytruncate).
MAX_COPIES = 64

Key = tuple[int, int]


def _path_of(fd: int, key: Key) -> str | None:
    """Where an open file is now (renamed out of every glob), if it still has a name."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        st = os.stat(path)
    except OSError:
        return None
    return path if (st.st_dev, st.st_ino) == key else None


class FollowedFile:
    """One open file being read."""

    def __init__(self, fd: int, key: Key, path: str, spec_index: int, stream: LineStream,
                 offset: int, fingerprint: bytes, now: float) -> None:
        self.fd = fd
        self.key = key
        self.origin = path  # the name records carry, and whose loss means rotation
        self.spec_index = spec_index
        self.stream = stream
        self.offset = offset
        self.fingerprint = fingerprint
        self.last_change = now
        self.rotated = False
        self.deleted = False
        self.finished = False
        self.acked = 0
        self.unlisted = False  # missing from a listing when it was to be let go

    def parts_acked(self, parts: int) -> None:
        self.acked += parts


@dataclass(slots=True)
class _Remembered:
    origin: str
    fingerprint: bytes
    offset: int
    size: int
    mtime_ns: int
    missing: bool = False  # not seen by the last poll


@dataclass(slots=True)
class TailStats:
    """Counters over every followed file, for metrics."""

    opened: int = 0
    rotations: int = 0
    truncations: int = 0
    deleted: int = 0
    inode_reuses: int = 0
    copies: int = 0
    dropped_partial_bytes: int = 0


class TailSource:
    """Every ``[[file]]`` of the configuration, polled by one task."""

    def __init__(self, specs: Sequence[FileSource], buffer: Buffer, *, default_tag: str,
                 max_line_bytes: int, partial_flush: float, poll_interval: float,
                 rotated_idle: float, fingerprint_bytes: int,
                 make_pipeline: Callable[[int, dict[str, str]], Pipeline | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.specs = list(specs)
        self.buffer = buffer
        self.tags = [s.tag or f"{default_tag}.file" for s in self.specs]
        self.max_line_bytes = max_line_bytes
        self.partial_flush = partial_flush
        self.poll_interval = poll_interval
        self.rotated_idle = rotated_idle
        self.fp_bytes = fingerprint_bytes
        self.make_pipeline = make_pipeline
        self._clock = clock
        self.followed: dict[Key, FollowedFile] = {}
        self.remembered: dict[Key, _Remembered] = {}
        self.copies: dict[bytes, int] = {}
        self.stats = TailStats()
        self.released_lines = [0] * len(self.specs)
        self.released_bytes = [0] * len(self.specs)
        self.bytes_read = 0  # by every file, ever

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        wait = self.poll_interval
        while True:
            before = self.bytes_read
            busy = await self.poll()
            # After a poll that read something, soon; after an empty one, twice as late.
            active = busy or self.bytes_read != before
            wait = min(ACTIVE_POLL if active else wait * 2, self.poll_interval)
            await asyncio.sleep(0 if busy else wait)

    async def drain(self) -> None:
        """Read everything there is now (the agent is stopping), then flush held lines."""
        while await self.poll(final=True):
            pass
        for f in self.followed.values():
            f.stream.flush_all()

    def close(self) -> None:
        for f in self.followed.values():
            os.close(f.fd)
        self.followed.clear()

    def source_stats(self) -> dict[str, dict[str, int]]:
        """Lines and bytes read, per configured path."""
        out = {}
        for i, spec in enumerate(self.specs):
            files = [f for f in self.followed.values() if f.spec_index == i]
            out[f"file:{spec.path}"] = {
                "lines": self.released_lines[i] + sum(f.stream.lines for f in files),
                "bytes": self.released_bytes[i] + sum(f.stream.bytes for f in files),
                "files": len(files)}
        return out

    async def poll(self, final: bool = False) -> bool:
        """One round: service followed files, then pick up new ones. True if not idle."""
        now = self._clock()
        paths = self._glob()
        by_key: dict[Key, str] = {}
        for path, (st, _) in paths.items():
            by_key.setdefault((st.st_dev, st.st_ino), path)
        busy = False
        for f in list(self.followed.values()):
            busy |= await self._service(f, paths, by_key, now, final)
        for path, (st, index) in paths.items():
            key = (st.st_dev, st.st_ino)
            if key not in self.followed and by_key.get(key) == path:
                busy |= self._discover(path, st, index, now)
        for key, mem in list(self.remembered.items()):
            if key in by_key:
                mem.missing = False
            elif mem.missing:
                del self.remembered[key]  # gone or out of every glob: forget it
            else:
                # Maybe renamed while glob listed the directory (then it is under no
                # name for this one poll): forget it only if the next poll agrees.
                mem.missing = True
        return busy

    def _glob(self) -> dict[str, tuple[os.stat_result, int]]:
        found: dict[str, tuple[os.stat_result, int]] = {}
        for index, spec in enumerate(self.specs):
            for path in sorted(glob.glob(spec.path)):
                if path in found:
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[path] = (st, index)
        return found

    # -- a followed file ---------------------------------------------------------------

    async def _service(self, f: FollowedFile, paths: dict[str, tuple[os.stat_result, int]],
                       by_key: dict[Key, str], now: float, final: bool) -> bool:
        st = os.fstat(f.fd)
        origin = paths.get(f.origin)
        if not f.rotated and (origin is None or (origin[0].st_dev, origin[0].st_ino) != f.key):
            f.rotated = True
            self.stats.rotations += 1
        if st.st_nlink == 0:
            f.deleted = f.rotated = True
        if st.st_size < f.offset or not self._same_start(f, st.st_size):
            self._truncated(f)
        for _ in range(READS_PER_TURN):
            if not self.buffer.has_room():  # the file is the buffer
                await self.buffer.wait_for_room(below=int(self.buffer.max_bytes * RESUME_BELOW))
            data = os.pread(f.fd, READ_SIZE, f.offset)
            if not data:
                break
            self._capture_fingerprint(f, data)
            f.offset += len(data)
            self.bytes_read += len(data)
            f.stream.feed(data)
            f.last_change = now
            await asyncio.sleep(0)
        else:
            return True
        if final:
            return False
        f.stream.tick(now, self.partial_flush)
        if f.rotated and now - f.last_change >= self.rotated_idle:
            self._let_go(f, by_key, st)
        return False

    def _same_start(self, f: FollowedFile, size: int) -> bool:
        """Whether the file still starts with the bytes it started with."""
        n = len(f.fingerprint)
        if not n or size < n:
            return size >= n
        return os.pread(f.fd, n, 0) == f.fingerprint

    def _capture_fingerprint(self, f: FollowedFile, data: bytes) -> None:
        have = len(f.fingerprint)
        if have < self.fp_bytes and f.offset <= have < f.offset + len(data):
            f.fingerprint += data[have - f.offset:self.fp_bytes - f.offset]

    def _truncated(self, f: FollowedFile) -> None:
        self.stats.truncations += 1
        if self.specs[f.spec_index].copytruncate and len(f.fingerprint) == self.fp_bytes:
            self.copies[f.fingerprint] = f.offset
            while len(self.copies) > MAX_COPIES:
                del self.copies[next(iter(self.copies))]
        log.info("%s was truncated at offset %d; reading it from the start", f.origin, f.offset)
        self.stats.dropped_partial_bytes += f.stream.reset()
        f.offset = 0
        f.fingerprint = b""

    def _let_go(self, f: FollowedFile, by_key: dict[Key, str], st: os.stat_result) -> None:
        """A rotated file read to its end and quiet: close it (or delete it once acked)."""
        if not f.finished:
            f.stream.flush_all(eof=True)
            f.finished = True
        if self.specs[f.spec_index].delete_rotated and not f.deleted:
            if f.acked < f.stream.adds:  # not all of it acked yet
                return
            path = by_key.get(f.key) or _path_of(f.fd, f.key)
            if path is not None:
                try:
                    os.unlink(path)
                    self.stats.deleted += 1
                    log.info("deleted rotated file %s: all of it was acked", path)
                except OSError as exc:
                    log.warning("cannot delete rotated file %s: %s", path, exc.strerror)
        elif not f.deleted and f.key in by_key:
            self.remembered[f.key] = _Remembered(f.origin, f.fingerprint, f.offset,
                                                 st.st_size, st.st_mtime_ns)
            while len(self.remembered) > MAX_REMEMBERED:
                del self.remembered[next(iter(self.remembered))]
        elif not f.deleted and not f.unlisted:
            f.unlisted = True  # maybe renamed while glob listed the directory: look again
            return
        self.released_lines[f.spec_index] += f.stream.lines
        self.released_bytes[f.spec_index] += f.stream.bytes
        os.close(f.fd)
        del self.followed[f.key]

    # -- new files ---------------------------------------------------------------------

    def _discover(self, path: str, st: os.stat_result, index: int, now: float) -> bool:
        key = (st.st_dev, st.st_ino)
        mem = self.remembered.get(key)
        if mem is not None and (st.st_size, st.st_mtime_ns) == (mem.size, mem.mtime_ns):
            return False  # a file we let go, unchanged
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != key:
            # Renamed between the listing's stat and this open (logrotate shifting
            # app.log.1 to app.log.2): the name is another file now, maybe one we
            # follow. Keyed as the listed one it would be read twice; the next poll
            # lists both under their new names.
            os.close(fd)
            return True
        fp = os.pread(fd, self.fp_bytes, 0)
        origin, offset = path, 0
        if mem is not None:
            del self.remembered[key]
            # One file's fingerprints agree: the shorter is a prefix of the longer.
            same = fp[:len(mem.fingerprint)] == mem.fingerprint[:len(fp)]
            if same and st.st_size >= mem.offset:
                origin, offset = mem.origin, mem.offset  # the same file, grown
            else:
                self.stats.inode_reuses += 1
                log.info("%s reuses the inode of a file we read; reading it from the start",
                         path)
        elif self.specs[index].copytruncate and len(fp) == self.fp_bytes:
            offset = self._copy_offset(fp, key, st.st_size)
        fields = {"file": origin}
        f = FollowedFile(fd, key, origin, index, None, offset, fp, now)  # type: ignore[arg-type]
        f.stream = LineStream(self.tags[index], fields, self.buffer, policy=Overflow.BLOCK,
                              max_line_bytes=self.max_line_bytes,
                              pipeline=self.make_pipeline(index, fields),
                              owner=f if self.specs[index].delete_rotated else None,
                              clock=self._clock)
        self.followed[key] = f
        self.stats.opened += 1
        log.info("following %s from offset %d", path, offset)
        return True

    def _copy_offset(self, fp: bytes, key: Key, size: int) -> int:
        """Where to start in a new file that is a copytruncate copy (0 if it is not)."""
        offset = self.copies.pop(fp, None)
        if offset is None:
            for f in self.followed.values():
                if f.key != key and f.fingerprint == fp:
                    offset = f.offset  # copied, the original not truncated yet
                    break
        if offset is None:
            return 0
        self.stats.copies += 1
        return min(offset, size)
