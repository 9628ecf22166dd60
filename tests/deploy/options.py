"""What the deployment files rely on from the code, in one place.

The unit, the compose file and the Kubernetes manifests set relay options through
``ENCLAVE_LOG_RELAY_<OPTION>`` variables and pass agent options on command lines. Tests
check every one against the real argument parsers, except the options listed in
``PENDING_RELAY_OPTIONS``: options the files already use for features being built on
other branches. A relay without such an option ignores its variable. When the
feature lands, delete its entry here and the tests check it too.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from enclave_side import cli as agent_cli
from parent_side import cli as relay_cli
from tests.helpers import ROOT

__all__ = [
    "DEPLOY_FILES",
    "PENDING_RELAY_OPTIONS",
    "RELAY_ENV",
    "agent_options",
    "env_assignments",
    "relay_options",
]

#: Option dest -> why it is not checked yet (the feature is on another branch).
PENDING_RELAY_OPTIONS: dict[str, str] = {}

RELAY_ENV = relay_cli.ENV_PREFIX

#: Every file that configures the relay or the agent for a deployment.
DEPLOY_FILES = [
    ROOT / "systemd" / "enclave-log-relay.service",
    ROOT / "docker" / "parent" / "compose.yaml",
    ROOT / "docker" / "enclave" / "Dockerfile",
    ROOT / "docker" / "parent" / "Dockerfile",
    ROOT / "k8s" / "daemonset.yaml",
]


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.option_strings}


def relay_options() -> set[str]:
    """Dests of ``enclave-log-relay serve`` options."""
    return _dests(relay_cli.build_parser().commands["serve"])


def agent_options() -> set[str]:
    return _dests(agent_cli.build_parser())


_ASSIGNMENT = re.compile(r"(ENCLAVE_LOG_(?:RELAY|AGENT)_[A-Z0-9_]+)\s*(?:=|:\s*|\n\s*value:\s*)"
                         r"[\"']?([^\"'\s]*)")


def env_assignments(path: Path) -> dict[str, str]:
    """``ENCLAVE_LOG_*`` variables a file sets, as ``NAME=value``, ``NAME: value`` or
    a Kubernetes ``- name: NAME`` / ``value: ...`` pair."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"name:\s*(ENCLAVE_LOG_\w+)\s*\n", r"\1\n", text)
    return {m.group(1): m.group(2) for m in _ASSIGNMENT.finditer(text)}
