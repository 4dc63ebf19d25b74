"""Packed BCD as CJ/T 188 sends it: two digits per byte, least significant byte first."""

from __future__ import annotations

from datetime import datetime

from st2000r.drivers.st2000r.errors import CodecError


def decode_le(data: bytes, offset: int = 0) -> int:
    """Value of BCD bytes sent low byte first; ``offset`` locates ``data`` for errors."""
    value = 0
    for i in range(len(data) - 1, -1, -1):
        b = data[i]
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise CodecError(f"{b:02X}h is not a BCD digit pair", offset + i)
        value = value * 100 + hi * 10 + lo
    return value


def encode_le(value: int, size: int) -> bytes:
    """``value`` as ``size`` BCD bytes, low byte first; raises CodecError if it does not fit."""
    if value < 0 or value >= 100**size:
        raise CodecError(f"value {value} does not fit in {size} BCD bytes")
    out = bytearray(size)
    for i in range(size):
        value, two = divmod(value, 100)
        out[i] = (two // 10) << 4 | (two % 10)
    return bytes(out)


def decode_time(data: bytes, offset: int = 0) -> datetime | None:
    """A 7-byte CJ/T 188 time ``ss mm hh DD MM YY CC`` (YYYYMMDDhhmmss sent low byte first).

    All-zero or all-FF fields (meters without a clock) give ``None``; so does a date that
    does not exist.  Non-BCD bytes raise CodecError.
    """
    if data in (b"\x00" * 7, b"\xff" * 7):
        return None
    digits = [decode_le(data[i : i + 1], offset + i) for i in range(7)]
    ss, mm, hh, dd, mo, yy, cc = digits
    try:
        return datetime(cc * 100 + yy, mo, dd, hh, mm, ss)
    except ValueError:
        return None


def encode_time(when: datetime | None) -> bytes:
    """Inverse of :func:`decode_time`; ``None`` is sent as seven zero bytes."""
    if when is None:
        return b"\x00" * 7
    cc, yy = divmod(when.year, 100)
    return b"".join(
        encode_le(v, 1) for v in (when.second, when.minute, when.hour, when.day, when.month, yy, cc)
    )
