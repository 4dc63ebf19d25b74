"""One GPRS DTU connection: its registration, its proof of identity, then its bus bytes.

:class:`GprsServer` (``gprs.py``) makes one :class:`_DtuSession` per accepted connection.  The
session parses the registration as bytes arrive, checks the source and the proof
(``GprsEndpoint.auth``), takes over an older session of the same DTU, cuts heartbeats out of
the bus stream and drops a silent DTU (the rules are in ``gprs.py``'s module docstring).
It reports to the server's counters, throttle and observers, and to its link's
:class:`GprsLinkService`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.drivers.st2000r.links import reason_text
from st2000r.drivers.st2000r.registration import (
    NONCE_LEN,
    AuthFailed,
    CredentialCheck,
    HeartbeatFilter,
    Registered,
    RegistrationDecoder,
    RegistrationError,
    UnknownDtu,
    auth_challenge,
    ddp_ack,
)

if TYPE_CHECKING:
    from st2000r.drivers.st2000r.gprs import GprsLinkService, GprsServer

__all__ = ["SessionInfo"]

# the server's namespace: a session's lines are the GPRS server's lines, as before the split
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
