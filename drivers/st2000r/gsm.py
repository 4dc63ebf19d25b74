"""GSM data-call link: the local modem on a serial port dials the field end's number.

:class:`GsmDialer` is the sans-I/O Hayes dialogue: method calls and modem bytes in,
:data:`Output` values out (bytes for the modem, timers to start/cancel, signal quality,
call up/down, bus bytes).  :class:`GsmLinkService` is the thin Twisted adapter: it opens
the modem with ``SerialPort`` (reopened with back-off like a serial link), carries out the
outputs, hands the call to the bus master and decides *when* to dial and hang up.

The dialogue's state table is in ``gsm_dialer.py`` (:class:`GsmDialer` and its outputs,
sans-I/O); this module holds the Twisted adapter and the call policy, and re-exports the
dialer's names.

Call policy (:class:`GsmLinkService`): by default the call is **kept up** -- dialled at
start and redialled with back-off whenever it drops.  With ``idle_hangup_s`` set the link
is **on demand**: the call is hung up after that many seconds without bus bytes while the
master has nothing queued or in flight, and redialled as soon as the master has queued
work (checked every ``demand_check_s``; the master holds queued requests up to its
``queue_timeout_s``, longer than a dial).  GSM data calls cost money per minute: choose on
demand for links read a few times a day.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import GsmEndpoint, Link
from st2000r.drivers.st2000r.gsm_dialer import (
    INIT_COMMANDS,  # noqa: F401 (re-exported)
    NO_CARRIER,  # noqa: F401 (re-exported)
    BusData,
    CallDown,
    CallUp,
    CancelTimer,
    DialerState,
    Failed,
    GsmDialer,
    HungUp,
    Output,
    Ready,
    Send,
    Signal,
    StartTimer,
)
from st2000r.drivers.st2000r.links import LinkObservers, MasterLike, SerialOpener, open_serial, reason_text

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
    "GsmLinkService",
]

log = Logger(namespace="st2000r.drivers.st2000r.gsm")


class _ModemProtocol(Protocol):
    def __init__(self, service: GsmLinkService) -> None:
        self.service = service

    def connectionMade(self) -> None:
        self.service._port_opened(self)

    def dataReceived(self, data: bytes) -> None:
        self.service._run(self.service.dialer.receive(data))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.service._port_lost(self, reason_text(reason) if reason is not None else "closed")


class GsmLinkService(LinkObservers, Service):
    """A link over a GSM data call (``GsmEndpoint``): the modem on ``modem`` at
    ``modem_baud`` 8N1 dials ``number``; the call carries the bus to ``master``.

    ``idle_hangup_s``: None = keep the call up (default); a number = on-demand calls (see
    the module docstring).  ``demand_check_s``: how often an idle on-demand link looks at
    the master's queue.  ``retry``: back-off ``(attempt) -> s`` between failed
    initialisations/dials and port reopens.  ``cmd_timeout_s``/``dial_timeout_s``/
    ``guard_s``: see :class:`GsmDialer`.  ``clock`` times everything (default ``reactor``);
    ``open_port`` replaces the Twisted ``SerialPort`` (tests).

    :attr:`csq` is the last signal quality; :attr:`calls` counts calls established.
    Observers get ``connected``/``disconnected`` per call and ``("signal", {"csq"})``; on
    ``stopService`` they get ``("stopped", {})`` first, and the call that ends because of
    the stop brings no ``disconnected`` (a deliberate stop is not a fault).
    """

    def __init__(
        self,
        link: Link,
        master: MasterLike,
        reactor,
        *,
        clock: IReactorTime | None = None,
        idle_hangup_s: float | None = None,
        demand_check_s: float = 1.0,
        retry: Callable[[int], float] | None = None,
        cmd_timeout_s: float = 5.0,
        dial_timeout_s: float = 60.0,
        guard_s: float = 1.0,
        open_port: Callable[[Protocol], Any] | None = None,
    ) -> None:
        if not isinstance(link.endpoint, GsmEndpoint):
            raise ValueError(f"link {link.name!r}: a GSM link needs a GSM endpoint, not {link.kind}")
        self.setName(f"link:{link.name}")
        self.link = link
        self.link_name = link.name
        self.master = master
        self.clock = clock if clock is not None else reactor
        ep = link.endpoint
        self.dialer = GsmDialer(ep.number, cmd_timeout_s=cmd_timeout_s, dial_timeout_s=dial_timeout_s, guard_s=guard_s)
        self.idle_hangup_s = idle_hangup_s
        self.demand_check_s = demand_check_s
        if retry is None:
            from twisted.application.internet import backoffPolicy

            retry = backoffPolicy(initialDelay=2.0, factor=2.0, maxDelay=120.0)
        self.retry = retry
        if open_port is None:
            open_port = open_serial(ep.modem, ep.modem_baud, 8, "N", 1, reactor)
        self.opener = SerialOpener(f"link {link.name}", f"GSM modem {ep.modem}", open_port, lambda: _ModemProtocol(self), self.clock, retry)
        self.protocol: _ModemProtocol | None = None
        self.connected = False
        self.csq: int | None = None
        self.calls = 0
        self.failures = 0  # consecutive failed initialisations/dials
        self.last_activity = 0.0
        self._timers: dict[str, IDelayedCall] = {}
        self._retry_call: IDelayedCall | None = None
        self._watch: LoopingCall | None = None
        self._stopping: Deferred | None = None

    # -- service
    def startService(self) -> None:
        super().startService()
        self.opener.start()

    def stopService(self):
        """Tell the observers ``stopped``, hang up a call in progress (``+++``, ``ATH``;
        bounded by the dialogue's timers), then close the modem port.  Returns a Deferred
        firing when done.  The master still gets its ``connection_lost`` for the call."""
        was_running = self.running
        super().stopService()
        if was_running:
            # before the hang-up: observers of both the link and its master learn that the
            # pipe closes on purpose before the master reports it gone
            self._notify("stopped")
        self._stop_watch()
        self._cancel_retry()
        if self.dialer.state is DialerState.ONLINE:
            self._stopping = Deferred()
            self._run(self.dialer.hangup())
            d, self._stopping = self._stopping, None
            if d is not None:  # not finished synchronously
                self._stopping = d
                return d.addCallback(lambda _: self._close())
        self._close()
        return succeed(None)

    def _close(self) -> None:
        self._stopping = None
        for name in list(self._timers):
            self._cancel(name)
        self.opener.stop()
        if self.dialer.state is not DialerState.OFFLINE:
            self._run(self.dialer.port_lost())
        self.protocol = None

    def _stopped_hangup(self) -> bool:
        """While stopping: the hang-up ended (or failed); finish stopping."""
        d, self._stopping = self._stopping, None
        if d is None:
            return False
        d.callback(None)
        return True

    def hangup(self) -> None:
        """Hang up the call now (it is redialled according to the policy)."""
        self._run(self.dialer.hangup())

    def dial_now(self) -> None:
        """Dial now if the modem is ready (on-demand links; tests)."""
        self._run(self.dialer.dial())

    # -- port
    def _port_opened(self, protocol: _ModemProtocol) -> None:
        self.protocol = protocol
        self._run(self.dialer.port_opened())
        self._run(self.dialer.initialise())

    def _port_lost(self, protocol: _ModemProtocol, reason: str) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        self._stop_watch()
        self._cancel_retry()
        self._run(self.dialer.port_lost())
        if self._stopped_hangup():  # stopping: the hang-up cannot finish; close instead
            self._close()
            return
        if not self.running:
            return
        self.opener.lost(reason)

    def _send(self, data: bytes) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.write(data)

    def _bus_write(self, data: bytes) -> None:
        """The master's byte pipe: only while the call is up."""
        if self.dialer.state is DialerState.ONLINE:
            self.last_activity = self.clock.seconds()
            self._send(data)

    # -- outputs
    def _run(self, outputs: list[Output]) -> None:
        for o in outputs:
            if isinstance(o, Send):
                self._send(o.data)
            elif isinstance(o, BusData):
                self.last_activity = self.clock.seconds()
                self.master.data_received(o.data)
            elif isinstance(o, StartTimer):
                self._cancel(o.name)
                self._timers[o.name] = self.clock.callLater(o.seconds, self._fire, o.name)
            elif isinstance(o, CancelTimer):
                self._cancel(o.name)
            elif isinstance(o, Signal):
                self.csq = o.csq
                log.info("link {link}: GSM signal quality {csq}", link=self.link_name, csq=o.csq)
                self._notify("signal", csq=o.csq, ber=o.ber)
            elif isinstance(o, Ready):
                self._ready()
            elif isinstance(o, CallUp):
                self.calls += 1
                self.failures = 0
                self.connected = True
                self.last_activity = self.clock.seconds()
                log.info("link {link}: GSM call to {number} up ({rate} bit/s)", link=self.link_name, number=self.dialer.number, rate=o.rate)
                self.master.connection_made(self._bus_write)
                self._notify("connected", where=f"GSM {self.dialer.number}", rate=o.rate)
                if self.idle_hangup_s is not None:
                    self._start_watch(max(0.5, min(self.idle_hangup_s / 10, self.demand_check_s * 10)))
            elif isinstance(o, CallDown):
                self.connected = False
                self._stop_watch()
                log.info("link {link}: GSM call down: {reason}", link=self.link_name, reason=o.reason)
                idle = o.reason == "hang up" and self.running  # our own hang-up of an idle on-demand call
                self.master.connection_lost(f"GSM call down: {o.reason}", deliberate=idle)
                if not self.running:
                    continue  # stopping: observers were told "stopped"
                if idle:
                    self._notify("idle", reason=o.reason)  # not a fault: the next round dials again
                else:
                    self._notify("disconnected", reason=o.reason)
                    self._schedule_retry()
            elif isinstance(o, HungUp):
                if not self._stopped_hangup():
                    self._reinitialise_now()
            elif isinstance(o, Failed):
                if self._stopped_hangup():
                    continue
                self.failures += 1
                log.warn("link {link}: GSM {reason}", link=self.link_name, reason=o.reason)
                if self.dialer.state is DialerState.UNINITIALISED and "did not answer ATH" in o.reason:
                    self._reopen_port(o.reason)
                else:
                    self._schedule_retry()

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        self._run(self.dialer.timer(name))

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    # -- policy
    def _wanted(self) -> bool:
        if self.idle_hangup_s is None:
            return True
        return bool(getattr(self.master, "queued", 0)) or bool(getattr(self.master, "busy", False))

    def _ready(self) -> None:
        if self._wanted():
            self._run(self.dialer.dial())
        else:
            self._start_watch(self.demand_check_s)

    def _reinitialise_now(self) -> None:
        self._run(self.dialer.initialise())

    def _schedule_retry(self) -> None:
        if not self.running or self._retry_call is not None:
            return
        delay = self.retry(max(1, self.failures))
        self._retry_call = self.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_call = None
        self._run(self.dialer.initialise())

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _reopen_port(self, reason: str) -> None:
        port = self.opener.port
        if port is not None:
            port.loseConnection()  # closing drops DTR: the modem hangs up

    def _start_watch(self, interval: float) -> None:
        self._stop_watch()
        self._watch = LoopingCall(self._check)
        self._watch.clock = self.clock
        self._watch.start(interval, now=False)

    def _stop_watch(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None

    def _check(self) -> None:
        state = self.dialer.state
        if state is DialerState.READY and self._wanted():
            self._stop_watch()
            self._run(self.dialer.dial())
        elif state is DialerState.ONLINE and self.idle_hangup_s is not None:
            idle = self.clock.seconds() - self.last_activity
            if idle >= self.idle_hangup_s and not self._wanted():
                log.info("link {link}: GSM call idle for {idle:.0f} s: hanging up", link=self.link_name, idle=idle)
                self._stop_watch()
                self._run(self.dialer.hangup())
