"""``--sign``: number every record and sign checkpoints with a key only this enclave has.

At start the agent makes an Ed25519 key pair in memory, writes checkpoint 0 (the
genesis: boot id, agent version, configuration digest, public key) and asks the NSM
for an attestation document whose ``public_key`` is that key and whose ``user_data``
is the SHA-256 of the genesis note: AWS's signature then binds the key to the enclave
image (PCR0-2, 8) and to this boot. Both go out as records on ``agent.sign``.

Records are numbered when their batch is sealed (``Buffer.sealer``), per tag (a
*stream*), so each batch costs one pass over its entries and no work is done per
line before that. Every ``records`` numbered records, every ``interval`` seconds
(even when nothing happened, so a reader can tell quiet from withheld) and at exit,
a checkpoint lists each stream's new ranges (one a sealed batch) with the digests of
their groups of records, the numbered records the buffer dropped since (a declared
drop, not a deletion), and the SHA-256 of the checkpoint before it; it is signed as
a C2SP signed note. Once an hour, and with the last checkpoint, a new attestation
document names the latest checkpoint, which dates it by AWS's clock rather than the
agent's. The format is in ``proof``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import proof
from .nsm import Attester, NsmError

if TYPE_CHECKING:
    from .buffer import Buffer

__all__ = ["ATTEST_INTERVAL", "SigningError", "Signer", "require_signing"]

log = logging.getLogger(__name__)

#: Seconds between attestation documents after the first (and one with the last checkpoint).
ATTEST_INTERVAL = 3600.0


class SigningError(RuntimeError):
    """Signing cannot start: a missing dependency or no NSM."""


_MISSING = "--sign needs cryptography and cbor2: pip install 'nitro-enclave-logs[sign]'"


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError(_MISSING) from None
    return ed25519


def require_signing() -> None:
    """SigningError, in one line, unless what ``--sign`` needs is installed."""
    _ed25519()
    try:
        import cbor2  # noqa: F401
    except ImportError:
        raise SigningError(_MISSING) from None


class _Stream:
    __slots__ = ("number", "next", "ranges")

    def __init__(self, number: int) -> None:
        self.number = number
        self.next = 1  # next sequence number
        # Numbered, not yet in a checkpoint: (first, last, group digests), a batch each.
        # A batch's groups start at its first number, so a range is cut only between
        # groups and no group spans two batches (a dropped batch is whole groups).
        self.ranges: list[tuple[int, int, list[bytes]]] = []


class Signer:
    """Numbers sealed batches and emits signed checkpoints into ``buffer``.

    Args:
        boot_id: the agent's 8-byte boot id.
        attester: the NSM (or a test attester).
        records: a checkpoint once this many records were numbered since the last.
        interval: a checkpoint at least this often (seconds).
        version, config: the agent's version and configuration digest, for the genesis.
    """

    def __init__(self, boot_id: bytes, attester: Attester, *, records: int, interval: float,
                 version: str, config: str, clock: Callable[[], float] = time.monotonic) -> None:
        ed25519 = _ed25519()
        from cryptography.hazmat.primitives import serialization
        self.boot = boot_id.hex()
        self.attester = attester
        self.records = records
        self.interval = interval
        self._clock = clock
        self._key = ed25519.Ed25519PrivateKey.generate()
        pub = self._key.public_key()
        self.public_raw: bytes = pub.public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)
        self.public_der: bytes = pub.public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self._version, self._config = version, config
        self._streams: dict[str, _Stream] = {}
        self._drops: list[tuple[int, int, int]] = []
        self._pending = 0
        self._n = 0
        self._prev: bytes | None = None
        self._last = clock()
        self._last_attest = 0.0
        self.buffer: Buffer | None = None
        self.unsigned_batches = 0
        self.checkpoints = 0
        self._finished = False  # a final checkpoint was sent

    def start(self, buffer: Buffer) -> None:
        """Send the genesis checkpoint and the attestation document over it."""
        self.buffer = buffer
        cp = proof.Checkpoint(self.boot, 0, None, time.time_ns() // 1_000_000,
                              version=self._version, config=self._config,
                              key=self.public_raw)
        note = self._emit(cp)
        try:
            self._attest(0, note)
        except (NsmError, OSError) as exc:
            raise SigningError(str(exc)) from None
        buffer.sealer = self

    # -- numbering (called by Buffer._seal) -------------------------------------------------

    def number(self, tag: str, parts: list[bytes], counts: list[int],
               uniform: list[bool] | None = None
               ) -> tuple[list[bytes], int, tuple[int, int, int]] | None:
        """Number a sealing batch's entries; None leaves it as it is (checkpoints)."""
        if tag == proof.SIGN_TAG:
            return None
        stream = self._streams.get(tag)
        if stream is None:
            stream = self._streams[tag] = _Stream(len(self._streams) + 1)
        try:
            entries, digests, count = proof.number_entries(parts, counts, self.boot,
                                                           stream.number, stream.next, uniform)
        except (ValueError, TypeError, proof.FormatError) as exc:
            # Never lose records over this: they go unsigned, and the verifier reports
            # them as not provable.
            self.unsigned_batches += 1
            log.error("batch on %s sent unsigned: %s", tag, exc)
            return None
        first = stream.next
        stream.next += count
        if count:
            stream.ranges.append((first, stream.next - 1, digests))
        self._pending += count
        return entries, count, (stream.number, first, stream.next - 1)

    def after_seal(self) -> None:
        while self._pending >= self.records:  # a batch may hold several checkpoints' worth
            self.checkpoint()
        if self._finished and self._pending:
            # Records sealed after the last checkpoint (the agent's own log lines while
            # it drains): another last checkpoint covers them, or they would read as
            # inserted after the enclave's last word.
            self.checkpoint(final=True)

    def dropped(self, signed: tuple[int, int, int]) -> None:
        """The buffer dropped a numbered batch: declare it in the next checkpoint."""
        self._drops.append(signed)

    def tick(self) -> None:
        if self._clock() - self._last >= self.interval:
            self.checkpoint()

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, *, final: bool = False) -> None:
        """Sign what was numbered since the last checkpoint (maybe nothing), in as many
        checkpoints of at most ``records`` records as it takes (at least one group): one
        stays a log event CloudWatch takes (256 KiB)."""
        while True:
            last = final and self._pending <= self.records
            self._n += 1
            cp = proof.Checkpoint(self.boot, self._n, self._prev,
                                  time.time_ns() // 1_000_000, drops=self._drops, final=last)
            self._drops = []
            budget = self.records
            for tag, stream in self._streams.items():
                taken = self._take(stream, budget, cp)
                if taken:
                    # The tag in every checkpoint that covers the stream: each stands alone.
                    cp.tags[stream.number] = tag
                    budget -= taken
            self._pending -= self.records - budget
            note = self._emit(cp)
            if self._pending < self.records and (last or not final):
                break
        attest = (final and not self._finished) or \
            self._clock() - self._last_attest >= ATTEST_INTERVAL
        self._finished = self._finished or final
        if attest:
            try:
                self._attest(self._n, note)
            except (NsmError, OSError) as exc:  # the checkpoints still chain to the first
                log.error("no attestation document for checkpoint %d: %s", self._n, exc)

    def _take(self, stream: _Stream, budget: int, cp: proof.Checkpoint) -> int:
        """Move the stream's ranges into ``cp``, ``budget`` records at most, cut between
        groups (one group even over budget if ``cp`` is empty); how many it took."""
        taken = 0
        while stream.ranges and taken < budget:
            first, last, digests = stream.ranges[0]
            if last - first + 1 > budget - taken:
                groups = (budget - taken) // proof.GROUP
                if not groups and (taken or cp.streams):
                    break
                end = first + max(groups, 1) * proof.GROUP - 1
            else:
                end = last
            if end < last:
                groups = (end - first + 1) // proof.GROUP
                stream.ranges[0] = (end + 1, last, digests[groups:])
                last, digests = end, digests[:groups]
            else:
                del stream.ranges[0]
            cp.streams.append(proof.StreamRange(stream.number, first, last, b"".join(digests)))
            taken += last - first + 1
        return taken

    def _emit(self, cp: proof.Checkpoint) -> str:
        body = cp.body()
        note = proof.sign_note(body, self.boot, self.public_raw,
                               self._key.sign(body.encode("utf-8")))
        self._prev = proof.note_hash(note)
        self._last = self._clock()
        self.checkpoints += 1
        assert self.buffer is not None
        self.buffer.add_record(proof.SIGN_TAG, time.time_ns(),
                               {"log": note, "event": "checkpoint"})
        return note

    def _attest(self, n: int, note: str) -> None:
        document = self.attester.attest(public_key=self.public_der,
                                        user_data=proof.note_hash(note))
        self._last_attest = self._clock()
        assert self.buffer is not None
        self.buffer.add_record(proof.SIGN_TAG, time.time_ns(),
                               {"log": proof.attestation_line(self.boot, n, document),
                                "event": "attestation"})
