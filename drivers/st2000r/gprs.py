"""The GPRS DTU server: one listening endpoint for every GPRS link.

GPRS DTUs dial *in*.  :class:`GprsServer` listens on one Twisted endpoint
(``SupervisorSettings.gprs_listen``, e.g. ``"tcp:9000"``), identifies each connection by
its registration packet (``registration.py``), checks that it proves the identity it
claims, and only then gives its byte pipe to the bus master of the link whose
``GprsEndpoint.dtu_id`` it named.  Rules:

- **Bind.**  A ``tcp``/``tcp6``/``ssl`` endpoint that names no ``interface=`` listens on
  loopback only (``127.0.0.1``, ``::1``): every other interface must be configured.
- **Throttle.**  A source address with ``max_failures`` failed registrations within
  ``failure_window_s`` is refused for ``block_s`` seconds, doubled on every block that
  follows (up to ``max_block_s``): its connections are closed on arrival, before a byte is
  read.  The table of sources holds at most ``max_sources`` addresses, least recently
  seen evicted first, so the table itself cannot be grown by an attacker.
- **Registration timeout.**  A connection that has not completed its registration *and
  proof* within ``registration_timeout_s`` is closed (a plain registration still waiting
  for a possibly longer identity is accepted at that moment if it is complete).
- **Unknown identity** (no configured link), malformed packet, refused or mismatched
  format: logged with the peer and closed.
- **Proof of identity** (``GprsEndpoint.auth``, ``allow_from``): the source address must be
  in the link's ``allow_from`` networks (when it has any); ``challenge``: the server sends a
  nonce and the DTU must answer HMAC-SHA256(secret, nonce || id); ``password``: the
  registration packet carries the secret; ``none``: the id alone.  A registration that
  fails is refused (closed), counted (:attr:`GprsStats.auth_failed` and
  :attr:`GprsLinkService.auth_failures`), reported to the link's observers as
  ``("auth_failed", ...)`` and counts towards the throttle.  A DDP registration is
  acknowledged (``7B 81 00 10 <ID> 7B``) only after its proof, before any bus byte.
- **Takeover.**  A new registration *that proved its identity* of a DTU that has a session
  closes the old session (the master sees ``connection_lost`` then ``connection_made``): a
  DTU that lost its connection half-open must be able to come back at once.  It is
  counted, logged and reported as ``("takeover", ...)`` before the old session closes.
  With ``auth = "none"`` and no ``allow_from`` the id alone is the proof: whoever can reach
  the port can take the link -- that is what the configuration said.
- **Heartbeats** are cut out of the bus stream by exact packet match anywhere
  (``registration.HeartbeatFilter``); a held-back tail that could start a heartbeat is
  passed to the master if nothing follows within ``hold_s``.
- **Dead DTU.**  No byte at all (bus bytes or heartbeat) for ``dead_after_heartbeats`` x
  the link's ``heartbeat_s`` drops the session: the connection is aborted and the master
  gets ``connection_lost``.
- **Storms.**  Nothing blocks per connection: registration is parsed as bytes arrive, every
  timer is one ``callLater``; hundreds of DTUs reconnecting at once are absorbed (the
  listen backlog is the endpoint's, e.g. ``"tcp:9000:backlog=1024"``).

Modules: this one holds the listening service, its counters and the per-link face;
``gprs_session.py`` one DTU connection (registration, proof, heartbeats, dead DTU);
``gprs_throttle.py`` the sans-I/O throttle of failing source addresses.

Observer events (``(event, details)``; details always carry ``"link"`` on a link's channel):

=================  ======================================================================
link channel       ``("connected", {"where", "dtu_id", "peer"})``,
(GprsLinkService)  ``("disconnected", {"reason", "dtu_id", "peer"})``,
                   ``("takeover", {"dtu", "peer", "old_peer"})`` -- a proven registration
                   replaced a live session; ``("auth_failed", {"dtu", "peer", "reason"})``
                   -- a registration naming this link's DTU failed its proof or allow_from
server channel     ``("refused", {"peer", "dtu", "reason"})`` for every refused or timed-out
(GprsServer)       registration (``dtu`` None when it named no configured DTU);
                   ``("throttled", {"source", "seconds", "failures"})`` when a source
                   address starts being refused
=================  ======================================================================
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import GprsEndpoint, Link
from st2000r.config.values import listen_interface, with_default_interface
from st2000r.drivers.st2000r.gprs_session import SessionInfo, _DtuSession
from st2000r.drivers.st2000r.gprs_throttle import SourceThrottle
from st2000r.drivers.st2000r.lograte import RateLimitedLog
from st2000r.drivers.st2000r.links import LinkObservers, MasterLike, Observer, reason_text
from st2000r.drivers.st2000r.registration import AUTH_MODES, FORMATS, DtuFormat

__all__ = ["GprsServer", "GprsLinkService", "SessionInfo", "GprsStats", "SourceThrottle"]

log = Logger(namespace="st2000r.drivers.st2000r.gprs")


@dataclass(slots=True)
class GprsStats:
    """Server counters since start (mutable record).  Every refused registration counts in
    exactly one of ``unknown``, ``refused``, ``auth_failed``, ``registration_timeouts``."""

    connections: int = 0  # TCP connections accepted (throttled ones included)
    registrations: int = 0  # successful registrations (identity proven)
    unknown: int = 0  # refused: unknown identity
    refused: int = 0  # refused: malformed, wrong format
    auth_failed: int = 0  # refused: a configured DTU's proof failed (or its source is not allowed)
    throttled: int = 0  # connections closed on arrival: their source is throttled
    registration_timeouts: int = 0
    takeovers: int = 0
    dead: int = 0  # sessions dropped for silence
    heartbeats: int = 0
    #: dtu_id -> failed proofs; only configured DTU ids are keys (bounded by the configuration)
    auth_failed_by_dtu: dict[str, int] = field(default_factory=dict)


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
        self.auth = link.endpoint.auth
        self._secret = link.endpoint.secret.encode("ascii") if link.endpoint.secret else b""
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in link.endpoint.allow_from)
        self.session: _DtuSession | None = None
        self.sessions_started = 0
        self.auth_failures = 0  # registrations naming this DTU that failed their proof
        self.takeovers = 0

    def allows(self, peer_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        """True if a connection from ``peer_ip`` may register for this link (``allow_from``)."""
        if not self.networks:
            return True
        if peer_ip is None:
            return False
        return any(peer_ip.version == net.version and peer_ip in net for net in self.networks)

    @property
    def connected(self) -> bool:
        return self.session is not None

    def stopService(self):
        session = self.session
        if session is not None:
            session.close("link service stopped")
        return super().stopService()


class _ServerFactory(Factory):
    def __init__(self, server: GprsServer) -> None:
        self.server = server

    def buildProtocol(self, addr) -> Protocol:
        return _DtuSession(self.server)


class GprsServer(Service):
    """One listening endpoint for all GPRS links (the rules in the module docstring).

    ``endpoint_description``: a Twisted server endpoint string (``"tcp:9000"``,
    ``"tcp:0:interface=0.0.0.0"``); without ``interface=`` a TCP endpoint listens on
    loopback (:attr:`listen_description` is what is listened on).  ``reactor``: listens; ``clock``: times registration,
    dead-DTU and hold timers (default: ``reactor``).  ``formats``: registration formats
    accepted.  ``dead_after_heartbeats``: a session silent for this many heartbeat
    intervals is dropped.  ``registration_timeout_s``: seconds a new connection has to
    register (and prove it).  ``hold_s``: how long a possible heartbeat prefix is held
    back.  ``max_failures``, ``failure_window_s``, ``block_s``, ``max_block_s``,
    ``max_sources``: the throttle of failing source addresses (:class:`SourceThrottle`).

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
        max_failures: int = 5,
        failure_window_s: float = 60.0,
        block_s: float = 60.0,
        max_block_s: float = 3600.0,
        max_sources: int = 10_000,
    ) -> None:
        for fmt in formats:
            if fmt not in FORMATS:
                raise ValueError(f"GPRS server: registration format {fmt!r} is not one of {', '.join(FORMATS)}")
        if dead_after_heartbeats <= 0:
            raise ValueError("GPRS server: dead_after_heartbeats must be > 0")
        self.setName("gprs-server")
        #: as configured; :attr:`listen_description` is what is listened on
        self.configured_description = endpoint_description
        self.endpoint_description = self.listen_description = with_default_interface(endpoint_description)
        self.interface = listen_interface(self.listen_description)
        self.throttle = SourceThrottle(max_failures=max_failures, window_s=failure_window_s, block_s=block_s,
                                       max_block_s=max_block_s, max_sources=max_sources)
        #: refusals an outsider can repeat at will: a few lines a minute per source, then a count
        self.limited_log = RateLimitedLog(log, clock if clock is not None else reactor)
        self._observer_list: list[Observer] = []
        self._passwords: set[str] = set()
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
        """Serve ``link`` (kind gprs): its DTU identifies itself as ``link.endpoint.dtu_id``
        and proves it as ``link.endpoint.auth`` says.  Returns the per-link service (put it
        in the service tree).  Raises ``ValueError`` for a link that is not GPRS, a DTU id
        already added, a format the server does not accept, or an inconsistent ``auth``
        (challenge/password without a secret, a secret with ``none``, password with DDP, an
        ``allow_from`` entry that is not a network)."""
        endpoint = link.endpoint
        if not isinstance(endpoint, GprsEndpoint):
            raise ValueError(f"link {link.name!r} is not a GPRS link")
        if endpoint.auth not in AUTH_MODES:
            raise ValueError(f"link {link.name!r}: auth {endpoint.auth!r} is not one of {', '.join(AUTH_MODES)}")
        if (endpoint.auth == "none") != (not endpoint.secret):
            raise ValueError(f"link {link.name!r}: auth {endpoint.auth!r} needs a secret exactly when it is "
                             "challenge or password")
        if endpoint.auth == "password" and endpoint.registration == "ddp":
            raise ValueError(f"link {link.name!r}: a DDP registration carries no password")
        if endpoint.secret and not endpoint.secret.isascii():
            raise ValueError(f"link {link.name!r}: the secret must be ASCII")
        if endpoint.dtu_id in self._links:
            raise ValueError(f"link {link.name!r}: DTU id {endpoint.dtu_id!r} is already served by link {self._links[endpoint.dtu_id].link_name!r}")
        if endpoint.registration not in self.formats:
            raise ValueError(f"link {link.name!r}: registration format {endpoint.registration!r} is not accepted by this server ({', '.join(self.formats)})")
        handle = GprsLinkService(self, link, master)  # (ValueError for a bad allow_from entry)
        self._links[endpoint.dtu_id] = handle
        self._known[endpoint.dtu_id] = endpoint.registration
        if endpoint.auth == "password":
            self._passwords.add(endpoint.dtu_id)
        if endpoint.auth == "none" and not endpoint.allow_from:
            log.warn("GPRS link {link}: auth \"none\" without allow_from: any connection that names DTU {dtu} "
                     "gets the link", link=link.name, dtu=endpoint.dtu_id)
        return handle

    def remove_link(self, dtu_id: str) -> None:
        """Stop serving a DTU (its session, if any, is closed)."""
        handle = self._links.pop(dtu_id, None)
        self._known.pop(dtu_id, None)
        self._passwords.discard(dtu_id)
        if handle is not None and handle.session is not None:
            handle.session.close("link removed")

    def link(self, dtu_id: str) -> GprsLinkService:
        """The per-link service of ``dtu_id``; raises ``KeyError``."""
        return self._links[dtu_id]

    def sessions(self) -> dict[str, SessionInfo]:
        """dtu_id -> its current session, for every registered DTU."""
        return {dtu_id: h.session.info() for dtu_id, h in self._links.items() if h.session is not None}

    def add_observer(self, fn: Observer) -> Callable[[], None]:
        """Call ``fn(event, details)`` for server-wide events (``"refused"``,
        ``"throttled"``: the table in the module docstring); returns a function that
        removes it.  Per-link events go to each :class:`GprsLinkService`'s observers."""
        self._observer_list.append(fn)

        def remove() -> None:
            if fn in self._observer_list:
                self._observer_list.remove(fn)

        return remove

    def _notify(self, event: str, **details: Any) -> None:
        for fn in list(self._observer_list):
            try:
                fn(event, details)
            except Exception:
                log.failure("GPRS server: observer failed on {event}", event=event)

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
        where = self.listen_description
        if self.interface in ("0.0.0.0", "::"):
            log.warn("GPRS server listening on every interface ({where}, as configured) for {n} DTUs",
                     where=where, n=len(self._links))
        else:
            log.info("GPRS server listening on {where} for {n} DTUs", where=where, n=len(self._links))
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
