"""A GSM modem on a pseudo-terminal: Hayes AT commands, a data call that carries the bus.

The simulated modem is the supervisor's *local* modem (the ``modem`` device of a
``GsmEndpoint``): the supervisor opens the pty, dials the link's ``number`` and, once
``CONNECT`` is seen, speaks frames to the field bus at the far end of the call.

:class:`ModemMachine` is sans-I/O: bytes and timer expiries in, :data:`Output` values out
(bytes for the DTE, bytes for the bus, timers to start or cancel, call up / call down).
:class:`ModemEndpoint` is the thin Twisted adapter on a pty.

State table (rules: result codes are verbose, ``CR LF <text> CR LF``; in the two command
states every received byte is echoed while echo is on (ATE1, the power-on default); a
command line is ``AT`` + commands, ended by CR, case-insensitive; LF is ignored)::

    state           input                                  -> state           to the DTE
    COMMAND         AT / ATZ / ATE0 / ATE1 / ATI / ATQ0 /
                    ATV1 / AT&F / ATS0=n / AT+CSQ /
                    AT+CREG? / ATH                         -> COMMAND         info lines, OK
    COMMAND         unknown command                        -> COMMAND         ERROR
    COMMAND         ATD<number>                            -> DIALING         (timer "dial")
    COMMAND         ATA while ringing                      -> DIALING         (timer "dial")
    COMMAND         ATA / ATO without a call               -> COMMAND         NO CARRIER
    COMMAND         ring() from the control interface      -> COMMAND         RING (ringing 30 s)
    DIALING         timer "dial", number = ours, net up    -> ONLINE          CONNECT <rate>
    DIALING         timer "dial", other number or net down -> COMMAND         NO CARRIER
    DIALING         any byte (abort)                       -> COMMAND         NO CARRIER
    ONLINE          bytes                                  -> ONLINE          (bytes go to the bus)
    ONLINE          guard(1 s) "+++" guard(1 s)            -> ONLINE_COMMAND  OK
    ONLINE_COMMAND  ATO                                    -> ONLINE          CONNECT <rate>
    ONLINE_COMMAND  ATH / ATZ                              -> COMMAND         OK (call down)
    ONLINE_COMMAND  ATD                                    -> ONLINE_COMMAND  ERROR
    ONLINE, ONLINE_COMMAND  carrier_lost() (link drop)     -> COMMAND         NO CARRIER

Bytes from the bus reach the DTE only in ONLINE.  The three ``+`` of an escape are held
back from the bus until the escape is decided; if it fails they are passed on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from st2000r.simulation.endpoints import BusLike, EndpointInfo, LinkCut, PtyPair, _FdTransport, pty_info

__all__ = [
    "ModemState",
    "ToDte",
    "ToBus",
    "StartTimer",
    "CancelTimer",
    "CallUp",
    "CallDown",
    "Output",
    "ModemMachine",
    "ModemEndpoint",
]

log = Logger(namespace="st2000r.simulation.modem")


class ModemState(enum.Enum):
    COMMAND = "command"
    DIALING = "dialing"
    ONLINE = "online"
    ONLINE_COMMAND = "online-command"


@dataclass(frozen=True, slots=True)
class ToDte:
    """Bytes for the supervisor (the terminal side of the modem)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ToBus:
    """Bytes for the field bus at the far end of the call."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call :meth:`ModemMachine.timer` with ``name`` after ``seconds`` (restarting it)."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class CallUp:
    """The data call is established: attach the bus."""


@dataclass(frozen=True, slots=True)
class CallDown:
    """The data call ended: detach the bus."""


Output = ToDte | ToBus | StartTimer | CancelTimer | CallUp | CallDown

CSQ = "+CSQ: 23,0"
CREG = "+CREG: 0,1"
IDENT = "ST2000R simulator GSM modem"
RING_S = 30.0


def _normalise(number: str) -> str:
    return "".join(c for c in number if c.isdigit() or c == "+")


class ModemMachine:
    """Hayes modem state machine (see the module's table).

    ``number``: the number that answers (the link's far end).  ``rate``: bit/s reported in
    ``CONNECT``.  ``dial_s``: seconds from ATD/ATA to CONNECT or NO CARRIER.  ``guard_s``:
    escape guard time.  ``network_up``: when False, every call fails with NO CARRIER.
    ``now`` arguments are seconds on any monotonic clock.  No method raises for any input.
    """

    def __init__(self, number: str, *, rate: int = 9600, dial_s: float = 3.0, guard_s: float = 1.0) -> None:
        self.number = _normalise(number)
        self.rate = rate
        self.dial_s = dial_s
        self.guard_s = guard_s
        self.network_up = True
        self.state = ModemState.COMMAND
        self.echo = True
        self.ringing = False
        self.dialled: str | None = None
        self._answering = False
        self._line = bytearray()
        self._last_rx = float("-inf")
        self._plus = 0

    # -- inputs
    def receive(self, data: bytes, now: float) -> list[Output]:
        """Bytes from the DTE at time ``now``."""
        out: list[Output] = []
        if self.state is ModemState.ONLINE:
            self._online_bytes(data, now, out)
        elif self.state is ModemState.DIALING:
            out += [CancelTimer("dial"), ToDte(b"\r\nNO CARRIER\r\n")]
            self.state = ModemState.COMMAND
            self._last_rx = now
        else:
            for b in data:
                self._command_byte(b, out)
            self._last_rx = now
        return out

    def from_bus(self, data: bytes) -> list[Output]:
        """Bytes from the far end: delivered only in ONLINE."""
        return [ToDte(data)] if self.state is ModemState.ONLINE and data else []

    def timer(self, name: str, now: float) -> list[Output]:
        """A timer started by :class:`StartTimer` expired."""
        if name == "dial" and self.state is ModemState.DIALING:
            ok = self.network_up and (self._answering or self.dialled == self.number)
            self._answering = False
            if ok:
                self.state = ModemState.ONLINE
                self._plus = 0
                self._last_rx = now
                return [CallUp(), ToDte(f"\r\nCONNECT {self.rate}\r\n".encode())]
            self.state = ModemState.COMMAND
            return [ToDte(b"\r\nNO CARRIER\r\n")]
        if name == "guard" and self.state is ModemState.ONLINE and self._plus == 3:
            self._plus = 0
            self.state = ModemState.ONLINE_COMMAND
            return [ToDte(b"\r\nOK\r\n")]
        if name == "ring":
            self.ringing = False
        return []

    def ring(self) -> list[Output]:
        """An incoming call: ``RING`` in COMMAND state (ATA answers it); ignored otherwise."""
        if self.state is not ModemState.COMMAND:
            return []
        self.ringing = True
        return [ToDte(b"\r\nRING\r\n"), StartTimer("ring", RING_S)]

    def carrier_lost(self) -> list[Output]:
        """The far end hung up or the network dropped the call."""
        if self.state in (ModemState.ONLINE, ModemState.ONLINE_COMMAND):
            self.state = ModemState.COMMAND
            self._plus = 0
            return [CallDown(), CancelTimer("guard"), ToDte(b"\r\nNO CARRIER\r\n")]
        if self.state is ModemState.DIALING:
            self.state = ModemState.COMMAND
            return [CancelTimer("dial"), ToDte(b"\r\nNO CARRIER\r\n")]
        return []

    # -- data mode
    def _online_bytes(self, data: bytes, now: float, out: list[Output]) -> None:
        passthrough = bytearray()
        for b in data:
            if b == 0x2B and self._plus < 3 and (
                (self._plus == 0 and now - self._last_rx >= self.guard_s) or self._plus > 0
            ):
                self._plus += 1
                if self._plus == 3:
                    out.append(StartTimer("guard", self.guard_s))
                continue
            if self._plus:
                if self._plus == 3:
                    out.append(CancelTimer("guard"))
                passthrough += b"+" * self._plus
                self._plus = 0
            passthrough.append(b)
        if passthrough:
            out.append(ToBus(bytes(passthrough)))
        self._last_rx = now

    # -- command mode
    def _command_byte(self, b: int, out: list[Output]) -> None:
        if self.echo:
            out.append(ToDte(bytes((b,))))
        if b == 0x0A:
            return
        if b == 0x08 or b == 0x7F:
            if self._line:
                self._line.pop()
            return
        if b != 0x0D:
            if len(self._line) < 256:
                self._line.append(b)
            return
        line = self._line.decode("ascii", "replace").strip()
        self._line.clear()
        if not line:
            return
        self._command_line(line, out)

    def _result(self, out: list[Output], text: str) -> None:
        out.append(ToDte(f"\r\n{text}\r\n".encode()))

    def _command_line(self, line: str, out: list[Output]) -> None:
        upper = line.upper()
        if not upper.startswith("AT"):
            self._result(out, "ERROR")
            return
        rest = upper[2:]
        info: list[str] = []
        i = 0
        while i < len(rest):
            c = rest[i]
            i += 1
            if c == " ":
                continue
            if c == "E" or c == "Q" or c == "V":
                digit = rest[i] if i < len(rest) and rest[i].isdigit() else "0"
                i += 1 if i < len(rest) and rest[i].isdigit() else 0
                if c == "E":
                    self.echo = digit == "1"
                continue
            if c == "Z":
                self.echo = True
                if self.state is ModemState.ONLINE_COMMAND:
                    self.state = ModemState.COMMAND
                    out.append(CallDown())
                continue
            if c == "I":
                while i < len(rest) and rest[i].isdigit():
                    i += 1
                info.append(IDENT)
                continue
            if c == "H":
                if i < len(rest) and rest[i] == "0":
                    i += 1
                self.ringing = False
                if self.state is ModemState.ONLINE_COMMAND:
                    self.state = ModemState.COMMAND
                    out.append(CallDown())
                continue
            if c == "&" and i < len(rest) and rest[i] in "FWCDK":
                i += 1
                while i < len(rest) and rest[i].isdigit():
                    i += 1
                continue
            if c == "S":
                j = i
                while j < len(rest) and rest[j].isdigit():
                    j += 1
                if j < len(rest) and rest[j] == "=":
                    j += 1
                    while j < len(rest) and rest[j].isdigit():
                        j += 1
                    i = j
                    continue
                if j < len(rest) and rest[j] == "?":
                    info.append("000")
                    i = j + 1
                    continue
                self._result(out, "ERROR")
                return
            if c == "+":
                cmd = rest[i - 1 :]
                if cmd.startswith("+CSQ"):
                    info.append(CSQ)
                elif cmd.startswith("+CREG?"):
                    info.append(CREG)
                elif cmd.startswith("+CGMI"):
                    info.append("ST2000R")
                else:
                    self._result(out, "ERROR")
                    return
                break  # an extended command ends the line
            if c == "O":
                if i < len(rest) and rest[i] == "0":
                    i += 1
                if self.state is ModemState.ONLINE_COMMAND:
                    self._emit_info(out, info)
                    self.state = ModemState.ONLINE
                    self._plus = 0
                    self._result(out, f"CONNECT {self.rate}")
                else:
                    self._result(out, "NO CARRIER")
                return
            if c == "A":
                if self.state is not ModemState.COMMAND or not self.ringing:
                    self._result(out, "NO CARRIER")
                    return
                self.ringing = False
                self._answering = True
                self.state = ModemState.DIALING
                out += [CancelTimer("ring"), StartTimer("dial", self.dial_s)]
                return
            if c == "D":
                if self.state is not ModemState.COMMAND:
                    self._result(out, "ERROR")
                    return
                number = _normalise(line[2:][i:].strip().lstrip("TtPp"))
                if not number:
                    self._result(out, "ERROR")
                    return
                self.dialled = number
                self.state = ModemState.DIALING
                out.append(StartTimer("dial", self.dial_s))
                return
            self._result(out, "ERROR")
            return
        self._emit_info(out, info)
        self._result(out, "OK")

    def _emit_info(self, out: list[Output], info: list[str]) -> None:
        for text in info:
            out.append(ToDte(f"\r\n{text}\r\n".encode()))


class _ModemProtocol(Protocol):
    def __init__(self, endpoint: ModemEndpoint) -> None:
        self.endpoint = endpoint

    def dataReceived(self, data: bytes) -> None:
        ep = self.endpoint
        ep.run(ep.machine.receive(data, ep.clock.seconds()))

    def connectionLost(self, reason=None) -> None:
        pass


class ModemEndpoint(Service):
    """A :class:`ModemMachine` on a new pseudo-terminal (:attr:`path` after start) whose
    data calls reach ``bus``.  ``clock`` times dialling, guard time and link drops.
    ``link_dir``: if given, a symlink ``link_dir/<link>`` to the pty is created (and removed
    on stop), as for :class:`~st2000r.simulation.endpoints.PtyEndpoint`."""

    kind = "modem"

    def __init__(
        self,
        link: str,
        bus: BusLike,
        reactor,
        *,
        number: str,
        clock: IReactorTime | None = None,
        rate: int = 9600,
        dial_s: float = 3.0,
        guard_s: float = 1.0,
        link_dir: str | None = None,
    ) -> None:
        self.setName(f"modem:{link}")
        self.link = link
        self.bus = bus
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.machine = ModemMachine(number, rate=rate, dial_s=dial_s, guard_s=guard_s)
        self.link_dir = link_dir
        self.pair: PtyPair | None = None
        self.path: str | None = None
        self.symlink: str | None = None
        self.transport: _FdTransport | None = None
        self.write: Callable[[bytes], None] | None = None
        self.cut = LinkCut(self.clock, on_end=self._net_back)
        self.calls = 0
        self._timers: dict[str, IDelayedCall] = {}

    def startService(self) -> None:
        super().startService()
        self.pair = PtyPair(self.link_dir, self.link)
        self.path, self.symlink = self.pair.path, self.pair.symlink
        self.transport = _FdTransport(self.pair.master, _ModemProtocol(self), self.reactor)
        self.write = self.transport.write
        self.bus.on_link_drop(self.drop)
        log.info("link {link}: GSM modem on {path}", link=self.link, path=self.path)

    def attach(self, write: Callable[[bytes], None]) -> None:
        """Use ``write`` as the DTE side instead of a pty (tests with a StringTransport)."""
        self.write = write

    def receive(self, data: bytes) -> None:
        """Bytes from the DTE (what the pty adapter calls)."""
        self.run(self.machine.receive(data, self.clock.seconds()))

    def ring(self) -> bool:
        """Signal an incoming call; False if the modem is not idle in command mode."""
        outputs = self.machine.ring()
        self.run(outputs)
        return bool(outputs)

    def drop(self, seconds: float) -> None:
        """Link drop: the call ends (NO CARRIER) and calls fail for ``seconds``."""
        self.machine.network_up = False
        self.cut.start(seconds)
        self.run(self.machine.carrier_lost())

    def _net_back(self) -> None:
        self.machine.network_up = True

    def run(self, outputs: list[Output]) -> None:
        """Carry out the machine's outputs."""
        for o in outputs:
            if isinstance(o, ToDte):
                if self.write is not None:
                    self.write(o.data)
            elif isinstance(o, ToBus):
                self.bus.data_received(o.data)
            elif isinstance(o, StartTimer):
                self._cancel(o.name)
                self._timers[o.name] = self.clock.callLater(o.seconds, self._fire, o.name)
            elif isinstance(o, CancelTimer):
                self._cancel(o.name)
            elif isinstance(o, CallUp):
                self.calls += 1
                self.bus.connect(self._from_bus)
            elif isinstance(o, CallDown):
                self.bus.disconnect()

    def _from_bus(self, data: bytes) -> None:
        self.run(self.machine.from_bus(data))

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        self.run(self.machine.timer(name, self.clock.seconds()))

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def stopService(self):
        for name in list(self._timers):
            self._cancel(name)
        self.cut.cancel()
        if self.machine.state in (ModemState.ONLINE, ModemState.ONLINE_COMMAND):
            self.bus.disconnect()
        if self.transport is not None:
            self.transport.stopReading()
            self.transport.stopWriting()
            self.transport = None
        if self.pair is not None:
            self.pair.close()  # removes the symlink too
            self.pair = None
        self.symlink = None
        return super().stopService()

    def info(self) -> EndpointInfo:
        note = f"Hayes AT modem; dial ATD{self.machine.number}"
        return pty_info(self.link, self.kind, self.path, self.symlink, note)
