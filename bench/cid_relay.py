"""The relay, run as ``python -m parent_side serve`` would, but seeing enclaves.

    python -m bench.cid_relay serve --listen unix:///PATH ... (the relay's own options)

The fair share is per enclave identity, and off a Nitro parent every local peer is
``local`` (TCP, Unix) or CID 1 (the vsock guest): one identity. This bench must not open
AF_VSOCK sockets either, so it uses the relay's ``Listener.peer_of`` seam, as the trust
tests do: a Unix peer whose process has ``NEL_BENCH_CID=N`` in its environment (the
bench starts each agent with its own) is taken for the vsock peer ``N``. The peer's pid
comes from ``SO_PEERCRED``, its environment from ``/proc/PID/environ``; anything else
is left as the relay would see it. Without a registry (the listen is not vsock) the
identity is ``cid-N``: distinct per agent, which is all the fair share looks at.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
from collections.abc import Sequence

from fluent_forward.aio import PeerAddress, peer_of
from fluent_forward.endpoints import Scheme
from parent_side.cli import serve_config
from parent_side.relay import Relay

__all__ = ["CID_VARIABLE", "main", "peer_by_environ"]

CID_VARIABLE = "NEL_BENCH_CID"
_NEEDLE = CID_VARIABLE.encode() + b"="


def _cid_of_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:  # gone already, or not ours: it stays what the relay would see
        return None
    for item in environ.split(b"\0"):
        if item.startswith(_NEEDLE):
            return int(item[len(_NEEDLE):])
    return None


def peer_by_environ(writer: asyncio.StreamWriter) -> PeerAddress:
    """The peer, as a vsock CID if its process names one (see the module docstring)."""
    sock = writer.get_extra_info("socket")
    if getattr(sock, "family", None) == socket.AF_UNIX:
        size = struct.calcsize("3i")
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET,
                                                        socket.SO_PEERCRED, size))
        cid = _cid_of_pid(pid)
        if cid is not None:
            return PeerAddress(Scheme.VSOCK, cid, f"vsock://{cid}:{pid}")
    return peer_of(writer)


async def _run(args: list[str]) -> int:
    relay = Relay(serve_config(args, os.environ))
    relay.listener.peer_of = peer_by_environ
    return await relay.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="bench relay: %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
