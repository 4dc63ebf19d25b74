"""Link layer: frames <-> bytes, and the resynchronising stream decoder.

Table-driven like h11's tests: each case is checked both ways, replayed one byte at a time,
with garbage in front, a bad checksum, junk behind.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import (
    NEED_DATA,
    Frame,
    FrameDecoder,
    Junk,
    decode_frame,
    encode_frame,
)

from strategies import any_message, check_property

CASES = [
    (
        Frame(0x10, "78330011223344", 0x01, bytes.fromhex("1F9000")),
        "FE FE 68 10 44 33 22 11 00 33 78 01 03 1F 90 00 80 16",
    ),
    (
        Frame(0xAA, "AAAAAAAAAAAAAA", 0x03, bytes.fromhex("810A00")),
        "FE FE 68 AA AA AA AA AA AA AA AA 03 03 81 0A 00 49 16",
    ),
    (Frame(0x10, "00000000000001", 0x81, b""), "FE FE 68 10 01 00 00 00 00 00 00 81 00 FA 16"),
]


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("frame, wire", CASES)
def test_both_ways(frame, wire):
    assert encode_frame(frame) == h(wire)
    assert decode_frame(h(wire)) == (frame, 2)


@pytest.mark.parametrize("frame, wire", CASES)
def test_one_byte_at_a_time(frame, wire):
    dec = FrameDecoder()
    events = []
    for b in h(wire):
        dec.feed(bytes((b,)))
        while (e := dec.next_event()) is not NEED_DATA:
            events.append(e)
    assert events == [frame]
    assert dec.pending == 0


def test_garbage_in_front_and_junk_behind():
    frame, wire = CASES[0]
    dec = FrameDecoder()
    dec.feed(b"\x00\x13\x68\x99" + h(wire) + b"\x42\x43")
    events = []
    while (e := dec.next_event()) is not NEED_DATA:
        events.append(e)
    assert [e for e in events if isinstance(e, Frame)] == [frame]
    assert all(isinstance(e, Junk) for e in events if not isinstance(e, Frame))
    assert b"\x42\x43" in b"".join(e.data for e in events if isinstance(e, Junk))


def test_bad_checksum_is_junk_and_the_next_good_frame_survives():
    bad = bytearray(h(CASES[0][1]))
    bad[-2] ^= 0x01
    dec = FrameDecoder()
    events = [*_drain(dec, bytes(bad) + h(CASES[1][1]))]
    assert isinstance(events[0], Junk)
    assert events[0].reason == "frame of 16 bytes: checksum expected 80h, got 81h"
    assert events[0].data.startswith(bytes(bad[2:]))
    assert events[1:] == [CASES[1][0]]


def test_a_false_start_announcing_a_long_frame_does_not_hold_back_a_real_one():
    # 68 in line noise followed by L=FFh would wait for 268 bytes; the real reply that
    # follows is complete and must come out now, not when 268 bytes have arrived.
    noise = bytes((0x68, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xFF))
    dec = FrameDecoder()
    events = [*_drain(dec, noise + h(CASES[2][1]))]
    assert events[-1] == CASES[2][0]
    assert isinstance(events[0], Junk)


def test_wrong_end_byte():
    bad = bytearray(h(CASES[2][1]))
    bad[-1] = 0x17
    with pytest.raises(CodecError, match="expected end byte 16h, got 17h") as info:
        decode_frame(bytes(bad))
    assert info.value.offset == len(bad) - 1


@pytest.mark.parametrize(
    "wire, offset, reason",
    [
        ("", 0, "no frame"),
        ("FE FE 67", 2, "expected start byte 68h"),
        ("68 10 01", 3, "header alone is 11"),
        ("68 10 01 00 00 00 00 00 00 81 05 90", 12, "L=05h needs 18 bytes"),
        ("FE 68 10 01 00 00 00 00 00 00 81 00 FB 16", 12, "checksum expected FAh, got FBh"),
        ("68 10 01 00 00 00 00 00 00 81 00 FA 16 00", 13, "unexpected byte(s) after the end byte"),
    ],
)
def test_decode_frame_errors_name_the_byte(wire, offset, reason):
    with pytest.raises(CodecError) as info:
        decode_frame(h(wire))
    assert info.value.offset == offset
    assert reason in info.value.reason


def _drain(dec: FrameDecoder, data: bytes):
    dec.feed(data)
    while (e := dec.next_event()) is not NEED_DATA:
        yield e


garbage = st.binary(max_size=40) | st.lists(st.sampled_from([0x68, 0xFE, 0x16, 0x00, 0xFF]), max_size=12).map(bytes)


@st.composite
def streams(draw):
    msgs = draw(st.lists(any_message, min_size=1, max_size=6))
    wires = [m.encode(x, preamble=draw(st.integers(0, 4))) for x in msgs]
    chunks = []
    for w in wires:
        chunks.append(draw(garbage))
        chunks.append(w)
    chunks.append(draw(garbage))
    stream = b"".join(chunks)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    return msgs, stream, cuts


def test_random_splits_and_garbage_yield_every_good_frame():
    def check(case):
        msgs, stream, cuts = case
        dec = FrameDecoder()
        got = []
        prev = 0
        for cut in [*cuts, len(stream)]:
            got += [m.parse(e) for e in _drain(dec, stream[prev:cut]) if isinstance(e, Frame)]
            prev = cut
        # garbage may itself contain a frame that checks out (68 … CS 16); every good
        # frame must be there, in order
        it = iter(got)
        assert all(any(g == x for g in it) for x in msgs), (msgs, got)

    check_property(streams(), check, max_examples=400)
