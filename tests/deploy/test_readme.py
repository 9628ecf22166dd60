"""README.md stays true to the code and the files it points to.

- The configuration reference is generated from the argument parsers
  (tools/gen_config_reference.py); this test fails when they differ.
- Every repository path the README names exists, and every link to a section has one.
- The enclave image's CMD quoted in the guide is the one in docker/enclave/Dockerfile.
- The `status` example has the columns `status` prints.
- The `make demo` sample is the shape of a real run (tools/gen_demo_sample.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import re

import pytest

from parent_side import cli as relay_cli
from parent_side.cli import parse_args
from parent_side.status import format_table
from tests.deploy.formats import parse_dockerfile, stages
from tests.helpers import PYTHON, ROOT, load_tool

gen = load_tool("gen_config_reference")
demo = load_tool("gen_demo_sample")
README = ROOT / "README.md"


def test_configuration_reference_matches_the_parsers() -> None:
    text = README.read_text()
    assert gen.current(text) == gen.generate(), (
        "README's configuration reference is out of date: "
        "run python tools/gen_config_reference.py")


def test_reference_lists_every_option_of_both_sides() -> None:
    section = gen.current(README.read_text())
    from enclave_side.cli import build_parser

    subcommands = gen.subcommands()
    assert set(subcommands) == {"serve", "status", "console"}
    for name, parser in [("agent", build_parser()), *subcommands.items()]:
        table = section.split(f"enclave-log-relay {name} [" if name != "agent"
                              else "enclave-log-agent [", 1)[1].split("###", 1)[0]
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert f"| `{max(action.option_strings, key=len)}" in table, (name, action.dest)
                assert action.help, f"{name} {action.dest}: no help to show"


#: A value each status and console option takes, to set through the environment.
SAMPLES = {"admin_socket": "/elsewhere/admin.sock", "json": "1", "stdout": "1",
           "output": "stdout", "upstream_shared_key": "k",
           "upstream_shared_key_file": "/elsewhere/key", "nitro_cli": "/elsewhere/nitro-cli",
           "interval": "7s", "log_level": "debug"}


@pytest.mark.parametrize("command", sorted(gen.SUBCOMMAND_ENV))
def test_the_reference_names_the_variables_each_subcommand_reads_and_no_other(
        command: str) -> None:
    parser = gen.subcommands()[command]
    plain = parse_args([command], environ={})
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        assert action.dest in SAMPLES, f"add a sample value for {command} --{action.dest}"
        variable = relay_cli.ENV_PREFIX + action.dest.upper()
        read = parse_args([command], environ={variable: SAMPLES[action.dest]}) != plain
        assert read == (action.dest in gen.SUBCOMMAND_ENV[command]), (
            f"{command} {'reads' if read else 'ignores'} {variable}")


def test_the_reference_changes_when_an_option_does() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", metavar="DIR", help="where the spool lives")
    rows = gen._rows(parser, "ENCLAVE_LOG_RELAY_")
    assert rows[-1] == "| `--spool DIR` | `ENCLAVE_LOG_RELAY_SPOOL` | where the spool lives |"
    rows = gen._rows(parser, "ENCLAVE_LOG_RELAY_", env=set())
    assert rows[-1] == f"| `--spool DIR` | {gen.NO_VARIABLE} | where the spool lives |"


REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:docker|fluentbit|k8s|systemd|tools|examples|enclave_side|parent_side|"
    r"fluent_forward)/[\w./-]*[\w/])")


def test_every_repository_path_in_the_readme_exists() -> None:
    named = set(REPO_PATH.findall(README.read_text()))
    assert "fluentbit/iam/cloudwatch_logs.json" in named
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"README names paths that do not exist: {missing}"


def test_readme_quotes_the_enclave_images_cmd() -> None:
    dockerfile = ROOT / "docker" / "enclave" / "Dockerfile"
    cmd = next(i for i in stages(parse_dockerfile(dockerfile.read_text()))[-1]
               if i.keyword == "CMD")
    assert f"CMD {cmd.argument}" in README.read_text()


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_to_a_section_has_its_heading() -> None:
    text = README.read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert "reload" in links and "the-relays-own-records" in links
    assert not links - anchors, f"links to no heading: {sorted(links - anchors)}"


def test_github_anchor_drops_what_github_drops() -> None:
    assert github_anchor("Migrating from `exec` + `nitro-cli console`") == (
        "migrating-from-exec--nitro-cli-console")
    assert github_anchor("The relay's own records") == "the-relays-own-records"


def test_readme_status_example_has_the_columns_status_prints() -> None:
    snap = {"relay": {"version": "0.1.0", "hostname": "h", "uptime_s": 60, "listen": "l",
                      "output": "o", "connections_open": 0, "protocol_errors": 0,
                      "refused": 0},
            "enclaves": [], "spool": {"mode": "memory-only"},
            "upstream": {"kind": "stdout"}}
    header = format_table(snap).splitlines()[1]
    example = README.read_text().split("enclave-log-relay status\n", 1)[1].split("```", 1)[0]
    assert header.split() == example.splitlines()[1].split()


@pytest.mark.slow
def test_readme_demo_sample_has_the_shape_of_a_real_make_demo_run() -> None:
    """Records, tags, field names and ``log`` texts; not times, pids or paths."""
    assert demo.differences(demo.sample(README.read_text()), demo.run(PYTHON)) == [], (
        "README's make demo sample is out of date: run python tools/gen_demo_sample.py")


def test_the_demo_sample_check_sees_a_changed_log() -> None:
    """The drift that once went unseen: agent.metrics' ``log`` became its JSON."""
    sample = demo.sample(README.read_text())
    metrics = next(line for line in sample.splitlines() if '.agent.metrics"' in line)
    record = json.loads(metrics)
    record["record"]["log"] = "agent metrics"
    changed = sample.replace(metrics, json.dumps(record))
    assert demo.differences(sample, sample) == []
    assert len(demo.differences(sample, changed)) == 2


def test_the_vsock_tiers_table_and_count_name_its_real_tests() -> None:
    """The tier's tests run only in a guest, so the README's account of them is checked
    against their source: every test the table names exists, and their number is right."""
    text = README.read_text()
    defined = {f"{path.name}::{node.name}" for path in (ROOT / "tests" / "vsock").glob("test_*.py")
               for node in ast.parse(path.read_text()).body
               if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
               and node.name.startswith("test_")}
    named = set(re.findall(r"`(test_\w+\.py::test_\w+)`", text))
    assert named and named <= defined, f"no such test: {sorted(named - defined)}"
    count = re.search(r"the tier: one guest boot and its (\d+) tests", text)
    assert count is not None and int(count[1]) == len(defined)
