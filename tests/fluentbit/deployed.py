"""fluentbit/ as shipped, made runnable here: a copy with its paths remapped into a work dir.

The files are never edited by hand for the tests: ``deploy()`` copies fluentbit/ and
rewrites, section by section and in both formats (classic through a small block
rewriter, YAML through PyYAML), only what cannot run on a test machine:

* paths: the forward socket, ``storage.path`` and the s3 ``store_dir`` go into the work
  dir; the TCP input's port 24224 becomes a free port;
* the exec inputs' command: the installed ``enclave-log-relay`` becomes this checkout's
  (``python -m parent_side``), pointed at the test relay's admin socket, and the console
  companion at a fake nitro-cli; ``interval_sec`` 30 becomes 1, so a test sees a round;
* the ``aws`` filter asks IMDS (169.254.169.254) for the instance id and zone. Off EC2 it
  is unreachable and the filter logs ``[error] Failed to get instance ID`` for every
  chunk, which would hide any other error. It becomes a ``record_modifier`` on the same
  match that stamps the two keys it would add, so what comes after it (the outputs'
  ``$ec2_instance_id``) sees the same record shape;
* with ``swap_outputs``, each AWS output section (cloudwatch_logs, s3, kinesis_streams,
  opensearch) becomes a ``file`` output with the same ``match``/``match_regex``, so the
  records that would have gone to AWS are read back from disk.

Everything else (inputs' keys, storage, parsers, the filters' matches, the include
structure) runs as written.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fluentbit.peer import free_port
from tests.helpers import ROOT

__all__ = ["INSTANCE_ID", "ZONE", "Deployment", "deploy", "rewrite_classic"]

FB = ROOT / "fluentbit"
INSTANCE_ID, ZONE = "i-0fluentbittest", "test-zone-1a"
AWS_OUTPUTS = {"cloudwatch_logs", "s3", "kinesis_streams", "opensearch"}
RELAY = "/opt/enclave-log-relay/bin/enclave-log-relay"
Entries = list[tuple[str, Any]]


@dataclass
class Deployment:
    """A runnable copy of fluentbit/: its main file and where things are."""

    dir: Path
    main: Path
    url: str  # where the relay reaches the forward input
    shared_key: str | None
    out: Path  # the swapped file outputs' directory


@dataclass
class Remap:
    work: Path
    admin_socket: Path
    nitro_cli: Path
    port: int
    swap_outputs: bool
    interval: int | None
    grace: int | None

    def command(self, command: str) -> str:
        argv = shlex.split(command)
        assert argv[0] == RELAY, command
        argv[:1] = [sys.executable, "-m", "parent_side"]
        argv += ["--admin-socket", str(self.admin_socket)]
        if "console" in argv:
            argv += ["--nitro-cli", str(self.nitro_cli), "--interval", "100ms"]
        return shlex.join(argv)

    def section(self, kind: str, entries: Entries) -> Entries:
        """One section (``kind`` is SERVICE, INPUT, FILTER or OUTPUT), remapped."""
        name = str(dict(entries).get("name", "")).lower()
        if kind == "SERVICE" and self.grace is not None:
            entries = [*entries, ("grace", self.grace)]
        if kind == "FILTER" and name == "aws":
            match = [(k, v) for k, v in entries if k.startswith("match")]
            return [("name", "record_modifier"), *match,
                    ("record", f"ec2_instance_id {INSTANCE_ID}"), ("record", f"az {ZONE}")]
        if kind == "OUTPUT" and self.swap_outputs and name in AWS_OUTPUTS:
            match = [(k, v) for k, v in entries if k.startswith("match")]
            return [("name", "file"), *match, ("path", str(self.work / "out"))]
        return [(k, self.value(k, v)) for k, v in entries]

    def value(self, key: str, value: Any) -> Any:
        if key == "storage.path":
            return str(self.work / "storage")
        if key == "store_dir":
            return str(self.work / "s3")
        if key == "unix_path":
            return str(self.work / "forward.sock")
        if key == "port":
            return self.port
        if key == "command":
            return self.command(str(value))
        if key == "interval_sec" and self.interval is not None:
            return self.interval
        return value


def rewrite_classic(text: str, change: Callable[[str, Entries], Entries]) -> str:
    """Each ``[SECTION]`` of a classic file replaced by ``change(name, entries)``.

    Comments inside sections are dropped; top-level lines (``@INCLUDE``, ``@SET``,
    comments between sections) stay.
    """
    out: list[str] = []
    name: str | None = None
    entries: Entries = []

    def flush() -> None:
        if name is not None:
            out.append(f"[{name}]")
            out.extend(f"    {k} {v}" for k, v in change(name, entries))
            out.append("")

    for line in text.splitlines():
        if line.startswith("["):
            flush()
            name, entries = line.strip()[1:-1].upper(), []
        elif name is not None and line.startswith((" ", "\t")) and line.strip():
            if not line.strip().startswith("#"):
                key, _, value = line.strip().partition(" ")
                entries.append((key.lower(), value.strip()))
        elif line.startswith("@") or (name is None and line.strip()):
            flush()
            name = None
            out.append(line)
    flush()
    return "\n".join(out) + "\n"


def _classic(copy: Path, remap: Remap, input_name: str, output: str, console: bool) -> Path:
    for path in copy.glob("*.conf"):
        path.write_text(rewrite_classic(path.read_text(), remap.section))
    main = copy / "fluent-bit.conf"
    text = main.read_text()
    enable = "@INCLUDE input-console.conf" if console else "# @INCLUDE input-console.conf"
    for old, new in [("@INCLUDE input-unix.conf", f"@INCLUDE input-{input_name}.conf"),
                     ("# @INCLUDE input-console.conf", enable),
                     ("@INCLUDE output-cloudwatch_logs.conf", f"@INCLUDE output-{output}.conf")]:
        assert old in text.splitlines(), f"fluent-bit.conf no longer has {old!r}"
        text = text.replace(old, new)
    main.write_text(text)
    return main


def _yaml_section(remap: Remap, kind: str, section: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in remap.section(kind, list(section.items())):
        if key in merged:  # a repeated key (record_modifier's record) is a YAML list
            merged[key] = [*(merged[key] if isinstance(merged[key], list) else [merged[key]]),
                           value]
        else:
            merged[key] = value
    return merged


def _yaml(copy: Path, remap: Remap, input_name: str, output: str, console: bool) -> Path:
    kinds = {"inputs": "INPUT", "filters": "FILTER", "outputs": "OUTPUT"}
    for path in copy.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if "service" in data:
            data["service"] = dict(remap.section("SERVICE", list(data["service"].items())))
        for plural, kind in kinds.items():
            sections = data.get("pipeline", {}).get(plural)
            if sections:
                data["pipeline"][plural] = [_yaml_section(remap, kind, s) for s in sections]
        if path.name == "fluent-bit.yaml":
            includes = data["includes"]
            for old, new in [("input-unix.yaml", f"input-{input_name}.yaml"),
                             ("output-cloudwatch_logs.yaml", f"output-{output}.yaml")]:
                includes[includes.index(old)] = new
            # Commented out in the file, to be enabled by the user: enabled here.
            assert "# - input-console.yaml" in path.read_text()
            if console:
                includes.append("input-console.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return copy / "fluent-bit.yaml"


def deploy(work: Path, fmt: str, *, input_name: str = "unix", output: str = "cloudwatch_logs",
           swap_outputs: bool = True, interval: int | None = 1, console: bool = True,
           grace: int | None = None, admin_socket: Path, nitro_cli: Path) -> Deployment:
    """A copy of fluentbit/ in ``work/fluentbit`` (``fmt``: classic or yaml), remapped.

    ``console`` enables the console input's include line (commented out as shipped);
    ``grace`` sets the service's shutdown grace period (5 s when unset).
    """
    copy = work / "fluentbit"
    shutil.copytree(FB, copy)
    remap = Remap(work, admin_socket, nitro_cli, free_port(), swap_outputs, interval, grace)
    main = (_classic if fmt == "classic" else _yaml)(copy, remap, input_name, output, console)
    (work / "out").mkdir(exist_ok=True)
    if input_name == "unix":
        url, key = f"unix://{work / 'forward.sock'}", None
    else:
        url, key = f"tcp://127.0.0.1:{remap.port}", shared_key(main)
    return Deployment(copy, main, url, key, work / "out")


def shared_key(main: Path) -> str:
    """FORWARD_SHARED_KEY as the main file sets it (@SET, or the YAML env section)."""
    if main.suffix == ".yaml":
        return str(yaml.safe_load(main.read_text())["env"]["FORWARD_SHARED_KEY"])
    for line in main.read_text().splitlines():
        if line.startswith("@SET FORWARD_SHARED_KEY="):
            return line.partition("=")[2].strip()
    raise AssertionError("fluent-bit.conf sets no FORWARD_SHARED_KEY")
