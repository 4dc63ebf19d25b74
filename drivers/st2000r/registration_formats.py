"""The registration and heartbeat packets one DTU sends, per format (sans-I/O).

``plain`` and ``usr`` packets are text built here; ``ddp`` packets come from
``registration_ddp.py``.  The engine that recognises them on the server side is
``registration.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from st2000r.drivers.st2000r.registration_ddp import _ddp_id, ddp_heartbeat, ddp_register
from st2000r.drivers.st2000r.registration_errors import RegistrationError

__all__ = ["FORMATS", "PASSWORD_SEP", "DtuFormat"]

FORMATS = ("plain", "usr", "ddp")
#: a text registration (plain/usr) longer than this without a decision is refused
MAX_TEXT_REGISTRATION = 256
#: between the identity and the password of a password-mode text registration
PASSWORD_SEP = b" "


@dataclass(frozen=True, slots=True)
class DtuFormat:
    """The packets one DTU sends.  ``registration``: ``"plain"``, ``"usr"`` or ``"ddp"``.
    ``heartbeat``: the heartbeat bytes for plain/usr (None = the default of the format: the
    identity packet, never the password); ignored for DDP.  ``password``: sent in the
    registration packet after the identity and a space (password mode; plain/usr only).  Construction raises RegistrationError for an unknown format, an
    empty identity or heartbeat, or an ID DDP cannot carry."""

    registration: str
    dtu_id: str
    heartbeat: bytes | None = None
    password: bytes | None = None

    def __post_init__(self) -> None:
        if self.password is not None and (self.registration == "ddp" or not self.password):
            raise RegistrationError("a password travels only in a plain or usr registration, and is not empty")
        if self.registration not in FORMATS:
            raise RegistrationError(f"registration format {self.registration!r} is not one of {', '.join(FORMATS)}")
        if not self.dtu_id:
            raise RegistrationError("DTU identity must not be empty")
        if self.registration == "ddp":
            _ddp_id(self.dtu_id)
        if self.heartbeat is not None and not self.heartbeat:
            raise RegistrationError("heartbeat must not be empty")

    def registration_packet(self, ip: str = "0.0.0.0", port: int = 0) -> bytes:
        """What the DTU sends first on every connection (``ip``/``port``: its local address,
        used by DDP only)."""
        if self.registration == "ddp":
            return ddp_register(self.dtu_id, ip, port)
        ident = self.dtu_id.encode("utf-8")
        if self.password is not None:
            ident += PASSWORD_SEP + self.password
        return ident + b"\r\n" if self.registration == "usr" else ident

    def heartbeat_packet(self) -> bytes:
        """The exact heartbeat bytes of this DTU."""
        if self.registration == "ddp":
            return ddp_heartbeat(self.dtu_id)
        if self.heartbeat is not None:
            return self.heartbeat
        ident = self.dtu_id.encode("utf-8")
        return ident + b"\r\n" if self.registration == "usr" else ident
