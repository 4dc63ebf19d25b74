"""docs/protocol.md is checked against the codec.

Every worked example in the protocol reference is a fenced ``frame`` block (one frame's hex
bytes, FE wake-up bytes included) immediately followed by a ``json`` block: a subset of what
:func:`describe` returns for that frame.  Each one must decode to those values and re-encode
to exactly the same bytes.  ``frame-bad`` blocks are followed by a ``text`` block holding a
substring of the :class:`CodecError` the codec must raise for them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from st2000r.drivers.st2000r import frame, messages
from st2000r.drivers.st2000r.describe import describe
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.units import Quantity

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"
FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
HEX_BYTE = re.compile(r"[0-9A-Fa-f]{2}")


@dataclass(frozen=True)
class Example:
    line: int
    data: bytes
    expected: object  # dict for a good frame, error substring for a bad one

    def __str__(self) -> str:
        return f"protocol.md:{self.line}"


def _hex(text: str, line: int) -> bytes:
    tokens = text.split()
    bad = [t for t in tokens if not HEX_BYTE.fullmatch(t)]
    assert not bad, f"protocol.md:{line}: not hex bytes: {bad}"
    return bytes(int(t, 16) for t in tokens)


def _examples() -> tuple[list[Example], list[Example]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1, m.start(), m.end())
        for m in FENCE.finditer(text)
    ]
    good: list[Example] = []
    bad: list[Example] = []
    for k, (info, body, line, _, end) in enumerate(blocks):
        if info not in ("frame", "frame-bad"):
            continue
        want = "json" if info == "frame" else "text"
        assert k + 1 < len(blocks), f"protocol.md:{line}: {info} block without a {want} block"
        nxt_info, nxt_body, nxt_line, nxt_start, _ = blocks[k + 1]
        assert nxt_info == want, f"protocol.md:{line}: {info} block followed by {nxt_info!r}"
        assert not text[end:nxt_start].strip(), (
            f"protocol.md:{line}: text between the {info} block and its {want} block"
        )
        data = _hex(body, line)
        if info == "frame":
            good.append(Example(line, data, json.loads(nxt_body)))
        else:
            substring = nxt_body.strip()
            assert substring, f"protocol.md:{nxt_line}: empty expected error"
            bad.append(Example(line, data, substring))
    return good, bad


GOOD, BAD = _examples()


def _subset(expected, actual, path: str = "") -> None:
    """``expected`` is contained in ``actual``: dicts by subset, lists element-wise."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path or 'top'}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key}: missing (have {sorted(actual)})"
            _subset(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected a list, got {actual!r}"
        assert len(expected) == len(actual), f"{path}: {len(expected)} elements != {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            _subset(e, a, f"{path}[{i}]")
    else:
        assert expected == actual, f"{path}: doc says {expected!r}, codec gives {actual!r}"


def _decode(data: bytes) -> tuple[messages.Message, int]:
    fr, start = frame.decode_frame(data)
    return messages.parse(fr), start


@pytest.mark.parametrize("example", GOOD, ids=str)
def test_worked_example_decodes_as_documented(example: Example) -> None:
    msg, preamble = _decode(example.data)
    assert example.data[:preamble] == b"\xfe" * preamble
    _subset(example.expected, describe(msg))


@pytest.mark.parametrize("example", GOOD, ids=str)
def test_worked_example_reencodes_to_the_same_bytes(example: Example) -> None:
    msg, preamble = _decode(example.data)
    assert messages.encode(msg, preamble=preamble).hex(" ") == example.data.hex(" ")


@pytest.mark.parametrize("example", BAD, ids=str)
def test_bad_example_is_rejected(example: Example) -> None:
    with pytest.raises(CodecError) as info:
        _decode(example.data)
    assert example.expected in str(info.value)


def test_every_message_type_has_an_example() -> None:
    assert len(GOOD) >= 20
    seen = {type(_decode(ex.data)[0]) for ex in GOOD}
    wanted = set(messages._TYPES) | {messages.HeatData, messages.ErrorReply}
    missing = sorted(t.__name__ for t in wanted - seen)
    assert not missing, f"no worked example for {missing}"


def test_examples_cover_the_variants() -> None:
    msgs = [_decode(ex.data)[0] for ex in GOOD]
    assert any(msg.di_order is messages.DiOrder.LOW_FIRST for msg in msgs), "DI order 1F 90"
    assert any(isinstance(msg, messages.HeatData) and msg.unit_first for msg in msgs)
    assert any(isinstance(msg, messages.ValveControl) and msg.alt for msg in msgs)
    assert any(isinstance(msg, messages.ErrorReply) and msg.di is not None for msg in msgs)
    assert any(isinstance(msg, messages.ErrorReply) and msg.di is None for msg in msgs)
    vendor_crc = [ex for ex in BAD if "CRC-16" in ex.expected]
    assert vendor_crc, "a vendor reply the CRC-16 rejects"
    for ex in vendor_crc:  # the additive checksum alone must let it through
        fr, _ = frame.decode_frame(ex.data)
        assert messages._BY_KEY.get((fr.control, fr.data[0] << 8 | fr.data[1])).VENDOR


def test_bytes_per_meter_arithmetic() -> None:
    """The "Bytes per meter" section's totals are those of real encoded frames."""
    text = DOC.read_text(encoding="utf-8")
    cdt, meter = "00000000000017", "20240312000451"
    bulk_q = len(messages.encode(messages.BulkRead(address=cdt, first_channel=1, count=48)))
    quiet = tuple(messages.ChannelReading(100_000 + i) for i in range(48))
    bulk_r = len(messages.encode(messages.BulkReadReply(address=cdt, channels=quiet)))
    loud = tuple(messages.ChannelReading(100_000 + i, 0x01) for i in range(48))
    bulk_w = len(messages.encode(messages.BulkReadReply(address=cdt, channels=loud)))
    read_q = len(messages.encode(messages.ReadData(meter_type=0x10, address=meter)))
    one = Quantity(1, 0x2C)
    reply = messages.CurrentData(meter_type=0x10, address=meter, total=one, settlement=one)
    read_r = len(messages.encode(reply))
    for line in (
        f"2 × ({bulk_q} + {bulk_r}) = {2 * (bulk_q + bulk_r)} bytes",
        f"2 × ({bulk_q} + {bulk_w}) = {2 * (bulk_q + bulk_w)} bytes",
        f"96 × ({read_q} + {read_r}) = {96 * (read_q + read_r)} bytes",
    ):
        assert line in text, f"protocol.md should say {line!r}"
