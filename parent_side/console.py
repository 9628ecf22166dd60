"""``enclave-log-relay console``: the seed recipe, made reliable.

For enclaves that cannot carry the agent. Every ``--interval`` it asks
``nitro-cli describe-enclaves`` which enclaves run in debug mode (only those have a
console), follows ``nitro-cli console --enclave-id ID`` for each, re-attaches when a
console ends while its enclave still runs, stops when the enclave goes, and starts
over for a restarted enclave (a new EnclaveID). An enclave whose agent is connected
to the relay is skipped, so no line arrives twice: the running relay is asked over
its admin socket.

Lines go to the relay's output (``--output``: Fluent Bit, or JSON lines to a file)
tagged ``enclave.<name>.console``, or with ``--stdout`` as JSON lines for Fluent Bit's
``exec`` input (``Threaded on`` and a JSON parser): one object per line with
``enclave``, ``enclave_id``, ``cid`` and ``log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fluent_forward.entries import EventTime, pack_entry
from fluent_forward.retry import backoff
from nel_config.options import BOOL, DURATION, STR, Option, option, options_of

from .config import local_hostname, serve_options
from .identity import TAG_ROOT, EnclaveInfo, EnclaveRegistry, sanitize_name
from .outputs import Output, OutputSpec, RelayBatch, make_output
from .status import query

__all__ = ["CONSOLE_OPTIONS", "Console", "ConsoleOptions", "console_command"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleOptions:
    """What ``enclave-log-relay console`` needs. ``--interval`` is its own option; the
    others are serve's of the same name (``CONSOLE_OPTIONS``). No environment variable
    sets them."""

    interval: float = option(5.0, DURATION, env=False,
                             help="how often to look for enclaves")
    nitro_cli: str
    output: OutputSpec | None  # None: --stdout
    admin_socket: str | None
    upstream_shared_key: str | None
    log_level: str


#: ``enclave-log-relay console``'s options: --stdout, --interval and serve's options.
CONSOLE_OPTIONS = (
    Option("--stdout", BOOL, "print JSON lines instead of sending to --output", env=False),
    *serve_options("nitro_cli", kind=STR, metavar="PATH", help="nitro-cli to run",
                   env=False),
    *options_of(ConsoleOptions),
    *serve_options("output", env=False),
    *serve_options("admin_socket", env=False, restart=False,
                   help="the relay to ask which enclaves have an agent connected"),
    *serve_options("upstream_shared_key", "log_level", env=False),
)


@dataclass(eq=False)
class _Follow:
    enclave: EnclaveInfo
    task: asyncio.Task[None]


@dataclass
class Console:
    """Follow the consoles of debug-mode enclaves."""

    options: ConsoleOptions
    write: Callable[[EnclaveInfo, bytes, int], None]  # one console line and its time
    registry: EnclaveRegistry = field(init=False)
    following: dict[str, _Follow] = field(default_factory=dict)  # by EnclaveID

    def __post_init__(self) -> None:
        self.registry = EnclaveRegistry((self.options.nitro_cli, "describe-enclaves"),
                                        interval=self.options.interval, min_refresh=0)

    def agents_connected(self) -> set[str]:
        """EnclaveIDs whose agent is connected to the running relay, if we can ask it."""
        if not self.options.admin_socket:
            return set()
        try:
            snap = query(self.options.admin_socket, timeout=2)
        except (OSError, ValueError):
            return set()
        return {e["enclave_id"] for e in snap["enclaves"] if e["connected"] and e["enclave_id"]}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.registry.refresh()
            await self._reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.interval)
        for follow in list(self.following.values()):
            follow.task.cancel()
        await asyncio.gather(*(f.task for f in self.following.values()), return_exceptions=True)

    async def _reconcile(self) -> None:
        wanted = {e.enclave_id: e for e in self.registry.enclaves.values()
                  if e.debug and e.state.upper() == "RUNNING"}
        with_agent = await asyncio.to_thread(self.agents_connected) if wanted else set()
        for enclave_id, follow in list(self.following.items()):
            if enclave_id not in wanted or enclave_id in with_agent:
                why = "its agent is connected" if enclave_id in with_agent else "it is gone"
                log.info("no longer following %s's console: %s", follow.enclave.label, why)
                follow.task.cancel()
                del self.following[enclave_id]
        for enclave_id, enclave in wanted.items():
            if enclave_id not in self.following and enclave_id not in with_agent:
                task = asyncio.create_task(self._follow(enclave), name=f"console {enclave_id}")
                self.following[enclave_id] = _Follow(enclave, task)

    async def _follow(self, enclave: EnclaveInfo) -> None:
        """Run ``nitro-cli console`` for one enclave, again whenever it ends."""
        delays = backoff(initial=0.5, maximum=10.0)
        while True:
            log.info("following the console of %s (%s)", enclave.label, enclave.enclave_id)
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.options.nitro_cli, "console", "--enclave-id", enclave.enclave_id,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL)
            except OSError as exc:
                log.error("cannot run %s console: %s", self.options.nitro_cli, exc.strerror)
            else:
                try:
                    assert proc.stdout is not None
                    while line := await proc.stdout.readline():
                        self.write(enclave, line.rstrip(b"\r\n"), time.time_ns())
                finally:
                    if proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                    await proc.wait()
                log.info("the console of %s ended; re-attaching while it runs", enclave.label)
            await asyncio.sleep(next(delays))


class _Sender:
    """Lines to an output, batched per enclave, in order."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.queue: asyncio.Queue[RelayBatch] = asyncio.Queue(10_000)
        self.dropped = 0  # lines the queue had no room for
        self.failed = 0  # lines the output took and then failed

    def write(self, enclave: EnclaveInfo, line: bytes, ns: int) -> None:
        record = {"log": line.decode("utf-8", "backslashreplace"), "stream": "console",
                  "enclave_id": enclave.enclave_id, "enclave_cid": enclave.cid}
        try:
            self.queue.put_nowait(RelayBatch(f"{TAG_ROOT}.{sanitize_name(enclave.label)}.console",
                                             pack_entry(EventTime.from_ns(ns), record), 1))
        except asyncio.QueueFull:
            # The output is far behind: the console must never block, so drop, counted.
            self.dropped += 1
            if _worth_a_line(self.dropped):
                log.warning("the output is behind: %d console lines dropped so far",
                            self.dropped)

    async def run(self) -> None:
        while True:
            sent = await self.output.submit(await self.queue.get())
            sent.add_done_callback(self._sent)

    def _sent(self, fut: asyncio.Future[None]) -> None:
        # Read whatever the outcome: an unread failure is logged by asyncio as "never
        # retrieved", once a line. A console line is not retried (it is not spooled).
        if fut.cancelled() or fut.exception() is None:
            return
        self.failed += 1
        if _worth_a_line(self.failed):
            log.warning("the output failed %d console lines so far: %s", self.failed,
                        str(fut.exception()))


def _worth_a_line(n: int) -> bool:
    """Count ``n`` of a repeated event is logged: the first, the 100th, the 10,000th,
    then every 100,000th."""
    return n in (1, 100, 10_000) or n % 100_000 == 0


def _stdout_line(enclave: EnclaveInfo, line: bytes, ns: int) -> None:
    record = {"time": ns / 1e9, "enclave": enclave.label,
              "enclave_id": enclave.enclave_id, "cid": enclave.cid,
              "log": line.decode("utf-8", "backslashreplace")}
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def _run(options: ConsoleOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sender = None
    if options.output is not None:
        output = make_output(options.output, hostname=local_hostname(),
                             shared_key=options.upstream_shared_key, window=16,
                             max_queue_bytes=16 << 20, ack_timeout=60.0)
        await output.start()
        sender = _Sender(output)
        sending = asyncio.create_task(sender.run())
    console = Console(options, write=sender.write if sender else _stdout_line)
    try:
        await console.run(stop)
    finally:
        if sender is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            await sender.output.close(5.0)
    return 0


def console_command(options: ConsoleOptions) -> int:
    """Follow debug-mode consoles until SIGTERM."""
    return asyncio.run(_run(options))
