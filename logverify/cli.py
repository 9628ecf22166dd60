"""``enclave-log-verify``: prove what a store holds of a signing enclave's logs.

    enclave-log-verify [--pcr0 HEX ...] [--root-cert PEM] [--require-final]
                       [--max-age SECONDS] [--json] FILE...

Exit status: 0 when every record verified and nothing is missing, 1 on any finding,
2 when an input cannot be read (one line on stderr saying which and why).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .readers import InputError, Item, read_input

if TYPE_CHECKING:
    from .verify import Report

__all__ = ["build_parser", "main", "render"]

_PCRS = (0, 1, 2, 3, 4, 8)


def _hex(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text[:20]!r}") from None
    if len(value) not in (32, 48, 64):
        raise argparse.ArgumentTypeError("a PCR is 48 bytes (96 hex digits)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text[:20]!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="enclave-log-verify",
        description="Check signed enclave logs: the enclave's attestation, every "
                    "checkpoint, every record.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE",
                   help="relay JSON lines, Fluent Bit file or S3 json_lines output "
                        "(gzip too), or `aws logs filter-log-events --output json`; - for stdin")
    for i in _PCRS:
        p.add_argument(f"--pcr{i}", type=_hex, metavar="HEX",
                       help=f"the enclave's expected PCR{i} (nitro-cli describe-eif)")
    p.add_argument("--root-cert", type=Path, metavar="PEM",
                   help="trust this root instead of the AWS Nitro Enclaves root (tests)")
    p.add_argument("--time-key", default="date", metavar="KEY",
                   help="the time field of S3 json_lines records (default: %(default)s)")
    p.add_argument("--require-final", action="store_true",
                   help="every boot must have ended with its final checkpoint (an audit "
                        "after shutdown): otherwise its tail may have been withheld")
    p.add_argument("--max-age", type=_seconds, metavar="SECONDS",
                   help="a boot still running must have signed a checkpoint in the last "
                        "SECONDS (its --sign-interval and the store's delay)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _root(path: Path | None) -> str:
    from .attestation import AWS_NITRO_ROOT_SHA256
    if path is None:
        return AWS_NITRO_ROOT_SHA256
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"--root-cert {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def render(report: Report) -> str:
    """The report for people: per boot and stream, then every finding."""
    from .attestation import AWS_NITRO_ROOT_SHA256  # needs the [sign] extra: main says so
    lines = []
    for boot, br in report.boots.items():
        image = f"PCR0={br.pcrs.get(0, '?')}" if br.pcrs else "not attested"
        state = "final checkpoint seen" if br.final else "no final checkpoint yet"
        lines.append(f"boot {boot}: enclave image {image}, {br.checkpoints} checkpoints, "
                     f"{state}")
        if br.last_time_ms is not None:
            when = _iso(br.last_time_ms)
            lines.append(f"  proven up to checkpoint {br.last_checkpoint}, signed {when} "
                         "(enclave clock)")
            if not br.final:
                lines.append(f"  no final checkpoint: what the enclave logged after {when} "
                             "is not proven and may be withheld (--require-final for a boot "
                             "that has ended, --max-age for one still running)")
        who = "AWS" if br.root == AWS_NITRO_ROOT_SHA256 else "the --root-cert chain (not AWS)"
        for n, when in sorted(br.aws_times.items()):
            lines.append(f"  checkpoint {n} attested by {who} at {when}")
        for s, sr in sorted(br.streams.items()):
            extra = f", {sr.duplicates} duplicate copies" if sr.duplicates else ""
            drops = (f", dropped by the agent (declared): {sr.declared_drops}"
                     if sr.declared_drops else "")
            lines.append(f"  stream {s} {sr.tag}: {sr.verified} records verified{extra}{drops}")
    if report.unsigned:
        tags = ", ".join(f"{t}: {n}" for t, n in sorted(report.unsigned_tags.items()))
        lines.append(f"{report.unsigned} records without signature from other sources "
                     f"(not checked): {tags}")
    for f in report.findings:
        where = " ".join(x for x in (f.boot and f"boot {f.boot}", f.stream) if x)
        lines.append(f"FINDING {f.kind}: {where}: {f.detail}" if where
                     else f"FINDING {f.kind}: {f.detail}")
    verdict = (f"{len(report.findings)} findings" if report.findings else
               "every record verified: intact, complete and in order")
    if not report.findings and not all(br.final for br in report.boots.values()):
        verdict += " up to the last checkpoint"
    lines.append(verdict)
    return "\n".join(lines) + "\n"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _as_json(report: Report) -> dict[str, Any]:
    return {"ok": not report.findings, "boots": {b: asdict(r) for b, r in report.boots.items()},
            "findings": [asdict(f) for f in report.findings], "unsigned": report.unsigned,
            "unsigned_tags": report.unsigned_tags}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .verify import verify
    except ImportError as exc:
        sys.stderr.write(f"enclave-log-verify: needs the [sign] extra ({exc.name} is "
                         "missing): pip install 'nitro-enclave-logs[sign]'\n")
        return 2
    pcrs = {i: getattr(args, f"pcr{i}") for i in _PCRS if getattr(args, f"pcr{i}")}
    try:
        root = _root(args.root_cert)
        items: list[Item] = []
        for path in args.inputs:
            items.extend(read_input(path, time_key=args.time_key))
    except InputError as exc:
        sys.stderr.write(f"enclave-log-verify: {exc}\n")
        return 2
    max_age = None if args.max_age is None else int(args.max_age * 1000)
    report = verify(items, root_sha256=root, pcrs=pcrs, require_final=args.require_final,
                    max_age_ms=max_age, now_ms=time.time_ns() // 1_000_000)
    if args.json:
        sys.stdout.write(json.dumps(_as_json(report), indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    return 1 if report.findings else 0
