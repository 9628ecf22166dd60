"""A fake ``nitro-cli`` on disk: ``describe-enclaves`` prints JSON the test controls."""

from __future__ import annotations

import json
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


class FakeNitroCli:
    """An executable ``nitro-cli`` printing ``enclaves.json``; counts its runs."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "nitro-cli"
        self.path.write_text(
            "#!/bin/sh\n"
            '[ "$1" = describe-enclaves ] || { echo "unknown command $1" >&2; exit 2; }\n'
            f'echo x >> "{directory}/runs"\n'
            f'cat "{directory}/enclaves.json"\n')
        self.path.chmod(0o755)
        self.set(ENCLAVES)

    def set(self, enclaves: list[dict[str, object]]) -> None:
        (self.dir / "enclaves.json").write_text(json.dumps(enclaves))

    @property
    def runs(self) -> int:
        try:
            return len((self.dir / "runs").read_text().split())
        except FileNotFoundError:
            return 0
