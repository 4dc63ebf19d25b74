"""DDP packets of a GPRS DTU: registration, heartbeat, acknowledgement (sans-I/O).

::

    registration     7B 01 00 16 <ID 11> <IP 4> <port 2> 7B   (DTU -> server)
    heartbeat        7B 02 00 10 <ID 11> 7B                   (DTU -> server)
    acknowledgement  7B 81 00 10 <ID 11> 7B                   (server -> DTU)

The ID is 1..11 ASCII bytes padded with 00h; IP and port are the DTU's local address,
big-endian; the 2-byte length counts the whole packet.  The rules of the registration are
in ``registration.py``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from st2000r.drivers.st2000r.registration_errors import RegistrationError

__all__ = ["DDP_ID_LEN", "DdpPacket", "ddp_register", "ddp_heartbeat", "ddp_ack", "parse_ddp"]

DDP_ID_LEN = 11
DDP_FLAG = 0x7B
DDP_REGISTER = 0x01
DDP_HEARTBEAT = 0x02
DDP_ACK = 0x81
DDP_REGISTER_LEN = 0x16  # 22 bytes
DDP_SHORT_LEN = 0x10  # 16 bytes: heartbeat and acknowledgement


def _ddp_id(dtu_id: str) -> bytes:
    raw = dtu_id.encode("ascii") if dtu_id.isascii() else None
    if raw is None or not raw or len(raw) > DDP_ID_LEN:
        raise RegistrationError(f"DDP identity {dtu_id!r} must be 1..{DDP_ID_LEN} ASCII characters")
    return raw.ljust(DDP_ID_LEN, b"\x00")


def ddp_register(dtu_id: str, ip: str = "0.0.0.0", port: int = 0) -> bytes:
    """``7B 01 00 16 <ID 11> <IP 4> <port 2> 7B``.  An IP that is not IPv4 is sent as
    0.0.0.0; raises RegistrationError for a bad ID or a port outside 0..65535."""
    try:
        ip_raw = ipaddress.IPv4Address(ip).packed
    except ValueError:
        ip_raw = bytes(4)
    if not 0 <= port <= 0xFFFF:
        raise RegistrationError(f"port {port} is outside 0..65535")
    head = bytes((DDP_FLAG, DDP_REGISTER)) + struct.pack(">H", DDP_REGISTER_LEN)
    return head + _ddp_id(dtu_id) + ip_raw + struct.pack(">H", port) + bytes((DDP_FLAG,))


def ddp_heartbeat(dtu_id: str) -> bytes:
    """``7B 02 00 10 <ID 11> 7B``; raises RegistrationError for a bad ID."""
    return bytes((DDP_FLAG, DDP_HEARTBEAT)) + struct.pack(">H", DDP_SHORT_LEN) + _ddp_id(dtu_id) + bytes((DDP_FLAG,))


def ddp_ack(dtu_id: str) -> bytes:
    """The server's acknowledgement of a registration: ``7B 81 00 10 <ID 11> 7B``."""
    return bytes((DDP_FLAG, DDP_ACK)) + struct.pack(">H", DDP_SHORT_LEN) + _ddp_id(dtu_id) + bytes((DDP_FLAG,))


@dataclass(frozen=True, slots=True)
class DdpPacket:
    """One parsed DDP packet.  ``kind``: 01h register, 02h heartbeat, 81h acknowledgement.
    ``ip``/``port`` only for a registration (else None)."""

    kind: int
    dtu_id: str
    ip: str | None = None
    port: int | None = None


_DDP_LENGTHS = {DDP_REGISTER: DDP_REGISTER_LEN, DDP_HEARTBEAT: DDP_SHORT_LEN, DDP_ACK: DDP_SHORT_LEN}


def parse_ddp(data: bytes) -> tuple[DdpPacket, int] | None:
    """Parse one DDP packet at the start of ``data``.

    Returns ``(packet, bytes used)``, or None when ``data`` is a proper prefix of a packet
    (need more bytes).  Raises RegistrationError when ``data`` does not start a valid
    packet (wrong flag, unknown type, length not matching the type, missing end flag, an
    ID that is not ASCII).
    """
    if not data:
        return None
    if data[0] != DDP_FLAG:
        raise RegistrationError(f"DDP packet must start with 7Bh, got {data[0]:02X}h")
    if len(data) < 4:
        if len(data) >= 2 and data[1] not in _DDP_LENGTHS:
            raise RegistrationError(f"unknown DDP packet type {data[1]:02X}h")
        return None
    kind = data[1]
    length = data[2] << 8 | data[3]
    want = _DDP_LENGTHS.get(kind)
    if want is None:
        raise RegistrationError(f"unknown DDP packet type {kind:02X}h")
    if length != want:
        raise RegistrationError(f"DDP packet type {kind:02X}h must be {want} bytes long, length field says {length}")
    if len(data) < length:
        return None
    if data[length - 1] != DDP_FLAG:
        raise RegistrationError(f"DDP packet must end with 7Bh, got {data[length - 1]:02X}h")
    raw_id = data[4 : 4 + DDP_ID_LEN].rstrip(b"\x00")
    if not raw_id or not raw_id.isascii():
        raise RegistrationError(f"DDP identity {raw_id!r} is not 1..{DDP_ID_LEN} ASCII characters")
    dtu_id = raw_id.decode("ascii")
    if kind == DDP_REGISTER:
        ip = str(ipaddress.IPv4Address(data[15:19]))
        port = data[19] << 8 | data[20]
        return DdpPacket(kind, dtu_id, ip, port), length
    return DdpPacket(kind, dtu_id), length
