"""Measure the single-file agent: archive size, and its memory idle and under load.

    python tools/measure_agent.py [--seconds 10] [--rate 5000]

Builds the pyz, starts a relay (its stdout output, discarded) on a Unix socket, then runs
the agent twice: with an app that prints nothing, and with one printing ``--rate``
lines of about 100 bytes a second. It samples the agent's own process (not the app)
from /proc every 50 ms and prints its RSS (VmRSS at the end of the idle run, VmHWM,
the peak, under load). The figures in README.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_pyz  # noqa: E402

ROOT = build_pyz.ROOT
IDLE_APP = "import time\ntime.sleep({seconds})\n"
LOAD_APP = """\
import sys, time
line = "x" * 90
end = time.monotonic() + {seconds}
i = 0
while time.monotonic() < end:
    t = time.monotonic()
    for _ in range({rate} // 100):
        print(f"{{i:09d}} {{line}}")
        i += 1
    sys.stdout.flush()
    time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
"""


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_agent(pyz: Path, relay: str, app: str) -> tuple[int, int]:
    """Run the agent over ``app``; return (last VmRSS, VmHWM) in KiB."""
    proc = subprocess.Popen([sys.executable, str(pyz), "--relay", relay, "--tag", "m",
                             "--", sys.executable, "-c", app],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss = hwm = 0
    try:
        while proc.poll() is None:
            try:
                rss = status_kib(proc.pid, "VmRSS")
                hwm = status_kib(proc.pid, "VmHWM")
            except (FileNotFoundError, KeyError, ProcessLookupError):
                break  # exited between poll() and the read
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return rss, hwm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=5000, help="lines per second under load")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nel-measure-", dir="/tmp") as tmp:
        pyz = build_pyz.build(Path(tmp) / "enclave-log-agent.pyz")
        sock = f"unix://{tmp}/relay.sock"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        relay = subprocess.Popen([sys.executable, "-m", "parent_side", "--listen", sock,
                                  "--output", "stdout", "--log-level", "warning",
                                  "--spool", f"{tmp}/spool", "--admin-socket", "none"],
                                 stdout=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 15
            while not Path(sock.removeprefix("unix://")).exists():
                if time.monotonic() > deadline or relay.poll() is not None:
                    raise SystemExit("the relay did not start")
                time.sleep(0.05)
            idle_rss, idle_hwm = run_agent(pyz, sock, IDLE_APP.format(seconds=args.seconds))
            _, load_hwm = run_agent(pyz, sock, LOAD_APP.format(seconds=args.seconds,
                                                               rate=args.rate))
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
              f"Linux {platform.release()}, Python {platform.python_version()}, "
              f"msgpack C extension: {not _msgpack_is_pure()}")
        print(f"pyz size: {pyz.stat().st_size} bytes")
        print(f"agent idle: VmRSS {idle_rss / 1024:.1f} MiB (peak {idle_hwm / 1024:.1f} MiB)")
        print(f"agent at {args.rate} lines/s for {args.seconds:g} s: "
              f"peak VmHWM {load_hwm / 1024:.1f} MiB")
    return 0


def _msgpack_is_pure() -> bool:
    import msgpack

    return msgpack.Packer.__module__ == "msgpack.fallback"


if __name__ == "__main__":
    raise SystemExit(main())
