"""The agent: run the app, capture its output, ship it, report how it ended.

On Nitro the enclave's init is PID 1 and runs the image's ``CMD``, which is this
agent with the app after ``--``; when the agent exits, the enclave shuts down. So the
agent never exits while the app lives, and the app's exit status, which nothing else
on Nitro would see, goes out as a record before the agent drains and exits with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from fluent_forward import __version__
from fluent_forward.codec import EventTime, pack_entry
from fluent_forward.handshake import ClientHandshake

from .buffer import DIAG_TAG, Buffer
from .child import FORWARDED_SIGNALS, PipeSource, Reaper, spawn
from .config import AgentConfig
from .shipper import make_shipper

__all__ = ["LIFECYCLE_TAG", "Agent", "PipelineLogHandler"]

log = logging.getLogger("enclave_side")

#: Tag of the agent's start and the app's exit records.
LIFECYCLE_TAG = "agent.lifecycle"


class PipelineLogHandler(logging.Handler):
    """Send the agent's own log records through the pipeline, on ``agent.log``.

    On Nitro stderr is the console, which production enclaves do not have; this is
    how an operator learns that the agent had trouble. It never waits and never
    evicts app records: when the buffer is full a diagnostic is dropped and counted.
    """

    def __init__(self, buffer: Buffer, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.buffer = buffer
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not self.buffer.has_room():
                self.dropped += 1
                return
            entry = pack_entry(EventTime.from_ns(int(record.created * 1e9)), {
                "log": record.getMessage(), "level": record.levelname.lower(),
                "logger": record.name})
            self.buffer.add(DIAG_TAG, entry, 1)
        except Exception:  # never let a diagnostic break the agent
            self.handleError(record)


def config_digest(config: AgentConfig) -> str:
    """A short digest of the configuration (the shared key left out), to tell runs apart."""
    shown = dataclasses.replace(config, shared_key="***" if config.shared_key else None)
    return hashlib.sha256(repr(shown).encode()).hexdigest()[:16]


def _factory(source: PipeSource) -> Callable[[], PipeSource]:
    return lambda: source


class Agent:
    """One agent run. ``await Agent(config).run()`` returns the exit code."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.boot_id = os.urandom(8)
        self.buffer = Buffer(boot_id=self.boot_id, max_bytes=config.buffer_bytes,
                             batch_bytes=config.batch_bytes, flush_interval=config.flush_interval)
        handshake = ClientHandshake(hostname=config.hostname, shared_key=config.shared_key,
                                    version=__version__)
        self.shipper = make_shipper(config.relay, self.buffer, handshake, window=config.window,
                                    handshake_wait=config.handshake_wait,
                                    connect_timeout=config.connect_timeout,
                                    max_backoff=config.max_backoff)
        self.sources: list[PipeSource] = []
        self.reaper = Reaper()
        self.child_pid: int | None = None
        self._stop = asyncio.Event()
        self._log_handler = PipelineLogHandler(self.buffer)

    def lifecycle(self, event: str, message: str, **fields: Any) -> None:
        """A protected record on ``agent.lifecycle`` (never dropped)."""
        record: dict[str, object] = {"log": message, "event": event}
        record.update(fields)
        self.buffer.add_record(LIFECYCLE_TAG, time.time_ns(), record)

    async def run(self) -> int:
        logging.getLogger().addHandler(self._log_handler)
        shipper = asyncio.create_task(self.shipper.run(), name="shipper")
        ticker = asyncio.create_task(self._tick(), name="ticker")
        self.lifecycle("agent_start", f"enclave-log-agent {__version__} starting",
                       version=__version__, boot_id=self.boot_id.hex(), pid=os.getpid(),
                       command=list(self.config.command), hostname=self.config.hostname,
                       config_digest=config_digest(self.config), clock_ns=time.time_ns())
        try:
            if self.config.command:
                code = await self._supervise()
            else:
                code = await self._until_stopped()
            await self._drain()
        finally:
            for task in (shipper, ticker):
                task.cancel()
            await asyncio.gather(shipper, ticker, return_exceptions=True)
            logging.getLogger().removeHandler(self._log_handler)
            self.reaper.uninstall()
        return code

    async def _until_stopped(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()
        log.info("stopping on signal; draining")
        return 0

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        self.reaper.install()
        argv = self.config.command
        try:
            proc, out_fd, err_fd = spawn(argv)
        except OSError as exc:
            code = 127 if exc.errno == errno.ENOENT else 126
            log.error("cannot start %s: %s", argv[0], exc.strerror or exc)
            self.lifecycle("child_exit", f"{argv[0]}: cannot start: {exc.strerror or exc}",
                           exit_code=code, error=str(exc.strerror or exc))
            return code
        self.child_pid = proc.pid
        status_fut = self.reaper.wait(proc.pid)
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, self._forward_signal, sig)
        for stream, fd in (("stdout", out_fd), ("stderr", err_fd)):
            source = PipeSource(stream, f"{self.config.tag}.{stream}", self.buffer,
                                policy=self.config.overflow,
                                max_line_bytes=self.config.max_line_bytes)
            await loop.connect_read_pipe(_factory(source), os.fdopen(fd, "rb", buffering=0))
            self.sources.append(source)
        log.info("started %s (pid %d)", argv[0], proc.pid)
        status = await status_fut
        proc.returncode = status.shell_code  # keep Popen from waiting on a reaped pid
        self.child_pid = None  # the pid may be reused now: signals from here are ignored
        await self._finish_pipes()
        self.lifecycle("child_exit", f"{argv[0]} (pid {proc.pid}) {status.describe()}",
                       pid=proc.pid, **status.record())
        if status.signal is not None or status.code:
            log.warning("%s %s", argv[0], status.describe())
        return status.shell_code

    def _forward_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.child_pid is None:
            log.info("%s while draining after the app exited; still draining", name)
            return
        log.info("passing %s to the app", name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child_pid, sig)

    async def _finish_pipes(self) -> None:
        """Read what the app wrote before it exited, then let go of the pipes.

        Waits for EOF, but not for grandchildren that keep a pipe open: once the pipes
        have been quiet (and not paused by a full buffer) for ``exit_grace``, stop.
        """
        loop = asyncio.get_running_loop()
        hard_deadline = loop.time() + self.config.drain_timeout
        while not all(s.closed.done() for s in self.sources):
            quiet = min(time.monotonic() - s.last_data for s in self.sources)
            paused = any(s.paused for s in self.sources)
            if (not paused and quiet >= self.config.exit_grace) or loop.time() >= hard_deadline:
                break
            await asyncio.wait([s.closed for s in self.sources], timeout=0.05)
        for source in self.sources:
            if not source.closed.done():
                source.flush_partial(0.0)
                source.close()

    async def _tick(self) -> None:
        """Seal due batches and flush long-waiting partial lines."""
        interval = min(self.config.flush_interval, 0.05)
        while True:
            await asyncio.sleep(interval)
            for source in self.sources:
                source.flush_partial(self.config.partial_flush)
            self.buffer.seal_due()

    async def _drain(self) -> None:
        self.buffer.seal_all()
        try:
            async with asyncio.timeout(self.config.drain_timeout):
                await self.buffer.wait_empty()
        except TimeoutError:
            st = self.buffer.stats()
            log.error("drain timed out after %ss: %d batches (%d bytes) not acked by %s",
                      self.config.drain_timeout, st.queued_batches + st.unacked_batches,
                      st.used_bytes, self.config.relay)

