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
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio

from fakes.fluentbit import FakeFluentBit
from fluent_forward.conventions import chunk_id
from fluent_forward.entries import EventTime, iter_entries, pack_entry
from fluent_forward.tags import escape_tag
from parent_side.spool_format import FRAME, HEADER
from tests.conftest import StartRelay, delivered
from tests.fakes.nitro_cli import FakeNitroCli
from tests.helpers import read_json_lines, stop_process, wait_until
from tests.integration.test_faults import Procs
from tests.integration.test_relay_bad_input import RawAgent
from tests.integration.test_trust import refused, relay_with_enclaves
from tests.property.test_hostile_round2 import HOSTILE_TAGS
from tests.realfb import fluent_bit_binary

pytestmark = pytest.mark.asyncio

MIB = 1 << 20


@pytest_asyncio.fixture
async def procs(sockdir: Path) -> AsyncIterator[Procs]:
    """Relay subprocesses (test_faults' ``RelayProc``), all stopped at the end."""
    p = Procs(sockdir)
    try:
        yield p
    finally:
        for relay in p.relays:
            await relay.stop()


@pytest_asyncio.fixture
async def fluentbit(sockdir: Path) -> AsyncIterator[FakeFluentBit]:
    async with FakeFluentBit(f"unix://{sockdir}/fb.sock") as fb:
        yield fb
#: The tag RawAgent's batches arrive under (a local peer).
APP = "enclave.local.app.stdout"


# -- huge chunk ids from peers that never read ------------------------------------------

async def never_reading_attacker(path: Path, chunk_bytes: int, until: float) -> int:
    """Frames with ``chunk_bytes`` chunk ids until ``until`` (monotonic), reading
    nothing, reconnecting whenever the relay closes; returns the frames sent."""
    loop = asyncio.get_running_loop()
    sent = 0
    while loop.time() < until:
        _, writer = await asyncio.open_unix_connection(str(path))
        try:
            while loop.time() < until:
                chunk = f"{sent:08d}" + "A" * (chunk_bytes - 8)
                writer.write(msgpack.packb(["attack", pack_entry(EventTime(1, 0), {"log": "a"}),
                                            {"chunk": chunk}]))
                sent += 1
                async with asyncio.timeout(max(0.01, until - loop.time())):
                    await writer.drain()  # waits once the relay stops reading us
        except (OSError, TimeoutError):
            pass
        finally:
            writer.transport.abort()  # gone without reading a byte: a reset
    return sent


async def test_huge_chunk_ids_from_peers_that_never_read_leave_the_relays_memory_flat(
        fluentbit: FakeFluentBit, procs: Procs, sockdir: Path) -> None:
    """Issue 17: 8 connections sending 3.5 MB chunk ids for 15 s, never reading their
    acks, took a relay from 109 MB to 1.27 GB RSS, and it stayed there. Here 2 such
    peers for 3 s with 1 MB ids (before the fix: 64 ids held per connection, and the
    connections' buffers pinned by reference cycles after they died), an honest agent
    acked throughout."""
    sock = sockdir / "relay.sock"
    relay = procs.relay(f"unix://{sock}", fluentbit.url)
    await relay.start()
    honest = await RawAgent.connect(sock)
    await honest.send_batch(["before"])
    before = peak = relay.rss()
    loop = asyncio.get_running_loop()
    until = loop.time() + 3.0
    attack = asyncio.gather(*(never_reading_attacker(sock, MIB, until) for _ in range(2)))
    acked = 0
    while not attack.done():
        await honest.send_batch([f"during {acked}"])  # fails the test if not acked
        acked += 1
        peak = max(peak, relay.rss())
        await asyncio.sleep(0.05)  # pacing the honest agent, not synchronisation
    frames = sum(await attack)
    await honest.send_batch(["after"])
    after = relay.rss()
    await honest.close()
    print(f"relay RSS before {before / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, after "
          f"{after / MIB:.0f} MiB; {frames} attack frames; honest batches acked: {acked}")
    assert acked >= 10
    assert peak - before < 64 * MIB, f"the attack grew the relay by {(peak - before) / MIB:.0f} MiB"
    assert after - before < 32 * MIB, f"{(after - before) / MIB:.0f} MiB stayed"
    assert "option chunk is 1048576 long" in relay.log()


# -- a corrupt stretch in the middle of a spool segment --------------------------------

async def test_corruption_mid_segment_after_a_sigkill_costs_only_the_batches_it_hit(
        fluentbit: FakeFluentBit, procs: Procs, sockdir: Path) -> None:
    """Issue 17: 16 bytes flipped in the middle of a 375 KB segment after a SIGKILL cost
    the 55 intact batches after them. Here: 60 batches of 50 records spooled (Fluent Bit
    paused: nothing leaves the spool), the relay killed, 16 bytes flipped in the middle
    of the segment, the relay restarted: everything but the batch hit arrives, the bad
    bytes are in the dead-letter file, and the log names the spool as the loser."""
    sock = sockdir / "relay.sock"
    relay = procs.relay(f"unix://{sock}", fluentbit.url)
    await relay.start()
    fluentbit.pause()
    agent = await RawAgent.connect(sock)
    for b in range(60):
        await agent.send_batch([f"b{b:02d} r{r:02d} " + "x" * 60 for r in range(50)])
    await relay.kill()  # acked means fsynced: all 60 are in the spool
    with contextlib.suppress(ConnectionError):
        await agent.close()
    (segment,) = relay.spool.glob("*.seg")
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    hit = {batch_number(data, start, end) for start, end in entry_spans(bytes(data))
           if start < middle + 16 and middle < end} - {None}
    data[middle:middle + 16] = bytes(x ^ 0xFF for x in data[middle:middle + 16])
    segment.write_bytes(bytes(data))
    fluentbit.resume()
    await relay.start()
    expected = {f"b{b:02d} r{r:02d} " + "x" * 60 for b in range(60) if b not in hit
                for r in range(50)}

    def delivered_logs() -> set[str]:
        return {str(r.record["log"]) for r in fluentbit.records if r.tag == APP}

    await fluentbit.wait_for(lambda: delivered_logs() >= expected, 30, "every intact batch")
    got = delivered_logs()
    print(f"segment of {len(data)} bytes, 16 flipped at {middle}: batches hit {sorted(hit)}; "
          f"records delivered {len(got)} of {60 * 50}")
    assert got == expected and 1 <= len(hit) <= 2
    letters = [json.loads(line) for line in (relay.spool / "dead-letter.jsonl").read_text()
               .splitlines()]
    assert len(letters) == 1 and letters[0]["reason"].startswith("corrupt spool bytes")
    assert "lost by the spool, not by the agents" in relay.log()
    assert "torn or corrupt tail" not in relay.log()
    assert "skipped" not in relay.log(), "the gap was blamed on the agent"


def batch_number(segment: bytes | bytearray, start: int, end: int) -> int | None:
    """Which of the test's batches the spool entry at ``[start, end)`` holds (None: one
    of the relay's own records)."""
    tag, entries, *_ = msgpack.unpackb(bytes(segment[start + FRAME.size:end]))
    if tag != APP:
        return None
    _, record = next(iter_entries(entries))
    return int(record["log"][1:3])


def entry_spans(data: bytes) -> list[tuple[int, int]]:
    """``[start, end)`` of each entry of a segment, by its framing (as written)."""
    spans, pos = [], HEADER.size
    while pos + FRAME.size <= len(data):
        length, _ = FRAME.unpack_from(data, pos)
        spans.append((pos, pos + FRAME.size + length))
        pos = spans[-1][1]
    return spans


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

#: Tags that follow the rule, and nothing else (what match_regex routes).
RULE_REGEX = r"^enclave\.local\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


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
    binary = fluent_bit_binary()
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
