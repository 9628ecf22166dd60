"""Random edits to a verified log are always detected.

The log is Fluent Bit's file format of an in-process signing run (tests/signedlog.py).
An edit touches what the signatures cover: a signed record (its text, time or number;
deleted, copied with a change, moved) or a checkpoint (deleted, a character changed).
Edits of what they do not cover (the relay's tag prefix, sub-millisecond digits, an
optional later attestation document) are out of scope by design: README says so.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from enclave_side import proof
from logverify.readers import InputError, read_input
from logverify.verify import verify
from tests.signedlog import lines, make_log, pki, render
from tests.unit.test_signing import root_sha

_LINE = re.compile(r"^(\S+): \[([0-9]+)\.([0-9]{9}), (\{.*\})\]$")


@functools.cache
def clean_log() -> tuple[str, ...]:
    pki()
    # Batches of 20 records: a full group of proof.GROUP and a short one each.
    text = render(make_log([lines(20, 20 * i) for i in range(4)], records=20), "fluentbit")
    return tuple(text.splitlines())


def findings(log: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log"
        path.write_text("\n".join(log) + "\n")
        try:
            return [f.kind for f in verify(read_input(path), root_sha256=root_sha()).findings]
        except InputError:  # the edit broke the JSON: unreadable is detected too
            return ["unreadable"]


def _signed(log: list[str]) -> list[int]:
    return [i for i, line in enumerate(log) if '"sig_seq":' in line]


def _checkpoints(log: list[str]) -> list[int]:
    return [i for i, line in enumerate(log) if proof.ORIGIN in line]


def _rewrite(line: str, change: str, data: st.DataObject) -> str:
    m = _LINE.match(line)
    assert m
    tag, sec, nsec, record = m.group(1), int(m.group(2)), int(m.group(3)), json.loads(m.group(4))
    if change == "text":
        text = record["log"]
        i = data.draw(st.integers(0, len(text) - 1))
        c = data.draw(st.characters(min_codepoint=32, max_codepoint=0x2FF).filter(
            lambda c: c != text[i]))
        record["log"] = text[:i] + c + text[i + 1:]
    elif change == "time":
        ms = sec * 1000 + nsec // 10**6 + data.draw(st.integers(-5000, 5000).filter(bool))
        sec, nsec = divmod(ms, 1000)
        nsec *= 10**6
    else:
        boot, stream, seq = record["sig_seq"].split(":")
        new = data.draw(st.integers(1, 200).filter(lambda n: n != int(seq)))
        record["sig_seq"] = f"{boot}:{stream}:{new}"
    return f"{tag}: [{sec}.{nsec:09d}, {json.dumps(record, separators=(',', ':'))}]"


def edit(log: list[str], data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["change", "delete", "insert", "swap",
                                      "drop_checkpoint", "garble_checkpoint"]))
    signed = _signed(log)
    i = data.draw(st.sampled_from(signed))
    if kind == "change":
        log[i] = _rewrite(log[i], data.draw(st.sampled_from(["text", "time", "seq"])), data)
    elif kind == "delete":
        del log[i]
    elif kind == "insert":
        log.insert(data.draw(st.integers(0, len(log))), _rewrite(log[i], "text", data))
    elif kind == "swap":
        j = data.draw(st.sampled_from(signed).filter(lambda j: j != i))
        log[i], log[j] = log[j], log[i]
    else:
        k = data.draw(st.sampled_from(_checkpoints(log)))
        if kind == "drop_checkpoint":
            del log[k]
        else:
            start = log[k].index(proof.ORIGIN) + len(proof.ORIGIN)
            end = log[k].index('","event":')  # the note ends there; "event" is not signed
            pos = data.draw(st.integers(start, end - 1))
            c = data.draw(st.sampled_from("ABCxyz019+/"))
            log[k] = log[k][:pos] + c + log[k][pos + 1:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_edits_to_a_verified_log_are_always_detected(data: st.DataObject) -> None:
    original = list(clean_log())
    assert findings(original) == []
    log = list(original)
    for _ in range(data.draw(st.integers(1, 3))):
        edit(log, data)
    assume(log != original)
    assert findings(log), "an edit went unnoticed"
