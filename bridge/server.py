"""The Modbus server of the bridge: the request core, the write policy and the TCP (and
Modbus/TCP Security) transport, on asyncio in the supervisor's loop.

Why not pymodbus's server: measured side by side (bench/bench_bridge.py), pymodbus's server
with its datastore hook answered 125-register reads at 0.7-0.9 × the rate of a stock
pymodbus server, well short of the 2× the bridge is asked for.  Each request there goes
through a task, a framer, PDU objects and the datastore's per-call hook.  The bridge serves
six functions on one image it owns, so the request core below answers straight from the
image's lists with ``struct``, one function call per request and no task; the same core
serves the RTU slave (:mod:`~st2000r.bridge.rtu`).  pymodbus stays the project's Modbus
client (tests, tools) and its reference peer in the benchmark.

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

from twisted.logger import Logger

from st2000r.bridge.image import RegisterImage
from st2000r.supervisor.commands_model import ValveRequest
from st2000r.supervisor.events import CommandState

__all__ = ["BridgeStats", "WritePolicy", "Responder", "ModbusServer", "tls_context", "SERVED_FUNCTIONS"]

log = Logger()

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04
GATEWAY_PATH_UNAVAILABLE = 0x0A

#: the functions served (read coils, discrete inputs, holding, input registers; write coils)
SERVED_FUNCTIONS = frozenset({1, 2, 3, 4, 5, 15})
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_COILS = 1968

_ADDR_COUNT = struct.Struct(">HH")
_MBAP = struct.Struct(">HHHB")
_REG_ANSWERS = {n: struct.Struct(f">BB{n}H") for n in range(1, MAX_READ_REGISTERS + 1)}


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
    """Answers request PDUs from ``image`` (which keeps its own full-size lists: register
    ``a`` of unit ``u`` is ``image.regs[u][a]``).  ``units``: the unit ids answered
    (default: every unit of the map)."""

    def __init__(self, image: RegisterImage, policy: WritePolicy, units: Any = None) -> None:
        self.image = image
        self.policy = policy
        self.stats = policy.stats
        self.valid: dict[int, bytearray] = {}
        self.coil_span: dict[int, tuple[int, int]] = {}
        for unit in image.map.units if units is None else units:
            assert image.reg_start[unit] == 0 and image.coil_start[unit] == 0, "the image must keep its own lists"
            valid = bytearray(65536)
            for start, count in image.input_ranges(unit):
                valid[start:start + count] = b"\x01" * count
            self.valid[unit] = valid
            span = image.coil_range(unit)
            self.coil_span[unit] = (span[0], span[0] + span[1]) if span else (0, 0)

    def _exception(self, fc: int, code: int) -> bytes:
        self.stats.exceptions += 1
        return bytes((fc | 0x80, code))

    def respond(self, unit: int, pdu: bytes, peer: str | None) -> bytes:
        """The answer PDU to ``pdu`` for ``unit`` from a client at ``peer`` (None: serial)."""
        self.stats.requests += 1
        fc = pdu[0]
        valid = self.valid.get(unit)
        if fc == 4 and valid is not None and len(pdu) == 5:  # the hot path: read input registers
            address, count = _ADDR_COUNT.unpack_from(pdu, 1)
            if not 1 <= count <= MAX_READ_REGISTERS:
                return self._exception(fc, ILLEGAL_VALUE)
            end = address + count
            if end > 65536 or valid.find(0, address, end) != -1:
                return self._exception(fc, ILLEGAL_ADDRESS)
            image = self.image
            image.refresh_ages(unit, address, count)
            return _REG_ANSWERS[count].pack(4, 2 * count, *image.regs[unit][address:end])
        if fc not in SERVED_FUNCTIONS:
            return self._exception(fc & 0x7F, ILLEGAL_FUNCTION)
        if valid is None:
            self.stats.unknown_units += 1
            return self._exception(fc, GATEWAY_PATH_UNAVAILABLE)
        if fc == 15:
            return self._write_coils(unit, pdu, peer)
        if len(pdu) != 5:
            return self._exception(fc, ILLEGAL_VALUE)
        address, arg = _ADDR_COUNT.unpack_from(pdu, 1)
        if fc == 5:
            if arg not in (0x0000, 0xFF00):
                return self._exception(fc, ILLEGAL_VALUE)
            code = self.policy.write(self.image, unit, address, [arg == 0xFF00], peer)
            return pdu if code is None else self._exception(fc, code)
        if fc == 4 or fc == 3:
            if not 1 <= arg <= MAX_READ_REGISTERS:
                return self._exception(fc, ILLEGAL_VALUE)
            return self._exception(fc, ILLEGAL_ADDRESS)  # fc 4 here: a malformed PDU was caught above
        if not 1 <= arg <= MAX_READ_BITS:
            return self._exception(fc, ILLEGAL_VALUE)
        first, end = self.coil_span[unit] if fc == 1 else (0, 0)
        if address < first or address + arg > end:
            return self._exception(fc, ILLEGAL_ADDRESS)
        return bytes((1, (arg + 7) // 8)) + self._bits(unit, address, arg)

    def _bits(self, unit: int, address: int, count: int) -> bytes:
        coils = self.image.coils[unit]
        w0, w1 = address // 16, (address + count - 1) // 16
        word = 0
        for i in range(w1, w0 - 1, -1):
            word = (word << 16) | coils[i]
        word = (word >> (address % 16)) & ((1 << count) - 1)
        return word.to_bytes((count + 7) // 8, "little")

    def _write_coils(self, unit: int, pdu: bytes, peer: str | None) -> bytes:
        fc = 15
        if len(pdu) < 7:
            return self._exception(fc, ILLEGAL_VALUE)
        address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        nbytes = pdu[5]
        if not 1 <= count <= MAX_WRITE_COILS or nbytes != (count + 7) // 8 or len(pdu) != 6 + nbytes:
            return self._exception(fc, ILLEGAL_VALUE)
        bits = int.from_bytes(pdu[6:], "little")
        values = [bool(bits >> i & 1) for i in range(count)]
        code = self.policy.write(self.image, unit, address, values, peer)
        return pdu[:5] if code is None else self._exception(fc, code)


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
        while n - pos >= 7:
            tid, proto, length, unit = _MBAP.unpack_from(buf, pos)
            if proto != 0 or not 2 <= length <= 254:
                self.server.stats.bad_frames += 1
                self.buf = b""
                self.refused = True
                self.transport.abort()
                return
            end = pos + 6 + length
            if end > n:
                break
            answer = respond(unit, buf[pos + 7:end], self.peer)
            out.append(_MBAP.pack(tid, 0, len(answer) + 1, unit) + answer)
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
