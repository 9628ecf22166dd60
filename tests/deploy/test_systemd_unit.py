"""The relay's systemd unit, the console companion's, sysusers and tmpfiles entries.

``systemd-analyze verify`` (Debian's systemd package) checks each unit in a scratch
root that holds systemd's own units and stand-ins for the executables it runs, and
any warning it prints fails the test (it exits 0 on unknown keys and bad values).
``systemd-sysusers`` and ``systemd-tmpfiles`` run against the same scratch root.
Without those tools the tests skip, except under CI=true, where .ci/run installs them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluent_forward.endpoints import parse_endpoint
from parent_side import relay as relay_module
from parent_side.cli import parse_args, serve_config
from parent_side.config import DEFAULT_ADMIN_SOCKET, DEFAULT_LISTEN, DEFAULT_OUTPUT, RelayConfig
from parent_side.console import ConsoleOptions
from parent_side.outputs import parse_output
from tests.deploy.formats import parse_unit
from tests.deploy.options import PENDING_RELAY_OPTIONS, RELAY_ENV, env_assignments, relay_options
from tests.helpers import ROOT

UNIT = ROOT / "systemd" / "enclave-log-relay.service"
CONSOLE_UNIT = ROOT / "systemd" / "enclave-log-relay-console.service"
UNITS = [UNIT, CONSOLE_UNIT]
SYSUSERS = ROOT / "systemd" / "enclave-log-relay.sysusers"
TMPFILES = ROOT / "systemd" / "enclave-log-relay.tmpfiles"
EXAMPLE_CONFIG = ROOT / "systemd" / "enclave-log-relay.toml"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
#: Options a reload keeps as they were (RelayConfig fields, parent_side.relay), by
#: their option names.
RESTART_ONLY = {"listen": "listen", "listen_mode": "listen_mode", "spool": "spool",
                "spool_size": "spool_bytes", "spool_full": "spool_full",
                "admin_socket": "admin_socket", "hostname": "hostname"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = (f"{tool} is missing: apt-get install --no-install-recommends systemd "
                   "(.ci/run does)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def service(unit: Path = UNIT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in parse_unit(unit.read_text())["Service"]:
        out.setdefault(key, []).append(value)
    return out


def exec_start(unit: Path = UNIT) -> list[str]:
    return service(unit)["ExecStart"][0].split()


def install(root: Path, unit: Path) -> None:
    """Put ``unit`` in ``root`` with a stand-in for every program its Exec lines run."""
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    for key, values in service(unit).items():
        if key.startswith("Exec"):
            for value in values:
                binary = root / value.split()[0].lstrip("-@:+!").lstrip("/")
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_text("#!/bin/sh\n")
                binary.chmod(0o755)


@pytest.fixture
def scratch_root(tmp_path: Path) -> Iterator[Path]:
    """A root with systemd's units, the relay's unit installed, and stub executables."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    install(root, UNIT)
    yield root


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_passes_without_warnings(scratch_root: Path, unit: Path) -> None:
    tool = need("systemd-analyze")
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} missing: is Debian's systemd package installed?")
    install(scratch_root, unit)
    result = subprocess.run(
        [tool, "verify", f"--root={scratch_root}", f"/etc/systemd/system/{unit.name}"],
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
    assert command == "serve" and isinstance(config, RelayConfig)
    assert config.listen == parse_endpoint(DEFAULT_LISTEN, listen=True)
    assert config.output == parse_output(DEFAULT_OUTPUT), "Fluent Bit's forward socket"
    assert config.admin_socket == DEFAULT_ADMIN_SOCKET


def test_unit_reloads_with_sighup() -> None:
    assert service()["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_unit_environment_sets_only_what_a_reload_would_keep() -> None:
    """The environment wins over a --config file and is read once: an option the unit
    set there could never change on reload."""
    assert set(RESTART_ONLY.values()) == set(relay_module._RESTART_ONLY) - {
        "spool_segment_bytes"}, "RESTART_ONLY is out of step with the relay"
    for name in env_assignments(UNIT):
        dest = name.removeprefix(RELAY_ENV).lower()
        assert dest in RESTART_ONLY, f"{name} in the unit would block reloading {dest}"


def test_admin_socket_lives_in_the_runtime_directory_the_relay_group_may_enter() -> None:
    s = service()
    assert DEFAULT_ADMIN_SOCKET == f"/run/{s['RuntimeDirectory'][0]}/admin.sock"
    mode = int(s["RuntimeDirectoryMode"][0], 8)
    assert mode & 0o050 == 0o050, "the group (a Fluent Bit given it) may look up the socket"
    assert mode & 0o007 == 0, "other users may not"


def test_example_config_file_holds_the_defaults_and_only_reloadable_options() -> None:
    with EXAMPLE_CONFIG.open("rb") as f:
        keys = set(tomllib.load(f))
    assert keys, "an example with nothing in it"
    assert not keys & set(RESTART_ONLY), "a reload would ignore these"
    from_file = serve_config(["serve", "--config", str(EXAMPLE_CONFIG)], {})
    defaults = serve_config(["serve"], {})
    assert from_file == dataclasses.replace(defaults, config_file=str(EXAMPLE_CONFIG))


def test_console_unit_runs_the_console_into_fluent_bit_as_the_relays_user() -> None:
    console, relay = service(CONSOLE_UNIT), service()
    command, options = parse_args(exec_start(CONSOLE_UNIT)[1:], environ={})
    assert command == "console" and isinstance(options, ConsoleOptions)
    assert options.output == parse_output(DEFAULT_OUTPUT), "through Fluent Bit's forward input"
    assert options.admin_socket == DEFAULT_ADMIN_SOCKET, "to skip enclaves with an agent"
    assert exec_start(CONSOLE_UNIT)[0] == exec_start()[0]
    for key in ("User", "Group", "SupplementaryGroups", "ReadWritePaths"):
        assert console[key] == relay[key], f"{key}: nitro-cli and the sockets, as the relay"
    unit = dict(parse_unit(CONSOLE_UNIT.read_text())["Unit"])
    assert unit["StartLimitIntervalSec"] == "0"
    assert console["Restart"] == ["on-failure"]


def test_console_unit_is_hardened_as_the_relay_is() -> None:
    console, relay = service(CONSOLE_UNIT), service()
    hardening = [k for k in relay if k.startswith(("Protect", "Private", "Restrict"))
                 or k in ("NoNewPrivileges", "LockPersonality", "MemoryDenyWriteExecute",
                          "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
                          "CapabilityBoundingSet", "AmbientCapabilities", "UMask")]
    assert len(hardening) > 15
    for key in hardening:
        assert console.get(key) == relay[key], key


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
