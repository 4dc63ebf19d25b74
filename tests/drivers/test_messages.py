"""Typed messages: encode -> decode round trips for every command, and the vendor CRC."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import strategies as st

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import FrameDecoder, checksum, decode_frame
from st2000r.drivers.st2000r.units import Quantity

from strategies import MESSAGES, check_property


def roundtrip(msg: m.Message, preamble: int = 2) -> m.Message:
    raw = m.encode(msg, preamble=preamble)
    frame, offset = decode_frame(raw)
    assert offset == preamble
    return m.parse(frame)


def test_every_message_class_has_a_strategy():
    classes = {c for c in vars(m).values() if isinstance(c, type) and issubclass(c, m.Message)}
    concrete = {c for c in classes - {m.Message, m.VendorMessage} if not c.__name__.startswith("_")}
    assert concrete == set(MESSAGES)


def _heat(units, value=1_000_000, unit_first=True) -> m.HeatData:
    """A heat reply whose five quantities all hold ``value``, in ``units``."""
    qs = [Quantity(value, u, d) for u, d in zip(units, m.HeatData.DECIMALS)]
    return m.HeatData(
        meter_type=0x20, address="00000000000000", settlement_heat=qs[0], current_heat=qs[1],
        power=qs[2], flow=qs[3], cumulative_flow=qs[4], supply_temp=Decimal("0.00"),
        return_temp=Decimal("0.00"), working_hours=0, unit_first=unit_first,
    )  # fmt: skip


# Found by chance: each value's top byte (01) is also a unit code, so the standard layout's
# unit bytes all looked valid; the standard reading then met 0Ah (a unit) among BCD digits.
HEAT_EXAMPLES = (_heat((0x01, 0x01, 0x01, 0x01, 0x0A)),)


def _check_heat(msg: m.HeatData) -> None:
    """The layout the meter is known to use always gives the message back; AUTO gives it
    back unless the bytes read validly the other way too and that reading fits as well or
    better (docs/protocol.md: the better unit fit wins, the standard layout on a tie)."""
    frame, _ = decode_frame(m.encode(msg))
    assert m.parse(frame, heat_layout=msg.layout) == msg
    back = m.parse(frame)
    if back == msg:
        return
    other = m.HeatLayout.STANDARD if msg.unit_first else m.HeatLayout.UNIT_FIRST
    assert back == m.parse(frame, heat_layout=other)
    assert m.encode(back) == m.encode(msg)
    assert back.unit_fit > msg.unit_fit or (back.unit_fit == msg.unit_fit and not back.unit_first)


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
def test_roundtrip(cls):
    def check(msg):
        back = roundtrip(msg)
        assert back == msg
        assert type(back) is cls

    if cls is m.HeatData:
        check_property(MESSAGES[cls], _check_heat, examples=HEAT_EXAMPLES)
    else:
        check_property(MESSAGES[cls], check)


def test_heat_example_reads_unit_first():
    msg = HEAT_EXAMPLES[0]
    assert roundtrip(msg) == msg
    frame, _ = decode_frame(m.encode(msg))
    with pytest.raises(CodecError, match="byte 34: 0Ah is not a BCD digit pair"):
        m.parse(frame, heat_layout=m.HeatLayout.STANDARD)


def test_reply_echoes_di_order_and_ser():
    req = m.ReadData(meter_type=0x10, address="00000000000042", ser=7, di_order=m.DiOrder.LOW_FIRST)
    raw = m.encode(req)
    assert raw[13:16] == bytes((0x1F, 0x90, 7))
    assert roundtrip(req).di_order is m.DiOrder.LOW_FIRST


def test_current_data_bytes_match_the_standard_layout():
    msg = m.CurrentData(
        meter_type=0x10, address="00000000000001",
        total=Quantity(12345678, 0x2C), settlement=Quantity(1, 0x2C),
        status=m.MeterStatus.of(m.Valve.CLOSED, battery_low=True),
    )  # fmt: skip
    data = m.to_frame(msg).data
    assert data[:3] == bytes.fromhex("901F00")
    assert data[3:8] == bytes.fromhex("78563412 2C")
    assert data[8:13] == bytes.fromhex("01000000 2C")
    assert data[13:20] == bytes(7)
    assert data[20:22] == bytes((0x05, 0x00))
    assert msg.total.to_base() == (123456780, "L")


def test_bulk_reply_costs_four_bytes_per_quiet_channel():
    quiet = m.BulkReadReply(address="00000000000001", channels=(m.ChannelReading(5),) * 48)
    noisy = m.BulkReadReply(address="00000000000001", channels=(m.ChannelReading(5, 1),) * 48)
    assert len(m.to_frame(quiet).data) == 3 + 2 + 48 * 4 + 6 + 2
    assert len(m.to_frame(noisy).data) == 3 + 2 + 48 * 5 + 6 + 2 <= 255


def test_bulk_read_is_limited_to_what_fits_a_frame():
    with pytest.raises(CodecError, match="outside 1..48"):
        m.encode(m.BulkRead(address="00000000000001", first_channel=1, count=49))
    with pytest.raises(CodecError, match="past channel 96"):
        m.encode(m.BulkRead(address="00000000000001", first_channel=90, count=10))


def _compensating_error(raw: bytes, i: int, j: int) -> bytes:
    """Bytes i and j changed by +1 and -1: CJ/T 188's additive checksum cannot see it."""
    b = bytearray(raw)
    b[i] = (b[i] + 1) & 0xFF
    b[j] = (b[j] - 1) & 0xFF
    return bytes(b)


def test_crc_rejects_bulk_replies_that_the_checksum_accepts():
    def check(args):
        msg, a, b = args
        raw = m.encode(msg, preamble=0)
        span = len(raw) - 13  # the DATA field: bytes 11 .. len-3
        i = 11 + a % span
        j = 11 + (i - 11 + 1 + b % (span - 1)) % span
        bad = _compensating_error(raw, i, j)
        frame, _ = decode_frame(bad)  # the link layer is fooled ...
        with pytest.raises(CodecError):  # ... the vendor layer is not (CRC, or a field it breaks)
            m.parse(frame)

    check_property(st.tuples(MESSAGES[m.BulkReadReply], st.integers(0, 999), st.integers(0, 999)), check, 300)


def test_swapped_bytes_pass_the_checksum_but_not_the_crc():
    msg = m.BulkReadReply(
        address="00000000000003", channels=(m.ChannelReading(0x01020304), m.ChannelReading(7))
    )
    raw = bytearray(m.encode(msg, preamble=0))
    raw[16], raw[17] = raw[17], raw[16]  # two bytes of the first count swap places
    assert checksum(raw[:-2]) == raw[-2]
    with pytest.raises(CodecError, match="CRC-16"):
        m.parse(decode_frame(bytes(raw))[0])


def test_stream_decoder_then_parse_on_a_stream_of_mixed_messages():
    msgs = [
        m.ReadData(meter_type=0x10, address="12345678901234"),
        m.BulkReadReply(address="00000000000009", channels=(m.ChannelReading(1, 1),)),
        m.CdtStatus(address="00000000000009", modules=frozenset({1, 32}), battery_mv=12600),
    ]
    dec = FrameDecoder()
    got = [m.parse(f) for f in dec.frames(b"".join(m.encode(x) for x in msgs))]
    assert got == msgs


@pytest.mark.parametrize(
    "hexdata, reason",
    [
        ("68 10 01 00 00 00 00 00 00 01 02 90 1F", "too short"),
        ("68 10 01 00 00 00 00 00 00 01 03 12 34 00", "no command with control 01h and DI 12 34"),
        ("68 10 01 00 00 00 00 00 00 04 04 A0 17 00 42", "valve action must be 55h"),
        ("68 10 01 00 00 00 00 00 00 81 05 90 1F 00 00 00", "901F current data needs 19"),
    ],
)
def test_parse_errors_name_the_byte_and_reason(hexdata, reason):
    data = bytes.fromhex(hexdata.replace(" ", ""))
    raw = data + bytes((checksum(data), 0x16))
    frame, _ = decode_frame(raw)
    with pytest.raises(CodecError, match=reason) as info:
        m.parse(frame)
    assert info.value.offset is not None and 0 <= info.value.offset < len(raw)


def test_non_bcd_total_is_reported_at_its_byte():
    msg = m.CurrentData(
        meter_type=0x10, address="00000000000001",
        total=Quantity(1, 0x2C), settlement=Quantity(1, 0x2C),
    )  # fmt: skip
    frame = m.to_frame(msg)
    bad = bytearray(frame.data)
    bad[5] = 0xA1  # second byte of the total
    with pytest.raises(CodecError) as info:
        m.parse(m.Frame(frame.meter_type, frame.address, frame.control, bytes(bad)), base=4)
    assert info.value.offset == 4 + 11 + 5
    assert "A1h is not a BCD digit pair" in str(info.value)


def test_error_reply_layouts():
    short = m.ErrorReply(meter_type=0x10, address="00000000000001", function=1, status=0x0001)
    assert m.to_frame(short).control == 0xC1 and len(m.to_frame(short).data) == 3
    with_di = m.ErrorReply(meter_type=0x50, address="00000000000001", function=1, status=4, di=0xC01F)
    assert len(m.to_frame(with_di).data) == 5
    assert roundtrip(with_di) == with_di


def test_quantity_base_units_are_exact():
    assert Quantity(123, 0x2C).to_base() == (1230, "L")
    assert Quantity(123, 0x05).to_base() == (1230, "Wh")
    assert str(Quantity(123, 0x29).to_base()[0]) == "1.23"
    assert Quantity(1, 0xEE).to_base() is None
    assert struct.calcsize("<I") == 4
