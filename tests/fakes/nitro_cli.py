"""A fake ``nitro-cli`` on disk: ``describe-enclaves`` prints JSON the test controls."""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["ENCLAVES", "FakeNitroCli"]

ENCLAVES = [
    {"EnclaveName": "payments", "EnclaveID": "i-0abc-enc0001", "ProcessID": 4242,
     "EnclaveCID": 16, "NumberOfCPUs": 2, "CPUIDs": [1, 3], "MemoryMiB": 1024,
     "State": "RUNNING", "Flags": "NONE",
     "Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "ab" * 48,
                      "PCR1": "cd" * 48, "PCR2": "ef" * 48}},
    {"EnclaveName": "debug box", "EnclaveID": "i-0abc-enc0002", "ProcessID": 4243,
     "EnclaveCID": 17, "NumberOfCPUs": 2, "CPUIDs": [5, 7], "MemoryMiB": 512,
     "State": "RUNNING", "Flags": "DEBUG_MODE"},
    {"EnclaveID": "i-0abc-enc0003", "ProcessID": 4244, "EnclaveCID": 18, "NumberOfCPUs": 2,
     "CPUIDs": [9, 11], "MemoryMiB": 512, "State": "RUNNING", "Flags": "NONE"},
]


SCRIPT = """\
import json, pathlib, sys, time
d = pathlib.Path(__file__).parent
args = sys.argv[1:]
if args == ["describe-enclaves"]:
    with open(d / "runs", "a") as f:
        f.write("x\\n")
    sys.stdout.write((d / "enclaves.json").read_text())
elif args[:2] == ["console", "--enclave-id"] and len(args) == 3:
    # Follow console-<id>.txt as the enclave writes it, from now on (a console shows
    # what comes after it attaches, nothing before); end when end-<id> appears.
    eid = args[2]
    text, end = d / f"console-{eid}.txt", d / f"end-{eid}"
    pos = text.stat().st_size if text.exists() else 0
    with open(d / "attaches", "a") as f:
        f.write(eid + "\\n")
    while True:
        ending = end.exists()
        data = text.read_bytes() if text.exists() else b""
        if len(data) > pos:
            sys.stdout.buffer.write(data[pos:])
            sys.stdout.buffer.flush()
            pos = len(data)
        if ending:
            end.unlink()
            sys.exit(0)
        time.sleep(0.02)
else:
    sys.stderr.write(f"nitro-cli: unknown command {args}\\n")
    sys.exit(2)
"""


class FakeNitroCli:
    """An executable ``nitro-cli``: ``describe-enclaves`` prints ``enclaves.json``;
    ``console --enclave-id ID`` follows ``console-ID.txt`` until ``end-ID`` appears."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "nitro-cli"
        self.path.write_text(f"#!{sys.executable}\n" + SCRIPT)
        self.path.chmod(0o755)
        self.set(ENCLAVES)

    def set(self, enclaves: list[dict[str, object]]) -> None:
        tmp = self.dir / "enclaves.json.tmp"
        tmp.write_text(json.dumps(enclaves))
        tmp.replace(self.dir / "enclaves.json")  # never half-written for a reader

    def console(self, enclave_id: str, *lines: str) -> None:
        """The enclave writes lines to its console."""
        with (self.dir / f"console-{enclave_id}.txt").open("a") as f:
            f.writelines(line + "\n" for line in lines)

    def end_console(self, enclave_id: str) -> None:
        """The console stream ends (the enclave may still run)."""
        (self.dir / f"end-{enclave_id}").touch()

    @property
    def runs(self) -> int:
        try:
            return len((self.dir / "runs").read_text().split())
        except FileNotFoundError:
            return 0

    def attaches(self, enclave_id: str) -> int:
        try:
            return (self.dir / "attaches").read_text().split().count(enclave_id)
        except FileNotFoundError:
            return 0
