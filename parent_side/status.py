"""``enclave-log-relay status``: the running relay's state, over a local admin socket.

The relay serves its state as one JSON document on a Unix socket (``--admin-socket``,
by default ``/run/enclave-log-relay/admin.sock``, mode 0660): a client writes
``status`` and a newline and reads the document until EOF. ``status`` prints it as a
table, or with ``--json`` as JSON lines (one record each: the relay, every enclave,
the spool, upstream) for Fluent Bit's ``exec`` input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from fluent_forward.aio import start_server
from fluent_forward.endpoints import parse_endpoint
from fluent_forward.errors import ConnectError

__all__ = ["AdminServer", "format_table", "json_lines", "query", "status_command"]

log = logging.getLogger(__name__)

Snapshot = dict[str, Any]


class AdminServer:
    """Answers ``status`` (and ``reload``) on a local Unix socket."""

    def __init__(self, path: str, snapshot: Callable[[], Snapshot],
                 reload: Callable[[], str] | None = None) -> None:
        self.path = path
        self.snapshot = snapshot
        self.reload = reload
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; on failure log why and go on without (status is not worth dying for)."""
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            self.server = await start_server(self._handle, parse_endpoint(f"unix://{self.path}"),
                                             unix_mode=0o660)
        except (OSError, ConnectError) as exc:
            log.warning("no admin socket at %s (%s): 'enclave-log-relay status' will not "
                        "reach this relay; set --admin-socket to a writable path", self.path,
                        getattr(exc, "strerror", None) or exc)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 5))[:64].strip()
            if line == b"status":
                reply = json.dumps(self.snapshot(), default=str)
            elif line == b"reload" and self.reload is not None:
                reply = json.dumps({"reload": self.reload()})
            else:
                reply = json.dumps({"error": "ask 'status' or 'reload'"})
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def query(path: str, request: str = "status", timeout: float = 5.0) -> Snapshot:
    """Ask the relay at ``path``; raise OSError if nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, s.makefile("rb") as reply:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        result: Snapshot = json.loads(reply.read())  # the relay closes once it is written
    return result


def json_lines(snap: Snapshot) -> list[str]:
    """One JSON line per record: the relay, each enclave, the spool, upstream."""
    lines = [{"type": "relay", **snap["relay"]}]
    lines += [{"type": "enclave", **e} for e in snap["enclaves"]]
    lines += [{"type": "spool", **snap["spool"]}, {"type": "upstream", **snap["upstream"]}]
    return [json.dumps(line, default=str) for line in lines]


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    s = max(now - ts, 0)
    if s < 120:
        return f"{s:.0f}s ago"
    return f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def format_table(snap: Snapshot, now: float | None = None) -> str:
    """The state as a few lines and a table, for people."""
    now = time.time() if now is None else now
    r = snap["relay"]
    out = [f"relay {r['version']} on {r['hostname']}, up {r['uptime_s'] / 60:.0f}m: listening "
           f"on {r['listen']}, output {r['output']}; {r['connections_open']} connections, "
           f"{r['protocol_errors']} protocol errors, {r['refused']} refused"]
    head = ("ENCLAVE", "CID", "STATE", "AGENT", "SINCE", "RECORDS IN", "OUT", "BYTES IN",
            "DROPS", "GAPS", "SKEW", "LAST SEEN")
    rows = [head]
    for e in snap["enclaves"]:
        skew = e.get("clock_skew_ms")
        rows.append((
            e["name"], str(e.get("cid") if e.get("cid") is not None else "-"),
            "connected" if e["connected"] else "gone", e.get("agent_version") or "-",
            time.strftime("%H:%M:%S", time.localtime(e["connected_since"]))
            if e.get("connected_since") else "-",
            str(e["records_in"]), str(e["records_out"]), _size(e["bytes_in"]), str(e["drops"]),
            str(e["gaps"]), f"{skew:+.0f} ms" if skew is not None else "-",
            _ago(e.get("last_seen"), now)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
    sp = snap["spool"]
    if sp.get("mode") == "memory-only":
        out.append("spool: none (memory-only mode)")
    else:
        cap = sp.get("effective_max_bytes", sp["max_bytes"])
        out.append(f"spool: {sp['backlog']} batches waiting, {_size(sp['bytes'])} of "
                   f"{_size(cap)}" + (" (disk)" if cap < sp["max_bytes"] else "")
                   + f"; {sp['duplicates']} duplicates taken once, "
                   f"{sp['dead_lettered']} dead-lettered, {sp['dropped_records']} dropped")
        if sp.get("state", "ok") != "ok":
            why = f"cannot write: {sp['error']}" if sp.get("error") else "full"
            out.append(f"spool NOT TAKING BATCHES ({why}): agents wait, unacked")
    up = snap["upstream"]
    state = "connected" if up.get("connected", True) else "NOT CONNECTED"
    detail = (f"{up.get('queued_frames', 0)} frames queued"
              + (f", last error: {up['last_error']}" if up.get("last_error") else ""))
    out.append(f"upstream: {up.get('endpoint', up.get('kind', '?'))}: {state}, {detail}")
    return "\n".join(out)


def status_command(path: str, *, as_json: bool) -> int:
    """Print the relay's state; exit 1 with a reason if it cannot be reached."""
    try:
        snap = query(path)
    except OSError as exc:
        print(f"enclave-log-relay status: no relay answers at {path}: "  # noqa: T201
              f"{exc.strerror or exc} (is it running? is --admin-socket the same for both?)",
              file=sys.stderr)
        return 1
    text = "\n".join(json_lines(snap)) if as_json else format_table(snap)
    print(text)  # noqa: T201 - this command's output is its point
    return 0
