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
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from fluent_forward import __version__
from fluent_forward.aio import ForwardClient
from fluent_forward.conventions import DIAG_TAG, KEEPALIVE
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.errors import ConnectError
from fluent_forward.handshake import ClientHandshake

from .buffer import Buffer
from .config import AgentConfig, Processing
from .configfile import effective
from .nsm import NsmError, attester
from .patterns import UserPattern
from .processing import Pipeline
from .redact import CustomRule, Redactor
from .signing import Signer, SigningError
from .sources.child import FORWARDED_SIGNALS, READ_NAP, PipeSource, Reaper, spawn
from .sources.forward_input import ForwardInputServer
from .sources.kmsg import KmsgSource
from .sources.tail import TailSource

__all__ = ["LIFECYCLE_TAG", "METRICS_TAG", "Agent", "PipelineLogHandler"]

log = logging.getLogger("enclave_side")

#: Tag of the agent's start and the app's exit records.
LIFECYCLE_TAG = "agent.lifecycle"
#: Tag of the agent's periodic self-metrics.
METRICS_TAG = "agent.metrics"


class PipelineLogHandler(logging.Handler):
    """Send the agent's own log records through the pipeline, on ``agent.log``.

    On Nitro stderr is the console, which production enclaves do not have; this is
    how an operator learns that the agent had trouble. It never waits and never
    evicts app records: when the buffer is full a diagnostic goes to stderr only.
    """

    def __init__(self, buffer: Buffer, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not self.buffer.has_room():
                return
            entry = pack_entry(EventTime.from_ns(int(record.created * 1e9)), {
                "log": record.getMessage(), "level": record.levelname.lower(),
                "logger": record.name})
            self.buffer.add(DIAG_TAG, entry, 1)
        except Exception:  # never let a diagnostic break the agent
            self.handleError(record)


def config_digest(config: AgentConfig) -> str:
    """A short digest of the configuration, to tell runs apart; keys are left out, as
    ``effective`` leaves them out (a digest over a guessable config and a weak key would
    let the key be guessed)."""
    return hashlib.sha256(json.dumps(effective(config), sort_keys=True).encode()).hexdigest()[:16]


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
        # The shipper. On connect it waits briefly for a HELO (our relay sends one at
        # once; a plain Forward input sends none, and then it goes on without a
        # handshake); every batch not acked when a connection is lost is resent first
        # on the next one; slow acks on a live connection are waited for, never taken
        # for loss (a relay whose spool is full withholds acks on purpose: no ack
        # timeout). An idle agent sends our relay a heartbeat every KEEPALIVE seconds,
        # well within the relay's idle timeout. The parent is untrusted (Nitro's threat
        # model): the client takes only small frames of the client role (HELO, PONG,
        # acks); an ack for a chunk not in flight, or anything else unexpected, is
        # counted and closes the connection, and the agent reconnects and resends.
        self.shipper = ForwardClient(
            config.relay, self.buffer, handshake, handshake_wait=config.handshake_wait,
            require_handshake=config.shared_key is not None, window=config.window,
            connect_timeout=config.connect_timeout, max_backoff=config.max_backoff,
            ack_timeout=None, keepalive=KEEPALIVE, name="relay",
            logger=logging.getLogger("enclave_side.shipper"))
        self.sources: list[PipeSource] = []
        self.reaper = Reaper()
        self.child_pid: int | None = None
        self._stop = asyncio.Event()
        self._log_handler = PipelineLogHandler(self.buffer)
        red = config.redaction
        self.redactor = Redactor(red.builtin, [
            CustomRule(r.name, UserPattern(r.pattern, what=f"redact rule {r.name}",
                                           timeout=red.pattern_timeout),
                       r.replacement.encode("utf-8"))
            for r in red.rules]) if red.active else None
        self.pipelines: list[Pipeline] = []
        self.tail = TailSource(
            config.files, self.buffer, default_tag=config.tag,
            max_line_bytes=config.max_line_bytes, partial_flush=config.partial_flush,
            poll_interval=config.poll_interval, rotated_idle=config.rotated_idle,
            fingerprint_bytes=config.fingerprint_bytes,
            make_pipeline=lambda i, fields: self.pipeline(
                config.files[i].processing, fields, f"file[{i}]")) if config.files else None
        self.kmsg = KmsgSource(
            config.kmsg.path, config.kmsg.tag or f"{config.tag}.kmsg", self.buffer,
            pipeline=self.pipeline(config.kmsg.processing, {}, "kmsg"),
            poll_interval=config.poll_interval) if config.kmsg else None
        self.forward = [ForwardInputServer(
            fi.listen, self.buffer, pipeline=self.pipeline(fi.processing, {}, f"forward[{i}]"),
            shared_key=fi.shared_key, hostname=config.hostname, batch_bytes=config.batch_bytes)
            for i, fi in enumerate(config.forward_inputs)]
        self.metrics_skipped = 0
        self._seal_timer: asyncio.TimerHandle | None = None
        self.signer: Signer | None = None

    def pipeline(self, processing: Processing, fields: dict[str, str], what: str
                 ) -> Pipeline | None:
        """A source's processing; None when there is none (the plain fast path)."""
        if not processing.active and self.redactor is None:
            return None
        p = Pipeline(processing, fields, self.redactor, max_record_bytes=self.config.max_line_bytes,
                     pattern_timeout=self.config.redaction.pattern_timeout, what=what)
        self.pipelines.append(p)
        return p

    def lifecycle(self, event: str, message: str, **fields: Any) -> None:
        """A protected record on ``agent.lifecycle`` (never dropped).

        Redacted like the app's records: the command line may carry secrets.
        """
        record: dict[str, object] = {"log": message, "event": event, **fields}
        if self.redactor is not None:
            record = self.redactor.record(record)
        self.buffer.add_record(LIFECYCLE_TAG, time.time_ns(), record)

    def _seal_when_due(self, due: float) -> None:
        """A batch was opened: seal it as soon as it is due (``flush_interval`` after its
        first record), not up to a tick later. The ticker stays as a backstop.

        One timer at a time: a batch opened while one is pending falls due after it,
        and the timer, once it has fired, sets itself for the oldest batch still open.
        (A timer per batch woke the agent once per batch for nothing whenever batches
        fill before they fall due, as they do under load.)
        """
        if self._seal_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the loop's thread: the ticker will seal it
            return
        # A millisecond late: call_later may fire a hair early, and then nothing is due.
        self._seal_timer = loop.call_later(max(due - time.monotonic(), 0.0) + 0.001,
                                           self._seal_timer_fired)

    def _seal_timer_fired(self) -> None:
        self._seal_timer = None
        self.buffer.seal_due()
        due = self.buffer.next_due()
        if due is not None:
            self._seal_when_due(due)

    def _start_signing(self) -> bool:
        """``--sign``: the key, the genesis checkpoint and its attestation document."""
        try:
            self.signer = Signer(self.boot_id, attester(self.config.nsm),
                                 records=self.config.sign_records,
                                 interval=self.config.sign_interval, version=__version__,
                                 config=config_digest(self.config))
            self.signer.start(self.buffer)
        except (SigningError, NsmError) as exc:
            log.error("cannot sign: %s", exc)
            return False
        return True

    async def run(self) -> int:
        if self.config.sign and not self._start_signing():
            return 78  # EX_CONFIG: asked to prove its logs, it must not run without
        self.buffer.on_open = self._seal_when_due
        logging.getLogger().addHandler(self._log_handler)
        tasks = [asyncio.create_task(self.shipper.run(), name="shipper"),
                 asyncio.create_task(self._tick(), name="ticker")]
        metrics = [asyncio.create_task(self._metrics_loop(), name="metrics")
                   for _ in range(1 if self.config.metrics_interval > 0 else 0)]
        self.lifecycle("agent_start", f"enclave-log-agent {__version__} starting",
                       version=__version__, boot_id=self.boot_id.hex(), pid=os.getpid(),
                       command=list(self.config.command), hostname=self.config.hostname,
                       config_digest=config_digest(self.config), clock_ns=time.time_ns())
        source_tasks = await self._start_sources()
        try:
            code = await (self._supervise() if self.config.command else self._until_stopped())
            await self._stop_sources(source_tasks)
            if metrics:
                # A metrics record every interval would keep the buffer from ever being
                # empty; the last one goes with the drain.
                metrics[0].cancel()
                await asyncio.gather(*metrics, return_exceptions=True)
                self.emit_metrics()
            await self._drain()
        finally:
            for task in tasks + source_tasks + metrics:
                task.cancel()
            await asyncio.gather(*tasks, *source_tasks, *metrics, return_exceptions=True)
            if self.tail is not None:
                self.tail.close()
            if self.kmsg is not None:
                self.kmsg.close()
            logging.getLogger().removeHandler(self._log_handler)
            self.reaper.uninstall()
        return code

    async def _start_sources(self) -> list[asyncio.Task[None]]:
        """Start the sources besides the app's output; one that cannot start is reported
        and skipped (the app is not held hostage to a log source)."""
        tasks = []
        for server in list(self.forward):
            try:
                await server.start()
            except ConnectError as exc:
                log.error("Forward input %s cannot start: %s", server.endpoint, exc)
                self.forward.remove(server)
        if self.tail is not None:
            tasks.append(asyncio.create_task(self.tail.run(), name="tail"))
        if self.kmsg is not None:
            try:
                self.kmsg.open()
                tasks.append(asyncio.create_task(self.kmsg.run(), name="kmsg"))
            except OSError as exc:
                log.error("cannot read the kernel log %s: %s", self.kmsg.path, exc.strerror)
        return tasks

    async def _stop_sources(self, tasks: list[asyncio.Task[None]]) -> None:
        """Take what the files and the kernel log hold now; close the Forward inputs."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self.forward:
            await server.close()
        if self.kmsg is not None:
            self.kmsg.read_available()
        if self.tail is not None:
            try:
                async with asyncio.timeout(self.config.drain_timeout):
                    await self.tail.drain()
            except TimeoutError:
                log.error("files not read to their end within %ss: the buffer stayed full",
                          self.config.drain_timeout)

    async def _until_stopped(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # Its configuration is part of the measured image and does not reload; a SIGHUP
        # (a habit from other daemons) must not end it without draining.
        loop.add_signal_handler(signal.SIGHUP, log.info,
                                "SIGHUP ignored: the agent's configuration does not reload")
        await self._stop.wait()
        log.info("stopping on signal; draining")
        return 0

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        self.reaper.install()
        argv = self.config.command
        try:
            proc, out_fd, err_fd = spawn(argv, pty=self.config.pty)
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
        for stream, fd, processing, console in (("stdout", out_fd, self.config.stdout, 1),
                                                ("stderr", err_fd, self.config.stderr, 2)):
            source = PipeSource(stream, f"{self.config.tag}.{stream}", self.buffer,
                                policy=self.config.overflow,
                                max_line_bytes=self.config.max_line_bytes,
                                pipeline=self.pipeline(processing, {"stream": stream}, stream),
                                tee=console if self.config.tee_console else None,
                                # A terminal holds a few KiB: letting it fill would stall
                                # the app; a pipe holds PIPE_BYTES.
                                nap=0.0 if self.config.pty else READ_NAP)
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
            quiet = min(time.monotonic() - s.stream.last_data for s in self.sources)
            paused = any(s.paused for s in self.sources)
            if (not paused and quiet >= self.config.exit_grace) or loop.time() >= hard_deadline:
                break
            await asyncio.wait([s.closed for s in self.sources], timeout=0.05)
        for source in self.sources:
            if not source.closed.done():
                source.stream.flush_all()
                source.close()

    async def _tick(self) -> None:
        """Seal due batches and flush long-waiting partial lines."""
        interval = min(self.config.flush_interval, 0.05)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for source in self.sources:
                source.tick(now, self.config.partial_flush)
            self.buffer.seal_due()
            if self.signer is not None:
                self.signer.tick()

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_interval)
            self.emit_metrics()

    def emit_metrics(self) -> None:
        """One record on ``agent.metrics``; skipped (and counted) when the buffer is full."""
        if not self.buffer.has_room():
            self.metrics_skipped += 1
            return
        self.buffer.add(METRICS_TAG, pack_entry(EventTime.from_ns(time.time_ns()),
                                                self.metrics()), 1)

    def metrics(self) -> dict[str, Any]:
        """Counters since the agent started."""
        st = self.buffer.stats()
        client = self.shipper.stats
        sources: dict[str, dict[str, int]] = {
            s.name: {"lines": s.stream.lines, "bytes": s.stream.bytes} for s in self.sources}
        if self.tail is not None:
            sources.update(self.tail.source_stats())
        if self.kmsg is not None:
            sources["kmsg"] = {"lines": self.kmsg.lines, "bytes": self.kmsg.bytes,
                               "overwritten": self.kmsg.overwritten}
        for server in self.forward:
            sources[f"forward:{server.address}"] = dataclasses.asdict(server.stats)
        record: dict[str, Any] = {
            "log": "agent metrics", "event": "metrics", "sources": sources,
            "dropped_records": st.dropped_records, "dropped_bytes": st.dropped_bytes,
            "redacted": dict(self.redactor.counts) if self.redactor else {},
            "filtered": sum(p.filtered for p in self.pipelines),
            "buffer_bytes": st.used_bytes, "buffer_max_bytes": st.max_bytes,
            "queued_batches": st.queued_batches, "unacked_batches": st.unacked_batches,
            "acked_batches": st.acked_batches, "connected": self.shipper.connected.is_set(),
            "reconnects": max(client.connects - 1, 0), "connect_failures": client.connect_failures,
            "metrics_skipped": self.metrics_skipped}
        if self.redactor is not None and self.redactor.timeouts:
            record["redaction_timeouts"] = self.redactor.timeouts
        timeouts = sum(p.pattern_timeouts for p in self.pipelines)
        if timeouts:
            record["pattern_timeouts"] = timeouts
        if self.tail is not None:
            record["files"] = dataclasses.asdict(self.tail.stats)
        if self.signer is not None:  # batches sent unsigned are records no one can prove
            record["checkpoints"] = self.signer.checkpoints
            record["unsigned_batches"] = self.signer.unsigned_batches
        # Outputs that keep only `log` (CloudWatch with log_key log) get the counters too.
        counters = {k: v for k, v in record.items() if k not in ("log", "event")}
        record["log"] = "agent metrics " + json.dumps(counters, separators=(",", ":"))
        return record

    async def _drain(self) -> None:
        self.buffer.seal_all()
        if self.signer is not None:  # the last checkpoint covers every record sealed
            self.signer.checkpoint(final=True)
            self.buffer.seal_all()
        try:
            async with asyncio.timeout(self.config.drain_timeout):
                await self.buffer.wait_empty()
        except TimeoutError:
            st = self.buffer.stats()
            log.error("drain timed out after %ss: %d batches (%d bytes) not acked by %s",
                      self.config.drain_timeout, st.queued_batches + st.unacked_batches,
                      st.used_bytes, self.config.relay)

