"""The relay's default allow-list refuses the guest's peers (CID 1, loopback).

The relay has an allow-list of peer CIDs (``--allow-cid``), enclave CIDs (4 and up)
by default; CID 1 is the host's own loopback, never an enclave. The other tests pass
``--allow-cid 1`` (support.allow_cid_1). The behaviour is asserted by its effects: no
ack, no record, and the relay names the CID it refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.vsock.support import (
    PORT_DEFAULT_ALLOW,
    logs_of,
    read_records,
    relay_has_allow_cid,
    socat_forward,
    start_relay,
)


def test_the_default_allow_list_refuses_cid_1(workdir: Path) -> None:
    if not relay_has_allow_cid():
        pytest.skip("the relay has no --allow-cid option yet (the trust issue): nothing to "
                    "refuse CID 1 with; this test runs once `serve --help` lists it")
    out = workdir / "default-allow.jsonl"
    relay = start_relay(PORT_DEFAULT_ALLOW, out, workdir / "default-allow-relay.log",
                        allow_list=[])  # the default
    try:
        replies = socat_forward(PORT_DEFAULT_ALLOW, "refused", "should not pass",
                                "cmVmdXNlZC1jaHVuay0wMDAx", 2, timeout=10.0)
        assert {"ack": "cmVmdXNlZC1jaHVuay0wMDAx"} not in replies, (
            "the relay acked a frame from CID 1 under its default allow-list")
        assert not logs_of(read_records(out), "refused"), (
            "a record from CID 1 passed the default allow-list")
        assert re.search(r"cid[- ]?1\b", relay.log(), re.I), (
            "the relay did not log which CID it refused:\n" + relay.log_tail())
    finally:
        relay.stop()
