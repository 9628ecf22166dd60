"""The Forward v1 handshake, HELO / PING / PONG, for both roles (sans-I/O).

The server writes HELO right after accepting; the client answers PING; the server
checks it and answers PONG. Both digests are SHA-512 lowercase hex over byte
concatenations (the spec's ``+``)::

    PING digest = sha512(shared_key_salt + client_hostname + nonce + shared_key)
    PONG digest = sha512(shared_key_salt + server_hostname + nonce + shared_key)

The spec's user auth (a HELO auth salt, a PING username and password digest) is
not used: no option of either side names users. Our HELO carries an empty auth
salt and our PING empty user fields, as the spec allows; a PING's user fields are
read and ignored.

Fluent Bit sends its nonce and auth salt as 16 random bytes inside a msgpack *str*,
which is not valid UTF-8. Decoders here run with ``unicode_errors="surrogateescape"``
so such a str survives as a Python str that encodes back to the exact bytes; every
salt and nonce is held as ``bytes``. Fluent Bit rejects a PING with any ``bin``
field, so every PING field is written as a msgpack str, whatever its bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from .conventions import VERSION_KEY
from .entries import packb
from .errors import AuthenticationError, HandshakeError, UsageError

__all__ = [
    "ClientHandshake",
    "Helo",
    "Ping",
    "Pong",
    "ServerHandshake",
    "encode_helo",
    "encode_ping",
    "encode_pong",
    "parse_helo",
    "parse_ping",
    "parse_pong",
    "shared_key_digest",
]


@dataclass(frozen=True, slots=True)
class Helo:
    """Server greeting: ``["HELO", {"nonce", "auth", "keepalive"}]``.

    ``version`` is our extension: our relay adds ``"relay_version"`` to the map, which
    tells our agent it may append its own version to PING. Peers ignore unknown keys.
    """

    nonce: bytes
    auth: bytes = b""
    keepalive: bool = True
    version: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    """Client reply: hostname, its salt, the shared-key digest and optional user auth.

    ``version`` is not part of the spec: our agent appends its version as a seventh
    element, only after a HELO that carried ``relay_version``, so Fluent Bit (which
    insists on six fields) never sees it.
    """

    hostname: str
    shared_key_salt: bytes
    shared_key_digest: str
    username: str = ""
    password_digest: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class Pong:
    """Server verdict: ``["PONG", ok, reason, server_hostname, digest]``."""

    auth_result: bool
    reason: str
    hostname: str
    shared_key_digest: str


def _b(value: str | bytes) -> bytes:
    """Bytes of a str decoded with surrogateescape, or the bytes themselves."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def shared_key_digest(salt: bytes, hostname: str, nonce: bytes, shared_key: str) -> str:
    """The spec's shared-key digest, lowercase hex."""
    return hashlib.sha512(b"".join((salt, _b(hostname), nonce, _b(shared_key)))).hexdigest()


# -- encoding: every field of a handshake message is a msgpack str --------------


def _text(value: str | bytes) -> str:
    """The str that ``packb`` (surrogateescape) writes back as exactly these bytes."""
    return _b(value).decode("utf-8", "surrogateescape")


def encode_helo(helo: Helo) -> bytes:
    """Encode HELO with str nonce and auth, as Fluent Bit does."""
    options: dict[str, str | bool] = {"nonce": _text(helo.nonce), "auth": _text(helo.auth),
                                      "keepalive": helo.keepalive}
    if helo.version:
        options[VERSION_KEY] = helo.version
    return packb(("HELO", options))


def encode_ping(ping: Ping) -> bytes:
    """Encode PING with every field a str (Fluent Bit rejects bin fields)."""
    fields = ["PING", ping.hostname, _text(ping.shared_key_salt), ping.shared_key_digest,
              ping.username, ping.password_digest]
    if ping.version:
        fields.append(ping.version)
    return packb(fields)


def encode_pong(pong: Pong) -> bytes:
    """Encode PONG."""
    return packb(("PONG", pong.auth_result, pong.reason, pong.hostname, pong.shared_key_digest))


# -- parsing: from objects a surrogateescape msgpack decoder produced -----------


def _is_text(value: Any) -> bool:
    return isinstance(value, (str, bytes))


def parse_helo(obj: Any) -> Helo:
    """Parse a decoded HELO, or raise ``HandshakeError``."""
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2 and obj[0] == "HELO"
            and isinstance(obj[1], dict)):
        raise HandshakeError("expected HELO: [\"HELO\", {options}]")
    opts = obj[1]
    nonce, auth = opts.get("nonce", b""), opts.get("auth", b"")
    keepalive = opts.get("keepalive", True)
    version = opts.get(VERSION_KEY, "")
    if not (_is_text(nonce) and nonce and _is_text(auth) and isinstance(keepalive, bool)
            and _is_text(version)):
        raise HandshakeError("HELO needs a non-empty nonce (str or bin), an auth salt "
                             "(str or bin) and a bool keepalive")
    return Helo(_b(nonce), _b(auth), keepalive, _b(version).decode("utf-8", "replace"))


def parse_ping(obj: Any) -> Ping:
    """Parse a decoded PING (6 fields, or 7 with our agent's version)."""
    if not (isinstance(obj, (list, tuple)) and len(obj) in (6, 7) and obj[0] == "PING"
            and all(_is_text(f) for f in obj[1:])):
        raise HandshakeError("expected PING: [\"PING\", hostname, salt, digest, user, "
                             "password digest], every field a str")
    version = obj[6] if len(obj) == 7 else ""
    # surrogateescape keeps every byte: the digest covers the hostname as it was sent.
    return Ping(_text(obj[1]), _b(obj[2]), _text(obj[3]), _text(obj[4]), _text(obj[5]),
                _text(version))


def parse_pong(obj: Any) -> Pong:
    """Parse a decoded PONG, or raise ``HandshakeError``."""
    if not (isinstance(obj, (list, tuple)) and len(obj) == 5 and obj[0] == "PONG"
            and isinstance(obj[1], bool) and all(_is_text(f) for f in obj[2:])):
        raise HandshakeError("expected PONG: [\"PONG\", bool, reason, hostname, digest]")
    return Pong(obj[1], _b(obj[2]).decode("utf-8", "replace"),
                _b(obj[3]).decode("utf-8", "replace"), _b(obj[4]).decode("ascii", "replace"))


# -- the two roles ---------------------------------------------------------------


class ServerHandshake:
    """The server's side: make HELO, judge PING, make PONG.

    Args:
        hostname: our name, sent in PONG and covered by its digest.
        shared_key: the key clients must prove; ``None`` accepts any PING.
        nonce: the HELO nonce; random 16 bytes (as hex) by default.
        version: announced in HELO as ``relay_version`` so our agents send theirs.
    """

    def __init__(self, *, hostname: str, shared_key: str | None = None,
                 nonce: bytes | None = None, version: str = "") -> None:
        self.hostname = hostname
        self.version = version
        self.shared_key = shared_key
        # Hex keeps our nonce valid UTF-8, so strict peers decode it too.
        self.nonce = nonce if nonce is not None else os.urandom(16).hex().encode()

    def helo(self) -> bytes:
        """Bytes of the HELO to send right after accept."""
        return encode_helo(Helo(self.nonce, b"", True, self.version))  # no user auth

    def check(self, ping: Ping) -> Pong:
        """Judge a PING. A PONG with ``auth_result`` false means: send it, then close."""
        key = self.shared_key or ""
        if self.shared_key is not None:
            expected = shared_key_digest(ping.shared_key_salt, ping.hostname, self.nonce, key)
            if not hmac.compare_digest(expected, ping.shared_key_digest):
                return Pong(False, "shared key mismatch", "", "")
        digest = shared_key_digest(ping.shared_key_salt, self.hostname, self.nonce, key)
        return Pong(True, "", self.hostname, digest)


class ClientHandshake:
    """The client's side: answer HELO with PING, then verify PONG.

    Args:
        hostname: our name, sent in PING (a claim the server cannot verify).
        shared_key: the key to prove; ``None`` sends an empty-key digest and does
            not check the server's.
        version: our version, appended to PING for relays that read it.
    """

    def __init__(self, *, hostname: str, shared_key: str | None = None, version: str = "",
                 salt: bytes | None = None) -> None:
        if not hostname:
            raise UsageError("the handshake needs a non-empty hostname")
        self.hostname = hostname
        self.shared_key = shared_key
        self.version = version
        self.salt = salt if salt is not None else os.urandom(16).hex().encode()
        #: A server answered a late HELO (``late_helo``): every session from now on
        #: waits for its HELO, as long as with a key, and answers it.
        self.expects_helo = False
        self._nonce: bytes | None = None

    def ping(self, helo: Helo) -> bytes:
        """Bytes of the PING that answers ``helo``."""
        self._nonce = helo.nonce
        digest = shared_key_digest(self.salt, self.hostname, helo.nonce, self.shared_key or "")
        version = self.version if helo.version else ""
        return encode_ping(Ping(self.hostname, self.salt, digest, "", "", version))

    def late_helo(self, helo: Helo) -> str:
        """The rule for a HELO that came after we began sending, which happens only when
        we hold no key (with one, we wait for HELO before sending anything).

        Such a server asks for a handshake though we were given no key: a keyless one
        (another relay, Fluent Bit with ``empty_shared_key``) accepts a PING whose digest
        uses an empty key, so we answer it, on every connection from now on. One with a
        key refuses that PING, and the refusal says so. (Fluentd's and Fluent Bit's
        forward outputs decide up front instead: they answer HELO only when configured
        with ``<security>`` or ``shared_key``/``empty_shared_key``, and otherwise fail
        on it.)

        Returns:
            What to log.

        Raises:
            HandshakeError: we hold a key (so we waited for a HELO; a second one now is
                the server breaking the protocol).
        """
        if self.shared_key is not None:
            raise HandshakeError("a HELO in the middle of the stream")
        self.expects_helo = True
        users = (" It asks for a username and password too (its HELO carries an auth "
                 "salt; Fluent Bit always sends one)." if helo.auth else "")
        return ("asks for a handshake although no shared key is configured here: "
                "answering it with an empty key from the next connection on (a keyless "
                "server accepts that; if it refuses, it has a shared key: configure the "
                "same one here)." + users)

    def check(self, pong: Pong) -> None:
        """Verify the PONG; raise ``AuthenticationError`` if the server refused or lied."""
        if self._nonce is None:
            raise UsageError("check() called before ping()")
        if not pong.auth_result:
            raise AuthenticationError(f"server refused the handshake: {pong.reason or 'no reason'}")
        if self.shared_key is not None:
            expected = shared_key_digest(self.salt, pong.hostname, self._nonce, self.shared_key)
            if not hmac.compare_digest(expected, pong.shared_key_digest):
                raise AuthenticationError("server's PONG digest is wrong: it does not hold "
                                          "the same shared key")
