"""Field links: the byte pipes between a bus master and a field bus.

A link service owns one transport to one field bus and hands it to the link's bus master
(``st2000r.drivers.st2000r.master.BusMaster``, or anything with the same three methods):

- ``master.connection_made(write)`` when the byte pipe is up (``write(bytes)`` sends to the
  bus), ``master.data_received(bytes)`` for every chunk of bus bytes, and
  ``master.connection_lost(reason)`` when it drops.  Exactly one ``connection_lost`` follows
  each ``connection_made``; the services never call ``connection_made`` twice in a row.
- Link-state observers (:meth:`LinkObservers.add_observer`) get ``(event, details)``:
  ``("connected", {"link", "where"})``, ``("disconnected", {"link", "reason"})``,
  ``("stopped", {"link"})`` and, for GSM, ``("signal", {"link", "csq"})`` (0..31, 99 =
  unknown).  An observer that raises is logged and ignored.
- A deliberate stop is not a fault: ``stopService`` notifies ``stopped`` *before* it closes
  the transport (so it comes before the master's own report of the lost pipe), and the
  pipe that closes because of the stop brings no ``disconnected``.  The master still gets
  its ``connection_lost``.

Kinds (``config.model.Link.kind``):

- ``serial``: :class:`SerialLinkService` -- Twisted ``SerialPort`` on ``SerialEndpoint.device``
  with the link's ``LineSettings``; reopened with back-off when the device fails to open or
  disappears (logged once per transition, not per attempt).
- ``tcp``: :class:`TcpLinkService` -- raw TCP to a serial-device server through
  ``twisted.application.internet.ClientService`` + ``backoffPolicy``.
- ``gprs``: a :class:`~st2000r.drivers.st2000r.gprs.GprsLinkService` registered with the
  shared :class:`~st2000r.drivers.st2000r.gprs.GprsServer` (the DTU dials in).
- ``gsm``: :class:`~st2000r.drivers.st2000r.gsm.GsmLinkService` -- the local modem, dialling.

:func:`link_service` picks the right one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol as TypingProtocol

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import IService, Service
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import Link, SerialEndpoint, TcpEndpoint

if TYPE_CHECKING:  # pragma: no cover
    from st2000r.drivers.st2000r.gprs import GprsServer

__all__ = [
    "MasterLike",
    "Observer",
    "LinkObservers",
    "LinkProtocol",
    "SerialLinkService",
    "TcpLinkService",
    "link_service",
    "default_retry",
]

log = Logger(namespace="st2000r.drivers.st2000r.links")

Observer = Callable[[str, dict], None]


class MasterLike(TypingProtocol):
    """What a link needs of a bus master."""

    def connection_made(self, write: Callable[[bytes], None]) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, reason: str = "", *, deliberate: bool = False) -> None: ...


def default_retry() -> Callable[[int], float]:
    """Back-off between reconnection attempts: 1 s doubling to 60 s, with jitter."""
    return backoffPolicy(initialDelay=1.0, factor=2.0, maxDelay=60.0)


def reason_text(reason: Any) -> str:
    """A one-line reason from a ``Failure``, an exception or a string."""
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, BaseException):
        text = str(reason) or type(reason).__name__
        return text.splitlines()[0] if text else type(reason).__name__
    return str(reason)


class LinkObservers:
    """Link-state observers of one link (mixin).  ``link_name`` names the link in details."""

    link_name: str

    def _observers(self) -> list[Observer]:
        try:
            return self.__dict__["_observer_list"]
        except KeyError:
            lst: list[Observer] = []
            self.__dict__["_observer_list"] = lst
            return lst

    def add_observer(self, fn: Observer) -> Callable[[], None]:
        """Call ``fn(event, details)`` on every link-state change; returns a function that
        removes it."""
        observers = self._observers()
        observers.append(fn)

        def remove() -> None:
            if fn in observers:
                observers.remove(fn)

        return remove

    def _notify(self, event: str, **details: Any) -> None:
        details = {"link": self.link_name, **details}
        for fn in list(self._observers()):
            try:
                fn(event, details)
            except Exception:
                log.failure("link {link}: observer failed on {event}", link=self.link_name, event=event)


class LinkProtocol(Protocol):
    """Thin adapter between one transport and a master: ``connectionMade`` hands the master
    ``transport.write``, ``dataReceived`` feeds it, ``connectionLost`` reports the reason.
    ``on_up(protocol)`` / ``on_down(protocol, reason)`` let the owning service observe."""

    def __init__(
        self,
        master: MasterLike,
        on_up: Callable[[LinkProtocol], None] | None = None,
        on_down: Callable[[LinkProtocol, str], None] | None = None,
    ) -> None:
        self.master = master
        self.on_up = on_up
        self.on_down = on_down
        self.up = False
        self.bytes_in = 0
        self.bytes_out = 0

    def connectionMade(self) -> None:
        self.up = True
        self.master.connection_made(self.write)
        if self.on_up is not None:
            self.on_up(self)

    def write(self, data: bytes) -> None:
        if self.up and self.transport is not None:
            self.bytes_out += len(data)
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.up:
            self.bytes_in += len(data)
            self.master.data_received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.up:
            return
        self.up = False
        text = reason_text(reason) if reason is not None else "connection closed"
        self.master.connection_lost(text)
        if self.on_down is not None:
            self.on_down(self, text)


# --------------------------------------------------------------------------- serial


class SerialOpener:
    """Keeps a serial device open: opens it, and after a failure to open or a loss of the
    device reopens it after ``retry(attempt)`` seconds on ``clock``.

    ``open_port(protocol)`` opens the device and returns the port (raises ``OSError`` or
    ``serial.SerialException`` on failure).  ``describe``: the device, for logs.  Failures
    are logged once per transition (up -> failing), with the attempt count on recovery.
    """

    def __init__(
        self,
        name: str,
        describe: str,
        open_port: Callable[[Protocol], Any],
        make_protocol: Callable[[], Protocol],
        clock: IReactorTime,
        retry: Callable[[int], float],
    ) -> None:
        self.name = name
        self.describe = describe
        self.open_port = open_port
        self.make_protocol = make_protocol
        self.clock = clock
        self.retry = retry
        self.port: Any = None
        self.protocol: Protocol | None = None
        self.failures = 0  # consecutive failed attempts
        self.opens = 0
        self.running = False
        self._call: IDelayedCall | None = None
        self._failing_logged = False

    def start(self) -> None:
        self.running = True
        self._attempt()

    def stop(self) -> None:
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        port, self.port = self.port, None
        if port is not None:
            try:
                port.loseConnection()
            except Exception:  # pragma: no cover - closing a dead port
                pass

    def _attempt(self) -> None:
        self._call = None
        if not self.running:
            return
        protocol = self.make_protocol()
        try:
            self.port = self.open_port(protocol)
        except Exception as exc:  # OSError, serial.SerialException (an IOError), ValueError
            self.port = None
            self.failures += 1
            delay = self.retry(self.failures)
            if not self._failing_logged:
                self._failing_logged = True
                log.warn(
                    "{name}: cannot open {device}: {error}; retrying with back-off",
                    name=self.name, device=self.describe, error=reason_text(exc),
                )  # fmt: skip
            self._call = self.clock.callLater(delay, self._attempt)
            return
        self.protocol = protocol
        self.opens += 1
        if self._failing_logged:
            log.info("{name}: {device} open again after {n} failed attempts", name=self.name, device=self.describe, n=self.failures)
        else:
            log.info("{name}: {device} open", name=self.name, device=self.describe)
        self._failing_logged = False
        self.failures = 0

    def lost(self, reason: str) -> None:
        """The open device went away: reopen after back-off (call from connectionLost)."""
        self.port = None
        if not self.running:
            return
        log.warn("{name}: lost {device}: {reason}; reopening with back-off", name=self.name, device=self.describe, reason=reason)
        self._failing_logged = True
        self.failures += 1
        self._call = self.clock.callLater(self.retry(self.failures), self._attempt)


def open_serial(device: str, line_baud: int, bytesize: int, parity: str, stopbits: int, reactor) -> Callable[[Protocol], Any]:
    """An ``open_port`` for :class:`SerialOpener`: a Twisted ``SerialPort`` at these line
    settings (``parity`` ``"N"``/``"E"``/``"O"``)."""

    def open_port(protocol: Protocol):
        from twisted.internet.serialport import SerialPort

        return SerialPort(
            protocol, device, reactor,
            baudrate=line_baud, bytesize=bytesize, parity=parity, stopbits=stopbits,
        )  # fmt: skip

    return open_port


class SerialLinkService(LinkObservers, Service):
    """A link on a local serial port (``SerialEndpoint``), at the link's line settings.

    ``clock``: times the reopen back-off (default: ``reactor``).  ``retry``: back-off policy
    ``(attempt) -> seconds`` (default :func:`default_retry`).  ``open_port``: replaces the
    Twisted ``SerialPort`` (tests).  :attr:`connected` is True while the device is open.
    """

    def __init__(
        self,
        link: Link,
        master: MasterLike,
        reactor,
        *,
        clock: IReactorTime | None = None,
        retry: Callable[[int], float] | None = None,
        open_port: Callable[[Protocol], Any] | None = None,
    ) -> None:
        if not isinstance(link.endpoint, SerialEndpoint):
            raise ValueError(f"link {link.name!r}: a serial link needs a serial endpoint, not {link.kind}")
        self.setName(f"link:{link.name}")
        self.link = link
        self.link_name = link.name
        self.master = master
        self.reactor = reactor
        device = link.endpoint.device
        line = link.line
        if open_port is None:
            open_port = open_serial(device, line.baud, line.bytesize, line.parity, line.stopbits, reactor)
        self.opener = SerialOpener(
            f"link {link.name}", device, open_port, self._protocol,
            clock if clock is not None else reactor, retry if retry is not None else default_retry(),
        )  # fmt: skip
        self.connected = False

    def _protocol(self) -> Protocol:
        return LinkProtocol(self.master, self._up, self._down)

    def _up(self, protocol: LinkProtocol) -> None:
        self.connected = True
        self._notify("connected", where=self.link.endpoint.device)

    def _down(self, protocol: LinkProtocol, reason: str) -> None:
        self.connected = False
        if not self.running:
            return  # closed by stopService: observers were told "stopped"
        self._notify("disconnected", reason=reason)
        self.opener.lost(reason)

    def startService(self) -> None:
        super().startService()
        self.opener.start()

    def stopService(self):
        was_running = self.running
        d = super().stopService()
        if was_running:
            self._notify("stopped")
        self.opener.stop()
        return d


# --------------------------------------------------------------------------- TCP


class _LinkFactory(Factory):
    def __init__(self, service: TcpLinkService) -> None:
        self.service = service

    def buildProtocol(self, addr) -> Protocol:
        return LinkProtocol(self.service.master, self.service._up, self.service._down)


class TcpLinkService(LinkObservers, Service):
    """A link to a serial-device server (``TcpEndpoint``): raw TCP carrying the bus bytes,
    kept up by a ``ClientService`` with ``backoffPolicy`` (never ``ReconnectingClientFactory``).

    ``clock``: times the back-off (default: ``reactor``).  ``retry``: back-off policy.
    ``endpoint``: an ``IStreamClientEndpoint`` to use instead of
    ``HostnameEndpoint(reactor, host, port)`` (tests).
    """

    def __init__(
        self,
        link: Link,
        master: MasterLike,
        reactor,
        *,
        clock: IReactorTime | None = None,
        retry: Callable[[int], float] | None = None,
        endpoint=None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if not isinstance(link.endpoint, TcpEndpoint):
            raise ValueError(f"link {link.name!r}: a TCP link needs a TCP endpoint, not {link.kind}")
        self.setName(f"link:{link.name}")
        self.link = link
        self.link_name = link.name
        self.master = master
        self.where = f"{link.endpoint.host}:{link.endpoint.port}"
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, link.endpoint.host, link.endpoint.port, timeout=connect_timeout_s)
        self.client = ClientService(
            endpoint, _LinkFactory(self),
            retryPolicy=retry if retry is not None else default_retry(),
            clock=clock if clock is not None else reactor,
        )  # fmt: skip
        self.connected = False
        self.connections = 0

    def _up(self, protocol: LinkProtocol) -> None:
        self.connected = True
        self.connections += 1
        log.info("link {link}: connected to {where}", link=self.link_name, where=self.where)
        self._notify("connected", where=self.where)

    def _down(self, protocol: LinkProtocol, reason: str) -> None:
        self.connected = False
        if not self.running:
            return  # closed by stopService: observers were told "stopped"
        log.warn("link {link}: lost {where}: {reason}; reconnecting with back-off", link=self.link_name, where=self.where, reason=reason)
        self._notify("disconnected", reason=reason)

    def startService(self) -> None:
        super().startService()
        self.client.startService()

    def stopService(self):
        was_running = self.running
        super().stopService()
        if was_running:
            self._notify("stopped")
        return self.client.stopService()


# --------------------------------------------------------------------------- factory


def link_service(
    link: Link, master: MasterLike, clock_reactor, *, gprs_server: GprsServer | None = None, **options: Any
) -> IService:
    """The service that carries ``link``'s bus to ``master``.

    ``clock_reactor``: the reactor (also its clock).  serial -> :class:`SerialLinkService`,
    tcp -> :class:`TcpLinkService`, gsm -> ``gsm.GsmLinkService``, gprs -> the per-link
    service of ``gprs_server.add_link`` (the server itself must be in the service tree too).
    ``options`` go to the service's constructor (e.g. ``retry=``, GSM ``idle_hangup_s=``;
    none for GPRS).  Raises ``ValueError`` for a GPRS link without a server, or an unknown
    kind; ``TypeError`` for an option the service does not take.
    """
    if link.kind == "serial":
        return SerialLinkService(link, master, clock_reactor, **options)
    if link.kind == "tcp":
        return TcpLinkService(link, master, clock_reactor, **options)
    if link.kind == "gprs":
        if gprs_server is None:
            raise ValueError(
                f"link {link.name!r} is a GPRS link but no GPRS server is configured "
                "(set [supervisor] gprs_listen)"
            )
        if options:
            raise TypeError(f"link {link.name!r}: a GPRS link takes no options, got {', '.join(sorted(options))}")
        return gprs_server.add_link(link, master)
    if link.kind == "gsm":
        from st2000r.drivers.st2000r.gsm import GsmLinkService

        return GsmLinkService(link, master, clock_reactor, **options)
    raise ValueError(f"link {link.name!r}: unknown link kind {link.kind!r}")
