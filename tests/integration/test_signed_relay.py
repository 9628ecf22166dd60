"""A signing agent through a relay without the signed fast path, into its JSON lines.

A relay older than ``fastpath.signed_shape_count`` validates a signing agent's batches
by its general path; here that relay is this one with the fast path refused, so the
test shows that signing needs no relay change. The relay's own JSON-lines output is
what enclave-log-verify then reads.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from fluent_forward import fastpath
from logverify import cli
from tests.agentproc import python_child, start_agent
from tests.conftest import StartRelay, delivered, relay_url
from tests.helpers import wait_until
from tests.signedlog import PCR0, pki

pytestmark = pytest.mark.asyncio


async def test_a_signing_agent_through_a_relay_that_knows_nothing_of_it(
        start_relay: StartRelay, sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused: list[int] = []

    def older_relay(*args: object) -> None:
        refused.append(1)
        return None

    monkeypatch.setattr(fastpath, "signed_shape_count", older_relay)
    monkeypatch.setattr(fastpath, "c_count", None)  # nor had it the C check
    out = sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sockdir}/relay.sock", f"file://{out}")
    n = 500
    run = await start_agent(relay_url(relay), python_child(
        f"for i in range({n}): print(f'line {{i}}')"), "--sign", "--nsm",
        f"test-pki:{pki()}", "--tag", "svc", "--metrics-interval", "0")
    assert await run.wait() == 0, run.stderr.decode()
    await delivered(relay)
    await wait_until(lambda: out.exists() and "\\nfinal\\n" in out.read_text(),
                     "the final checkpoint in the relay's output")
    assert refused, "the relay never looked at a signed batch"
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        code = cli.main([str(out), "--root-cert", str(pki() / "root.pem"), "--pcr0", PCR0,
                         "--json"])
    result = json.loads(report.getvalue())
    assert code == 0, result["findings"]
    (boot,) = result["boots"].values()
    assert {s["tag"]: s["verified"] for s in boot["streams"].values()}["svc.stdout"] == n
