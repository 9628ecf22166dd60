"""The repository names no path of one machine: docs cite files by their project names.

A docstring that says where a reference lies on the author's machine is wrong on every
other one; the project's files are named from the repository root, the shared
reference documents by name.
"""

from __future__ import annotations

import re

from tests.deploy.wheels import checkout_files
from tests.helpers import ROOT

#: Home and work folders of the machines the project was written on, and a pyenv build.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home/[a-z_][\w-]*)/|\.pyenv/versions/\d")


def test_no_file_names_an_absolute_path_of_one_machine() -> None:
    found = []
    for name in checkout_files():
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                  if MACHINE_PATH.search(line)]
    assert not found, "name files from the repository root instead:\n" + "\n".join(found)


def test_the_pattern_finds_what_it_is_for() -> None:
    # Spelled in pieces, or this file would name them itself.
    assert MACHINE_PATH.search(f"written from /{'work'}/shared/reference/forward-protocol.md")
    assert MACHINE_PATH.search(f"(e.g. `/{'root'}/.{'pyenv'}/versions/3.11.7`)")
    assert not MACHINE_PATH.search("~/nitro-enclave-logs/examples/hello_app.py")
    assert not MACHINE_PATH.search("unix:///run/fluent-bit/forward.sock")
