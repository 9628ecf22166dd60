"""Build ``enclave-log-agent.pyz``: the agent as one file for minimal enclave images.

    python tools/build_pyz.py [--output dist/enclave-log-agent.pyz]

The archive (``python -m zipapp``) holds ``enclave_side``, ``fluent_forward`` and
``nel_config`` only; ``parent_side`` stays out. It runs with any Python 3.11+ that has
``msgpack`` installed (``pip install msgpack``, or a distribution's python3-msgpack); a
Python without it is told so in one line (exit 2), not with a traceback:

    python3 enclave-log-agent.pyz --tag myapp -- python3 /app/app.py

``--sign`` also needs ``cryptography`` and ``cbor2`` importable (``pip install
cryptography cbor2``); without them the agent says so in one line and exits 2.

Byte-compiled files are left out on purpose: they are tied to one Python version, and
the source is what the enclave's Python compiles at start.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("enclave_side", "fluent_forward", "nel_config")
DEFAULT_OUTPUT = ROOT / "dist" / "enclave-log-agent.pyz"
#: Checks for msgpack before anything imports it: the one dependency the archive
#: cannot carry (it has compiled parts).
MAIN = """import sys

try:
    import msgpack  # noqa: F401
except ImportError as exc:
    sys.stderr.write(f"enclave-log-agent: {exc}, which the agent needs: pip install msgpack "
                     "(or a distribution's python3-msgpack)\\n")
    raise SystemExit(2) from None

from enclave_side.cli import main

raise SystemExit(main())
"""
INTERPRETER = "/usr/bin/env python3"


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the archive to ``output`` and return its path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nel-pyz-") as tmp:
        staging = Path(tmp)
        for package in PACKAGES:
            # Not the relay's C entry check, its source or its build (a zip cannot load
            # an extension; the agent's fast path is Python either way).
            shutil.copytree(ROOT / package, staging / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so",
                                                          "*.c", "*.pyi"))
        (staging / "__main__.py").write_text(MAIN, encoding="utf-8")
        zipapp.create_archive(staging, output, interpreter=INTERPRETER, compressed=True)
    output.chmod(0o755)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to write it (default: {DEFAULT_OUTPUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    path = build(args.output)
    print(f"{path}: {path.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
