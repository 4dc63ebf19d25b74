"""The Hayes dialogue of a GSM modem as a state table (sans-I/O: no Twisted, no clock).

:class:`GsmDialer` takes method calls and modem bytes and returns :data:`Output` values
(bytes for the modem, timers to start/cancel, signal quality, call up/down, bus bytes);
:class:`~st2000r.drivers.st2000r.gsm.GsmLinkService` (``gsm.py``) carries them out on a
serial port and decides *when* to dial and hang up.

Dialogue table (rules: commands end in CR; a timer is started before the bytes it guards are sent; result lines are matched after stripping CR/LF
and blank lines; echoed command lines (``AT...``) are ignored; every command state has a
``cmd_timeout_s`` timer; ``Failed(reason)`` always leads to UNINITIALISED, from which the
adapter re-initialises after back-off)::

    state          input                               -> state          outputs
    OFFLINE        port_opened()                       -> UNINITIALISED
    UNINITIALISED  initialise()                        -> INIT           send ATZ
    INIT           OK to ATZ / ATE0 / AT+CSQ           -> INIT           send next: ATE0, AT+CSQ, AT+CREG?
    INIT           "+CSQ: <rssi>,<ber>"                -> INIT           Signal(rssi)
    INIT           "+CREG: <n>,<stat>"                 -> INIT           (stat kept)
    INIT           OK to AT+CREG?, stat 1 or 5         -> READY          Ready
    INIT           OK to AT+CREG?, other stat          -> UNINITIALISED  Failed("not registered ...")
    INIT           ERROR to ATZ/ATE0, or timer "cmd"   -> UNINITIALISED  Failed
    INIT           ERROR to AT+CSQ / AT+CREG?          -> INIT / READY   (optional: go on)
    READY          dial()                              -> DIALING        send ATD<number>, timer "dial"
    DIALING        "CONNECT [rate]"                    -> ONLINE         CallUp(rate); later bytes are bus bytes
    DIALING        NO CARRIER|BUSY|NO ANSWER|
                   NO DIALTONE|ERROR                   -> UNINITIALISED  Failed(result)
    DIALING        timer "dial"                        -> UNINITIALISED  send CR (abort), Failed
    ONLINE         bytes                               -> ONLINE         BusData (CR LF NO CARRIER CR LF cut out)
    ONLINE         CR LF NO CARRIER CR LF              -> UNINITIALISED  CallDown("NO CARRIER")
    ONLINE         hangup()                            -> GUARD          CallDown("hang up"), timer "guard"
    GUARD          timer "guard" (silence)             -> ESCAPING       send +++, timer "escape"
    ESCAPING       OK                                  -> HANGING_UP     send ATH, timer "cmd"
    ESCAPING       timer "escape"                      -> HANGING_UP     send ATH, timer "cmd" (try anyway)
    HANGING_UP     OK | NO CARRIER                     -> UNINITIALISED  HungUp
    HANGING_UP     timer "cmd"                         -> UNINITIALISED  Failed("no answer to ATH"); the
                                                                         adapter reopens the port (DTR drop)
    GUARD/ESCAPING NO CARRIER                          -> UNINITIALISED  HungUp
    any            port_lost()                         -> OFFLINE        CallDown first if a call was up

A modem is re-initialised before every dial (a fresh ``AT+CSQ`` each time).  Bytes in
states other than ONLINE and the command states are discarded (late bus replies during
a hang-up).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from st2000r.drivers.st2000r.registration import HeartbeatFilter

__all__ = [
    "DialerState",
    "Send",
    "StartTimer",
    "CancelTimer",
    "Signal",
    "Ready",
    "CallUp",
    "CallDown",
    "HungUp",
    "BusData",
    "Failed",
    "Output",
    "GsmDialer",
]


class DialerState(enum.Enum):
    OFFLINE = "offline"
    UNINITIALISED = "uninitialised"
    INIT = "init"
    READY = "ready"
    DIALING = "dialing"
    ONLINE = "online"
    GUARD = "guard"
    ESCAPING = "escaping"
    HANGING_UP = "hanging-up"


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes for the modem."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call :meth:`GsmDialer.timer` with ``name`` after ``seconds`` (restarting it)."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Signal:
    """``AT+CSQ`` answered: ``csq`` 0..31 (-113 .. -51 dBm), 99 = unknown; ``ber`` 0..7, 99."""

    csq: int
    ber: int


@dataclass(frozen=True, slots=True)
class Ready:
    """Initialised and registered on the network: :meth:`GsmDialer.dial` may be called."""


@dataclass(frozen=True, slots=True)
class CallUp:
    """The data call is established (``rate``: bit/s from CONNECT, or None)."""

    rate: int | None


@dataclass(frozen=True, slots=True)
class CallDown:
    """The data call ended or is being hung up: the bus is gone."""

    reason: str


@dataclass(frozen=True, slots=True)
class HungUp:
    """A hang-up completed; the modem is back in command mode."""


@dataclass(frozen=True, slots=True)
class BusData:
    """Bytes from the field bus at the far end of the call."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    """Initialisation, dialling or hang-up failed; ``reason`` says what happened."""

    reason: str


Output = Send | StartTimer | CancelTimer | Signal | Ready | CallUp | CallDown | HungUp | BusData | Failed

_S = DialerState
NO_CARRIER = b"\r\nNO CARRIER\r\n"
_CSQ = re.compile(r"\+CSQ:\s*(\d+)\s*,\s*(\d+)")
_CREG = re.compile(r"\+CREG:\s*(\d+)\s*(?:,\s*(\d+))?")
_CONNECT = re.compile(r"CONNECT(?:\s+(\d+))?")
_DIAL_FAILURES = ("NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE", "ERROR")
INIT_COMMANDS = ("ATZ", "ATE0", "AT+CSQ", "AT+CREG?")
_OPTIONAL = ("AT+CSQ", "AT+CREG?")


class GsmDialer:
    """The Hayes dialogue of one modem (see the module's table).

    ``number``: what ``ATD`` dials.  ``cmd_timeout_s``: answer time of a command;
    ``dial_timeout_s``: ATD to CONNECT; ``guard_s``: the modem's escape guard time (S12).
    ``now`` arguments are seconds on any monotonic clock.  No method raises for any input;
    a method called in a state where it does not apply returns ``[]``.
    """

    def __init__(
        self,
        number: str,
        *,
        cmd_timeout_s: float = 5.0,
        dial_timeout_s: float = 60.0,
        guard_s: float = 1.0,
    ) -> None:
        self.number = number
        self.cmd_timeout_s = cmd_timeout_s
        self.dial_timeout_s = dial_timeout_s
        self.guard_s = guard_s
        self.state = _S.OFFLINE
        self.csq: int | None = None
        self.creg: int | None = None
        self._step = 0
        self._line = bytearray()
        self._online: HeartbeatFilter | None = None
        self._skip_lf = False  # the LF of "CONNECT ... CR LF" may come in the next chunk

    # -- inputs from the adapter
    def port_opened(self) -> list[Output]:
        self.state = _S.UNINITIALISED
        self._line.clear()
        return []

    def port_lost(self) -> list[Output]:
        was = self.state
        self.state = _S.OFFLINE
        self._online = None
        out: list[Output] = [CancelTimer("cmd"), CancelTimer("dial"), CancelTimer("guard"), CancelTimer("escape")]
        if was is _S.ONLINE:
            out.append(CallDown("modem port lost"))
        return out

    def initialise(self) -> list[Output]:
        if self.state is not _S.UNINITIALISED:
            return []
        self.state = _S.INIT
        self._step = 0
        self.creg = None
        self._line.clear()
        return self._command(INIT_COMMANDS[0])

    def dial(self) -> list[Output]:
        if self.state is not _S.READY:
            return []
        self.state = _S.DIALING
        self._line.clear()
        return [StartTimer("dial", self.dial_timeout_s), Send(f"ATD{self.number}\r".encode("ascii"))]

    def hangup(self) -> list[Output]:
        if self.state is not _S.ONLINE:
            return []
        self.state = _S.GUARD
        self._online = None
        self._line.clear()
        return [CallDown("hang up"), StartTimer("guard", self.guard_s * 1.2)]

    def timer(self, name: str) -> list[Output]:
        state = self.state
        if name == "cmd" and state is _S.INIT:
            return self._fail(f"modem did not answer {INIT_COMMANDS[self._step]} within {self.cmd_timeout_s:g} s")
        if name == "cmd" and state is _S.HANGING_UP:
            return self._fail(f"modem did not answer ATH within {self.cmd_timeout_s:g} s")
        if name == "dial" and state is _S.DIALING:
            return [Send(b"\r")] + self._fail(f"no CONNECT within {self.dial_timeout_s:g} s of dialling")
        if name == "guard" and state is _S.GUARD:
            self.state = _S.ESCAPING
            return [StartTimer("escape", self.guard_s * 2 + self.cmd_timeout_s), Send(b"+++")]
        if name == "escape" and state is _S.ESCAPING:
            return self._hang_up_command()
        return []

    def receive(self, data: bytes) -> list[Output]:
        """Bytes from the modem."""
        if self.state is _S.ONLINE:
            return self._online_bytes(data)
        if self.state in (_S.OFFLINE, _S.UNINITIALISED, _S.READY, _S.GUARD) and NO_CARRIER not in data:
            return []  # unsolicited text and late bus bytes
        out: list[Output] = []
        buf = self._line + data
        self._line.clear()
        while True:
            cut = min((i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                break
            line = bytes(buf[:cut]).decode("ascii", "replace").strip()
            ended_by_cr = buf[cut] == 0x0D
            buf = buf[cut + 1 :]
            if not line:
                continue
            out += self._line_in(line)
            if self.state is _S.ONLINE:  # the rest after "CONNECT ... CR LF" is bus data
                if ended_by_cr:
                    if buf[:1] == b"\n":
                        buf = buf[1:]
                    else:
                        self._skip_lf = not buf
                if buf:
                    out += self._online_bytes(bytes(buf))
                return out
        if len(buf) <= 512:
            self._line += buf
        return out

    # -- internals
    def _command(self, cmd: str) -> list[Output]:
        return [StartTimer("cmd", self.cmd_timeout_s), Send(cmd.encode("ascii") + b"\r")]

    def _fail(self, reason: str) -> list[Output]:
        self.state = _S.UNINITIALISED
        self._online = None
        return [CancelTimer("cmd"), CancelTimer("dial"), CancelTimer("escape"), Failed(reason)]

    def _hang_up_command(self) -> list[Output]:
        self.state = _S.HANGING_UP
        return [CancelTimer("escape")] + self._command("ATH")

    def _line_in(self, line: str) -> list[Output]:
        state = self.state
        upper = line.upper()
        if upper.startswith("AT"):
            return []  # echo
        if state is _S.INIT:
            cmd = INIT_COMMANDS[self._step]
            if (match := _CSQ.match(upper)) is not None:
                self.csq = int(match.group(1))
                return [Signal(self.csq, int(match.group(2)))]
            if (match := _CREG.match(upper)) is not None:
                self.creg = int(match.group(2) if match.group(2) is not None else match.group(1))
                return []
            if upper == "OK" or (upper == "ERROR" and cmd in _OPTIONAL):
                self._step += 1
                if self._step < len(INIT_COMMANDS):
                    return self._command(INIT_COMMANDS[self._step])
                if self.creg is not None and self.creg not in (1, 5):
                    return self._fail(f"modem not registered on the GSM network (+CREG stat {self.creg})")
                self.state = _S.READY
                return [CancelTimer("cmd"), Ready()]
            if upper == "ERROR":
                return self._fail(f"modem answered ERROR to {cmd}")
            return []
        if state is _S.DIALING:
            if (match := _CONNECT.fullmatch(upper)) is not None:
                self.state = _S.ONLINE
                self._online = HeartbeatFilter([NO_CARRIER])
                rate = int(match.group(1)) if match.group(1) else None
                return [CancelTimer("dial"), CallUp(rate)]
            if upper in _DIAL_FAILURES:
                return self._fail(f"dialling {self.number}: {upper}")
            return []
        if state is _S.ESCAPING:
            if upper == "OK":
                return self._hang_up_command()
            if upper == "NO CARRIER":
                self.state = _S.UNINITIALISED
                return [CancelTimer("escape"), HungUp()]
            return []
        if state is _S.GUARD and upper == "NO CARRIER":
            self.state = _S.UNINITIALISED
            return [CancelTimer("guard"), HungUp()]
        if state is _S.HANGING_UP and upper in ("OK", "NO CARRIER"):
            self.state = _S.UNINITIALISED
            return [CancelTimer("cmd"), HungUp()]
        return []

    def _online_bytes(self, data: bytes) -> list[Output]:
        assert self._online is not None
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        out: list[Output] = []
        parts = self._online.feed(data)
        for i, (packet, chunk) in enumerate(parts):
            if packet is None:
                out.append(BusData(chunk))
                continue
            self.state = _S.UNINITIALISED
            self._online = None
            out.append(CallDown("NO CARRIER"))
            rest = b"".join(c for _, c in parts[i + 1 :])
            if rest:
                out += self.receive(rest)
            break
        return out
