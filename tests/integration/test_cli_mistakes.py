"""Mistakes on the command line, as the real CLIs answer them in subprocesses.

An argument error is one line on stderr (the mistake, the nearest right spelling,
``try ... --help``) and exit status 2: no usage block, no traceback.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fluent_forward.endpoints import parse_endpoint
from parent_side.cli import NITRO_DEVICE, nitro_warning
from parent_side.config import RelayConfig
from tests.helpers import PYTHON, env_for_subprocess


def run(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", program, *args], capture_output=True, text=True,
                          env=env_for_subprocess(), stdin=subprocess.DEVNULL, timeout=60)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"more than the one line: {done.stderr}"
    assert "usage:" not in done.stderr and "Traceback" not in done.stderr
    assert "--help" in lines[0], "no hint where to look"
    return lines[0]


@pytest.mark.parametrize(("program", "args", "says"), [
    ("parent_side", ["--spol", "/var/spool"], "unknown option --spol (did you mean --spool?)"),
    ("parent_side", ["serve", "--max-conections", "3"],
     "unknown option --max-conections (did you mean --max-connections?)"),
    ("parent_side", ["status", "--jsno"], "unknown option --jsno (did you mean --json?)"),
    ("enclave_side", ["--tagg", "x"], "unknown option --tagg (did you mean --tag?)"),
])
def test_an_unknown_option_names_the_nearest_one(program: str, args: list[str],
                                                 says: str) -> None:
    assert says in one_line_error(run(program, *args))


def test_an_unknown_subcommand_names_the_nearest_one() -> None:
    line = one_line_error(run("parent_side", "stauts"))
    assert "unknown command 'stauts' (did you mean 'status'?)" in line


def test_the_apps_command_without_the_double_dash_is_pointed_at_it() -> None:
    line = one_line_error(run("enclave_side", "--tag", "web", "python3", "app.py"))
    assert "unexpected argument 'python3'" in line
    assert "after '--'" in line


def test_a_bad_value_is_one_line_naming_the_option() -> None:
    line = one_line_error(run("parent_side", "--spool-size", "lots"))
    assert "--spool-size" in line and "is not a size" in line


def test_an_unknown_key_in_the_relays_file_names_the_nearest_not_all_keys(
        tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('spool_sise = "2GiB"\n')
    line = one_line_error(run("parent_side", "--config", str(config)))
    assert "spool_sise: unknown key (did you mean 'spool_size'?)" in line
    assert "max_connections_per_enclave" not in line, "the 30 keys listed again"


def test_a_spool_that_is_a_file_is_called_a_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_text("not a directory\n")
    line = one_line_error(run("parent_side", "--spool", str(spool), "--output", "stdout"))
    assert f"--spool {spool} is a file, not a directory" in line
    assert "File exists" not in line


def test_nitro_warning_applies_to_a_vsock_listen_without_the_nitro_device(
        tmp_path: Path) -> None:
    vsock = RelayConfig()
    tcp = RelayConfig(listen=parse_endpoint("tcp://127.0.0.1:24224", listen=True))
    missing, present = tmp_path / "nitro_enclaves", tmp_path / "present"
    present.touch()
    said = nitro_warning(vsock, str(missing))
    assert said is not None and f"no {missing}" in said and "--listen tcp://" in said
    assert nitro_warning(vsock, str(present)) is None, "a Nitro parent: production"
    assert nitro_warning(tcp, str(missing)) is None, "tcp and unix listens are dev set-ups"


#: Runs the relay with every AF_VSOCK socket refused: this machine must never open one.
NO_VSOCK = """
import socket, sys
class _NoVsock(socket.socket):
    def __init__(self, family=-1, *args, **kwargs):
        if family == getattr(socket, "AF_VSOCK", object()):
            raise SystemExit("test guard: the relay tried to open an AF_VSOCK socket")
        super().__init__(family, *args, **kwargs)
socket.socket = _NoVsock
from parent_side.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.path.exists(NITRO_DEVICE), reason="this machine is a Nitro parent")
def test_a_relay_on_vsock_off_nitro_warns_in_one_line_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    # A spool under a file fails when the relay opens it, which it does before it
    # listens: the run ends there, after the warning, without a vsock socket.
    done = subprocess.run(
        [PYTHON, "-c", NO_VSOCK, "--listen", "vsock://any:24224", "--output", "stdout",
         "--spool", str(blocker / "spool"), "--admin-socket", "none", "--nitro-cli", "none"],
        capture_output=True, text=True, env=env_for_subprocess(), timeout=60)
    assert done.returncode == 1, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, done.stderr
    assert f"not a Nitro Enclaves parent (no {NITRO_DEVICE})" in warnings[0]
    assert "test guard" not in done.stderr
