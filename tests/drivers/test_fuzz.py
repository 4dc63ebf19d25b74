"""100,000 random and mutated inputs never raise anything but the codec's own error."""

from __future__ import annotations

import random


from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.cli import decode_all
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import Frame, FrameDecoder, checksum

from strategies import any_message


_SAMPLE: list[m.Message] = []


def _sample_messages() -> list[m.Message]:
    if not _SAMPLE:
        from hypothesis import given, settings

        @settings(max_examples=300, deadline=None, database=None)
        @given(any_message)
        def collect(msg):
            _SAMPLE.append(msg)

        collect()
    return _SAMPLE


def _fix_checksum(b: bytearray) -> None:
    """Make the link layer accept a mutation so the message layer gets exercised too."""
    i = b.find(0x68)
    if i >= 0 and len(b) >= i + 13 and len(b) >= i + 13 + b[i + 10]:
        n = 13 + b[i + 10]
        b[i + n - 2] = checksum(b[i : i + n - 2])
        b[i + n - 1] = 0x16


def mutate(rnd: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        if op == 0 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 2 and b:
            del b[rnd.randrange(len(b))]
        elif op == 3:
            b.insert(rnd.randrange(len(b) + 1), rnd.randrange(256))
        elif op == 4 and b:
            del b[rnd.randrange(len(b)) :]
        elif op == 5 and 0 <= b.find(0x68) < len(b) - 11:
            b[b.find(0x68) + 10] = rnd.randrange(256)  # a wrong L
    if rnd.random() < 0.7:
        _fix_checksum(b)
    return bytes(b)


def _exercise(data: bytes) -> None:
    try:
        decode_all(data)
    except CodecError:
        pass
    dec = FrameDecoder()
    for frame in dec.frames(data):
        try:
            m.parse(frame)
        except CodecError:
            pass


def test_random_and_mutated_inputs_only_raise_codec_error():
    rnd = random.Random(188)
    seeds = [m.encode(x, preamble=rnd.randint(0, 4)) for x in _sample_messages()]
    n_random = n_mutated = 0
    for k in range(100_000):
        if k % 4 == 0:
            data = rnd.randbytes(rnd.randint(0, 300))
            if rnd.random() < 0.5 and len(data) > 13:
                data = b"\x68" + data[1:]
                b = bytearray(data)
                b[10] = min(b[10], len(b) - 13)
                _fix_checksum(b)
                data = bytes(b)
            n_random += 1
        else:
            data = mutate(rnd, rnd.choice(seeds))
            n_mutated += 1
        _exercise(data)
    assert n_random + n_mutated == 100_000


def test_mutations_reach_the_message_layer():
    """The fuzz is worth something only if mutated frames get past the checksum."""
    rnd = random.Random(7)
    seeds = [m.encode(x) for x in _sample_messages()]
    parsed = rejected = 0
    for _ in range(3000):
        for frame in FrameDecoder().frames(mutate(rnd, rnd.choice(seeds))):
            try:
                m.parse(frame)
                parsed += 1
            except CodecError:
                rejected += 1
    assert parsed > 100 and rejected > 300


def test_every_frame_shape_with_unknown_fields_only_raises_codec_error():
    for control in range(256):
        for data in (b"", b"\x90\x1f\x00", b"\x1f\x90\x00" + bytes(19), b"\xc0\x1f\x00\x01\x01"):
            try:
                m.parse(Frame(0x10, "00000000000001", control, data))
            except CodecError:
                pass
