"""Shared test helpers: one time unit, deadline waits, short socket paths, processes."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType

import msgpack
import pytest

#: Every timeout in the tests is a multiple of this.
MS = 0.001
#: How long a condition may take to become true before a test fails.
DEADLINE = 15_000 * MS

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


async def wait_until(predicate: Callable[[], bool], what: str,
                     timeout: float = DEADLINE) -> None:
    """Wait for ``predicate()`` to become true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(5 * MS)


def wait_until_sync(predicate: Callable[[], bool], what: str,
                    timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(5 * MS)


async def within(aw: Awaitable[object], what: str, timeout: float = DEADLINE) -> object:
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}") from None


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A short directory for Unix sockets (AF_UNIX paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nel-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def env_for_subprocess(**extra: str) -> dict[str, str]:
    """This environment, with the project importable and ``extra`` set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes] | asyncio.subprocess.Process,
                 timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it lingers; for fixtures' cleanup."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def terminate(proc: asyncio.subprocess.Process, timeout: float = 15.0) -> None:
    """SIGTERM an asyncio child and wait for it; SIGKILL it if it lingers past ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (tools/ is a directory of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_json_lines(path: Path, *, relay_records: bool = False) -> list[dict[str, object]]:
    """Records a JSON-lines output wrote: the enclaves' (and, if asked, the relay's own)."""
    import json

    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.endswith("}"):
            record = json.loads(line)
            if relay_records or not str(record.get("tag", "")).startswith("relay."):
                out.append(record)
    return out


def unpack_all(data: bytes) -> list[object]:
    up = msgpack.Unpacker(raw=False)
    up.feed(data)
    return list(up)


def c_entry_check() -> Callable[[bytes, int], int | None]:
    """The C entry check (``fastpath.c_count``); the test skips without it (a build with
    no C compiler), and fails instead under CI=true, where it must have been built."""
    from fluent_forward import fastpath

    if fastpath.c_count is None:
        why = "the package was built without its C extension (no C compiler at install)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; under CI=true this test must run")
        pytest.skip(why)
    return fastpath.c_count
