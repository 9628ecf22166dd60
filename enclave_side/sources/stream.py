"""Bytes in, packed entries into the buffer: the half of the hot path every line source shares.

With no processing configured a read goes ``LineSplitter.feed`` ->
``EntryEncoder.encode`` -> ``Buffer.add``, one call each per read; with processing,
the encoder's place is taken by ``Pipeline.process_lines``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fluent_forward.conventions import Overflow

from ..buffer import AckWatcher, Buffer
from ..lines import EntryEncoder, Item, LineSplitter
from ..processing import Pipeline

__all__ = ["LineStream"]


class LineStream:
    """One stream of lines (a pipe, a file) into the buffer.

    Args:
        tag: the records' tag.
        fields: constant fields of every record (``stream``, ``file``).
        buffer: where entries go.
        policy: what ``Buffer.add`` does when it is full.
        max_line_bytes: longer lines are cut and flagged.
        pipeline: processing, or None for the plain fast path.
        owner: told when batches holding these records are acked.
    """

    def __init__(self, tag: str, fields: dict[str, str], buffer: Buffer, *, policy: Overflow,
                 max_line_bytes: int, pipeline: Pipeline | None = None,
                 owner: AckWatcher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tag = tag
        self.buffer = buffer
        self.policy = policy
        self.pipeline = pipeline
        self.owner = owner
        self.splitter = LineSplitter(max_line_bytes)
        self.encoder = EntryEncoder(fields)
        self._clock = clock
        self.last_data = clock()
        self.lines = 0  # lines read (before multiline and filters)
        self.bytes = 0
        self.adds = 0  # buffer.add calls made with ``owner``

    def feed(self, data: bytes) -> None:
        self.last_data = self._clock()
        self.bytes += len(data)
        items = self.splitter.feed(data)
        if items:
            self._emit(items, clean=self.splitter.clean, headers=self.splitter.headers)

    def _emit(self, items: list[Item], *, clean: bool = False,
              headers: list[bytes] | None = None) -> None:
        self.lines += len(items)
        if self.pipeline is None:
            entries = self.encoder.encode(items, time.time_ns(), clean=clean, headers=headers)
            self._add(entries, len(items), uniform=self.encoder.uniform)
        else:
            self._add(*self.pipeline.process_lines(items, time.time_ns()))

    def _add(self, entries: bytes, count: int, *, uniform: bool = False) -> None:
        if count:
            self.buffer.add(self.tag, entries, count, policy=self.policy, owner=self.owner,
                            uniform=uniform)
            if self.owner is not None:
                self.adds += 1

    def tick(self, now: float, partial_flush: float) -> None:
        """Send a line without newline after ``partial_flush`` of silence (flagged
        partial), and a multiline record whose time is up."""
        if self.splitter.pending and now - self.last_data >= partial_flush:
            self._emit(self.splitter.flush())
        if self.pipeline is not None:
            self._add(*self.pipeline.flush_due(now))

    def flush_all(self, *, eof: bool = False) -> None:
        """Send everything held. When the agent stops, an unfinished line goes flagged
        partial; at ``eof`` the last line is as complete as it will ever be (no flag)."""
        items: list[Item] = self.splitter.flush()
        if eof:
            items = [i if isinstance(i, bytes) else i[0] for i in items]
        if items:
            self._emit(items)
        if self.pipeline is not None:
            self._add(*self.pipeline.flush_due(0.0, force=True))

    def reset(self) -> int:
        """The data was truncated under us: send what is complete, drop the unfinished
        line (it will never be completed); return its length."""
        dropped = self.splitter.pending
        self.splitter = LineSplitter(self.splitter.max_line_bytes)
        if self.pipeline is not None:
            self._add(*self.pipeline.flush_due(0.0, force=True))
        return dropped
