"""Endpoint URLs: ``vsock://CID:PORT``, ``tcp://HOST:PORT``, ``unix:///path`` (pure).

``vsock://any:PORT`` listens on every CID. Nitro's parent instance is CID 3 as seen
from an enclave; CID 1 is the local loopback (``vsock_loopback``), absent from
Python's ``socket`` module before 3.14, so it is defined here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from .errors import EndpointError

__all__ = [
    "VMADDR_CID_ANY",
    "VMADDR_CID_LOCAL",
    "VMADDR_CID_PARENT",
    "FORWARD_PORT",
    "Endpoint",
    "Scheme",
    "parse_endpoint",
]

VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_CID_LOCAL = 1  # socket.VMADDR_CID_LOCAL exists only from Python 3.14
VMADDR_CID_PARENT = 3  # the parent instance, as an enclave sees it
FORWARD_PORT = 24224  # the Forward protocol's port (Fluentd's and Fluent Bit's default)

_U32 = 0xFFFFFFFF
_EXAMPLES = "vsock://3:24224, vsock://any:24224, tcp://127.0.0.1:24224 or unix:///run/x.sock"


class Scheme(StrEnum):
    """The three transports."""

    VSOCK = "vsock"
    TCP = "tcp"
    UNIX = "unix"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect or listen.

    Attributes:
        scheme: the transport.
        host: TCP host (name or address), else "".
        port: TCP or vsock port, else 0.
        cid: vsock context id (``VMADDR_CID_ANY`` to listen on all), else 0.
        path: Unix socket path, else "".
    """

    scheme: Scheme
    host: str = ""
    port: int = 0
    cid: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme is Scheme.UNIX:
            return f"unix://{self.path}"
        if self.scheme is Scheme.VSOCK:
            cid = "any" if self.cid == VMADDR_CID_ANY else str(self.cid)
            return f"vsock://{cid}:{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # isdigit() alone takes "²" and "١٢"


def _port(text: str, url: str, maximum: int, listen: bool) -> int:
    if not _digits(text):
        raise EndpointError(f"{url!r}: the port must be a number, got {text!r}")
    port = int(text)
    if port > maximum:
        raise EndpointError(f"{url!r}: port {port} is out of range (0-{maximum})")
    if port == 0 and not listen:
        raise EndpointError(f"{url!r}: port 0 is only for listening")
    return port


def _split_host_port(rest: str, url: str) -> tuple[str, str]:
    if rest.startswith("["):  # [IPv6]:port
        host, sep, tail = rest[1:].partition("]")
        if not sep or not tail.startswith(":"):
            raise EndpointError(f"{url!r}: write IPv6 addresses as tcp://[::1]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise EndpointError(f"{url!r}: {host!r} in brackets is not an IPv6 address") from None
        return host, tail[1:]
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise EndpointError(f"{url!r}: needs HOST:PORT, e.g. {_EXAMPLES}")
    if ":" in host:
        raise EndpointError(f"{url!r}: write IPv6 addresses in brackets: tcp://[::1]:PORT")
    return host, port


def parse_endpoint(url: str, *, listen: bool = False) -> Endpoint:
    """Parse an endpoint URL; raise ``EndpointError`` saying what is wrong.

    Args:
        url: the URL.
        listen: whether it names a place to listen (allows ``vsock://any`` and port 0).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise EndpointError(f"{url!r} is not an endpoint URL; use one of {_EXAMPLES}")
    scheme = scheme.lower()
    if scheme == "unix":
        if not rest.startswith("/"):
            raise EndpointError(f"{url!r}: a unix endpoint needs an absolute path, "
                                "with three slashes: unix:///run/x.sock")
        if "\0" in rest:
            raise EndpointError(f"{url!r}: the path contains a NUL byte")
        return Endpoint(Scheme.UNIX, path=rest)
    if scheme == "vsock":
        cid_text, sep, port_text = rest.partition(":")
        if not sep:
            raise EndpointError(f"{url!r}: needs CID:PORT, e.g. vsock://3:24224")
        if cid_text.lower() == "any":
            if not listen:
                raise EndpointError(f"{url!r}: 'any' is only for listening; "
                                    "connect to a CID (the parent is 3)")
            cid = VMADDR_CID_ANY
        elif _digits(cid_text) and int(cid_text) <= _U32:
            cid = int(cid_text)
        else:
            raise EndpointError(f"{url!r}: the CID must be a number (0-{_U32}) or 'any'")
        return Endpoint(Scheme.VSOCK, cid=cid, port=_port(port_text, url, _U32, listen))
    if scheme == "tcp":
        host, port_text = _split_host_port(rest, url)
        return Endpoint(Scheme.TCP, host=host, port=_port(port_text, url, 0xFFFF, listen))
    raise EndpointError(f"{url!r}: unknown scheme {scheme!r}; use one of {_EXAMPLES}")
