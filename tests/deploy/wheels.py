"""Build the project's wheel and sdist, and install them offline, as a user would.

The install tests must not depend on the network, nor on the repository being on the
path: they copy the checkout's files to a temporary folder, build there with the
standard frontend (``python -m build``), and install with pip from a local folder of
wheels (``--no-index --find-links``). The dependencies' wheels in that folder are
rebuilt from this environment's installed copies (``wheel_from_installed``): the same
files pip unpacked from PyPI, zipped back with their metadata.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from tests.helpers import PYTHON, ROOT

__all__ = ["build_dists", "checkout_copy", "checkout_files", "dependency_wheels",
           "requirements", "run", "subprocess_env", "wheel_from_installed", "wheelhouse"]

#: What a build or an install may take on a loaded 2-core machine.
TIMEOUT = 300


def subprocess_env() -> dict[str, str]:
    """An environment without the repository on the path: the installed copy must do."""
    import os

    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def checkout_files() -> list[str]:
    """The checkout's files: tracked, and new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]


def checkout_copy(dest: Path) -> Path:
    """Copy the checkout's files to ``dest``."""
    for name in checkout_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """Run ``argv``; fail with its output when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
                            env=subprocess_env())
    assert result.returncode == 0, f"{what} failed ({argv}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_dists(source: Path, outdir: Path) -> tuple[Path, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist.

    Without build isolation (offline, seconds): setuptools comes from this environment,
    which the test extra gives the version ``[build-system]`` asks for.
    """
    run([PYTHON, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(source)],
        "python -m build")
    (wheel,), (sdist,) = outdir.glob("*.whl"), outdir.glob("*.tar.gz")
    return wheel, sdist


def requirements(wheel: Path) -> list[str]:
    """The distribution names the wheel requires (extras' requirements left out)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return [re.split(r"[\s<>=!~;\[(]", line.split(":", 1)[1].strip(), maxsplit=1)[0]
            for line in lines if line.startswith("Requires-Dist:") and "extra ==" not in line]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_from_installed(name: str, outdir: Path) -> Path:
    """Zip an installed distribution back into the wheel it was installed from.

    Its files are those its RECORD lists inside site-packages (scripts are made again
    by the installer from entry_points.txt), less byte code and the installer's marks.
    """
    dist = metadata.distribution(name)
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    assert tags, f"{name} was not installed from a wheel"
    interpreters, abis, platforms = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    filename = (f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-"
                f"{'.'.join(interpreters)}-{'.'.join(abis)}-{'.'.join(platforms)}.whl")
    skip = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}
    files = [f for f in dist.files or [] if not str(f).startswith("..")
             and "__pycache__" not in f.parts and Path(str(f)).name not in skip]
    record_name = next(str(f) for f in dist.files or [] if Path(str(f)).name == "RECORD")
    records = []
    with zipfile.ZipFile(outdir / filename, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            data = Path(str(f.locate())).read_bytes()
            zf.writestr(str(f), data)
            records.append(_record_line(str(f), data))
        zf.writestr(record_name, "\n".join([*records, f"{record_name},,"]) + "\n")
    return outdir / filename


def dependency_wheels(outdir: Path) -> Path:
    """A folder with a wheel of each dependency and of the build backend, from this venv:
    what pip needs to build and install the project from its source, offline."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    outdir.mkdir(parents=True, exist_ok=True)
    for spec in [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]:
        wheel_from_installed(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0], outdir)
    return outdir


def wheelhouse(wheel: Path, outdir: Path) -> Path:
    """A folder with ``wheel`` and a wheel of each of its requirements, from this venv."""
    outdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, outdir / wheel.name)
    for name in requirements(wheel):
        wheel_from_installed(name, outdir)
    return outdir
