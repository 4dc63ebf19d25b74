"""The Modbus server of the bridge: the request core, the write policy and the TCP (and
Modbus/TCP Security) transport, on asyncio in the supervisor's loop.

pymodbus does the Modbus parts; the bridge owns the transport and the answers' contents.
pymodbus's ``FramerSocket`` decodes each MBAP frame and encodes each answer's MBAP header;
the request class of each function, taken from pymodbus's server-side function table
(``DecodePDU(is_server=True)``), decodes the request PDU (and checks the count against the
function's limit); pymodbus's response classes (``ReadInputRegistersResponse``,
``ReadCoilsResponse``, ``WriteSingleCoilResponse``, ``WriteMultipleCoilsResponse``,
``ExceptionResponse``) build every answer.  The bridge supplies what pymodbus leaves to a
server: the connection rules below, the length of a PDU (pymodbus's decoders ignore trailing
bytes), the register image lookups and the write policy.

Three departures, all measured (bench/bench_bridge.py, docs/performance.md).  (1) Not
pymodbus's server: with its task per request and its datastore hook it answered
125-register reads at 0.7-0.9 × a stock pymodbus server; the lean asyncio protocol below
answers in the transport's ``data_received``, one call per request, no task, one
``write`` per batch of requests received together (asyncio sets TCP_NODELAY on every TCP
transport).  (2) The hot request, a whole MBAP frame reading input registers (function 04,
PDU length 5), is answered by :meth:`Responder.read_frame` without any object: one
``struct`` unpack of the frame, the validity check on a byte map, and the answer is a
packed header plus a slice of the image's pre-encoded registers (~2 µs of Python per
request, where pymodbus's framer, request class, response class and register-by-register
encoder take ~27 µs); with them the bridge was 1.1-2.0 × stock at 100 clients.
tests/bridge/test_bridge_pdus.py holds ``read_frame`` to pymodbus's bytes for every valid
read and the bridge's answers to a stock pymodbus server's.  Every other frame, and every
read that is not valid (its exception), takes the general path below.  (3) On that path
the answer to a read of input registers is :class:`_InputRegistersAnswer`, pymodbus's class
with the image's bytes instead of its encoder.  ``FAST_READS = False`` restores pymodbus's
classes and encoder for register reads on every path.  pymodbus's ``DecodePDU.decode``
itself is not called because it logs a warning through the standard library's logging for
every PDU it cannot decode (a flooding client would flood the supervisor's stderr); the
bridge calls the same request classes' ``decode`` and answers 03 instead.

Requests (``Responder.respond``, a PDU in, a PDU out; rules as the Modbus application
protocol specification v1.1b3):

- functions other than 1-5 and 15 answer exception 01 (diagnostics, register writes, file
  records …: nothing else can change the server's state); a unit id not on the map 0Ah;
- a count out of the function's range or a PDU of the wrong length 03; an address range
  not wholly inside the header or a configured CDT's block (input registers), the unit's
  coil span (coils), or any discrete input or holding register 02;
- coil writes (5, 15) go to :class:`WritePolicy`: from a client outside ``write_allow``
  exception 01 and nothing happens; an address that is not a meter's valve coil 02; else one
  ``ValveRequest(meter, open, who="modbus:<addr>", source="modbus", peer=<addr>)`` per coil
  on the command dispatcher; a request refused at once (role, interlock, busy, link down)
  answers 04 and its reason is in the audit log and the command-status register (6).  An
  accepted write answers normally; the coil keeps showing the *confirmed* valve state.

Connections (:class:`ModbusServer`): at most ``max_clients`` at once, the excess closed at
once without an answer (counted, logged sparingly); a frame whose MBAP header is not Modbus
(protocol id not 0, length outside 2..254) closes that connection (the stream cannot be
resynchronised); a client that does not read its answers stops being read until it does
(the transport's write buffer bounds what it can pile up), so a stalled or flooding client
costs the others nothing but its share of turns.  With ``ssl`` the listener speaks
Modbus/TCP Security (TLS, client certificates required: see :func:`tls_context`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, WriteMultipleCoilsResponse, WriteSingleCoilResponse
from pymodbus.pdu.register_message import ReadInputRegistersResponse
from twisted.logger import Logger

from st2000r.bridge.image import RegisterImage
from st2000r.supervisor.commands_model import ValveRequest
from st2000r.supervisor.events import CommandState

__all__ = ["BridgeStats", "WritePolicy", "Responder", "ModbusServer", "tls_context", "SERVED_FUNCTIONS", "FAST_READS"]

log = Logger()

ILLEGAL_FUNCTION = ExcCodes.ILLEGAL_FUNCTION
ILLEGAL_ADDRESS = ExcCodes.ILLEGAL_ADDRESS
ILLEGAL_VALUE = ExcCodes.ILLEGAL_VALUE
DEVICE_FAILURE = ExcCodes.DEVICE_FAILURE
GATEWAY_PATH_UNAVAILABLE = ExcCodes.GATEWAY_PATH_UNAVIABLE  # sic, pymodbus's spelling

#: the functions served (read coils, discrete inputs, holding, input registers; write coils)
SERVED_FUNCTIONS = frozenset({1, 2, 3, 4, 5, 15})
MAX_READ_REGISTERS = 125
MAX_WRITE_COILS = 1968
#: encode the answers to reads of input registers with one struct call (see the module docstring);
#: False: with pymodbus's own encoder
FAST_READS = True

_DECODER = DecodePDU(is_server=True)
#: pymodbus's server-side request class of each served function (pymodbus's own function table)
_REQUESTS: dict[int, type[ModbusPDU]] = {fc: _DECODER.pdu_table[fc][_DECODER.pdu_inx] for fc in SERVED_FUNCTIONS}
#: PDU lengths of the fixed-layout requests (function code included)
_FIXED_LENGTH = {1: 5, 2: 5, 3: 5, 4: 5, 5: 5}
_COIL_ON, _COIL_OFF = b"\xff\x00", b"\x00\x00"
#: a whole Modbus TCP read request of input registers: MBAP (tid, protocol, length 6, unit), 04, address, count
_READ_REQUEST = struct.Struct(">H4xBxHH")
#: the MBAP header and the first two PDU bytes of its answer: tid, protocol 0, length, unit, 04, byte count
_READ_ANSWER = struct.Struct(">HHHBBB")


class _InputRegistersAnswer(ReadInputRegistersResponse):
    """pymodbus's answer to a read of input registers with the registers already encoded:
    ``data`` is the image's big-endian slice (:meth:`RegisterImage.read`), where pymodbus's
    ``encode`` packs a list register by register (~15 µs for 125 registers, more than the
    rest of a request's handling).  tests/bridge/test_bridge_pdus.py holds it to pymodbus's
    bytes.  ``registers`` stays empty."""

    def __init__(self, data: bytes, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id)
        self.data = data

    def encode(self) -> bytes:
        return bytes((len(self.data),)) + self.data


@dataclass(slots=True)
class BridgeStats:
    """Counters of the Modbus server."""

    clients: int = 0
    clients_refused: int = 0
    requests: int = 0
    exceptions: int = 0
    bad_frames: int = 0
    writes_accepted: int = 0
    writes_refused: int = 0
    writes_not_allowed: int = 0
    unknown_units: int = 0


class WritePolicy:
    """Who may write, and what a coil write becomes (rules in the module docstring).

    ``networks``: normalised networks of ``write_allow``; ``dispatcher``: the command
    dispatcher (``submit``, ``get``), or None (nothing may write)."""

    def __init__(self, networks: tuple[str, ...], dispatcher: Any, stats: BridgeStats) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self.dispatcher = dispatcher
        self.stats = stats

    def allowed(self, peer: str | None) -> bool:
        if peer is None or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.networks)

    def write(self, image: RegisterImage, unit: int, address: int, values: list[bool], peer: str | None) -> int | None:
        """Turn a coil write into valve commands; the exception code to answer, or None."""
        if not self.allowed(peer) or self.dispatcher is None:
            self.stats.writes_not_allowed += 1
            log.info("Modbus write from {peer} refused: not in write_allow", peer=peer or "a serial master")
            return ILLEGAL_FUNCTION
        meters = image.coil_meters.get(unit, {})
        targets = [meters.get(address + i) for i in range(len(values))]
        if any(t is None for t in targets):
            return ILLEGAL_ADDRESS
        refused = False
        for mid, value in zip(targets, values):
            handle = self.dispatcher.submit(ValveRequest(mid, bool(value), who=f"modbus:{peer}", source="modbus",
                                                         reason="Modbus coil write", peer=peer))
            if self.dispatcher.get(handle.id).state is CommandState.REFUSED:
                refused = True
        if refused:
            self.stats.writes_refused += 1
            return DEVICE_FAILURE
        self.stats.writes_accepted += 1
        return None


class Responder:
    """Answers request PDUs from ``image`` (its registers pre-encoded, a ``bytearray`` per
    unit).  ``units``: the unit ids answered (default: every unit of the map).
    ``fast_reads``: answer a valid read of input registers with the image's bytes
    (:meth:`read_frame` on TCP, :class:`_InputRegistersAnswer` otherwise; default
    :data:`FAST_READS`), else with pymodbus's own response class and encoder."""

    def __init__(self, image: RegisterImage, policy: WritePolicy, units: Any = None,
                 fast_reads: bool | None = None) -> None:
        self.image = image
        self.policy = policy
        self.stats = policy.stats
        self.fast_reads = FAST_READS if fast_reads is None else fast_reads
        self.valid: dict[int, bytearray] = {}
        self.coil_span: dict[int, tuple[int, int]] = {}
        for unit in image.map.units if units is None else units:
            valid = bytearray(65536)
            for start, count in image.input_ranges(unit):
                valid[start:start + count] = b"\x01" * count
            self.valid[unit] = valid
            span = image.coil_range(unit)
            self.coil_span[unit] = (span[0], span[0] + span[1]) if span else (0, 0)

    def respond(self, unit: int, pdu: bytes, peer: str | None) -> bytes:
        """The answer PDU to ``pdu`` for ``unit`` from a client at ``peer`` (None: serial)."""
        self.stats.requests += 1
        answer = self.answer(unit, pdu, peer)
        return bytes((answer.function_code,)) + answer.encode()

    def read_frame(self, tid: int, unit: int, address: int, count: int) -> bytes | None:
        """The whole Modbus TCP answer (MBAP header included) to a well-formed read of
        ``count`` input registers at ``address`` of ``unit`` with transaction id ``tid``,
        straight from the image's encoded registers; None when the read is not valid (or
        ``fast_reads`` is off): the caller then takes the general path, which answers the
        exception.  The same bytes as ``respond`` and pymodbus's MBAP encoder (tested)."""
        valid = self.valid.get(unit)
        end = address + count
        if (valid is None or not 0 < count <= MAX_READ_REGISTERS or end > 65536 or not self.fast_reads
                or valid.find(0, address, end) != -1):
            return None
        self.stats.requests += 1
        return _READ_ANSWER.pack(tid, 0, 3 + 2 * count, unit, 4, 2 * count) + self.image.read(unit, address, count)

    def answer(self, unit: int, pdu: bytes, peer: str | None) -> ModbusPDU:
        """The answer to ``pdu`` as a pymodbus response PDU, the request decoded by pymodbus's
        request class for its function (rules in the module docstring)."""
        fc = pdu[0]
        request_class = _REQUESTS.get(fc)
        if request_class is None:
            return self._exception(fc & 0x7F, ILLEGAL_FUNCTION)
        valid = self.valid.get(unit)
        if valid is None:
            self.stats.unknown_units += 1
            return self._exception(fc, GATEWAY_PATH_UNAVAILABLE)
        # pymodbus's decoders read a fixed layout and ignore trailing bytes: the length is ours to check
        if _FIXED_LENGTH.get(fc, len(pdu)) != len(pdu) or fc == 5 and pdu[3:5] not in (_COIL_ON, _COIL_OFF):
            return self._exception(fc, ILLEGAL_VALUE)
        request = request_class()
        try:
            request.decode(pdu[1:])  # checks the count against the function's limit
        except (ValueError, IndexError, struct.error):
            return self._exception(fc, ILLEGAL_VALUE)
        address, count = request.address, request.count
        if fc == 4:
            end = address + count
            if end > 65536 or valid.find(0, address, end) != -1:
                return self._exception(fc, ILLEGAL_ADDRESS)
            if self.fast_reads:
                return _InputRegistersAnswer(self.image.read(unit, address, count), dev_id=unit)
            return ReadInputRegistersResponse(registers=self.image.registers(unit, address, count), dev_id=unit)
        if fc == 1 or fc == 2:
            first, end = self.coil_span[unit] if fc == 1 else (0, 0)
            if address < first or address + count > end:
                return self._exception(fc, ILLEGAL_ADDRESS)
            return ReadCoilsResponse(bits=self._bits(unit, address, count), dev_id=unit)
        if fc == 3:
            return self._exception(fc, ILLEGAL_ADDRESS)  # no holding registers
        if fc == 15:
            byte_count = request.byte_count  # type: ignore[attr-defined]
            if count > MAX_WRITE_COILS or byte_count != (count + 7) // 8 or request.data_byte_count != byte_count:  # type: ignore[attr-defined]
                return self._exception(fc, ILLEGAL_VALUE)
        code = self.policy.write(self.image, unit, address, list(request.bits), peer)
        if code is not None:
            return self._exception(fc, code)
        if fc == 5:
            return WriteSingleCoilResponse(address=address, bits=request.bits, dev_id=unit)
        return WriteMultipleCoilsResponse(address=address, count=count, dev_id=unit)

    def _exception(self, fc: int, code: int) -> ExceptionResponse:
        self.stats.exceptions += 1
        return ExceptionResponse(fc, code)

    def _bits(self, unit: int, address: int, count: int) -> list[bool]:
        coils = self.image.coils[unit]
        w0, w1 = address // 16, (address + count - 1) // 16
        word = 0
        for i in range(w1, w0 - 1, -1):
            word = (word << 16) | coils[i]
        word >>= address % 16
        return [bool(word >> i & 1) for i in range(count)]


class _Connection(asyncio.Protocol):
    """One Modbus TCP client: MBAP frames in, answers out, in order."""

    __slots__ = ("server", "transport", "peer", "buf", "refused")

    def __init__(self, server: ModbusServer) -> None:
        self.server = server
        self.transport: Any = None
        self.peer: str | None = None
        self.buf = b""
        self.refused = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if peername else None
        server = self.server
        if len(server.connections) >= server.max_clients:
            self.refused = True
            server.stats.clients_refused += 1
            if server.stats.clients_refused % 100 == 1:
                log.warn("Modbus client {peer} refused: {n} clients already connected ({refused} refused so far)",
                         peer=self.peer, n=server.max_clients, refused=server.stats.clients_refused)
            transport.close()
            return
        server.connections.add(self)
        server.stats.clients += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        out = []
        respond = self.server.responder.respond
        read_frame = self.server.responder.read_frame
        framer = self.server.framer
        while n - pos >= 7:
            # the connection's rule, which pymodbus's framer does not apply (after a protocol id
            # other than 0 it waits for more data, and it bounds no length): close the connection
            length = buf[pos + 4] << 8 | buf[pos + 5]
            if buf[pos + 2] or buf[pos + 3] or not 2 <= length <= 254:
                self.server.stats.bad_frames += 1
                self.buf = b""
                self.refused = True
                self.transport.abort()
                return
            end = pos + 6 + length
            if end > n:
                break
            if length == 6 and buf[pos + 7] == 4:  # the hot request, a read of input registers: no objects
                answer = read_frame(*_READ_REQUEST.unpack_from(buf, pos))
                if answer is not None:
                    out.append(answer)
                    pos = end
                    continue
            _, unit, tid, pdu = framer.decode(buf[pos:end])  # exactly one frame: pymodbus's MBAP decoder
            out.append(framer.encode(respond(unit, pdu, self.peer), unit, tid))
            pos = end
        self.buf = buf[pos:] if pos < n else b""
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # answers pile up unread: read no more requests

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class ModbusServer:
    """The Modbus TCP listener (``ssl``: an ``SSLContext`` for Modbus/TCP Security)."""

    def __init__(self, responder: Responder, max_clients: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.responder = responder
        self.stats = responder.stats
        self.max_clients = max_clients
        self.ssl = ssl_context
        self.framer = FramerSocket(DecodePDU(is_server=True))
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Listen on exactly ``host``; the port (``port`` 0: any free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, ssl=self.ssl,
                                                reuse_address=True, backlog=256)
        return self._server.sockets[0].getsockname()[1]

    async def shutdown(self) -> None:
        """Stop listening and disconnect every client."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.transport.abort()
        self.connections.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """The server side of Modbus/TCP Security: TLS 1.2 or newer, the server's ``cert`` and
    ``key``, and a client certificate required and verified against ``ca`` (a client
    without one, or with one from another CA, fails the handshake and is never served)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
