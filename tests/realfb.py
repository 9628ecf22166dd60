"""Which real Fluent Bit the tests that need the real peer run.

The binary is ``$FLUENT_BIT``, else the project's test copy
(``../shared/tools/fluent-bit-4.2.8/fluent-bit`` from the repository's root), else
``fluent-bit`` on PATH. Without one, the tests skip, saying why; under CI=true that is a
failure instead.

The process itself is ``tests.fluentbit.peer.RealFluentBit``.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers import ROOT

__all__ = ["fluent_bit_binary"]

SHARED_COPY = ROOT.parent / "shared" / "tools" / "fluent-bit-4.2.8" / "fluent-bit"


def fluent_bit_binary() -> str:
    """The Fluent Bit to run, or skip (fail under CI=true) saying why."""
    named = os.environ.get("FLUENT_BIT")
    if named:  # named by the user: that one, not another found elsewhere
        if os.access(named, os.X_OK):
            return named
        why = f"FLUENT_BIT={named} is not an executable file"
    else:
        for candidate in (str(SHARED_COPY), shutil.which("fluent-bit")):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
        why = ("no Fluent Bit: set FLUENT_BIT, or put fluent-bit on PATH (the project's "
               "test copy is ../shared/tools/fluent-bit-4.2.8/fluent-bit)")
    if os.environ.get("CI") == "true":
        pytest.fail(why + "; under CI=true this test must run")
    pytest.skip(why)
