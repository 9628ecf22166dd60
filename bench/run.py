"""``make bench``: every hop measured, a table printed and written as JSON.

    python -m bench [--lines 1000000] [--runs 3] [--transports unix,tcp] [--only NAMES]

Scenarios (150-byte lines, ``--lines`` per run, each run ``--runs`` times, interleaved):

  child       the agent capturing a Python app's stdout (print, block-buffered), policy
              block, vs. the same app into ``cat > /dev/null``
  tail        the agent tailing a file, without and with ``--redact all``
  relay       agent-shaped frames into the relay (spool on, every entry validated) and
              Forward frames out
  e2e         a file -> agent -> relay -> sink, then latency at half that rate (a 2 s
              warm-up, then --latency-seconds; p50/p99 leave the warm-up out); on the
              first transport also the agent with --sign, and both again split as on
              Nitro: the agent on one CPU, the relay and the sink on the other
  idle        resident memory of agent and relay at rest
  fluentbit   side by side, into a real Fluent Bit sink (forward input, null output):
              our agent -> relay with default options, and Fluent Bit's own tail ->
              forward with acks, on the same file, which first alternating; then our
              agent alone into a sink (bench/fluentbit.py); needs a
              ``fluent-bit`` on PATH or named by ``$FLUENT_BIT``, and says so without
  fairshare   the p99 latency of three quiet enclaves' lines (a file each, as in e2e's
              latency), alone and while a fourth floods the relay as fast as it can;
              each agent its own identity (bench/cid_relay.py), Unix sockets; then
              again with the sink reading at most 20 MB/s (bench/fairshare.py)
  sinks       (only when asked) how fast this bench's sink and the tests' fake Fluent
              Bit take relay-shaped frames: the sink must not be the bottleneck

Figures are min / median / max over the runs. The JSON goes to ``--out`` (default
``bench/results/latest.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

from bench import scenarios as sc
from bench.fairshare import QUIET_CIDS, SLOW_UPSTREAM, fair_share
from bench.fluentbit import (
    FluentBitSink,
    agent_into_fluent_bit,
    find_fluent_bit,
    fluent_bit_two_hops,
    in_page_cache,
    ours_into_fluent_bit,
)
from bench.procs import ROOT
from bench.sink import BenchSink

SCENARIOS = ("child", "tail", "relay", "e2e", "idle", "fairshare", "fluentbit", "sinks")
AGENT_BUFFER_MIB = 32  # the agent's default --buffer-size
RELAY_WINDOWS_MIB = 64 + 16  # the relay's default --upstream-buffer + spool cache


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "msgpack": ".".join(map(str, msgpack.version)),
            "msgpack_c": msgpack.Packer.__module__ != "msgpack.fallback",
            "kernel": platform.release(), "machine": platform.machine()}


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


class Results:
    def __init__(self) -> None:
        self.runs: dict[str, list[dict[str, float]]] = defaultdict(list)

    def add(self, key: str, figures: dict[str, float]) -> None:
        self.runs[key].append(figures)

    def metric(self, key: str, name: str) -> dict[str, float] | None:
        values = [r[name] for r in self.runs.get(key, []) if name in r]
        return summary(values) if values else None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, runs in self.runs.items():
            names = sorted({n for r in runs for n in r})
            out[key] = {n: {**summary([r[n] for r in runs if n in r]),
                            "runs": [r[n] for r in runs if n in r]} for n in names}
        return out


async def _guarded(what: str, errors: list[str], coro: Awaitable[dict[str, float]]
                   ) -> dict[str, float] | None:
    try:
        return await coro
    except Exception as exc:  # noqa: BLE001 - one failed run is reported, not fatal
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        print(f"  FAILED {what}: {exc}", file=sys.stderr)
        return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    load_before = os.getloadavg()
    tmp_root = Path(tempfile.mkdtemp(prefix="nel-bench-", dir="/tmp"))
    results = Results()
    errors: list[str] = []
    n = args.lines
    only = set(args.only.split(",")) if args.only else set(SCENARIOS) - {"sinks"}
    transports = args.transports.split(",")
    sinks: dict[str, tuple[BenchSink, str]] = {}
    try:
        data_file = tmp_root / "lines.log"
        sc.write_lines(data_file, n)
        for t in transports:
            sink = BenchSink()
            url = f"unix://{tmp_root}/sink.sock" if t == "unix" else "tcp://127.0.0.1:0"
            await sink.start(url)
            if t == "tcp":
                url = f"tcp://127.0.0.1:{sink.port}"
            sinks[t] = (sink, url)
        counter = 0

        def env(t: str) -> sc.Env:
            nonlocal counter
            counter += 1
            d = tmp_root / f"r{counter}"
            d.mkdir()
            sink, url = sinks[t]
            sink.reset()
            return sc.Env(d, t, sink, url, profile=args.profile)

        async def one(key: str, make: Callable[[sc.Env], Awaitable[dict[str, float]]],
                      t: str) -> None:
            e = env(t)
            try:
                figures = await _guarded(key, errors, make(e))
            finally:
                await e.stop_all()
            if figures is not None:
                results.add(key, figures)
                print(f"  {key}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()),
                      flush=True)

        first = transports[0]
        tail_rate = args.tail_sink_rate * 1e6 or None
        for r in range(args.runs):
            print(f"run {r + 1} of {args.runs}", flush=True)
            if "child" in only:
                base = await _guarded("child baseline", errors, sc.app_into_cat(tmp_root, n))
                if base is not None:
                    results.add("child.baseline", base)
                await one("child", lambda e: sc.agent_child(e, n), first)
            if "tail" in only:
                await one("tail", lambda e: sc.agent_tail(e, n, data_file, False, tail_rate),
                          first)
                await one("tail.redact", lambda e: sc.agent_tail(
                    e, n, data_file, True, tail_rate), first)
            for t in transports:
                if "relay" in only:
                    await one(f"relay.{t}", lambda e: sc.relay_alone(e, n), t)
                if "e2e" in only:
                    await one(f"e2e.{t}", lambda e: sc.end_to_end(e, n, data_file, RELAY_OPTS),
                              t)
            if "e2e" in only:  # the agent with --sign, on the first transport
                await one(f"e2e_sign.{first}", lambda e: sc.end_to_end(
                    e, n, data_file, RELAY_OPTS, sign=True), first)
                if sc.split_cores() is not None:  # and both again, split as on Nitro
                    for key, sign in ((f"e2e_split.{first}", False),
                                      (f"e2e_split_sign.{first}", True)):
                        await one(key, lambda e, sign=sign: sc.end_to_end(
                            e, n, data_file, RELAY_OPTS, sign=sign, split=True), first)
            if "idle" in only:
                await one("idle", sc.idle, first)
            if "fairshare" in only:  # Unix sockets whatever --transports says: see cid_relay
                if "unix" not in sinks:
                    sinks["unix"] = await _unix_sink(tmp_root)
                await one("fairshare", lambda e: fair_share(
                    e, args.latency_seconds, args.latency_warmup), "unix")
                await one("fairshare.slow", lambda e: fair_share(
                    e, args.latency_seconds, args.latency_warmup, SLOW_UPSTREAM), "unix")
            if "sinks" in only:
                for kind in ("bench", "fake"):
                    await one(f"sink.{kind}", lambda e, k=kind: sc.sink_capacity(
                        e, k, min(n, 200_000)), first)
        if "e2e" in only:
            for t in transports:
                m = results.metric(f"e2e.{t}", "lines_per_s")
                rate = args.latency_rate or (m["median"] / 2 if m else 0)
                if not rate:
                    continue
                for r in range(args.runs):
                    print(f"latency {t} at {rate:,.0f} lines/s, run {r + 1}", flush=True)
                    await one(f"latency.{t}", lambda e, rate=rate: sc.latency(
                        e, rate, args.latency_seconds, RELAY_OPTS,
                        warmup=args.latency_warmup), t)
        fluent_bit: dict[str, Any] = {}
        binary = find_fluent_bit()
        if binary is None:
            fluent_bit["skipped"] = ("no fluent-bit on PATH and FLUENT_BIT not set: "
                                     "Fluent Bit's own two hops were not measured")
            print(fluent_bit["skipped"])
        elif "fluentbit" in only:
            fluent_bit["binary"] = binary
            for r in range(args.runs):
                print(f"side by side into a Fluent Bit sink, run {r + 1} of {args.runs}",
                      flush=True)
                await _side_by_side(binary, tmp_root, data_file, n, results, errors, r,
                                    args.profile)
    finally:
        for sink, _ in sinks.values():
            await sink.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    return {"command": "python -m bench " + " ".join(sys.argv[1:]), "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": round(time.time() - started, 1), "lines_per_run": n,
            "line_bytes": sc.LINE_BYTES, "runs": args.runs,
            "load_before": load_before, "load_after": os.getloadavg(),
            "relay_options": list(RELAY_OPTS), "tail_sink_rate_mb_s": args.tail_sink_rate,
            "results": results.as_json(),
            "fluent_bit": fluent_bit, "errors": errors}


async def _unix_sink(tmp_root: Path) -> tuple[BenchSink, str]:
    sink = BenchSink()
    url = f"unix://{tmp_root}/sink.sock"
    await sink.start(url)
    return sink, url


#: The side-by-side pipelines: results key, what the error says failed.
_PIPELINES = (("vs.fluentbit", "Fluent Bit's two hops"),
              ("vs.ours", "our agent and relay, default options"))


async def _side_by_side(binary: str, tmp_root: Path, data_file: Path, n: int,
                        results: Results, errors: list[str], run: int,
                        profile: Path | None = None) -> None:
    """One run of each pipeline into a fresh real Fluent Bit sink, one after the other
    (which goes first alternates run by run); their ratios, when both ran."""
    figures: dict[str, dict[str, float]] = {}
    for key, what in _PIPELINES[::-1] if run % 2 else _PIPELINES:
        d = Path(tempfile.mkdtemp(prefix=key, dir=tmp_root))
        got = await _guarded(what, errors,
                             _into_fluent_bit(key, binary, d, data_file, n, profile))
        if got is not None:
            figures[key] = got
            results.add(key, got)
            print(f"  {key}: " + ", ".join(f"{k} {v:,.2f}" for k, v in got.items()),
                  flush=True)
    if len(figures) == len(_PIPELINES):  # a ratio only of two runs of the same minutes
        ours, theirs = figures["vs.ours"], figures["vs.fluentbit"]
        results.add("vs.ratio", {name: ours[name] / theirs[name]
                                 for name in ("lines_per_s", "lines_per_s_steady")
                                 if name in ours and name in theirs})
    d = Path(tempfile.mkdtemp(prefix="vs.agent", dir=tmp_root))
    got = await _guarded("our agent alone", errors,
                         _into_fluent_bit("vs.agent", binary, d, data_file, n))
    if got is not None:
        results.add("vs.agent", got)
        print("  vs.agent: " + ", ".join(f"{k} {v:,.2f}" for k, v in got.items()), flush=True)


async def _into_fluent_bit(key: str, binary: str, d: Path, data_file: Path, n: int,
                           profile: Path | None = None) -> dict[str, float]:
    in_page_cache(data_file)
    sink = FluentBitSink(binary, d, sc._free_port())
    try:
        await sink.start()
        if key == "vs.fluentbit":
            return await fluent_bit_two_hops(binary, d, data_file, n, sink)
        if key == "vs.agent":
            return await agent_into_fluent_bit(d, data_file, n, sink)
        return await ours_into_fluent_bit(d, data_file, n, sink, profile=profile)
    finally:
        await sink.stop()


#: The relay's options in the throughput runs besides listen/output/spool: none, its
#: defaults (every enclave its fair share, no rate cap).
RELAY_OPTS: tuple[str, ...] = ()


# -- the table -------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"


def rows(report: dict[str, Any]) -> list[tuple[str, str, dict[str, float] | None, str]]:
    """(what, metric, min/median/max, target) rows of the table."""
    res = report["results"]

    def m(key: str, name: str) -> dict[str, float] | None:
        entry = res.get(key, {}).get(name)
        return {k: entry[k] for k in ("min", "median", "max")} if entry else None

    out: list[tuple[str, str, dict[str, float] | None, str]] = []
    if "child" in res:
        out += [("1 agent, child stdout", "lines/s", m("child", "lines_per_s"), ""),
                ("", "agent CPU us/line", m("child", "agent_us_per_line"), "<= 2"),
                ("", "app time under agent (s)", m("child", "app_elapsed_s"), ""),
                ("", "app time into cat (s)", m("child.baseline", "app_elapsed_s"), ""),
                ("", "app slowdown (x, run by run)", _paired(res, "child", "child.baseline",
                                                            "app_elapsed_s"), "<= 1.5"),
                ("", "drops", m("child", "drops"), "0")]
    if "tail" in res:
        out += [("2 agent, file tail", "lines/s", m("tail", "lines_per_s"), ""),
                ("", "agent CPU us/line", m("tail", "agent_us_per_line"), "<= 2")]
    if "tail.redact" in res:
        out += [("  with --redact all", "lines/s", m("tail.redact", "lines_per_s"), ""),
                ("", "agent CPU us/line", m("tail.redact", "agent_us_per_line"), "<= 6")]
    for key in sorted(k for k in res if k.startswith("relay.")):
        t = key.split(".", 1)[1]
        out += [(f"3 relay, spool on ({t})", "lines/s", m(key, "lines_per_s"), ""),
                ("", "relay CPU us/line", m(key, "relay_us_per_line"), "<= 2.5")]
    for key in sorted(k for k in res if k.startswith("e2e.")):
        t = key.split(".", 1)[1]
        out += [(f"4 end to end ({t})", "lines/s", m(key, "lines_per_s"), ">= 300k"),
                ("", "agent CPU us/line", m(key, "agent_us_per_line"), ""),
                ("", "relay CPU us/line", m(key, "relay_us_per_line"), "")]
        lat = f"latency.{t}"
        if lat in res:  # before the signed rows: they are the transport's, not the split's
            out += [("", "latency rate (lines/s)", m(lat, "rate"), "max/2"),
                    ("", "latency p50 (ms)", m(lat, "p50_ms"), "<= 50"),
                    ("", "latency p99 (ms)", m(lat, "p99_ms"), "<= 250"),
                    ("", "latency max (ms)", m(lat, "max_ms"), ""),
                    ("", "latency max, warm-up too (ms)", m(lat, "cold_max_ms"), "")]
        out += _signed_rows(res, t, m)
    if "idle" in res:
        out += [("5 memory", "agent RSS idle (MiB)", m("idle", "agent_idle_rss_mib"), "<= 40"),
                ("", "relay RSS idle (MiB)", m("idle", "relay_idle_rss_mib"), ""),
                ("", "agent CPU idle (% of a core)", m("idle", "agent_idle_cpu_pct"), ""),
                ("", "relay CPU idle (% of a core)", m("idle", "relay_idle_cpu_pct"), "")]
    for key, upstream in (("fairshare", "the sink as fast as it can"),
                          ("fairshare.slow", f"the sink at {SLOW_UPSTREAM / 1e6:.0f} MB/s")):
        if key not in res:
            continue
        out += [(f"7 fair share: {len(QUIET_CIDS)} quiet enclaves, {upstream}",
                 "their lines/s each", m(key, "quiet_rate"), ""),
                ("  alone", "latency p50 (ms)", m(key, "alone_p50_ms"), ""),
                ("", "latency p99 (ms)", m(key, "alone_p99_ms"), ""),
                ("", "latency max (ms)", m(key, "alone_max_ms"), ""),
                ("  a 4th enclave flooding", "its lines/s into the sink",
                 m(key, "flood_lines_per_s"), ""),
                ("", "relay CPU (% of a core)", m(key, "relay_cpu_pct"), ""),
                ("", "waits for a fair share", m(key, "fair_share_waits"), ""),
                ("", "fair window at the end (KiB)", m(key, "fair_window_kib"), ""),
                ("", "latency p50 (ms)", m(key, "flood_p50_ms"), ""),
                ("", "latency p99 (ms)", m(key, "flood_p99_ms"), ""),
                ("", "latency max (ms)", m(key, "flood_max_ms"), ""),
                ("  flooded / alone", "latency p99 (x, run by run)",
                 m(key, "p99_ratio"), "<= 2")]
    loads = [(k, "agent_peak_rss_mib") for k in ("child", "tail", "tail.redact")] + [
        (k, "relay_peak_rss_mib") for k in sorted(res) if k.startswith(("relay.", "e2e."))]
    for key, name in loads:
        if key in res and name in res[key]:
            who = name.split("_")[0]
            limit = (f"<= {AGENT_BUFFER_MIB + 40}" if who == "agent"
                     else f"<= {60 + RELAY_WINDOWS_MIB}")
            out.append(("", f"{who} peak RSS, {key} (MiB)", m(key, name), limit))
    for key in ("sink.bench", "sink.fake"):
        if key in res:
            out += [(f"sink capacity ({key})", "lines/s", m(key, "lines_per_s"), ""),
                    ("", "sink CPU us/line", m(key, "sink_us_per_line"), "")]
    if "vs.ours" in res or "vs.fluentbit" in res:
        out += [("6 into a Fluent Bit sink: ours", "lines/s", m("vs.ours", "lines_per_s"), ""),
                ("", "lines/s once lines flow", m("vs.ours", "lines_per_s_steady"), ""),
                ("", "agent CPU us/line", m("vs.ours", "agent_us_per_line"), "<= 0.4"),
                ("", "agent CPU before its first lines (s)",
                 m("vs.ours", "agent_cpu_to_first_s"), ""),
                ("", "agent CPU us/line, no relay running",
                 m("vs.agent", "agent_us_per_line"), ""),
                ("", "relay CPU us/line", m("vs.ours", "relay_us_per_line"), "<= 0.5"),
                ("", "sink CPU us/line", m("vs.ours", "sink_us_per_line"), ""),
                ("  Fluent Bit's two hops", "lines/s", m("vs.fluentbit", "lines_per_s"), ""),
                ("", "lines/s once lines flow", m("vs.fluentbit", "lines_per_s_steady"), ""),
                ("", "sender CPU us/line", m("vs.fluentbit", "sender_us_per_line"), ""),
                ("", "sender CPU before its first lines (s)",
                 m("vs.fluentbit", "sender_cpu_to_first_s"), ""),
                ("", "sink CPU us/line", m("vs.fluentbit", "sink_us_per_line"), ""),
                ("  ours / Fluent Bit", "lines/s (x, run by run)",
                 m("vs.ratio", "lines_per_s"), ">= 1.5"),
                ("", "lines/s once lines flow (x, run by run)",
                 m("vs.ratio", "lines_per_s_steady"), "")]
    return out


def _signed_rows(res: dict[str, Any], t: str, m: Callable[[str, str], dict[str, float] | None]
                 ) -> list[tuple[str, str, dict[str, float] | None, str]]:
    """--sign against none, in both topologies side by side: all on shared cores (this
    machine as it is), and split (the agent on a CPU of its own, as on Nitro)."""
    out: list[tuple[str, str, dict[str, float] | None, str]] = []
    signed = f"e2e_sign.{t}"
    if signed in res:
        out += [(f"4 end to end ({t}), agent --sign", "lines/s", m(signed, "lines_per_s"), ""),
                ("", "agent CPU us/line", m(signed, "agent_us_per_line"), ""),
                ("", "relay CPU us/line", m(signed, "relay_us_per_line"), ""),
                *_waits(signed, m)]
    split, split_signed = f"e2e_split.{t}", f"e2e_split_sign.{t}"
    for key, what in ((split, "split: agent; relay and sink"),
                      (split_signed, "split, agent --sign")):
        if key in res:
            out += [(f"4 end to end ({t}), {what}", "lines/s", m(key, "lines_per_s"), ""),
                    ("", "agent CPU us/line", m(key, "agent_us_per_line"), ""),
                    ("", "relay CPU us/line", m(key, "relay_us_per_line"), ""),
                    ("", "sink CPU us/line", m(key, "sink_us_per_line"), ""),
                    *_waits(key, m)]
    for a, b, where in ((signed, f"e2e.{t}", "shared cores"),
                        (split_signed, split, "split, as on Nitro")):
        if a in res:
            out += [(f"  with/without --sign, {where}", "lines/s (x, run by run)",
                     _paired(res, a, b, "lines_per_s"), ">= 0.85"),
                    ("", "CPU ceiling (x, run by run; scenarios.cpu_ceiling)",
                     _paired(res, a, b, "cpu_ceiling_lines_per_s"), ">= 0.85"),
                    ("", "lines/s, the first fifth of the lines (x, run by run)",
                     _paired(res, a, b, "head_lines_per_s"), ""),
                    ("", "lines/s, the rest (x, run by run)",
                     _paired(res, a, b, "rest_lines_per_s"), "")]
    return out


def _waits(key: str, m: Callable[[str, str], dict[str, float] | None]
           ) -> list[tuple[str, str, dict[str, float] | None, str]]:
    """How long the agent and the relay were runnable but waited for a CPU: other work
    on the machine, which wall-clock figures include and CPU per line does not."""
    return [("", f"{who} waiting for a CPU (% of the run)", m(key, f"{who}_wait_pct"), "")
            for who in ("agent", "relay")]


def met(target: str, median: float) -> str:
    """"yes" or "NO" for a target such as ``<= 2.5``, ``>= 300k`` or ``0``; "" if none."""
    t = target.strip()
    if not t or not (t[0] in "<>" or t[0].isdigit()):
        return ""
    op, _, value = t.partition(" ") if t[0] in "<>" else ("==", "", t)
    limit = float(value.rstrip("k")) * (1000 if value.endswith("k") else 1)
    ok = {"<=": median <= limit, ">=": median >= limit, "==": median == limit}[op]
    return "yes" if ok else "NO"


def _paired(res: dict[str, Any], a: str, b: str, name: str) -> dict[str, float] | None:
    """a/b for each run (each run measured both, one after the other), summarised."""
    try:
        ratios = [x / y for x, y in zip(res[a][name]["runs"], res[b][name]["runs"],
                                        strict=False)]
    except (KeyError, ZeroDivisionError):
        return None
    return summary(ratios) if ratios else None


def table(report: dict[str, Any]) -> str:
    mach = report["machine"]
    lines = [f"machine: {mach['cores']} cores, {mach['cpu']}, {mach['implementation']} "
             f"{mach['python']}, msgpack {mach['msgpack']}"
             f"{' (C)' if mach['msgpack_c'] else ' (pure Python!)'}, Linux {mach['kernel']}",
             "load average before/after: "
             + " / ".join(f"{a:.2f}" for a in (report['load_before'][0],
                                               report['load_after'][0])),
             f"{report['lines_per_run']:,} lines of {report['line_bytes']} bytes per run, "
             f"{report['runs']} runs: min / median / max"
             + (f"; scenario 2's sink reading at most {report['tail_sink_rate_mb_s']:g} MB/s"
                if report.get("tail_sink_rate_mb_s") else ""), "",
             "| scenario | metric | min | median | max | target | met (median) |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for what, metric, v, target in rows(report):
        if v is None:
            continue
        lines.append(f"| {what} | {metric} | {_fmt(v['min'])} | {_fmt(v['median'])} | "
                     f"{_fmt(v['max'])} | {target} | {met(target, v['median'])} |")
    fb = report.get("fluent_bit", {})
    if fb.get("skipped"):
        lines += ["", fb["skipped"]]
    if report.get("errors"):
        lines += ["", "errors:"] + [f"- {e}" for e in report["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--transports", default="unix,tcp")
    p.add_argument("--only", default="", help="comma list of " + ", ".join(SCENARIOS))
    p.add_argument("--latency-seconds", type=float, default=4.0)
    p.add_argument("--latency-warmup", type=float, default=2.0,
                   help="seconds of the latency runs left out of p50/p99 (default: 2)")
    p.add_argument("--latency-rate", type=float, default=0.0,
                   help="lines/s for the latency runs (default: half the e2e median)")
    p.add_argument("--tail-sink-rate", type=float, default=0.0, metavar="MB_PER_S",
                   help="scenario 2's sink reads at most this many MB a second (default: "
                        "as fast as it can), to see what a slower consumer costs the agent")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="profile the agent and the relay with py-spy into DIR (folded "
                        "stacks; python -m bench.folded DIR/FILE summarises one)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    p.add_argument("--show", type=Path, default=None, metavar="JSON",
                   help="print the table of an earlier run's JSON and exit")
    args = p.parse_args(argv)
    if args.show is not None:
        print(table(json.loads(args.show.read_text())))
        return 0
    report = asyncio.run(run(args))
    text = table(report)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 1 if report["errors"] else 0
