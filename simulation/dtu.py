"""A GPRS DTU: dials out to the supervisor, registers, heartbeats, carries the bus.

Two halves:

**Formats (sans-I/O, no Twisted; defined in ``st2000r.drivers.st2000r.registration``)** --
the registration and heartbeat packets of the three
``registration`` formats a ``GprsEndpoint`` names, their encoders, and stream decoders for
both directions, so the supervisor's side of a DTU session reuses exactly this code::

    format  registration (DTU -> server, once on connect)      heartbeat (every heartbeat_s)
    plain   <ID>                          (ASCII, no framing)   <heartbeat> (default: <ID>)
    usr     <ID> CR LF                                          <heartbeat> (default: <ID> CR LF)
    ddp     7B 01 00 16 <ID 11> <IP 4> <port 2> 7B              7B 02 00 10 <ID 11> 7B
            server acknowledges: 7B 81 00 10 <ID 11> 7B

The DDP ID is 11 bytes of ASCII padded with 00h (longer IDs are refused); IP and port are
the DTU's local address as seen on its socket, big-endian.  The 2-byte length field counts
the whole packet.  A heartbeat may come between any two bytes of the bus stream (a DTU
does not know where frames end); :class:`UplinkDecoder` removes it wherever it falls.

**Proof of identity** (``GprsEndpoint.auth``): ``password`` -- the registration packet is
``<ID> <secret>`` (plain) or ``<ID> <secret> CR LF`` (usr); ``challenge`` -- after its
registration the DTU waits for the server's challenge ``7B 83 00 15 <nonce 16> 7B`` and
answers ``7B 03 00 25 <HMAC-SHA256(secret, nonce || id)> 7B`` before it carries any bus
byte (DDP: then waits for the acknowledgement as usual); ``none`` -- the registration alone.

**Twisted** -- :class:`DtuClient`, a ``MultiService`` around a ``ClientService`` (reconnect
with ``backoffPolicy``): on every connection it sends the registration packet, answers a
challenge, for DDP waits for the acknowledgement (re-sending the registration every
``REGISTER_RETRY_S`` until a challenge or the acknowledgement comes), then attaches the bus
and heartbeats every ``heartbeat_s / speedup`` real seconds.  :meth:`DtuClient.for_link`
builds one from a link's ``GprsEndpoint`` (secret included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from st2000r.drivers.st2000r.registration import (
    DDP_ID_LEN,
    FORMATS,
    Data,
    DdpPacket,
    DownlinkDecoder,
    DtuFormat,
    DtuFormatError,
    Heartbeat,
    Registered,
    RegistrationError,
    UplinkDecoder,
    auth_response,
    challenge_proof,
    ddp_ack,
    ddp_heartbeat,
    ddp_register,
    parse_challenge,
    parse_ddp,
)
from st2000r.simulation.endpoints import BusLike, EndpointInfo

__all__ = [
    "FORMATS",
    "DDP_ID_LEN",
    "DtuFormatError",
    "DtuFormat",
    "DdpPacket",
    "Registered",
    "Heartbeat",
    "Data",
    "ddp_register",
    "ddp_heartbeat",
    "ddp_ack",
    "parse_ddp",
    "UplinkDecoder",
    "DownlinkDecoder",
    "DtuStats",
    "DtuClient",
]

log = Logger(namespace="st2000r.simulation.dtu")

# =========================================================================== Twisted


@dataclass(slots=True)
class DtuStats:
    """Counters of one DTU (mutable, read by the control interface)."""

    connections: int = 0
    registrations: int = 0
    acknowledged: int = 0
    challenges: int = 0  # challenges answered
    heartbeats: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    connected: bool = False
    dropped_until: float | None = None


class _DtuProtocol(Protocol):
    def __init__(self, client: DtuClient) -> None:
        self.client = client
        self.decoder = DownlinkDecoder(client.format)
        self.online = False
        self.challenged = client.auth == "challenge"  # waiting for the server's challenge
        self._challenge = b""
        self._register: LoopingCall | None = None
        self._heartbeat: LoopingCall | None = None

    # -- connection
    def connectionMade(self) -> None:
        c = self.client
        c.stats.connections += 1
        c.stats.connected = True
        c._protocol = self
        if c.format.registration == "ddp":
            self._register = LoopingCall(self._send_registration)
            self._register.clock = c.clock
            self._register.start(c.register_retry_s, now=True)
        else:
            self._send_registration()
            if not self.challenged:
                self._go_online()

    def _send_registration(self) -> None:
        host = self.transport.getHost()
        packet = self.client.format.registration_packet(getattr(host, "host", "0.0.0.0"), getattr(host, "port", 0))
        self.client.stats.registrations += 1
        self.transport.write(packet)

    def _go_online(self) -> None:
        c = self.client
        if self._register is not None and self._register.running:
            self._register.stop()
        self.online = True
        self._heartbeat = LoopingCall(self._send_heartbeat)
        self._heartbeat.clock = c.clock
        self._heartbeat.start(c.heartbeat_interval, now=False)
        c.bus.connect(self._from_bus)
        log.info("DTU {dtu} online to {target}", dtu=c.format.dtu_id, target=c.target_text)

    def _send_heartbeat(self) -> None:
        self.client.stats.heartbeats += 1
        self.transport.write(self.client.format.heartbeat_packet())

    def _from_bus(self, data: bytes) -> None:
        if self.transport is not None and self.online:
            self.client.stats.bytes_up += len(data)
            self.transport.write(data)

    def _answer(self, data: bytes) -> bytes | None:
        """Collect the challenge; answer it.  The bytes after it, or None while waiting."""
        c = self.client
        self._challenge += data
        try:
            parsed = parse_challenge(self._challenge)
        except RegistrationError as exc:
            log.warn("DTU {dtu}: {error} from the server; hanging up", dtu=c.format.dtu_id, error=str(exc))
            self.transport.abortConnection()
            return None
        if parsed is None:
            return None
        nonce, used = parsed
        rest, self._challenge = self._challenge[used:], b""
        self.challenged = False
        if self._register is not None and self._register.running:
            self._register.stop()
        c.stats.challenges += 1
        self.transport.write(auth_response(challenge_proof(c.secret, nonce, c.format.dtu_id)))
        if c.format.registration != "ddp":
            self._go_online()
        return rest

    def dataReceived(self, data: bytes) -> None:
        if self.challenged:
            rest = self._answer(data)
            if not rest:
                return
            data = rest
        acked, bus = self.decoder.feed(data)
        if acked:
            if not self.online:
                self.client.stats.acknowledged += 1
                self._go_online()
        if bus and self.online:
            self.client.stats.bytes_down += len(bus)
            self.client.bus.data_received(bus)

    def connectionLost(self, reason=None) -> None:
        for loop in (self._register, self._heartbeat):
            if loop is not None and loop.running:
                loop.stop()
        c = self.client
        if c._protocol is self:
            c._protocol = None
            c.stats.connected = False
        if self.online:
            self.online = False
            c.bus.disconnect()
            log.info("DTU {dtu} offline", dtu=c.format.dtu_id)


class _DtuFactory(Factory):
    def __init__(self, client: DtuClient) -> None:
        self.client = client

    def buildProtocol(self, addr) -> Protocol:
        return _DtuProtocol(self.client)


class DtuClient(MultiService):
    """A DTU for ``bus`` dialling ``host``:``port``.

    ``clock``: time for heartbeats, registration retries, back-off and link drops
    (default: ``reactor``).  ``heartbeat_s``: world seconds between heartbeats, divided by
    ``speedup`` for real time (at least ``MIN_HEARTBEAT_S``).  ``endpoint``: an ``IStreamClientEndpoint`` to dial instead of
    ``HostnameEndpoint(reactor, host, port)`` (tests).  ``retry``: a back-off policy
    ``(attempt) -> seconds`` (default: 1 s doubling to 60 s, with jitter).  ``auth`` and
    ``secret``: how it proves its identity (``"challenge"``/``"password"`` need the
    secret; ``"none"``: the registration alone), as the link's ``GprsEndpoint`` says.
    Raises ``DtuFormatError`` for a format/auth combination that cannot be sent.
    """

    kind = "dtu"
    REGISTER_RETRY_S = 10.0
    MIN_HEARTBEAT_S = 1.0  # a large --speedup must not flood the supervisor

    def __init__(
        self,
        link: str,
        bus: BusLike,
        reactor,
        *,
        dtu_id: str,
        registration: str,
        heartbeat_s: float,
        host: str,
        port: int,
        clock: IReactorTime | None = None,
        speedup: float = 1.0,
        heartbeat: bytes | None = None,
        endpoint=None,
        retry: Callable[[int], float] | None = None,
        auth: str = "none",
        secret: str | bytes | None = None,
    ) -> None:
        super().__init__()
        self.setName(f"dtu:{link}")
        self.link = link
        self.bus = bus
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        if auth not in ("challenge", "password", "none"):
            raise DtuFormatError(f"auth {auth!r} is not one of challenge, password, none")
        raw = secret.encode("utf-8") if isinstance(secret, str) else secret
        if (auth != "none") != bool(raw):
            raise DtuFormatError(f"auth {auth!r} needs a secret exactly when it is challenge or password")
        self.auth = auth
        self.secret = raw or b""
        self.format = DtuFormat(registration, dtu_id, heartbeat, raw if auth == "password" else None)
        self.heartbeat_interval = max(self.MIN_HEARTBEAT_S, heartbeat_s / speedup)
        self.register_retry_s = min(self.REGISTER_RETRY_S, self.heartbeat_interval)
        self.host, self.port = host, port
        self.target_text = f"{host}:{port}"
        self.endpoint = endpoint if endpoint is not None else HostnameEndpoint(reactor, host, port)
        self.retry = retry if retry is not None else backoffPolicy(initialDelay=1.0, factor=2.0, maxDelay=60.0)
        self.stats = DtuStats()
        self._protocol: _DtuProtocol | None = None
        self._client: ClientService | None = None
        self._drop_call = None

    @classmethod
    def for_link(cls, link, bus: BusLike, reactor, *, host: str, port: int, **options) -> DtuClient:
        """The DTU of ``link`` (a ``config.model.Link`` of kind gprs): its id, registration
        format, heartbeat, auth and secret from ``link.endpoint``; ``options`` as for the
        constructor (``clock``, ``speedup``, ``retry`` ...)."""
        ep = link.endpoint
        return cls(
            link.name, bus, reactor, dtu_id=ep.dtu_id, registration=ep.registration, heartbeat_s=ep.heartbeat_s,
            host=host, port=port, auth=ep.auth, secret=ep.secret, **options,
        )  # fmt: skip

    def _new_client(self) -> ClientService:
        client = ClientService(self.endpoint, _DtuFactory(self), retryPolicy=self.retry, clock=self.clock)
        client.setName("client")
        return client

    def startService(self) -> None:
        self._client = self._new_client()
        self._client.setServiceParent(self)
        self.bus.on_link_drop(self.drop)
        super().startService()

    def drop(self, seconds: float) -> None:
        """Hang up and stay offline for ``seconds`` (real seconds), then dial again."""
        log.info("DTU {dtu}: link dropped for {s} s", dtu=self.format.dtu_id, s=seconds)
        if self._drop_call is not None and self._drop_call.active():
            self._drop_call.cancel()
        if self._client is not None:
            client, self._client = self._client, None
            client.disownServiceParent()
        self.stats.dropped_until = self.clock.seconds() + seconds
        self._drop_call = self.clock.callLater(seconds, self._redial)

    def _redial(self) -> None:
        self._drop_call = None
        self.stats.dropped_until = None
        if self.running and self._client is None:
            self._client = self._new_client()
            self._client.setServiceParent(self)

    def stopService(self):
        if self._drop_call is not None and self._drop_call.active():
            self._drop_call.cancel()
        self._drop_call = None
        return super().stopService()

    def info(self) -> EndpointInfo:
        return EndpointInfo(
            self.link, self.kind, self.target_text,
            f"dials out as {self.format.dtu_id!r}, {self.format.registration} registration, "
            f"auth {self.auth}, heartbeat every {self.heartbeat_interval:g} s",
        )  # fmt: skip
