"""What ``--sign``'s bytes cost the relay, apart from its check of signed batches.

    python -m bench.sigbytes [--lines 500000] [--runs 4]

The relay alone (``scenarios.relay_alone``: spool on, every entry validated, the
sink downstream), fed three kinds of agent batches in turn, run after run: plain (the
agent without ``--sign``), signed (each record numbered, ``sig_seq`` last, as the agent
sends them), and plain records padded with a constant field as long as ``sig_seq``
(same bytes, the plain check). Prints the relay's CPU per line and the bytes per
record of each: the price of a shorter ``sig_seq`` is read off it before anyone
changes the format.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench import scenarios as sc
from bench.sink import BenchSink
from enclave_side import proof
from enclave_side.lines import EntryEncoder

__all__ = ["KINDS", "payloads"]

KINDS = ("plain", "signed", "padded")
_BOOT = "0123456789abcdef"
#: A field as long as ``sig_seq`` with its value: 7-character key, 31-character str.
_PAD = {"pad_pad": "p" * 31}


def payloads(kind: str, batch_bytes: int = 512 * 1024, batches: int = 4
             ) -> list[tuple[bytes, int]]:
    """``batches`` batches of agent entries of ``kind`` (``KINDS``), ``batch_bytes`` each."""
    enc = EntryEncoder({"stream": "stdout", **(_PAD if kind == "padded" else {})})
    per = batch_bytes // (sc.LINE_BYTES + 30)
    out = []
    for b in range(batches):
        entries = enc.encode([sc.line(b * per + i).encode() for i in range(per)],
                             time.time_ns())
        if kind == "signed":
            groups, _, _ = proof.number_entries([entries], [per], _BOOT, 1, 1 + b * per,
                                                [True])
            entries = b"".join(groups)
        out.append((entries, per))
    return out


async def _run(lines: int, runs: int) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="nel-sigbytes-", dir="/tmp"))
    sink = BenchSink()
    url = f"unix://{tmp}/sink.sock"
    await sink.start(url)
    feeds = {kind: payloads(kind) for kind in KINDS}
    out: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        for r in range(runs):  # interleaved: other load falls on every kind
            for kind in KINDS:
                d = tmp / f"{kind}{r}"
                d.mkdir()
                sink.reset()
                env = sc.Env(d, "unix", sink, url)
                try:
                    figures = await sc.relay_alone(env, lines, feeds[kind])
                finally:
                    await env.stop_all()
                out[kind].append(figures["relay_us_per_line"])
                print(f"  {kind}: relay {figures['relay_us_per_line']:.3f} µs/line", flush=True)
    finally:
        await sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=500_000)
    p.add_argument("--runs", type=int, default=4)
    args = p.parse_args(argv)
    results = asyncio.run(_run(args.lines, args.runs))
    print("\n| batches | bytes a record | relay CPU µs/line (min / median / max) |")
    print("| --- | ---: | --- |")
    for kind, values in results.items():
        feed = payloads(kind, batches=1)[0]
        print(f"| {kind} | {len(feed[0]) / feed[1]:.0f} | {min(values):.3f} / "
              f"{statistics.median(values):.3f} / {max(values):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
