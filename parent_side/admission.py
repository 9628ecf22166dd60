"""Who gets a connection slot: the caps, and a reserve for enclaves with none open.

Pure: the listener asks ``refusal`` before reading a byte of a new connection.

With the per-enclave cap raised, one enclave's idle or dripping connections could
hold every slot, and an honest enclave was refused for as long as they stayed. So the
last ``reserved`` slots of ``max_connections`` only go to an enclave that has no
connection open: whatever one enclave holds, every other one can always get one.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_RESERVED_CONNECTIONS", "Slots", "refusal"]

#: Slots kept for enclaves with no connection open. A parent instance runs a handful
#: of enclaves (Nitro allows four per parent), so this leaves room for every one of
#: them, and for a few reconnects racing their old connection's close.
DEFAULT_RESERVED_CONNECTIONS = 16


@dataclass(frozen=True, slots=True)
class Slots:
    """The caps on open connections."""

    max_connections: int
    max_per_enclave: int
    reserved: int = DEFAULT_RESERVED_CONNECTIONS

    @property
    def shared(self) -> int:
        """Slots any enclave may take; the rest are the reserve. The reserve is at most
        half of the slots, so that a small ``max_connections`` (a test, a reload) still
        lets an enclave open a second connection."""
        return self.max_connections - min(self.reserved, self.max_connections // 2)


def refusal(slots: Slots, open_total: int, open_enclave: int) -> str | None:
    """Why a new connection from an enclave with ``open_enclave`` connections open must
    be refused (naming the option), or None to admit it."""
    if open_total >= slots.max_connections:
        return f"{open_total} connections open (--max-connections)"
    if open_enclave >= slots.max_per_enclave:
        return f"it has {open_enclave} open (--max-connections-per-enclave)"
    if open_enclave and open_total >= slots.shared:
        return (f"it has {open_enclave} open and the last "
                f"{slots.max_connections - slots.shared} slots are kept for enclaves with "
                "none (--reserved-connections)")
    return None
