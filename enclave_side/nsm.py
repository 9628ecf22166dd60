"""The Nitro Security Module: attestation documents from ``/dev/nsm``.

Inside an enclave the NSM is a misc device taking one ioctl, ``NSM_IOCTL_RAW``
(``_IOWR(0x0A, 0, struct nsm_raw)`` in the kernel's ``include/uapi/linux/nsm.h``),
whose argument points at a CBOR request and a buffer for the CBOR response. The
messages are aws-nitro-enclaves-nsm-api's ``nsm-io`` enums as serde_cbor writes them:
a map from the variant's name to a map of its fields, in declaration order::

    {"Attestation": {"user_data": bytes|null, "nonce": bytes|null, "public_key": bytes|null}}
    -> {"Attestation": {"document": bytes}}  or  {"Error": "InvalidArgument"}

``attester()`` picks the attester the agent's ``--nsm`` names: the device, or a
test certificate authority (``test-pki:DIR``) whose documents have the same COSE_Sign1
shape and which ``enclave-log-verify`` rejects unless told its root.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "MAX_PUBLIC_KEY",
    "MAX_USER_DATA",
    "NSM_IOCTL_RAW",
    "Attester",
    "NsmDevice",
    "NsmError",
    "attester",
    "decode_response",
    "encode_attestation_request",
]

_NSM_MAGIC = 0x0A
_NSM_RAW = struct.Struct("=QQQQ")  # struct nsm_raw: two struct nsm_iovec {u64 addr, len}
_IOC_READ_WRITE = 3
#: ``_IOWR(NSM_MAGIC, 0, struct nsm_raw)``: direction, size, type, number.
NSM_IOCTL_RAW = (_IOC_READ_WRITE << 30) | (_NSM_RAW.size << 16) | (_NSM_MAGIC << 8) | 0
REQUEST_MAX = 0x1000  # NSM_REQUEST_MAX_SIZE
RESPONSE_MAX = 0x3000  # NSM_RESPONSE_MAX_SIZE
#: Limits of the optional fields, from AWS's attestation document specification.
MAX_PUBLIC_KEY = 1024
MAX_USER_DATA = 512


class NsmError(RuntimeError):
    """The NSM could not be reached or refused the request."""


class Attester(Protocol):
    """Something that issues attestation documents naming a key and user data."""

    def attest(self, *, public_key: bytes, user_data: bytes) -> bytes:
        """A COSE_Sign1 attestation document (bytes)."""


def _cbor() -> Any:
    try:
        import cbor2
    except ImportError:  # the [sign] extra
        raise NsmError("signing needs cbor2: pip install 'nitro-enclave-logs[sign]'") from None
    return cbor2


def encode_attestation_request(*, public_key: bytes | None = None,
                               user_data: bytes | None = None,
                               nonce: bytes | None = None) -> bytes:
    """The CBOR of ``Request::Attestation``."""
    if public_key is not None and len(public_key) > MAX_PUBLIC_KEY:
        raise ValueError(f"public_key over {MAX_PUBLIC_KEY} bytes")
    for name, value in (("user_data", user_data), ("nonce", nonce)):
        if value is not None and len(value) > MAX_USER_DATA:
            raise ValueError(f"{name} over {MAX_USER_DATA} bytes")
    fields = {"user_data": user_data, "nonce": nonce, "public_key": public_key}
    return bytes(_cbor().dumps({"Attestation": fields}))


def decode_response(data: bytes) -> bytes:
    """The document of an ``Attestation`` response; NsmError for ``Error`` or garbage."""
    cbor2 = _cbor()
    try:
        obj = cbor2.loads(data)
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise NsmError(f"unreadable NSM response: {exc}") from None
    if isinstance(obj, dict) and len(obj) == 1:
        ((kind, value),) = obj.items()
        if kind == "Attestation" and isinstance(value, dict) \
                and isinstance(value.get("document"), bytes):
            return bytes(value["document"])
        if kind == "Error":
            raise NsmError(f"the NSM refused the attestation request: {value}")
    raise NsmError("unexpected NSM response")


IoctlFn = Callable[[int, int, bytearray, bool], int]


class NsmDevice:
    """``/dev/nsm``: one ioctl per request.

    Args:
        path: the device.
        ioctl: ``fcntl.ioctl``; tests pass a stand-in that plays the driver's part.
    """

    def __init__(self, path: str = "/dev/nsm", *, ioctl: IoctlFn = fcntl.ioctl) -> None:
        self.path = path
        self._ioctl = ioctl

    def request(self, request: bytes) -> bytes:
        """Send one CBOR request; return the CBOR response."""
        if len(request) > REQUEST_MAX:
            raise NsmError(f"NSM request over {REQUEST_MAX} bytes")
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(RESPONSE_MAX)
        raw = bytearray(_NSM_RAW.pack(ctypes.addressof(req), len(request),
                                      ctypes.addressof(resp), RESPONSE_MAX))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise NsmError(f"cannot open {self.path}: {exc.strerror} "
                           "(signing needs a Nitro Enclave's NSM)") from None
        try:
            self._ioctl(fd, NSM_IOCTL_RAW, raw, True)
        except OSError as exc:
            raise NsmError(f"NSM ioctl on {self.path} failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        length = _NSM_RAW.unpack(raw)[3]  # the driver writes the response's length back
        if length > RESPONSE_MAX:
            raise NsmError("NSM response longer than its buffer")
        return ctypes.string_at(resp, length)

    def attest(self, *, public_key: bytes, user_data: bytes) -> bytes:
        return decode_response(self.request(
            encode_attestation_request(public_key=public_key, user_data=user_data)))


def attester(spec: str) -> Attester:
    """The attester ``--nsm`` names: a device path, or ``test-pki:DIR``."""
    if spec.startswith("test-pki:"):
        try:
            from logverify.testpki import TestAttester
        except ImportError:
            raise NsmError("test-pki: needs the logverify package (not in the .pyz)") from None
        try:
            return TestAttester.load(spec.removeprefix("test-pki:"))
        except (OSError, ValueError) as exc:
            raise NsmError(f"{spec}: not a test PKI directory ({exc})") from None
    return NsmDevice(spec)
