"""registration.py: DTU packet formats, the server-side registration decoder and the
heartbeat filter, as tables checked both ways and replayed one byte at a time."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from st2000r.drivers.st2000r import registration as r
from st2000r.drivers.st2000r.messages import ReadData, encode

KNOWN = {"RVS-SOUTH-02": "plain", "USR-0007": "usr", "13900000001": "ddp", "A1": "plain", "A12": "usr"}

REGISTRATIONS = [
    # (bytes the DTU sends, expected registration)
    (b"RVS-SOUTH-02", r.Registered("RVS-SOUTH-02", format="plain")),
    (b"USR-0007\r\n", r.Registered("USR-0007", format="usr")),
    (
        bytes.fromhex("7B 01 00 16") + b"13900000001" + bytes((10, 1, 2, 3)) + bytes.fromhex("1F 90 7B"),
        r.Registered("13900000001", "10.1.2.3", 0x1F90, "ddp"),
    ),
    (b"A12\r\n", r.Registered("A12", format="usr")),
]


def test_ddp_packets_byte_exact():
    assert r.ddp_register("13900000001", "10.1.2.3", 0x1F90) == REGISTRATIONS[2][0]
    assert r.ddp_heartbeat("139") == bytes.fromhex("7B 02 00 10") + b"139" + bytes(8) + b"\x7b"
    assert r.ddp_ack("13900000001") == bytes.fromhex("7B 81 00 10") + b"13900000001" + b"\x7b"
    assert r.parse_ddp(r.ddp_ack("X")) == (r.DdpPacket(0x81, "X"), 16)
    assert r.parse_ddp(r.ddp_ack("X")[:7]) is None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x7c\x01", "must start with 7Bh"),
        (b"\x7b\x05", "unknown DDP packet type 05h"),
        (bytes.fromhex("7B 02 00 11") + bytes(13), "must be 16 bytes long"),
        (bytes.fromhex("7B 02 00 10") + b"X" * 11 + b"\x00", "must end with 7Bh"),
        (bytes.fromhex("7B 02 00 10") + bytes(11) + b"\x7b", "not 1..11 ASCII"),
    ],
)
def test_parse_ddp_errors(data, reason):
    with pytest.raises(r.RegistrationError, match=reason):
        r.parse_ddp(data)


@pytest.mark.parametrize("dtu_id", ["", "x" * 12, "ĳ"])
def test_ddp_refuses_ids_it_cannot_carry(dtu_id):
    with pytest.raises(r.RegistrationError, match="ASCII"):
        r.ddp_register(dtu_id)


@pytest.mark.parametrize("data, expected", REGISTRATIONS)
def test_registration_whole_and_byte_by_byte(data, expected):
    dec = r.RegistrationDecoder(KNOWN)
    assert dec.feed(data + b"\xfe\xfe") == expected
    assert dec.rest == b"\xfe\xfe"
    dec = r.RegistrationDecoder(KNOWN)
    results = [dec.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == expected
    assert dec.rest == b""


def test_plain_prefix_of_a_longer_id_waits_then_finishes():
    dec = r.RegistrationDecoder(KNOWN)
    assert dec.feed(b"A1") is None  # could still become "A12\r\n"
    assert dec.finish() == r.Registered("A1", format="plain")


@pytest.mark.parametrize(
    "known, data, error, match",
    [
        (KNOWN, b"NOBODY\r\n", r.UnknownDtu, "unknown DTU identity 'NOBODY' \\(usr"),
        (KNOWN, b"XYZ", r.UnknownDtu, "unknown DTU identity 'XYZ' \\(plain"),
        (KNOWN, r.ddp_register("139"), r.UnknownDtu, "'139' \\(ddp"),
        (KNOWN, r.ddp_heartbeat("13900000001"), r.RegistrationError, "expected a DDP registration"),
        ({"13900000001": "usr"}, r.ddp_register("13900000001"), r.RegistrationError, "configured for usr"),
    ],
)
def test_registration_refusals(known, data, error, match):
    dec = r.RegistrationDecoder(known)
    with pytest.raises(error, match=match):
        assert dec.feed(data) is None
        dec.finish()


def test_usr_id_without_its_terminator_is_unknown():
    dec = r.RegistrationDecoder({"USR-0007": "usr"})
    with pytest.raises(r.UnknownDtu, match="USR-0007XX"):
        dec.feed(b"USR-0007XX")


def test_refused_formats():
    dec = r.RegistrationDecoder(KNOWN, formats=("plain",))
    with pytest.raises(r.RegistrationError, match="DDP registration refused"):
        dec.feed(r.ddp_register("13900000001"))
    dec = r.RegistrationDecoder(KNOWN, formats=("plain",))
    with pytest.raises(r.RegistrationError, match="usr registration refused"):
        dec.feed(b"USR-0007\r\n")
    with pytest.raises(r.RegistrationError, match="not one of"):
        r.RegistrationDecoder(KNOWN, formats=("http",))


def test_finish_without_bytes_or_incomplete():
    with pytest.raises(r.RegistrationError, match="no registration received"):
        r.RegistrationDecoder(KNOWN).finish()
    dec = r.RegistrationDecoder(KNOWN)
    dec.feed(r.ddp_register("13900000001")[:9])
    with pytest.raises(r.RegistrationError, match="incomplete registration"):
        dec.finish()


FRAME = encode(ReadData(meter_type=0x10, address="00000010000101"))


@pytest.mark.parametrize("heartbeat", [b"RVS-SOUTH-02", b"USR-0007\r\n", r.ddp_heartbeat("13900000001")])
def test_heartbeat_cut_out_anywhere_in_a_frame_any_chunking(heartbeat):
    rng = random.Random(4)
    for cut in range(len(FRAME) + 1):
        stream = FRAME[:cut] + heartbeat + FRAME[cut:] + heartbeat + FRAME
        for _ in range(5):
            filt = r.HeartbeatFilter([heartbeat])
            bus = bytearray()
            beats = 0
            i = 0
            while i < len(stream):
                n = rng.randint(1, 7)
                for packet, chunk in filt.feed(stream[i : i + n]):
                    if packet is None:
                        bus += chunk
                    else:
                        beats += 1
                i += n
            assert filt.pending == 0  # a frame ends in 16h: nothing held back at the end
            assert (bytes(bus), beats) == (FRAME + FRAME, 2)


def test_heartbeat_prefix_is_held_back_then_flushed():
    filt = r.HeartbeatFilter([b"HB!"])
    assert filt.feed(b"\x68\x16H") == [(None, b"\x68\x16")]
    assert filt.pending == 1
    assert filt.flush() == b"H"
    assert filt.feed(b"B!") == [(None, b"B!")]


def test_uplink_and_downlink_decoders_match_the_simulator_api():
    up = r.UplinkDecoder("ddp")
    reg = r.ddp_register("13900000001", "10.0.0.1", 5000)
    events = up.feed(reg + FRAME[:3] + r.ddp_heartbeat("13900000001") + FRAME[3:])
    assert events[0] == r.Registered("13900000001", "10.0.0.1", 5000)
    assert r.Heartbeat("13900000001") in events
    assert b"".join(e.data for e in events if isinstance(e, r.Data)) == FRAME
    up = r.UplinkDecoder("plain")
    assert up.feed(b"whatever") == [r.Registered("whatever")]
    with pytest.raises(r.UnknownDtu):
        r.UplinkDecoder("usr", known_ids=["A"]).feed(b"B\r\n")
    down = r.DownlinkDecoder(r.DtuFormat("ddp", "X"))
    assert down.feed(b"\x01" + r.ddp_ack("X") + b"\x02") == (True, b"\x01\x02")
    assert r.DownlinkDecoder(r.DtuFormat("usr", "X")).feed(b"ab") == (True, b"ab")
    with pytest.raises(r.RegistrationError, match="not one of"):
        r.DtuFormat("http", "X")


def test_formats_agree_with_the_simulator_dtu():
    """The simulator's DTU sends exactly what this module parses (same bytes both ways)."""
    from st2000r.simulation import dtu

    for fmt, ident in [("plain", "RVS-SOUTH-02"), ("usr", "USR-0007"), ("ddp", "13900000001")]:
        sim = dtu.DtuFormat(fmt, ident)
        ours = r.DtuFormat(fmt, ident)
        assert sim.registration_packet("10.0.0.2", 4001) == ours.registration_packet("10.0.0.2", 4001)
        assert sim.heartbeat_packet() == ours.heartbeat_packet()
        dec = r.RegistrationDecoder({ident: fmt})
        assert dec.feed(sim.registration_packet("10.0.0.2", 4001)).dtu_id == ident
    assert dtu.ddp_ack("13900000001") == r.ddp_ack("13900000001")


def test_registration_module_is_sans_io():
    path = Path(r.__file__)
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {n.split(".")[0] for n in names} & {"twisted", "socket", "asyncio", "serial", "time"}


# --------------------------------------------------------------------------- proof of identity

NONCE = bytes(range(16))
KEY = b"challenge-secret-0001"


def test_challenge_and_response_packets_byte_exact():
    assert r.auth_challenge(NONCE) == bytes.fromhex("7B 83 00 15") + NONCE + b"\x7b"
    proof = r.challenge_proof(KEY, NONCE, "CH-1")
    import hashlib
    import hmac

    assert proof == hmac.new(KEY, NONCE + b"CH-1", hashlib.sha256).digest()
    assert r.auth_response(proof) == bytes.fromhex("7B 03 00 25") + proof + b"\x7b"
    packet = r.auth_challenge(NONCE)
    for n in range(len(packet)):
        assert r.parse_challenge(packet[:n]) is None
    assert r.parse_challenge(packet + b"rest") == (NONCE, 21)
    for bad in (b"\x7b\x84", b"\x68", packet[:-1] + b"\x00"):
        with pytest.raises(r.RegistrationError):
            r.parse_challenge(bad)
    with pytest.raises(ValueError):
        r.auth_challenge(b"short")
    with pytest.raises(ValueError):
        r.auth_response(b"short")


def _check(mode: str, registration: str = "plain", secret: bytes = KEY, skip=()):
    return r.CredentialCheck("CH-1", mode, secret, registration=registration, nonce=NONCE, skip=skip)


GOOD_ANSWER = r.auth_response(r.challenge_proof(KEY, NONCE, "CH-1"))
HEARTBEAT = b"CH-1"


@pytest.mark.parametrize(
    "mode, registration, stream, rest",
    [
        ("challenge", "plain", GOOD_ANSWER + b"\x68bus", b"\x68bus"),
        ("challenge", "plain", HEARTBEAT + HEARTBEAT + GOOD_ANSWER, b""),
        ("password", "plain", KEY + b"\xfe\x68", b"\xfe\x68"),
        ("password", "usr", KEY + b"\r\n\x68", b"\x68"),
    ],
)
def test_credentials_accepted_whole_and_byte_by_byte(mode, registration, stream, rest):
    check = _check(mode, registration, skip=[HEARTBEAT])
    assert check.feed(stream) is True and check.rest == rest
    check = _check(mode, registration, skip=[HEARTBEAT])
    for i in range(len(stream)):
        if check.feed(stream[i : i + 1]):
            break
    else:
        raise AssertionError("never accepted")
    assert check.rest + stream[i + 1 :] == rest


@pytest.mark.parametrize(
    "mode, registration, stream, why",
    [
        ("challenge", "plain", r.auth_response(r.challenge_proof(b"other-secret-000000", NONCE, "CH-1")),
         "wrong challenge answer"),
        ("challenge", "plain", r.auth_response(r.challenge_proof(KEY, NONCE, "CH-2")), "wrong challenge answer"),
        ("challenge", "plain", r.auth_response(r.challenge_proof(KEY, bytes(16), "CH-1")), "wrong challenge answer"),
        ("challenge", "plain", b"\x68\x10", "expected a challenge answer"),
        ("challenge", "plain", GOOD_ANSWER[:-1] + b"\x00", "must end with 7Bh"),
        ("password", "plain", b"X" * len(KEY), "wrong password"),
        ("password", "usr", KEY + b"x\r\n", "wrong password"),
        ("password", "usr", b"x" * 300, "no CR LF after the password"),
    ],
)
def test_credentials_refused_without_echoing_them(mode, registration, stream, why):
    check = _check(mode, registration)
    with pytest.raises(r.AuthFailed) as info:
        check.feed(stream)
    assert info.value.dtu_id == "CH-1" and why in str(info.value)
    assert KEY.decode() not in str(info.value) and stream.hex() not in str(info.value)
    with pytest.raises(RuntimeError):
        check.feed(b"more")


def test_no_credential_in_time():
    check = _check("challenge")
    assert check.feed(GOOD_ANSWER[:5]) is False
    with pytest.raises(r.AuthFailed, match="no challenge answer in time"):
        check.finish()
    with pytest.raises(ValueError):
        r.CredentialCheck("X", "none", KEY)
    with pytest.raises(ValueError):
        r.CredentialCheck("X", "challenge", KEY, nonce=b"1")


def test_password_registration_packets_and_heartbeats():
    fmt = r.DtuFormat("usr", "PW-USR", password=b"pw-usr-secret")
    assert fmt.registration_packet() == b"PW-USR pw-usr-secret\r\n"
    assert fmt.heartbeat_packet() == b"PW-USR\r\n"  # never the password
    assert r.DtuFormat("plain", "P", password=b"pw123456").registration_packet() == b"P pw123456"
    with pytest.raises(r.RegistrationError):
        r.DtuFormat("ddp", "139", password=b"pw123456")


def test_decoder_with_password_dtus():
    known = {"PW": "plain", "PWX": "plain", "PU": "usr", "OPEN": "plain"}
    passwords = {"PW", "PU"}

    def feed(stream: bytes, final: bool = False):
        d = r.RegistrationDecoder(known, passwords=passwords)
        reg = d.feed(stream)
        if reg is None and final:
            reg = d.finish()
        return reg, d.rest

    assert feed(b"PW secret") == (r.Registered("PW", format="plain"), b"secret")
    assert feed(b"PW") == (None, b"")  # "PW " and "PWX" are still possible
    assert feed(b"PWX")[0] == r.Registered("PWX", format="plain")
    assert feed(b"PU s3cret\r\n") == (r.Registered("PU", format="usr"), b"s3cret\r\n")
    assert feed(b"OPEN")[0] == r.Registered("OPEN", format="plain")
    with pytest.raises(r.AuthFailed, match="without a password"):
        feed(b"PU\r\n")
    with pytest.raises(r.AuthFailed, match="without a password"):
        feed(b"PW", final=True)
    with pytest.raises(r.UnknownDtu) as info:
        feed(b"NOBODY hunter2\r\n")
    assert info.value.dtu_id == "NOBODY" and "hunter2" not in str(info.value)
