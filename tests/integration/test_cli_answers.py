"""``--version`` and ``--help`` of both CLIs, as subprocesses: an answer, exit status 0.

Both are read before a subcommand (the relay's default one, ``serve``, is not taken
for them), so neither may reach the subcommands' option parsing.
"""

from __future__ import annotations

import subprocess

import pytest

from fluent_forward import __version__
from tests.helpers import PYTHON, env_for_subprocess


@pytest.mark.parametrize(("program", "name"), [("parent_side", "enclave-log-relay"),
                                               ("enclave_side", "enclave-log-agent")])
@pytest.mark.parametrize("flag", ["--version", "--help", "-h"])
def test_version_and_help_answer_and_exit_0(program: str, name: str, flag: str) -> None:
    done = subprocess.run([PYTHON, "-m", program, flag], capture_output=True, text=True,
                          env=env_for_subprocess(), stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    if flag == "--version":
        assert done.stdout.strip() == f"{name} {__version__}"
    else:
        assert done.stdout.startswith("usage:")
