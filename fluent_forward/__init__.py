"""Fluent Forward v1: the codec and transport both sides of nitro-enclave-logs share.

``codec``, ``handshake``, ``endpoints``, ``retry`` and ``errors`` are pure
(no sockets, no asyncio); ``aio`` is the only module that touches either.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
