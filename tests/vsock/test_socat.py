"""The project against an independent vsock peer: socat (Debian's, in the guest).

socat's ``VSOCK-LISTEN`` is the agent's peer and its ``VSOCK-CONNECT`` the relay's, so
neither end of these vsock connections is our own code: the agent connects to a
listener we did not write, and the relay accepts (and reads the CID of) a client we
did not write.
"""

from __future__ import annotations

from pathlib import Path

from tests.vsock.support import (
    PORT_SOCAT,
    Proc,
    Relay,
    logs_of,
    read_records,
    socat_forward,
    start_agent,
)


def test_agent_ships_through_a_socat_vsock_listener(shared_relay: Relay, workdir: Path) -> None:
    """agent -> socat VSOCK-LISTEN -> socat VSOCK-CONNECT -> relay, every line once."""
    socat = Proc("socat", ["socat", "-d", "-d", f"VSOCK-LISTEN:{PORT_SOCAT},fork",
                           f"VSOCK-CONNECT:1:{shared_relay.port}"], workdir / "socat.log")
    try:
        socat.wait_for_log(r"listening on", "socat to listen")
        n = 500
        agent = start_agent(PORT_SOCAT, "viasocat",
                            ["/bin/sh", "-c", f"seq -f 'via socat %06g' 0 {n - 1}"],
                            workdir / "socat-agent.log")
        try:
            status = agent.wait()
        finally:
            agent.stop()
        assert status == 0, agent.log_tail()
        got = logs_of(read_records(shared_relay.output), "viasocat.stdout")
        assert got == [f"via socat {i:06d}" for i in range(n)]
        assert "connected to relay vsock://1:" in agent.log()
    finally:
        socat.stop()


def test_relay_acks_a_frame_from_a_socat_vsock_client(shared_relay: Relay) -> None:
    """A Forward frame built by hand, sent by socat VSOCK-CONNECT: HELO, ack, stamped."""
    chunk = "c29jYXQtY2h1bmstMDAwMQ=="
    helo, ack = (socat_forward(shared_relay.port, "rawsocat", "hello from socat", chunk, 2)
                 + [None, None])[:2]
    assert isinstance(helo, list) and helo[0] == "HELO", f"expected HELO, got {helo!r}"
    assert ack == {"ack": chunk}, f"expected the ack of our chunk, got {ack!r}"
    # Acked means written and fsynced: no need to wait.
    records = [r for r in read_records(shared_relay.output) if r["tag"].endswith(".rawsocat")]
    assert [r["record"]["log"] for r in records] == ["hello from socat"], "the record is missing"
    assert records[0]["tag"] == "enclave.cid-1.rawsocat", (
        "the relay did not stamp the socat client's CID (1) into the tag")
