"""The trust boundary: who may connect, whose logs these are, and a fair share.

These machines must not open AF_VSOCK sockets, so a vsock peer is stood in for by a
Unix connection whose CID the test chooses (``Listener.peer_of`` is the seam); the
real CID path is tested in the QEMU guest tier (tests/vsock). ``nitro-cli`` is a
fake on disk that prints describe-enclaves JSON the test controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest

from fluent_forward.aio import PeerAddress
from fluent_forward.endpoints import Scheme
from parent_side.identity import EnclaveRegistry, parse_cid_set
from parent_side.relay import Relay
from tests.conftest import StartRelay, delivered
from tests.fakes.nitro_cli import ENCLAVES, FakeNitroCli
from tests.helpers import MS, read_json_lines, wait_until, within
from tests.integration.test_relay_bad_input import RawAgent

pytestmark = pytest.mark.asyncio



async def refused(reader: asyncio.StreamReader) -> bool:
    """The relay closed without a word: EOF, or a reset (it never read what we sent)."""
    try:
        return await within(reader.read(100), "the relay to close") == b""
    except ConnectionResetError:
        return True


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        await writer.wait_closed()


class AsCid:
    """Make the relay see each next connection as coming from the CID given."""

    def __init__(self, relay: Relay) -> None:
        self.cids: list[int] = []
        relay.listener.peer_of = self.peer_of

    def peer_of(self, writer: asyncio.StreamWriter) -> PeerAddress:
        cid = self.cids.pop(0)
        return PeerAddress(Scheme.VSOCK, cid, f"vsock://{cid}:{50000 + cid}")

    async def connect(self, sock: Path, cid: int, *, handshake: bool = True) -> RawAgent:
        self.cids.append(cid)
        return await RawAgent.connect(sock, handshake=handshake)


async def relay_with_enclaves(start_relay: StartRelay, sockdir: Path, nitro: FakeNitroCli | None,
                              **options: object) -> tuple[Relay, AsCid, Path, Path]:
    sock, out = sockdir / "relay.sock", sockdir / "out.jsonl"
    relay = await start_relay(f"unix://{sock}", f"file://{out}", **options)
    if nitro is not None:
        relay.listener.registry = EnclaveRegistry((str(nitro.path), "describe-enclaves"),
                                                  min_refresh=0)
    else:
        relay.listener.registry = EnclaveRegistry(("/nonexistent/nitro-cli",
                                                   "describe-enclaves"))
    return relay, AsCid(relay), sock, out


async def test_records_carry_the_parents_view_of_the_enclave(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, out = await relay_with_enclaves(
        start_relay, sockdir, nitro_cli, allowed_cids=parse_cid_set(["4-"]), stamp_records=True)
    for cid, line in ((16, "from payments"), (17, "from debug"), (18, "from nameless")):
        agent = await as_cid.connect(sock, cid)
        await agent.send_batch([line])
        await agent.close()
    await delivered(relay)
    got = {r["record"]["log"]: r for r in read_json_lines(out)}  # type: ignore[index]
    pay, dbg, anon = got["from payments"], got["from debug"], got["from nameless"]
    assert pay["tag"] == "enclave.payments.app.stdout"
    assert pay["record"]["enclave_id"] == "i-0abc-enc0001"  # type: ignore[index]
    assert pay["record"]["enclave_pcr0"] == "ab" * 48  # type: ignore[index]
    assert pay["record"]["enclave_debug"] is False  # type: ignore[index]
    assert pay["record"]["claimed_hostname"] == "honest", "the agent's word, kept apart"  # type: ignore[index]
    assert dbg["tag"] == "enclave.debug_box.app.stdout", "the name is sanitised for tags"
    assert dbg["record"]["enclave_debug"] is True  # type: ignore[index]
    assert anon["tag"] == "enclave.cid-18.app.stdout", "no EnclaveName: the CID"


async def test_a_reused_cid_gets_the_identity_of_the_enclave_there_now(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli)
    agent = await as_cid.connect(sock, 16)
    await agent.send_batch(["old payments"])
    await agent.close()
    # payments terminates; a new enclave is started and gets CID 16 again.
    restarted = dict(ENCLAVES[0], EnclaveName="reporting", EnclaveID="i-0abc-enc0009")
    nitro_cli.set([restarted, *ENCLAVES[1:]])
    agent = await as_cid.connect(sock, 16)
    await agent.send_batch(["new reporting"])
    await agent.close()
    await delivered(relay)
    tags = {r["record"]["log"]: r["tag"] for r in read_json_lines(out)}  # type: ignore[index]
    assert tags == {"old payments": "enclave.payments.app.stdout",
                    "new reporting": "enclave.reporting.app.stdout"}


async def test_a_refused_cid_never_gets_a_byte_read(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli,
        caplog: pytest.LogCaptureFixture) -> None:
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli)
    honest = await as_cid.connect(sock, 16)
    caplog.set_level(logging.WARNING)
    for cid in (1, 3, 3, 3):  # the parent's own processes: loopback and the host CID
        as_cid.cids.append(cid)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b"\x93\xa1t\x01\x80" * 100)  # would be valid if it were read
        assert await refused(reader), "a refused peer got a HELO: the relay talked to it"
        await close_quietly(writer)
    assert relay.listener.stats.refused_cid == 4
    assert relay.listener.stats.connections == 1, "only the honest agent was served"
    refusals = [r for r in caplog.records if "refused a connection from CID" in r.getMessage()]
    assert len(refusals) == 2, "logged once per CID per interval, not once per attempt"
    await honest.send_batch(["still here"])
    await honest.close()


async def test_the_default_allow_list_takes_enclave_cids_only(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, _ = await relay_with_enclaves(start_relay, sockdir, nitro_cli)
    assert str(relay.config.allowed_cids) == "4-"
    for cid in (0, 1, 2, 3):
        as_cid.cids.append(cid)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert await refused(reader)
        await close_quietly(writer)
    agent = await as_cid.connect(sock, 4)
    await agent.send_batch(["cid 4 is an enclave CID"])
    await agent.close()


async def test_require_known_enclave_refuses_cids_describe_enclaves_does_not_list(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, _ = await relay_with_enclaves(start_relay, sockdir, nitro_cli,
                                                       require_known_enclave=True)
    as_cid.cids.append(99)
    reader, writer = await asyncio.open_unix_connection(str(sock))
    assert await refused(reader)
    await close_quietly(writer)
    agent = await as_cid.connect(sock, 16)
    await agent.send_batch(["known"])
    await agent.close()


async def test_without_nitro_cli_enclaves_are_named_by_cid_with_one_warning(
        start_relay: StartRelay, sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, None)
    relay.listener.registry.min_refresh = 0  # type: ignore[union-attr]
    for cid in (16, 17, 16):
        agent = await as_cid.connect(sock, cid)
        await agent.send_batch([f"cid {cid}"])
        await agent.close()
    await delivered(relay)
    assert {r["tag"] for r in read_json_lines(out)} == {"enclave.cid-16.app.stdout",
                                                        "enclave.cid-17.app.stdout"}
    warnings = [r for r in caplog.records if "named by their CID" in r.getMessage()]
    assert len(warnings) == 1


async def test_describe_enclaves_is_asked_again_when_a_cid_connects(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, _ = await relay_with_enclaves(start_relay, sockdir, nitro_cli)
    before = nitro_cli.runs
    agent = await as_cid.connect(sock, 16)
    await agent.close()
    assert nitro_cli.runs == before + 1


async def test_connections_per_enclave_are_capped_and_others_unaffected(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, _ = await relay_with_enclaves(start_relay, sockdir, nitro_cli,
                                                       max_connections_per_enclave=2)
    first = [await as_cid.connect(sock, 16) for _ in range(2)]
    as_cid.cids.append(16)
    reader, writer = await asyncio.open_unix_connection(str(sock))
    assert await refused(reader), "a third connection got in"
    await close_quietly(writer)
    assert relay.listener.stats.refused_limit == 1
    other = await as_cid.connect(sock, 17)
    await other.send_batch(["another enclave is not held back"])
    for agent in (*first, other):
        await agent.close()


async def test_a_fast_enclave_is_slowed_to_its_rate_not_dropped_and_others_keep_pace(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    rate = 1 << 20  # 1 MiB/s per enclave; the bucket starts with one second's worth
    relay, as_cid, sock, out = await relay_with_enclaves(start_relay, sockdir, nitro_cli,
                                                         rate_limit=rate)
    hog = await as_cid.connect(sock, 16)
    polite = await as_cid.connect(sock, 17)
    big = ["h" * 1000] * 500  # ~0.5 MB per batch

    async def flood() -> float:
        started = time.monotonic()
        for _ in range(6):
            await hog.send_batch(big)
        return time.monotonic() - started

    flooding = asyncio.ensure_future(flood())
    await asyncio.sleep(100 * MS)
    started = time.monotonic()
    await polite.send_batch(["quick"])
    polite_latency = time.monotonic() - started
    hog_time = await within(flooding, "the flood to be let through", timeout=30)
    # 3 MB at 1 MiB/s after a 1 MiB burst: about 2 s; well over 1 s in any case.
    assert hog_time > 1.0, f"the hog was not slowed ({hog_time:.2f}s)"
    assert polite_latency < 1.0, f"the other enclave waited {polite_latency:.2f}s"
    await hog.close()
    await polite.close()
    await delivered(relay)
    assert sum(1 for r in read_json_lines(out) if r["record"]["log"] == "h" * 1000) == 3000  # type: ignore[index]


async def test_too_many_connections_are_refused(
        start_relay: StartRelay, sockdir: Path, nitro_cli: FakeNitroCli) -> None:
    relay, as_cid, sock, _ = await relay_with_enclaves(start_relay, sockdir, nitro_cli,
                                                       max_connections=3)
    held = [await as_cid.connect(sock, cid) for cid in (16, 17, 18)]
    as_cid.cids.append(19)
    reader, writer = await asyncio.open_unix_connection(str(sock))
    assert await refused(reader)
    await close_quietly(writer)
    await held[0].send_batch(["the held ones still work"])
    for agent in held:
        await agent.close()
    await wait_until(lambda: relay.listener.stats.open_connections == 0, "connections to close")
    again = await as_cid.connect(sock, 19)
    await again.send_batch(["room again"])
    await again.close()



