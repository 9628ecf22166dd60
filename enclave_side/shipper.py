"""Ship the buffer's batches to the relay.

A thin configuration of the shared ``ForwardClient``: on connect the agent waits
briefly for a HELO (our relay sends one at once; a plain Forward input sends none,
and then the agent goes on without a handshake); every batch not acked when a
connection is lost is resent first on the next one; slow acks on a live connection
are waited for, never taken for loss (a relay whose spool is full withholds acks
on purpose, so there is no ack timeout here). An idle agent sends our relay a
heartbeat every ``KEEPALIVE`` seconds, well within the relay's idle timeout.

The parent is untrusted (Nitro's threat model): the client accepts only small
frames of the client role (HELO, PONG, acks); an ack for a chunk not in flight on
the connection, or anything else unexpected, is counted and closes the connection,
and the agent reconnects and resends what was not acked.
"""

from __future__ import annotations

import logging

from fluent_forward.aio import ForwardClient
from fluent_forward.conventions import KEEPALIVE
from fluent_forward.endpoints import Endpoint
from fluent_forward.handshake import ClientHandshake

from .buffer import Buffer

__all__ = ["make_shipper"]


def make_shipper(endpoint: Endpoint, buffer: Buffer, handshake: ClientHandshake, *,
                 window: int, handshake_wait: float, connect_timeout: float,
                 max_backoff: float) -> ForwardClient:
    """The agent's client to the relay."""
    return ForwardClient(endpoint, buffer, handshake, handshake_wait=handshake_wait,
                         require_handshake=handshake.shared_key is not None, window=window,
                         connect_timeout=connect_timeout, max_backoff=max_backoff,
                         ack_timeout=None, keepalive=KEEPALIVE, name="relay",
                         logger=logging.getLogger("enclave_side.shipper"))
