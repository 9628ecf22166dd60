"""Agent -> relay -> a real Fluent Bit's forward input, read back from its file output.

Over a Unix socket and over TCP, with and without ``--upstream-shared-key`` against the
input's ``shared_key``: every record arrives once, in order, under its tag, and its
nanosecond time intact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.agentproc import cleanup, python_child, start_agent
from tests.conftest import StartRelay, relay_url
from tests.fluentbit.conftest import MakeFluentBit
from tests.fluentbit.peer import error_lines
from tests.helpers import wait_until
from tests.integration.test_relay_bad_input import RawAgent

pytestmark = [pytest.mark.asyncio, pytest.mark.fluentbit]

STDOUT, STDERR = "enclave.local.app.stdout", "enclave.local.app.stderr"
KEY = "fb-shared-key"


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("shared_key", [None, KEY], ids=["keyless", "shared_key"])
async def test_every_record_arrives_once_with_its_tag_and_nanosecond_time(
        start_relay: StartRelay, make_fluentbit: MakeFluentBit, sockdir: Path,
        transport: str, shared_key: str | None) -> None:
    fb = make_fluentbit(transport=transport, shared_key=shared_key)
    await fb.start()
    relay = await start_relay(f"unix://{sockdir}/relay.sock", fb.url,
                              upstream_shared_key=shared_key, admin_socket=None)
    # A batch with times chosen to the nanosecond (RawAgent: 1700000000.000000000 + i ns).
    agent = await RawAgent.connect(sockdir / "relay.sock")
    await agent.send_batch([f"raw {i}" for i in range(1000)])
    await agent.close()
    n = 3000
    before = time.time_ns()
    run = await start_agent(relay_url(relay), python_child(
        f"import sys\nfor i in range({n}):\n    print(f'line {{i}}')\n"
        "    print(f'oops {i}', file=sys.stderr)\n"))
    try:
        assert await run.wait() == 0
        await wait_until(lambda: len(fb.out.tagged(STDOUT)) >= n + 1000
                         and len(fb.out.tagged(STDERR)) >= n, "every record in the file output")
        after = time.time_ns()
        raw = [r for r in fb.out.tagged(STDOUT) if str(r.record["log"]).startswith("raw ")]
        lines = [r for r in fb.out.tagged(STDOUT) if str(r.record["log"]).startswith("line ")]
        assert [r.record["log"] for r in raw] == [f"raw {i}" for i in range(1000)]
        assert [r.time_ns for r in raw] == [1_700_000_000 * 10**9 + i for i in range(1000)]
        assert [r.record["log"] for r in lines] == [f"line {i}" for i in range(n)]
        assert fb.out.logs(STDERR) == [f"oops {i}" for i in range(n)]
        times = [r.time_ns for r in lines]
        assert all(before <= t <= after for t in times)
        assert len({t % 1000 for t in times}) > 1, "nanoseconds, not micro- or milliseconds"
        assert error_lines(fb.log()) == []
    finally:
        await cleanup(run)
