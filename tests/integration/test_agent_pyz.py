"""The single-file agent: ``tools/build_pyz.py`` builds it, and it ships a short pipeline.

The archive runs with ``python -S`` and a ``PYTHONPATH`` holding msgpack alone, so
neither the repository nor the project's installed copy can stand in for what the
archive lacks: the test proves it runs with Python and msgpack only.
"""

from __future__ import annotations

import asyncio
import re
import zipfile
from pathlib import Path

import msgpack
import pytest

from fluent_forward import __version__
from tests.conftest import StartRelay, relay_url
from tests.helpers import DEADLINE, PYTHON, ROOT, load_tool, read_json_lines, wait_until, within

build_pyz = load_tool("build_pyz")


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pyz.build(tmp_path_factory.mktemp("pyz") / "enclave-log-agent.pyz")


@pytest.fixture(scope="module")
def msgpack_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose only importable package is msgpack."""
    site = tmp_path_factory.mktemp("msgpack-only")
    (site / "msgpack").symlink_to(Path(msgpack.__file__).parent, target_is_directory=True)
    return site


async def run_isolated(pyz: Path, pythonpath: str, *args: str, cwd: Path
                       ) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-S", str(pyz), *args, cwd=cwd, env={"PYTHONPATH": pythonpath},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await within(proc.communicate(), "the pyz agent to exit")  # type: ignore[misc]
    assert proc.returncode is not None
    return proc.returncode, err


def test_archive_holds_the_agent_and_the_codec_but_not_the_relay(pyz: Path) -> None:
    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names
    assert "enclave_side/cli.py" in names and "fluent_forward/codec.py" in names
    assert not [n for n in names if n.startswith("parent_side")]
    assert not [n for n in names if n.endswith(".pyc")]
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")


@pytest.mark.asyncio
async def test_pyz_ships_a_short_pipeline_with_python_and_msgpack_only(
        pyz: Path, msgpack_only: Path, start_relay: StartRelay, sockdir: Path) -> None:
    out = sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sockdir}/relay.sock", f"file://{out}")
    child = "import sys\nfor i in range(50): print(f'line {i}')\nprint('oops', file=sys.stderr)"
    code, err = await run_isolated(
        pyz, str(msgpack_only), "--relay", relay_url(relay), "--tag", "pyz",
        "--", PYTHON, "-c", child, cwd=sockdir)
    assert code == 0, err.decode(errors="replace")

    def lines(stream: str) -> list[object]:
        return [r["record"]["log"] for r in read_json_lines(out)  # type: ignore[index]
                if r["tag"] == f"enclave.local.pyz.{stream}"]

    await wait_until(lambda: len(lines("stdout")) == 50 and len(lines("stderr")) == 1,
                     "the pyz agent's lines at the relay", DEADLINE)
    assert lines("stdout") == [f"line {i}" for i in range(50)]
    assert lines("stderr") == ["oops"]


@pytest.mark.asyncio
async def test_isolation_is_real_without_msgpack_it_fails(pyz: Path, sockdir: Path) -> None:
    code, err = await run_isolated(pyz, "", "--version", cwd=sockdir)
    assert code != 0
    assert b"No module named 'msgpack'" in err


@pytest.mark.asyncio
async def test_without_msgpack_it_says_in_one_line_what_to_install(pyz: Path,
                                                                   sockdir: Path) -> None:
    code, err = await run_isolated(pyz, "", "--tag", "x", "--", "true", cwd=sockdir)
    assert code == 2
    lines = err.decode().splitlines()
    assert len(lines) == 1 and b"Traceback" not in err, err
    assert "pip install msgpack" in lines[0]


@pytest.mark.asyncio
async def test_pyz_reports_the_projects_one_version(pyz: Path, msgpack_only: Path,
                                                    sockdir: Path) -> None:
    """The archive carries no package metadata: the version comes from the code."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-S", str(pyz), "--version", cwd=sockdir, env={"PYTHONPATH": str(msgpack_only)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await within(proc.communicate(), "the pyz agent's version")  # type: ignore[misc]
    assert proc.returncode == 0, err
    assert out.decode().strip() == f"enclave-log-agent {__version__}"


def test_readme_states_the_archives_size(pyz: Path) -> None:
    """README's figure comes from the archive ``make agent-pyz`` builds, within the
    tolerance the README states beside it."""
    text = (ROOT / "README.md").read_text()
    stated = int(re.search(r"\| `enclave-log-agent\.pyz` \| ([\d,]+) bytes \|", text)
                 [1].replace(",", ""))  # type: ignore[index]
    tolerance = int(re.search(r"no longer within (\d+)% of the figure above", text)
                    [1]) / 100  # type: ignore[index]
    size = pyz.stat().st_size
    assert abs(size - stated) <= tolerance * stated, (
        f"the pyz is {size:,} bytes, README says {stated:,}: "
        "update it from python tools/measure_agent.py")
