"""Fluent Bit's own two hops on the same file: tail -> forward (acks) -> forward -> null.

Runs only when a ``fluent-bit`` binary is on PATH or named by ``FLUENT_BIT``. Two
processes: a receiver (forward input, null output, the HTTP monitoring server whose
``/api/v1/metrics`` counts the records taken in) and a sender (tail from the head of
the file, forward output with ``Require_ack_response``), over TCP on 127.0.0.1. The
window is the same as ours: from the first records counted to the last, with each
process's CPU from /proc over it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procs import Proc, cpu_seconds

__all__ = ["find_fluent_bit", "fluent_bit_two_hops"]

RECEIVER = """\
[SERVICE]
    Flush        1
    Log_Level    warn
    HTTP_Server  On
    HTTP_Listen  127.0.0.1
    HTTP_Port    {http_port}

[INPUT]
    Name    forward
    Listen  127.0.0.1
    Port    {port}

[OUTPUT]
    Name   null
    Match  *
"""

SENDER = """\
[SERVICE]
    Flush      1
    Log_Level  warn

[INPUT]
    Name             tail
    Path             {path}
    Read_from_Head   On
    Refresh_Interval 1

[OUTPUT]
    Name                  forward
    Match                 *
    Host                  127.0.0.1
    Port                  {port}
    Require_ack_response  On
"""


def find_fluent_bit() -> str | None:
    """``$FLUENT_BIT`` if set, else ``fluent-bit`` on PATH, else None."""
    named = os.environ.get("FLUENT_BIT")
    if named:
        return named if os.access(named, os.X_OK) else None
    return shutil.which("fluent-bit")


def _records_in(http_port: int) -> int:
    url = f"http://127.0.0.1:{http_port}/api/v1/metrics"
    with urllib.request.urlopen(url, timeout=2) as resp:
        data: dict[str, Any] = json.load(resp)
    return sum(int(v.get("records", 0)) for v in data.get("input", {}).values())


async def fluent_bit_two_hops(binary: str, tmp: Path, data_file: Path, n: int,
                              ports: tuple[int, int]) -> dict[str, float]:
    """One run; lines/s and each process's CPU us/line over the window."""
    port, http_port = ports
    rx_conf, tx_conf = tmp / "fb-receiver.conf", tmp / "fb-sender.conf"
    rx_conf.write_text(RECEIVER.format(port=port, http_port=http_port))
    tx_conf.write_text(SENDER.format(port=port, path=data_file))
    rx = Proc("fluent-bit receiver", [binary, "-c", str(rx_conf)], log=tmp / "fb-rx.log")
    tx: Proc | None = None
    loop = asyncio.get_running_loop()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await loop.run_in_executor(None, _records_in, http_port)
                break
            except OSError as exc:
                if time.monotonic() > deadline or rx.exited():
                    raise RuntimeError("fluent-bit receiver did not start:\n"
                                       + rx.tail_log()) from exc
                await asyncio.sleep(0.05)
        tx = Proc("fluent-bit sender", [binary, "-c", str(tx_conf)], log=tmp / "fb-tx.log")
        t0 = cpu_tx0 = cpu_rx0 = 0.0
        first = 0
        deadline = time.monotonic() + 300
        while True:
            got = await loop.run_in_executor(None, _records_in, http_port)
            now = time.monotonic()
            if got and not t0:
                t0, first = now, got
                cpu_tx0, cpu_rx0 = cpu_seconds(tx.pid), cpu_seconds(rx.pid)
            if got >= n:
                cpu_tx, cpu_rx = cpu_seconds(tx.pid) - cpu_tx0, cpu_seconds(rx.pid) - cpu_rx0
                lines = n - first
                return {"lines_per_s": lines / (now - t0), "sender_us_per_line":
                        cpu_tx / lines * 1e6, "receiver_us_per_line": cpu_rx / lines * 1e6}
            if now > deadline or tx.exited() or rx.exited():
                raise RuntimeError(f"fluent-bit took {got} of {n} records:\n{tx.tail_log()}")
            await asyncio.sleep(0.02)
    finally:
        if tx is not None:
            await tx.stop()
        await rx.stop()
