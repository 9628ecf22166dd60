"""The relay: a listener for agents and one output, run until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from .config import RelayConfig
from .listener import Listener, ListenerConfig
from .outputs import Output, make_output
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
        self.listener = Listener(ListenerConfig(
            endpoint=config.listen, hostname=config.hostname, shared_key=config.shared_key,
            max_frame_bytes=config.max_frame_bytes,
            max_decompressed_bytes=config.max_decompressed_bytes,
            max_entries=config.max_entries, handshake_timeout=config.handshake_timeout,
            unix_mode=config.listen_mode), self.output)
        self.ready = asyncio.Event()
        self.notifier = Notifier.from_environ()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        await self.output.start()
        try:
            await self.listener.start()
        except BaseException:
            await self.output.close(0)
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
            await self.output.close(self.config.shutdown_timeout)
            await self.notifier.stop_watchdog(watchdog)
        return 0
