"""The Modbus bridge as a service of the supervisor: map, register image, event feed, server.

Built by :class:`~st2000r.supervisor.service.SupervisorService` when the topology has a
``[modbus]`` section.  On start: the image is filled from the point database's snapshots
(values restored from the state folder come back STALE) and the historian's status (when the
parent service runs one), a queued consumer of the event bus keeps it current (change events,
``HistorianChanged`` included, coalesce per point when it falls behind), the link counters
are copied once a second, the TCP server (TLS with client certificates when ``tls`` is
set) listens on exactly the configured interface, and the RTU slave opens its serial device
(a device that cannot be opened is logged; the rest carries on).  On stop: the consumer is
closed, the serial port closed and the server shut down (its clients disconnected).

The bridge is a consumer of events and a client of the command dispatcher, never of a bus
master.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.bridge.aio import deferred
from st2000r.bridge.image import RegisterImage
from st2000r.bridge.regmap import RegisterMap, load_map
from st2000r.bridge.server import BridgeStats, WritePolicy
from st2000r.config.model import Topology
from st2000r.supervisor.events import CdtChanged, CommandChanged, HistorianChanged, LinkChanged, MeterChanged, RoundDone

__all__ = ["ModbusBridge"]

log = Logger()

STATS_PERIOD_S = 1.0
QUEUE_LIMIT = 20_000
#: change events the image takes per reactor turn: ~2-3 µs each on a 2-core Xeon (a few ms a
#: turn), so a full round of 12,288 changes is in the registers within a dozen turns, each short
#: enough that clients keep being served between them (bench/bench_bridge.py)
IMAGE_BATCH = 1024


class ModbusBridge(Service):
    """The bridge for ``topology`` (which has ``modbus`` settings).

    ``bus``, ``points``, ``commands``: the supervisor's event bus, point database and command
    dispatcher.  ``regmap``: the map (default: made with the lock file, written back when it
    changed; raises ``MapError``).  ``.port``: the TCP port listened on, once listening.
    """

    name = "modbus"

    def __init__(self, topology: Topology, reactor: Any, bus: Any, points: Any, commands: Any, *,
                 regmap: RegisterMap | None = None) -> None:
        assert topology.modbus is not None
        self.settings = topology.modbus
        self.topology = topology
        self.reactor = reactor
        self.bus = bus
        self.points = points
        self.commands = commands
        self.map = regmap if regmap is not None else load_map(topology)
        self.image = RegisterImage(self.map, reactor)
        self.stats = BridgeStats()
        self.policy = WritePolicy(self.settings.write_allow, commands, self.stats)
        self.server: Any = None
        self.port: int | None = None
        self._consumer: Any = None
        self._stats_loop: task.LoopingCall | None = None
        self._listen_result: Any = None
        self._waiters: list[defer.Deferred] = []
        self.rtu: Any = None
        self._rtu_port: Any = None

    def when_listening(self) -> defer.Deferred:
        """Fires with the TCP port once the server listens (errback if it cannot); with None
        when there is no TCP server."""
        d = defer.Deferred()
        if self._listen_result is not None:
            result = self._listen_result
            d.errback(result) if isinstance(result, Failure) else d.callback(result[0])
        else:
            self._waiters.append(d)
        return d

    def _listened(self, result: Any) -> None:
        self._listen_result = result if isinstance(result, Failure) else (result,)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(result) if isinstance(result, Failure) else d.callback(result)

    def startService(self) -> None:
        super().startService()
        self._consumer = self.bus.attach(self.image.apply, (MeterChanged, CdtChanged, LinkChanged, CommandChanged,
                                                            RoundDone, HistorianChanged), limit=QUEUE_LIMIT,
                                         name="modbus image", batch=IMAGE_BATCH)
        self.image.fill(self.points, self.commands, self._historian())
        self._stats_loop = task.LoopingCall(self._copy_stats)
        self._stats_loop.clock = self.reactor
        self._stats_loop.start(STATS_PERIOD_S, now=False)
        self._open_rtu()
        if self.settings.tcp is None:
            self._listened(None)
            return
        deferred(self._listen()).addErrback(self._listen_failed).addBoth(self._listened)

    async def _listen(self) -> int:
        from st2000r.bridge.server import ModbusServer, Responder, tls_context

        tls = self.settings.tls
        context = tls_context(*(self._path(p) for p in tls)) if tls is not None else None
        server = ModbusServer(Responder(self.image, self.policy), self.settings.max_clients, context)
        self.server = server
        host, port = self.settings.tcp
        self.port = await server.listen(host, port)
        log.info("Modbus {proto} server listening on {host}:{port} ({units} unit ids, writes {writes})",
                 proto="TCP" if context is None else "TCP Security (TLS, client certificates required)",
                 host=host, port=self.port, units=len(self.map.units),
                 writes="from " + ", ".join(self.settings.write_allow) if self.settings.write_allow else "off")
        return self.port

    def _historian(self) -> Any:
        """The supervisor's historian when the parent service has one running (its status
        fills the historian registers at start; ``HistorianChanged`` keeps them current)."""
        historian = getattr(self.parent, "historian", None)
        return historian if historian is not None and getattr(historian, "running", False) else None

    def _open_rtu(self) -> None:
        """The RTU slave, when configured; a device that cannot be opened is logged and the
        rest of the bridge (and the supervisor) carries on."""
        rtu = self.settings.rtu
        if rtu is None:
            return
        from st2000r.bridge.rtu import open_rtu
        from st2000r.bridge.server import Responder

        if rtu.unit is not None and rtu.unit not in self.map.units:
            log.error("Modbus RTU slave: unit {unit} is not on the map (units: {units}); not started", unit=rtu.unit,
                      units=", ".join(map(str, sorted(self.map.units))))
            return
        responder = Responder(self.image, self.policy, None if rtu.unit is None else (rtu.unit,))
        try:
            self.rtu, self._rtu_port = open_rtu(responder, self.reactor, self._path(rtu.device), rtu.baud, rtu.parity)
        except Exception as e:
            log.error("Modbus RTU slave cannot open {device}: {why}", device=rtu.device, why=e)
            return
        log.info("Modbus RTU slave on {device} ({baud} baud, parity {parity}, unit ids {units})", device=rtu.device,
                 baud=rtu.baud, parity=rtu.parity, units=", ".join(map(str, sorted(responder.valid))))

    def _path(self, path: str) -> str:
        """A file named in the configuration: relative to the configuration's folder."""
        source = self.topology.source
        base = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else ""
        return os.path.join(base, os.path.expanduser(path))

    def _listen_failed(self, failure: Any) -> Any:
        log.error("Modbus TCP server cannot listen on {host}:{port}: {why}", host=self.settings.tcp[0],
                  port=self.settings.tcp[1], why=failure.getErrorMessage())
        return failure

    def _copy_stats(self) -> None:
        for lp in self.points.links():
            self.image.link_stats(lp.name, lp.stats)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        port, self._rtu_port = self._rtu_port, None
        if port is not None:
            port.loseConnection()
        server, self.server = self.server, None
        if server is None:
            return defer.succeed(None)
        return deferred(server.shutdown()).addErrback(lambda f: log.failure("Modbus server stop", f))
