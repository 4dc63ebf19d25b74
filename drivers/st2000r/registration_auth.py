"""Proof of identity of a GPRS DTU: challenge/response packets and the server's check (sans-I/O).

::

    auth       DTU -> server                                  server -> DTU
    challenge  7B 03 00 25 <proof 32> 7B  (response)          7B 83 00 15 <nonce 16> 7B  (challenge)
               proof = HMAC-SHA256(secret, nonce || id)
    password   plain: <ID> 20h <secret>; usr: <ID> 20h <secret> CR LF

The rules (when a challenge is sent, what may come before the answer, what an error may
say) are in ``registration.py``'s module docstring.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

from st2000r.drivers.st2000r.registration_ddp import DDP_FLAG
from st2000r.drivers.st2000r.registration_errors import AuthFailed, RegistrationError
from st2000r.drivers.st2000r.registration_formats import MAX_TEXT_REGISTRATION

__all__ = [
    "AUTH_MODES", "NONCE_LEN", "PROOF_LEN", "auth_challenge", "auth_response", "parse_challenge",
    "challenge_proof", "CredentialCheck",
]  # fmt: skip

AUTH_CHALLENGE = 0x83  # server -> DTU
AUTH_RESPONSE = 0x03  # DTU -> server
NONCE_LEN = 16
PROOF_LEN = 32  # HMAC-SHA256
AUTH_CHALLENGE_LEN = 4 + NONCE_LEN + 1  # 21 = 15h
AUTH_RESPONSE_LEN = 4 + PROOF_LEN + 1  # 37 = 25h
#: ``GprsEndpoint.auth`` values (the same tuple as ``config.model.AUTH_MODES``)
AUTH_MODES = ("challenge", "password", "none")


def auth_challenge(nonce: bytes) -> bytes:
    """The server's challenge: ``7B 83 00 15 <nonce 16> 7B``; ValueError for another length."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"a nonce is {NONCE_LEN} bytes, got {len(nonce)}")
    return bytes((DDP_FLAG, AUTH_CHALLENGE)) + struct.pack(">H", AUTH_CHALLENGE_LEN) + nonce + bytes((DDP_FLAG,))


def auth_response(proof: bytes) -> bytes:
    """The DTU's answer: ``7B 03 00 25 <proof 32> 7B``; ValueError for another length."""
    if len(proof) != PROOF_LEN:
        raise ValueError(f"a proof is {PROOF_LEN} bytes, got {len(proof)}")
    return bytes((DDP_FLAG, AUTH_RESPONSE)) + struct.pack(">H", AUTH_RESPONSE_LEN) + proof + bytes((DDP_FLAG,))


def challenge_proof(secret: bytes, nonce: bytes, dtu_id: str) -> bytes:
    """HMAC-SHA256(secret, nonce || id), the id as its UTF-8 bytes (for DDP: unpadded)."""
    return hmac.new(secret, nonce + dtu_id.encode("utf-8"), hashlib.sha256).digest()


def _auth_packet(data: bytes, kind: int, length: int, what: str) -> tuple[bytes, int] | None:
    """``(body, bytes used)`` of an auth packet of ``kind`` at the start of ``data``; None
    for a proper prefix of one; RegistrationError otherwise."""
    head = bytes((DDP_FLAG, kind)) + struct.pack(">H", length)
    n = min(len(data), 4)
    if data[:n] != head[:n]:
        raise RegistrationError(f"expected {what}")
    if len(data) < length:
        return None
    if data[length - 1] != DDP_FLAG:
        raise RegistrationError(f"{what} must end with 7Bh")
    return data[4 : length - 1], length


def parse_challenge(data: bytes) -> tuple[bytes, int] | None:
    """DTU side: ``(nonce, bytes used)`` of a challenge at the start of ``data``, None when
    more bytes are needed; RegistrationError when ``data`` does not start one."""
    return _auth_packet(data, AUTH_CHALLENGE, AUTH_CHALLENGE_LEN, "a challenge (7B 83 00 15)")


class CredentialCheck:
    """Server side, second stage of a registration: the DTU named ``dtu_id`` proves it knows
    ``secret`` (the rules in the module docstring).

    ``mode``: ``"challenge"`` (``nonce``: the one sent; ``skip``: packets the DTU may send
    before its answer -- its heartbeat, a repeated DDP registration) or ``"password"``
    (``registration``: ``"plain"``, the password is ``len(secret)`` bytes; ``"usr"``, it
    ends at CR LF).  Feed it the bytes that followed the registration packet.

    :meth:`feed` returns True once the proof is verified (:attr:`rest`: the bytes after
    it, bus bytes), False when more bytes are needed, and raises :class:`AuthFailed` for a
    wrong proof.  :meth:`finish` (the registration time is up) raises :class:`AuthFailed`.
    """

    def __init__(self, dtu_id: str, mode: str, secret: bytes, *, registration: str = "plain", nonce: bytes = b"",
                 skip: Sequence[bytes] = ()) -> None:
        if mode not in ("challenge", "password"):
            raise ValueError(f"no credential to check in auth mode {mode!r}")
        if not secret:
            raise ValueError("empty secret")
        if mode == "challenge" and len(nonce) != NONCE_LEN:
            raise ValueError(f"a nonce is {NONCE_LEN} bytes, got {len(nonce)}")
        self.dtu_id = dtu_id
        self.mode = mode
        self.registration = registration
        self.rest = b""
        self._secret = secret
        self._expected = challenge_proof(secret, nonce, dtu_id) if mode == "challenge" else b""
        self._skip = tuple(p for p in skip if p)
        self._head = b""
        self._done = False

    def feed(self, data: bytes) -> bool:
        if self._done:
            raise RuntimeError("CredentialCheck fed after its result")
        self._head += data
        try:
            ok = self._challenge() if self.mode == "challenge" else self._password()
        except AuthFailed:
            self._done = True
            self._head = b""
            raise
        if ok:
            self._done = True
        return ok

    def finish(self) -> None:
        self._done = True
        what = "challenge answer" if self.mode == "challenge" else "password"
        raise AuthFailed(self.dtu_id, f"no {what} in time")

    def _challenge(self) -> bool:
        head = self._head
        while True:  # heartbeats / a repeated registration before the answer are skipped
            for packet in self._skip:
                if head.startswith(packet):
                    head = head[len(packet) :]
                    break
            else:
                break
        self._head = head
        if not head:
            return False
        if any(p.startswith(head) for p in self._skip):
            return False  # could still be a heartbeat
        try:
            parsed = _auth_packet(head, AUTH_RESPONSE, AUTH_RESPONSE_LEN, "a challenge answer (7B 03 00 25)")
        except RegistrationError as exc:
            raise AuthFailed(self.dtu_id, f"{exc}, got something else") from None
        if parsed is None:
            return False
        proof, used = parsed
        if not hmac.compare_digest(proof, self._expected):
            raise AuthFailed(self.dtu_id, "wrong challenge answer (secret differs)")
        self.rest = head[used:]
        return True

    def _password(self) -> bool:
        head = self._head
        if self.registration == "usr":
            end = head.find(b"\r\n")
            if end < 0:
                if len(head) > MAX_TEXT_REGISTRATION:
                    raise AuthFailed(self.dtu_id, f"no CR LF after the password within {MAX_TEXT_REGISTRATION} bytes")
                return False
            given, used = head[:end], end + 2
        else:
            n = len(self._secret)
            if len(head) < n:
                return False
            given, used = head[:n], n
        if not hmac.compare_digest(given, self._secret):
            raise AuthFailed(self.dtu_id, "wrong password")
        self.rest = head[used:]
        return True
