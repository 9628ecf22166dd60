"""Run the real agent as a subprocess, with a real child, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.helpers import DEADLINE, PYTHON, env_for_subprocess


@dataclass
class AgentRun:
    """A running agent; its stderr is collected as it comes (``stderr``)."""

    proc: asyncio.subprocess.Process
    stderr: bytearray = field(default_factory=bytearray)
    _reader: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._reader = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    async def wait(self, timeout: float = DEADLINE) -> int:
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
                assert self._reader is not None
                await self._reader
        except TimeoutError:
            self.kill()
            await self.proc.wait()
            raise AssertionError(f"agent did not exit within {timeout}s; stderr:\n"
                                 f"{self.stderr.decode(errors='replace')}") from None
        assert self.proc.returncode is not None
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


async def start_agent(relay: str, command: Sequence[str] = (), *options: str,
                      **env: str) -> AgentRun:
    """``python -m enclave_side --relay RELAY OPTIONS -- COMMAND``."""
    argv = [PYTHON, "-m", "enclave_side", "--relay", relay, "--log-level", "debug", *options]
    if command:
        argv += ["--", *command]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env_for_subprocess(**env))
    return AgentRun(proc)


def python_child(code: str) -> list[str]:
    """A child process running ``code`` with this Python."""
    return [PYTHON, "-c", code]


async def cleanup(run: AgentRun) -> None:
    """Kill the agent if it still runs and reap it (for ``finally`` blocks)."""
    if run.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            run.proc.send_signal(signal.SIGKILL)
        await run.proc.wait()
    if run._reader is not None:
        await run._reader
