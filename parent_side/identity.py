"""Whose logs these are: the parent's view of a peer, stamped into the tag.

The relay decides the identity when it accepts a connection, from what the kernel
says of the peer (for vsock, the CID the hypervisor set), never from what the agent
says of itself. The tag becomes ``enclave.<name>.<agent's tag>``; the entries pass
byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fluent_forward.aio import Peer
from fluent_forward.endpoints import Scheme

__all__ = ["TAG_ROOT", "Identity", "identity_of", "sanitize_name"]

TAG_ROOT = "enclave"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_name(name: str) -> str:
    """A name safe inside a tag: every character outside ``[A-Za-z0-9_-]`` becomes ``_``."""
    return _UNSAFE.sub("_", name) or "_"


@dataclass(frozen=True, slots=True)
class Identity:
    """The parent's view of a connected peer.

    Attributes:
        name: the sanitised name used in tags (``cid-16``, ``local``).
        cid: the vsock CID, or None for local peers.
    """

    name: str
    cid: int | None = None

    @property
    def tag_prefix(self) -> str:
        return f"{TAG_ROOT}.{self.name}."


def identity_of(peer: Peer) -> Identity:
    """``cid-<N>`` for a vsock peer, ``local`` for TCP and Unix peers."""
    if peer.scheme is Scheme.VSOCK and peer.cid is not None:
        return Identity(sanitize_name(f"cid-{peer.cid}"), peer.cid)
    return Identity("local")
