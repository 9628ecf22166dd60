"""A pip-installed copy works, as the deploy guide and docker/parent/Dockerfile install it.

The checkout is copied to a temporary folder and built there with ``python -m build``
(the sdist, then the wheel from that sdist, so the sdist is proved to build too). The
wheel is installed, not editable, into a fresh venv by pip from a local folder of wheels
(tests/deploy/wheels.py), and its two commands run from outside the repository with
nothing of it on the path: ``--version``, and an agent -> relay -> stdout pipeline over
a Unix socket. Every test here fails on the packaging that listed its packages by hand
and missed ``enclave_side.sources``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluent_forward import __version__
from tests.deploy.formats import parse_dockerfile, stages
from tests.deploy.test_containers import copies
from tests.deploy.wheels import (
    build_dists,
    checkout_copy,
    dependency_wheels,
    run,
    subprocess_env,
    wheelhouse,
)
from tests.helpers import DEADLINE, PYTHON, ROOT, short_tmpdir, stop_process, wait_until_sync

pytestmark = pytest.mark.slow



def tree_packages() -> tuple[str, ...]:
    """Every top-level folder with an ``__init__.py`` that pyproject.toml does not exclude,
    whether or not anyone remembered to tell the packaging about it."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        excluded = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["exclude"]
    return tuple(sorted(p.parent.name for p in ROOT.glob("*/__init__.py")
                        if p.parent.name not in excluded))


PACKAGES = tree_packages()
#: Folders the deploy guide installs from, which the sdist must carry whole.
DEPLOY_FOLDERS = ("fluentbit", "systemd", "docker", "k8s", "examples", "tools")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkout_copy(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def dists(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_dists(source, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venv(dists: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed by pip, offline, not editable."""
    tmp = tmp_path_factory.mktemp("install")
    house = wheelhouse(dists[0], tmp / "wheels")
    venv = tmp / "venv"
    run([PYTHON, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
    # This environment's pip, installing into the new venv (as its own pip would).
    run([PYTHON, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-index", "--find-links", str(house), "nitro-enclave-logs"], "pip install")
    return venv


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_the_wheel_holds_every_module_of_the_tree(dists: tuple[Path, Path]) -> None:
    names = wheel_names(dists[0])
    tree = {str(p.relative_to(ROOT)) for package in PACKAGES
            for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert "enclave_side/sources/tail.py" in tree
    assert sorted(tree - names) == [], "modules missing from the wheel"
    extra = {n for n in names if not n.startswith(PACKAGES) and ".dist-info/" not in n}
    assert not extra, f"the wheel carries more than the packages: {sorted(extra)}"


def test_the_sdist_carries_what_the_deploy_guide_installs(
        source: Path, dists: tuple[Path, Path]) -> None:
    with tarfile.open(dists[1]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    wanted = {str(p.relative_to(source)) for folder in DEPLOY_FOLDERS
              for p in (source / folder).rglob("*") if p.is_file()}
    wanted |= {"README.md", "SECURITY.md", "CONTRIBUTING.md", "pyproject.toml", "Makefile"}
    assert "systemd/enclave-log-relay.service" in wanted
    assert sorted(wanted - names) == [], "files missing from the sdist"
    assert not [n for n in names if n.startswith(("tests/", "bench/"))], (
        "the test and bench trees need the development checkout")


def test_the_version_has_one_source(dists: tuple[Path, Path]) -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "fluent_forward.__version__"}
    assert dists[0].name.startswith(f"nitro_enclave_logs-{__version__}-")
    assert f"Version: {__version__}\n" in zipfile.ZipFile(dists[0]).read(
        f"nitro_enclave_logs-{__version__}.dist-info/METADATA").decode()


def test_pip_builds_the_c_entry_check_where_there_is_a_compiler(
        dists: tuple[Path, Path], venv: Path, tmp_path: Path) -> None:
    """The sdist carries the C source; a build with a C compiler puts the extension in the
    wheel and the installed relay uses it; without one, the relay runs the Python check
    (test_validate_fast.py holds both to the same verdicts)."""
    with tarfile.open(dists[1]) as tf:
        assert any(n.endswith("/fluent_forward/_entrycheck.c") for n in tf.getnames())
    built = [n for n in wheel_names(dists[0])
             if n.startswith("fluent_forward/_entrycheck.") and n.endswith(".so")]
    used = run([str(venv / "bin" / "python"), "-c",
                "from fluent_forward.fastpath import entry_check; print(entry_check())"],
               "entry_check", cwd=tmp_path).strip()
    if shutil.which("cc") is None:
        assert (built, used) == ([], "python")
    else:
        assert len(built) == 1 and used == "c"


def test_without_a_compiler_the_wheel_builds_and_the_relay_runs_the_python_check(
        dists: tuple[Path, Path], tmp_path: Path) -> None:
    """The extension is optional: the sdist built where the compiler fails (CC=false)
    gives a wheel without it, which installs, and whose relay runs the Python check."""
    out = tmp_path / "dist"
    result = subprocess.run(
        [PYTHON, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(out),
         str(dists[1])], capture_output=True, text=True, timeout=300,
        env={**subprocess_env(), "CC": "false"})
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    assert not [n for n in wheel_names(wheel) if n.endswith(".so")]
    house = wheelhouse(wheel, tmp_path / "wheels")
    venv = tmp_path / "venv"
    run([PYTHON, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
    run([PYTHON, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-index", "--find-links", str(house), "nitro-enclave-logs"], "pip install")
    used = run([str(venv / "bin" / "python"), "-c",
                "from fluent_forward.fastpath import entry_check; print(entry_check())"],
               "entry_check", cwd=tmp_path).strip()
    assert used == "python"
    version = run([str(venv / "bin" / "enclave-log-relay"), "--version"], "relay", cwd=tmp_path)
    assert version.strip() == f"enclave-log-relay {__version__}"


@pytest.mark.parametrize("command", ["enclave-log-agent", "enclave-log-relay"])
def test_installed_commands_print_the_version(venv: Path, tmp_path: Path, command: str) -> None:
    out = run([str(venv / "bin" / command), "--version"], f"{command} --version", cwd=tmp_path)
    assert out.strip() == f"{command} {__version__}"


#: Imports every module of the installed packages; prints each one's file, or the
#: package it lacks.
IMPORT_ALL = """\
import importlib, json, pkgutil, sys
names, out = sys.argv[1:], {}
for p in list(names):
    names += [i.name for i in pkgutil.walk_packages(importlib.import_module(p).__path__, p + '.')
              if not i.name.endswith('__main__')]
for n in names:
    try:
        out[n] = importlib.import_module(n).__file__
    except ModuleNotFoundError as exc:
        out[n] = {"missing": exc.name}
print(json.dumps(out))
"""


def optional_distributions(wheel: Path) -> set[str]:
    """What the wheel's extras for users (``[sign]``, not ``[test]``) add; a plain install
    goes without them."""
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(f"nitro_enclave_logs-{__version__}.dist-info/METADATA").decode()
    return {line.split(":", 1)[1].split(";")[0].strip().split(">")[0].split("=")[0].strip()
            for line in meta.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" in line
            and "extra == \"test\"" not in line}


def test_every_module_imports_from_the_venv_not_the_repository(
        dists: tuple[Path, Path], venv: Path, tmp_path: Path) -> None:
    """Every module imports from the venv; one may lack only what an extra adds."""
    found = json.loads(run([str(venv / "bin" / "python"), "-c", IMPORT_ALL, *PACKAGES],
                           "imports", cwd=tmp_path))
    assert "enclave_side.sources.tail" in found
    missing = {n: f["missing"] for n, f in found.items() if isinstance(f, dict)}
    extras = optional_distributions(dists[0])
    assert {m.split(".")[0] for m in missing.values()} <= extras, (
        f"modules that cannot import from a plain install: {missing}")
    files = {n: f for n, f in found.items() if isinstance(f, str)}
    outside = {n: f for n, f in files.items() if not f.startswith(str(venv))}
    assert not outside, f"imported from outside the venv: {outside}"
    assert {n.split(".")[0] for n in files} == set(PACKAGES)


@pytest.fixture
def folder() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


def test_installed_agent_ships_through_installed_relay_to_stdout(venv: Path, folder: Path
                                                                 ) -> None:
    url, out = f"unix://{folder}/relay.sock", folder / "relay.out"
    with out.open("wb") as stdout, (folder / "relay.err").open("wb") as stderr:
        relay = subprocess.Popen(
            [str(venv / "bin" / "enclave-log-relay"), "serve", "--listen", url,
             "--output", "stdout", "--spool", str(folder / "spool"),
             "--admin-socket", str(folder / "admin.sock"), "--nitro-cli", "none"],
            cwd=folder, stdout=stdout, stderr=stderr, env=subprocess_env())
    try:
        wait_until_sync(lambda: (folder / "relay.sock").exists() or relay.poll() is not None,
                        "the installed relay to listen")
        assert relay.poll() is None, (folder / "relay.err").read_text()
        child = "import sys\nfor i in range(20): print('line', i)\nprint('oops', file=sys.stderr)"
        agent = subprocess.run(
            [str(venv / "bin" / "enclave-log-agent"), "--relay", url, "--tag", "inst",
             "--", str(venv / "bin" / "python"), "-c", child],
            cwd=folder, capture_output=True, timeout=DEADLINE, env=subprocess_env())
        assert agent.returncode == 0, agent.stderr.decode(errors="replace")

        def records(tag: str) -> list[object]:
            lines = out.read_text().splitlines()
            return [json.loads(line)["record"]["log"] for line in lines
                    if line.endswith("}") and json.loads(line)["tag"] == tag]

        wait_until_sync(lambda: len(records("enclave.local.inst.stdout")) == 20
                        and len(records("enclave.local.inst.stderr")) == 1,
                        "the records on the installed relay's stdout")
        assert records("enclave.local.inst.stdout") == [f"line {i}" for i in range(20)]
        assert records("enclave.local.inst.stderr") == ["oops"]
    finally:
        stop_process(relay)
    assert relay.returncode == 0, (folder / "relay.err").read_text()


def test_the_parent_images_copy_and_pip_install_give_a_working_relay(
        source: Path, tmp_path: Path) -> None:
    """docker/parent/Dockerfile's COPY lines and its ``pip install``, done in a folder:
    what the image copies is enough to build and install the relay (offline here)."""
    steps = stages(parse_dockerfile((source / "docker/parent/Dockerfile").read_text()))[-1]
    image, venv = tmp_path / "image", tmp_path / "venv"
    run([PYTHON, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
    for dest, name in copies(steps).items():
        target = image / dest.lstrip("/")
        if (source / name).is_dir():
            shutil.copytree(source / name, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target)
    # The pip install in the image's RUN chains (apt-get installs a compiler around it).
    pips = [part.split() for step in steps if step.keyword == "RUN"
            for part in map(str.strip, step.argument.split("&&"))
            if part.startswith("pip install")]
    assert len(pips) == 1, "the image installs the project with one pip install"
    args = [str(image) + a if a.startswith("/") else a for a in pips[0][2:]]
    run([PYTHON, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         *args, "--no-index", "--find-links", str(dependency_wheels(tmp_path / "w"))],
        f"the image's {' '.join(pips[0])}")
    out = run([str(venv / "bin" / "enclave-log-relay"), "--version"], "the image's relay",
              cwd=tmp_path)
    assert out.strip() == f"enclave-log-relay {__version__}"
    # What the image installs before its pip install: a C compiler, for the entry check.
    assert any("apt-get install" in s.argument and " gcc " in s.argument for s in steps
               if s.keyword == "RUN")


def test_every_command_the_wheel_declares_starts_from_the_venv(
        dists: tuple[Path, Path], venv: Path, tmp_path: Path) -> None:
    """Each console script (enclave-log-verify too, and any added later) imports all it
    needs from the installed copy: ``--help`` answers."""
    with zipfile.ZipFile(dists[0]) as zf:
        entry_points = zf.read(f"nitro_enclave_logs-{__version__}.dist-info/entry_points.txt")
    section = entry_points.decode().split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    commands = [line.split("=", 1)[0].strip() for line in section.splitlines() if "=" in line]
    assert {"enclave-log-agent", "enclave-log-relay"} <= set(commands)
    for command in commands:
        out = run([str(venv / "bin" / command), "--help"], f"{command} --help", cwd=tmp_path)
        assert out.startswith("usage:"), command
