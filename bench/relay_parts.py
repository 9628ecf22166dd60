"""The relay's per-batch work in one process: the entry check and the spool.

    python -m bench.relay_parts [--batches 400] [--runs 5] [--dir DIR]

CPU seconds of this process (the spool's commit thread included) per 512 KiB batch of
the bench's agent-shaped entries (2,912 lines of 150 bytes): ``validate_fast``, then
the spool's append, commit (write, fdatasync) and forward and ack, with 8 batches
awaiting their commit at a time (a fast sender: commits group batches) and with 1 (an
agent-paced relay: a commit a batch, each waking the commit thread and the loop).
Prints min / median per batch and per line. To compare two builds, run it from each
tree in turn, in the same minutes (copy this file into a tree that lacks it).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time

from bench.scenarios import agent_payloads
from fluent_forward.fastpath import validate_fast
from parent_side.spool import Spool

__all__ = ["main"]


def _check(payloads: list[tuple[bytes, int]], batches: int) -> float:
    t = time.process_time()
    for i in range(batches):
        validate_fast(payloads[i % len(payloads)][0], 1 << 20, None)
    return (time.process_time() - t) / batches


async def _spool(payloads: list[tuple[bytes, int]], batches: int, window: int,
                 where: str | None) -> float:
    path = tempfile.mkdtemp(prefix="nel-relay-parts-", dir=where)
    spool = Spool(path)
    spool.open()

    async def forward() -> None:
        for _ in range(batches):
            spool.ack(await spool.next_entry())

    try:
        forwarding = asyncio.create_task(forward())
        t = time.process_time()
        pending: list[asyncio.Future[None]] = []
        for i in range(batches):
            data, n = payloads[i % len(payloads)]
            pending.append(await spool.append("bench.stdout", data, n, boot_id=b"b" * 16,
                                              seq=i + 1))
            if len(pending) >= window:
                await pending.pop(0)
        await asyncio.gather(*pending, forwarding)
        return (time.process_time() - t) / batches
    finally:
        await spool.close()
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.relay_parts",
                                description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dir", default=None, help="where the spool goes (a temporary directory)")
    args = p.parse_args()
    payloads = agent_payloads()
    lines = payloads[0][1]
    results: dict[str, list[float]] = {"check": [], "spool, window 8": [],
                                       "spool, window 1": []}
    for _ in range(args.runs):  # the parts in turn, so that load hits them alike
        results["check"].append(_check(payloads, args.batches))
        for window in (8, 1):
            results[f"spool, window {window}"].append(asyncio.run(
                _spool(payloads, args.batches, window, args.dir)))
    for name, values in results.items():
        lo, mid = min(values), statistics.median(values)
        print(f"{name:16} min {lo * 1e6:6.0f} median {mid * 1e6:6.0f} us a batch "
              f"({lo / lines * 1e9:.0f} / {mid / lines * 1e9:.0f} ns a line)")


if __name__ == "__main__":
    main()
