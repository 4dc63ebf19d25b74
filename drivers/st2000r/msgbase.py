"""The common ground of the CJ/T 188 and ST2000R vendor messages, sans-I/O.

Constants of the CDT, the DI byte order, the status flags and per-channel records the
messages carry, the :class:`Message` base class and the field helpers the message modules
share (payload size checks, bytes, bitmaps, BCD quantities).  Kept apart from
``standard.py`` and ``vendor.py`` so that both build on it without importing each other,
and apart from ``messages.py`` (registry, ``parse``, ``encode``) so that no cycle forms.

Every message carries the common addressing fields (``meter_type``, ``address``, ``ser``)
and the DI byte order it was (or is to be) sent in, so a device can answer in the order it
was asked.  Every error is a :class:`CodecError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Final

from st2000r.drivers.st2000r import bcd
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.units import Quantity

CDT_TYPE: Final = 0x50  # outside CJ/T 188's 10h–49h: no standard meter answers it
MAX_BULK: Final = 48  # channels per BulkRead (worst case fills the 255-byte L field)
MAX_INFO: Final = 24  # channels per ReadChannelInfo
MAX_CHANNELS: Final = 96  # 32 modules × 3 channels
DATA_OFFSET: Final = 11  # DATA starts 11 bytes after the 68
INPUTS_PER_MODULE: Final = 3  # pulse inputs of one MP-2203R module


class DiOrder(enum.Enum):
    """Byte order of the 2-byte DI on the wire; both are accepted on receive."""

    HIGH_FIRST = "901F"  # 90 1F, as CJ/T 188-2004 tables print it
    LOW_FIRST = "1F90"  # 1F 90, as the 2018 edition and many meters send it


class Valve(enum.IntEnum):
    """Valve state as the two low status bits carry it."""

    OPEN = 0
    CLOSED = 1
    NONE = 2  # no valve fitted / not reported
    FAULT = 3


class AlarmFlag(enum.IntFlag):
    """Per-channel alarms of an MP-2203R pulse module."""

    NONE = 0
    TAMPER = 1  # magnetic interference
    SHORT = 2  # sensor line short circuit
    OPEN = 4  # sensor line open circuit


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """CJ/T 188 status word ST (ST0 first on the wire): D1D0 valve, D2 battery low."""

    raw: int = 0

    @property
    def valve(self) -> Valve:
        return Valve(self.raw & 0x03)

    @property
    def battery_low(self) -> bool:
        return bool(self.raw & 0x04)

    @classmethod
    def of(cls, valve: Valve = Valve.OPEN, battery_low: bool = False) -> MeterStatus:
        return cls(int(valve) | (0x04 if battery_low else 0))


@dataclass(frozen=True, slots=True)
class ChannelReading:
    """One channel in a bulk read: pulse counter and status byte.

    Status byte: D1D0 valve (:class:`Valve`), D2 tamper, D3 short, D4 open circuit,
    D6 channel not fitted.  The meter's value in base units is
    ``initial + count × pulse_constant`` (both from the topology).
    """

    count: int
    status: int = 0

    @property
    def valve(self) -> Valve:
        return Valve(self.status & 0x03)

    @property
    def alarms(self) -> AlarmFlag:
        return AlarmFlag((self.status >> 2) & 0x07)

    @property
    def absent(self) -> bool:
        return bool(self.status & 0x40)

    @staticmethod
    def status_of(
        valve: Valve = Valve.OPEN, alarms: AlarmFlag = AlarmFlag.NONE, absent: bool = False
    ) -> int:
        return int(valve) | int(alarms) << 2 | (0x40 if absent else 0)


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What a CDT knows of one channel: meter type (0 = not fitted), serial, pulse constant."""

    meter_type: int
    serial: str
    pulse_constant: int


# --------------------------------------------------------------------------- base


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    meter_type: int
    address: str
    ser: int = 0
    di_order: DiOrder = DiOrder.HIGH_FIRST

    CONTROL: ClassVar[int]
    DI: ClassVar[int]
    VENDOR: ClassVar[bool] = False

    def payload(self) -> bytes:
        """Bytes after DI and SER (without the vendor CRC)."""
        return b""

    @classmethod
    def from_payload(cls, common: dict, p: bytes, at: int) -> Message:
        _exact(p, 0, at, cls.__name__)
        return cls(**common)

    @property
    def control(self) -> int:
        return self.CONTROL


def _need(p: bytes, n: int, at: int, what: str) -> None:
    if len(p) < n:
        raise CodecError(f"{what} needs {n} payload bytes after DI and SER, got {len(p)}", at + len(p))


def _exact(p: bytes, n: int, at: int, what: str) -> None:
    _need(p, n, at, what)
    if len(p) > n:
        raise CodecError(f"{what} has {len(p) - n} unexpected byte(s) after its {n}-byte payload", at + n)


def _byte(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFF:
        raise CodecError(f"{what} {value} is not a byte (0..255)")
    return bytes((value,))


def _bitmap(flags: list[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, on in enumerate(flags):
        if on:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _bits(raw: bytes, n: int) -> list[bool]:
    return [bool(raw[i >> 3] >> (i & 7) & 1) for i in range(n)]


def _quantity(q: Quantity, size: int, what: str, decimals: int = 2) -> bytes:
    if q.decimals != decimals:
        raise CodecError(f"{what} is sent with {decimals} decimals, got a quantity with {q.decimals}")
    if not 0 <= q.unit <= 0xFF:
        raise CodecError(f"{what} unit code {q.unit} is not a byte")
    return bcd.encode_le(q.value, size) + bytes((q.unit,))


def _read_quantity(p: bytes, i: int, at: int, decimals: int = 2) -> Quantity:
    return Quantity(bcd.decode_le(p[i : i + 4], at + i), p[i + 4], decimals)


def _decimal_bcd(value: Decimal, size: int, decimals: int, what: str) -> bytes:
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise CodecError(f"{what} {value} has more than {decimals} decimals")
    return bcd.encode_le(int(scaled), size)
