"""Whose logs these are: who may connect, and the parent's view of each enclave.

The relay decides an enclave's identity when it accepts a connection, from what the
kernel says of the peer (for vsock, the CID the hypervisor reports) cross-checked
with ``nitro-cli describe-enclaves``, never from what the agent says of itself (its
hostname in PING is kept apart, as a claim). The tag becomes
``enclave.<EnclaveName or cid-N>.<agent's tag>``; the entries pass byte for byte,
unless record fields are asked for (``--stamp-records``).

A CID names a slot, not code: CIDs are reused after an enclave terminates and can
be chosen with ``--enclave-cid``, and a debug-mode enclave gets one too. That is why
``describe-enclaves`` is asked again whenever an unknown CID connects, and why the
identity carries the debug flag and PCR0: see SECURITY.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fluent_forward.aio import PeerAddress
from fluent_forward.endpoints import Scheme
from fluent_forward.entries import EventTime, iter_entries, pack_entry, time_to_ns

__all__ = [
    "DEFAULT_ALLOWED_CIDS",
    "TAG_ROOT",
    "CidSet",
    "EnclaveInfo",
    "EnclaveRegistry",
    "Identity",
    "identity_of",
    "parse_cid_set",
    "sanitize_name",
    "stamp_entries",
]

log = logging.getLogger(__name__)

TAG_ROOT = "enclave"
#: Enclave CIDs only: 0-2 are reserved and 3 is the parent itself (and 1 local loopback).
DEFAULT_ALLOWED_CIDS = "4-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_U32 = 0xFFFFFFFF


def sanitize_name(name: str) -> str:
    """A name safe inside a tag: every character outside ``[A-Za-z0-9_-]`` becomes ``_``."""
    return _UNSAFE.sub("_", name) or "_"


# -- who may connect ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CidSet:
    """A set of CIDs as inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, int) and any(lo <= cid <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        # As parse_cid_set reads them: 16, 16-20, 4- (4 and up).
        parts = [str(lo) if lo == hi else f"{lo}-" + ("" if hi == _U32 else str(hi))
                 for lo, hi in self.ranges]
        return ",".join(parts) or "none"


def parse_cid_set(specs: Iterable[str]) -> CidSet:
    """Parse ``16``, ``16-20``, ``4-`` (4 and up), ``any``, comma-separated or repeated.

    Raises:
        ValueError: naming the bad part and the accepted forms.
    """
    ranges: list[tuple[int, int]] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() in ("any", "all"):
                ranges.append((0, _U32))
                continue
            lo_text, dash, hi_text = part.partition("-")
            try:
                lo = int(lo_text)
                hi = (int(hi_text) if hi_text else _U32) if dash else lo
            except ValueError:
                raise ValueError(f"{part!r} is not a CID or range; write e.g. 16, 16-20, "
                                 "4- (4 and up) or any") from None
            if not (0 <= lo <= hi <= _U32):
                raise ValueError(f"{part!r}: CIDs run from 0 to {_U32}, low to high")
            ranges.append((lo, hi))
    return CidSet(tuple(sorted(ranges)))


# -- the parent's view of enclaves ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnclaveInfo:
    """One enclave as ``nitro-cli describe-enclaves`` reports it."""

    cid: int
    enclave_id: str
    name: str = ""
    state: str = ""
    debug: bool = False
    pcr0: str = ""

    @classmethod
    def from_describe(cls, d: Mapping[str, Any]) -> EnclaveInfo:
        measurements = d.get("Measurements") or {}
        return cls(cid=int(d["EnclaveCID"]), enclave_id=str(d.get("EnclaveID", "")),
                   name=str(d.get("EnclaveName") or ""), state=str(d.get("State", "")),
                   debug=str(d.get("Flags", "")).upper() == "DEBUG_MODE",
                   pcr0=str(measurements.get("PCR0", "")) if isinstance(measurements, dict)
                   else "")

    @property
    def label(self) -> str:
        """How logs and records name it: its EnclaveName, else ``cid-<N>``."""
        return self.name or f"cid-{self.cid}"


@dataclass(frozen=True, slots=True)
class Identity:
    """The parent's view of a connected peer, fixed when the connection is accepted.

    Attributes:
        name: the sanitised name used in tags (``payments``, ``cid-16``, ``local``).
        cid: the vsock CID, or None for local peers (TCP, Unix).
        enclave: what describe-enclaves said of that CID then, if anything.
    """

    name: str
    cid: int | None = None
    enclave: EnclaveInfo | None = None

    @property
    def tag_prefix(self) -> str:
        return f"{TAG_ROOT}.{self.name}."

    def fields(self) -> dict[str, object]:
        """Record fields for ``--stamp-records``: what the parent knows, nothing claimed."""
        out: dict[str, object] = {"enclave_name": self.name}
        if self.cid is not None:
            out["enclave_cid"] = self.cid
        if self.enclave is not None:
            out["enclave_id"] = self.enclave.enclave_id
            out["enclave_debug"] = self.enclave.debug
            if self.enclave.pcr0:
                out["enclave_pcr0"] = self.enclave.pcr0
        return out


def identity_of(peer: PeerAddress, enclave: EnclaveInfo | None = None) -> Identity:
    """``<EnclaveName>`` or ``cid-<N>`` for a vsock peer; ``local`` for TCP and Unix."""
    if peer.scheme is Scheme.VSOCK and peer.cid is not None:
        name = enclave.label if enclave is not None else f"cid-{peer.cid}"
        return Identity(sanitize_name(name), peer.cid, enclave)
    return Identity("local")


@dataclass
class EnclaveRegistry:
    """CID -> enclave, from ``nitro-cli describe-enclaves``: polled, and asked again
    when a CID connects and the last answer is older than ``min_refresh`` seconds
    (CIDs are reused when enclaves restart, so a known CID is no proof either).

    Without nitro-cli (a dev box, a container without it) every lookup falls back to
    the CID, and one warning says so (again only if it has run since).

    Args:
        command: the describe command, as argv.
        interval: seconds between polls.
        timeout: seconds one run may take.
    """

    command: tuple[str, ...] = ("nitro-cli", "describe-enclaves")
    interval: float = 30.0
    on_terminated: Callable[[EnclaveInfo], None] | None = None
    timeout: float = 5.0
    min_refresh: float = 2.0
    enclaves: dict[int, EnclaveInfo] = field(default_factory=dict)
    available: bool = True
    _last: float = -1e9
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def lookup(self, cid: int) -> EnclaveInfo | None:
        """The enclave at ``cid`` now, asking describe-enclaves again if the view is stale."""
        if self.available and time.monotonic() - self._last >= self.min_refresh:
            await self.refresh()
        return self.enclaves.get(cid)

    async def refresh(self) -> None:
        async with self._lock:
            self._last = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.command, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
            except OSError as exc:
                if self.available:  # once, not at every poll
                    log.warning("cannot run %s: %s; enclaves are named by their CID (cid-N) "
                                "instead of their EnclaveName", self.command[0], exc.strerror)
                self.available = False
                return
            try:
                out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                log.warning("%s took over %ss; keeping the enclaves known so far",
                            " ".join(self.command), self.timeout)
                return
            if proc.returncode != 0:
                log.warning("%s failed (%s): %s", " ".join(self.command), proc.returncode,
                            err.decode(errors="replace").strip()[:200])
                return
            try:
                listed = json.loads(out)
                now = {e.cid: e for e in map(EnclaveInfo.from_describe, listed)}
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("cannot read %s output: %s", " ".join(self.command), exc)
                return
            before, self.enclaves = self.enclaves, now
            self.available = True
            present = {e.enclave_id for e in now.values()}
            for gone in before.values():
                if gone.enclave_id not in present and self.on_terminated is not None:
                    self.on_terminated(gone)

    async def poll(self) -> None:
        """Refresh every ``interval`` seconds; run as a task."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)


def stamp_entries(entries: bytes, fields: Mapping[str, object], *,
                  restamp_ns: int | None = None) -> bytes:
    """The same entries with ``fields`` added to every record (decoded and re-packed).

    With ``restamp_ns``, every entry gets that time, and its own time moves into the
    record as ``enclave_time`` (Unix nanoseconds).
    """
    out = []
    new_time = EventTime.from_ns(restamp_ns) if restamp_ns is not None else None
    for t, record in iter_entries(entries):
        merged = dict(record)
        merged.update(fields)
        if new_time is not None:
            own = t[0] if type(t) is tuple else t
            merged["enclave_time"] = time_to_ns(own)
            t = (new_time, t[1]) if type(t) is tuple else new_time
        out.append(pack_entry(t, merged))  # the time (or [time, metadata]) as it was
    return b"".join(out)
