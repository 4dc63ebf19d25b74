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

The classes live by responsibility: ``msgbase.py`` (constants, flags, the :class:`Message`
base and field helpers), ``standard.py`` (the CJ/T 188 messages) and ``vendor.py`` (the
ST2000R messages).  This module holds what ties them together — the registry of
(control, DI) pairs, :func:`parse` and :func:`encode` — and re-exports every name, so that
callers import ``messages`` alone.
"""

from __future__ import annotations

import struct
from typing import Final

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
from st2000r.drivers.st2000r.msgbase import (
    CDT_TYPE,
    DATA_OFFSET,
    INPUTS_PER_MODULE,
    MAX_BULK,
    MAX_CHANNELS,
    MAX_INFO,
    AlarmFlag,
    ChannelInfo,
    ChannelReading,
    DiOrder,
    Message,
    MeterStatus,
    Valve,
)
from st2000r.drivers.st2000r.standard import (
    AddressReply,
    CurrentData,
    ErrorReply,
    HeatData,
    HeatLayout,
    ReadAddress,
    ReadData,
    ValveControl,
    ValveReply,
    WriteAddress,
    WriteAddressReply,
)
from st2000r.drivers.st2000r.units import UNITS, Quantity
from st2000r.drivers.st2000r.vendor import (
    AlarmsReply,
    BulkRead,
    BulkReadReply,
    CdtStatus,
    ChannelInfoReply,
    ReadAlarms,
    ReadCdtStatus,
    ReadChannelInfo,
    SetBase,
    SetBaseReply,
    TimeSync,
    TimeSyncReply,
    VendorMessage,
)

# every public name this module has carried, wherever it is defined now
__all__ = [
    "CDT_TYPE", "DATA_OFFSET", "DIR_UP", "ERROR", "INPUTS_PER_MODULE", "KNOWN_DIS", "MAX_BULK",
    "MAX_CHANNELS", "MAX_INFO", "START", "UNITS", "AddressReply", "AlarmFlag", "AlarmsReply",
    "BulkRead", "BulkReadReply", "CdtStatus", "ChannelInfo", "ChannelInfoReply",
    "ChannelReading", "CodecError", "CurrentData", "DiOrder", "ErrorReply", "Frame", "HeatData",
    "HeatLayout", "Message", "MeterStatus", "Quantity", "ReadAddress", "ReadAlarms",
    "ReadCdtStatus", "ReadChannelInfo", "ReadData", "SetBase", "SetBaseReply", "TimeSync",
    "TimeSyncReply", "Valve", "ValveControl", "ValveReply", "VendorMessage", "WriteAddress",
    "WriteAddressReply", "address_bytes", "bcd", "channel_number", "crc16", "encode",
    "encode_frame", "module_input", "parse", "to_frame",
]  # fmt: skip


def channel_number(module: int, input_no: int) -> int:
    """The CDT-wide channel 1..96 of pulse input ``input_no`` (1..3) of module ``module`` (1..32)."""
    return (module - 1) * INPUTS_PER_MODULE + input_no


def module_input(channel: int) -> tuple[int, int]:
    """``(module, input)`` of CDT-wide channel ``channel`` (the inverse of :func:`channel_number`)."""
    return (channel - 1) // INPUTS_PER_MODULE + 1, (channel - 1) % INPUTS_PER_MODULE + 1


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
