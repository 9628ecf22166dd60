"""The real Fluent Bit as a subprocess, for the tests that need the real peer.

The binary is ``$FLUENT_BIT``, else the project's test copy
(``../shared/tools/fluent-bit-4.2.8/fluent-bit`` from the repository's root), else
``fluent-bit`` on PATH. Without one, the tests skip, saying why; under CI=true that is a
failure instead.

``RealFluentBit`` writes what its forward input takes through the ``file`` output
(``TAG: [SEC.NSEC, {json}]`` lines, one file per tag) into ``out/``, and can be killed
(SIGKILL) and started again on the same storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import ROOT, terminate, wait_until

__all__ = ["RealFluentBit", "fluent_bit_binary"]

SHARED_COPY = ROOT.parent / "shared" / "tools" / "fluent-bit-4.2.8" / "fluent-bit"


def fluent_bit_binary() -> str:
    """The Fluent Bit to run, or skip (fail under CI=true) saying why."""
    named = os.environ.get("FLUENT_BIT")
    if named:  # named by the user: that one, not another found elsewhere
        if os.access(named, os.X_OK):
            return named
        why = f"FLUENT_BIT={named} is not an executable file"
    else:
        for candidate in (str(SHARED_COPY), shutil.which("fluent-bit")):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
        why = ("no Fluent Bit: set FLUENT_BIT, or put fluent-bit on PATH (the project's "
               "test copy is ../shared/tools/fluent-bit-4.2.8/fluent-bit)")
    if os.environ.get("CI") == "true":
        pytest.fail(why + "; under CI=true this test must run")
    pytest.skip(why)


CONFIG = """\
[SERVICE]
    Flush                     {flush}
    Log_Level                 info
    storage.path              {storage}
    storage.sync              full
    storage.checksum          on
    storage.backlog.mem_limit 64M

[INPUT]
    Name              forward
    unix_path         {socket}
    storage.type      filesystem
{input_extra}
[OUTPUT]
    Name   file
    Match  *
    Path   {out}
"""


class RealFluentBit:
    """A Fluent Bit with a forward input on a Unix socket and filesystem storage."""

    def __init__(self, workdir: Path, *, input_extra: str = "", flush: float = 0.2) -> None:
        self.binary = fluent_bit_binary()
        self.workdir = workdir
        self.socket = workdir / "fb.sock"
        self.out = workdir / "out"
        self.storage = workdir / "storage"
        self.log_path = workdir / "fluent-bit.log"
        self.config = workdir / "fluent-bit.conf"
        self.out.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        self.config.write_text(CONFIG.format(
            flush=flush, storage=self.storage, socket=self.socket, out=self.out,
            input_extra="".join(f"    {line}\n" for line in input_extra.splitlines())))
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def start(self) -> None:
        log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(self.config), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log)
        finally:
            os.close(log)
        proc = self.proc
        await wait_until(lambda: self.socket.exists() or proc.returncode is not None,
                         "Fluent Bit to listen")
        assert proc.returncode is None, self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        """SIGKILL: no flush, no shutdown."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        await terminate(self.proc)

    def logs(self, tag_suffix: str = "") -> list[str]:
        """The ``log`` field of every record written out, in file order."""
        lines: list[str] = []
        for path in sorted(self.out.iterdir()):
            if not path.name.endswith(tag_suffix):
                continue
            for line in path.read_text(errors="replace").splitlines():
                _, _, rest = line.partition(": ")
                with contextlib.suppress(ValueError, IndexError, TypeError):
                    record = json.loads(rest)[1]
                    if "log" in record:  # not the relay's own records
                        lines.append(str(record["log"]))
        return lines
