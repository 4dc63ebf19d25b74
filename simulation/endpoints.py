"""Where the supervisor meets a simulated bus: a pseudo-terminal, a serial device, a TCP port.

Every endpoint is a Twisted ``Service`` that moves bytes between one transport and one
``SimulatedBus`` (``st2000r.simulation.bus``); none of them looks inside the bytes.

- :class:`PtyEndpoint` creates a pseudo-terminal pair (``os.openpty``, raw mode), reads and
  writes the master side through the reactor and keeps the slave side open so that its path
  (:attr:`PtyEndpoint.path`, e.g. ``/dev/pts/7``) stays valid while the supervisor opens,
  closes and reopens it.
- :class:`DeviceEndpoint` opens a real serial device (Twisted ``SerialPort``, pyserial) at
  the link's line settings, for a simulator wired to a real RS485 converter.
- :class:`TcpListenerEndpoint` is a serial-device server: it listens on a TCP port and
  carries the bus over one master connection at a time.  **A new connection replaces the
  current one** (the old one is closed): a supervisor that lost a connection half-open must
  be able to come back, as with the "newest connection wins" mode of common serial servers.

``reactor`` does the I/O; ``clock`` (default: ``reactor``) times link drops.

A ``link_drop`` fault (``bus.on_link_drop``) cuts the endpoint for that many seconds: the
pseudo-terminal and device endpoints discard bytes in both directions; the TCP listener
closes the connection and accepts-then-closes every new one until the drop is over.
"""

from __future__ import annotations

import errno
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet import abstract, fdesc, main
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "BusLike",
    "EndpointInfo",
    "BusProtocol",
    "LinkCut",
    "PtyEndpoint",
    "DeviceEndpoint",
    "TcpListenerEndpoint",
    "SharedBus",
    "PtyPair",
    "pty_info",
]

log = Logger(namespace="st2000r.simulation.endpoints")


class BusLike(TypingProtocol):
    """What an endpoint needs of a ``SimulatedBus``."""

    def connect(self, write: Callable[[bytes], None]) -> None: ...
    def disconnect(self) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def on_link_drop(self, callback: Callable[[float], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """Where the supervisor reaches one link of the simulator.

    ``kind``: ``"pty"``, ``"device"``, ``"tcp"``, ``"dtu"`` or ``"modem"``.  ``where``: the
    path to open (pty, device, modem), ``host:port`` to connect to (tcp), or the
    ``host:port`` the DTU dials (dtu).  ``note``: one human line of extra detail.
    """

    link: str
    kind: str
    where: str
    note: str = ""

    def line(self) -> str:
        """One line for a terminal: ``link -> kind where (note)``."""
        note = f"  ({self.note})" if self.note else ""
        return f"{self.link} -> {self.kind} {self.where}{note}"


class LinkCut:
    """A link drop in progress: ``active`` until ``seconds`` have passed on ``clock``.

    ``start(seconds)`` (re)starts the cut; the longer of two overlapping cuts wins.
    ``on_end`` is called once when a cut ends.
    """

    def __init__(self, clock: IReactorTime, on_end: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._call: IDelayedCall | None = None
        self._until = 0.0
        self._on_end = on_end

    @property
    def active(self) -> bool:
        return self._call is not None

    def start(self, seconds: float) -> None:
        until = self._clock.seconds() + max(0.0, seconds)
        if self._call is not None:
            if until <= self._until:
                return
            self._call.cancel()
        self._until = until
        self._call = self._clock.callLater(max(0.0, seconds), self._end)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _end(self) -> None:
        self._call = None
        if self._on_end is not None:
            self._on_end()


@implementer(IHalfCloseableProtocol)
class BusProtocol(Protocol):
    """Thin adapter: bytes from the transport go to the bus, bus replies to the transport.

    Half-close aware: a TCP client that shuts down its sending side (``socat`` at the end
    of its input) still receives the replies to what it sent.

    ``cut``: while it is active, bytes are discarded both ways.  ``on_lost`` is called with
    this protocol when the connection ends (so a listener can tell whether it was current).
    """

    def __init__(
        self,
        bus: BusLike,
        cut: LinkCut | None = None,
        on_lost: Callable[[BusProtocol], None] | None = None,
    ) -> None:
        self.bus = bus
        self.cut = cut
        self.on_lost = on_lost
        self.attached = False
        self.bytes_in = 0
        self.bytes_out = 0

    def attach(self) -> None:
        """Route the bus's replies to this protocol's transport."""
        self.attached = True
        self.bus.connect(self._write)

    def detach(self) -> None:
        if self.attached:
            self.attached = False
            self.bus.disconnect()

    def connectionMade(self) -> None:
        self.attach()

    def dataReceived(self, data: bytes) -> None:
        if not self.attached or (self.cut is not None and self.cut.active):
            return
        self.bytes_in += len(data)
        self.bus.data_received(data)

    def _write(self, data: bytes) -> None:
        if self.transport is None or (self.cut is not None and self.cut.active):
            return
        self.bytes_out += len(data)
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        """The peer will send nothing more; keep writing replies until it closes."""

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = main.CONNECTION_DONE) -> None:
        if self.on_lost is not None:
            self.on_lost(self)
        else:
            self.detach()


# --------------------------------------------------------------------------- pty


class _FdTransport(abstract.FileDescriptor):
    """A reactor-driven, non-blocking read/write transport over one file descriptor."""

    def __init__(self, fd: int, protocol: Protocol, reactor) -> None:
        super().__init__(reactor)
        self._fd = fd
        self.protocol = protocol
        fdesc.setNonBlocking(fd)
        self.connected = 1
        protocol.makeConnection(self)
        self.startReading()

    def fileno(self) -> int:
        return self._fd

    def doRead(self):
        return fdesc.readFromFD(self._fd, self.protocol.dataReceived)

    def writeSomeData(self, data: bytes):
        try:
            return os.write(self._fd, data)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return 0
            return main.CONNECTION_LOST

    def connectionLost(self, reason: Failure) -> None:
        abstract.FileDescriptor.connectionLost(self, reason)
        self.protocol.connectionLost(reason)

    def getHost(self):  # pragma: no cover - informational only
        return None

    getPeer = getHost


class PtyPair:
    """A pseudo-terminal pair in raw mode.  ``path`` is the slave's name (what a serial
    client opens); ``master`` is the fd the simulator reads and writes.  Both fds stay open
    until :meth:`close`, so ``path`` stays valid while clients come and go.

    ``link_dir`` and ``name``: also create the symlink ``link_dir/name`` -> ``path``
    (:attr:`symlink`; ``link_dir`` is created if missing, a stale symlink of that name is
    replaced, any other file there is an error), removed again by :meth:`close`.  Every
    endpoint on a pseudo-terminal gets its stable path this way.
    """

    def __init__(self, link_dir: str | None = None, name: str | None = None) -> None:
        self.master, self.slave = os.openpty()
        self.symlink: str | None = None
        try:
            tty.setraw(self.slave)
            tty.setraw(self.master)
            self.path = os.ttyname(self.slave)
            if link_dir is not None:
                if not name:
                    raise ValueError("a pseudo-terminal symlink needs a name")
                os.makedirs(link_dir, exist_ok=True)
                symlink = os.path.join(link_dir, name)
                if os.path.islink(symlink):
                    os.unlink(symlink)
                os.symlink(self.path, symlink)
                self.symlink = symlink
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.symlink is not None:
            try:
                os.unlink(self.symlink)
            except OSError:
                pass
            self.symlink = None
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class PtyEndpoint(Service):
    """Serve ``bus`` on a new pseudo-terminal.  :attr:`path` is set by ``startService``.

    ``link_dir``: if given, a symlink ``link_dir/<link>`` to the pty is created (and removed
    on stop) so a supervisor configuration can name a stable path (see :class:`PtyPair`).
    """

    kind = "pty"

    def __init__(
        self,
        link: str,
        bus: BusLike,
        reactor,
        *,
        link_dir: str | None = None,
        note: str = "",
        clock: IReactorTime | None = None,
    ) -> None:
        self.setName(f"pty:{link}")
        self.link = link
        self.bus = bus
        self.reactor = reactor
        self.link_dir = link_dir
        self.note = note
        self.path: str | None = None
        self.symlink: str | None = None
        self.pair: PtyPair | None = None
        self.transport: _FdTransport | None = None
        self.cut = LinkCut(clock if clock is not None else reactor)
        self.protocol: BusProtocol | None = None

    def startService(self) -> None:
        super().startService()
        self.pair = PtyPair(self.link_dir, self.link)
        self.path, self.symlink = self.pair.path, self.pair.symlink
        self.protocol = self._make_protocol()
        self.transport = _FdTransport(self.pair.master, self.protocol, self.reactor)
        self.bus.on_link_drop(self._drop)
        log.info("link {link}: pseudo-terminal {path}", link=self.link, path=self.path)

    def _make_protocol(self) -> Protocol:
        return BusProtocol(self.bus, self.cut)

    def _drop(self, seconds: float) -> None:
        log.info("link {link}: dropped for {seconds} s", link=self.link, seconds=seconds)
        self.cut.start(seconds)

    def stopService(self):
        self.cut.cancel()
        if self.transport is not None:
            self.transport.stopReading()
            self.transport.stopWriting()
            self.transport = None
        if self.protocol is not None and isinstance(self.protocol, BusProtocol):
            self.protocol.detach()
        if self.pair is not None:
            self.pair.close()  # removes the symlink too
            self.pair = None
        self.symlink = None
        return super().stopService()

    def info(self) -> EndpointInfo:
        return pty_info(self.link, self.kind, self.path, self.symlink, self.note)


def pty_info(link: str, kind: str, path: str | None, symlink: str | None, note: str) -> EndpointInfo:
    """Where a pty endpoint is reached: its symlink (``note`` then names the pty) or its pty."""
    if symlink:
        return EndpointInfo(link, kind, symlink, f"-> {path}" + (f"; {note}" if note else ""))
    return EndpointInfo(link, kind, path or "(not started)", note)


# --------------------------------------------------------------------------- device


class DeviceEndpoint(Service):
    """Serve ``bus`` on an existing serial ``device`` at the link's line settings
    (``st2000r.config.model.LineSettings``).  ``startService`` raises ``OSError``
    (from pyserial's ``SerialException``) when the device cannot be opened."""

    kind = "device"

    def __init__(self, link: str, bus: BusLike, reactor, device: str, line, *, clock: IReactorTime | None = None) -> None:
        self.setName(f"device:{link}")
        self.link = link
        self.bus = bus
        self.reactor = reactor
        self.device = device
        self.line = line
        self.cut = LinkCut(clock if clock is not None else reactor)
        self.port = None
        self.protocol: BusProtocol | None = None

    def startService(self) -> None:
        import serial
        from twisted.internet.serialport import SerialPort

        self.protocol = BusProtocol(self.bus, self.cut)
        try:
            self.port = SerialPort(
                self.protocol,
                self.device,
                self.reactor,
                baudrate=self.line.baud,
                bytesize=self.line.bytesize,
                parity=self.line.parity,
                stopbits=self.line.stopbits,
            )
        except serial.SerialException as exc:
            raise OSError(f"link {self.link}: cannot open serial device {self.device}: {exc}") from None
        self.bus.on_link_drop(self.cut.start)
        super().startService()

    def stopService(self):
        self.cut.cancel()
        if self.port is not None:
            self.port.loseConnection()
            self.port = None
        return super().stopService()

    def info(self) -> EndpointInfo:
        line = self.line
        return EndpointInfo(
            self.link, self.kind, self.device,
            f"{line.baud} {line.bytesize}{line.parity}{line.stopbits}",
        )  # fmt: skip


# --------------------------------------------------------------------------- TCP


class _ListenerFactory(Factory):
    noisy = False

    def __init__(self, endpoint: TcpListenerEndpoint) -> None:
        self.endpoint = endpoint

    def buildProtocol(self, addr) -> Protocol:
        return self.endpoint._new_connection(addr)


class _Refuse(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


class TcpListenerEndpoint(Service):
    """A serial-device server for ``bus`` on ``host``:``port`` (0 = any free port; the
    bound port is :attr:`port` after ``startService``).  One master connection at a time:
    a new connection replaces the current one.  ``startService`` raises
    ``twisted.internet.error.CannotListenError`` when the port is taken."""

    kind = "tcp"

    def __init__(
        self,
        link: str,
        bus: BusLike,
        reactor,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: IReactorTime | None = None,
    ) -> None:
        self.setName(f"tcp:{link}")
        self.link = link
        self.bus = bus
        self.reactor = reactor
        self.host = host
        self.port = port
        self.listening = None
        self.current: BusProtocol | None = None
        self.cut = LinkCut(clock if clock is not None else reactor)
        self.connections = 0

    def startService(self) -> None:
        self.listening = self.reactor.listenTCP(self.port, _ListenerFactory(self), interface=self.host)
        self.port = self.listening.getHost().port
        self.bus.on_link_drop(self._drop)
        super().startService()
        log.info("link {link}: serial-device server on {host}:{port}", link=self.link, host=self.host, port=self.port)

    def _new_connection(self, addr) -> Protocol:
        if self.cut.active:
            return _Refuse()
        self.connections += 1
        old = self.current
        proto = BusProtocol(self.bus, self.cut, on_lost=self._lost)
        self.current = proto
        if old is not None:
            log.info("link {link}: new connection from {addr} replaces the current one", link=self.link, addr=addr)
            old.attached = False
            if old.transport is not None:
                old.transport.loseConnection()
        return proto

    def _lost(self, proto: BusProtocol) -> None:
        if proto is self.current:
            self.current = None
            proto.detach()

    def _drop(self, seconds: float) -> None:
        log.info("link {link}: dropped for {seconds} s", link=self.link, seconds=seconds)
        self.cut.start(seconds)
        if self.current is not None and self.current.transport is not None:
            self.current.transport.loseConnection()

    def stopService(self):
        self.cut.cancel()
        super().stopService()
        if self.current is not None and self.current.transport is not None:
            self.current.transport.loseConnection()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None

    def info(self) -> EndpointInfo:
        return EndpointInfo(self.link, self.kind, f"{self.host}:{self.port}", "serial-device server, newest connection wins")


# --------------------------------------------------------------------------- several endpoints, one bus


class SharedBus:
    """Lets several endpoints serve one bus (e.g. a pty and a TCP listener for the same
    link): each gets a :meth:`port`; the bus's replies go to the port that wrote to the bus
    last, as on an RS485 bus where the master that asked hears the answer.  A link drop
    reaches every port."""

    def __init__(self, bus: BusLike) -> None:
        self.bus = bus
        self._owner: _BusPort | None = None
        self._drop_callbacks: list[Callable[[float], None]] = []
        bus.on_link_drop(self._drop)

    def port(self) -> _BusPort:
        return _BusPort(self)

    def _drop(self, seconds: float) -> None:
        for callback in list(self._drop_callbacks):
            callback(seconds)

    def _take(self, port: _BusPort) -> None:
        if self._owner is not port:
            self._owner = port
            self.bus.connect(port._deliver)

    def _release(self, port: _BusPort) -> None:
        if self._owner is port:
            self._owner = None
            self.bus.disconnect()


class _BusPort:
    """One endpoint's view of a :class:`SharedBus` (implements :class:`BusLike`)."""

    def __init__(self, shared: SharedBus) -> None:
        self.shared = shared
        self._write: Callable[[bytes], None] | None = None

    def connect(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self.shared._take(self)

    def disconnect(self) -> None:
        self._write = None
        self.shared._release(self)

    def data_received(self, data: bytes) -> None:
        if self._write is not None:
            self.shared._take(self)
        self.shared.bus.data_received(data)

    def on_link_drop(self, callback: Callable[[float], None]) -> None:
        self.shared._drop_callbacks.append(callback)

    def _deliver(self, data: bytes) -> None:
        if self._write is not None:
            self._write(data)

    def __getattr__(self, name: str):
        return getattr(self.shared.bus, name)
