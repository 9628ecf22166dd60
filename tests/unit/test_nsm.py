"""The NSM request and response encoding, and the ioctl, against the published format.

No NSM here: the ioctl is played by a stand-in that does what the kernel driver
(drivers/misc/nsm.c) does with ``struct nsm_raw``: read the request from its address,
write the response to the response buffer, and write the response's length back.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import cbor2
import pytest

from enclave_side.nsm import (
    NSM_IOCTL_RAW,
    NsmDevice,
    NsmError,
    decode_response,
    encode_attestation_request,
)


def cbor_text(s: str) -> bytes:
    assert len(s) < 24
    return bytes((0x60 | len(s),)) + s.encode()


def test_the_ioctl_number_is_iowr_0x0a_0_of_a_32_byte_struct() -> None:
    # _IOWR(NSM_MAGIC=0x0A, 0x0, struct nsm_raw) from include/uapi/linux/nsm.h:
    # direction read|write (3) << 30, size 32 << 16, type 0x0A << 8, number 0.
    assert NSM_IOCTL_RAW == 0xC0200A00


def test_the_attestation_request_is_serde_cbors_externally_tagged_enum() -> None:
    # Request::Attestation { user_data, nonce, public_key } as serde_cbor writes it:
    # a one-entry map from the variant name to a map of the fields in declared order,
    # Option::None as null, ByteBuf as a byte string. Written out by hand from RFC 8949.
    want = (b"\xa1" + cbor_text("Attestation") + b"\xa3"
            + cbor_text("user_data") + b"\x43abc"
            + cbor_text("nonce") + b"\xf6"
            + cbor_text("public_key") + b"\x44" + b"\x01\x02\x03\x04")
    assert encode_attestation_request(user_data=b"abc", public_key=b"\x01\x02\x03\x04") == want


def test_the_request_refuses_fields_over_the_documented_limits() -> None:
    with pytest.raises(ValueError, match="user_data over 512"):
        encode_attestation_request(user_data=bytes(513))
    with pytest.raises(ValueError, match="public_key over 1024"):
        encode_attestation_request(public_key=bytes(1025))


def test_responses_decode_to_the_document_or_a_clear_error() -> None:
    ok = b"\xa1" + cbor_text("Attestation") + b"\xa1" + cbor_text("document") + b"\x42\x84\x40"
    assert decode_response(ok) == b"\x84\x40"
    error = b"\xa1" + cbor_text("Error") + cbor_text("InvalidArgument")
    with pytest.raises(NsmError, match="refused the attestation request: InvalidArgument"):
        decode_response(error)
    with pytest.raises(NsmError, match="unexpected NSM response"):
        decode_response(cbor2.dumps({"DescribeNSM": {}}))
    with pytest.raises(NsmError, match="unreadable"):
        decode_response(b"\xff\xff")


def test_the_device_passes_request_and_response_buffers_as_the_driver_expects(
        tmp_path: Path) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    seen: list[bytes] = []
    answer = cbor2.dumps({"Attestation": {"document": b"DOC"}})

    def driver(fd: int, request: int, arg: bytearray, mutate: bool) -> int:
        assert request == NSM_IOCTL_RAW and mutate and len(arg) == 32
        req_addr, req_len, resp_addr, resp_len = struct.unpack("=QQQQ", arg)
        seen.append(ctypes.string_at(req_addr, req_len))
        assert resp_len == 0x3000  # NSM_RESPONSE_MAX_SIZE
        ctypes.memmove(resp_addr, answer, len(answer))
        arg[24:32] = struct.pack("=Q", len(answer))
        return 0

    nsm = NsmDevice(str(device), ioctl=driver)
    assert nsm.attest(public_key=b"K", user_data=b"U") == b"DOC"
    assert seen == [encode_attestation_request(public_key=b"K", user_data=b"U")]


def test_a_missing_device_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NsmError, match=r"cannot open .*nsm: No such file .*Nitro Enclave"):
        NsmDevice(str(tmp_path / "nsm")).attest(public_key=b"K", user_data=b"U")


def test_a_failing_ioctl_is_one_clear_error(tmp_path: Path) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")

    def driver(fd: int, request: int, arg: bytearray, mutate: bool) -> int:
        raise OSError(25, "Inappropriate ioctl for device")

    with pytest.raises(NsmError, match="ioctl .* failed: Inappropriate ioctl"):
        NsmDevice(str(device), ioctl=driver).attest(public_key=b"K", user_data=b"U")


def test_a_test_pki_that_is_not_there_is_one_clear_error(tmp_path: Path) -> None:
    from enclave_side.nsm import attester
    with pytest.raises(NsmError, match=r"test-pki:.*: not a test PKI directory"):
        attester(f"test-pki:{tmp_path / 'none'}")
