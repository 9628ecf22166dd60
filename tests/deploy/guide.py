"""The README's deploy guide as commands: read from its text, and run in a scratch root.

``guide_commands`` takes every shell command of the numbered steps of "Deploy on
Amazon Linux 2023" (code blocks, ``\\`` continuations joined, ``&&`` split, ``sudo``
and comments dropped). ``classify`` says, by its program, whether a command can run on
a plain Linux machine (``RUNS``) or why not (``CANNOT_RUN``): a program in neither
fails the test, so a new step is either run or explicitly set aside.

``Remap`` turns a runnable command into one confined to a scratch root: system paths
(/etc, /opt, /usr, /var, /run) move under the root, ``systemd-sysusers`` and
``systemd-tmpfiles`` get ``--root``, ``python3.11`` is this interpreter, pip installs
from a local folder of wheels, and the guide's ``/path/to/nitro-enclave-logs`` is a
copy of this checkout, where the commands run (the guide's relative paths are the
repository's).
"""

from __future__ import annotations

import glob
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import PYTHON

__all__ = ["CANNOT_RUN", "RUNS", "SYSTEM_DIRS", "Remap", "classify", "guide_commands", "program"]

#: Programs the guide runs that this machine can run too.
RUNS = {"python3.11", "pip", "install", "cp", "mkdir", "systemd-sysusers", "systemd-tmpfiles"}
#: Programs it runs that need what only the target instance has, and why.
CANNOT_RUN = {
    "dnf": "Amazon Linux's package manager (the packages' files are stood in for)",
    "usermod": "changes the machine's own users",
    "sed": "edits allocator.yaml, which comes with aws-nitro-enclaves-cli",
    "systemctl": "needs systemd as PID 1",
    "journalctl": "needs systemd as PID 1",
    "aws": "needs an AWS account",
    "docker": "needs Docker",
    "nitro-cli": "needs a Nitro instance",
}
#: Folders the skipped package installs would have made on the instance.
SYSTEM_DIRS = ("etc/systemd/system", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d", "etc/fluent-bit")
SYSTEM_ROOTS = ("/etc/", "/opt/", "/usr/", "/var/", "/run/")
SOURCE_PLACEHOLDER = "/path/to/nitro-enclave-logs"


def _section(readme: str) -> str:
    start = readme.index("**1. The parent instance.**")
    return readme[start:readme.index("\n### ", start)]


def guide_commands(readme: str) -> list[list[str]]:
    """The commands of the deploy guide's steps, each as an argv, ``sudo`` dropped."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", _section(readme), re.S | re.M):
        if lang or body.lstrip().startswith("["):
            continue  # a Dockerfile excerpt, or a file's content (the yum repository)
        for line in body.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv[:1] == ["sudo"]:
                    argv = argv[1:]
                if argv:
                    out.append(argv)
    return out


def program(argv: list[str]) -> str:
    name = argv[0].rsplit("/", 1)[-1]
    return "pip" if name.startswith("pip") else name


def classify(argv: list[str]) -> bool:
    """True if the command runs here; False if it is set aside; AssertionError if unknown."""
    name = program(argv)
    assert name in RUNS or name in CANNOT_RUN, (
        f"the deploy guide runs {name} ({shlex.join(argv)}): add it to RUNS in "
        "tests/deploy/guide.py and map it in Remap, or to CANNOT_RUN with the reason")
    return name in RUNS


@dataclass(frozen=True)
class Remap:
    """How the guide's commands map into a scratch root."""

    root: Path
    source: Path
    wheels: Path

    def path(self, arg: str) -> str:
        """A system path under the root; the source placeholder to the checkout copy."""
        if arg == SOURCE_PLACEHOLDER:
            return str(self.source)
        if arg.startswith(SYSTEM_ROOTS):
            return str(self.root) + arg
        return arg

    def argv(self, argv: list[str]) -> list[str]:
        args: list[str] = []
        for arg in argv[1:]:
            matches = sorted(glob.glob(arg, root_dir=self.source)) if "*" in arg else []
            args += matches or [self.path(arg)]
        name = program(argv)
        if name == "python3.11":
            return [PYTHON, *args]
        if name == "pip":
            return [self.path(argv[0]), *args, "--no-index", "--find-links", str(self.wheels)]
        if name in ("systemd-sysusers", "systemd-tmpfiles"):
            return [argv[0], f"--root={self.root}", *args]
        return [argv[0], *args]
