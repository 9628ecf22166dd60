"""README.md stays true to the code and the files it points to.

- The configuration reference is generated from the argument parsers
  (tools/gen_config_reference.py); this test fails when they differ.
- Every repository path the README names exists.
- The enclave image's CMD quoted in the guide is the one in docker/enclave/Dockerfile.
"""

from __future__ import annotations

import argparse
import re

from tests.deploy.formats import parse_dockerfile, stages
from tests.helpers import ROOT, load_tool

gen = load_tool("gen_config_reference")
README = ROOT / "README.md"


def test_configuration_reference_matches_the_parsers() -> None:
    text = README.read_text()
    assert gen.current(text) == gen.generate(), (
        "README's configuration reference is out of date: "
        "run python tools/gen_config_reference.py")


def test_reference_lists_every_option_of_both_sides() -> None:
    section = gen.current(README.read_text())
    from enclave_side.cli import build_parser
    from parent_side.cli import _build

    for parser in (build_parser(), _build()[1]):
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert f"`{max(action.option_strings, key=len)}" in section


def test_the_reference_changes_when_an_option_does() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", metavar="DIR", help="where the spool lives")
    rows = gen._rows(parser, "ENCLAVE_LOG_RELAY_")
    assert rows[-1] == "| `--spool DIR` | `ENCLAVE_LOG_RELAY_SPOOL` | where the spool lives |"


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
