"""The relay: a listener for agents, a spool, one output; run until SIGTERM.

It also reports on itself: ``status`` over the admin socket, records on its own tags
(``relay.lifecycle``: the relay starting and stopping, enclaves connecting,
disconnecting and terminating; ``relay.status``: its state every
``--status-interval``), which no agent can forge (every agent tag starts with
``enclave.``). SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from fluent_forward import __version__
from fluent_forward.aio import retrieved, start_task
from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.fastpath import entry_check

from .config import SERVE_OPTIONS, RelayConfig
from .fairshare import FairShare
from .forwarder import DirectSink, Forwarder, Sink, SpoolSink
from .identity import TAG_ROOT, EnclaveInfo, EnclaveRegistry, Identity
from .intake import EnclaveStats
from .listener import Listener
from .outputs import Output, RelayBatch, make_output
from .spool import Spool
from .status import AdminServer
from .systemd import Notifier

__all__ = ["LIFECYCLE_TAG", "STATUS_TAG", "Relay"]

log = logging.getLogger("parent_side")

LIFECYCLE_TAG = "relay.lifecycle"
STATUS_TAG = "relay.status"

#: Fields a reload cannot change: they need a restart (declared in parent_side.config).
_RESTART_ONLY = frozenset(o.field for o in SERVE_OPTIONS if o.restart and o.field)


def _output_args(config: RelayConfig) -> dict[str, Any]:
    """What the output is made from: a reload that changes any of it makes a new one."""
    return {"spec": config.output, "hostname": config.hostname,
            "shared_key": config.upstream_shared_key, "window": config.upstream_window,
            "max_queue_bytes": config.upstream_buffer_bytes,
            "ack_timeout": config.ack_timeout}


def _own_batch(tag: str, record: dict[str, Any]) -> RelayBatch:
    """One record of the relay's own, stamped now."""
    return RelayBatch(tag, pack_entry(EventTime.from_ns(time.time_ns()), record), 1)


class Relay:
    """One relay run: ``await Relay(config).run()``; ``stop()`` ends it.

    Args:
        config: the configuration.
        reload: returns a fresh configuration (re-reading flags, environment and
            file) for SIGHUP; raises to keep the running one.
    """

    def __init__(self, config: RelayConfig,
                 reload: Callable[[], RelayConfig] | None = None) -> None:
        self.config = config
        self._reloader = reload
        self.output: Output = make_output(**_output_args(config))
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        self.sink: Sink
        if config.spool is not None:
            self.spool = Spool(config.spool, max_bytes=config.spool_bytes, full=config.spool_full,
                               segment_bytes=config.spool_segment_bytes,
                               replay_window=config.replay_window)
            self.forwarder = Forwarder(self.spool, self.output, on_delivered=self._delivered)
            self.output.on_restart = self.forwarder.replay
            self.sink = SpoolSink(self.spool)
            self.spool.gate.on_state = self._spool_state
        else:
            self.sink = DirectSink(self.output, on_delivered=self._delivered)
        self.registry: EnclaveRegistry | None = None  # run() makes it: _set_registry
        # Outages are what the spool is for: then the enclaves share its size.
        self.fair = FairShare(capacity=config.spool_bytes if self.spool is not None
                              else config.upstream_buffer_bytes)
        self.listener = Listener(config, self.sink,
                                 runs=self.spool.runs if self.spool is not None else None,
                                 fair=self.fair)
        self.listener.on_lifecycle = self._enclave_event
        self.admin = (AdminServer(config.admin_socket, self.snapshot, self.reload)
                      if config.admin_socket else None)
        self.ready = asyncio.Event()
        self.notifier = Notifier.from_environ()
        self.started = time.time()
        self.reloads = 0
        self._stop = asyncio.Event()
        self._polling: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        if self.spool is not None:
            self.spool.open()  # SpoolError names --spool and the fix
        await self.output.start()
        forwarding = (asyncio.create_task(self.forwarder.run(), name="forwarder")
                      if self.forwarder is not None else None)
        self._set_registry(self.config)
        try:
            await self.listener.start()
        except BaseException:
            await self._shutdown(forwarding, deadline=0.0)
            raise
        if self.admin is not None:
            await self.admin.start()
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        cfg = self.config
        log.info("listening on %s, output %s", cfg.listen, cfg.output)
        if entry_check() != "c":
            log.info("entry check: Python (installed without a C compiler; the C check "
                     "costs about 0.3 CPU us a line less: install gcc and Python's headers, "
                     "then reinstall)")
        self.emit(LIFECYCLE_TAG, {"event": "relay_start", "version": __version__,
                                  "hostname": cfg.hostname, "listen": str(cfg.listen),
                                  "output": str(cfg.output), "spool": cfg.spool or "none",
                                  "entry_check": entry_check()})
        status = asyncio.create_task(self._status_records(), name="status-records")
        self.ready.set()
        self.notifier.ready(f"listening on {cfg.listen}, output {cfg.output}")
        watchdog = self.notifier.start_watchdog()
        try:
            await self._stop.wait()
            log.info("stopping: closing agent connections, delivering what was taken")
        finally:
            deadline = asyncio.get_running_loop().time() + self.config.shutdown_timeout
            self.notifier.stopping()
            status.cancel()
            if self.admin is not None:
                await self.admin.close()
            await self.listener.close()
            self.emit(LIFECYCLE_TAG, {"event": "relay_stop", "version": __version__,
                                      "hostname": cfg.hostname})
            # A moment at least: the relay_stop record goes to the spool even when the
            # output is down, and with it to the next start.
            await self._end_tasks(status, timeout=min(max(self._grace(deadline), 0.1), 1.0))
            await self._shutdown(forwarding, deadline=deadline)
            await self.notifier.stop_watchdog(watchdog)
        return 0

    async def _end_tasks(self, *tasks: asyncio.Task[Any], timeout: float) -> None:
        """Let the relay's own records reach the spool, for at most ``timeout`` (a full
        spool takes none), then cancel what is left."""
        _, pending = await asyncio.wait({*tasks, *self._tasks}, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)

    def _grace(self, deadline: float) -> float:
        """Seconds left to deliver before ``deadline``: none while the output is down,
        since it takes nothing then (the spool keeps it all for the next start)."""
        if not self.output.connected:
            return 0.0
        return max(deadline - asyncio.get_running_loop().time(), 0.0)

    async def _drain(self, spool: Spool, deadline: float) -> None:
        """Wait for the spool to deliver everything, while the output takes it."""
        while spool.backlog > 0 and (grace := self._grace(deadline)) > 0:
            # Look again often: the output may go down meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spool.wait_drained(), min(grace, 0.1))
        if spool.backlog:
            log.info("stopping with %d batches in the spool; they go out on the next start",
                     spool.backlog)

    async def _shutdown(self, forwarding: asyncio.Task[None] | None, *,
                        deadline: float) -> None:
        """Deliver what the spool holds (while the output takes it, until ``deadline``),
        stop, close the spool. What is not delivered stays in the spool for next time.
        """
        if self.spool is not None and forwarding is not None:
            await self._drain(self.spool, deadline)
        for task in (self._polling, forwarding):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.output.close(self._grace(deadline))
        if self.spool is not None:
            await self.spool.close()

    # -- the relay's own records -------------------------------------------------------

    def emit(self, tag: str, record: dict[str, Any]) -> None:
        """Send one record of the relay's own through the spool, without waiting."""
        start_task(self._tasks, self.sink.submit(_own_batch(tag, record), None, None))

    def _spool_state(self, state: str, details: dict[str, Any]) -> None:
        """The spool stopped or resumed taking batches: a ``relay.lifecycle`` record."""
        record = {"event": f"spool_{state}", **details}
        if state == "resumed":
            self.emit(LIFECYCLE_TAG, record)
            return
        # The spool takes nothing now: this notice goes to the output directly (it is
        # not durable, but it is seen as soon as the output is).
        start_task(self._tasks, self._notice(_own_batch(LIFECYCLE_TAG, record)))

    async def _notice(self, batch: RelayBatch) -> None:
        fut = await self.output.submit(batch)
        fut.add_done_callback(retrieved)

    def _enclave_event(self, event: str, ident: Identity, peer: EnclaveStats) -> None:
        record: dict[str, Any] = {"event": f"enclave_{event}", "enclave": ident.name,
                                  "cid": ident.cid, "agent_version": peer.agent_version,
                                  "claimed_hostname": peer.claimed_hostname}
        if ident.enclave is not None:
            record.update(enclave_id=ident.enclave.enclave_id, debug=ident.enclave.debug)
        if event == "disconnected":
            record.update(records_in=peer.records, records_out=peer.records_out,
                          gaps=peer.gaps, drops=peer.drops)
        self.emit(LIFECYCLE_TAG, record)

    def _terminated(self, enclave: EnclaveInfo) -> None:
        log.info("enclave %s (%s, CID %d) is no longer listed by describe-enclaves",
                 enclave.label, enclave.enclave_id, enclave.cid)
        self.emit(LIFECYCLE_TAG, {"event": "enclave_terminated", "enclave": enclave.label,
                                  "cid": enclave.cid, "enclave_id": enclave.enclave_id})

    def _delivered(self, tag: str, count: int, nbytes: int) -> None:
        """Count records the output has safe, per enclave (for status and fair shares)."""
        root, _, rest = tag.partition(".")
        if root == TAG_ROOT:
            name = rest.partition(".")[0]
            self.fair.delivered(name, nbytes)
            peer = self.listener.stats.peers.get(name)
            if peer is not None:
                peer.records_out += count
        if self.spool is not None and self.spool.backlog == 0:
            self.fair.settle()

    async def _status_records(self) -> None:
        while True:
            # Read each time: a reload may change it, or turn it on (0: off).
            await asyncio.sleep(self.config.status_interval or 1.0)
            if self.config.status_interval > 0:
                self.emit(STATUS_TAG, self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """The relay's state: what ``status`` shows."""
        st = self.listener.stats
        cfg = self.config
        relay: dict[str, Any] = {
                 "version": __version__, "entry_check": entry_check(),
                 "hostname": cfg.hostname, "pid": os.getpid(),
                 "uptime_s": round(time.time() - self.started, 1), "listen": str(cfg.listen),
                 "output": str(cfg.output), "connections_open": st.open_connections,
                 "connections": st.connections, "protocol_errors": st.protocol_errors,
                 "auth_failures": st.auth_failures, "timeouts": st.timeouts,
                 "refused": st.refused_cid + st.refused_limit, "reloads": self.reloads,
                 "fair_share": self.fair.status()}
        spool = self.spool.status() if self.spool is not None else {"mode": "memory-only"}
        upstream = {"kind": cfg.output.kind, **self.output.status()}
        enclaves = [p.snapshot() for p in sorted(st.peers.values(), key=lambda p: p.name)]
        return {"relay": relay, "enclaves": enclaves, "spool": spool, "upstream": upstream}

    # -- reload ----------------------------------------------------------------------

    def reload(self) -> str:
        """Re-read the configuration (SIGHUP); apply what can change without a restart."""
        if self._reloader is None:
            return "nothing to reload from"
        try:
            new = self._reloader()
        except Exception as exc:  # a bad file must not end the relay
            log.error("reload failed, keeping the running configuration: %s", exc)
            return f"failed: {exc}"
        old = self.config
        kept = {k: getattr(old, k) for k in sorted(_RESTART_ONLY)
                if getattr(new, k) != getattr(old, k)}
        for key in kept:
            log.warning("reload: %s changes only on restart; still %s", key, getattr(old, key))
        new = dataclasses.replace(new, **kept)
        changed = [f.name for f in dataclasses.fields(new)
                   if getattr(new, f.name) != getattr(old, f.name)]
        self.config = new
        self.listener.reconfigure(new)
        if self.spool is not None:
            self.spool.reconfigure(replay_window=new.replay_window)
        logging.getLogger().setLevel(new.log_level.upper())
        if (new.nitro_cli, new.describe_interval) != (old.nitro_cli, old.describe_interval):
            self._set_registry(new)
        if _output_args(new) != _output_args(old):
            start_task(self._tasks, self._swap_output(make_output(**_output_args(new))))
        self.reloads += 1
        answer = "changed: " + (", ".join(changed) or "nothing")
        if kept:
            answer += "; needs a restart: " + ", ".join(kept)
        log.info("reloaded the configuration; %s", answer)
        return answer

    def _set_registry(self, config: RelayConfig) -> None:
        """Ask describe-enclaves who the vsock peers are, as ``config`` says, every
        interval (at start, or after a reload that changed the command or the interval:
        a new registry, which asks at once); or stop asking (not vsock, or no nitro-cli:
        identity from it matters only for vsock peers)."""
        if self._polling is not None:
            self._polling.cancel()
        self.registry = None
        if config.listen.scheme.value == "vsock" and config.nitro_cli:
            self.registry = EnclaveRegistry((config.nitro_cli, "describe-enclaves"),
                                            interval=config.describe_interval,
                                            on_terminated=self._terminated)
            self._polling = asyncio.create_task(self.registry.poll(), name="describe-enclaves")
        self.listener.use_registry(self.registry)

    async def _swap_output(self, new: Output) -> None:
        """Start the new output, route everything to it, then let the old one go.

        Batches the old output had not delivered are cancelled by its close and sent
        again through the new one (from the spool, or by the direct sink).
        """
        await new.start()
        old, self.output = self.output, new
        # Batches the old output had not delivered come back cancelled, and the sink
        # or the forwarder sends them again through the new one.
        if self.forwarder is not None:
            self.forwarder.output = new
            new.on_restart = self.forwarder.replay
        if isinstance(self.sink, DirectSink):
            self.sink.output = new
        await old.close(self.config.shutdown_timeout)
        log.info("output now %s", self.config.output)
