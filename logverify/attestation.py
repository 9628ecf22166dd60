"""NSM attestation documents: COSE_Sign1 (ES384) up an X.509 chain to the AWS Nitro root.

The checks are those of AWS's "Verifying the root of trust" page
(docs.aws.amazon.com/enclaves/latest/user/verify-root.html): the payload's fields and
types, the ``cabundle`` chain from the root to ``certificate`` (each certificate
signed by the one before it, a CA, and valid at the document's ``timestamp``), the
root being the pinned AWS Nitro root, and the COSE signature under ``certificate``'s
key. Validity is judged at the document's own time, not now: logs are read long after
the hours-long leaf certificates expire, and the time is the one AWS signed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "AWS_NITRO_ROOT_SHA256",
    "AttestationError",
    "Document",
    "cose_sign1",
    "sig_structure",
    "verify_document",
]

#: SHA-256 of the DER of "AWS Nitro Enclaves Root-G1" (CN=aws.nitro-enclaves), as AWS
#: publishes it with the root certificate on its "Verifying the root of trust" page.
AWS_NITRO_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
_ES384 = -35  # COSE algorithm: ECDSA with SHA-384
_COSE_SIGN1_TAG = 18


class AttestationError(ValueError):
    """An attestation document that is malformed or does not verify."""


@dataclass(frozen=True, slots=True)
class Document:
    """A verified document's payload."""

    module_id: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    root_sha256: str

    @property
    def debug(self) -> bool:
        """Debug-mode enclaves have PCR0-2 all zeros (nothing is measured)."""
        return all(not any(self.pcrs.get(i, b"")) for i in (0, 1, 2))


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """What COSE_Sign1 signs: ``["Signature1", protected, b"", payload]`` in CBOR."""
    return bytes(cbor2.dumps(["Signature1", protected, b"", payload]))


def cose_sign1(data: bytes) -> tuple[bytes, bytes, bytes]:
    """``(protected, payload, signature)`` of a COSE_Sign1, tagged or not."""
    try:
        obj = cbor2.loads(data)
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise AttestationError(f"not CBOR: {exc}") from None
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != _COSE_SIGN1_TAG:
            raise AttestationError(f"CBOR tag {obj.tag}, not COSE_Sign1")
        obj = obj.value
    if not (isinstance(obj, list) and len(obj) == 4 and isinstance(obj[0], bytes)
            and isinstance(obj[1], dict) and isinstance(obj[2], bytes)
            and isinstance(obj[3], bytes)):
        raise AttestationError("not a COSE_Sign1 array")
    return obj[0], obj[2], obj[3]


def _payload(payload: bytes) -> dict[str, Any]:
    try:
        doc = cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise AttestationError(f"payload is not CBOR: {exc}") from None
    want = {"module_id": str, "digest": str, "timestamp": int, "pcrs": dict,
            "certificate": bytes, "cabundle": list}
    if not isinstance(doc, dict):
        raise AttestationError("payload is not a map")
    for key, kind in want.items():
        if not isinstance(doc.get(key), kind):
            raise AttestationError(f"payload field {key} missing or not {kind.__name__}")
    for key in ("public_key", "user_data", "nonce"):
        if doc.get(key) is not None and not isinstance(doc[key], bytes):
            raise AttestationError(f"payload field {key} is not bytes")
    if doc["digest"] != "SHA384":
        raise AttestationError(f"digest {doc['digest']!r}, not SHA384")
    if not doc["cabundle"] or not all(isinstance(c, bytes) for c in doc["cabundle"]):
        raise AttestationError("empty or malformed cabundle")
    pcrs = doc["pcrs"]
    if not all(isinstance(k, int) and 0 <= k < 32 and isinstance(v, bytes)
               and len(v) in (32, 48, 64) for k, v in pcrs.items()):
        raise AttestationError("malformed pcrs")
    return doc


def _cert(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise AttestationError(f"{what}: not an X.509 certificate ({exc})") from None


def _check_chain(chain: list[x509.Certificate], at: datetime) -> None:
    for i, cert in enumerate(chain):
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise AttestationError(f"certificate {i} not valid at the document's time {at}")
        if i == 0:
            continue
        issuer = chain[i - 1]
        try:
            constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise AttestationError(f"certificate {i - 1} is not a CA") from None
        if not constraints.value.ca:
            raise AttestationError(f"certificate {i - 1} is not a CA")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise AttestationError(f"certificate {i} is not signed by certificate {i - 1}") \
                from None


def verify_document(data: bytes, *, root_sha256: str = AWS_NITRO_ROOT_SHA256) -> Document:
    """Verify an attestation document; return its payload. AttestationError if it fails."""
    protected, payload, signature = cose_sign1(data)
    try:
        header = cbor2.loads(protected) if protected else {}
    except (ValueError, cbor2.CBORDecodeError):
        raise AttestationError("protected header is not CBOR") from None
    if not isinstance(header, dict) or header.get(1) != _ES384:
        raise AttestationError("COSE algorithm is not ES384")
    doc = _payload(payload)
    chain = [_cert(c, f"cabundle[{i}]") for i, c in enumerate(doc["cabundle"])]
    chain.append(_cert(doc["certificate"], "certificate"))
    root_fp = hashlib.sha256(doc["cabundle"][0]).hexdigest()
    if root_fp != root_sha256.lower():
        pinned = ("the AWS Nitro Enclaves root" if root_sha256 == AWS_NITRO_ROOT_SHA256
                  else "the pinned root")
        raise AttestationError(f"chain ends at root {root_fp[:16]}..., not {pinned} "
                               f"{root_sha256[:16]}... (--root-cert PEM trusts another)")
    at = datetime.fromtimestamp(doc["timestamp"] / 1000, UTC)
    _check_chain(chain, at)
    key = chain[-1].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1" \
            or len(signature) != 96:
        raise AttestationError("signing key or signature is not ECDSA P-384")
    der = encode_dss_signature(int.from_bytes(signature[:48], "big"),
                               int.from_bytes(signature[48:], "big"))
    try:
        key.verify(der, sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError("COSE signature does not verify") from None
    return Document(doc["module_id"], doc["timestamp"], dict(doc["pcrs"]),
                    doc.get("public_key"), doc.get("user_data"), doc.get("nonce"), root_fp)
