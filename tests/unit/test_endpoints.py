"""fluent_forward.endpoints: every valid form, and messages that say what is wrong."""

from __future__ import annotations

import pytest

from fluent_forward.endpoints import (
    VMADDR_CID_ANY,
    VMADDR_CID_LOCAL,
    VMADDR_CID_PARENT,
    Endpoint,
    Scheme,
    parse_endpoint,
)
from fluent_forward.errors import EndpointError, UsageError

VALID = [
    ("vsock://3:24224", False, Endpoint(Scheme.VSOCK, cid=VMADDR_CID_PARENT, port=24224)),
    ("vsock://1:5000", False, Endpoint(Scheme.VSOCK, cid=VMADDR_CID_LOCAL, port=5000)),
    ("vsock://4294967294:4294967295", False,
     Endpoint(Scheme.VSOCK, cid=0xFFFFFFFE, port=0xFFFFFFFF)),
    ("vsock://any:24224", True, Endpoint(Scheme.VSOCK, cid=VMADDR_CID_ANY, port=24224)),
    ("vsock://any:0", True, Endpoint(Scheme.VSOCK, cid=VMADDR_CID_ANY, port=0)),
    ("vsock://3:0", True, Endpoint(Scheme.VSOCK, cid=3, port=0)),
    ("tcp://127.0.0.1:24224", False, Endpoint(Scheme.TCP, host="127.0.0.1", port=24224)),
    ("tcp://localhost:1", False, Endpoint(Scheme.TCP, host="localhost", port=1)),
    ("tcp://fluent-bit.internal:65535", False,
     Endpoint(Scheme.TCP, host="fluent-bit.internal", port=65535)),
    ("tcp://[::1]:24224", False, Endpoint(Scheme.TCP, host="::1", port=24224)),
    ("tcp://[2001:db8::5]:80", False, Endpoint(Scheme.TCP, host="2001:db8::5", port=80)),
    ("tcp://0.0.0.0:0", True, Endpoint(Scheme.TCP, host="0.0.0.0", port=0)),
    ("tcp://[::]:0", True, Endpoint(Scheme.TCP, host="::", port=0)),
    ("unix:///run/x.sock", False, Endpoint(Scheme.UNIX, path="/run/x.sock")),
    ("unix:///tmp/a b/c.sock", True, Endpoint(Scheme.UNIX, path="/tmp/a b/c.sock")),
]


@pytest.mark.parametrize(("url", "listen", "expected"), VALID)
def test_valid_forms(url: str, listen: bool, expected: Endpoint) -> None:
    assert parse_endpoint(url, listen=listen) == expected


@pytest.mark.parametrize(("url", "listen", "expected"), VALID)
def test_str_round_trip(url: str, listen: bool, expected: Endpoint) -> None:
    assert str(expected) == url
    assert parse_endpoint(str(expected), listen=listen) == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("TCP://h:5", Endpoint(Scheme.TCP, host="h", port=5)),
    ("VSOCK://ANY:5", Endpoint(Scheme.VSOCK, cid=VMADDR_CID_ANY, port=5)),
    ("Unix:///x", Endpoint(Scheme.UNIX, path="/x")),
])
def test_scheme_and_any_are_case_insensitive(url: str, expected: Endpoint) -> None:
    assert parse_endpoint(url, listen=True) == expected


def test_ipv6_str_gets_brackets() -> None:
    assert str(Endpoint(Scheme.TCP, host="::1", port=9)) == "tcp://[::1]:9"
    assert str(Endpoint(Scheme.TCP, host="10.0.0.1", port=9)) == "tcp://10.0.0.1:9"


def test_vsock_any_str() -> None:
    assert str(Endpoint(Scheme.VSOCK, cid=VMADDR_CID_ANY, port=7)) == "vsock://any:7"


@pytest.mark.parametrize(("url", "listen", "says"), [
    ("localhost:24224", False, "is not an endpoint URL"),
    ("", False, "is not an endpoint URL"),
    ("http://h:1", False, "unknown scheme 'http'"),
    ("udp://h:1", True, "unknown scheme 'udp'"),
    ("unix://run/x.sock", False, "absolute path"),
    ("unix://", True, "three slashes"),
    ("unix:///a\0b", False, "NUL byte"),
    ("vsock://3", False, "needs CID:PORT"),
    ("vsock://any:24224", False, "'any' is only for listening"),
    ("vsock://x:1", False, "the CID must be a number"),
    ("vsock://-1:1", True, "the CID must be a number"),
    ("vsock://4294967296:1", True, "the CID must be a number"),
    ("vsock://:1", True, "the CID must be a number"),
    ("vsock://3:abc", False, "the port must be a number, got 'abc'"),
    ("vsock://3:", False, "the port must be a number, got ''"),
    ("vsock://3:-5", False, "the port must be a number, got '-5'"),
    ("vsock://3:4294967296", False, "port 4294967296 is out of range (0-4294967295)"),
    ("vsock://3:0", False, "port 0 is only for listening"),
    ("vsock://any:0", False, "'any' is only for listening"),
    ("tcp://h", False, "needs HOST:PORT"),
    ("tcp://:1", True, "needs HOST:PORT"),
    ("tcp://h:", False, "the port must be a number, got ''"),
    ("tcp://h:http", False, "the port must be a number, got 'http'"),
    ("tcp://h:65536", False, "port 65536 is out of range (0-65535)"),
    ("tcp://h:0", False, "port 0 is only for listening"),
    ("tcp://[::1]", False, "write IPv6 addresses as tcp://[::1]:PORT"),
    ("tcp://[::1", False, "write IPv6 addresses as tcp://[::1]:PORT"),
    ("tcp://[::1]24224", False, "write IPv6 addresses as tcp://[::1]:PORT"),
    ("tcp://[::g]:1", False, "'::g' in brackets is not an IPv6 address"),
    ("tcp://a:b:1", False, "write IPv6 addresses in brackets"),
])
def test_errors_say_what_is_wrong(url: str, listen: bool, says: str) -> None:
    with pytest.raises(EndpointError) as info:
        parse_endpoint(url, listen=listen)
    message = str(info.value)
    assert says in message
    assert repr(url) in message  # every message names the input


def test_endpoint_error_is_a_usage_error_and_value_error() -> None:
    assert issubclass(EndpointError, UsageError)
    assert issubclass(EndpointError, ValueError)


@pytest.mark.parametrize("url", [
    "tcp://h:\u00b2",            # superscript two: isdigit() but int() raises ValueError
    "tcp://h:\u0661\u0662",      # Arabic-Indic 12: parsed as port 12
    "vsock://\u0663:5",          # Arabic-Indic 3: parsed as CID 3
])
def test_non_ascii_digits_are_an_endpoint_error(url: str) -> None:
    with pytest.raises(EndpointError, match="must be a number"):
        parse_endpoint(url)


def test_brackets_hold_only_ipv6() -> None:
    with pytest.raises(EndpointError, match="not an IPv6 address"):
        parse_endpoint("tcp://[localhost]:1")
