"""Plain-JSON views of decoded messages, for the CLI, logs and the HTTP API.

Quantities are rendered as decimal strings (never floats) with their unit and the exact
amount in the project's base unit.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.units import Quantity

METER_TYPES = {
    0x10: "cold water", 0x11: "hot water", 0x12: "drinking water", 0x13: "reclaimed water",
    0x20: "heat (heating)", 0x21: "heat (cooling)", 0x30: "gas", 0x40: "electricity",
    0xAA: "any (broadcast)", m.CDT_TYPE: "ST2000R CDT",
}  # fmt: skip

FUNCTIONS = {0x01: "read data", 0x03: "read address", 0x04: "write data", 0x0A: "valve (vendor)",
             0x15: "write address"}  # fmt: skip


def meter_type_name(t: int) -> str:
    if t in METER_TYPES:
        return METER_TYPES[t]
    for lo, name in ((0x10, "water"), (0x20, "heat"), (0x30, "gas"), (0x40, "other")):
        if lo <= t <= lo + 9:
            return name
    return "unknown"


def _value(v: Any) -> Any:
    if isinstance(v, Quantity):
        out: dict[str, Any] = {"value": str(v.decimal), "unit": v.symbol}
        base = v.to_base()
        if base is not None:
            out["base_value"], out["base_unit"] = str(base[0]), base[1]
        return out
    if isinstance(v, m.MeterStatus):
        return {"raw": f"{v.raw:04X}h", "valve": v.valve.name.lower(), "battery_low": v.battery_low}
    if isinstance(v, enum.Flag):
        return [f.name.lower() for f in type(v) if f and f in v]
    if isinstance(v, enum.Enum):
        return v.name.lower()
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, frozenset):
        return sorted(v)
    if isinstance(v, tuple):
        return [_value(x) for x in v]
    if isinstance(v, m.ChannelReading):
        return {"count": v.count, "valve": v.valve.name.lower(),
                "alarms": _value(v.alarms), "absent": v.absent}  # fmt: skip
    if dataclasses.is_dataclass(v):
        return {f.name: _value(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def describe(msg: m.Message, raw_control: int | None = None) -> dict[str, Any]:
    """A JSON-ready dict of ``msg``: protocol, type, address, control fields, DI, values."""
    control = msg.control if raw_control is None else raw_control
    vendor_valve = control in (0x2A, 0xAA)  # a vendor control code, not a follow-up frame
    out: dict[str, Any] = {
        "protocol": "ST2000R vendor" if msg.VENDOR else "CJ/T 188-2004",
        "command": type(msg).__name__,
        "meter_type": f"{msg.meter_type:02X}h",
        "meter_type_name": meter_type_name(msg.meter_type),
        "address": msg.address,
        "control": {
            "raw": f"{control:02X}h",
            "direction": "reply" if control & 0x80 else "request",
            "error": bool(control & 0x40),
            "follow_up": bool(control & 0x20) and not vendor_valve,
            "function": f"{control & 0x1F:02X}h" if not vendor_valve else "2Ah",
            "function_name": FUNCTIONS.get(control & 0x1F, "unknown")
            if not vendor_valve
            else "valve (vendor control code)",
        },
    }
    di = msg.di if isinstance(msg, m.ErrorReply) else msg.DI
    if di is not None:
        out["di"] = f"{di:04X}"
        out["di_order"] = " ".join(
            (f"{di >> 8:02X}", f"{di & 0xFF:02X}")
            if msg.di_order is m.DiOrder.HIGH_FIRST
            else (f"{di & 0xFF:02X}", f"{di >> 8:02X}")
        )
    out["ser"] = msg.ser
    skip = {"meter_type", "address", "ser", "di_order", "di"}
    values = {
        f.name: _value(getattr(msg, f.name))
        for f in dataclasses.fields(msg)
        if f.name not in skip
    }
    if isinstance(msg, (m.BulkReadReply, m.ChannelInfoReply)):
        for i, ch in enumerate(values["channels"]):
            ch["channel"] = msg.first_channel + i
    if isinstance(msg, m.AlarmsReply):
        values["alarms"] = {str(i + 1): a for i, a in enumerate(values["alarms"]) if a}
    if isinstance(msg, m.ErrorReply):
        values["status"] = f"{msg.status:04X}h"
    out["values"] = values
    return out
