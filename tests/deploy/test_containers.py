"""The container files: the enclave image, the parent's compose file, the Kubernetes
DaemonSet and the seccomp profile.

There is no Docker engine here, so the files are parsed and checked for what breaks
silently in production: an agent that is not the image's CMD (nitro-cli ignores
ENTRYPOINT when a CMD is set), a path or command that is not in the repository, an
option the code does not have, a socket directory the two containers do not share,
and a seccomp profile that refuses AF_VSOCK. The profile is also loaded with
libseccomp and the relay run under it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from enclave_side.cli import parse_args as parse_agent_args
from parent_side.cli import parse_args as parse_relay_args
from parent_side.config import DEFAULT_ADMIN_SOCKET, DEFAULT_LISTEN, DEFAULT_OUTPUT
from tests.deploy import seccomp_exec
from tests.deploy.formats import DockerInstruction, parse_dockerfile, stages
from tests.deploy.options import (
    DEPLOY_FILES,
    PENDING_RELAY_OPTIONS,
    RELAY_ENV,
    env_assignments,
    relay_options,
)
from tests.helpers import (
    PYTHON,
    ROOT,
    env_for_subprocess,
    read_json_lines,
    short_tmpdir,
    stop_process,
    wait_until_sync,
)

ENCLAVE_DOCKERFILE = ROOT / "docker" / "enclave" / "Dockerfile"
PARENT_DOCKERFILE = ROOT / "docker" / "parent" / "Dockerfile"
COMPOSE = ROOT / "docker" / "parent" / "compose.yaml"
DAEMONSET = ROOT / "k8s" / "daemonset.yaml"
SECCOMP = ROOT / "docker" / "parent" / "seccomp-vsock.json"
SECCOMP_EXEC = Path(__file__).with_name("seccomp_exec.py")
SOCKET_DIR = str(PurePosixPath(DEFAULT_OUTPUT.removeprefix("unix://")).parent)
ADMIN_DIR = str(PurePosixPath(DEFAULT_ADMIN_SOCKET).parent)
AF_VSOCK = 40
CONSOLE_SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
PYTHONS = {"python", "python3", "python3.11"}


# --- the agent must be the enclave image's CMD ----------------------------------------


def agent_cmd_problems(text: str) -> list[str]:
    """Why an image built from this Dockerfile would not run the agent on Nitro."""
    final = stages(parse_dockerfile(text))[-1]
    problems = []
    if any(i.keyword == "ENTRYPOINT" for i in final):
        problems.append("ENTRYPOINT is set: nitro-cli ignores it when there is a CMD; "
                        "put the agent in CMD")
    cmds = [i for i in final if i.keyword == "CMD"]
    if not cmds:
        return [*problems, "no CMD"]
    argv = cmds[-1].exec_form
    if argv is None:
        return [*problems, "CMD is not in exec form (JSON array): a shell would be PID 1"]
    agent = agent_argv(argv)
    if agent is None:
        problems.append(f"CMD does not run the agent: {argv}")
    elif "--" not in agent or agent.index("--") == len(agent) - 1:
        problems.append("CMD has no app after `--`")
    return problems


def agent_argv(argv: list[str]) -> list[str] | None:
    """The agent's own arguments if ``argv`` runs the agent, else None."""
    if argv and argv[0].rsplit("/", 1)[-1] == "enclave-log-agent":
        return argv[1:]
    if len(argv) > 1 and argv[0].rsplit("/", 1)[-1] in PYTHONS \
            and argv[1].endswith("enclave-log-agent.pyz"):
        return argv[2:]
    return None


def test_enclave_image_runs_the_agent_as_its_cmd() -> None:
    assert agent_cmd_problems(ENCLAVE_DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(("dockerfile", "problem"), [
    ('FROM x\nENTRYPOINT ["enclave-log-agent", "--"]\nCMD ["python3", "app.py"]\n',
     "ENTRYPOINT"),
    ('FROM x\nCMD enclave-log-agent -- python3 app.py\n', "exec form"),
    ('FROM x\nCMD ["python3", "app.py"]\n', "does not run the agent"),
    ('FROM x\nCMD ["enclave-log-agent", "--tag", "a"]\n', "no app"),
    ('FROM x\nCMD ["enclave-log-agent", "--"]\n', "no app"),
    ('FROM x\n', "no CMD"),
    ('FROM x AS a\nCMD ["enclave-log-agent", "--", "app"]\nFROM y\nCMD ["app"]\n',
     "does not run the agent"),
])
def test_the_cmd_check_catches_each_mistake(dockerfile: str, problem: str) -> None:
    assert any(problem in p for p in agent_cmd_problems(dockerfile))


def test_enclave_cmd_options_are_the_agents_own() -> None:
    final = stages(parse_dockerfile(ENCLAVE_DOCKERFILE.read_text()))[-1]
    argv = next(i for i in final if i.keyword == "CMD").exec_form
    assert argv is not None
    agent = agent_argv(argv)
    assert agent is not None
    config = parse_agent_args(agent, environ={})
    assert str(config.relay) == "vsock://3:24224", "the parent is CID 3"
    assert config.command[-3:] == ("/app/hello_app.py", "0", "5")


# --- paths and commands named by the files exist ---------------------------------------


def copies(stage: list[DockerInstruction]) -> dict[str, str]:
    """COPY/ADD destination -> source, for sources from the build context."""
    out = {}
    for ins in stage:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = ins.words()
        flags = [w for w in words if w.startswith("--")]
        *sources, dest = [w for w in words if not w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            out[dest] = "(stage)"
            continue
        for src in sources:
            target = dest.rstrip("/") + "/" + Path(src).name if dest.endswith("/") else dest
            out[target] = src
    return out


def workdir_of(stage: list[DockerInstruction]) -> str:
    found = [i.argument for i in stage if i.keyword == "WORKDIR"]
    return found[-1] if found else "/"


@pytest.mark.parametrize("dockerfile", [ENCLAVE_DOCKERFILE, PARENT_DOCKERFILE],
                         ids=["enclave", "parent"])
def test_every_path_and_command_in_the_dockerfile_exists(dockerfile: Path) -> None:
    """The build context is the repository root (README and the compose file say so)."""
    for stage in stages(parse_dockerfile(dockerfile.read_text())):
        copied = copies(stage)
        for src in copied.values():
            if src != "(stage)":
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repo"
        for ins in stage:
            if ins.keyword == "RUN":
                for word in re.findall(r"(?<![\w/.-])[\w.-]+(?:/[\w.-]+)+\.py\b", ins.argument):
                    assert (ROOT / word).exists(), f"RUN names {word}: not in the repo"
            if ins.keyword == "CMD":
                argv = ins.exec_form or []
                assert argv, "CMD in exec form"
                program = argv[0]
                assert program in PYTHONS | CONSOLE_SCRIPTS, f"unknown program {program}"
                for word in argv[1:]:
                    if word.startswith("/"):
                        assert word in copied, f"CMD names {word}, which no COPY puts there"


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_paths_exist() -> None:
    base = COMPOSE.parent
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            context = (base / build["context"]).resolve()
            assert context == ROOT, "builds from the repository root"
            assert (context / build["dockerfile"]).is_file()
        for opt in service.get("security_opt", []):
            if opt.startswith("seccomp="):
                assert (base / opt.split("=", 1)[1]).is_file(), opt
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (base / source).exists(), f"{name}: {source}"


def test_compose_runs_the_relay_with_vsock_seccomp_spool_and_a_shared_socket() -> None:
    services = compose()["services"]
    relay, fluent = services["relay"], services["fluent-bit"]
    assert "/dev/vsock:/dev/vsock" in relay["devices"]
    assert "seccomp=./seccomp-vsock.json" in relay["security_opt"]
    env = relay["environment"]
    assert env[f"{RELAY_ENV}LISTEN"] == DEFAULT_LISTEN
    assert env[f"{RELAY_ENV}OUTPUT"] == DEFAULT_OUTPUT
    relay_mounts = dict(v.split(":")[:2][::-1] for v in relay["volumes"])
    fluent_mounts = dict(v.split(":")[:2][::-1] for v in fluent["volumes"])
    assert relay_mounts[SOCKET_DIR] == fluent_mounts[SOCKET_DIR], "one socket directory"
    assert relay_mounts[env[f"{RELAY_ENV}SPOOL"]] in compose()["volumes"], "a volume"


def test_compose_relay_can_open_its_admin_socket_on_a_read_only_root() -> None:
    relay = compose()["services"]["relay"]
    assert relay["read_only"] is True
    assert f"{RELAY_ENV}ADMIN_SOCKET" not in relay["environment"]
    writable = set(relay.get("tmpfs", [])) | {v.split(":")[1] for v in relay["volumes"]}
    assert ADMIN_DIR in writable, "status could not reach the relay"


def fluent_config_from_command(command: list[str], mounts: dict[str, Path]) -> Path:
    config = command[command.index("-c") + 1]
    for target, source in mounts.items():
        if config.startswith(target + "/"):
            return source / config.removeprefix(target + "/")
    raise AssertionError(f"{config} is not on a mounted volume")


def test_compose_fluent_bit_reads_the_repositorys_config() -> None:
    fluent = compose()["services"]["fluent-bit"]
    mounts = {v.split(":")[1]: COMPOSE.parent / v.split(":")[0]
              for v in fluent["volumes"] if v.startswith(".")}
    path = fluent_config_from_command(fluent["command"], mounts)
    assert path.resolve().is_file() and path.resolve().parent == ROOT / "fluentbit"


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]


def pod_spec() -> dict[str, Any]:
    ds = next(d for d in k8s_docs() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(name: str) -> dict[str, Any]:
    found = next(c for c in pod_spec()["containers"] if c["name"] == name)
    assert isinstance(found, dict)
    return found


def test_daemonset_runs_relay_and_fluent_bit_on_enclave_nodes() -> None:
    spec = pod_spec()
    assert spec["nodeSelector"] == {"aws-nitro-enclaves-k8s-dp": "enabled"}
    assert {c["name"] for c in spec["containers"]} == {"relay", "fluent-bit"}
    relay = container("relay")
    assert relay["command"][0] in CONSOLE_SCRIPTS
    profile = relay["securityContext"]["seccompProfile"]
    assert profile["type"] == "Localhost"
    assert Path(profile["localhostProfile"]).name == SECCOMP.name
    mounts = {m["mountPath"]: m["name"] for m in relay["volumeMounts"]}
    fluent_mounts = {m["mountPath"]: m["name"] for m in container("fluent-bit")["volumeMounts"]}
    assert mounts[SOCKET_DIR] == fluent_mounts[SOCKET_DIR], "one socket directory"
    env = {e["name"]: e["value"] for e in relay["env"]}
    spool = next(v for v in spec["volumes"] if v["name"] == mounts[env[f"{RELAY_ENV}SPOOL"]])
    assert "hostPath" in spool, "the spool outlives the pod"


def test_daemonset_relay_can_open_its_admin_socket_on_a_read_only_root() -> None:
    relay = container("relay")
    assert relay["securityContext"]["readOnlyRootFilesystem"] is True
    assert f"{RELAY_ENV}ADMIN_SOCKET" not in {e["name"] for e in relay["env"]}
    mounts = {m["mountPath"]: m["name"] for m in relay["volumeMounts"]}
    assert ADMIN_DIR in mounts, "status could not reach the relay"
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mounts[ADMIN_DIR])
    assert "emptyDir" in volume, "the socket belongs to this pod"


def test_daemonset_fluent_bit_config_comes_from_fluentbit_flat() -> None:
    fluent = container("fluent-bit")
    config_mount = next(m for m in fluent["volumeMounts"] if m["name"] == "fluent-bit-config")
    path = fluent_config_from_command(fluent["command"],
                                      {config_mount["mountPath"]: ROOT / "fluentbit"})
    assert path.is_file()
    # kubectl create configmap --from-file=fluentbit/ takes the top level only
    for include in yaml.safe_load(path.read_text()).get("includes", []):
        assert "/" not in include and (path.parent / include).is_file()


REPO_PATH = re.compile(r"(?<![\w/.-])((?:docker|fluentbit|k8s|systemd|tools|examples)/[\w./-]*)")


@pytest.mark.parametrize("path", [DAEMONSET, COMPOSE, ENCLAVE_DOCKERFILE, PARENT_DOCKERFILE,
                                  ROOT / "systemd" / "enclave-log-relay.service",
                                  ROOT / "systemd" / "enclave-log-relay-console.service",
                                  ROOT / "systemd" / "enclave-log-relay.toml",
                                  *sorted((ROOT / "fluentbit").glob("input-[cs]*"))],
                         ids=lambda p: p.name)
def test_repository_paths_in_comments_and_commands_exist(path: Path) -> None:
    named = REPO_PATH.findall(path.read_text())
    assert named or path == PARENT_DOCKERFILE
    for name in named:
        assert (ROOT / name.rstrip(".")).exists(), f"{path.name} names {name}"


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_relay_variables_in_deploy_files_are_real_options(path: Path) -> None:
    env = env_assignments(path)
    if path in (COMPOSE, DAEMONSET):
        assert env[f"{RELAY_ENV}LISTEN"] == DEFAULT_LISTEN
        assert env[f"{RELAY_ENV}OUTPUT"] == DEFAULT_OUTPUT
    known = relay_options()
    checked = {}
    for name, value in env.items():
        dest = name.removeprefix(RELAY_ENV).lower()
        if name.startswith(RELAY_ENV) and dest not in PENDING_RELAY_OPTIONS:
            assert dest in known, f"{path.name}: {name} names no relay option"
            checked[name] = value
    parse_relay_args(["serve"], environ=checked)


def test_env_assignments_reads_every_format(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("Environment=ENCLAVE_LOG_RELAY_A=1\n  ENCLAVE_LOG_RELAY_B: two\n"
                 "- name: ENCLAVE_LOG_RELAY_C\n  value: 'three'\n")
    assert env_assignments(f) == {"ENCLAVE_LOG_RELAY_A": "1", "ENCLAVE_LOG_RELAY_B": "two",
                                  "ENCLAVE_LOG_RELAY_C": "three"}


# --- seccomp ------------------------------------------------------------------------


def seccomp_profile() -> dict[str, Any]:
    data = json.loads(SECCOMP.read_text())
    assert isinstance(data, dict)
    return data


def arg_matches(arg: dict[str, Any], args: tuple[int, ...]) -> bool:
    value = args[arg["index"]] if arg["index"] < len(args) else 0
    op, a, b = arg["op"], arg["value"], arg.get("valueTwo", 0)
    return {"SCMP_CMP_EQ": value == a, "SCMP_CMP_NE": value != a,
            "SCMP_CMP_LT": value < a, "SCMP_CMP_LE": value <= a,
            "SCMP_CMP_GT": value > a, "SCMP_CMP_GE": value >= a,
            "SCMP_CMP_MASKED_EQ": (value & a) == b}[op]


def decide(profile: dict[str, Any], syscall: str, *args: int) -> str:
    """The action the profile takes for ``syscall(args)`` (no caps, native arch)."""
    actions = {rule["action"] for rule in profile["syscalls"]
               if syscall in rule["names"] and "includes" not in rule
               and all(arg_matches(a, args) for a in rule.get("args") or [])}
    assert len(actions) <= 1, f"{syscall}: conflicting rules {actions}"
    return actions.pop() if actions else str(profile["defaultAction"])


def test_seccomp_allows_af_vsock_sockets() -> None:
    assert decide(seccomp_profile(), "socket", AF_VSOCK, 1, 0) == "SCMP_ACT_ALLOW"


def test_seccomp_allows_the_relays_other_families_and_refuses_the_rest() -> None:
    p = seccomp_profile()
    for family in (1, 2, 10):  # AF_UNIX, AF_INET, AF_INET6
        assert decide(p, "socket", family, 1, 0) == "SCMP_ACT_ALLOW"
    for family in (16, 17, 38):  # AF_NETLINK, AF_PACKET, AF_ALG
        assert decide(p, "socket", family, 3, 0) == "SCMP_ACT_ERRNO"


def test_seccomp_is_an_allow_list() -> None:
    p = seccomp_profile()
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    for syscall in ("ptrace", "mount", "unshare", "setns", "kexec_load", "init_module",
                    "bpf", "keyctl", "userfaultfd", "perf_event_open", "open_by_handle_at"):
        assert decide(p, syscall) == "SCMP_ACT_ERRNO", syscall
    assert decide(p, "clone", 0x3D0F00) == "SCMP_ACT_ALLOW"  # a thread
    assert decide(p, "clone", 0x10000000) == "SCMP_ACT_ERRNO"  # CLONE_NEWUSER
    assert decide(p, "clone3") == "SCMP_ACT_ERRNO"


def test_the_seccomp_check_fails_on_dockers_vsock_rule() -> None:
    """Docker's default profile allows socket() only when the family is not 40."""
    docker_like = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]}]}
    assert decide(docker_like, "socket", AF_VSOCK, 1, 0) == "SCMP_ACT_ERRNO"
    assert decide(docker_like, "socket", 2, 1, 0) == "SCMP_ACT_ALLOW"


def need_libseccomp() -> None:
    import ctypes.util

    if ctypes.util.find_library("seccomp") is None:
        message = "libseccomp is missing: apt-get install libseccomp2 (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


PROBE = """
import ctypes, errno, socket, threading, subprocess, sys
def refused(make):
    try:
        make().close()
    except OSError as exc:
        return exc.errno == errno.EPERM
    return False
assert not refused(lambda: socket.socket(socket.AF_UNIX))
assert not refused(lambda: socket.socket(socket.AF_INET))
assert refused(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == errno.EPERM
t = threading.Thread(target=lambda: None); t.start(); t.join()
assert subprocess.run(["/bin/true"]).returncode == 0
print("probe ok")
"""


def test_under_the_profile_a_process_keeps_what_it_needs_and_loses_the_rest() -> None:
    need_libseccomp()
    result = subprocess.run([PYTHON, str(SECCOMP_EXEC), str(SECCOMP), "--", PYTHON, "-c", PROBE],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "probe ok" in result.stdout


def test_the_relay_runs_under_the_profile(sockdir: Path) -> None:
    """Listen, accept an agent, write and fsync (a thread), stop on SIGTERM: all filtered."""
    need_libseccomp()
    out = sockdir / "out.jsonl"
    url = f"unix://{sockdir}/relay.sock"
    with (sockdir / "relay.err").open("wb") as err:
        relay = subprocess.Popen(
            [PYTHON, str(SECCOMP_EXEC), str(SECCOMP), "--", PYTHON, "-m", "parent_side",
             "--listen", url, "--output", f"file://{out}", "--spool", f"{sockdir}/spool",
             "--admin-socket", f"{sockdir}/admin.sock"],
            stdout=subprocess.DEVNULL, stderr=err, env=env_for_subprocess())
    try:
        wait_until_sync(lambda: (sockdir / "relay.sock").exists() or relay.poll() is not None,
                        "the relay to listen")
        assert relay.poll() is None, (sockdir / "relay.err").read_text()
        agent = subprocess.run(
            [PYTHON, "-m", "enclave_side", "--relay", url, "--tag", "sc", "--",
             PYTHON, "-c", "for i in range(20): print('line', i)"],
            capture_output=True, env=env_for_subprocess(), timeout=60)
        assert agent.returncode == 0, agent.stderr.decode()
        wait_until_sync(lambda: sum(r["tag"] == "enclave.local.sc.stdout"
                                    for r in read_json_lines(out)) == 20, "20 lines")
        relay.terminate()
        assert relay.wait(30) == 0, (sockdir / "relay.err").read_text()
        assert "Operation not permitted" not in (sockdir / "relay.err").read_text()
    finally:
        stop_process(relay)


def test_seccomp_exec_refuses_features_it_cannot_apply() -> None:
    need_libseccomp()
    with pytest.raises(ValueError, match="includes"):
        seccomp_exec.load_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["X"]}}]})


def test_the_enclave_images_build_stage_makes_the_archive_the_final_stage_copies(
        tmp_path: Path) -> None:
    """Replay the agent stage's COPY and RUN in a scratch root (no Docker here): what
    the stage copies is enough to build the archive, at the path the final stage
    copies it from."""
    root = tmp_path / "root"
    built = stages(parse_dockerfile(ENCLAVE_DOCKERFILE.read_text()))
    build_stage, final = built[0], built[-1]
    stage_name = build_stage[0].words()[-1]
    workdir = root / workdir_of(build_stage).lstrip("/")
    workdir.mkdir(parents=True)
    for dest, src in copies(build_stage).items():
        target = (workdir / dest) if not dest.startswith("/") else root / dest.lstrip("/")
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / src, target)
    for ins in build_stage:
        if ins.keyword == "RUN":
            argv = [PYTHON if w in PYTHONS else
                    str(root / w.lstrip("/")) if w.startswith("/") else w
                    for w in shlex.split(ins.argument)]
            result = subprocess.run(argv, cwd=workdir, capture_output=True, text=True,
                                    timeout=60, env={"PATH": os.environ["PATH"]})
            assert result.returncode == 0, result.stderr
    from_stage = [ins.words() for ins in final
                  if ins.keyword == "COPY" and f"--from={stage_name}" in ins.words()]
    assert from_stage, "the final stage copies the archive from the build stage"
    for words in from_stage:
        source = [w for w in words if not w.startswith("--")][0]
        assert (root / source.lstrip("/")).is_file(), f"the build stage made no {source}"
