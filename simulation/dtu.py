"""A GPRS DTU: dials out to the supervisor, registers, heartbeats, carries the bus.

Two halves:

**Formats (sans-I/O, no Twisted)** -- the registration and heartbeat packets of the three
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

**Twisted** -- :class:`DtuClient`, a ``MultiService`` around a ``ClientService`` (reconnect
with ``backoffPolicy``): on every connection it sends the registration packet, for DDP
waits for the acknowledgement (re-sending the registration every ``REGISTER_RETRY_S``),
then attaches the bus and heartbeats every ``heartbeat_s / speedup`` real seconds.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

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

# =========================================================================== formats (sans-I/O)

FORMATS = ("plain", "usr", "ddp")
DDP_ID_LEN = 11
DDP_FLAG = 0x7B
DDP_REGISTER = 0x01
DDP_HEARTBEAT = 0x02
DDP_ACK = 0x81
DDP_REGISTER_LEN = 0x16  # 22 bytes
DDP_SHORT_LEN = 0x10  # 16 bytes: heartbeat and acknowledgement


class DtuFormatError(ValueError):
    """A registration/heartbeat packet that cannot be built or parsed; the message says why."""


def _ddp_id(dtu_id: str) -> bytes:
    raw = dtu_id.encode("ascii", "strict") if dtu_id.isascii() else None
    if raw is None or not raw or len(raw) > DDP_ID_LEN:
        raise DtuFormatError(f"DDP identity {dtu_id!r} must be 1..{DDP_ID_LEN} ASCII characters")
    return raw.ljust(DDP_ID_LEN, b"\x00")


def ddp_register(dtu_id: str, ip: str = "0.0.0.0", port: int = 0) -> bytes:
    """``7B 01 00 16 <ID 11> <IP 4> <port 2> 7B``; raises DtuFormatError for a bad ID/IP."""
    try:
        ip_raw = ipaddress.IPv4Address(ip).packed
    except ValueError:
        ip_raw = bytes(4)  # IPv6 or a name: the DTU reports 0.0.0.0
    if not 0 <= port <= 0xFFFF:
        raise DtuFormatError(f"port {port} is outside 0..65535")
    return bytes((DDP_FLAG, DDP_REGISTER)) + struct.pack(">H", DDP_REGISTER_LEN) + _ddp_id(dtu_id) + ip_raw + struct.pack(">H", port) + bytes((DDP_FLAG,))


def ddp_heartbeat(dtu_id: str) -> bytes:
    """``7B 02 00 10 <ID 11> 7B``."""
    return bytes((DDP_FLAG, DDP_HEARTBEAT)) + struct.pack(">H", DDP_SHORT_LEN) + _ddp_id(dtu_id) + bytes((DDP_FLAG,))


def ddp_ack(dtu_id: str) -> bytes:
    """The server's acknowledgement of a registration: ``7B 81 00 10 <ID 11> 7B``."""
    return bytes((DDP_FLAG, DDP_ACK)) + struct.pack(">H", DDP_SHORT_LEN) + _ddp_id(dtu_id) + bytes((DDP_FLAG,))


@dataclass(frozen=True, slots=True)
class DdpPacket:
    """One parsed DDP packet.  ``kind``: 01h register, 02h heartbeat, 81h acknowledgement.
    ``ip``/``port`` only for a registration (else None)."""

    kind: int
    dtu_id: str
    ip: str | None = None
    port: int | None = None


def parse_ddp(data: bytes) -> tuple[DdpPacket, int] | None:
    """Parse one DDP packet at the start of ``data``.

    Returns ``(packet, bytes used)``, or None when ``data`` is a proper prefix of a packet
    (need more bytes).  Raises DtuFormatError when ``data`` does not start a valid packet
    (wrong flag, unknown type, length not matching the type, missing end flag).
    """
    if not data:
        return None
    if data[0] != DDP_FLAG:
        raise DtuFormatError(f"DDP packet must start with 7Bh, got {data[0]:02X}h")
    if len(data) < 4:
        return None
    kind = data[1]
    length = data[2] << 8 | data[3]
    want = {DDP_REGISTER: DDP_REGISTER_LEN, DDP_HEARTBEAT: DDP_SHORT_LEN, DDP_ACK: DDP_SHORT_LEN}.get(kind)
    if want is None:
        raise DtuFormatError(f"unknown DDP packet type {kind:02X}h")
    if length != want:
        raise DtuFormatError(f"DDP packet type {kind:02X}h must be {want} bytes long, length field says {length}")
    if len(data) < length:
        return None
    if data[length - 1] != DDP_FLAG:
        raise DtuFormatError(f"DDP packet must end with 7Bh, got {data[length - 1]:02X}h")
    dtu_id = data[4 : 4 + DDP_ID_LEN].rstrip(b"\x00").decode("ascii", "replace")
    if kind == DDP_REGISTER:
        ip = str(ipaddress.IPv4Address(data[15:19]))
        port = data[19] << 8 | data[20]
        return DdpPacket(kind, dtu_id, ip, port), length
    return DdpPacket(kind, dtu_id), length


@dataclass(frozen=True, slots=True)
class DtuFormat:
    """The packets one DTU sends.  ``registration``: ``"plain"``, ``"usr"`` or ``"ddp"``.
    ``heartbeat``: the heartbeat bytes for plain/usr (None = the default of the format);
    ignored for DDP.  Construction raises DtuFormatError for an unknown format or an ID
    DDP cannot carry."""

    registration: str
    dtu_id: str
    heartbeat: bytes | None = None

    def __post_init__(self) -> None:
        if self.registration not in FORMATS:
            raise DtuFormatError(f"registration format {self.registration!r} is not one of {', '.join(FORMATS)}")
        if not self.dtu_id:
            raise DtuFormatError("DTU identity must not be empty")
        if self.registration == "ddp":
            _ddp_id(self.dtu_id)
        if self.heartbeat is not None and not self.heartbeat:
            raise DtuFormatError("heartbeat must not be empty")

    def registration_packet(self, ip: str = "0.0.0.0", port: int = 0) -> bytes:
        """What the DTU sends first on every connection (``ip``/``port``: its local address)."""
        if self.registration == "ddp":
            return ddp_register(self.dtu_id, ip, port)
        ident = self.dtu_id.encode("utf-8")
        return ident + b"\r\n" if self.registration == "usr" else ident

    def heartbeat_packet(self) -> bytes:
        if self.registration == "ddp":
            return ddp_heartbeat(self.dtu_id)
        if self.heartbeat is not None:
            return self.heartbeat
        return self.registration_packet()


@dataclass(frozen=True, slots=True)
class Registered:
    """A DTU identified itself.  ``ip``/``port``: as reported in a DDP registration."""

    dtu_id: str
    ip: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    dtu_id: str


@dataclass(frozen=True, slots=True)
class Data:
    """Bus bytes (frames) carried by the DTU, heartbeats removed."""

    data: bytes


class _Stripper:
    """Cuts exact occurrences of ``patterns`` out of a byte stream, holding back a tail that
    could be the start of one.  ``feed`` returns ``[(pattern | None, bytes)]``: None marks
    pass-through data."""

    def __init__(self, patterns: Sequence[bytes]) -> None:
        self.patterns = tuple(p for p in patterns if p)
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[bytes | None, bytes]]:
        buf = self._buf + data
        out: list[tuple[bytes | None, bytes]] = []
        while buf:
            hits = [(buf.find(p), p) for p in self.patterns]
            hits = [(i, p) for i, p in hits if i >= 0]
            if not hits:
                break
            i, p = min(hits, key=lambda h: (h[0], -len(h[1])))
            if i:
                out.append((None, buf[:i]))
            out.append((p, p))
            buf = buf[i + len(p) :]
        keep = 0
        for p in self.patterns:
            for n in range(min(len(p) - 1, len(buf)), keep, -1):
                if buf.endswith(p[:n]):
                    keep = n
                    break
        if len(buf) > keep:
            out.append((None, buf[: len(buf) - keep]))
        self._buf = buf[len(buf) - keep :] if keep else b""
        return out


class UplinkDecoder:
    """Supervisor side of one DTU connection: bytes from the DTU in, events out.

    ``fmt``: the format expected.  ``known_ids``: identities the supervisor accepts; for
    ``plain`` (which has no terminator) the registration is the longest known ID the
    stream starts with, or -- without ``known_ids`` -- every byte of the first chunk fed.
    ``heartbeat``: the plain/usr heartbeat bytes if not the format's default.

    :meth:`feed` returns a list of :class:`Registered`, :class:`Heartbeat` and :class:`Data`
    events; it raises DtuFormatError when the first bytes are not a registration of ``fmt``
    (the supervisor should close the connection).
    """

    def __init__(self, fmt: str, *, known_ids: Sequence[str] = (), heartbeat: bytes | None = None) -> None:
        if fmt not in FORMATS:
            raise DtuFormatError(f"registration format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.known_ids = tuple(known_ids)
        self.heartbeat = heartbeat
        self.dtu_id: str | None = None
        self._head = b""
        self._stripper: _Stripper | None = None

    def feed(self, data: bytes) -> list[Registered | Heartbeat | Data]:
        events: list[Registered | Heartbeat | Data] = []
        if self.dtu_id is None:
            self._head += data
            reg = self._registration()
            if reg is None:
                return events
            event, used = reg
            events.append(event)
            self.dtu_id = event.dtu_id
            fmt = DtuFormat(self.fmt, event.dtu_id, self.heartbeat)
            self._stripper = _Stripper([fmt.heartbeat_packet()])
            data, self._head = self._head[used:], b""
        assert self._stripper is not None
        for pattern, chunk in self._stripper.feed(data):
            events.append(Data(chunk) if pattern is None else Heartbeat(self.dtu_id))
        return events

    def _registration(self) -> tuple[Registered, int] | None:
        head = self._head
        if self.fmt == "ddp":
            parsed = parse_ddp(head)
            if parsed is None:
                return None
            packet, used = parsed
            if packet.kind != DDP_REGISTER:
                raise DtuFormatError(f"expected a DDP registration (01h), got packet type {packet.kind:02X}h")
            return Registered(packet.dtu_id, packet.ip, packet.port), used
        if self.fmt == "usr":
            end = head.find(b"\r\n")
            if end < 0:
                if len(head) > 256:
                    raise DtuFormatError("USR registration: no CR LF within 256 bytes")
                return None
            return Registered(head[:end].decode("utf-8", "replace")), end + 2
        for ident in sorted(self.known_ids, key=len, reverse=True):
            raw = ident.encode("utf-8")
            if head.startswith(raw):
                return Registered(ident), len(raw)
            if raw.startswith(head):
                return None
        if self.known_ids:
            raise DtuFormatError(f"plain registration {head[:40]!r} is none of the known DTU identities")
        return Registered(head.decode("utf-8", "replace")), len(head)


class DownlinkDecoder:
    """DTU side: bytes from the server in; ``feed`` returns ``(acknowledged, bus_bytes)``.

    For DDP, acknowledgement packets for this DTU are removed from the stream and set
    ``acknowledged``; for plain and usr every byte is bus data and ``acknowledged`` is
    always True."""

    def __init__(self, fmt: DtuFormat) -> None:
        self.fmt = fmt
        self._stripper = _Stripper([ddp_ack(fmt.dtu_id)]) if fmt.registration == "ddp" else None

    def feed(self, data: bytes) -> tuple[bool, bytes]:
        if self._stripper is None:
            return True, data
        acked = False
        bus = bytearray()
        for pattern, chunk in self._stripper.feed(data):
            if pattern is None:
                bus += chunk
            else:
                acked = True
        return acked, bytes(bus)


# =========================================================================== Twisted


@dataclass(slots=True)
class DtuStats:
    """Counters of one DTU (mutable, read by the control interface)."""

    connections: int = 0
    registrations: int = 0
    acknowledged: int = 0
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

    def dataReceived(self, data: bytes) -> None:
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
    ``(attempt) -> seconds`` (default: 1 s doubling to 60 s, with jitter).
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
    ) -> None:
        super().__init__()
        self.setName(f"dtu:{link}")
        self.link = link
        self.bus = bus
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.format = DtuFormat(registration, dtu_id, heartbeat)
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
            f"heartbeat every {self.heartbeat_interval:g} s",
        )  # fmt: skip
