"""CJ/T 188 frames published by others, decoded to the values their sources state.

The frames, their sources (URL and place in the source) and the stated values live in
``tests/data/cjt188_public_frames.toml``; each entry's ``source`` and ``source_note`` is
the citation.  Sources used: the CSDN/cnblogs "CJ/T-188 水表协议解析" series
(qingwufeiyang12346), hupengwu/fox-edge-server-protocol (CJT188 module), REDISANT's
"CJ/T188-2004 报文举例", the JY heat-meter dissection ("冷热量表协议解析2") and
aixiwang/python_cjt188.
"""

from __future__ import annotations

import tomllib
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import decode_frame

DATA = Path(__file__).parents[1] / "data" / "cjt188_public_frames.toml"
FRAMES = tomllib.loads(DATA.read_text(encoding="utf-8"))["frame"]


def raw(entry) -> bytes:
    return bytes.fromhex(entry["hex"].replace(" ", ""))


def test_enough_distinct_sources():
    valid = [e for e in FRAMES if e["checksum_ok"]]
    assert len(valid) >= 8
    assert len({e["source"].split("/blob/")[0] for e in valid}) >= 4
    assert all(e["source"].startswith("https://") and e["source_note"] for e in FRAMES)


@pytest.mark.parametrize("entry", [e for e in FRAMES if e["checksum_ok"]], ids=lambda e: e["id"])
def test_decodes_to_the_stated_values(entry):
    frame, offset = decode_frame(raw(entry))
    assert raw(entry)[:offset] == b"\xfe" * offset
    msg = m.parse(frame)
    assert msg.meter_type == entry["meter_type"]
    assert msg.address == entry["address"]
    assert frame.control == entry["control"]
    assert msg.ser == entry["ser"]
    if not isinstance(msg, m.ErrorReply):
        assert msg.DI == entry["di"]
        wire = raw(entry)[offset + 11 : offset + 13]
        assert wire.hex(" ").upper() == entry["di_bytes_order"].upper()
        expected_order = (
            m.DiOrder.HIGH_FIRST if wire[0] == entry["di"] >> 8 else m.DiOrder.LOW_FIRST
        )
        assert msg.di_order is expected_order
    assert (frame.is_reply) == (entry["direction"] == "reply")

    if "current_total" in entry:
        assert isinstance(msg, m.CurrentData)
        assert msg.total.decimal == Decimal(entry["current_total"])
        assert msg.total.unit == entry["current_unit"]
        assert msg.settlement.decimal == Decimal(entry["settlement_total"])
        assert msg.settlement.unit == entry["settlement_unit"]
    if "time" in entry:
        assert msg.time == datetime.fromisoformat(entry["time"])
    if "status_bytes" in entry:
        st = bytes.fromhex(entry["status_bytes"].replace(" ", ""))
        got = msg.status.raw.to_bytes(2, "little")[: len(st)]
        assert got == st
    if "valve" in entry:
        assert msg.status.valve.name.lower() == entry["valve"]
    if "valve_action" in entry:
        assert isinstance(msg, m.ValveControl)
        assert msg.open == (entry["valve_action"] == 0x55)
    if "new_address" in entry:
        assert msg.new_address == entry["new_address"]
    if "settlement_heat" in entry:
        assert isinstance(msg, m.HeatData)
        assert msg.unit_first == (entry["heat_field_layout"] == "unit_first")
        assert msg.settlement_heat.decimal == Decimal(entry["settlement_heat"])
        assert msg.settlement_heat.unit == entry["settlement_heat_unit"]
        assert msg.current_heat.decimal == Decimal(entry["current_heat"])
        assert msg.cumulative_flow.decimal == Decimal(entry["cumulative_flow"])
        assert msg.cumulative_flow.unit == entry["cumulative_flow_unit"]
        assert msg.supply_temp == Decimal(entry["supply_temp"])
        assert msg.return_temp == Decimal(entry["return_temp"])
        assert msg.working_hours == entry["working_hours"]


@pytest.mark.parametrize("entry", [e for e in FRAMES if e["checksum_ok"]], ids=lambda e: e["id"])
def test_reencodes_byte_for_byte(entry):
    """What we decode we can send again exactly (so a device role answers like the meter)."""
    data = raw(entry)
    frame, offset = decode_frame(data)
    assert m.encode(m.parse(frame), preamble=offset) == data


@pytest.mark.parametrize("entry", [e for e in FRAMES if not e["checksum_ok"]], ids=lambda e: e["id"])
def test_wrong_checksum_is_rejected(entry):
    with pytest.raises(CodecError, match="checksum expected"):
        decode_frame(raw(entry))
