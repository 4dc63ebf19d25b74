"""Device-role answering, sans-I/O: a request frame in, the devices' replies out.

:func:`answer` is what every CDT on a link does when a frame passes on the bus.  CDTs
answer the ST2000R vendor commands addressed to them (meter type 50h, address = CDT
address as 14 BCD digits) and, as the proxy of their pulse meters, the standard CJ/T 188
commands addressed to a meter's serial (meter type 10h water, 30h gas, 40h electricity, or
AAh for any).  Rules, as a real device behaves:

==========================================  ================================================
request                                     answer
==========================================  ================================================
a reply frame (D7 set), too short, bad      silence
vendor CRC, unknown address or type
device silent (power, repeater, no_answer)  silence
known address, unknown control/DI           ErrorReply status 01h (unknown DI), DI echoed
known DI, malformed payload                 ErrorReply status 02h (bad parameter)
ReadData 901F                               CurrentData: total and settlement in m³ (water,
                                            gas: litres // 10) or kWh (Wh // 10), 2 decimals,
                                            CDT clock, status (valve, CDT battery low)
ReadAddress 810A                            AddressReply from the device's address
ValveControl A017 (C=04 or 2Ah)             ValveReply with the status *before* the motor
                                            moves (read back later); jammed: ErrorReply 05h
WriteAddress A018                           WriteAddressReply from the *new* address; a
                                            serial already in use or non-decimal: error 02h
BulkRead / ReadAlarms / ReadCdtStatus /     the vendor replies; unfitted channels read as
ReadChannelInfo                             count 0, status "absent", meter type 0
SetBase                                     SetBaseReply; a channel without meter: error 04h
TimeSync                                    sets the CDT clock, TimeSyncReply
broadcast address AAAAAAAAAAAAAA            reads: every matching device answers (more than
                                            one collide on the bus, see ``bus.py``);
                                            TimeSync: every CDT sets its clock, no reply;
                                            other writes: ignored
==========================================  ================================================

Every reply is echoed in the request's SER and DI byte order.  :func:`answer` never raises.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from twisted.logger import Logger

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.crc import crc16
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import BROADCAST, START, Frame, address_bytes
from st2000r.drivers.st2000r.units import KWH, M3, Quantity
from st2000r.config.model import MeterKind
from st2000r.simulation.world import FIRMWARE, CdtState, LinkWorld, MeterState

__all__ = ["Reply", "answer", "ANY_TYPE", "MAX_BROADCAST_REPLIES"]

log = Logger()

ANY_TYPE: Final = 0xAA
MAX_BROADCAST_REPLIES: Final = 8  # enough to model a collision; the rest only add noise
_BCD_LIMIT: Final = 100_000_000  # 4 BCD bytes: a register wraps past 999999.99

_METER_REQUESTS: Final = frozenset({(0x01, 0x901F), (0x03, 0x810A), (0x04, 0xA017), (0x2A, 0xA017), (0x15, 0xA018)})
_CDT_REQUESTS: Final = frozenset(
    {(0x03, 0x810A), (0x01, 0xC01F), (0x01, 0xC02F), (0x01, 0xC03F), (0x01, 0xC04F), (0x04, 0xC0A1), (0x04, 0xC0A2)}
)
_VENDOR_DIS: Final = frozenset({0xC01F, 0xC02F, 0xC03F, 0xC04F, 0xC0A1, 0xC0A2})


@dataclass(frozen=True, slots=True)
class Reply:
    """One device's reply.  ``wire``: the bytes it sends (2 FE wake-up bytes included);
    ``cdt``: address of the answering CDT; ``latency_s``: repeater delay, both ways
    (seconds); ``late_s``: extra delay of a ``late`` fault (seconds)."""

    wire: bytes
    cdt: int
    latency_s: float
    late_s: float


def answer(link: LinkWorld, frame: Frame) -> tuple[Reply, ...]:
    """What the devices of ``link`` send back for ``frame`` now (world time from the link).
    Empty for silence; more than one reply means several devices talk at once."""
    try:
        return _answer(link, frame, link.seconds())
    except Exception:  # a device never crashes; a bug here must still be visible
        log.failure("device model failed on {frame!r}", frame=frame)
        return ()


def _answer(link: LinkWorld, frame: Frame, t: float) -> tuple[Reply, ...]:
    if frame.is_reply or len(frame.data) < 3:
        return ()
    if frame.address == BROADCAST:
        return _broadcast(link, frame, t)
    out = []
    if frame.meter_type in (m.CDT_TYPE, ANY_TYPE):
        cdt = link.cdt_by_bcd.get(frame.address)
        if cdt is not None and not cdt.silent(t):
            wire = _cdt_request(cdt, frame, t)
            if wire is not None:
                out.append(_reply(cdt, wire))
    if frame.meter_type != m.CDT_TYPE:
        meter = link.meter_by_serial.get(frame.address)
        if meter is not None and frame.meter_type in (meter.meter_type, ANY_TYPE) and not meter.cdt.silent(t):
            wire = _meter_request(link, meter, frame, t)
            if wire is not None:
                out.append(_reply(meter.cdt, wire))
    return tuple(out)


def _reply(cdt: CdtState, wire: bytes) -> Reply:
    return Reply(wire, cdt.address, 2 * cdt.latency_s, cdt.late_ms / 1000.0)


# --------------------------------------------------------------------------- decoding


def _decode(frame: Frame, known: frozenset[tuple[int, int]]) -> m.Message | m.ErrorReply | None:
    """The request, an ErrorReply to send (unknown DI / bad parameter), or None (silence)."""
    data = frame.data
    di = data[0] << 8 | data[1]
    swapped = (di & 0xFF) << 8 | di >> 8
    if (frame.control, di) in known:
        real, order = di, m.DiOrder.HIGH_FIRST
    elif (frame.control, swapped) in known:
        real, order = swapped, m.DiOrder.LOW_FIRST
    else:
        return m.ErrorReply(
            meter_type=frame.meter_type, address=frame.address, ser=data[2],
            function=frame.function, status=m.ErrorReply.UNKNOWN_DI, di=di,
        )  # fmt: skip
    if real in _VENDOR_DIS:
        if len(data) < 5:
            return None
        header = bytes((START, frame.meter_type)) + address_bytes(frame.address) + bytes((frame.control, len(data)))
        if crc16(header + data[:-2]) != (data[-2] | data[-1] << 8):
            return None  # corrupted on the wire: a real device drops it
    try:
        return m.parse(frame)
    except CodecError:
        return m.ErrorReply(
            meter_type=frame.meter_type, address=frame.address, ser=data[2], di_order=order,
            function=frame.function, status=m.ErrorReply.BAD_PARAMETER, di=real,
        )  # fmt: skip


def _error(req: m.Message, device_type: int, address: str, function: int, status: int) -> bytes:
    return m.encode(
        m.ErrorReply(
            meter_type=device_type, address=address, ser=req.ser, di_order=req.di_order,
            function=function, status=status, di=req.DI,
        )  # fmt: skip
    )


def _fix_error(err: m.ErrorReply, device_type: int, address: str) -> bytes:
    return m.encode(
        m.ErrorReply(
            meter_type=device_type, address=address, ser=err.ser, di_order=err.di_order,
            function=err.function, status=err.status, di=err.di,
        )  # fmt: skip
    )


# --------------------------------------------------------------------------- meters


def _total(meter: MeterState, reading: int) -> Quantity:
    unit = KWH if meter.kind is MeterKind.ELECTRICITY else M3
    return Quantity((reading // 10) % _BCD_LIMIT, unit)


def _meter_request(link: LinkWorld, meter: MeterState, frame: Frame, t: float) -> bytes | None:
    req = _decode(frame, _METER_REQUESTS)
    if req is None:
        return None
    mtype, addr = meter.meter_type, meter.serial
    if isinstance(req, m.ErrorReply):
        return _fix_error(req, mtype, addr)
    common = {"meter_type": mtype, "address": addr, "ser": req.ser, "di_order": req.di_order}
    cdt = meter.cdt
    if isinstance(req, m.ReadData):
        status = m.MeterStatus.of(meter.valve(t), cdt.battery_low(t))
        return m.encode(
            m.CurrentData(
                **common, total=_total(meter, meter.reading(t)),
                settlement=_total(meter, meter.settlement_reading(t)),
                time=link.world.datetime_at(t + cdt.clock_offset_s).replace(microsecond=0),
                status=status,
            )  # fmt: skip
        )
    if isinstance(req, m.ReadAddress):
        return m.encode(m.AddressReply(**common))
    if isinstance(req, m.ValveControl):
        if not meter.command_valve(t, req.open):
            return _error(req, mtype, addr, frame.function, m.ErrorReply.VALVE_FAULT)
        status = m.MeterStatus.of(meter.valve(t), cdt.battery_low(t))
        return m.encode(m.ValveReply(**common, status=status, alt=req.alt))
    if isinstance(req, m.WriteAddress):
        new = req.new_address
        if not new.isdigit():
            return _error(req, mtype, addr, frame.function, m.ErrorReply.BAD_PARAMETER)
        try:
            link.rename_meter(meter, new)
        except ValueError:
            return _error(req, mtype, addr, frame.function, m.ErrorReply.BAD_PARAMETER)
        log.info("link {link}: meter {old} now answers as {new}", link=link.name, old=addr, new=new)
        return m.encode(m.WriteAddressReply(**{**common, "address": new}))
    return None


# --------------------------------------------------------------------------- CDTs


def _channel_reading(cdt: CdtState, n: int, t: float) -> m.ChannelReading:
    meter = cdt.channels.get(n)
    alarms = cdt.alarms.get(n, m.AlarmFlag.NONE)
    if meter is None:
        return m.ChannelReading(0, m.ChannelReading.status_of(m.Valve.OPEN, alarms, absent=True))
    return m.ChannelReading(
        meter.count(t) & 0xFFFFFFFF, m.ChannelReading.status_of(meter.valve(t), alarms)
    )


def _channel_info(cdt: CdtState, n: int) -> m.ChannelInfo:
    meter = cdt.channels.get(n)
    if meter is None:
        return m.ChannelInfo(0, "00000000000000", 0)
    # the wire field is 16 bits; larger pulse constants are reported saturated
    return m.ChannelInfo(meter.meter_type, meter.serial, meter.pulse_constant)


def _cdt_request(cdt: CdtState, frame: Frame, t: float) -> bytes | None:
    req = _decode(frame, _CDT_REQUESTS)
    if req is None:
        return None
    addr = cdt.bcd_address
    if isinstance(req, m.ErrorReply):
        return _fix_error(req, m.CDT_TYPE, addr)
    common = {"meter_type": m.CDT_TYPE, "address": addr, "ser": req.ser, "di_order": req.di_order}
    world = cdt.link.world
    if isinstance(req, m.BulkRead):
        first = req.first_channel
        chans = tuple(_channel_reading(cdt, n, t) for n in range(first, first + req.count))
        return m.encode(m.BulkReadReply(**common, first_channel=first, channels=chans))
    if isinstance(req, m.ReadAlarms):
        alarms = tuple(cdt.alarms.get(n, m.AlarmFlag.NONE) for n in range(1, m.MAX_CHANNELS + 1))
        return m.encode(m.AlarmsReply(**common, alarms=alarms))
    if isinstance(req, m.ReadCdtStatus):
        return m.encode(
            m.CdtStatus(
                **common, mains=cdt.mains, battery_low=cdt.battery_low(t),
                battery_mv=cdt.battery_mv(t), modules=cdt.modules, firmware=FIRMWARE,
                time=world.datetime_at(t + cdt.clock_offset_s).replace(microsecond=0),
            )  # fmt: skip
        )
    if isinstance(req, m.ReadChannelInfo):
        first = req.first_channel
        chans = tuple(_channel_info(cdt, n) for n in range(first, first + req.count))
        return m.encode(m.ChannelInfoReply(**common, first_channel=first, channels=chans))
    if isinstance(req, m.SetBase):
        meter = cdt.channels.get(req.channel)
        if meter is None:
            return _error(req, m.CDT_TYPE, addr, frame.function, m.ErrorReply.NO_CHANNEL)
        meter.set_count(t, req.count)
        log.info("link {link} CDT {cdt}: channel {ch} base set to {count}", link=cdt.link.name,
                 cdt=cdt.address, ch=req.channel, count=req.count)  # fmt: skip
        return m.encode(m.SetBaseReply(**common, channel=req.channel, count=meter.count(t) & 0xFFFFFFFF))
    if isinstance(req, m.TimeSync):
        _sync(cdt, req, t)
        return m.encode(
            m.TimeSyncReply(**common, time=world.datetime_at(t + cdt.clock_offset_s).replace(microsecond=0))
        )
    if isinstance(req, m.ReadAddress):
        return m.encode(m.AddressReply(**common))
    return None


def _sync(cdt: CdtState, req: m.TimeSync, t: float) -> None:
    world = cdt.link.world
    cdt.clock_offset_s = (req.time - world.datetime_at(t)).total_seconds()



# --------------------------------------------------------------------------- broadcast


def _broadcast(link: LinkWorld, frame: Frame, t: float) -> tuple[Reply, ...]:
    data = frame.data
    di = data[0] << 8 | data[1]
    swapped = (di & 0xFF) << 8 | di >> 8
    key = (frame.control, di) if (frame.control, di) in _CDT_REQUESTS | _METER_REQUESTS else (frame.control, swapped)
    if key[1] == 0xC0A2 and frame.meter_type in (m.CDT_TYPE, ANY_TYPE):
        try:
            req = m.parse(frame)
        except CodecError:
            return ()
        if isinstance(req, m.TimeSync):
            for cdt in link.cdts:
                if not cdt.silent(t):
                    _sync(cdt, req, t)
        return ()
    if key[0] != 0x01 and key != (0x03, 0x810A):
        return ()  # broadcast writes (valves, addresses, bases) are ignored
    out: list[Reply] = []
    if frame.meter_type in (m.CDT_TYPE, ANY_TYPE) and key in _CDT_REQUESTS:
        if key[1] in _VENDOR_DIS and _readdress(frame, BROADCAST) is None:
            return ()
        for cdt in link.cdts:
            if len(out) >= MAX_BROADCAST_REPLIES:
                break
            if not cdt.silent(t):
                wire = _cdt_request(cdt, _readdress(frame, cdt.bcd_address) or frame, t)
                if wire is not None:
                    out.append(_reply(cdt, wire))
    if frame.meter_type != m.CDT_TYPE and key in _METER_REQUESTS:
        for meter in link.meters():
            if len(out) >= MAX_BROADCAST_REPLIES:
                break
            if frame.meter_type in (meter.meter_type, ANY_TYPE) and not meter.cdt.silent(t):
                wire = _meter_request(link, meter, _readdress(frame, meter.serial) or frame, t)
                if wire is not None:
                    out.append(_reply(meter.cdt, wire))
    return tuple(out)


def _readdress(frame: Frame, address: str) -> Frame | None:
    """The broadcast request as if addressed to ``address`` (vendor CRC recomputed)."""
    data = frame.data
    di = data[0] << 8 | data[1]
    swapped = (di & 0xFF) << 8 | di >> 8
    if di in _VENDOR_DIS or swapped in _VENDOR_DIS:
        header = bytes((START, frame.meter_type)) + address_bytes(frame.address) + bytes((frame.control, len(data)))
        if crc16(header + data[:-2]) != (data[-2] | data[-1] << 8):
            return None  # corrupted on the wire: silence
        header = bytes((START, frame.meter_type)) + address_bytes(address) + bytes((frame.control, len(data)))
        data = data[:-2] + struct.pack("<H", crc16(header + data[:-2]))
    return Frame(frame.meter_type, address, frame.control, data)
