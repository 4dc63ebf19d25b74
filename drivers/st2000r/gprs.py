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
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import GprsEndpoint, Link
from st2000r.config.values import listen_interface, with_default_interface
from st2000r.drivers.st2000r.lograte import RateLimitedLog
from st2000r.drivers.st2000r.links import LinkObservers, MasterLike, Observer, reason_text
from st2000r.drivers.st2000r.registration import (
    AUTH_MODES,
    FORMATS,
    NONCE_LEN,
    AuthFailed,
    CredentialCheck,
    DtuFormat,
    HeartbeatFilter,
    Registered,
    RegistrationDecoder,
    RegistrationError,
    UnknownDtu,
    auth_challenge,
    ddp_ack,
)

__all__ = ["GprsServer", "GprsLinkService", "SessionInfo", "GprsStats", "SourceThrottle"]

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
    auth: str = "none"


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


@dataclass(slots=True)
class _Source:
    failures: list[float] = field(default_factory=list)  # times within the window, oldest first
    blocked_until: float = 0.0
    blocks: int = 0  # blocks so far (the next lasts block_s x 2**blocks)
    last: float = 0.0


class SourceThrottle:
    """Failed registrations per source address (sans-I/O: the caller passes the time).

    ``max_failures`` failures within ``window_s`` block the source for ``block_s``
    seconds, doubled for each further block (at most ``max_block_s``); a source quiet for
    ``max_block_s`` starts again from ``block_s``.  At most ``max_sources`` addresses are
    remembered, least recently seen evicted first.
    """

    def __init__(self, *, max_failures: int = 5, window_s: float = 60.0, block_s: float = 60.0,
                 max_block_s: float = 3600.0, max_sources: int = 10_000) -> None:
        if max_failures < 1 or window_s <= 0 or block_s <= 0 or max_block_s < block_s or max_sources < 1:
            raise ValueError("SourceThrottle: max_failures >= 1, window_s > 0, 0 < block_s <= max_block_s, "
                             "max_sources >= 1")
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_block_s = max_block_s
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def blocked(self, source: str, now: float) -> float:
        """Seconds ``source`` is still refused (0 when it is not)."""
        entry = self._sources.get(source)
        if entry is None or entry.blocked_until <= now:
            return 0.0
        return entry.blocked_until - now

    def failure(self, source: str, now: float) -> float:
        """Record a failed registration from ``source``; the seconds of the block it starts,
        or 0 when it starts none."""
        entry = self._sources.pop(source, None)
        if entry is None:
            entry = _Source()
            while len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
        elif now - entry.last > self.max_block_s and entry.blocked_until <= now:
            entry.blocks = 0  # quiet for long: forgiven
        self._sources[source] = entry
        entry.last = now
        if entry.blocked_until > now:
            return 0.0  # already blocked (a connection that was open before the block)
        entry.failures = [t for t in entry.failures if now - t < self.window_s][-(self.max_failures - 1):] + [now] \
            if self.max_failures > 1 else [now]
        if len(entry.failures) < self.max_failures:
            return 0.0
        seconds = min(self.block_s * 2 ** min(entry.blocks, 32), self.max_block_s)
        entry.blocks += 1
        entry.blocked_until = now + seconds
        entry.failures = []
        return seconds


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


class _DtuSession(Protocol):
    """One DTU connection (before and after registration)."""

    def __init__(self, server: GprsServer) -> None:
        self.server = server
        self.clock = server.clock
        self.decoder: RegistrationDecoder | None = RegistrationDecoder(server._known, server.formats, server._passwords)
        # (the decoder knows the links configured when the connection arrived)
        self.check: CredentialCheck | None = None  # the proof stage, after the registration
        self.claimed: GprsLinkService | None = None  # the link it named, while proving it
        self.claim: Registered | None = None
        self.handle: GprsLinkService | None = None
        self.source = "?"  # the peer's address, the throttle's key
        self.peer_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
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
        host = getattr(peer, "host", "?")
        self.peer = f"{host}:{getattr(peer, 'port', '?')}"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        self.peer_ip = ip
        self.source = str(ip) if ip is not None else str(host)
        server = self.server
        server.stats.connections += 1
        if server.throttle.blocked(self.source, self.clock.seconds()):
            server.stats.throttled += 1
            self.decoder = None
            self.closing = "source throttled"
            self.transport.abortConnection()
            return
        server._conns.add(self)
        self._reg_call = self.clock.callLater(server.registration_timeout_s, self._registration_timeout)

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
            except RegistrationError as exc:
                self._refuse(exc)
                return
            if reg is None:
                return
            data = self.decoder.rest
            self.decoder = None
            self._identified(reg)
            if self.closing is not None or not data:
                return
        if self.check is not None:
            try:
                proven = self.check.feed(data)
            except RegistrationError as exc:
                self._refuse(exc)
                return
            if not proven:
                return
            data = self.check.rest
            self.check = None
            self._proven()
            if not data or self.closing is not None:
                return
        if self.handle is None:
            return  # (closed while registering)
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
    def _refuse(self, exc: RegistrationError, *, timeout: bool = False) -> None:
        """Close a connection whose registration failed; count it, tell the observers and
        the throttle."""
        self.decoder = None
        self.check = None
        server = self.server
        dtu: str | None = None
        if isinstance(exc, AuthFailed):
            dtu = exc.dtu_id
            server.stats.auth_failed += 1
            if dtu in server._links:
                server.stats.auth_failed_by_dtu[dtu] = server.stats.auth_failed_by_dtu.get(dtu, 0) + 1
        elif isinstance(exc, UnknownDtu):
            server.stats.unknown += 1
        elif timeout:
            server.stats.registration_timeouts += 1
        else:
            server.stats.refused += 1
        handle = server._links.get(dtu) if dtu is not None else None
        reason = str(exc)
        if timeout and not isinstance(exc, AuthFailed):
            server.limited_log.emit(
                ("timeout", self.source), "warn",
                "GPRS connection from {peer}: no registration within {s} s ({error}); closing",
                peer=self.peer, s=server.registration_timeout_s, error=reason,
            )  # fmt: skip
            reason = f"no registration within {server.registration_timeout_s} s"
        else:
            server.limited_log.emit(("refused", self.source), "warn", "GPRS connection from {peer} refused: {error}",
                                    peer=self.peer, error=reason)
        if handle is not None:
            handle.auth_failures += 1
            handle._notify("auth_failed", dtu=dtu, peer=self.peer, reason=exc.why if isinstance(exc, AuthFailed) else reason)
        server._notify("refused", peer=self.peer, dtu=dtu, reason=reason)
        seconds = server.throttle.failure(self.source, self.clock.seconds())
        if seconds:
            log.warn(
                "GPRS: {source} failed {n} registrations within {window} s: refusing its connections for {s} s",
                source=self.source, n=server.throttle.max_failures, window=server.throttle.window_s, s=seconds,
            )  # fmt: skip
            server._notify("throttled", source=self.source, seconds=seconds, failures=server.throttle.max_failures)
        self.close(reason)

    def _registration_timeout(self) -> None:
        self._reg_call = None
        if self.closing is not None:
            return
        if self.check is not None:
            try:
                self.check.finish()
            except RegistrationError as exc:
                self._refuse(exc, timeout=True)
            return
        if self.decoder is None:
            return
        try:
            reg = self.decoder.finish()
        except RegistrationError as exc:
            self._refuse(exc, timeout=not isinstance(exc, (UnknownDtu, AuthFailed)))
            return
        rest = self.decoder.rest
        self.decoder = None
        self._identified(reg)
        if self.check is not None and self.closing is None:  # identified only now: time for its proof
            self._reg_call = self.clock.callLater(self.server.registration_timeout_s, self._registration_timeout)
        if rest and self.closing is None:
            self.dataReceived(rest)

    def _identified(self, reg: Registered) -> None:
        """The registration named a configured DTU: check its source, then start its proof
        (or accept it, ``auth = "none"``)."""
        handle = self.server._links.get(reg.dtu_id)
        if handle is None:  # its link was removed while this connection registered
            self._refuse(UnknownDtu(reg.dtu_id, reg.format or "?"))
            return
        if not handle.allows(self.peer_ip):
            self._refuse(AuthFailed(reg.dtu_id, f"source address {self.source} is not in allow_from"))
            return
        self.claimed, self.claim = handle, reg
        if handle.auth == "challenge":
            nonce = os.urandom(NONCE_LEN)
            skip = [handle.format.heartbeat_packet()]
            if handle.format.registration == "ddp":
                skip.append(handle.format.registration_packet(reg.ip or "0.0.0.0", reg.port or 0))
            self.check = CredentialCheck(reg.dtu_id, "challenge", handle._secret, nonce=nonce, skip=skip)
            self.transport.write(auth_challenge(nonce))
        elif handle.auth == "password":
            self.check = CredentialCheck(reg.dtu_id, "password", handle._secret, registration=handle.format.registration)
        else:
            self._proven()

    def _proven(self) -> None:
        self._cancel("_reg_call")
        handle, reg = self.claimed, self.claim
        assert handle is not None and reg is not None
        self.claimed = self.claim = None
        server = self.server
        if server._links.get(reg.dtu_id) is not handle:  # removed while it proved itself
            self._refuse(UnknownDtu(reg.dtu_id, reg.format or "?"))
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
            handle.takeovers += 1
            log.warn(
                "GPRS DTU {dtu} registered again from {peer} ({auth}): closing its old session from {old}",
                dtu=reg.dtu_id, peer=self.peer, auth=handle.auth, old=old.peer,
            )  # fmt: skip
            handle._notify("takeover", dtu=reg.dtu_id, peer=self.peer, old_peer=old.peer)
            old.close(f"taken over by a new registration from {self.peer}")
        server.stats.registrations += 1
        handle.sessions_started += 1
        self.handle = handle
        handle.session = self
        self.since = self.last_seen = self.clock.seconds()
        if fmt.registration == "ddp":
            self.transport.write(ddp_ack(reg.dtu_id))
        log.info("GPRS DTU {dtu} registered from {peer} (link {link}, auth {auth})", dtu=reg.dtu_id, peer=self.peer,
                 link=handle.link_name, auth=handle.auth)
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
            self.heartbeats, self.bytes_in, self.bytes_out, self.handle.auth,
        )  # fmt: skip


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
