"""Errors of GPRS DTU registration (sans-I/O).

Shared by the packet codecs (``registration_ddp.py``, ``registration_formats.py``,
``registration_auth.py``) and the registration engine (``registration.py``); the GPRS
server tells them apart to count and report a refusal.
"""

from __future__ import annotations

__all__ = ["RegistrationError", "DtuFormatError", "UnknownDtu", "AuthFailed"]


class RegistrationError(ValueError):
    """A registration/heartbeat packet that cannot be built or parsed, or a DTU that may not
    register; the message says why.  The server closes such a connection."""


#: the simulator's name for the same error
DtuFormatError = RegistrationError


class UnknownDtu(RegistrationError):
    """A well-formed registration of an identity no configured link has.  ``dtu_id``: the
    identity it claimed (for a plain registration: the text received, up to 40 chars)."""

    def __init__(self, dtu_id: str, fmt: str) -> None:
        self.dtu_id = dtu_id
        self.format = fmt
        super().__init__(f"unknown DTU identity {dtu_id!r} ({fmt} registration)")


class AuthFailed(RegistrationError):
    """A registration that named a configured DTU but did not prove it (wrong or missing
    proof or password, source address not allowed, no proof in time).  ``dtu_id``: the
    DTU it named; the message never contains a secret or what was received for one."""

    def __init__(self, dtu_id: str, why: str) -> None:
        self.dtu_id = dtu_id
        self.why = why
        super().__init__(f"DTU {dtu_id!r}: {why}")
