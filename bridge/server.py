"""The Modbus TCP server on pymodbus 3.16, serving the register image, with the write policy.

Built inside the running loop (pymodbus servers need it).  One ``SimDevice`` per unit id of
the map, with separate tables (coils bit-addressed, input registers); the image
(:class:`~st2000r.bridge.image.RegisterImage`) is then bound to the very lists pymodbus
serves, so an update costs list stores and a read sees it at once.

pymodbus's device ``action`` hook is called for every access of a unit, but is not told
which client asked; the request handler is subclassed to put the client's address in a
context variable around each request (each request runs as its own asyncio task, so the
variable is per request).  The same subclass bounds the number of clients (the excess is
disconnected at once, counted) and answers a unit id that is not on the map with exception
0Ah (gateway path unavailable) instead of a device failure, and a function the bridge does
not serve with 01 before pymodbus acts on it (diagnostics 08 could otherwise put the whole
server in listen-only mode for every client).

Writes (``action`` with values, functions 5 and 15 on coils):

- from a client outside ``write_allow``: exception 01 (illegal function), nothing happens;
- an address that is not a meter's valve coil: exception 02;
- else one ``ValveRequest(meter, open, who="modbus:<addr>", source="modbus", peer=<addr>)``
  per coil on the command dispatcher; a request refused at once (role, interlock, busy,
  link down) answers exception 04 (device failure) and its reason is in the audit log and
  the command-status register (6, refused).  An accepted write answers normally; the coil
  keeps showing the *confirmed* valve state (the written value is not stored), the
  command-status register follows the command to its outcome.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from twisted.logger import Logger

from st2000r.bridge.image import RegisterImage
from st2000r.supervisor.commands_model import ValveRequest
from st2000r.supervisor.events import CommandState

__all__ = ["BridgeStats", "WritePolicy", "make_tcp_server", "PEER"]

log = Logger()

#: the address of the client whose request is being handled (None: not a client request)
PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("st2000r_modbus_peer", default=None)

_READ_INPUT = 4
_COIL_WRITES = (5, 15)
#: the functions served; every other one (diagnostics 08 with its server-wide listen-only
#: mode, file records, FIFO, register writes ...) answers exception 01 before pymodbus runs it
SERVED_FUNCTIONS = frozenset({1, 2, 3, 4, 5, 15})


@dataclass(slots=True)
class BridgeStats:
    """Counters of the Modbus server."""

    clients: int = 0
    clients_refused: int = 0
    writes_accepted: int = 0
    writes_refused: int = 0
    writes_not_allowed: int = 0
    unknown_units: int = 0


class WritePolicy:
    """Who may write, and what a coil write becomes (rules in the module docstring).

    ``networks``: normalised networks of ``write_allow``; ``dispatcher``: the command
    dispatcher (``submit``, ``get``)."""

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

    def write(self, image: RegisterImage, unit: int, address: int, values: list, peer: str | None) -> ExcCodes | None:
        """Turn a coil write into valve commands; the exception code to answer, or None.
        ``values`` is rewritten in place to the coils' current (confirmed) states."""
        if not self.allowed(peer) or self.dispatcher is None:
            self.stats.writes_not_allowed += 1
            log.info("Modbus write from {peer} refused: not in write_allow", peer=peer)
            return ExcCodes.ILLEGAL_FUNCTION
        meters = image.coil_meters.get(unit, {})
        targets = [meters.get(address + i) for i in range(len(values))]
        if any(t is None for t in targets):
            return ExcCodes.ILLEGAL_ADDRESS
        refused = False
        for i, (mid, value) in enumerate(zip(targets, values)):
            handle = self.dispatcher.submit(ValveRequest(mid, bool(value), who=f"modbus:{peer}", source="modbus",
                                                         reason="Modbus coil write", peer=peer))
            if self.dispatcher.get(handle.id).state is CommandState.REFUSED:
                refused = True
            values[i] = image.coil(unit, address + i)
        if refused:
            self.stats.writes_refused += 1
            return ExcCodes.DEVICE_FAILURE
        self.stats.writes_accepted += 1
        return None


def _devices(image: RegisterImage, action: Any) -> list[SimDevice]:
    devices = []
    for unit in sorted(image.map.units):
        inputs = [SimData(address=start, count=count, values=0, datatype=DataType.REGISTERS)
                  for start, count in image.input_ranges(unit)]
        span = image.coil_range(unit)
        if span is None:
            coils = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
        else:
            coils = [SimData(address=span[0], values=[False] * span[1], datatype=DataType.BITS)]
        # no discrete inputs or holding registers: a single invalid register makes them answer 02
        discrete = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
        holding = [SimData(address=0, count=1, datatype=DataType.INVALID)]
        devices.append(SimDevice(id=unit, simdata=(coils, discrete, holding, inputs),
                                 action=functools.partial(action, unit)))
    return devices


def make_tcp_server(image: RegisterImage, policy: WritePolicy, address: tuple[str, int],
                    max_clients: int) -> ModbusTcpServer:
    """A ``ModbusTcpServer`` (not yet listening) for ``image``; call from the running loop."""
    stats = policy.stats

    async def action(unit: int, func_code: int, _start: int, addr: int, count: int, _regs: list,
                     set_values: list | None) -> ExcCodes | None:
        if set_values is None:
            if func_code == _READ_INPUT:
                image.refresh_ages(unit, addr, count)
            return None
        if func_code in _COIL_WRITES:
            return policy.write(image, unit, addr, set_values, PEER.get())
        return ExcCodes.ILLEGAL_FUNCTION

    class Handler(ServerRequestHandler):
        """Per-connection handler: client bound, peer address, unknown unit ids."""

        peer: str | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            peername = transport.get_extra_info("peername")
            self.peer = peername[0] if peername else None
            listener = self.listener
            if listener is not None and len(listener.active_connections) > max_clients:
                stats.clients_refused += 1
                log.warn("Modbus client {peer} refused: {n} clients already connected", peer=self.peer,
                         n=max_clients)
                self.close()
                return
            stats.clients += 1

        async def handle_request(self) -> None:
            pdu = self.last_pdu
            code = None
            if pdu is not None and pdu.function_code not in SERVED_FUNCTIONS:
                code = ExcCodes.ILLEGAL_FUNCTION
            elif pdu is not None and pdu.dev_id not in server.context.devices:
                stats.unknown_units += 1
                code = ExcCodes.GATEWAY_PATH_UNAVIABLE
            if code is not None:
                response = ExceptionResponse(pdu.function_code, code)
                response.transaction_id = pdu.transaction_id
                response.dev_id = pdu.dev_id
                self.server_send(response, self.last_addr)
                return
            token = PEER.set(self.peer)
            try:
                await super().handle_request()
            finally:
                PEER.reset(token)

    class Server(ModbusTcpServer):
        def callback_new_connection(self) -> Handler:
            return Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    # pymodbus logs every undecodable frame with a hex dump at error level: a flooding client
    # would flood the supervisor's log (and block it on a full pipe); its own log is silenced
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    server = Server(_devices(image, action), address=address)
    for unit, runtime in server.context.devices.items():
        i_start, _, i_regs, _ = runtime.block["i"]
        c_start, _, c_regs, _ = runtime.block["c"]
        image.bind(unit, i_regs, i_start, c_regs, c_start)
    return server
