"""The test relays keep to their own folders (tests/conftest.py's ``start_relay``).

A relay's defaults are the system paths a real relay on the same machine uses
(/var/lib/enclave-log-relay, /run/enclave-log-relay/admin.sock); a test run as root
must not take them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parent_side.config import DEFAULT_ADMIN_SOCKET, DEFAULT_SPOOL
from tests.conftest import SYSTEM_PATHS, StartRelay


@pytest.mark.asyncio
async def test_a_test_relay_gets_its_spool_and_admin_socket_in_a_temporary_folder(
        start_relay: StartRelay, sockdir: Path) -> None:
    relay = await start_relay(f"unix://{sockdir}/relay.sock", "stdout")
    spool, admin = relay.config.spool, relay.config.admin_socket
    assert spool is not None and admin is not None
    assert os.path.dirname(spool) == os.path.dirname(admin)
    assert not any(p.startswith(s) for p in (spool, admin) for s in SYSTEM_PATHS)
    assert os.path.exists(admin), "the relay opened its admin socket there"


@pytest.mark.asyncio
@pytest.mark.parametrize("option", [{"admin_socket": DEFAULT_ADMIN_SOCKET},
                                    {"spool": DEFAULT_SPOOL},
                                    {"spool": DEFAULT_SPOOL + "/sub"}],
                         ids=["admin_socket", "spool", "under-spool"])
async def test_the_fixture_refuses_the_system_paths(
        start_relay: StartRelay, sockdir: Path, option: dict[str, str]) -> None:
    with pytest.raises(pytest.fail.Exception, match="must not use"):
        await start_relay(f"unix://{sockdir}/relay.sock", "stdout", **option)
