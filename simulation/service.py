"""The whole simulator as one ``MultiService``: world, buses, endpoints, control, scenario.

:class:`SimulatorService` builds from a ``Topology`` and :class:`SimulatorOptions`:

- one ``World`` (``st2000r.simulation.world``) for the whole topology;
- per selected link, one ``SimulatedBus`` and the endpoint its kind calls for::

      serial  a pseudo-terminal pair (or the real device given in ``devices``)
      tcp     a TCP listener (serial-device server) on ``bind``: the configured port,
              or ``tcp_base_port`` + n for the n-th TCP link (0: any free port)
      gprs    a DTU dialling ``supervisor`` (host, port); without it the link is not served
      gsm     a Hayes modem on a pseudo-terminal

  plus, for every ``(link, port)`` of ``tcp_ports``, an extra TCP listener on that link's
  bus (what ``st2000r demo`` uses to offer a serial link over TCP as well);
- the control HTTP interface (unless ``control_port`` is None) and, if a scenario file is
  given, a ``ScenarioRunner``.

Construction checks the options against the topology and loads the scenario: it raises
:class:`SimulatorError` (or ``faults.FaultError`` for a bad scenario) before anything
listens.  ``startService`` raises ``CannotListenError``/``OSError`` for a taken port or a
device that cannot be opened.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from st2000r.config.model import Link, Topology
from st2000r.simulation import faults
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.control import ControlError, ControlService, to_json
from st2000r.simulation.dtu import DtuClient, DtuFormat, DtuFormatError
from st2000r.simulation.endpoints import (
    DeviceEndpoint,
    EndpointInfo,
    PtyEndpoint,
    SharedBus,
    TcpListenerEndpoint,
)
from st2000r.simulation.modem import ModemEndpoint
from st2000r.simulation.scenario import Scenario, ScenarioRunner
from st2000r.simulation.world import World

__all__ = ["SimulatorError", "SimulatorOptions", "SimulatorService", "DEFAULT_CONTROL_PORT"]

log = Logger(namespace="st2000r.simulation.service")

DEFAULT_CONTROL_PORT = 7188


class SimulatorError(ValueError):
    """Options that do not fit the topology (unknown link, wrong kind); the message says why."""


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """How to run the simulator.

    ``speedup``: world seconds per real second (> 0).  ``physical_timing``: bytes take their
    wire time.  ``links``: names of the links to serve (empty: all).  ``devices``: ``(link,
    device path)`` for serial links served on a real device instead of a pty.
    ``tcp_ports``: extra ``(link, port)`` TCP listeners.  ``supervisor``: ``(host, port)``
    GPRS DTUs dial.  ``control_port``: None for no control interface.  ``pty_dir``: a
    directory to put ``<link>`` symlinks to the pseudo-terminals in.  ``modem_dial_s``: real
    seconds from ATD to CONNECT.
    """

    speedup: float = 1.0
    seed: int = 0
    start: datetime | None = None
    physical_timing: bool = True
    scenario: str | None = None
    links: tuple[str, ...] = ()
    devices: tuple[tuple[str, str], ...] = ()
    bind: str = "127.0.0.1"
    tcp_base_port: int | None = None
    tcp_ports: tuple[tuple[str, int], ...] = ()
    supervisor: tuple[str, int] | None = None
    control_host: str = "127.0.0.1"
    control_port: int | None = DEFAULT_CONTROL_PORT
    pty_dir: str | None = None
    modem_dial_s: float = 3.0


class SimulatorService(MultiService):
    """The simulator for ``topology`` (see the module docstring).  Attributes after
    construction: ``world``, ``buses`` (link name -> SimulatedBus), ``endpoint_services``,
    ``modems`` (link name -> ModemEndpoint), ``control`` (or None), ``skipped``
    (link name -> why it is not served).  ``reactor`` does the I/O; ``clock`` (default:
    ``reactor``) is the time of the world, the buses and every timer (tests pass a Clock)."""

    def __init__(self, topology: Topology, options: SimulatorOptions, reactor, *, clock=None) -> None:
        super().__init__()
        clock = reactor if clock is None else clock
        self.clock = clock
        self.setName("simulator")
        self.topology = topology
        self.options = options
        self.reactor = reactor
        if not options.speedup > 0:
            raise SimulatorError(f"speedup must be > 0, got {options.speedup}")
        names = [link.name for link in topology.links()]
        wanted = options.links or tuple(names)
        for name in wanted:
            if name not in names:
                raise SimulatorError(f"no link named {name!r} in {topology.source} (links: {', '.join(names)})")
        for what, pairs in (("device", options.devices), ("TCP listener", options.tcp_ports)):
            for name, _ in pairs:
                if name not in wanted:
                    raise SimulatorError(f"{what} given for link {name!r}, which is not served (links: {', '.join(wanted)})")
        tcp_names = [name for name, _ in options.tcp_ports]
        for name in set(tcp_names):
            if tcp_names.count(name) > 1:
                raise SimulatorError(f"a TCP listener is given twice for link {name!r}")
        extra_tcp = dict(options.tcp_ports)
        devices = dict(options.devices)
        for name in devices:
            if topology.link(name).kind != "serial":
                raise SimulatorError(f"a device can only serve a serial link; {name!r} is {topology.link(name).kind}")
        scenario = Scenario.load(options.scenario) if options.scenario else None

        self.world = World(topology, clock, seed=options.seed, speedup=options.speedup, start=options.start)
        self.buses: dict[str, SimulatedBus] = {}
        self.endpoint_services: list = []
        self.modems: dict[str, ModemEndpoint] = {}
        self.dtus: dict[str, DtuClient] = {}
        self.skipped: dict[str, str] = {}
        tcp_index = 0
        for link in topology.links():
            if link.name not in wanted:
                continue
            bus = SimulatedBus(self.world, link.name, clock, physical_timing=options.physical_timing)
            self.buses[link.name] = bus
            shared = SharedBus(bus)
            if link.kind == "tcp":
                port = link.endpoint.port if options.tcp_base_port is None else (
                    options.tcp_base_port + tcp_index if options.tcp_base_port else 0
                )
                tcp_index += 1
                if link.name in extra_tcp:  # --tcp LINK=PORT moves a TCP link's own listener
                    port = extra_tcp.pop(link.name)
            else:
                port = 0
            endpoint = self._endpoint(link, shared, devices.get(link.name), port)
            if endpoint is not None:
                self._add(endpoint)
            if link.name in extra_tcp:
                extra = extra_tcp[link.name]
                self._add(TcpListenerEndpoint(link.name, shared.port(), reactor, options.bind, extra, clock=clock))
        self.control: ControlService | None = None
        if options.control_port is not None:
            self.control = ControlService(self, reactor, host=options.control_host, port=options.control_port)
            self.control.setServiceParent(self)
        if scenario is not None:
            ScenarioRunner(self.world, scenario, clock).setServiceParent(self)

    def _add(self, endpoint) -> None:
        self.endpoint_services.append(endpoint)
        endpoint.setServiceParent(self)

    def _endpoint(self, link: Link, shared: SharedBus, device: str | None, port: int):
        o, reactor = self.options, self.reactor
        if link.kind == "serial":
            if device is not None:
                return DeviceEndpoint(link.name, shared.port(), reactor, device, link.line, clock=self.clock)
            return PtyEndpoint(
                link.name, shared.port(), reactor, link_dir=o.pty_dir, clock=self.clock,
                note=f"stands for {link.endpoint.device}; bus {link.line.baud} "
                f"{link.line.bytesize}{link.line.parity}{link.line.stopbits}",
            )  # fmt: skip
        if link.kind == "tcp":
            return TcpListenerEndpoint(link.name, shared.port(), reactor, o.bind, port, clock=self.clock)
        if link.kind == "gprs":
            if o.supervisor is None:
                self.skipped[link.name] = "GPRS DTU not started: give --supervisor HOST:PORT for it to dial"
                return None
            ep = link.endpoint
            try:
                DtuFormat(ep.registration, ep.dtu_id)
            except DtuFormatError as exc:
                raise SimulatorError(f"link {link.name!r}: {exc}") from None
            dtu = DtuClient.for_link(link, shared.port(), reactor, host=o.supervisor[0], port=o.supervisor[1],
                                     speedup=o.speedup, clock=self.clock)  # proves itself as configured
            self.dtus[link.name] = dtu
            return dtu
        if link.kind == "gsm":
            modem = ModemEndpoint(
                link.name, shared.port(), reactor, number=link.endpoint.number,
                dial_s=o.modem_dial_s, link_dir=o.pty_dir, clock=self.clock,
            )  # fmt: skip
            self.modems[link.name] = modem
            return modem
        raise SimulatorError(f"link {link.name!r}: unknown kind {link.kind!r}")  # pragma: no cover

    # -- ControlTarget
    def truth(self) -> dict:
        return self.world.snapshot()

    def stats(self) -> dict:
        out: dict[str, Any] = {}
        for name, bus in self.buses.items():
            entry: dict[str, Any] = {"bus": _plain(getattr(bus, "stats", None))}
            if name in self.dtus:
                entry["dtu"] = _plain(self.dtus[name].stats)
            if name in self.modems:
                m = self.modems[name]
                entry["modem"] = {"state": m.machine.state.value, "calls": m.calls}
            out[name] = entry
        return {"links": out, "world_time": self.world.now().isoformat()}

    def endpoints(self) -> list[EndpointInfo]:
        infos = [e.info() for e in self.endpoint_services]
        infos += [EndpointInfo(name, "none", "-", why) for name, why in self.skipped.items()]
        return infos

    def apply_fault(self, doc: dict) -> faults.Action:
        """Parse ``doc`` and apply it now; raises ``faults.FaultError``."""
        action = faults.parse_action(doc, "fault")
        self.world.apply(action)
        return action

    def ring(self, link: str | None) -> list[str]:
        """RING on ``link``'s modem, or on every idle modem; returns the links that rang.
        Raises ControlError for a link that is not a served GSM link or has nothing idle."""
        if link is not None:
            if link not in self.modems:
                gsm = ", ".join(self.modems) or "none"
                raise ControlError(f"link {link!r} is not a served GSM link (GSM links: {gsm})")
            targets = [link]
        else:
            targets = list(self.modems)
            if not targets:
                raise ControlError("no GSM link is served: nothing to ring")
        rang = [name for name in targets if self.modems[name].ring()]
        if link is not None and not rang:
            raise ControlError(f"the modem of link {link!r} is in a call or dialling: no RING")
        return rang


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if is_dataclass(value) and not isinstance(value, type):
        return to_json(asdict(value))
    if hasattr(value, "to_dict"):
        return to_json(value.to_dict())
    if hasattr(value, "__dict__"):
        return to_json({k: v for k, v in vars(value).items() if not k.startswith("_")})
    if hasattr(value, "__slots__"):
        return to_json({k: getattr(value, k) for k in value.__slots__ if not k.startswith("_")})
    return to_json(value)
