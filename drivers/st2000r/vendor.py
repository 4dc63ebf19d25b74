"""The ST2000R vendor messages, sans-I/O, addressed to a CDT (meter type 50h, CDT_TYPE).

Every vendor payload ends with a CRC-16 (see ``crc.py``) over the frame from 68 to the byte
before the CRC; :func:`~st2000r.drivers.st2000r.messages.encode` adds it and
:func:`~st2000r.drivers.st2000r.messages.parse` checks it, so the classes here see the
payload without it::

    C=01 DI C01F  BulkRead        -> BulkReadReply     counts + status of up to 48 channels
    C=01 DI C02F  ReadAlarms      -> AlarmsReply       tamper / short / open bitmaps
    C=01 DI C03F  ReadCdtStatus   -> CdtStatus         mains, battery, modules, firmware, clock
    C=01 DI C04F  ReadChannelInfo -> ChannelInfoReply  meter type, serial, pulse constant
    C=04 DI C0A1  SetBase         -> SetBaseReply      set a channel's pulse counter
    C=04 DI C0A2  TimeSync        -> TimeSyncReply     set the CDT clock

Byte layouts are in ``docs/protocol.md``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from st2000r.drivers.st2000r import bcd
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import address_bytes
from st2000r.drivers.st2000r.msgbase import (
    CDT_TYPE,
    MAX_BULK,
    MAX_CHANNELS,
    MAX_INFO,
    AlarmFlag,
    ChannelInfo,
    ChannelReading,
    Message,
    _bitmap,
    _bits,
    _byte,
    _exact,
    _need,
)


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
