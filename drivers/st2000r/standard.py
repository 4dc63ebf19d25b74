"""The CJ/T 188-2004 standard messages, sans-I/O, addressed to a meter::

    C=01 DI 901F  ReadData        -> C=81 CurrentData (water/gas/electricity) | HeatData
    C=03 DI 810A  ReadAddress     -> C=83 AddressReply
    C=04 DI A017  ValveControl    -> C=84 ValveReply        (C=2A/AA accepted as well)
    C=15 DI A018  WriteAddress    -> C=95 WriteAddressReply
    any abnormal reply (C | C0h)  -> ErrorReply

Byte layouts are in ``docs/protocol.md``; :func:`~st2000r.drivers.st2000r.messages.parse`
and :func:`~st2000r.drivers.st2000r.messages.encode` turn frames into these and back.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Final

from st2000r.drivers.st2000r import bcd
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import DIR_UP, ERROR, address_bytes
from st2000r.drivers.st2000r.msgbase import (
    Message,
    MeterStatus,
    _decimal_bcd,
    _exact,
    _quantity,
    _read_quantity,
)
from st2000r.drivers.st2000r.units import UNITS, Quantity


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadData(Message):
    """Read current data (901F) of one meter."""

    CONTROL = 0x01
    DI = 0x901F


@dataclass(frozen=True, slots=True, kw_only=True)
class CurrentData(Message):
    """901F reply of a water, gas or electricity meter (19-byte payload).

    ``total`` and ``settlement`` carry 2 decimals (XXXXXX.XX) in their unit.
    """

    CONTROL = 0x81
    DI = 0x901F
    total: Quantity
    settlement: Quantity
    time: datetime | None = None
    status: MeterStatus = field(default_factory=MeterStatus)

    SIZE: ClassVar[int] = 19

    def payload(self) -> bytes:
        return (
            _quantity(self.total, 4, "total")
            + _quantity(self.settlement, 4, "settlement total")
            + bcd.encode_time(self.time)
            + struct.pack("<H", self.status.raw)
        )

    @classmethod
    def from_payload(cls, common, p, at):
        _exact(p, cls.SIZE, at, "901F current data")
        return cls(
            **common,
            total=_read_quantity(p, 0, at),
            settlement=_read_quantity(p, 5, at),
            time=bcd.decode_time(p[10:17], at + 10),
            status=MeterStatus(p[17] | p[18] << 8),
        )


class HeatLayout(enum.Enum):
    """Where a heat meter puts each quantity's unit byte in its 901F reply (HeatData)."""

    AUTO = "auto"  # decide from the bytes: see HeatData and docs/protocol.md
    STANDARD = "standard"  # 4 BCD bytes, then the unit byte, as CJ/T 188 prints it
    UNIT_FIRST = "unit_first"  # the unit byte, then 4 BCD bytes (some vendors)


# The unit a heat-meter quantity is expected in, by the base unit of its code: heat (twice),
# power, flow rate, cumulative flow.
_HEAT_KINDS: Final = (("Wh", "J"), ("Wh", "J"), ("W",), ("L/h",), ("L",))


def _heat_quantities(p: bytes, at: int, unit_first: bool) -> tuple[Quantity, ...]:
    """The five quantities at P+0..P+24 read in one layout; raises CodecError on non-BCD."""
    qs = []
    for k, decimals in enumerate(HeatData.DECIMALS):
        i = 5 * k
        if unit_first:
            qs.append(Quantity(bcd.decode_le(p[i + 1 : i + 5], at + i + 1), p[i], decimals))
        else:
            qs.append(Quantity(bcd.decode_le(p[i : i + 4], at + i), p[i + 4], decimals))
    return tuple(qs)


def _heat_fit(qs: tuple[Quantity, ...]) -> int:
    """2: every unit code is known and of its field's kind; 1: every one is known; 0: not."""
    units = [UNITS.get(q.unit) for q in qs]
    if None in units:
        return 0
    return 2 if all(u.base in kinds for u, kinds in zip(units, _HEAT_KINDS)) else 1


@dataclass(frozen=True, slots=True, kw_only=True)
class HeatData(Message):
    """901F reply of a heat meter (43-byte payload, CJ/T 188 heat-meter layout).

    Heat and power carry 2 decimals, flow rate 4 decimals, cumulative flow 2 decimals;
    temperatures are °C with 2 decimals; ``working_hours`` is whole hours.  The standard puts
    each quantity's 4 BCD bytes before its unit byte; some meters (``unit_first``) send the
    unit byte first.

    Receiving with :attr:`HeatLayout.AUTO` (the default of :func:`parse`) reads the five
    quantities both ways and keeps a reading whose every value is BCD; of two such readings
    the one that fits better wins (every unit a known code of its field's kind: energy,
    energy, power, flow rate, volume; else every unit a known code; else not), and on a tie
    the standard layout.  A caller that knows the meter's layout passes it to :func:`parse`
    and nothing is guessed.
    """

    CONTROL = 0x81
    DI = 0x901F
    settlement_heat: Quantity
    current_heat: Quantity
    power: Quantity
    flow: Quantity
    cumulative_flow: Quantity
    supply_temp: Decimal
    return_temp: Decimal
    working_hours: int
    time: datetime | None = None
    status: MeterStatus = field(default_factory=MeterStatus)
    unit_first: bool = False

    SIZE: ClassVar[int] = 43
    DECIMALS: ClassVar[tuple[int, ...]] = (2, 2, 2, 4, 2)

    @property
    def layout(self) -> HeatLayout:
        return HeatLayout.UNIT_FIRST if self.unit_first else HeatLayout.STANDARD

    @property
    def quantities(self) -> tuple[Quantity, ...]:
        return (self.settlement_heat, self.current_heat, self.power, self.flow, self.cumulative_flow)

    @property
    def unit_fit(self) -> int:
        """How well the unit codes fit (2, 1, 0 as in the class docstring)."""
        return _heat_fit(self.quantities)

    def payload(self) -> bytes:
        out = bytearray()
        names = ("settlement heat", "current heat", "power", "flow", "cumulative flow")
        for q, name, decimals in zip(self.quantities, names, self.DECIMALS):
            raw = _quantity(q, 4, name, decimals)
            out += raw[4:] + raw[:4] if self.unit_first else raw
        return (
            bytes(out)
            + _decimal_bcd(self.supply_temp, 3, 2, "supply temperature")
            + _decimal_bcd(self.return_temp, 3, 2, "return temperature")
            + bcd.encode_le(self.working_hours, 3)
            + bcd.encode_time(self.time)
            + struct.pack("<H", self.status.raw)
        )

    @classmethod
    def from_payload(cls, common, p, at, layout: HeatLayout = HeatLayout.AUTO):
        _exact(p, cls.SIZE, at, "901F heat-meter data")
        if layout is HeatLayout.AUTO:
            readings = []  # (fit, standard first on a tie, unit_first, quantities)
            first_error = None
            for unit_first in (False, True):
                try:
                    qs = _heat_quantities(p, at, unit_first)
                except CodecError as exc:
                    first_error = first_error or exc
                    continue
                readings.append((_heat_fit(qs), not unit_first, unit_first, qs))
            if not readings:
                raise first_error
            _, _, unit_first, qs = max(readings, key=lambda r: r[:2])
        else:
            unit_first = layout is HeatLayout.UNIT_FIRST
            qs = _heat_quantities(p, at, unit_first)
        return cls(
            **common,
            settlement_heat=qs[0],
            current_heat=qs[1],
            power=qs[2],
            flow=qs[3],
            cumulative_flow=qs[4],
            supply_temp=Decimal(bcd.decode_le(p[25:28], at + 25)).scaleb(-2),
            return_temp=Decimal(bcd.decode_le(p[28:31], at + 28)).scaleb(-2),
            working_hours=bcd.decode_le(p[31:34], at + 31),
            time=bcd.decode_time(p[34:41], at + 34),
            status=MeterStatus(p[41] | p[42] << 8),
            unit_first=unit_first,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadAddress(Message):
    """Read address (810A); usually sent to the broadcast address with type AAh."""

    CONTROL = 0x03
    DI = 0x810A


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressReply(Message):
    """Reply to 810A: the address is in the header; some meters repeat it in the data."""

    CONTROL = 0x83
    DI = 0x810A
    repeated: bool = False

    def payload(self) -> bytes:
        return address_bytes(self.address) if self.repeated else b""

    @classmethod
    def from_payload(cls, common, p, at):
        if not p:
            return cls(**common, repeated=False)
        _exact(p, 7, at, "810A reply with repeated address")
        if p[::-1].hex().upper() != common["address"]:
            raise CodecError("address repeated in the data differs from the header address", at)
        return cls(**common, repeated=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ValveControl(Message):
    """Valve control (A017): 55h opens, 99h closes.  ``alt`` sends control 2Ah (some vendors)."""

    CONTROL = 0x04
    DI = 0xA017
    open: bool
    alt: bool = False

    OPEN_CODE: ClassVar[int] = 0x55
    CLOSE_CODE: ClassVar[int] = 0x99

    @property
    def control(self) -> int:
        return 0x2A if self.alt else 0x04

    def payload(self) -> bytes:
        return bytes((self.OPEN_CODE if self.open else self.CLOSE_CODE,))

    @classmethod
    def from_payload(cls, common, p, at, alt=False):
        _exact(p, 1, at, "A017 valve control")
        if p[0] not in (cls.OPEN_CODE, cls.CLOSE_CODE):
            raise CodecError(f"valve action must be 55h (open) or 99h (close), got {p[0]:02X}h", at)
        return cls(**common, open=p[0] == cls.OPEN_CODE, alt=alt)


@dataclass(frozen=True, slots=True, kw_only=True)
class ValveReply(Message):
    """Reply to A017 with the meter status (two bytes, or one from some meters)."""

    CONTROL = 0x84
    DI = 0xA017
    status: MeterStatus = field(default_factory=MeterStatus)
    status_bytes: int = 2
    alt: bool = False

    @property
    def control(self) -> int:
        return 0xAA if self.alt else 0x84

    def payload(self) -> bytes:
        if self.status_bytes not in (0, 1, 2):
            raise CodecError("a valve reply carries 0, 1 or 2 status bytes")
        return struct.pack("<H", self.status.raw)[: self.status_bytes]

    @classmethod
    def from_payload(cls, common, p, at, alt=False):
        if len(p) > 2:
            raise CodecError(f"A017 reply has {len(p) - 2} unexpected byte(s)", at + 2)
        raw = int.from_bytes(p, "little")
        return cls(**common, status=MeterStatus(raw), status_bytes=len(p), alt=alt)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteAddress(Message):
    """Write a new address (A018) into the meter at ``address``."""

    CONTROL = 0x15
    DI = 0xA018
    new_address: str

    def payload(self) -> bytes:
        return address_bytes(self.new_address)

    @classmethod
    def from_payload(cls, common, p, at):
        _exact(p, 7, at, "A018 write address")
        return cls(**common, new_address=p[::-1].hex().upper())


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteAddressReply(Message):
    CONTROL = 0x95
    DI = 0xA018


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply(Message):
    """Abnormal reply (control D6 set): SER and a 2-byte status; ``di`` when the device sent one.

    Status codes of ST2000R CDTs (ST0): 01h unknown DI, 02h bad parameter, 03h busy,
    04h channel not fitted, 05h valve fault.
    """

    CONTROL = 0xC1
    DI = 0
    function: int = 0x01
    status: int = 0
    di: int | None = None

    UNKNOWN_DI: ClassVar[int] = 0x01
    BAD_PARAMETER: ClassVar[int] = 0x02
    BUSY: ClassVar[int] = 0x03
    NO_CHANNEL: ClassVar[int] = 0x04
    VALVE_FAULT: ClassVar[int] = 0x05

    @property
    def control(self) -> int:
        return DIR_UP | ERROR | (self.function & 0x3F)
