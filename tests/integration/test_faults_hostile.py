"""Fault tests of issue 17: a relay attacked as an attacker would, an honest agent alongside.

Each failed on the code before its fix: a reserve of connection slots keeps an
honest enclave in while another holds all the rest; huge chunk ids from peers that
never read their acks no longer grow the relay's memory (measured from /proc, a real
relay subprocess); a corrupt stretch in the middle of a spool segment costs only the
batch it hit, across a SIGKILL and restart; hostile tags reach a real Fluent Bit
escaped, and its ``match`` and ``match_regex`` routing works on what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio

from fluent_forward.codec import EventTime, chunk_id, pack_entry
from fluent_forward.tags import escape_tag
from tests.conftest import StartRelay, delivered
from tests.fakes.nitro_cli import FakeNitroCli
from tests.helpers import ROOT, read_json_lines, stop_process, wait_until
from tests.integration.test_relay_bad_input import RawAgent
from tests.integration.test_trust import refused, relay_with_enclaves
from tests.property.test_hostile_round2 import HOSTILE_TAGS

pytestmark = pytest.mark.asyncio


async def test_one_enclave_holding_every_slot_it_may_never_locks_another_out(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    """Its own cap raised to all the slots, one enclave opens connections until
    refused and holds them; another enclave, with none open, still gets in (issue 17:
    256 drip connections held every slot and the honest agent was refused)."""
    relay, as_cid, sock, out = await relay_with_enclaves(
        start_relay, sockdir, nitro_cli, max_connections=40, max_connections_per_enclave=40)
    held: list[RawAgent] = []
    try:
        while True:
            as_cid.cids.append(16)
            reader, writer = await asyncio.open_unix_connection(str(sock))
            if await refused(reader):  # else it read the relay's HELO
                writer.close()
                break
            held.append(RawAgent(reader, writer))
            assert len(held) <= 40
        assert len(held) < 40, "the hog took every slot"
        honest = await as_cid.connect(sock, 17)
        await honest.send_batch(["an enclave with none open gets in"])
        await honest.close()
        # And the hog cannot take the reserve with a second enclave's name: it has one.
        as_cid.cids.append(16)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert await refused(reader)
        writer.close()
    finally:
        for agent in held:
            with contextlib.suppress(ConnectionError):
                await agent.close()
    await delivered(relay)
    assert [r["record"]["log"] for r in read_json_lines(out)] == [  # type: ignore[index]
        "an enclave with none open gets in"]
    assert relay.listener.stats.refused_limit == 2


# -- tags through a real Fluent Bit -----------------------------------------------------

#: The project's Fluent Bit for tests, relative to the repository root (see its README).
SHARED_FLUENT_BIT = ROOT / "../shared/tools/fluent-bit-4.2.8/fluent-bit"
#: Tags that follow the rule, and nothing else (what match_regex routes).
RULE_REGEX = r"^enclave\.local\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


def real_fluent_bit() -> str:
    """``$FLUENT_BIT``, else the shared build, else ``fluent-bit`` on PATH; skip if none
    (under CI=true that is a failure: CI has the shared build)."""
    for candidate in (os.environ.get("FLUENT_BIT"), str(SHARED_FLUENT_BIT)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = subprocess.run(["sh", "-c", "command -v fluent-bit"], capture_output=True,
                           text=True, check=False).stdout.strip()
    if found:
        return found
    reason = "no real Fluent Bit: set FLUENT_BIT=/path/to/fluent-bit"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def fluent_bit_config(d: Path) -> str:
    """In: forward on a Unix socket. Out: every tag (a file per tag, named by it), the
    tags matching the rule's regex, and one escaped tag by its exact name."""
    return f"""\
[SERVICE]
    flush        0.1
    log_level    info

[INPUT]
    name         forward
    unix_path    {d}/fb.sock

[OUTPUT]
    name         file
    match        enclave.local.*
    path         {d}/all

[OUTPUT]
    name         file
    match_regex  {RULE_REGEX}
    path         {d}/regex
    file         regex.out

[OUTPUT]
    name         file
    match        enclave.local.x_relay.lifecycle
    path         {d}/exact
    file         exact.out
"""


def file_output(path: Path) -> list[tuple[str, str]]:
    """(tag, log) of each line Fluent Bit's file output wrote: ``TAG: [TIME, {json}]``."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        tag, _, rest = line.partition(": [")
        out.append((tag, json.loads("[" + rest)[1]["log"]))
    return out


@pytest_asyncio.fixture
async def real_fluentbit(sockdir: Path) -> AsyncIterator[Path]:
    """A real Fluent Bit with ``fluent_bit_config``; yields its directory. Requested
    before ``start_relay``, it stops after the relay (which would otherwise wait out
    its shutdown timeout on an upstream gone)."""
    binary = real_fluent_bit()
    for sub in ("all", "regex", "exact"):
        (sockdir / sub).mkdir()
    conf = sockdir / "fluent-bit.conf"
    conf.write_text(fluent_bit_config(sockdir))
    with (sockdir / "fb.log").open("wb") as log:
        fb = await asyncio.create_subprocess_exec(binary, "-c", str(conf),
                                                  stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=subprocess.STDOUT)
    try:
        await wait_until(lambda: (sockdir / "fb.sock").exists() or fb.returncode is not None,
                         "Fluent Bit to listen")
        assert fb.returncode is None, (sockdir / "fb.log").read_text()
        yield sockdir
    finally:
        stop_process(fb)
        try:
            await asyncio.wait_for(fb.wait(), 10)
        except TimeoutError:
            fb.kill()
            await fb.wait()


async def test_hostile_tags_arrive_escaped_and_fluent_bit_routes_them(
        real_fluentbit: Path, start_relay: StartRelay) -> None:
    """The first round's tags (``../x``, an injected newline, NUL, a right-to-left
    override, invalid UTF-8, ``*``, ``x.**``, empty, 10 KB, ...) reach a real Fluent Bit
    escaped: ``match_regex`` on the tag rule routes every one, an exact ``match`` finds
    the escaped name, and the file output writes one file per tag inside its directory
    (before the fix ``../x`` named a file outside it, and the newline split the tag)."""
    d = real_fluentbit
    relay = await start_relay(f"unix://{d}/relay.sock", f"unix://{d}/fb.sock")
    agent = await RawAgent.connect(d / "relay.sock")
    for n, tag in enumerate(HOSTILE_TAGS):
        entry = pack_entry(EventTime(1_700_000_000, n), {"log": f"tag {n}"})
        agent.writer.write(msgpack.packb([tag, entry, {"chunk": chunk_id(b"hostile!", n)}],
                                         use_bin_type=True, unicode_errors="surrogateescape"))
        await agent.next_frame()  # acked: in the relay's spool
    await agent.close()
    await delivered(relay)
    regex = d / "regex" / "regex.out"
    await wait_until(lambda: len(file_output(regex)) == len(HOSTILE_TAGS),
                     "Fluent Bit to route every record by match_regex")
    expected = {f"tag {n}": f"enclave.local.{escape_tag(t)}" for n, t in enumerate(HOSTILE_TAGS)}
    assert dict((log, tag) for tag, log in file_output(regex)) == expected
    injected = HOSTILE_TAGS.index("x\nrelay.lifecycle")
    await wait_until(lambda: len(file_output(d / "exact" / "exact.out")) == 1, "the exact match")
    assert file_output(d / "exact" / "exact.out") == [
        ("enclave.local.x_relay.lifecycle", f"tag {injected}")]
    # One file per tag, each named by it, all inside the output's directory.
    await wait_until(lambda: len(list((d / "all").iterdir())) == len(set(expected.values())),
                     "a file per tag")
    assert {p.name for p in (d / "all").iterdir()} == set(expected.values())
    assert relay.listener.stats.tags_escaped == sum(t != escape_tag(t) for t in HOSTILE_TAGS)
