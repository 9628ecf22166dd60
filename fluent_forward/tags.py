"""The tags this project carries: one rule, for the agent's options and the relay's input.

A tag is routed by Fluent Bit (``match`` wildcards, ``match_regex``), often becomes a
CloudWatch log stream name (``log_stream_prefix`` + tag: 1 to 512 characters, no
``:`` nor ``*``) or part of a log group name (``[.-_/#A-Za-z0-9]+``), a file name
(``out_file`` names a file by the tag: at most 255 bytes on Linux) or an S3 key, and
is shown by log viewers. So a tag here is parts of letters, digits, ``_`` and ``-``,
joined by single dots, at most ``TAG_MAX_LENGTH`` characters: nothing a path, a
pattern, a terminal or a bidirectional-text renderer reads as syntax (``../``, ``*``,
``:``, control characters, NUL, a right-to-left override, invalid UTF-8), and with
the relay's ``enclave.<name>.`` in front it stays a valid file name (for names up to
100 characters) and far under CloudWatch's 512, leaving room for a stream prefix.

The agent refuses a tag of its own that breaks the rule when it starts (its user
learns at once, not downstream); the relay escapes a tag a peer sends that breaks it,
with ``escape_tag``, and counts and logs why.
"""

from __future__ import annotations

import re

__all__ = ["TAG_MAX_LENGTH", "escape_tag", "tag_problem"]

#: Longest tag taken, as sent by a peer (the relay's ``enclave.<name>.`` comes on top).
#: A real Fluent Bit's file output could not write ``enclave.local.`` + 256 characters.
TAG_MAX_LENGTH = 128

_PART = r"[A-Za-z0-9_-]+"
_TAG = re.compile(rf"{_PART}(?:\.{_PART})*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def tag_problem(tag: str) -> str | None:
    """What is wrong with ``tag`` (a sentence for a log line or an error), or None."""
    if len(tag) > TAG_MAX_LENGTH:
        return f"longer than {TAG_MAX_LENGTH} characters ({len(tag)})"
    if _TAG.fullmatch(tag):
        return None
    if not tag:
        return "empty"
    return ("use letters, digits, '_' and '-', in parts separated by single dots "
            "(e.g. myapp or payments.api)")


def escape_tag(tag: str) -> str:
    """A tag that follows the rule, as close to ``tag`` as it can be: every character
    outside it becomes ``_``, an empty part ``_``, and the whole is cut at
    ``TAG_MAX_LENGTH``. A tag that follows the rule comes back unchanged."""
    if _TAG.fullmatch(tag) and len(tag) <= TAG_MAX_LENGTH:
        return tag
    safe = ".".join(part or "_" for part in _UNSAFE.sub("_", tag).split("."))
    if len(safe) > TAG_MAX_LENGTH:
        safe = safe[:TAG_MAX_LENGTH]
        if safe.endswith("."):
            safe = safe[:-1] + "_"
    return safe
