"""Typed CJ/T 188 and ST2000R vendor messages, sans-I/O.

:func:`parse` turns a :class:`~st2000r.drivers.st2000r.frame.Frame` into one of the message
dataclasses below; :func:`encode` turns a message into wire bytes.  Every message carries
the common addressing fields (``meter_type``, ``address``, ``ser``) and the DI byte order it
was (or is to be) sent in, so a device can answer in the order it was asked.

Standard commands (CJ/T 188-2004), addressed to a meter::

    C=01 DI 901F  ReadData        -> C=81 CurrentData (water/gas/electricity) | HeatData
    C=03 DI 810A  ReadAddress     -> C=83 AddressReply
    C=04 DI A017  ValveControl    -> C=84 ValveReply        (C=2A/AA accepted as well)
    C=15 DI A018  WriteAddress    -> C=95 WriteAddressReply
    any abnormal reply (C | C0h)  -> ErrorReply

ST2000R vendor commands, addressed to a CDT (meter type 50h, CDT_TYPE); every vendor payload
ends with a CRC-16 (see ``crc.py``) over the frame from 68 to the byte before the CRC::

    C=01 DI C01F  BulkRead        -> BulkReadReply     counts + status of up to 48 channels
    C=01 DI C02F  ReadAlarms      -> AlarmsReply       tamper / short / open bitmaps
    C=01 DI C03F  ReadCdtStatus   -> CdtStatus         mains, battery, modules, firmware, clock
    C=01 DI C04F  ReadChannelInfo -> ChannelInfoReply  meter type, serial, pulse constant
    C=04 DI C0A1  SetBase         -> SetBaseReply      set a channel's pulse counter
    C=04 DI C0A2  TimeSync        -> TimeSyncReply     set the CDT clock

Byte layouts are in ``docs/protocol.md``.  Every error is a :class:`CodecError` whose offset
counts from the frame's 68 byte plus ``base``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Final

from st2000r.drivers.st2000r import bcd
from st2000r.drivers.st2000r.crc import crc16
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import (
    DIR_UP,
    ERROR,
    START,
    Frame,
    address_bytes,
    encode_frame,
)
from st2000r.drivers.st2000r.units import UNITS, Quantity

CDT_TYPE: Final = 0x50  # outside CJ/T 188's 10h–49h: no standard meter answers it
MAX_BULK: Final = 48  # channels per BulkRead (worst case fills the 255-byte L field)
MAX_INFO: Final = 24  # channels per ReadChannelInfo
MAX_CHANNELS: Final = 96  # 32 modules × 3 channels
DATA_OFFSET: Final = 11  # DATA starts 11 bytes after the 68
INPUTS_PER_MODULE: Final = 3  # pulse inputs of one MP-2203R module


def channel_number(module: int, input_no: int) -> int:
    """The CDT-wide channel 1..96 of pulse input ``input_no`` (1..3) of module ``module`` (1..32)."""
    return (module - 1) * INPUTS_PER_MODULE + input_no


def module_input(channel: int) -> tuple[int, int]:
    """``(module, input)`` of CDT-wide channel ``channel`` (the inverse of :func:`channel_number`)."""
    return (channel - 1) // INPUTS_PER_MODULE + 1, (channel - 1) % INPUTS_PER_MODULE + 1


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


# --------------------------------------------------------------------------- standard


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


# --------------------------------------------------------------------------- vendor


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorMessage(Message):
    VENDOR = True
    meter_type: int = CDT_TYPE


def _channel_range(first: int, count: int, limit: int, at: int | None = None) -> None:
    if not 1 <= first <= MAX_CHANNELS:
        raise CodecError(f"first channel {first} is outside 1..{MAX_CHANNELS}", at)
    if not 1 <= count <= limit or first + count - 1 > MAX_CHANNELS:
        raise CodecError(
            f"channel count {count} from channel {first} is outside 1..{limit} "
            f"or past channel {MAX_CHANNELS}",
            None if at is None else at + 1,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _ChannelRangeRequest(VendorMessage):
    """A read of ``count`` channels (1..LIMIT) from ``first_channel`` (1..96): two bytes."""

    LIMIT: ClassVar[int]
    WHAT: ClassVar[str]
    first_channel: int = 1
    count: int = 1

    def payload(self) -> bytes:
        _channel_range(self.first_channel, self.count, self.LIMIT)
        return bytes((self.first_channel, self.count))

    @classmethod
    def from_payload(cls, common, p, at):
        _exact(p, 2, at, cls.WHAT)
        _channel_range(p[0], p[1], cls.LIMIT, at)
        return cls(**common, first_channel=p[0], count=p[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkRead(_ChannelRangeRequest):
    """Read counts and status of ``count`` channels (1..48) from ``first_channel`` (1..96).

    Channel n is module ``(n - 1) // 3 + 1``, input ``(n - 1) % 3 + 1``.
    """

    CONTROL = 0x01
    DI = 0xC01F
    LIMIT = MAX_BULK
    WHAT = "bulk read request"
    count: int = MAX_BULK


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkReadReply(VendorMessage):
    """Counts as u32 little-endian for every channel, then a bitmap of channels whose status
    byte is not zero, then those status bytes: a quiet channel costs four bytes."""

    CONTROL = 0x81
    DI = 0xC01F
    first_channel: int = 1
    channels: tuple[ChannelReading, ...] = ()

    def payload(self) -> bytes:
        n = len(self.channels)
        _channel_range(self.first_channel, n, MAX_BULK)
        out = bytearray((self.first_channel, n))
        for ch in self.channels:
            if not 0 <= ch.count <= 0xFFFFFFFF:
                raise CodecError(f"pulse count {ch.count} does not fit 32 bits")
            out += struct.pack("<I", ch.count)
        flagged = [ch.status != 0 for ch in self.channels]
        out += _bitmap(flagged)
        for ch in self.channels:
            if ch.status:
                out += _byte(ch.status, "channel status")
        return bytes(out)

    @classmethod
    def from_payload(cls, common, p, at):
        _need(p, 2, at, "bulk read reply")
        first, n = p[0], p[1]
        _channel_range(first, n, MAX_BULK, at)
        i = 2 + 4 * n
        nb = (n + 7) // 8
        _need(p, i + nb, at, f"bulk read reply of {n} channels")
        counts = struct.unpack_from(f"<{n}I", p, 2)
        flagged = _bits(p[i : i + nb], n)
        if n % 8 and p[i + nb - 1] >> (n % 8):
            raise CodecError("status bitmap flags channels past the count", at + i + nb - 1)
        j = i + nb
        _exact(p, j + sum(flagged), at, f"bulk read reply of {n} channels")
        chans = []
        for count, f in zip(counts, flagged):
            if f:
                if p[j] == 0:
                    raise CodecError("a flagged channel's status byte is 00h", at + j)
                chans.append(ChannelReading(count, p[j]))
                j += 1
            else:
                chans.append(ChannelReading(count, 0))
        return cls(**common, first_channel=first, channels=tuple(chans))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadAlarms(VendorMessage):
    CONTROL = 0x01
    DI = 0xC02F


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmsReply(VendorMessage):
    """Alarm flags of every channel: channel count, then tamper, short and open bitmaps."""

    CONTROL = 0x81
    DI = 0xC02F
    alarms: tuple[AlarmFlag, ...] = ()

    def payload(self) -> bytes:
        n = len(self.alarms)
        if n > MAX_CHANNELS:
            raise CodecError(f"{n} channels exceed {MAX_CHANNELS}")
        out = bytearray((n,))
        for flag in (AlarmFlag.TAMPER, AlarmFlag.SHORT, AlarmFlag.OPEN):
            out += _bitmap([bool(a & flag) for a in self.alarms])
        return bytes(out)

    @classmethod
    def from_payload(cls, common, p, at):
        _need(p, 1, at, "alarms reply")
        n = p[0]
        if n > MAX_CHANNELS:
            raise CodecError(f"channel count {n} exceeds {MAX_CHANNELS}", at)
        nb = (n + 7) // 8
        _exact(p, 1 + 3 * nb, at, f"alarms reply of {n} channels")
        maps = [_bits(p[1 + k * nb : 1 + (k + 1) * nb], nb * 8) for k in range(3)]
        for k in range(3):
            if any(maps[k][n:]):
                raise CodecError("alarm bitmap flags channels past the count", at + (k + 1) * nb)
        flags = tuple(
            AlarmFlag((maps[0][i]) | (maps[1][i] << 1) | (maps[2][i] << 2)) for i in range(n)
        )
        return cls(**common, alarms=flags)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadCdtStatus(VendorMessage):
    CONTROL = 0x01
    DI = 0xC03F


@dataclass(frozen=True, slots=True, kw_only=True)
class CdtStatus(VendorMessage):
    """CDT health: power flags (D0 mains present, D1 battery low), battery voltage in mV,
    modules answering (bitmap of modules 1..32), firmware version and the CDT clock."""

    CONTROL = 0x81
    DI = 0xC03F
    mains: bool = True
    battery_low: bool = False
    battery_mv: int = 0
    modules: frozenset[int] = frozenset()
    firmware: tuple[int, int] = (1, 0)
    time: datetime | None = None

    SIZE: ClassVar[int] = 1 + 2 + 4 + 2 + 7

    def payload(self) -> bytes:
        bitmap = 0
        for m in self.modules:
            if not 1 <= m <= 32:
                raise CodecError(f"module number {m} is outside 1..32")
            bitmap |= 1 << (m - 1)
        if not 0 <= self.battery_mv <= 0xFFFF:
            raise CodecError(f"battery voltage {self.battery_mv} mV does not fit 16 bits")
        flags = (1 if self.mains else 0) | (2 if self.battery_low else 0)
        return (
            struct.pack("<BHI", flags, self.battery_mv, bitmap)
            + _byte(self.firmware[0], "firmware major")
            + _byte(self.firmware[1], "firmware minor")
            + bcd.encode_time(self.time)
        )

    @classmethod
    def from_payload(cls, common, p, at):
        _exact(p, cls.SIZE, at, "CDT status reply")
        flags, mv, bitmap = struct.unpack_from("<BHI", p)
        if flags & ~0x03:
            raise CodecError(f"unknown power flags {flags:02X}h", at)
        return cls(
            **common,
            mains=bool(flags & 1),
            battery_low=bool(flags & 2),
            battery_mv=mv,
            modules=frozenset(i + 1 for i in range(32) if bitmap >> i & 1),
            firmware=(p[7], p[8]),
            time=bcd.decode_time(p[9:16], at + 9),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadChannelInfo(_ChannelRangeRequest):
    CONTROL = 0x01
    DI = 0xC04F
    LIMIT = MAX_INFO
    WHAT = "channel info request"
    count: int = MAX_INFO


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelInfoReply(VendorMessage):
    """Per channel: meter type byte, serial (7 BCD bytes, low first), pulse constant (u16)."""

    CONTROL = 0x81
    DI = 0xC04F
    first_channel: int = 1
    channels: tuple[ChannelInfo, ...] = ()

    def payload(self) -> bytes:
        _channel_range(self.first_channel, len(self.channels), MAX_INFO)
        out = bytearray((self.first_channel, len(self.channels)))
        for ch in self.channels:
            if not 0 <= ch.pulse_constant <= 0xFFFF:
                raise CodecError(f"pulse constant {ch.pulse_constant} does not fit 16 bits")
            out += _byte(ch.meter_type, "meter type") + address_bytes(ch.serial)
            out += struct.pack("<H", ch.pulse_constant)
        return bytes(out)

    @classmethod
    def from_payload(cls, common, p, at):
        _need(p, 2, at, "channel info reply")
        first, n = p[0], p[1]
        _channel_range(first, n, MAX_INFO, at)
        _exact(p, 2 + 10 * n, at, f"channel info reply of {n} channels")
        chans = []
        for k in range(n):
            i = 2 + 10 * k
            chans.append(
                ChannelInfo(p[i], p[i + 1 : i + 8][::-1].hex().upper(), p[i + 8] | p[i + 9] << 8)
            )
        return cls(**common, first_channel=first, channels=tuple(chans))


@dataclass(frozen=True, slots=True, kw_only=True)
class SetBase(VendorMessage):
    """Set the pulse counter of ``channel`` (after a meter replacement, usually to 0)."""

    CONTROL = 0x04
    DI = 0xC0A1
    channel: int
    count: int = 0

    def payload(self) -> bytes:
        _channel_range(self.channel, 1, 1)
        if not 0 <= self.count <= 0xFFFFFFFF:
            raise CodecError(f"pulse count {self.count} does not fit 32 bits")
        return struct.pack("<BI", self.channel, self.count)

    @classmethod
    def from_payload(cls, common, p, at):
        _exact(p, 5, at, "set base")
        _channel_range(p[0], 1, 1, at)
        ch, count = struct.unpack("<BI", p)
        return cls(**common, channel=ch, count=count)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetBaseReply(SetBase):
    """The counter as the CDT holds it after the write."""

    CONTROL = 0x84


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeSync(VendorMessage):
    """Set the CDT clock (7 BCD bytes as in 901F)."""

    CONTROL = 0x04
    DI = 0xC0A2
    time: datetime

    def payload(self) -> bytes:
        return bcd.encode_time(self.time)

    @classmethod
    def from_payload(cls, common, p, at):
        _exact(p, 7, at, "time sync")
        when = bcd.decode_time(p, at)
        if when is None:
            raise CodecError("time sync carries no valid date and time", at)
        return cls(**common, time=when)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeSyncReply(VendorMessage):
    """The CDT clock after the write."""

    CONTROL = 0x84
    DI = 0xC0A2
    time: datetime | None = None

    def payload(self) -> bytes:
        return bcd.encode_time(self.time)

    @classmethod
    def from_payload(cls, common, p, at):
        _exact(p, 7, at, "time sync reply")
        return cls(**common, time=bcd.decode_time(p, at))


# --------------------------------------------------------------------------- registry

_TYPES: tuple[type[Message], ...] = (
    ReadData, CurrentData, ReadAddress, AddressReply, ValveControl, ValveReply, WriteAddress,
    WriteAddressReply, BulkRead, BulkReadReply, ReadAlarms, AlarmsReply, ReadCdtStatus,
    CdtStatus, ReadChannelInfo, ChannelInfoReply, SetBase, SetBaseReply, TimeSync,
    TimeSyncReply,
)  # fmt: skip
_BY_KEY: dict[tuple[int, int], type[Message]] = {(t.CONTROL, t.DI): t for t in _TYPES}
_BY_KEY[(0x2A, ValveControl.DI)] = ValveControl
_BY_KEY[(0xAA, ValveReply.DI)] = ValveReply
KNOWN_DIS: Final = frozenset(di for _, di in _BY_KEY)


def _swap(di: int) -> int:
    return (di & 0xFF) << 8 | di >> 8


def _di_bytes(di: int, order: DiOrder) -> bytes:
    return struct.pack(">H" if order is DiOrder.HIGH_FIRST else "<H", di)


def to_frame(msg: Message) -> Frame:
    """The link-layer frame of ``msg`` (vendor CRC included)."""
    if not 0 <= msg.ser <= 0xFF:
        raise CodecError(f"SER {msg.ser} is not a byte (0..255)")
    if isinstance(msg, ErrorReply):
        data = bytes((msg.ser,)) + struct.pack("<H", msg.status)
        if msg.di is not None:
            data = _di_bytes(msg.di, msg.di_order) + data
        return Frame(msg.meter_type, msg.address, msg.control, data)
    data = _di_bytes(msg.DI, msg.di_order) + bytes((msg.ser,)) + msg.payload()
    if msg.VENDOR:
        header = bytes((START, msg.meter_type)) + address_bytes(msg.address)
        header += bytes((msg.control, len(data) + 2))
        data += struct.pack("<H", crc16(header + data))
    return Frame(msg.meter_type, msg.address, msg.control, data)


def encode(msg: Message, preamble: int = 2) -> bytes:
    """Wire bytes of ``msg`` with ``preamble`` FE wake-up bytes; raises CodecError."""
    return encode_frame(to_frame(msg), preamble)


def parse(frame: Frame, base: int = 0, *, heat_layout: HeatLayout = HeatLayout.AUTO) -> Message:
    """The typed message carried by ``frame``.

    ``base`` is the offset of the frame's 68 byte in the caller's input, so that errors
    name the byte in that input.  ``heat_layout`` is the layout a heat meter's 901F reply
    is read in (:class:`HeatData`); AUTO decides from the bytes.  Raises CodecError for an
    unknown control/DI pair, a payload of the wrong size, non-BCD digits, a bad vendor CRC,
    or out-of-range fields.
    """
    data = frame.data
    at = base + DATA_OFFSET
    common = {"meter_type": frame.meter_type, "address": frame.address}
    if frame.is_reply and frame.is_error:
        return _parse_error(frame, common, at)
    if len(data) < 3:
        raise CodecError(f"L={len(data):02X}h is too short: DI and SER need 3 bytes", base + 10)
    di = data[0] << 8 | data[1]
    cls = _BY_KEY.get((frame.control, di))
    order = DiOrder.HIGH_FIRST
    if cls is None:
        cls = _BY_KEY.get((frame.control, _swap(di)))
        order = DiOrder.LOW_FIRST
        di = _swap(di)
    if cls is None:
        raise CodecError(
            f"no command with control {frame.control:02X}h and DI "
            f"{data[0]:02X} {data[1]:02X} (either byte order)",
            at,
        )
    if di == 0x901F and frame.control == 0x81 and len(data) - 3 == HeatData.SIZE:
        cls = HeatData
    common["ser"] = data[2]
    common["di_order"] = order
    payload = data[3:]
    if cls.VENDOR:
        if len(payload) < 2:
            raise CodecError("vendor payload needs its 2-byte CRC-16", at + len(data))
        header = bytes((START, frame.meter_type)) + address_bytes(frame.address)
        header += bytes((frame.control, len(data)))
        want = crc16(header + data[:-2])
        got = data[-2] | data[-1] << 8
        if want != got:
            raise CodecError(f"CRC-16 expected {want:04X}h, got {got:04X}h", at + len(data) - 2)
        payload = payload[:-2]
    if cls in (ValveControl, ValveReply):
        return cls.from_payload(common, payload, at + 3, alt=frame.control in (0x2A, 0xAA))
    if cls is HeatData:
        return HeatData.from_payload(common, payload, at + 3, heat_layout)
    return cls.from_payload(common, payload, at + 3)


def _parse_error(frame: Frame, common: dict, at: int) -> ErrorReply:
    data = frame.data
    function = frame.control & 0x3F
    if len(data) == 3:
        return ErrorReply(
            **common, ser=data[0], function=function, status=data[1] | data[2] << 8
        )
    if len(data) == 5:
        di = data[0] << 8 | data[1]
        order = DiOrder.HIGH_FIRST
        if di not in KNOWN_DIS and _swap(di) in KNOWN_DIS:
            di, order = _swap(di), DiOrder.LOW_FIRST
        return ErrorReply(
            **common, ser=data[2], function=function, status=data[3] | data[4] << 8,
            di=di, di_order=order,
        )  # fmt: skip
    raise CodecError(
        f"abnormal reply must carry SER+ST (3 bytes) or DI+SER+ST (5 bytes), got {len(data)}", at
    )
