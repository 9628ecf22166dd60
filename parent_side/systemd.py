"""sd_notify for ``Type=notify`` units, without libsystemd.

systemd hands a notify-type service an ``AF_UNIX`` datagram socket in ``$NOTIFY_SOCKET``
(a path, or an abstract address written with a leading ``@``) and, when the unit has
``WatchdogSec=``, the interval in ``$WATCHDOG_USEC`` (and the pid it applies to in
``$WATCHDOG_PID``). The relay sends ``READY=1`` once it listens, ``WATCHDOG=1`` every
half interval from its event loop (so a wedged loop gets the service restarted),
and ``STOPPING=1`` when it begins to shut down. Outside systemd every call is a no-op.

The protocol is newline-separated ``KEY=VALUE`` assignments in one datagram
(sd_notify(3)); errors are logged and otherwise ignored, as sd_notify does: a relay
must not die because its supervisor's socket is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Notifier", "notify_address"]

log = logging.getLogger(__name__)


def notify_address(value: str) -> str | bytes:
    """The socket address for a ``$NOTIFY_SOCKET`` value (``@name`` is abstract)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


@dataclass(frozen=True, slots=True)
class Notifier:
    """Where and how often to tell systemd about the service.

    Attributes:
        address: the ``$NOTIFY_SOCKET`` value, or None outside a notify-type unit.
        watchdog_interval: seconds between ``WATCHDOG=1`` pings (half of
            ``$WATCHDOG_USEC``), or None when no watchdog applies to this process.
    """

    address: str | None = None
    watchdog_interval: float | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None,
                     pid: int | None = None) -> Notifier:
        """Read ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        ours = not watchdog_pid or watchdog_pid == str(os.getpid() if pid is None else pid)
        watched = address and usec.isdigit() and int(usec) > 0 and ours
        return cls(address, int(usec) / 2_000_000 if watched else None)

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if it was sent."""
        if not self.address:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)
                s.sendto(message, notify_address(self.address))
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Ping ``WATCHDOG=1`` from the running loop until cancelled (None: no watchdog)."""
        if self.watchdog_interval is None:
            return None
        return asyncio.create_task(self._watchdog(self.watchdog_interval),
                                   name="systemd-watchdog")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    @staticmethod
    async def stop_watchdog(task: asyncio.Task[None] | None) -> None:
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # waits without re-raising the task's cancellation
