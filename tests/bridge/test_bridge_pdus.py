"""The request core's bytes: pymodbus decodes every request and builds every answer; the one
answer encoded by the bridge's own ``struct`` call (a read of input registers) is held to
pymodbus's own encoder, and the bridge's answers to a set of valid and invalid requests are
held to a stock pymodbus server's where the map's rules agree with pymodbus's.

The image is made on a ``Clock`` without readings, so every register is constant (meters
never read: value 0, quality bit 8, age 4294967295) and the answers compare byte for byte.
"""

from __future__ import annotations

import asyncio
import random
import struct

import pytest_twisted
from pymodbus.pdu.register_message import ReadInputRegistersResponse
from twisted.internet.task import Clock

from st2000r.bridge.aio import deferred
from st2000r.bridge.image import RegisterImage
from st2000r.bridge.regmap import build_map
from st2000r.bridge.server import BridgeStats, ModbusServer, Responder, WritePolicy, _InputRegistersAnswer
from st2000r.config import example_path
from st2000r.config.loader import loads

UNIT = 1
WAIT = 5.0


def make_image() -> RegisterImage:
    topology = loads(example_path("small.toml").read_text(encoding="utf-8") + "\n[modbus]\n")
    regmap, _ = build_map(topology, None)
    image = RegisterImage(regmap, Clock())
    for unit, coils in image.coils.items():  # a pattern in the coils, so that coil reads carry bits
        for i in range(len(coils)):
            coils[i] = (i * 40503 + unit) & 0xFFFF
    return image


def requests(image: RegisterImage) -> list[bytes]:
    """Request PDUs of unit 1: valid reads at the edges of every input range and of the coil
    span, and invalid ones (addresses off the map, counts out of range, wrong lengths,
    functions not served)."""
    pdus = []
    for start, count in image.input_ranges(UNIT):
        for address, n in ((start, 1), (start, min(count, 125)), (start + count - 1, 1),
                           (start + max(count - 125, 0), min(count, 125)), (start + count - 1, 2), (start, 0),
                           (start, 126), (max(start - 1, 0), 2)):
            pdus.append(struct.pack(">BHH", 4, address, n))
    first, count = image.coil_range(UNIT)
    for address, n in ((first, 1), (first, 8), (first + 3, 17), (first, count), (first + count - 1, 1),
                       (first + count - 1, 2), (first, 0), (first, 2001), (max(first - 1, 0), 2)):
        pdus.append(struct.pack(">BHH", 1, address, n))
    pdus += [struct.pack(">BHH", 3, 0, 1), struct.pack(">BHH", 3, 0, 126), struct.pack(">BHH", 2, 0, 1),
             struct.pack(">BHH", 4, 65535, 2), struct.pack(">BHH", 4, 900, 2), struct.pack(">BHH", 4, 0, 0xFFFF),
             bytes((4, 0, 0, 0)), bytes((4, 0, 0, 0, 1, 0)), bytes((4,)), bytes((8, 0, 0, 0x12, 0x34)),
             bytes((6, 0, 0, 0, 1)), bytes((16, 0, 0, 0, 1, 2, 0, 1)), bytes((0x84, 0, 0, 0, 1)), bytes((0,))]
    return pdus


def test_the_encoded_answer_gives_pymodbus_bytes_for_every_count():
    rnd = random.Random(3)
    for n in range(1, 126):
        registers = [rnd.choice((0, 1, 0x7FFF, 0x8000, 0xFFFF, rnd.randrange(65536))) for _ in range(n)]
        assert _InputRegistersAnswer(struct.pack(f">{n}H", *registers)).encode() == \
            ReadInputRegistersResponse(registers=registers).encode()


def test_the_tcp_fast_path_gives_the_general_paths_bytes():
    """``read_frame`` (a read of input registers answered from the image's bytes, no pymodbus
    objects) equals pymodbus's MBAP encoder around ``respond`` for every valid read, and
    declines (None) every read the general path answers with an exception."""
    from pymodbus.framer import FramerSocket
    from pymodbus.pdu import DecodePDU

    image = make_image()
    responder = Responder(image, WritePolicy((), None, BridgeStats()))
    framer = FramerSocket(DecodePDU(is_server=True))
    rnd = random.Random(5)
    cases = [(UNIT, s + o, n) for s, c in image.input_ranges(UNIT)
             for o, n in ((0, 1), (0, min(c, 125)), (max(c - 125, 0), min(c, 125)), (c - 1, 1), (c - 1, 2), (0, 0))]
    cases += [(rnd.choice((UNIT, 2, 0, 200)), rnd.randrange(65536), rnd.randrange(130)) for _ in range(3000)]
    cases += [(UNIT, 65535, 1), (UNIT, 65535, 2), (UNIT, 0, 126)]
    for s, c in image.input_ranges(UNIT):  # anywhere inside a range
        cases += [(UNIT, s + o, rnd.randint(1, min(125, c - o))) for o in (rnd.randrange(c) for _ in range(100))]
    fast = 0
    for tid, (unit, address, count) in enumerate(cases):
        frame = responder.read_frame(tid, unit, address, count)
        general = framer.encode(responder.respond(unit, struct.pack(">BHH", 4, address, count), None), unit, tid)
        if frame is None:
            assert general[7] == 0x84, (unit, address, count, general.hex())
        else:
            fast += 1
            assert frame == general, (unit, address, count)
    assert fast > 150


def test_both_encoders_answer_every_request_with_the_same_bytes():
    image = make_image()
    fast = Responder(image, WritePolicy((), None, BridgeStats()), fast_reads=True)
    plain = Responder(image, WritePolicy((), None, BridgeStats()), fast_reads=False)
    pdus = requests(image)
    rnd = random.Random(11)
    for _ in range(2000):  # and reads anywhere, most of them refused
        pdus.append(struct.pack(">BHH", 4, rnd.randrange(65536), rnd.randrange(128)))
    answered = 0
    for unit in (UNIT, 2, 0, 200):
        for pdu in pdus:
            answer = fast.respond(unit, pdu, "127.0.0.1")
            assert answer == plain.respond(unit, pdu, "127.0.0.1"), (unit, pdu.hex())
            answered += answer[0] == 4
    assert answered > 20  # the reads of registers were answered, not only refused


# Where the map's rules and a stock pymodbus server part (checked with this test's requests):
# a count out of range or a PDU too short to decode, stock: function 0, exception 01 (the
# bridge: the request's function, 03); trailing bytes after a read, stock: answered (03);
# diagnostics 08, stock: echoed (01); functions 06 and 16, stock: 02 (01); a request with an
# exception's function code (0x84), stock: 04 (01).  Those requests are left out here.
def _stock_differs(pdu: bytes) -> bool:
    fc = pdu[0]
    if fc not in (1, 2, 3, 4) or len(pdu) != 5:
        return True
    count = struct.unpack(">H", pdu[3:5])[0]
    return not 1 <= count <= (125 if fc in (3, 4) else 2000)


@pytest_twisted.ensureDeferred
async def test_answers_equal_a_stock_pymodbus_server_on_the_same_registers():
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    image = make_image()
    inputs = [SimData(address=s, values=image.registers(UNIT, s, c), datatype=DataType.REGISTERS)
              for s, c in image.input_ranges(UNIT)]
    first, count = image.coil_range(UNIT)
    bits = [bool(image.coils[UNIT][a // 16] >> (a % 16) & 1) for a in range(first, first + count)]
    # no discrete inputs in the map; the simulator wants some: far from any request's addresses
    device = SimDevice(id=UNIT, simdata=([SimData(address=first, values=bits, datatype=DataType.BITS)],
                                         [SimData(address=60000, values=[False] * 16, datatype=DataType.BITS)],
                                         [SimData(address=0, count=1, datatype=DataType.INVALID)], inputs))
    pdus = [p for p in requests(image) if not _stock_differs(p)]
    bridge = ModbusServer(Responder(image, WritePolicy((), None, BridgeStats()), (UNIT,)), 5)

    async def answers(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = []
        try:
            for tid, pdu in enumerate(pdus):
                writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, UNIT) + pdu)
                head = await asyncio.wait_for(reader.readexactly(7), WAIT)
                out.append(head + await asyncio.wait_for(reader.readexactly(struct.unpack(">H", head[4:6])[0] - 1),
                                                         WAIT))
        finally:
            writer.close()
        return out

    async def scenario() -> None:
        stock = ModbusTcpServer([device], address=("127.0.0.1", 0))
        await stock.serve_forever(background=True)
        try:
            ours = await answers(await bridge.listen("127.0.0.1", 0))
            theirs = await answers(stock.transport.sockets[0].getsockname()[1])
        finally:
            await stock.shutdown()
            await bridge.shutdown()
        for pdu, a, b in zip(pdus, ours, theirs):
            assert a == b, (pdu.hex(), a.hex(), b.hex())
        kinds = [a[7] for a in ours]
        # reads of registers and of coils answered, and exceptions 02 (addresses off the map) compared too
        assert kinds.count(4) >= 8 and kinds.count(1) >= 4 and kinds.count(0x84) >= 4, kinds
        assert any(a[7] & 0x80 for a in ours)  # and exceptions compared too

    await deferred(scenario())
