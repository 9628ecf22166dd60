"""A test certificate authority and attester, in the NSM's COSE_Sign1 shape.

No machine here has an NSM, so tests (and ``enclave-log-agent --nsm test-pki:DIR``)
issue attestation documents from a chain made here: a P-384 root, an intermediate,
and a leaf that signs the documents, as AWS's chain does (root, zonal and instance
CAs, then the signing certificate). ``enclave-log-verify`` rejects them unless told
the test root with ``--root-cert``. The PCRs are given (``pcr0`` ...) or all zeros for
a debug-mode enclave. To try ``--sign`` outside an enclave::

    python -m logverify.testpki DIR [--pcr0 HEX]

writes one and prints the PCR0 its documents will carry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .attestation import sig_structure

__all__ = ["TestAttester", "main", "make_test_pki"]

_PCR_INDEXES = (0, 1, 2, 3, 4, 8)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn))
               .issuer_name(issuer.subject if issuer is not None else _name(cn))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA384())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_test_pki(directory: Path, *, pcr0: str | None = None, debug: bool = False) -> Path:
    """Write a test chain and PCRs to ``directory``; return the root certificate's path."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert("test.nitro-enclaves", root_key, None, root_key, ca=True)
    mid_key = ec.generate_private_key(ec.SECP384R1())
    mid = _cert("test.zonal", mid_key, root, root_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = _cert("test.enclave", leaf_key, mid, mid_key, ca=False)
    for name, cert in (("root", root), ("mid", mid), ("leaf", leaf)):
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.key").write_bytes(_pem_key(leaf_key))
    pcrs = {i: "00" * 48 for i in _PCR_INDEXES}
    if not debug:
        pcrs.update({i: f"{i + 1:02x}" * 48 for i in (0, 1, 2, 8)})
        if pcr0 is not None:
            pcrs[0] = pcr0
    (directory / "pcrs.json").write_text(json.dumps(pcrs))
    return directory / "root.pem"


@dataclass(frozen=True)
class TestAttester:
    """Issues documents as the NSM does, signed by the test chain in a directory."""

    __test__ = False  # not a pytest test class, despite the name

    key: ec.EllipticCurvePrivateKey
    leaf: bytes
    cabundle: tuple[bytes, ...]
    pcrs: dict[int, bytes]

    @classmethod
    def load(cls, directory: str | Path) -> TestAttester:
        d = Path(directory)

        def der(name: str) -> bytes:
            cert = x509.load_pem_x509_certificate((d / f"{name}.pem").read_bytes())
            return cert.public_bytes(serialization.Encoding.DER)

        key = serialization.load_pem_private_key((d / "leaf.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        pcrs = {int(k): bytes.fromhex(v)
                for k, v in json.loads((d / "pcrs.json").read_text()).items()}
        return cls(key, der("leaf"), (der("root"), der("mid")), pcrs)

    def attest(self, *, public_key: bytes, user_data: bytes) -> bytes:
        payload = cbor2.dumps({
            "module_id": "i-0test0000000000-enc0test000000000", "digest": "SHA384",
            "timestamp": time.time_ns() // 1_000_000, "pcrs": self.pcrs,
            "certificate": self.leaf, "cabundle": list(self.cabundle),
            "public_key": public_key, "user_data": user_data, "nonce": None})
        protected = cbor2.dumps({1: -35})
        der = self.key.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return bytes(cbor2.dumps([protected, {}, payload, signature]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m logverify.testpki",
        description="Write a test chain for enclave-log-agent --nsm test-pki:DIR (no NSM "
                    "here); verify its documents with enclave-log-verify --root-cert DIR/root.pem")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--pcr0", metavar="HEX", help="the PCR0 its documents carry (96 hex digits)")
    p.add_argument("--debug", action="store_true", help="PCRs all zeros, as a debug enclave")
    args = p.parse_args(argv)
    if args.pcr0 is not None and (len(args.pcr0) != 96 or
                                  not all(c in "0123456789abcdef" for c in args.pcr0)):
        p.error("--pcr0: 96 lowercase hex digits (48 bytes)")
    root = make_test_pki(args.directory, pcr0=args.pcr0, debug=args.debug)
    pcr0 = json.loads((args.directory / "pcrs.json").read_text())["0"]
    sys.stdout.write(f"test chain in {args.directory}: --nsm test-pki:{args.directory} on the "
                     f"agent, --root-cert {root} on enclave-log-verify; PCR0={pcr0}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
