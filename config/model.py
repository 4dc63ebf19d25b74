"""The typed topology model: what a validated configuration file becomes.

Every object is a frozen, slotted dataclass holding tuples, so a ``Topology`` can be shared
between services and compared with ``==`` on reload.  The wide ones (more than five fields:
``Link``, ``Summary``, ``SupervisorSettings``, ``Topology``) are keyword-only, so a field
added later cannot silently shift the meaning of positional arguments.  The loader (``st2000r.config.loader``)
is the only producer; it guarantees the invariants stated here, the classes do not re-check
them.

Invariants guaranteed by the loader:

- quantities are integers of a base unit: water and gas in litres (L), electricity in
  watt-hours (Wh); ``pulse_constant`` is base units per pulse (>= 1), ``initial`` >= 0;
- ``Meter.serial`` is exactly 14 ASCII digits (the meter's CJ/T 188 address, zero-padded)
  and unique within its link;
- CDTs are sorted by ``address`` (1..99999999, unique per link, at most 256 per link);
  modules by ``number`` (1..32, unique per CDT); channels by ``number`` (1..3, unique per
  module);
- repeater names are unique per link, a parent exists on the same link and has no parent
  itself (at most 2 levels), at most 32 CDTs name a repeater;
- link names are unique across the whole file.
"""

from __future__ import annotations

import datetime as _dt
import enum
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

__all__ = [
    "MeterKind",
    "Meter",
    "Channel",
    "Module",
    "Cdt",
    "Repeater",
    "LineSettings",
    "SerialEndpoint",
    "TcpEndpoint",
    "GprsEndpoint",
    "AUTH_MODES",
    "GsmEndpoint",
    "Endpoint",
    "Link",
    "Site",
    "Topology",
    "Summary",
    "summarize",
    "LINK_KINDS",
    "ReadingPlan",
    "DEFAULT_PLANS",
    "PLAN_KINDS",
    "Interlocks",
    "Operator",
    "ROLES",
    "SupervisorSettings",
    "ModbusSettings",
    "ModbusRtuSettings",
    "HistorianSettings",
    "ApiSettings",
]

#: link kinds, in the order summaries list them
LINK_KINDS: tuple[str, ...] = ("serial", "tcp", "gprs", "gsm")


class MeterKind(enum.Enum):
    """What a pulse meter measures.  ``value`` is the spelling used in configuration files."""

    WATER = "water"
    ELECTRICITY = "electricity"
    GAS = "gas"

    @property
    def base_unit(self) -> str:
        """The integer base unit of readings and pulse constants: ``"L"`` or ``"Wh"``."""
        return "Wh" if self is MeterKind.ELECTRICITY else "L"


@dataclass(frozen=True, slots=True)
class Meter:
    """A pulse meter on one module channel.

    ``pulse_constant``: base units per pulse (>= 1).  ``serial``: 14 ASCII digits, the
    meter's CJ/T 188 address.  ``initial``: reading at commissioning, base units (>= 0).
    ``household``: the household reference the meter bills to, or None.
    """

    kind: MeterKind
    pulse_constant: int
    serial: str
    initial: int
    household: str | None


@dataclass(frozen=True, slots=True)
class Channel:
    """Input ``number`` (1..3) of a function module and the meter wired to it."""

    number: int
    meter: Meter


@dataclass(frozen=True, slots=True)
class Module:
    """Function module ``number`` (1..32) of a CDT; ``channels`` sorted by number."""

    number: int
    channels: tuple[Channel, ...]


@dataclass(frozen=True, slots=True)
class Cdt:
    """A CDT smart data terminal.

    ``address``: 1..99999999.  ``repeater``: name of the repeater the CDT sits behind on
    its link, or None when it is on the link's own bus segment.  ``slot``: the CDT's
    register block on the Modbus map (0..255, unique per link), or None to let the map
    lock file assign it once (see docs/modbus-map.md).
    """

    address: int
    name: str | None
    repeater: str | None
    modules: tuple[Module, ...]
    slot: int | None = None

    @property
    def bcd_address(self) -> str:
        """The CDT's CJ/T 188 address: ``address`` as 14 decimal digits, zero-padded."""
        return f"{self.address:014d}"

    def meters(self) -> Iterator[tuple[int, int, Meter]]:
        """Yield ``(module_number, channel_number, meter)`` in module, then channel order."""
        for module in self.modules:
            number = module.number
            for channel in module.channels:
                yield number, channel.number, channel.meter

    def module(self, number: int) -> Module:
        """The module with this number; raises ``KeyError`` if the CDT has none."""
        for module in self.modules:
            if module.number == number:
                return module
        raise KeyError(f"CDT {self.address} has no module {number}")


@dataclass(frozen=True, slots=True)
class Repeater:
    """An RS485 repeater on a link.  ``parent``: the repeater it hangs behind, or None
    (first level).  ``latency_ms``: added one-way delay in milliseconds (>= 0)."""

    name: str
    parent: str | None
    latency_ms: int


@dataclass(frozen=True, slots=True)
class LineSettings:
    """Asynchronous serial framing of the RS485 field bus.

    ``baud`` in bit/s; ``bytesize`` 7 or 8; ``parity`` ``"N"``, ``"E"`` or ``"O"``;
    ``stopbits`` 1 or 2.
    """

    baud: int
    bytesize: int
    parity: str
    stopbits: int

    @property
    def bits_per_byte(self) -> int:
        """Bits on the wire per byte: 1 start + data + parity (0 or 1) + stop.  8E1 -> 11."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits


@dataclass(frozen=True, slots=True)
class SerialEndpoint:
    """A local serial port (``device`` path, e.g. ``/dev/ttyUSB0``) wired to the bus
    through an RS232/USB -> RS485 converter."""

    device: str


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    """A serial-device server: raw TCP to ``host``:``port`` (1..65535), bus behind it."""

    host: str
    port: int


#: how a GPRS DTU proves its identity (``GprsEndpoint.auth``), strongest first
AUTH_MODES: tuple[str, ...] = ("challenge", "password", "none")


@dataclass(frozen=True, slots=True)
class GprsEndpoint:
    """A GPRS DTU that connects in to the supervisor and registers as ``dtu_id``.

    ``registration``: ``"plain"``, ``"ddp"`` or ``"usr"`` (the registration packet
    format); ``heartbeat_s``: expected heartbeat interval in seconds.

    ``auth``: how the registration proves identity (``AUTH_MODES``): ``"challenge"`` (the
    server sends a nonce, the DTU answers HMAC-SHA256(secret, nonce || id)),
    ``"password"`` (the registration packet carries ``secret`` in clear; plain/usr only),
    ``"none"`` (the id alone, optionally limited by ``allow_from``).  ``secret``: the
    shared secret (set exactly when ``auth`` is challenge or password; left out of
    ``repr``).  ``allow_from``: normalised networks (``"10.0.0.0/8"``) the connection must
    come from, or ``()`` for any source.  The loader guarantees these are consistent and
    that ``auth = "none"`` without ``allow_from`` was written explicitly.
    """

    dtu_id: str
    registration: str
    heartbeat_s: int
    auth: str = "none"
    secret: str | None = field(default=None, repr=False)
    allow_from: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GsmEndpoint:
    """A GSM data call: the local ``modem`` (serial device, at ``modem_baud`` bit/s)
    dials ``number`` (digits, optional leading ``+``)."""

    modem: str
    number: str
    modem_baud: int


Endpoint = SerialEndpoint | TcpEndpoint | GprsEndpoint | GsmEndpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """One field bus and how the supervisor reaches it.

    ``kind``: ``"serial"``, ``"tcp"``, ``"gprs"`` or ``"gsm"`` (matches the ``endpoint``
    type).  ``line``: framing of the RS485 bus itself (for a remote bus it is used for
    timing).  ``turnaround_ms``: device turnaround delay in ms.  ``di_order``: ``"901F"``
    or ``"1F90"``, the byte order used when sending data identifiers.  ``cdts`` sorted by
    address.  ``gap_ms``: idle time the master leaves on the bus before each request, in
    ms (finite, >= 0), or None for the automatic max(3.5 character times, 5 ms).
    """

    name: str
    kind: str
    endpoint: Endpoint
    line: LineSettings
    turnaround_ms: int
    di_order: str
    repeaters: tuple[Repeater, ...]
    cdts: tuple[Cdt, ...]
    gap_ms: float | None = None

    def cdt(self, address: int) -> Cdt:
        """The CDT with this address (O(log n)); raises ``KeyError`` if absent."""
        i = bisect_left(self.cdts, address, key=attrgetter("address"))
        if i < len(self.cdts) and self.cdts[i].address == address:
            return self.cdts[i]
        raise KeyError(f"link {self.name!r} has no CDT {address}")

    def repeater(self, name: str) -> Repeater:
        """The repeater with this name; raises ``KeyError`` if absent."""
        for repeater in self.repeaters:
            if repeater.name == name:
                return repeater
        raise KeyError(f"link {self.name!r} has no repeater {name!r}")

    def meters(self) -> Iterator[tuple[int, int, int, Meter]]:
        """Yield ``(cdt_address, module_number, channel_number, meter)`` in address order."""
        for cdt in self.cdts:
            address = cdt.address
            for module_no, channel_no, meter in cdt.meters():
                yield address, module_no, channel_no, meter

    def module_count(self) -> int:
        """Number of function modules on the link."""
        return sum(len(cdt.modules) for cdt in self.cdts)

    def meter_count(self) -> int:
        """Number of meters (occupied channels) on the link."""
        return sum(len(module.channels) for cdt in self.cdts for module in cdt.modules)


@dataclass(frozen=True, slots=True)
class Site:
    """A residential community served by one area server."""

    name: str
    address: str
    links: tuple[Link, ...]

    def summary(self) -> Summary:
        """Counts for this site alone (``Summary.sites == 1``)."""
        return summarize((self,))


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """Counts over some sites.  ``links_by_kind`` has every kind of ``LINK_KINDS`` and
    ``meters_by_kind`` every ``MeterKind`` as keys, zero when absent."""

    sites: int
    links: int
    links_by_kind: dict[str, int]
    repeaters: int
    cdts: int
    modules: int
    meters: int
    meters_by_kind: dict[MeterKind, int]


def summarize(sites: Iterable[Site]) -> Summary:
    """Count sites, links (by kind), repeaters, CDTs, modules and meters (by kind)."""
    links_by_kind = dict.fromkeys(LINK_KINDS, 0)
    meters_by_kind = dict.fromkeys(MeterKind, 0)
    n_sites = n_links = n_repeaters = n_cdts = n_modules = n_meters = 0
    for site in sites:
        n_sites += 1
        for link in site.links:
            n_links += 1
            links_by_kind[link.kind] = links_by_kind.get(link.kind, 0) + 1
            n_repeaters += len(link.repeaters)
            n_cdts += len(link.cdts)
            for cdt in link.cdts:
                n_modules += len(cdt.modules)
                for module in cdt.modules:
                    n_meters += len(module.channels)
                    for channel in module.channels:
                        meters_by_kind[channel.meter.kind] += 1
    return Summary(
        sites=n_sites,
        links=n_links,
        links_by_kind=links_by_kind,
        repeaters=n_repeaters,
        cdts=n_cdts,
        modules=n_modules,
        meters=n_meters,
        meters_by_kind=meters_by_kind,
    )


#: reading plan kinds: a full read (bulk counts of every fitted channel) or a status round
PLAN_KINDS: tuple[str, ...] = ("full", "status")

#: operator roles, least to most privileged
ROLES: tuple[str, ...] = ("viewer", "operator", "engineer", "admin")


@dataclass(frozen=True, slots=True)
class ReadingPlan:
    """When the supervisor reads the field (``[[plans]]``).

    ``kind``: ``"full"`` (bulk read of every fitted channel) or ``"status"`` (alarms and
    CDT status).  ``at``: daily local wall-clock times, sorted, unique.  ``every_s``: a
    period in seconds (>= 1), or None.  At least one of ``at``/``every_s`` is given.
    ``links``: names of the links the plan applies to, or None for every link.
    """

    name: str
    kind: str
    at: tuple[_dt.time, ...]
    every_s: int | None
    links: tuple[str, ...] | None

    def applies_to(self, link: str) -> bool:
        """True if this plan runs on the link named ``link``."""
        return self.links is None or link in self.links

    def describe(self) -> str:
        """One line for humans, e.g. ``"full at 02:00"`` or ``"status every 300 s on bus1"``."""
        parts = [self.kind]
        if self.at:
            parts.append("at " + ", ".join(t.strftime("%H:%M:%S" if t.second else "%H:%M") for t in self.at))
        if self.every_s is not None:
            parts.append(f"every {self.every_s} s")
        if self.links is not None:
            parts.append("on " + ", ".join(self.links))
        return " ".join(parts)


#: the plans used when a file has no ``[[plans]]``: a full read daily at 02:00 and a
#: status round every 5 minutes, on every link
DEFAULT_PLANS: tuple[ReadingPlan, ...] = (
    ReadingPlan("daily-full", "full", (_dt.time(2, 0),), None, None),
    ReadingPlan("status", "status", (), 300, None),
)


@dataclass(frozen=True, slots=True)
class Interlocks:
    """Safety rules of the command path (``[interlocks]``).

    ``protected_households``: household references whose meters are never closed (opening
    is always allowed).  ``max_closes_per_minute``: valve closes allowed per link in any
    sliding 60 s window (0 = closing disabled).
    """

    protected_households: frozenset[str]
    max_closes_per_minute: int


@dataclass(frozen=True, slots=True)
class Operator:
    """A person or service allowed to use the supervisor (``[[operators]]``).

    ``role``: one of ``ROLES``.  ``password_hash``: an argon2 hash string
    (``"$argon2..."``), or None.
    """

    name: str
    role: str
    password_hash: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSettings:
    """Process-wide settings of ``st2000r run`` (``[supervisor]``).

    ``gprs_listen``: Twisted server endpoint string for the GPRS DTU server (e.g.
    ``"tcp:9000"``), or None (no GPRS server).  ``retries``: bus retries per transaction.
    ``log_format``: ``"text"`` or ``"json"``.  ``state_dir``: folder for state files (audit
    log ...).  ``stale_after_s``: seconds after which an unrefreshed reading is STALE, or
    None (2 x the longest plan period, at least 1 h).  ``command_timeout_s``: how long a
    valve command waits for its read-back confirmation.  ``read_on_connect``: run the
    link's first full plan when the link first comes up, and when it comes back after
    ``full_read_after_outage_s`` or more down (so a restart does not wait for 02:00).
    """

    gprs_listen: str | None
    retries: int
    log_format: str
    state_dir: str
    stale_after_s: int | None = None
    command_timeout_s: int = 60
    read_on_connect: bool = True
    full_read_after_outage_s: int = 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusSettings:
    """The Modbus bridge (``[modbus]``); its presence turns the bridge on.

    ``tcp``: ``(interface IP, port)`` the Modbus TCP server binds (port 0: any free port), or
    None (no TCP server).  ``write_allow``: normalised networks (``"127.0.0.1/32"``) whose
    clients may write; empty: read-only.  ``max_clients``: concurrent TCP clients served,
    the excess is refused.  ``units``: ``(link name, first unit id)`` pairs fixing a link's
    unit ids (else the map lock file assigns them).  ``map_lock``: the map lock file's path,
    or None (beside the configuration file).  ``tls``: ``(cert, key, ca)`` file paths as
    written (relative to the configuration's folder): the TCP listener then speaks Modbus/TCP
    Security and requires client certificates from ``ca``; None: plain Modbus TCP.  ``rtu``:
    the serial slave, or None.
    """

    tcp: tuple[str, int] | None
    write_allow: tuple[str, ...] = ()
    max_clients: int = 16
    units: tuple[tuple[str, int], ...] = ()
    map_lock: str | None = None
    tls: tuple[str, str, str] | None = None
    rtu: ModbusRtuSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusRtuSettings:
    """The Modbus RTU slave (``[modbus] rtu``): serial ``device``, ``baud``, ``parity``
    (``"N"``, ``"E"``, ``"O"``; two stop bits with ``"N"``, as Modbus over serial line asks),
    and ``unit``: the one unit id of the map it answers (others on a multidrop line stay
    silent, as they may be other slaves'), or None for every unit id of the map."""

    device: str
    baud: int = 19200
    parity: str = "E"
    unit: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HistorianSettings:
    """The historian (``[historian]``).  ``url``: an SQLAlchemy database URL, or None for
    the embedded default (``historian.sqlite`` in the state folder).  ``enabled``: False
    turns the historian off.  ``spool_max_mb``: bound of the local spool, MiB (an alarm at
    80 %).  ``keep_raw_days``: raw readings older than this many days are deleted once their
    day is aggregated (0: kept forever).  ``aggregate_timezone``: the IANA zone whose local
    days and months the daily and monthly aggregates use."""

    url: str | None = None
    enabled: bool = True
    spool_max_mb: int = 1024
    keep_raw_days: int = 0
    aggregate_timezone: str = "UTC"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """The HTTP API (``[api]``); its presence turns the API on.  ``listen``: ``(interface
    IP, port)`` bound (port 0: any free port).  ``token_ttl_s``: lifetime of a login token.
    ``max_clients``: HTTP connections served at once; ``max_sse_clients``: event streams at
    once.  ``tls``: ``(cert, key)`` file paths as written (relative to the configuration's
    folder): HTTPS; None: plain HTTP."""

    listen: tuple[str, int]
    token_ttl_s: int = 28_800
    max_clients: int = 64
    max_sse_clients: int = 32
    tls: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """A whole validated configuration file.  ``source``: the path it was read from, or
    the ``source`` given to ``loads`` (``"<string>"`` by default).

    ``plans``, ``interlocks``, ``operators``, ``settings``: the supervisor sections, with
    their defaults when the file has none.  ``modbus``: the ``[modbus]`` section, or None.
    """

    sites: tuple[Site, ...]
    source: str
    plans: tuple[ReadingPlan, ...] = DEFAULT_PLANS
    interlocks: Interlocks = Interlocks(frozenset(), 10)
    operators: tuple[Operator, ...] = ()
    settings: SupervisorSettings = SupervisorSettings(gprs_listen=None, retries=2, log_format="text",
                                                      state_dir="var")
    modbus: ModbusSettings | None = None
    historian: HistorianSettings = HistorianSettings()
    api: ApiSettings | None = None

    def links(self) -> Iterator[Link]:
        """Every link of every site, in file order."""
        for site in self.sites:
            yield from site.links

    def link(self, name: str) -> Link:
        """The link with this name (names are unique per file); raises ``KeyError``."""
        for link in self.links():
            if link.name == name:
                return link
        raise KeyError(f"no link named {name!r}")

    def summary(self) -> Summary:
        """Counts over the whole file."""
        return summarize(self.sites)

    def operator(self, name: str) -> Operator:
        """The operator with this name; raises ``KeyError``."""
        for operator in self.operators:
            if operator.name == name:
                return operator
        raise KeyError(f"no operator named {name!r}")
