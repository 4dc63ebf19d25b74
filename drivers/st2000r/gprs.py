"""The GPRS DTU server: one listening endpoint for every GPRS link.

GPRS DTUs dial *in*.  :class:`GprsServer` listens on one Twisted endpoint
(``SupervisorSettings.gprs_listen``, e.g. ``"tcp:9000"``), identifies each connection by
its registration packet (``registration.py``) and gives its byte pipe to the bus master of
the link whose ``GprsEndpoint.dtu_id`` it named.  Rules:

- **Registration timeout.**  A connection that has not completed a registration within
  ``registration_timeout_s`` is closed (a plain registration still waiting for a possibly
  longer identity is accepted at that moment if it is complete).
- **Unknown identity** (no configured link), malformed packet, refused or mismatched
  format: logged with the peer and closed.  A DDP registration is acknowledged
  (``7B 81 00 10 <ID> 7B``) before any bus byte is sent.
- **Takeover.**  A new registration of an identity that has a session closes the old
  session (the master sees ``connection_lost`` then ``connection_made``): a DTU that lost
  its connection half-open must be able to come back at once.
- **Heartbeats** are cut out of the bus stream by exact packet match anywhere
  (``registration.HeartbeatFilter``); a held-back tail that could start a heartbeat is
  passed to the master if nothing follows within ``hold_s``.
- **Dead DTU.**  No byte at all (bus bytes or heartbeat) for ``dead_after_heartbeats`` x
  the link's ``heartbeat_s`` drops the session: the connection is aborted and the master
  gets ``connection_lost``.
- **Storms.**  Nothing blocks per connection: registration is parsed as bytes arrive, every
  timer is one ``callLater``; hundreds of DTUs reconnecting at once are absorbed (the
  listen backlog is the endpoint's, e.g. ``"tcp:9000:backlog=1024"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import GprsEndpoint, Link
from st2000r.drivers.st2000r.links import LinkObservers, MasterLike, reason_text
from st2000r.drivers.st2000r.registration import (
    FORMATS,
    DtuFormat,
    HeartbeatFilter,
    Registered,
    RegistrationDecoder,
    RegistrationError,
    UnknownDtu,
    ddp_ack,
)

__all__ = ["GprsServer", "GprsLinkService", "SessionInfo", "GprsStats"]

log = Logger(namespace="st2000r.drivers.st2000r.gprs")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One registered DTU session.  Times are ``clock.seconds()``.  ``peer``:
    ``host:port`` of the connection; ``heartbeats``: heartbeats received in this session;
    ``bytes_in``/``bytes_out``: bus bytes (heartbeats and registration excluded)."""

    dtu_id: str
    link: str
    peer: str
    since: float
    last_seen: float
    heartbeats: int
    bytes_in: int
    bytes_out: int


@dataclass(slots=True)
class GprsStats:
    """Server counters since start (mutable record)."""

    connections: int = 0  # TCP connections accepted
    registrations: int = 0  # successful registrations
    unknown: int = 0  # refused: unknown identity
    refused: int = 0  # refused: malformed, wrong format
    registration_timeouts: int = 0
    takeovers: int = 0
    dead: int = 0  # sessions dropped for silence
    heartbeats: int = 0


class GprsLinkService(LinkObservers, Service):
    """The per-link face of a :class:`GprsServer` (what ``link_service`` returns for a GPRS
    link): observers, the current session, and ``stopService`` closing it.  Made by
    :meth:`GprsServer.add_link`."""

    def __init__(self, server: GprsServer, link: Link, master: MasterLike) -> None:
        assert isinstance(link.endpoint, GprsEndpoint)
        self.setName(f"link:{link.name}")
        self.server = server
        self.link = link
        self.link_name = link.name
        self.master = master
        self.endpoint: GprsEndpoint = link.endpoint
        self.format = DtuFormat(link.endpoint.registration, link.endpoint.dtu_id)
        self.session: _DtuSession | None = None
        self.sessions_started = 0

    @property
    def connected(self) -> bool:
        return self.session is not None

    def stopService(self):
        session = self.session
        if session is not None:
            session.close("link service stopped")
        return super().stopService()


class _DtuSession(Protocol):
    """One DTU connection (before and after registration)."""

    def __init__(self, server: GprsServer) -> None:
        self.server = server
        self.clock = server.clock
        self.decoder: RegistrationDecoder | None = RegistrationDecoder(server._known, server.formats)
        # (the decoder knows the links configured when the connection arrived)
        self.handle: GprsLinkService | None = None
        self.filter: HeartbeatFilter | None = None
        self.heartbeat = b""
        self.registration = b""
        self.peer = "?"
        self.since = self.last_seen = self.clock.seconds()
        self.heartbeats = self.bytes_in = self.bytes_out = 0
        self.dead_s = 0.0
        self.closing: str | None = None  # why we are closing it
        self._reg_call: IDelayedCall | None = None
        self._dead_call: IDelayedCall | None = None
        self._hold_call: IDelayedCall | None = None

    # -- connection
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.server.stats.connections += 1
        self.server._conns.add(self)
        self._reg_call = self.clock.callLater(self.server.registration_timeout_s, self._registration_timeout)

    @property
    def current(self) -> bool:
        return self.handle is not None and self.handle.session is self

    def close(self, why: str) -> None:
        """Close the connection now (abort: a dead or replaced peer may never read)."""
        if self.closing is None:
            self.closing = why
        if self.current:
            self._detach(why)
        if self.transport is not None:
            self.transport.abortConnection()

    def _detach(self, why: str) -> None:
        handle = self.handle
        assert handle is not None
        handle.session = None
        self._cancel("_dead_call", "_hold_call")
        handle.master.connection_lost(why)
        handle._notify("disconnected", reason=why, dtu_id=handle.endpoint.dtu_id, peer=self.peer)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.server._conns.discard(self)
        self._cancel("_reg_call", "_dead_call", "_hold_call")
        why = self.closing or (reason_text(reason) if reason is not None else "connection closed")
        if self.current:
            assert self.handle is not None
            log.info("GPRS DTU {dtu} ({peer}) disconnected: {why}", dtu=self.handle.endpoint.dtu_id, peer=self.peer, why=why)
            self._detach(why)

    # -- bytes
    def dataReceived(self, data: bytes) -> None:
        if self.closing is not None:
            return
        self.last_seen = self.clock.seconds()
        if self.decoder is not None:
            try:
                reg = self.decoder.feed(data)
            except UnknownDtu as exc:
                self._refuse(exc, unknown=True)
                return
            except RegistrationError as exc:
                self._refuse(exc, unknown=False)
                return
            if reg is None:
                return
            data = self.decoder.rest
            self._registered(reg)
            if not data or self.closing is not None:
                return
        self._bus_bytes(data)

    def _bus_bytes(self, data: bytes) -> None:
        assert self.filter is not None and self.handle is not None
        master = self.handle.master
        for packet, chunk in self.filter.feed(data):
            if packet is None:
                self.bytes_in += len(chunk)
                master.data_received(chunk)
            elif packet == self.heartbeat:
                self.heartbeats += 1
                self.server.stats.heartbeats += 1
            else:  # a repeated DDP registration: it missed our acknowledgement
                self.transport.write(ddp_ack(self.handle.endpoint.dtu_id))
            if not self.current:  # the master closed us while handling the bytes
                return
        if self.filter.pending:
            if self._hold_call is None:
                self._hold_call = self.clock.callLater(self.server.hold_s, self._release_held)
        else:
            self._cancel("_hold_call")

    def _release_held(self) -> None:
        self._hold_call = None
        if self.current and self.filter is not None and self.filter.pending:
            held = self.filter.flush()
            self.bytes_in += len(held)
            assert self.handle is not None
            self.handle.master.data_received(held)

    def write(self, data: bytes) -> None:
        """The master's byte pipe: sends while this session is the link's current one."""
        if self.current and self.closing is None and self.transport is not None:
            self.bytes_out += len(data)
            self.transport.write(data)

    # -- registration
    def _refuse(self, exc: RegistrationError, *, unknown: bool) -> None:
        self.decoder = None
        if unknown:
            self.server.stats.unknown += 1
        else:
            self.server.stats.refused += 1
        log.warn("GPRS connection from {peer} refused: {error}", peer=self.peer, error=str(exc))
        self.close(str(exc))

    def _registration_timeout(self) -> None:
        self._reg_call = None
        if self.decoder is None or self.closing is not None:
            return
        try:
            reg = self.decoder.finish()
        except UnknownDtu as exc:
            self._refuse(exc, unknown=True)
            return
        except RegistrationError as exc:
            self.server.stats.registration_timeouts += 1
            self.decoder = None
            log.warn(
                "GPRS connection from {peer}: no registration within {s} s ({error}); closing",
                peer=self.peer, s=self.server.registration_timeout_s, error=str(exc),
            )  # fmt: skip
            self.close(f"no registration within {self.server.registration_timeout_s} s")
            return
        rest = self.decoder.rest
        self._registered(reg)
        if rest and self.closing is None:
            self._bus_bytes(rest)

    def _registered(self, reg: Registered) -> None:
        self.decoder = None
        self._cancel("_reg_call")
        server = self.server
        handle = server._links.get(reg.dtu_id)
        if handle is None:  # its link was removed while this connection registered
            self._refuse(UnknownDtu(reg.dtu_id, reg.format or "?"), unknown=True)
            return
        fmt = handle.format
        self.heartbeat = fmt.heartbeat_packet()
        packets = [self.heartbeat]
        if fmt.registration == "ddp":
            self.registration = fmt.registration_packet(reg.ip or "0.0.0.0", reg.port or 0)
            packets.append(self.registration)
        self.filter = HeartbeatFilter(packets)
        old = handle.session
        if old is not None:
            server.stats.takeovers += 1
            log.info(
                "GPRS DTU {dtu} registered again from {peer}: closing its old session from {old}",
                dtu=reg.dtu_id, peer=self.peer, old=old.peer,
            )  # fmt: skip
            old.close(f"taken over by a new registration from {self.peer}")
        server.stats.registrations += 1
        handle.sessions_started += 1
        self.handle = handle
        handle.session = self
        self.since = self.last_seen = self.clock.seconds()
        if fmt.registration == "ddp":
            self.transport.write(ddp_ack(reg.dtu_id))
        log.info("GPRS DTU {dtu} registered from {peer} (link {link})", dtu=reg.dtu_id, peer=self.peer, link=handle.link_name)
        self.dead_s = server.dead_after_heartbeats * handle.endpoint.heartbeat_s
        self._dead_call = self.clock.callLater(self.dead_s, self._check_dead)
        handle.master.connection_made(self.write)
        handle._notify("connected", where=self.peer, dtu_id=reg.dtu_id, peer=self.peer)

    def _check_dead(self) -> None:
        self._dead_call = None
        if not self.current or self.closing is not None:
            return
        idle = self.clock.seconds() - self.last_seen
        if idle >= self.dead_s:
            assert self.handle is not None
            self.server.stats.dead += 1
            why = f"dead DTU: nothing received for {idle:g} s (heartbeat every {self.handle.endpoint.heartbeat_s} s)"
            log.warn("GPRS DTU {dtu} ({peer}): {why}; dropping the session", dtu=self.handle.endpoint.dtu_id, peer=self.peer, why=why)
            self.close(why)
            return
        self._dead_call = self.clock.callLater(self.dead_s - idle, self._check_dead)

    def _cancel(self, *names: str) -> None:
        for name in names:
            call = getattr(self, name)
            if call is not None:
                if call.active():
                    call.cancel()
                setattr(self, name, None)

    def info(self) -> SessionInfo:
        assert self.handle is not None
        return SessionInfo(
            self.handle.endpoint.dtu_id, self.handle.link_name, self.peer, self.since, self.last_seen,
            self.heartbeats, self.bytes_in, self.bytes_out,
        )  # fmt: skip


class _ServerFactory(Factory):
    def __init__(self, server: GprsServer) -> None:
        self.server = server

    def buildProtocol(self, addr) -> Protocol:
        return _DtuSession(self.server)


class GprsServer(Service):
    """One listening endpoint for all GPRS links (the rules in the module docstring).

    ``endpoint_description``: a Twisted server endpoint string (``"tcp:9000"``,
    ``"tcp:0:interface=127.0.0.1"``).  ``reactor``: listens; ``clock``: times registration,
    dead-DTU and hold timers (default: ``reactor``).  ``formats``: registration formats
    accepted.  ``dead_after_heartbeats``: a session silent for this many heartbeat
    intervals is dropped.  ``registration_timeout_s``: seconds a new connection has to
    register.  ``hold_s``: how long a possible heartbeat prefix is held back.

    :meth:`when_listening` fires with the listening port once listening (errbacks with
    ``CannotListenError``); :attr:`port` is the bound TCP port (useful with port 0).
    """

    def __init__(
        self,
        endpoint_description: str,
        reactor,
        *,
        formats: Sequence[str] = ("plain", "ddp", "usr"),
        dead_after_heartbeats: float = 3.0,
        clock: IReactorTime | None = None,
        registration_timeout_s: float = 30.0,
        hold_s: float = 0.5,
    ) -> None:
        for fmt in formats:
            if fmt not in FORMATS:
                raise ValueError(f"GPRS server: registration format {fmt!r} is not one of {', '.join(FORMATS)}")
        if dead_after_heartbeats <= 0:
            raise ValueError("GPRS server: dead_after_heartbeats must be > 0")
        self.setName("gprs-server")
        self.endpoint_description = endpoint_description
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.formats = tuple(formats)
        self.dead_after_heartbeats = dead_after_heartbeats
        self.registration_timeout_s = registration_timeout_s
        self.hold_s = hold_s
        self.stats = GprsStats()
        self._listen_result: object = None  # the port, or a Failure
        self._waiting: list[Deferred] = []
        self._conns: set[_DtuSession] = set()
        self.port: int | None = None
        self._port = None
        self._links: dict[str, GprsLinkService] = {}
        self._known: dict[str, str] = {}

    def add_link(self, link: Link, master: MasterLike) -> GprsLinkService:
        """Serve ``link`` (kind gprs): its DTU identifies itself as ``link.endpoint.dtu_id``.
        Returns the per-link service (put it in the service tree).  Raises ``ValueError``
        for a link that is not GPRS, a DTU id already added, or a format the server does
        not accept."""
        endpoint = link.endpoint
        if not isinstance(endpoint, GprsEndpoint):
            raise ValueError(f"link {link.name!r} is not a GPRS link")
        if endpoint.dtu_id in self._links:
            raise ValueError(f"link {link.name!r}: DTU id {endpoint.dtu_id!r} is already served by link {self._links[endpoint.dtu_id].link_name!r}")
        if endpoint.registration not in self.formats:
            raise ValueError(f"link {link.name!r}: registration format {endpoint.registration!r} is not accepted by this server ({', '.join(self.formats)})")
        handle = GprsLinkService(self, link, master)
        self._links[endpoint.dtu_id] = handle
        self._known[endpoint.dtu_id] = endpoint.registration
        return handle

    def remove_link(self, dtu_id: str) -> None:
        """Stop serving a DTU (its session, if any, is closed)."""
        handle = self._links.pop(dtu_id, None)
        self._known.pop(dtu_id, None)
        if handle is not None and handle.session is not None:
            handle.session.close("link removed")

    def link(self, dtu_id: str) -> GprsLinkService:
        """The per-link service of ``dtu_id``; raises ``KeyError``."""
        return self._links[dtu_id]

    def sessions(self) -> dict[str, SessionInfo]:
        """dtu_id -> its current session, for every registered DTU."""
        return {dtu_id: h.session.info() for dtu_id, h in self._links.items() if h.session is not None}

    def factory(self) -> Factory:
        """The protocol factory behind the listening endpoint (tests, other listeners)."""
        return _ServerFactory(self)

    def startService(self) -> None:
        super().startService()
        endpoint = serverFromString(self.reactor, self.endpoint_description)
        d = endpoint.listen(self.factory())
        d.addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port):
        self._port = port
        host = port.getHost()
        self.port = getattr(host, "port", None)
        log.info("GPRS server listening on {where} for {n} DTUs", where=self.endpoint_description, n=len(self._links))
        self._settle(port)
        return None

    def _cannot_listen(self, failure: Failure):
        log.error("GPRS server cannot listen on {where}: {error}", where=self.endpoint_description, error=reason_text(failure))
        self._settle(failure)
        return None

    def _settle(self, result) -> None:
        self._listen_result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result) if not isinstance(result, Failure) else d.errback(result)

    def stopService(self):
        super().stopService()
        for session in list(self._conns):
            session.close("GPRS server stopped")
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return succeed(None)

    def when_listening(self) -> Deferred:
        """A new Deferred firing with the listening port (or failing with the listen error)."""
        d: Deferred = Deferred()
        result = self._listen_result
        if result is None:
            self._waiting.append(d)
        elif isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        return d
