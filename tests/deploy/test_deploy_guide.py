"""The README's deploy guide, run: its commands taken from its text (tests/deploy/guide.py).

The commands a plain Linux machine can run are run in a scratch root, in order: the
relay's venv and ``pip install`` from the repository (offline, from a folder of wheels),
the unit, sysusers and tmpfiles files installed, ``systemd-sysusers`` and
``systemd-tmpfiles --create``, the Fluent Bit files copied. Then what they made is
checked: the unit's ExecStart is the relay the guide installed and it runs;
``systemd-analyze verify`` passes on the installed unit; the relay's user and Fluent
Bit's socket directory exist; and a real Fluent Bit started on the installed files
takes the installed relay's records. A guide that no longer works fails here.

The systemd tools and Fluent Bit (``FLUENT_BIT`` or ``fluent-bit`` on PATH) are
skipped without, except under CI=true, where they must be there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fluent_forward import __version__
from tests.deploy.formats import parse_unit
from tests.deploy.guide import SYSTEM_DIRS, Remap, classify, guide_commands, program
from tests.deploy.test_systemd_unit import SYSTEM_UNITS, need
from tests.deploy.wheels import checkout_copy, dependency_wheels, run, subprocess_env
from tests.helpers import ROOT, short_tmpdir, stop_process, wait_until_sync
from tests.realfb import fluent_bit_binary

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
UNIT = "etc/systemd/system/enclave-log-relay.service"


@dataclass(frozen=True)
class Deployed:
    root: Path
    source: Path
    ran: list[str]


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    """The guide's runnable commands, run in order in a scratch root."""
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        need(tool)
    with short_tmpdir() as tmp:
        root, wheels = tmp / "root", dependency_wheels(tmp / "wheels")
        source = checkout_copy(tmp / "src")
        for folder in SYSTEM_DIRS:
            (root / folder).mkdir(parents=True)
        remap, ran = Remap(root, source, wheels), []
        for argv in guide_commands(README.read_text()):
            if classify(argv):
                run(remap.argv(argv), f"the deploy guide's `{' '.join(argv)}`", cwd=source)
                ran.append(program(argv))
        yield Deployed(root, source, ran)


def test_every_command_of_the_guide_runs_here_or_is_set_aside_with_a_reason() -> None:
    commands = guide_commands(README.read_text())
    runnable = {program(argv) for argv in commands if classify(argv)}
    assert {"python3.11", "pip", "install", "systemd-sysusers", "systemd-tmpfiles"} <= runnable
    assert ["pip", "install", "/path/to/nitro-enclave-logs"] in [
        [program(a), *a[1:]] for a in commands], "the guide installs from the repository"


def test_the_guides_commands_run_in_a_scratch_root(deployed: Deployed) -> None:
    assert deployed.ran == [p for p in deployed.ran if p in {
        "python3.11", "pip", "install", "cp", "mkdir", "systemd-sysusers", "systemd-tmpfiles"}]
    assert {"python3.11", "pip", "systemd-sysusers", "systemd-tmpfiles", "cp"} <= set(
        deployed.ran)


def exec_start(deployed: Deployed) -> list[str]:
    service = dict(parse_unit((deployed.root / UNIT).read_text())["Service"])
    return service["ExecStart"].split()


def test_the_unit_starts_the_relay_the_guide_installed(deployed: Deployed,
                                                       tmp_path: Path) -> None:
    binary = deployed.root / exec_start(deployed)[0].lstrip("/")
    assert binary.is_file(), f"the unit starts {exec_start(deployed)[0]}: the guide made none"
    out = run([str(binary), "--version"], "the installed relay", cwd=tmp_path)
    assert out.strip() == f"enclave-log-relay {__version__}"


def test_the_installed_unit_passes_systemd_analyze_verify(deployed: Deployed) -> None:
    tool = need("systemd-analyze")
    root = deployed.root
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True,
                    dirs_exist_ok=True)
    kill = root / "bin" / "kill"  # ExecReload's; a base system has it
    kill.parent.mkdir(exist_ok=True)
    kill.write_text("#!/bin/sh\n")
    kill.chmod(0o755)
    result = subprocess.run([tool, "verify", f"--root={root}", f"/{UNIT}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_sysusers_and_tmpfiles_make_the_relays_user_and_fluent_bits_socket_folder(
        deployed: Deployed) -> None:
    root = deployed.root
    group = next(line.split(":") for line in (root / "etc/group").read_text().splitlines()
                 if line.startswith("enclave-log-relay:"))
    assert any(line.startswith("enclave-log-relay:")
               for line in (root / "etc/passwd").read_text().splitlines())
    st = (root / "run/fluent-bit").stat()
    assert (oct(st.st_mode & 0o7777), st.st_gid) == (oct(0o2770), int(group[2]))


def confine_fluent_bit(root: Path) -> Path:
    """The installed classic files, their system paths moved under ``root``; what cannot
    run here swapped: the ``aws`` filter (the instance metadata service) and the
    CloudWatch output (AWS) for a file output; the exec inputs every second, for speed."""
    conf = root / "etc/fluent-bit"
    for path in conf.glob("*.conf"):
        text = re.sub(r"(?<=\s)/(run|var|opt)/", lambda m: f"{root}/{m[1]}/", path.read_text())
        path.write_text(re.sub(r"(?m)^(\s*interval_sec\s+)\d+$", r"\g<1>1", text))
    main = (conf / "fluent-bit.conf").read_text()
    sections = re.split(r"\n(?=\[|@INCLUDE|# )", main)
    main = "\n".join(s for s in sections if not re.search(r"^\s*name\s+aws\s*$", s, re.M))
    assert "@INCLUDE output-cloudwatch_logs.conf" in main
    assert not re.search(r"^\s*name\s+aws\s*$", main, re.M)
    (root / "out").mkdir()
    (conf / "test-output.conf").write_text(
        f"[OUTPUT]\n    name file\n    match_regex ^(enclave|relay)\\.\n"
        f"    path {root}/out\n    file records\n")
    (conf / "fluent-bit.conf").write_text(
        main.replace("@INCLUDE output-cloudwatch_logs.conf", "@INCLUDE test-output.conf"))
    return conf / "fluent-bit.conf"


def out_records(path: Path) -> list[tuple[str, dict[str, object]]]:
    """Fluent Bit's file output: ``tag: [time, {record}]`` per line."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        tag, _, rest = line.partition(": ")
        if rest.endswith("]"):
            out.append((tag, json.loads(rest)[1]))
    return out


def test_fluent_bit_on_the_installed_files_takes_the_installed_relays_records(
        deployed: Deployed) -> None:
    binary, root = fluent_bit_binary(), deployed.root
    config = confine_fluent_bit(root)
    admin = root / "run/enclave-log-relay/admin.sock"  # the unit's RuntimeDirectory
    admin.parent.mkdir(exist_ok=True)
    env = subprocess_env() | {"ENCLAVE_LOG_RELAY_ADMIN_SOCKET": str(admin)}
    service = parse_unit((root / UNIT).read_text())["Service"]
    unit_env = dict(v.split("=", 1) for k, v in service if k == "Environment")
    relay_env = env | {k: re.sub(r"^/", f"{root}/", v) for k, v in unit_env.items()} | {
        "ENCLAVE_LOG_RELAY_LISTEN": f"unix://{root}/run/relay.sock",  # not vsock, here
        "ENCLAVE_LOG_RELAY_OUTPUT": f"unix://{root}/run/fluent-bit/forward.sock",
        "ENCLAVE_LOG_RELAY_NITRO_CLI": "none"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (root / "fluent-bit.log").open("wb") as log:
            procs.append(subprocess.Popen([binary, "-c", str(config)], cwd=config.parent,
                                          stdout=log, stderr=log, env=env))
        wait_until_sync(lambda: (root / "run/fluent-bit/forward.sock").exists()
                        or procs[0].poll() is not None, "Fluent Bit's forward socket")
        assert procs[0].poll() is None, (root / "fluent-bit.log").read_text()
        argv = exec_start(deployed)
        with (root / "relay.log").open("wb") as log:
            procs.append(subprocess.Popen([f"{root}{argv[0]}", *argv[1:]], stdout=log,
                                          stderr=log, env=relay_env, cwd=root))
        wait_until_sync(lambda: (root / "run/relay.sock").exists() or procs[1].poll() is not None,
                        "the installed relay to listen")
        assert procs[1].poll() is None, (root / "relay.log").read_text()
        run([f"{root}/opt/enclave-log-relay/bin/enclave-log-agent", "--relay",
             f"unix://{root}/run/relay.sock", "--tag", "guide", "--",
             f"{root}/opt/enclave-log-relay/bin/python", "-c",
             "for i in range(10): print('line', i)"], "the installed agent", cwd=root)
        records = root / "out" / "records"
        try:
            wait_until_sync(
                lambda: len([r for t, r in out_records(records)
                             if t == "enclave.local.guide.stdout"]) == 10
                and any(t == "relay.status_lines" for t, _ in out_records(records)),
                "the app's lines and the relay's status in Fluent Bit's output")
        except AssertionError as exc:
            logs = {name: (root / name).read_text()[-3000:]
                    for name in ("fluent-bit.log", "relay.log") if (root / name).exists()}
            raise AssertionError(f"{exc}; output: {out_records(records)[-5:]}; logs: {logs}"
                                 ) from None
    finally:
        for proc in reversed(procs):
            stop_process(proc)
    lines = [r for t, r in out_records(records) if t == "enclave.local.guide.stdout"]
    assert [r["log"] for r in lines] == [f"line {i}" for i in range(10)]
    assert {r["region"] for r in lines} == {"us-east-1"}, "fluent-bit.conf's record_modifier"
