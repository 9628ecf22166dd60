"""The relay's systemd unit, sysusers and tmpfiles entries.

``systemd-analyze verify`` (Debian's systemd package) checks the unit in a scratch
root that holds systemd's own units and a stand-in for the relay's executable, and
any warning it prints fails the test (it exits 0 on unknown keys and bad values).
``systemd-sysusers`` and ``systemd-tmpfiles`` run against the same scratch root.
Without those tools the tests skip, except under CI=true, where .ci/run installs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluent_forward.endpoints import parse_endpoint
from parent_side.cli import parse_args
from parent_side.config import DEFAULT_LISTEN, DEFAULT_OUTPUT
from tests.deploy.formats import parse_unit
from tests.deploy.options import PENDING_RELAY_OPTIONS, RELAY_ENV, env_assignments, relay_options
from tests.helpers import ROOT

UNIT = ROOT / "systemd" / "enclave-log-relay.service"
SYSUSERS = ROOT / "systemd" / "enclave-log-relay.sysusers"
TMPFILES = ROOT / "systemd" / "enclave-log-relay.tmpfiles"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = (f"{tool} is missing: apt-get install --no-install-recommends systemd "
                   "(.ci/run does)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def service() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in parse_unit(UNIT.read_text())["Service"]:
        out.setdefault(key, []).append(value)
    return out


def exec_start() -> list[str]:
    return service()["ExecStart"][0].split()


@pytest.fixture
def scratch_root(tmp_path: Path) -> Iterator[Path]:
    """A root with systemd's units, the unit installed, and a stub relay executable."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    binary = root / exec_start()[0].lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    yield root


def test_systemd_analyze_verify_passes_without_warnings(scratch_root: Path) -> None:
    tool = need("systemd-analyze")
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} missing: is Debian's systemd package installed?")
    result = subprocess.run(
        [tool, "verify", f"--root={scratch_root}", f"/etc/systemd/system/{UNIT.name}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze verify warned:\n{result.stderr}"


def test_verify_reports_what_this_test_relies_on(scratch_root: Path) -> None:
    """The check above can fail: a bad value in the unit produces a warning."""
    tool = need("systemd-analyze")
    unit = scratch_root / "etc/systemd/system" / UNIT.name
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    result = subprocess.run(
        [tool, "verify", f"--root={scratch_root}", f"/etc/systemd/system/{UNIT.name}"],
        capture_output=True, text=True, timeout=60)
    assert "notifyy" in result.stderr


def test_unit_is_notify_with_watchdog_and_restarts() -> None:
    s = service()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"][0].rstrip("s").isdigit()
    assert s["Restart"] == ["on-failure"]
    unit = dict(parse_unit(UNIT.read_text())["Unit"])
    assert unit["StartLimitIntervalSec"] == "0", "a crash-looping shipper must keep trying"


def test_unit_is_hardened() -> None:
    s = service()
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                       ("CapabilityBoundingSet", "")]:
        assert s.get(key) == [value], key
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_VSOCK"}
    assert s["User"] == ["enclave-log-relay"]


def test_nitro_cli_describe_enclaves_has_what_it_needs() -> None:
    s = service()
    assert "ne" in s["SupplementaryGroups"][0].split()
    writable = {p.lstrip("-") for v in s["ReadWritePaths"] for p in v.split()}
    assert {"/run/nitro_enclaves", "/var/log/nitro_enclaves"} <= writable


def test_unit_uses_the_relay_defaults_and_real_options() -> None:
    env = env_assignments(UNIT)
    assert env[f"{RELAY_ENV}LISTEN"] == DEFAULT_LISTEN
    assert env[f"{RELAY_ENV}OUTPUT"] == DEFAULT_OUTPUT
    known = relay_options()
    checked = {}
    for name, value in env.items():
        dest = name.removeprefix(RELAY_ENV).lower()
        if dest in PENDING_RELAY_OPTIONS:
            continue
        assert dest in known, f"{name}: the relay has no --{dest.replace('_', '-')}"
        checked[name] = value
    argv = exec_start()[1:]
    command, config = parse_args(argv, environ=checked)
    assert command == "serve"
    assert config.listen == parse_endpoint(DEFAULT_LISTEN, listen=True)


def test_spool_lives_in_the_state_directory() -> None:
    s = service()
    state = s["StateDirectory"][0]
    assert env_assignments(UNIT)[f"{RELAY_ENV}SPOOL"] == f"/var/lib/{state}"


def test_sysusers_and_tmpfiles_make_the_socket_directory_for_the_relay(tmp_path: Path) -> None:
    sysusers, tmpfiles = need("systemd-sysusers"), need("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    for tool, conf in ((sysusers, SYSUSERS), (tmpfiles, TMPFILES)):
        argv = [tool, f"--root={tmp_path}"] + (["--create"] if tool == tmpfiles else [])
        result = subprocess.run([*argv, str(conf)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    group = next(line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()
                 if line.startswith("enclave-log-relay:"))
    socket_dir = tmp_path / Path(DEFAULT_OUTPUT.removeprefix("unix://")).parent.relative_to("/")
    st = socket_dir.stat()
    assert oct(st.st_mode & 0o7777) == oct(0o2770), "setgid, so the socket gets the group"
    assert st.st_gid == int(group[2])
