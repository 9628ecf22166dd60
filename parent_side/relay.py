"""The relay: a listener for agents and one output, run until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from .config import RelayConfig
from .forwarder import DirectSink, Forwarder, Sink, SpoolSink
from .identity import EnclaveRegistry
from .listener import Listener, ListenerConfig
from .outputs import Output, make_output
from .spool import Spool
from .systemd import Notifier

__all__ = ["Relay"]

log = logging.getLogger("parent_side")


class Relay:
    """One relay run: ``await Relay(config).run()``; ``stop()`` ends it."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.output: Output = make_output(
            config.output, hostname=config.hostname, shared_key=config.upstream_shared_key,
            window=config.upstream_window, max_queue_bytes=config.upstream_buffer_bytes,
            ack_timeout=config.ack_timeout)
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        sink: Sink
        if config.spool is not None:
            self.spool = Spool(config.spool, max_bytes=config.spool_bytes, full=config.spool_full,
                               segment_bytes=config.spool_segment_bytes)
            self.forwarder = Forwarder(self.spool, self.output)
            sink = SpoolSink(self.spool)
        else:
            sink = DirectSink(self.output)
        self.sink = sink
        vsock = config.listen.scheme.value == "vsock"
        # Identity from describe-enclaves matters only for vsock peers.
        self.registry = (EnclaveRegistry((config.nitro_cli, "describe-enclaves"),
                                         interval=config.describe_interval)
                         if vsock and config.nitro_cli else None)
        self.listener = Listener(ListenerConfig(
            endpoint=config.listen, hostname=config.hostname, shared_key=config.shared_key,
            max_frame_bytes=config.max_frame_bytes,
            max_decompressed_bytes=config.max_decompressed_bytes,
            max_entries=config.max_entries, handshake_timeout=config.handshake_timeout,
            unix_mode=config.listen_mode, allowed_cids=config.allowed_cids,
            require_known_enclave=config.require_known_enclave,
            max_connections=config.max_connections,
            max_connections_per_enclave=config.max_connections_per_enclave,
            rate_limit=config.rate_limit, frame_timeout=config.frame_timeout,
            stamp_records=config.stamp_records), sink, self.registry)
        self.ready = asyncio.Event()
        self.notifier = Notifier.from_environ()
        self._stop = asyncio.Event()
        self._polling: asyncio.Task[None] | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        if self.spool is not None:
            self.spool.open()  # SpoolError names --spool and the fix
        await self.output.start()
        forwarding = (asyncio.create_task(self.forwarder.run(), name="forwarder")
                      if self.forwarder is not None else None)
        self._polling = (asyncio.create_task(self.registry.poll(), name="describe-enclaves")
                         if self.registry is not None else None)
        try:
            await self.listener.start()
        except BaseException:
            await self._shutdown(forwarding, timeout=0)
            raise
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        log.info("listening on %s, output %s", self.config.listen, self.config.output)
        self.ready.set()
        self.notifier.ready(f"listening on {self.config.listen}, output {self.config.output}")
        watchdog = self.notifier.start_watchdog()
        try:
            await self._stop.wait()
            log.info("stopping: closing agent connections, delivering what was taken")
        finally:
            self.notifier.stopping()
            await self.listener.close()
            await self._shutdown(forwarding, timeout=self.config.shutdown_timeout)
            await self.notifier.stop_watchdog(watchdog)
        return 0

    async def _shutdown(self, forwarding: asyncio.Task[None] | None, *, timeout: float) -> None:
        """Stop taking from the spool, let the output finish, then close the spool."""
        if self._polling is not None:
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
        if forwarding is not None:
            forwarding.cancel()
            await asyncio.gather(forwarding, return_exceptions=True)
        await self.output.close(timeout)
        if self.spool is not None:
            await self.spool.close()
