"""fluent_forward.handshake: digests, golden HELO/PING/PONG bytes, both roles end to end.

Digests are recomputed here with hashlib over the spec's byte concatenation, and
frames go through ``FrameDecoder`` as they would on a connection.
"""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from fluent_forward.codec import FrameDecoder, Role
from fluent_forward.errors import AuthenticationError, HandshakeError, UsageError
from fluent_forward.handshake import (
    ClientHandshake,
    Helo,
    Ping,
    Pong,
    ServerHandshake,
    encode_helo,
    encode_ping,
    encode_pong,
    parse_helo,
    parse_ping,
    parse_pong,
    shared_key_digest,
)

#: 16 random-looking bytes that are not UTF-8, as Fluent Bit sends its nonce and salt.
RAW_NONCE = bytes(range(0xF0, 0x100))
RAW_AUTH = bytes(range(0x80, 0x90))


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def decode_one(role: Role, data: bytes) -> object:
    frames = FrameDecoder(role).feed(data)
    assert len(frames) == 1, frames
    return frames[0]


def str_fields(data: bytes) -> list[bytes]:
    """Parse a flat msgpack array whose elements must all be str; return their bytes."""
    assert 0x90 <= data[0] <= 0x9F, "expected a fixarray"
    count, pos, out = data[0] & 0x0F, 1, []
    for _ in range(count):
        b = data[pos]
        if 0xA0 <= b <= 0xBF:
            n, pos = b & 0x1F, pos + 1
        elif b in (0xD9, 0xDA, 0xDB):
            width = {0xD9: 1, 0xDA: 2, 0xDB: 4}[b]
            n = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
            pos += 1 + width
        else:
            raise AssertionError(f"element type byte {b:#04x} is not a msgpack str")
        out.append(data[pos:pos + n])
        pos += n
    assert pos == len(data), "trailing bytes after the array"
    return out


def exchange(server: ServerHandshake, client: ClientHandshake) -> tuple[Ping, Pong]:
    """Run HELO -> PING -> PONG through decoders; return what each side received last."""
    helo = decode_one(Role.CLIENT, server.helo())
    assert isinstance(helo, Helo)
    ping = decode_one(Role.SERVER, client.ping(helo))
    assert isinstance(ping, Ping)
    pong = decode_one(Role.CLIENT, encode_pong(server.check(ping)))
    assert isinstance(pong, Pong)
    return ping, pong


# -- digests -------------------------------------------------------------------------


def test_shared_key_digest_is_sha512_of_the_concatenation() -> None:
    got = shared_key_digest(b"salt", "host", b"nonce", "key")
    assert got == sha512_hex(b"salt", b"host", b"nonce", b"key")
    assert len(got) == 128 and got == got.lower()
    # the order is the spec's: swapping two parts changes the digest
    assert got != sha512_hex(b"host", b"salt", b"nonce", b"key")


def test_shared_key_digest_over_raw_bytes() -> None:
    got = shared_key_digest(RAW_AUTH, "h\u00e9", RAW_NONCE, "k\u00e9y")
    assert got == sha512_hex(RAW_AUTH, "h\u00e9".encode(), RAW_NONCE, "k\u00e9y".encode())


def test_shared_key_digest_of_a_surrogateescaped_str_uses_the_raw_bytes() -> None:
    host = b"\xffhost".decode("utf-8", "surrogateescape")
    assert shared_key_digest(b"s", host, b"n", "") == sha512_hex(b"s", b"\xffhost", b"n")


# -- golden bytes ----------------------------------------------------------------------


def test_helo_golden_bytes() -> None:
    assert encode_helo(Helo(b"abc")) == (
        b"\x92\xa4HELO\x83\xa5nonce\xa3abc\xa4auth\xa0\xa9keepalive\xc3")


def test_helo_golden_bytes_with_relay_version_and_no_keepalive() -> None:
    assert encode_helo(Helo(RAW_NONCE, b"xy", False, "1.0")) == (
        b"\x92\xa4HELO\x84\xa5nonce\xb0" + RAW_NONCE + b"\xa4auth\xa2xy"
        b"\xa9keepalive\xc2\xadrelay_version\xa31.0")


def test_ping_golden_bytes() -> None:
    assert encode_ping(Ping("h", b"s", "d")) == b"\x96\xa4PING\xa1h\xa1s\xa1d\xa0\xa0"
    assert encode_ping(Ping("h", b"s", "d", "u", "p", "9")) == (
        b"\x97\xa4PING\xa1h\xa1s\xa1d\xa1u\xa1p\xa19")


def test_pong_golden_bytes() -> None:
    assert encode_pong(Pong(True, "", "srv", "ab")) == b"\x95\xa4PONG\xc3\xa0\xa3srv\xa2ab"
    assert encode_pong(Pong(False, "no", "", "")) == b"\x95\xa4PONG\xc2\xa2no\xa0\xa0"


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\xa0"), (31, b"\xbf"), (32, b"\xd9\x20"), (255, b"\xd9\xff"),
    (256, b"\xda\x01\x00"), (65535, b"\xda\xff\xff"), (65536, b"\xdb\x00\x01\x00\x00"),
])
def test_every_ping_field_is_a_str_at_every_width(size: int, header: bytes) -> None:
    salt = bytes((0xFF,)) * size  # not UTF-8, still a str on the wire
    ping = encode_ping(Ping("x" * size, salt, "d" * size, "u" * size, "p" * size, "v"))
    assert ping[0] == 0x97
    fields = str_fields(ping)
    assert fields == [b"PING", b"x" * size, salt, b"d" * size, b"u" * size, b"p" * size, b"v"]
    assert ping[6:6 + len(header)] == header  # the hostname's header, after \x97\xa4PING


def test_client_ping_has_no_bin_fields() -> None:
    client = ClientHandshake(hostname="cli", shared_key="k", salt=RAW_AUTH)
    fields = str_fields(client.ping(Helo(RAW_NONCE, RAW_AUTH)))
    assert fields[0] == b"PING"
    assert fields[2] == RAW_AUTH  # the raw salt, as str


# -- the 7th PING element --------------------------------------------------------------


def test_ping_version_only_after_a_helo_with_relay_version() -> None:
    client = ClientHandshake(hostname="cli", version="9.9")
    plain = client.ping(Helo(b"n"))
    assert plain[0] == 0x96 and len(str_fields(plain)) == 6
    relay = client.ping(Helo(b"n", version="1.0"))
    assert relay[0] == 0x97 and str_fields(relay)[6] == b"9.9"


def test_ping_without_a_client_version_stays_at_six() -> None:
    assert ClientHandshake(hostname="cli").ping(Helo(b"n", version="1.0"))[0] == 0x96


def test_relay_version_reaches_the_client_and_back() -> None:
    server = ServerHandshake(hostname="srv", shared_key="k", version="1.0")
    client = ClientHandshake(hostname="cli", shared_key="k", version="2.0")
    ping, pong = exchange(server, client)
    assert ping.version == "2.0"
    assert pong.auth_result
    ping, _ = exchange(ServerHandshake(hostname="srv", shared_key="k"), client)
    assert ping.version == ""


# -- full exchanges --------------------------------------------------------------------


def test_exchange_with_a_shared_key() -> None:
    server = ServerHandshake(hostname="srv", shared_key="k", nonce=b"N" * 16)
    client = ClientHandshake(hostname="cli", shared_key="k", salt=b"S" * 16)
    ping, pong = exchange(server, client)
    assert ping == Ping("cli", b"S" * 16, sha512_hex(b"S" * 16, b"cli", b"N" * 16, b"k"))
    assert pong == Pong(True, "", "srv", sha512_hex(b"S" * 16, b"srv", b"N" * 16, b"k"))
    client.check(pong)


def test_exchange_without_a_shared_key() -> None:
    server = ServerHandshake(hostname="srv", nonce=b"n")
    client = ClientHandshake(hostname="cli", salt=b"s")
    ping, pong = exchange(server, client)
    assert ping.shared_key_digest == sha512_hex(b"s", b"cli", b"n")
    assert pong.auth_result
    assert pong.shared_key_digest == sha512_hex(b"s", b"srv", b"n")
    client.check(pong)


def test_wrong_key_on_the_client_is_refused_by_the_server() -> None:
    server = ServerHandshake(hostname="srv", shared_key="right")
    client = ClientHandshake(hostname="cli", shared_key="wrong")
    _, pong = exchange(server, client)
    assert pong.auth_result is False
    assert "shared key" in pong.reason
    assert pong.shared_key_digest == ""
    with pytest.raises(AuthenticationError, match="refused"):
        client.check(pong)


def test_missing_key_on_the_client_is_refused_by_the_server() -> None:
    _, pong = exchange(ServerHandshake(hostname="srv", shared_key="k"),
                       ClientHandshake(hostname="cli"))
    assert pong.auth_result is False


def test_server_with_a_different_key_fails_the_clients_check() -> None:
    nonce, salt = b"n" * 16, b"s" * 16
    client = ClientHandshake(hostname="cli", shared_key="mine", salt=salt)
    client.ping(Helo(nonce))
    forged = Pong(True, "", "srv", sha512_hex(salt, b"srv", nonce, b"theirs"))
    with pytest.raises(AuthenticationError, match="same shared key"):
        client.check(forged)
    client.check(Pong(True, "", "srv", sha512_hex(salt, b"srv", nonce, b"mine")))


def test_server_without_a_key_does_not_prove_one_to_the_client() -> None:
    server = ServerHandshake(hostname="srv")  # accepts any PING, digest over an empty key
    client = ClientHandshake(hostname="cli", shared_key="k")
    _, pong = exchange(server, client)
    assert pong.auth_result
    with pytest.raises(AuthenticationError, match="same shared key"):
        client.check(pong)


def test_server_with_another_key_makes_the_client_raise() -> None:
    _, pong = exchange(ServerHandshake(hostname="srv", shared_key="theirs"),
                       client := ClientHandshake(hostname="cli", shared_key="mine"))
    with pytest.raises(AuthenticationError):
        client.check(pong)


def test_client_without_a_key_does_not_check_the_digest() -> None:
    client = ClientHandshake(hostname="cli")
    client.ping(Helo(b"n"))
    client.check(Pong(True, "", "srv", "not a digest"))


def test_fluent_bit_refusal_pong_raises_with_its_reason() -> None:
    pong = decode_one(Role.CLIENT,
                      b"\x95\xa4PONG\xc2\xbausername/password mismatch\xa0\xa0")
    assert isinstance(pong, Pong)
    client = ClientHandshake(hostname="cli", shared_key="k")
    client.ping(Helo(b"n"))
    with pytest.raises(AuthenticationError, match="username/password mismatch"):
        client.check(pong)


def test_check_before_ping_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        ClientHandshake(hostname="cli").check(Pong(True, "", "srv", ""))


def test_client_needs_a_hostname() -> None:
    with pytest.raises(UsageError):
        ClientHandshake(hostname="")


def test_server_default_nonce_is_random_utf8() -> None:
    a, b = ServerHandshake(hostname="s"), ServerHandshake(hostname="s")
    assert a.nonce != b.nonce
    assert len(a.nonce) == 32
    a.nonce.decode("ascii")
    assert decode_one(Role.CLIENT, a.helo()).auth == b""  # no user auth asked for


# -- user / password: not used; the user fields are sent empty and read ------------


def test_no_user_auth_is_sent_even_when_the_helo_asks() -> None:
    client = ClientHandshake(hostname="cli")
    fields = str_fields(client.ping(Helo(b"n", RAW_AUTH)))
    assert fields[4:6] == [b"", b""]


def test_a_pings_user_fields_are_read_and_ignored() -> None:
    server = ServerHandshake(hostname="srv", shared_key="k", nonce=RAW_NONCE)
    digest = shared_key_digest(b"S" * 16, "cli", RAW_NONCE, "k")
    assert server.check(Ping("cli", b"S" * 16, digest, "alice", "not checked")).auth_result


# -- Fluent Bit's HELO: non-UTF-8 bytes in a msgpack str -------------------------------


def test_fluent_bit_helo_digest_uses_the_raw_bytes() -> None:
    wire = (b"\x92\xa4HELO\x82\xa5nonce\xb0" + RAW_NONCE + b"\xa4auth\xb0" + RAW_AUTH)
    helo = decode_one(Role.CLIENT, wire)
    assert helo == Helo(RAW_NONCE, RAW_AUTH, True, "")
    assert isinstance(helo, Helo)
    client = ClientHandshake(hostname="cli", shared_key="k", salt=b"S" * 16)
    fields = str_fields(client.ping(helo))
    assert fields == [b"PING", b"cli", b"S" * 16,
                      sha512_hex(b"S" * 16, b"cli", RAW_NONCE, b"k").encode(), b"", b""]
    pong_digest = sha512_hex(b"S" * 16, b"fluent-bit", RAW_NONCE, b"k")
    client.check(Pong(True, "", "fluent-bit", pong_digest))


def test_server_reads_a_raw_salt_ping() -> None:
    server = ServerHandshake(hostname="srv", shared_key="k", nonce=RAW_NONCE)
    digest = sha512_hex(RAW_AUTH, b"cli", RAW_NONCE, b"k")
    wire = (b"\x96\xa4PING\xa3cli\xb0" + RAW_AUTH + b"\xd9\x80" + digest.encode()
            + b"\xa0\xa0")
    ping = decode_one(Role.SERVER, wire)
    assert isinstance(ping, Ping)
    assert ping.shared_key_salt == RAW_AUTH
    pong = server.check(ping)
    assert pong == Pong(True, "", "srv", sha512_hex(RAW_AUTH, b"srv", RAW_NONCE, b"k"))


def test_server_helo_round_trips_raw_bytes() -> None:
    server = ServerHandshake(hostname="srv", nonce=RAW_NONCE)
    assert decode_one(Role.CLIENT, server.helo()) == Helo(RAW_NONCE, b"", True, "")
    helo = decode_one(Role.CLIENT, encode_helo(Helo(RAW_NONCE, RAW_AUTH)))
    assert helo == Helo(RAW_NONCE, RAW_AUTH, True, "")


# -- parsers reject wrong shapes ---------------------------------------------------------


@pytest.mark.parametrize("obj", [
    None, ("HELO",), ("HELO", {}), ("HELO", {"nonce": ""}), ("HELO", {"nonce": 5}),
    ("HELO", {"nonce": "n", "auth": 1}), ("HELO", {"nonce": "n", "keepalive": 1}),
    ("HELO", {"nonce": "n", "relay_version": 2}), ("HELLO", {"nonce": "n"}), ("HELO", []),
])
def test_parse_helo_rejects(obj: object) -> None:
    with pytest.raises(HandshakeError, match="HELO"):
        parse_helo(obj)


@pytest.mark.parametrize("obj", [
    None, ("PING", "h", "s", "d", "u"), ("PING", "h", "s", "d", "u", "p", "v", "x"),
    ("PING", "h", 1, "d", "u", "p"), ("PING", "h", "s", "d", "u", None), ("PONG", *"hsdup"),
])
def test_parse_ping_rejects(obj: object) -> None:
    with pytest.raises(HandshakeError, match="PING"):
        parse_ping(obj)


@pytest.mark.parametrize("obj", [
    None, ("PONG", True, "", ""), ("PONG", 1, "", "", ""), ("PONG", True, "", "", 5),
    ("PING", True, "", "", ""),
])
def test_parse_pong_rejects(obj: object) -> None:
    with pytest.raises(HandshakeError, match="PONG"):
        parse_pong(obj)


def test_authentication_error_is_a_handshake_error() -> None:
    assert issubclass(AuthenticationError, HandshakeError)


def test_a_late_helo_is_answered_without_a_key_only_when_we_hold_none() -> None:
    keyless = ClientHandshake(hostname="relay-a")
    note = keyless.late_helo(Helo(b"n" * 16, b""))
    assert "answering it with an empty key" in note and "username" not in note
    # Fluent Bit's HELO always carries an auth salt: the note says what that may mean.
    assert "username and password" in keyless.late_helo(Helo(b"n" * 16, b"s" * 16))
    with pytest.raises(HandshakeError):
        ClientHandshake(hostname="relay-a", shared_key="k").late_helo(Helo(b"n" * 16))


def test_the_empty_key_ping_is_what_a_keyless_server_accepts() -> None:
    server = ServerHandshake(hostname="relay-b")
    client = ClientHandshake(hostname="relay-a")
    helo = parse_helo(msgpack.unpackb(server.helo(), raw=False))
    pong = server.check(parse_ping(msgpack.unpackb(client.ping(helo), raw=False)))
    assert pong.auth_result
    client.check(pong)
    # And the digest is the empty key's, which a server keyed "" (Fluent Bit's
    # empty_shared_key) checks.
    keyed_empty = ServerHandshake(hostname="fb", shared_key="", nonce=server.nonce)
    assert keyed_empty.check(parse_ping(msgpack.unpackb(client.ping(helo), raw=False))).auth_result
