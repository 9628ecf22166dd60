"""Scenario 7: the quiet enclaves' latency, alone and while another floods the relay.

One relay (``bench.cid_relay``: the relay as ``serve`` runs it, seeing each agent as the
enclave its environment names) and ``QUIET_CIDS`` agents, each tailing its own file,
into the bench's sink. One writer appends ``QUIET_RATE`` lines a second to each file,
one line in 16 carrying its write time (``WRITER``, as in scenario 4's latency), and
the sink keeps the delay of those lines from the write to it:

- alone: the quiet enclaves only, for ``warmup + seconds``;
- flooded: the same, while one more agent (``FLOOD_CID``) captures an app that prints
  as fast as it can (``--overflow block``: the app waits for the agent, never a drop)
  and so sends the relay all it takes.

p50/p99 leave the warm-up out (an idle agent looks at its file every 250 ms). What the
fair share promises is the ratio of the two p99s: a flood must not put the others
behind it (issue 16: within 2x). The flood's rate into the sink and the relay's CPU in
the flooded phase say how hard the relay was pushed; the relay's count of waits for a
share, whether the fair share had to hold the flood back. Run again with the sink
reading at most ``SLOW_UPSTREAM`` bytes a second, the upstream is the bottleneck: the
case the fair share is for.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import Proc, bench_env
from bench.scenarios import (
    TAG,
    WRITER,
    Env,
    _until,
    agent_args,
    line,
    percentiles,
    relay_args,
    wait_listening,
)
from parent_side.status import query

__all__ = ["FLOOD_CID", "FLOODER", "QUIET_CIDS", "QUIET_RATE", "SLOW_UPSTREAM", "fair_share"]

QUIET_CIDS = (16, 17, 18)  # three enclaves of ordinary volume
FLOOD_CID = 20
QUIET_RATE = 2000.0  # lines/s each: 375 sampled lines a second between the three
SLOW_UPSTREAM = 20e6  # bytes/s: about 110 k lines/s, well under what the flood sends
FLOOD_SLACK = 10.0  # the flood outlasts its phase by this much: the drain is flooded too

#: Prints ``line()``s as fast as a Python loop writes 256 of them at a time, for
#: argv[1] seconds: bounded in time, so in count.
FLOODER = f"""\
import sys, time
block = {"".join(line(i) + chr(10) for i in range(256)).encode()!r}
out = sys.stdout.buffer
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    out.write(block)
out.flush()
"""


async def _phase(env: Env, name: str, files: list[Path], seconds: float, warmup: float,
                 procs: list[Proc], quiet_so_far: int
                 ) -> tuple[collections.Counter[int], int, float, float]:
    """One writer over ``files``: (delays, lines written, its start and end, monotonic);
    ``name`` names its log (the count written is its last word)."""
    env.sink.delays.clear()
    env.sink.latency_from = time.time_ns() + int(warmup * 1e9)
    t0 = time.monotonic()
    writer = env.start(name, ["-c", WRITER, ",".join(map(str, files)), str(QUIET_RATE),
                                  str(seconds + warmup)])
    await writer.wait(seconds + warmup + 30.0)
    t1 = time.monotonic()
    written = int(writer.log.read_text().split()[-1])
    await _until(env.sink, f"{TAG}.file", quiet_so_far + written, procs)
    env.sink.latency_from = None
    return collections.Counter(env.sink.delays), written, t0, t1


async def fair_share(env: Env, seconds: float, warmup: float,
                     upstream_rate: float | None = None) -> dict[str, float]:
    """Both phases on one relay; see the module docstring. ``upstream_rate``: the sink
    reads at most that many bytes a second (the upstream, not the relay, is then what
    the enclaves compete for, and the spool fills)."""
    env.sink.read_rate = upstream_rate
    listen = f"unix://{env.tmp}/relay.sock"  # the peer's pid is SO_PEERCRED's: Unix only
    admin = env.tmp / "admin.sock"
    relay = env.start("relay", ["-m", "bench.cid_relay", *relay_args(
        listen, env.sink_url, env.tmp / "spool", "--admin-socket", str(admin))[2:]])
    await wait_listening(listen, relay)
    files = [env.tmp / f"quiet{cid}.log" for cid in QUIET_CIDS]
    quiet = []
    for cid, path in zip(QUIET_CIDS, files, strict=True):
        path.write_bytes(b"")
        quiet.append(env.start(f"quiet{cid}", agent_args(listen, "--file", str(path)),
                               env=bench_env(NEL_BENCH_CID=str(cid))))
    await asyncio.sleep(1.5)  # connected and idle
    alone, written, _, _ = await _phase(env, "writer-alone", files, seconds, warmup,
                                        [relay, *quiet], 0)

    flood_tag = f"{TAG}.stdout"
    flood = env.start("flood", agent_args(
        listen, "--overflow", "block", "--", sys.executable, "-c", FLOODER,
        str(seconds + warmup + FLOOD_SLACK)), env=bench_env(NEL_BENCH_CID=str(FLOOD_CID)))
    await _until(env.sink, flood_tag, 1, [relay, flood])
    flooded0, cpu0 = env.sink.count(flood_tag), relay.cpu()
    loaded, _, t0, t1 = await _phase(env, "writer-flooded", files, seconds, warmup,
                                     [relay, *quiet, flood], written)
    flood_rate = (env.sink.count(flood_tag) - flooded0) / (time.monotonic() - t0)
    relay_cpu = (relay.cpu() - cpu0) / (time.monotonic() - t0)
    if flood.exited():
        raise RuntimeError(f"the flood ended before the quiet lines were in:\n"
                           f"{flood.tail_log()}")
    fair = _fair_state(await asyncio.to_thread(query, str(admin)))
    await env.stop_all()
    a50, a99 = percentiles(alone, (0.5, 0.99))
    f50, f99 = percentiles(loaded, (0.5, 0.99))
    return {"quiet_enclaves": len(QUIET_CIDS), "quiet_rate": QUIET_RATE,
            "alone_p50_ms": a50 / 1e6, "alone_p99_ms": a99 / 1e6,
            "alone_max_ms": max(alone) / 1e6, "alone_sampled": sum(alone.values()),
            "flood_p50_ms": f50 / 1e6, "flood_p99_ms": f99 / 1e6,
            "flood_max_ms": max(loaded) / 1e6, "flood_sampled": sum(loaded.values()),
            "p99_ratio": f99 / a99, "flood_lines_per_s": flood_rate,
            "relay_cpu_pct": relay_cpu * 100, "fair_share_waits": fair["waits"],
            "fair_window_kib": fair["window"] / 1024,
            "writer_seconds": t1 - t0}


def _fair_state(snapshot: dict[str, Any]) -> dict[str, int]:
    """The relay's fair share at the end (how often it held a reader back for its
    share, the window it had come to); and a check that it saw every agent as an
    enclave of its own (else there was no share to measure)."""
    names = {e["name"] for e in snapshot["enclaves"]}
    want = {f"cid-{cid}" for cid in (*QUIET_CIDS, FLOOD_CID)}
    if not want <= names:
        raise RuntimeError(f"the relay saw the agents as {sorted(names)}, not {sorted(want)}")
    return {k: int(v) for k, v in snapshot["relay"]["fair_share"].items()}
