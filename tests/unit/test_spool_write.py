"""The spool's write path: a payload in parts (entries never copied), crc32 and writev in
the commit thread. The bytes on disk are those of the one-buffer format."""

from __future__ import annotations

import asyncio
import os
import zlib
from pathlib import Path

import msgpack
import pytest

from parent_side import spool_format as spool_mod
from parent_side.spool import Spool
from parent_side.spool_format import FRAME, HEADER, SpoolEntry, payload_parts
from tests.helpers import short_tmpdir, within


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
@pytest.mark.parametrize(("boot", "seq"), [(None, None), (b"\x01" * 8, 2**40)])
def test_payload_parts_join_to_the_msgpack_of_the_payload(size: int, boot: bytes | None,
                                                          seq: int | None) -> None:
    entries = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    e = SpoolEntry(0, 0, "enclave.cid-16.app.\udcff", entries, 7, boot, seq, 123456789)
    parts = payload_parts(e)
    assert parts[1] is entries
    assert b"".join(parts) == msgpack.packb(
        [e.tag, entries, 7, boot, seq, 123456789], use_bin_type=True,
        unicode_errors="surrogateescape")


def test_writev_all_finishes_partial_writes_and_long_lists(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    real = os.writev
    calls = []

    def stingy(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        assert len(buffers) <= 3
        return real(fd, [bytes(b"".join(buffers))[:5]])  # at most 5 bytes a call

    monkeypatch.setattr(spool_mod, "_IOV_MAX", 3)
    monkeypatch.setattr(spool_mod.os, "writev", stingy)
    parts = [b"abc", b"", b"defghij", b"k", b"lmnopqrstu", b"", b"vwxyz"]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        spool_mod._writev_all(fd, parts)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts)
    assert len(calls) >= 6


def test_the_spool_writes_what_it_wrote_before() -> None:
    """Segment bytes: header, then per entry u32 length | u32 crc32 | msgpack payload."""
    async def run(d: Path) -> None:
        sp = Spool(str(d), fsync=lambda fd: None)
        sp.open()
        big = b"\x92\x01\x80" * 100_000
        futs = [await sp.append("a", b"\x92\x01\x80", 1, boot_id=b"b" * 8, seq=1),
                await sp.append("b", big, 100_000)]
        await within(asyncio.gather(*futs), "commits")
        data = (d / "0000000000000001.seg").read_bytes()
        pos = HEADER.size
        got = []
        while pos < len(data):
            length, crc = FRAME.unpack_from(data, pos)
            payload = data[pos + FRAME.size:pos + FRAME.size + length]
            assert zlib.crc32(payload) == crc
            got.append(msgpack.unpackb(payload, raw=False))
            pos += FRAME.size + length
        assert [g[:3] for g in got] == [["a", b"\x92\x01\x80", 1], ["b", big, 100_000]]
        assert got[0][3:5] == [b"b" * 8, 1]
        first = await sp.next_entry()
        assert (first.tag, first.entries) == ("a", b"\x92\x01\x80")
        sp.ack(first)
        second = await sp.next_entry()
        assert second.entries == big
        sp.ack(second)
        await sp.close()

    with short_tmpdir() as d:
        asyncio.run(run(d / "spool"))


def test_the_spool_checksum_is_zlibs_crc32_by_isa_l_when_installed() -> None:
    # The [fast] extra (installed with [test]) must not change a byte on disk: the
    # same CRC-32, also chained over a payload's parts as the commit thread does.
    data = os.urandom(100_000)
    assert spool_mod.crc32(data) == zlib.crc32(data)
    assert spool_mod.crc32(data[7:], spool_mod.crc32(data[:7])) == zlib.crc32(data)
    assert spool_mod.crc32.__module__.startswith("isal")
