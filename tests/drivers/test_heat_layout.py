"""Heat-meter 901F replies: which of the two field layouts a reply is read in.

The rule (docs/protocol.md, HeatData): a layout is a candidate when all its BCD digits are
valid; the candidate whose unit codes fit better wins (2: every code known and of its
field's kind, energy, energy, power, flow rate, volume; 1: every code known; 0: not); on
a tie the standard layout wins; a caller that knows the layout passes it and nothing is
guessed.  Each case is a table row: the message sent, then what each mode reads.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import decode_frame
from st2000r.drivers.st2000r.units import Quantity

STANDARD, UNIT_FIRST = m.HeatLayout.STANDARD, m.HeatLayout.UNIT_FIRST
SUITED = (0x05, 0x05, 0x17, 0x35, 0x29)  # kWh, kWh, kW, m³/h, L: all BCD-valid bytes too


def heat(units, values, unit_first) -> m.HeatData:
    qs = [Quantity(v, u, d) for v, u, d in zip(values, units, m.HeatData.DECIMALS)]
    return m.HeatData(
        meter_type=0x20, address="00000000000007", ser=3, settlement_heat=qs[0],
        current_heat=qs[1], power=qs[2], flow=qs[3], cumulative_flow=qs[4],
        supply_temp=Decimal("55.20"), return_temp=Decimal("41.75"), working_hours=10512,
        unit_first=unit_first,
    )  # fmt: skip


def frame_of(msg: m.HeatData):
    return decode_frame(m.encode(msg))[0]


def other_reading(msg: m.HeatData) -> m.HeatData:
    frame = frame_of(msg)
    return m.parse(frame, heat_layout=STANDARD if msg.unit_first else UNIT_FIRST)


CASES = [
    # (id, message sent, layout AUTO reads it in)
    # unit-first, standard reading fails BCD (0Ah among the digits): unit-first
    ("standard-not-bcd", heat((1, 1, 1, 1, 0x0A), [1_000_000] * 5, True), UNIT_FIRST),
    # unit-first with suited units; the standard reading decodes (every top byte 01 = J)
    # but J is no power, flow-rate or volume unit: unit-first fits better
    ("unit-first-fits-better", heat(SUITED, [1_000_000] * 5, True), UNIT_FIRST),
    # standard with suited units; low bytes 05 05 17 35 29 make a suited unit-first reading
    # too: a tie, the standard layout wins
    ("tie-suited", heat(SUITED, [5, 5, 17, 35, 29], False), STANDARD),
    # standard, every unit J (known, not all of their kind); low bytes 01: the unit-first
    # reading is also "all known": a tie, the standard layout wins
    ("tie-known", heat((1,) * 5, [1] * 5, False), STANDARD),
    # unit-first, every unit J, values 01000000: same tie from the other side. A meter known
    # to send the unit first needs heat_layout=UNIT_FIRST (see test_known_layout_is_kept)
    ("tie-known-unit-first", heat((1,) * 5, [1_000_000] * 5, True), STANDARD),
]


@pytest.mark.parametrize("msg, auto", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_auto_layout(msg, auto):
    got = m.parse(frame_of(msg))
    assert got.layout is auto
    if auto is msg.layout:
        assert got == msg
    else:
        assert got == other_reading(msg) and m.encode(got) == m.encode(msg)


@pytest.mark.parametrize("msg", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_known_layout_is_kept(msg):
    assert m.parse(frame_of(msg), heat_layout=msg.layout) == msg


def test_tie_case_really_reads_both_ways():
    msg = CASES[2][1]
    both = other_reading(msg)
    assert both.unit_first and both.unit_fit == msg.unit_fit == 2
    assert [q.unit for q in both.quantities] == [0x05, 0x05, 0x17, 0x35, 0x29]


def test_a_known_layout_the_bytes_do_not_fit_is_an_error_at_its_byte():
    msg = CASES[0][1]
    with pytest.raises(CodecError) as info:
        m.parse(frame_of(msg), base=2, heat_layout=STANDARD)
    assert info.value.offset == 2 + 14 + 20
    assert "0Ah is not a BCD digit pair" in info.value.reason


def test_neither_layout_decodes_reports_the_standard_reading():
    frame = frame_of(CASES[0][1])
    data = bytearray(frame.data)
    data[3 + 1] = 0xAB  # P+1: a digit byte of both readings
    with pytest.raises(CodecError) as info:
        m.parse(m.Frame(frame.meter_type, frame.address, frame.control, bytes(data)))
    assert info.value.offset == 14 + 1


def test_unknown_unit_codes_pass_through_in_the_standard_layout():
    msg = heat((0xEE,) * 5, [12] * 5, False)  # unit-first reading: units 12h, but EEh digits
    got = m.parse(frame_of(msg))
    assert got == msg and got.unit_fit == 0
    assert got.power.to_base() is None
