"""A fault-injecting stream proxy, to put between any two hops in a test.

``FaultProxy(listen, upstream)`` accepts connections on ``listen`` (``tcp://HOST:PORT``,
port 0 for any, or ``unix:///path``) and opens one connection to ``upstream`` for
each, then copies bytes both ways. Knobs, all usable while it runs:

* ``cut()``: close every current connection, both ends, with a FIN (bytes the proxy
  had read and not yet written are lost, as on a real cut).
* ``reset()``: the same, abortively: on TCP with ``SO_LINGER`` 0, so the peers get an
  RST (``ECONNRESET``); a Unix socket has no RST and is just closed.
* ``stall(True)`` / ``stall(False)``: stop forwarding bytes, keeping every connection
  open (the senders block once the socket buffers fill), then go on. ``direction``
  narrows it to ``"up"`` (client to upstream) or ``"down"`` (upstream to client), e.g.
  to hold back acks while frames still arrive.
* ``delay``: seconds added before each chunk is forwarded, in both directions.
* ``refuse``: accept, then close at once, without connecting upstream (a peer that
  is down but whose port still answers).

Counters: ``connections`` (accepted), ``open_connections``, ``bytes_up`` (client to
upstream), ``bytes_down`` (upstream to client), ``refused``, ``cuts``, ``resets``,
``upstream_failures`` (accepted, but the upstream could not be reached; the client is
closed).

EOF is passed on as a half-close: when one side shuts down writing, the other side
sees EOF and may still answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from dataclasses import dataclass, field

__all__ = ["FaultProxy"]

CHUNK = 65536
_DIRECTIONS = ("up", "down")


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's streams and the upstream's."""

    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def writers(self) -> tuple[asyncio.StreamWriter, asyncio.StreamWriter]:
        return self.client[1], self.upstream[1]


def _parse(url: str) -> tuple[str, str, int]:
    """``(path, host, port)``: path for unix://, host and port for tcp://."""
    if url.startswith("unix://"):
        path = url[len("unix://"):]
        if not path:
            raise ValueError(f"{url!r}: empty Unix socket path")
        return path, "", 0
    if url.startswith("tcp://"):
        host, sep, port = url[len("tcp://"):].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{url!r}: expected tcp://HOST:PORT")
        return "", host.strip("[]"), int(port)
    raise ValueError(f"{url!r}: expected tcp://HOST:PORT or unix:///path")


class FaultProxy:
    """A TCP/Unix proxy with faults on demand; see the module docstring."""

    def __init__(self, listen: str, upstream: str, *, delay: float = 0.0,
                 refuse: bool = False) -> None:
        self._listen_path, self._listen_host, self._listen_port = _parse(listen)
        self._up_path, self._up_host, self._up_port = _parse(upstream)
        self.upstream = upstream
        self.delay = delay
        self.refuse = refuse
        self.connections = 0
        self.refused = 0
        self.upstream_failures = 0
        self.cuts = 0
        self.resets = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._flowing = {d: asyncio.Event() for d in _DIRECTIONS}
        for event in self._flowing.values():
            event.set()
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where clients connect (the real port once started on port 0)."""
        if self._listen_path:
            return f"unix://{self._listen_path}"
        return f"tcp://{self._listen_host}:{self._listen_port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        if self._listen_path:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self._listen_path).st_mode):
                    os.unlink(self._listen_path)
            self._server = await asyncio.start_unix_server(self._accept, self._listen_path)
        else:
            self._server = await asyncio.start_server(self._accept, self._listen_host,
                                                      self._listen_port)
            self._listen_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._close_all(abort=False)
        for event in self._flowing.values():
            event.set()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()
        if self._listen_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._listen_path)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- knobs -------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every current connection, both ends (FIN); return how many."""
        self.cuts += 1
        return self._close_all(abort=False)

    def reset(self) -> int:
        """Reset every current connection, both ends (RST on TCP); return how many."""
        self.resets += 1
        return self._close_all(abort=True)

    def stall(self, on: bool = True, direction: str = "both") -> None:
        """Stop (``on``) or resume forwarding bytes; connections stay open."""
        if direction not in (*_DIRECTIONS, "both"):
            raise ValueError("direction must be 'up', 'down' or 'both'")
        for d in _DIRECTIONS if direction == "both" else (direction,):
            if on:
                self._flowing[d].clear()
            else:
                self._flowing[d].set()

    def stalled(self, direction: str = "up") -> bool:
        return not self._flowing[direction].is_set()

    # -- the copying -------------------------------------------------------------------

    def _close_all(self, *, abort: bool) -> int:
        links = list(self._links)
        for link in links:
            self._close_link(link, abort=abort)
        return len(links)

    def _close_link(self, link: _Link, *, abort: bool) -> None:
        self._links.discard(link)
        for task in link.tasks:
            task.cancel()
        for writer in link.writers:
            if abort:
                sock = writer.get_extra_info("socket")
                if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._up_path:
            return await asyncio.open_unix_connection(self._up_path)
        return await asyncio.open_connection(self._up_host, self._up_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            if self.refuse:
                self.refused += 1
                writer.close()
                return
            try:
                async with asyncio.timeout(5.0):
                    upstream = await self._connect_upstream()
            except (OSError, TimeoutError):
                self.upstream_failures += 1
                writer.close()
                return
            link = _Link((reader, writer), upstream)
            self._links.add(link)
            link.tasks = [asyncio.ensure_future(self._pump(reader, upstream[1], "up")),
                          asyncio.ensure_future(self._pump(upstream[0], writer, "down"))]
            # Both directions end (EOF each way), or one fails and the link goes.
            pending = set(link.tasks)
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if any(t.cancelled() or t.exception() is not None for t in done):
                    break
            if link in self._links:
                self._close_link(link, abort=False)
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._handlers.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        flowing = self._flowing[direction]
        while True:
            data = await reader.read(CHUNK)
            if not data:
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()  # half-close: the other side may still answer
                return
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            await flowing.wait()
            writer.write(data)
            if direction == "up":
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            await writer.drain()
