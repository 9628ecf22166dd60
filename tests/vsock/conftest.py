"""The vsock tier's fixtures; and outside the QEMU guest, its skip.

Kept light on purpose (under TCG every import costs): the tier runs with its own small
pytest configuration (guest.ini), which keeps tests/conftest.py and its asyncio
fixtures out of the guest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vsock.support import IN_GUEST, NOT_IN_GUEST, PORT_SHARED, Relay, start_relay

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside the guest, skip every test of this directory before any fixture runs.

    (The hook sees the whole session's items: only ours are marked.)
    """
    if IN_GUEST:
        return
    skip = pytest.mark.skip(reason=NOT_IN_GUEST)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Outputs and logs of the session's processes (tmpfs in the guest)."""
    return tmp_path_factory.mktemp("vsock-tier")


@pytest.fixture(scope="session")
def shared_relay(workdir: Path) -> Iterator[Relay]:
    """One relay for the tests that need only a healthy relay (each uses its own tag).

    A relay start costs seconds under TCG, so the tests that do not kill it share it;
    the stall test stops it for a while and lets it go on. At the end it must stop
    cleanly on SIGTERM, with no traceback in its log.
    """
    relay = start_relay(PORT_SHARED, workdir / "shared.jsonl", workdir / "shared-relay.log")
    try:
        yield relay
    finally:
        status = relay.stop()
        assert status == 0, f"the shared relay exited {status}; log:\n{relay.log_tail()}"
        assert not relay.tracebacks(), relay.log_tail()
