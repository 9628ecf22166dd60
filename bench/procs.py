"""Processes under measurement: start, sample CPU and memory from /proc, stop.

CPU is user + system time from ``/proc/PID/stat`` (the process's own threads, never its
children), read at the instants a scenario chooses (the first and the last frame at the
sink), so start-up and shutdown are left out of the per-line figures. Memory is sampled
every ``SAMPLE_INTERVAL`` (VmRSS, and VmHWM, the kernel's own peak).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CLK_TCK", "Proc", "bench_env", "cpu_mask", "cpu_seconds", "cpu_times",
           "io_calls", "run_queue_wait", "status_kib"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.05
ROOT = Path(__file__).resolve().parent.parent


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` (a zombie's too, until it is reaped)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def io_calls(pid: int) -> tuple[int, int]:
    """(read-like, write-like) syscalls ``pid`` made so far (``/proc/PID/io``)."""
    counts = {}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                name, _, value = line.partition(b":")
                counts[name] = int(value)
    return counts.get(b"syscr", 0), counts.get(b"syscw", 0)


def run_queue_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` spent runnable but waiting for a CPU (the kernel's
    schedstat): how much other work on the machine held it back; 0 once it is gone."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else ():
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
    return total / 1e9


def cpu_mask(pid: int) -> int:
    """The CPUs any thread of ``pid`` may run on, as a bit mask (bit i: CPU i)."""
    mask = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            mask |= sum(1 << cpu for cpu in os.sched_getaffinity(int(tid)))
    return mask


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    return sum(cpu_times(pid))


def status_kib(pid: int, name: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM); 0 if it is not there."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(name.encode() + b":"):
                return int(line.split()[1])
    return 0


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every measured process: this checkout on the path, and no
    PYTHONUNBUFFERED (it would make the app write one line per syscall)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONUNBUFFERED", "PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class Proc:
    """A measured subprocess. ``peak_rss_kib`` is the highest VmHWM seen."""

    def __init__(self, name: str, argv: Sequence[str], *, log: Path,
                 env: dict[str, str] | None = None, cpus: set[int] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                      stdout=self._log_file, stderr=subprocess.STDOUT,
                                      env=env or bench_env())
        self.pid = self.popen.pid
        if cpus is not None:
            # Right after exec, long before the interpreter has imported anything or
            # started a thread: every thread it makes inherits the set.
            os.sched_setaffinity(self.pid, cpus)
        self.started = time.monotonic()
        self.peak_rss_kib = 0
        self.last_rss_kib = 0
        self.exit_cpu: tuple[float, float] | None = None
        self._spy: subprocess.Popen[bytes] | None = None
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    @staticmethod
    def python(name: str, module_args: Sequence[str], *, log: Path,
               env: dict[str, str] | None = None, cpus: set[int] | None = None) -> Proc:
        return Proc(name, [sys.executable, *module_args], log=log, env=env, cpus=cpus)

    def profile(self, out: Path) -> None:
        """Sample this process with py-spy (if installed) into ``out``, folded stacks."""
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy")
        if spy is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy (into the venv)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self._spy = subprocess.Popen([spy, "record", "--pid", str(self.pid), "--rate", "250",
                                      "--nonblocking", "--format", "raw", "-o", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cpu(self) -> float:
        """User + system CPU seconds so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far."""
        if self.exit_cpu is not None:
            return self.exit_cpu
        return cpu_times(self.pid)

    def sample(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.last_rss_kib = status_kib(self.pid, "VmRSS") or self.last_rss_kib
            self.peak_rss_kib = max(self.peak_rss_kib, status_kib(self.pid, "VmHWM"))

    def exited(self) -> bool:
        """True once the process has exited (its CPU is then read before it is reaped)."""
        if self.exit_cpu is not None:
            return True
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return False
        self.exit_cpu = cpu_times(self.pid)
        self.popen.wait()
        return True

    async def _sample(self) -> None:
        while not self.exited():
            self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def wait(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            while not self.exited():  # noqa: ASYNC110 - polled: waitid(WNOWAIT) has no event
                await asyncio.sleep(0.01)
        return self.popen.returncode

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait (SIGKILL past ``timeout``); the exit code."""
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                await self.wait(timeout)
            except TimeoutError:
                self.popen.kill()
                await self.wait(5.0)
        if self._spy is not None:
            self._spy.wait(30)
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        self._log_file.close()
        return self.popen.returncode

    def tail_log(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
