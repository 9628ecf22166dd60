"""Attack a real relay with huge chunk ids from peers that never read their acks.

    python tools/chunk_id_attack.py [--connections 8] [--seconds 15] [--chunk-bytes 3500000]

Starts ``python -m parent_side serve`` on TCP loopback (a spool and a file output in a
temporary directory), then opens ``--connections`` connections that each send
``[tag, <1 entry>, {"chunk": "<chunk-bytes str>"}]`` frames for ``--seconds`` and never
read a byte. Meanwhile an honest client sends one small batch every 200 ms and reads
its ack. The relay's VmRSS (from /proc) is printed before, at its peak during, and
after the attackers closed (once it has settled), with the honest client's acks and
the relay's log lines about the attackers. The figures in the issue and the README
come from this script; it stops every process it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fluent_forward.codec import FrameDecoder, Role, encode_packed_forward  # noqa: E402
from fluent_forward.conventions import chunk_id  # noqa: E402
from fluent_forward.entries import EventTime, pack_entry  # noqa: E402
from parent_side.status import query  # noqa: E402

__all__ = ["main"]


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def attack_frame(chunk_bytes: int, n: int) -> bytes:
    entry = pack_entry(EventTime(1_700_000_000, 0), {"log": "attack"})
    chunk = f"{n:08d}" + "A" * (chunk_bytes - 8)  # distinct ids: no dedup shortcut
    return encode_packed_forward("attack", entry, {"chunk": chunk})


async def attacker(port: int, chunk_bytes: int, until: float, index: int) -> int:
    """Send frames until ``until`` without reading, reconnecting whenever the relay
    closes the connection; return the bytes written."""
    sent = n = 0
    while time.monotonic() < until:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < until:
                frame = attack_frame(chunk_bytes, index * 1_000_000 + n)
                writer.write(frame)
                n += 1
                async with asyncio.timeout(max(0.01, until - time.monotonic())):
                    await writer.drain()  # the relay stops reading: we wait here
                sent += len(frame)
                await asyncio.sleep(0)  # drain() does not yield below the high-water mark
        except (OSError, TimeoutError):
            pass
        finally:
            writer.transport.abort()  # gone without reading a byte
    return sent


async def honest(port: int, until: float) -> tuple[int, int]:
    """One small batch every 200 ms, each waiting up to 2 s for its ack."""
    acked = failed = seq = 0
    while time.monotonic() < until:
        seq += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            failed += 1
            await asyncio.sleep(0.2)
            continue
        decoder = FrameDecoder(Role.CLIENT)
        try:
            while time.monotonic() < until:
                seq += 1
                chunk = chunk_id(b"honest!!", seq)
                entry = pack_entry(EventTime(int(time.time()), 0), {"log": f"honest {seq}"})
                writer.write(encode_packed_forward("app", entry, {"chunk": chunk}))
                async with asyncio.timeout(2):
                    while not decoder.feed(await reader.read(65536) or b"\xc1"):
                        pass
                acked += 1
                await asyncio.sleep(0.2)
        except Exception:  # noqa: BLE001 - counted, then retried
            failed += 1
            await asyncio.sleep(0.2)
        finally:
            writer.transport.abort()
    return acked, failed


async def run(args: argparse.Namespace, pid: int, port: int, admin: str) -> dict[str, float]:
    peak = before = vm_rss_mib(pid)
    until = time.monotonic() + args.seconds
    tasks = [asyncio.ensure_future(attacker(port, args.chunk_bytes, until, i))
             for i in range(args.connections)]
    good = asyncio.ensure_future(honest(port, until))
    while not all(t.done() for t in tasks):
        peak = max(peak, vm_rss_mib(pid))
        await asyncio.sleep(0.05)
    sent = sum(t.result() for t in tasks)
    acked, failed = await good
    # Settled: RSS has stopped falling for a second (or 10 s passed).
    after, deadline = vm_rss_mib(pid), time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = vm_rss_mib(pid)
        if now >= after - 1:
            after = now
            break
        after = now
    relay = (await asyncio.to_thread(query, admin))["relay"]
    return {"before": before, "peak": peak, "after": after, "sent_mib": sent / 2**20,
            "open_after": relay["connections_open"],
            "honest_acked": acked, "honest_failures": failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--chunk-bytes", type=int, default=3_500_000)
    parser.add_argument("--relay-arg", action="append", default=[],
                        help="an extra option for the relay (repeatable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nel-attack-") as tmp:
        port = free_port()
        log_path = Path(tmp) / "relay.log"
        with open(log_path, "wb") as log:
            relay = subprocess_relay(tmp, port, log, args.relay_arg)
            try:
                deadline = time.monotonic() + 20
                while b"listening on" not in log_path.read_bytes():
                    if relay.poll() is not None or time.monotonic() > deadline:
                        sys.stderr.write(log_path.read_text())
                        return 1
                    time.sleep(0.05)
                figures = asyncio.run(run(args, relay.pid, port, f"{tmp}/admin.sock"))
            finally:
                relay.send_signal(signal.SIGTERM)
                try:
                    relay.wait(15)
                except Exception:  # noqa: BLE001 - then it is killed
                    relay.kill()
                    relay.wait()
        text = log_path.read_text(errors="replace")
    print(f"{args.connections} connections x {args.seconds:g} s, chunk ids of "  # noqa: T201
          f"{args.chunk_bytes} bytes, acks never read")
    print(f"relay VmRSS before {figures['before']:.0f} MiB, peak during "  # noqa: T201
          f"{figures['peak']:.0f} MiB, after {figures['after']:.0f} MiB; attackers wrote "
          f"{figures['sent_mib']:.0f} MiB; connections open after: "
          f"{figures['open_after']:.0f}; honest client: {figures['honest_acked']:.0f} "
          f"acked, {figures['honest_failures']:.0f} failures")
    reasons = sorted({line.split(": ", 2)[-1] for line in text.splitlines()
                      if "closing connection" in line})
    for reason in reasons[:5]:
        print(f"relay: {reason}")  # noqa: T201
    return 0


def subprocess_relay(tmp: str, port: int, log: IO[bytes], extra: list[str]
                     ) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "parent_side", "serve", "--listen", f"tcp://127.0.0.1:{port}",
         "--output", f"file://{tmp}/out.jsonl", "--spool", f"{tmp}/spool",
         "--admin-socket", f"{tmp}/admin.sock", "--log-level", "info", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
