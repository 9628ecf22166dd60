"""The relay's disk spool: agents' batches are durable before they are acked.

Layout of the spool directory::

    lock                      flock()ed by the one relay that owns the directory
    0000000000000001.seg      segments, append-only, oldest first
    0000000000000002.seg
    acked                     where forwarding had got to (rewritten on every ack)
    dead-letter.jsonl         frames Fluent Bit kept refusing, set aside

The parts, each in its module: a segment's format and file IO (``spool_format``), the
commit thread (``spool_commit``), recovery at start (``spool_recovery``), reading in
order with the entries out for ack and the read cache (``spool_cursor.Cursor``), the
agent runs followed (``runs``) and resent batches (``spool_dedup``), room
and disk errors (``spool_disk``), the replay window (``replay``). A segment holds each
batch's entries exactly as they will be forwarded, stamped with the enclave's identity.

Durability: appends are written and ``fdatasync``ed by one commit thread, in groups
(after ``commit_delay`` or once ``commit_bytes`` are waiting), so the event loop never
waits on the disk. ``append`` returns a future that resolves
only after the fdatasync covering the entry returned; the relay acks the agent then.
Creating or removing a segment also fsyncs the directory.

Forwarding reads committed entries in order and hands them to the output; a
segment is deleted once every entry in it was acked downstream and has left the
replay window (``replay.py``: kept to send again if Fluent Bit restarts). On start the spool
checks every segment, cuts a torn tail (a crash mid-write), and forwards whatever was
not acked. The ``acked`` mark is rewritten in place on every downstream ack (and
fsynced on a timer), so after a relay crash only the batches that were in flight to
Fluent Bit are forwarded again (after a machine crash, also those acked since the last
sync): duplicates, never loss.

A full disk is a full spool: the cap is the smaller of ``max_bytes`` and what the
filesystem leaves (``spool_disk.DiskRoom``), and a write that fails for want of room
(ENOSPC, EDQUOT, EIO) stalls the spool: the failed group is cut off the files, kept in
memory and retried on a timer; appends wait meanwhile, so agents are not acked and
slow down, their connections open. It resumes by itself once the write goes through.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from fluent_forward.aio import until
from fluent_forward.conventions import Overflow

from .replay import ReplayWindow
from .runs import DEFAULT_RUNS, Gap, Runs
from .spool_commit import CommitQueue
from .spool_cursor import Cursor
from .spool_dedup import Resent
from .spool_disk import AckedMark, DiskRoom, Gate, is_disk_full, lock_directory, read_mark
from .spool_format import (
    FORMAT_VERSION,
    FRAME,
    HEADER,
    MAGIC,
    Segment,
    SpoolEntry,
    SpoolError,
    SpoolStats,
    Write,
    _writev_all,
    payload_parts,
    segment_path,
)
from .spool_recovery import Recovery, append_dead_letters

__all__ = ["Spool"]

log = logging.getLogger(__name__)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Spool:
    """A durable FIFO of batches.

    Args:
        path: the spool directory (created if missing).
        max_bytes: cap on the segments' total size.
        full: what to do at the cap.
        segment_bytes: start a new segment past this size.
        commit_delay: wait at most this long to group appends into one fdatasync.
        dedup_boots: follow up to this many agent runs (``runs``, where gaps in their
            sequences are found), and remember their last sequence numbers
            (``spool_dedup``), to ack a resent batch without spooling it twice.
        fsync: the sync function (a test seam).
        writev: writes a list of buffers to a file descriptor, all of them (a test seam).
        retry_interval: seconds between attempts to write again after the disk refused
            a write (full, over quota, or failing).
        replay_window: keep batches this many seconds after downstream acked them, to
            send again if Fluent Bit restarts (``replay.py``); 0: none.
    """

    def __init__(self, path: str, *, max_bytes: int = 1 << 30, full: Overflow = Overflow.BLOCK,
                 segment_bytes: int = 32 << 20, commit_delay: float = 0.002,
                 dedup_boots: int = DEFAULT_RUNS, fsync: Callable[[int], None] = os.fdatasync,
                 writev: Callable[[int, list[bytes]], None] = _writev_all,
                 retry_interval: float = 1.0, replay_window: float = 0.0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.full = full
        self.segment_bytes = segment_bytes  # at most a quarter of the cap: _segment_limit
        self._commits = CommitQueue(delay=commit_delay, writev=writev, fsync=fsync,
                                    done=self._committed)
        self.retry_interval = retry_interval
        self.room = DiskRoom(path)
        self._mark = AckedMark(os.path.join(path, "acked"))
        self.gate = Gate(path, retry_interval=retry_interval, details=self._room_details)
        self._retry_timer: asyncio.TimerHandle | None = None
        self._waiting_need = 0  # the largest batch waiting for room
        self._last_seg_id = 0  # segment ids only grow, even when every segment is gone
        self.replay = ReplayWindow(replay_window)
        self.stats = SpoolStats()
        self._segments: collections.OrderedDict[int, Segment] = collections.OrderedDict()
        self._lock_fd = -1
        self._dir_fd = -1
        self._changed = asyncio.Event()
        self._unlinking: set[asyncio.Future[None]] = set()  # segments being deleted
        #: Forwarding: where reading got, newest entries cached, entries out for ack.
        self.cursor = Cursor(self._segments)
        #: The agent runs followed, seeded from disk at open: the relay's one sequence
        #: tracker (the listener shares it), so a gap is counted here across restarts.
        self.runs = Runs(dedup_boots)
        self.runs.on_gap = self._gap
        #: Duplicates: recent (boot, seq) -> the future of the append that stored it
        #: (None: recovered from disk, so durable).
        self.resent = Resent(self.runs)
        self._dropped_batches = 0
        self._closed = False

    # -- opening and recovery --------------------------------------------------------

    def open(self) -> None:
        """Create or lock the directory and recover what it holds."""
        self._dir_fd, self._lock_fd = lock_directory(self.path)
        self._commits.dir_fd = self._dir_fd
        mark = read_mark(self._mark.path)
        found = Recovery(self.path, self.stats)
        found.run(mark)
        for entry in found.entries:  # to recognise the batches agents resend
            self._remember(entry.boot_id, entry.seq, None, quiet=True)
        self._segments.update(found.segments)
        self.cursor.at = found.cursor  # (0, 0) if there is none
        if found.dir_dirty:
            os.fsync(self._dir_fd)
        # A new segment's id must follow every id the acked mark may name.
        self._last_seg_id = max([*self._segments, mark[0] if mark else 0])

    # -- appending -------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes in all segments (including writes not yet committed)."""
        return sum(s.size for s in self._segments.values())

    def _active(self, need: int) -> Segment:
        seg = next(reversed(self._segments.values()), None)
        if seg is None or seg.sealed or seg.size + need > self._segment_limit() and seg.records:
            if seg is not None:
                seg.sealed = True
            seg_id = self._last_seg_id = max(seg.id if seg else 0, self._last_seg_id) + 1
            path = segment_path(self.path, seg_id)
            seg = Segment(seg_id, path)
            seg.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                             | os.O_CLOEXEC, 0o640)
            self._segments[seg_id] = seg
            self._commits.queue(Write(seg, (HEADER.pack(MAGIC, FORMAT_VERSION, 0),), False))
            self._commits.dir_dirty = True
            if self.cursor.at == (0, 0):
                self.cursor.at = (seg_id, HEADER.size)
        return seg

    async def append(self, tag: str, entries: bytes, count: int, *,
                     boot_id: bytes | None = None, seq: int | None = None
                     ) -> asyncio.Future[None]:
        """Spool a batch; the future resolves once it is durable.

        Waits while the spool is full (``Overflow.BLOCK``). A batch an agent resent
        (same boot id and sequence number as one already spooled) is not stored
        again: the future of the first copy is returned.
        """
        first = self.resent.first(boot_id, seq)
        if first is not None:
            self.stats.duplicate_batches += 1
            return first
        entry = SpoolEntry(0, 0, tag, entries, count, boot_id, seq, time.time_ns())
        parts = payload_parts(entry)
        size = FRAME.size + sum(map(len, parts))
        while True:
            await self._make_room(size)
            try:
                seg = self._active(size)
                break
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self._disk_error(exc)  # a new segment could not be created
        entry.segment, entry.offset, entry.size = seg.id, seg.size, size
        self._commits.queue(Write(seg, parts, True))
        seg.records += count
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commits.futures.append(fut)
        self._remember(boot_id, seq, fut)
        self.stats.appended_batches += 1
        # Most of the time the forwarder is caught up and wants this entry next:
        # it takes it from memory instead of reading it back from the disk.
        self.cursor.cache.add(entry)
        self._commits.schedule()
        return fut

    def _remember(self, boot_id: bytes | None, seq: int | None,
                  fut: asyncio.Future[None] | None, *, quiet: bool = False) -> None:
        if boot_id is not None and seq is not None:
            self.runs.advance(boot_id, seq, quiet=quiet)  # a no-op if the intake did
            self.resent.remember(boot_id, seq, fut)

    def _gap(self, gap: Gap) -> None:
        self.stats.gap_batches += gap.batches

    @property
    def limit(self) -> int:
        """The effective cap: ``max_bytes``, or less if the disk cannot hold that."""
        on_disk = sum(s.committed for s in self._segments.values())
        return min(self.max_bytes, self.room.limit(on_disk))

    def _segment_limit(self) -> int:
        # At most a quarter of the cap, so that acked segments are deleted (making room)
        # well before the cap is reached, even on a small disk.
        return max(min(self.segment_bytes, self.limit // 4), 64 << 10)

    def _no_room(self, need: int) -> bool:
        limit = self.limit
        if self.gate.why == "full":
            # Once full, go on only when the largest waiting batch fits with an eighth
            # of the cap to spare (a deleted segment): a small record squeezing in must
            # not reopen the spool while the batches before it still wait.
            need = max(need, self._waiting_need) + limit // 8
        return self.size + need > limit

    async def _make_room(self, need: int) -> None:
        while self.gate.error or self._no_room(need):
            if self.gate.error:
                self._changed.clear()
                await self._changed.wait()
                continue
            if self._release_replay() or self._retire_active():
                continue
            if self.full is Overflow.DROP_OLDEST and self._drop_oldest():
                continue
            self.gate.close("full")
            self._waiting_need = max(self._waiting_need, need)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):  # read the disk's free space again
                await asyncio.wait_for(self._changed.wait(), self.room.refresh)
        if self.gate.why:
            self._waiting_need = 0  # the waiters say again what they need
        self.gate.open()

    def _retire_active(self) -> bool:
        """Delete the active segment if everything in it was forwarded and acked: at
        the cap it would otherwise hold its room forever (only sealed segments go)."""
        seg = next(reversed(self._segments.values()), None)
        if (seg is None or seg.committed != seg.size or self.cursor.out.in_segment(seg.id)
                or self.cursor.at != (seg.id, seg.committed) or self.replay.held(seg.id)):
            return False
        seg.sealed = True
        self._delete(seg)
        return True

    def _room_details(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.size, "effective_max_bytes": self.limit,
                "disk_free_bytes": self.room.free, "error": self.gate.error}

    def _disk_error(self, exc: OSError) -> None:
        self.gate.disk_error(exc)
        self.room.expire()
        if self._retry_timer is None and not self._closed:
            self._retry_timer = asyncio.get_running_loop().call_later(
                self.retry_interval, self._retry)
        self._changed.set()

    def _retry(self) -> None:
        self._retry_timer = None
        if self._commits.waiting:
            self._commits.start()  # success unstalls; failure stalls again
        else:
            self._unstall()  # a segment could not be created: appends try again

    def _unstall(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        self.gate.clear_error()
        self.room.expire()
        self._changed.set()

    def _drop_oldest(self) -> bool:
        """Delete the oldest segment, forwarded or not, counting its records.

        Only a sealed and committed one: the active segment is never dropped.
        """
        oldest = next(iter(self._segments.values()), None)
        if oldest is None or not oldest.sealed or oldest.committed != oldest.size:
            return False
        self._delete(oldest, dropped=True)
        return True

    # -- committing ------------------------------------------------------------------

    def _committed(self, exc: BaseException | None, writes: list[Write],
                   futures: list[asyncio.Future[None]]) -> None:
        if is_disk_full(exc):
            # The disk refused a commit (full, over quota, failing): keep the group,
            # first in line, stop taking appends, and write it again on a timer. The
            # agents are not acked meanwhile, and their connections stay open.
            assert isinstance(exc, OSError)
            self._commits.requeue(writes, futures)
            self._disk_error(exc)
            return
        if exc is not None:
            # The disk failed under us: nothing in this group is acked; the agents
            # keep those batches and resend them.
            log.error("spool %s: commit failed: %s", self.path, exc)
            for fut in futures:
                if not fut.done():
                    fut.set_exception(SpoolError(f"spool commit failed: {exc}"))
                    fut.exception()  # retrieved: the ack loop that awaits it may be gone
        else:
            if self.gate.error:
                self._unstall()
            for w in writes:
                w.seg.committed += w.size
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)
            for seg in self._segments.values():
                if seg.sealed and seg.committed == seg.size:
                    seg.close()
        self._changed.set()
        if self._commits.waiting:
            self._commits.schedule()

    # -- forwarding ------------------------------------------------------------------

    async def next_entry(self) -> SpoolEntry:
        """The next committed entry to forward, in order; waits for one."""
        while True:
            entry = self.cursor.read(self._maybe_delete)
            if entry is not None:
                self.cursor.out.add((entry.segment, entry.offset))
                self.stats.forwarded_batches += 1
                return entry
            self._changed.clear()
            await self._changed.wait()

    def ack(self, entry: SpoolEntry, *, replay: bool = True) -> None:
        """The output has ``entry`` safe: it may leave the spool (after the replay window,
        unless ``replay`` is false)."""
        moved = self.cursor.out.ack((entry.segment, entry.offset))
        if moved is None:
            return  # its segment was dropped meanwhile
        if replay:
            self.replay.add(entry.segment, entry.offset, time.monotonic())
        self.stats.acked_batches += 1
        if moved:
            try:
                self._write_mark()
            except OSError as exc:  # the timer tries again, and logs it
                log.debug("spool: cannot write the acked mark: %s", exc.strerror)
        seg = self._segments.get(entry.segment)
        if seg is not None:
            self._maybe_delete(seg)
        self.expire_replay()
        self._changed.set()  # wait_drained() waits on acks

    def _maybe_delete(self, seg: Segment) -> None:
        """Delete a segment once it is read to its end and every entry in it is acked."""
        if (seg.sealed and seg.committed == seg.size and self.cursor.done_with(seg)
                and not self.replay.held(seg.id)):
            self._delete(seg)

    # -- the replay window (replay.py) -------------------------------------------------

    def expire_replay(self) -> None:
        """Delete the segments whose batches have all left the replay window."""
        self._free_held(self.replay.expire(time.monotonic()))

    def _release_replay(self) -> bool:
        """Give up the replay window's oldest batches for room, until a segment goes;
        True if one did."""
        before = len(self._segments)
        while len(self._segments) == before and len(self.replay):
            self._free_held(self.replay.release_oldest())
        return len(self._segments) < before

    def _free_held(self, segments: list[int]) -> None:
        for seg_id in segments:
            seg = self._segments.get(seg_id)
            if seg is not None:
                self._maybe_delete(seg)

    def replayable(self) -> list[SpoolEntry]:
        """The batches downstream acked within the replay window, oldest first."""
        entries = []
        for seg_id, offset in self.replay.positions(time.monotonic()):
            seg = self._segments.get(seg_id)
            if seg is not None:
                entries.append(self.cursor.read_disk(seg, offset))
        return entries

    def _delete(self, seg: Segment, *, dropped: bool = False) -> None:
        if dropped:
            unsent, batches = self.cursor.unsent(seg)
            self._dropped_batches += batches
            self.stats.dropped_records += unsent
            log.warning("spool full: dropped segment %d (%d records not yet delivered)",
                        seg.id, unsent)
        seg.close()
        self._unlink(seg.path)
        del self._segments[seg.id]
        self.cursor.out.forget(seg.id)
        self._changed.set()

    def _unlink(self, path: str) -> None:
        """Delete a segment file in a worker thread; the directory is synced by the next
        commit after it is gone (a segment back after a crash is resent: duplicates).

        Not on the event loop: unlinking a 32 MiB segment just written takes 9 ms here
        (freeing its pages), and a relay taking 190 MB/s deletes six segments a second:
        every connection stood still 9 ms at a time, 5 % of the time."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: here and now; close() syncs the directory
            _unlink_quietly(path)
            self._commits.dir_dirty = True
            return
        fut = loop.run_in_executor(None, _unlink_quietly, path)
        self._unlinking.add(fut)
        fut.add_done_callback(self._unlinked)

    def _unlinked(self, fut: asyncio.Future[None]) -> None:
        self._unlinking.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("spool: could not delete a segment: %s", fut.exception())
        self._commits.dir_dirty = True
        if not self._closed:
            self._commits.schedule()

    def _write_mark(self) -> None:
        """Record how far downstream acked, so a restart resends only what was in flight."""
        mark = self.cursor.mark()
        if mark is not None:
            self._mark.write(mark)

    def write_hint(self) -> None:
        """Record how far forwarding got, and make it durable (the forwarder's timer)."""
        self._write_mark()
        self._mark.sync()

    # -- dead letters ----------------------------------------------------------------

    def dead_letter(self, entry: SpoolEntry, reason: str) -> None:
        """Set aside a batch downstream keeps refusing, then treat it as done."""
        append_dead_letters(self.path, [{
            "tag": entry.tag, "count": entry.count, "reason": reason,
            "entries_msgpack_b64": base64.b64encode(entry.entries).decode()}])
        self.stats.dead_lettered += 1
        self.ack(entry, replay=False)  # never sent again: Fluent Bit refuses it
        log.error("dead-lettered a batch of %d records on %s after Fluent Bit refused it "
                  "repeatedly (%s); see %s/dead-letter.jsonl", entry.count, entry.tag, reason,
                  self.path)

    # -- status and shutdown ---------------------------------------------------------

    def reconfigure(self, *, replay_window: float) -> None:
        """Take a reloaded configuration: of the spool's options only the replay window
        changes without a restart (from the next batch acked downstream)."""
        self.replay.seconds = replay_window

    def status(self) -> dict[str, Any]:
        st = self.stats
        return {**self._room_details(), "max_bytes": self.max_bytes, "state": self.gate.state,
                "disk_errors": self.gate.disk_errors, "replay_window_s": self.replay.seconds,
                "replayable_batches": len(self.replay),
                "segments": len(self._segments), "unacked_batches": len(self.cursor.out),
                "appended_batches": st.appended_batches, "acked_batches": st.acked_batches,
                "duplicates": st.duplicate_batches, "gaps": st.gap_batches,
                "dropped_records": st.dropped_records, "dead_lettered": st.dead_lettered,
                "corrupt_bytes": st.corrupt_bytes_set_aside, "backlog": self.backlog}

    async def wait_drained(self) -> None:
        """Return once every batch in the spool was acked downstream."""
        await until(self._changed, lambda: self.backlog <= 0)

    @property
    def backlog(self) -> int:
        """Batches in the spool not yet acked downstream."""
        st = self.stats
        return (st.appended_batches + st.recovered_batches - st.acked_batches
                - st.dead_lettered - self._dropped_batches)

    async def close(self) -> None:
        """Commit what is pending, record how far forwarding got, release the lock."""
        if self._closed:
            return
        self._closed = True
        self._commits.cancel_timer()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        await asyncio.gather(*self._unlinking, return_exceptions=True)
        self._commits.start()  # if anything waits and no commit runs
        await until(self._changed, lambda: not self._commits.busy)
        with contextlib.suppress(OSError):
            self.write_hint()
        for seg in self._segments.values():
            seg.close()
        if self.backlog == 0 and not self.cursor.out:
            # Everything was delivered: leave no segment behind, so that the directory
            # is empty and any relay version (an older one, after a downgrade) takes it.
            for seg in list(self._segments.values()):
                _unlink_quietly(seg.path)
            self._segments.clear()
            self._mark.remove()
            if self._dir_fd >= 0:
                os.fsync(self._dir_fd)
        self._mark.close()
        self._commits.shutdown()
        for fd in (self._dir_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._dir_fd = self._lock_fd = -1

