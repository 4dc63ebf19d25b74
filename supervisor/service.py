"""The supervisor assembled: one ``MultiService`` for a whole topology.

:class:`SupervisorService` builds, for a validated ``Topology``:

- one :class:`~st2000r.supervisor.events.EventBus` (``.bus``);
- the :class:`~st2000r.supervisor.points.PointDatabase` (``.points``) and the
  :class:`~st2000r.supervisor.alarms.AlarmManager` (``.alarms``) on that bus;
- per link: a ``BusMaster`` (``.masters[name]``, retries from ``[supervisor] retries``),
  the link service that carries its bytes (``link_service``; GPRS links through one shared
  ``GprsServer`` on ``[supervisor] gprs_listen``), a ``Poller`` running the reading plans
  with the point database as its sink (``.pollers[name]``);
- the :class:`~st2000r.supervisor.commands.CommandDispatcher` (``.commands``), auditing to
  ``audit_path`` (default ``STATE_DIR/audit.jsonl``, written by its own thread); on start
  it takes the audit log's earlier commands into its history and closes those a crash cut
  off (:meth:`~st2000r.supervisor.commands.CommandDispatcher.recover`);
- with ``[modbus]``: the :class:`~st2000r.bridge.service.ModbusBridge` (``.modbus``, else
  None), a consumer of the bus and a client of the dispatcher;
- the :class:`~st2000r.supervisor.state.StateStore` (``.state``, ``STATE_DIR/state.sqlite``):
  on start, before any poller reads, the saved alarms and meter points are restored (values
  STALE until read); it is started first and stopped last, outside the child list, so its
  final flush sees everything the other services published while stopping, and
  ``stopService`` fires only once that flush is on disk.
- with ``[api]``: the :class:`~st2000r.supervisor.api.service.ApiService` (``.api``, else None),
  the HTTP API, a consumer of the bus and a client of the dispatcher;
- the :class:`~st2000r.historian.writer.Historian` (``.historian``; ``[historian]``, by default
  ``STATE_DIR/historian.sqlite``): started after the restore, stopped after every child with
  a final flush (to its spool always, to the database when it answers); its upkeep
  (``.historian_upkeep``: daily and monthly aggregates, retention) is a child on a timer;

Children start in that order and stop in reverse (links and pollers before the point
database); on stop, every link is first marked ``stopped`` (a deliberate stop raises no link
alarm), running commands finish as ``interrupted``, every master fails what it still has
queued, and the audit log is closed last.  Nothing here reads the wall clock: ``reactor`` is the clock too.
Raises ``SupervisorError`` for a topology the supervisor cannot run (a GPRS link without
``gprs_listen``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from st2000r.config.model import Topology
from st2000r.drivers.st2000r.master import BusMaster
from st2000r.drivers.st2000r.poller import Poller
from st2000r.supervisor.alarms import AlarmManager
from st2000r.supervisor.audit import AuditError, AuditLog, MemoryAudit, read_records
from st2000r.supervisor.commands import CommandDispatcher
from st2000r.supervisor.events import EventBus
from st2000r.supervisor.points import PointDatabase
from st2000r.supervisor.state import StateStore

__all__ = ["SupervisorService", "SupervisorError"]

log = Logger()


class SupervisorError(Exception):
    """The topology cannot be run as configured; the message says why."""


class SupervisorService(MultiService):
    """Everything of ``st2000r run`` for ``topology`` (see the module docstring).

    ``reactor``: the reactor (clock, TCP, serial).  ``link_factory(link, master, reactor,
    gprs_server=...) -> IService``: how link services are made (default
    ``links.link_service``; tests pass their own).  ``audit_path``: the command audit file,
    or ``False`` for none.  ``local_time``: for the pollers' daily plan times.  ``state``:
    keep and restore ``STATE_DIR/state.sqlite`` (``False``: start empty, save nothing).
    ``historian``: build the historian (``[historian]``; None: when ``state`` is on).
    """

    def __init__(
        self,
        topology: Topology,
        reactor: Any,
        *,
        link_factory: Callable[..., Any] | None = None,
        audit_path: str | os.PathLike[str] | None | bool = None,
        local_time: Callable[[float], datetime] | None = None,
        poller_options: dict[str, Any] | None = None,
        state: bool = True,
        historian: bool | None = None,
    ) -> None:
        super().__init__()
        self.topology = topology
        self.reactor = reactor
        settings = topology.settings
        self.bus = EventBus(reactor)
        self.points = PointDatabase(topology, reactor, self.bus)
        self.alarms = AlarmManager(topology, reactor, self.bus)
        self.points.setServiceParent(self)
        self.alarms.setServiceParent(self)
        links = list(topology.links())
        self.gprs_server = None
        if any(link.kind == "gprs" for link in links):
            if settings.gprs_listen is None:
                names = ", ".join(link.name for link in links if link.kind == "gprs")
                raise SupervisorError(f"GPRS link(s) {names} need a GPRS server: set [supervisor] gprs_listen "
                                      "(e.g. \"tcp:9000\")")
            from st2000r.drivers.st2000r.gprs import GprsServer

            self.gprs_server = GprsServer(settings.gprs_listen, reactor)
            self.gprs_server.add_observer(self.alarms.on_gprs_server_event)
            self.gprs_server.setServiceParent(self)
        if link_factory is None:
            from st2000r.drivers.st2000r.links import link_service as link_factory
        self.masters: dict[str, BusMaster] = {}
        self.link_services: dict[str, Any] = {}
        self.pollers: dict[str, Poller] = {}
        for link in links:
            master = BusMaster(link, reactor, retries=settings.retries)
            self.masters[link.name] = master
            self.points.attach_master(master)
            service = link_factory(link, master, reactor, gprs_server=self.gprs_server)
            add_observer = getattr(service, "add_observer", None)
            if add_observer is not None:
                add_observer(self.points.link_observer(link.name))
                add_observer(self.alarms.link_observer(link.name))  # takeover, auth_failed
            self.link_services[link.name] = service
            if service.parent is None:
                service.setServiceParent(self)
        for link in links:
            options = {"read_on_connect": settings.read_on_connect,
                       "full_read_after_outage_s": settings.full_read_after_outage_s, **(poller_options or {})}
            poller = Poller(link, self.masters[link.name], reactor, self.points, topology.plans,
                            local_time=local_time, **options)
            self.pollers[link.name] = poller
            poller.setServiceParent(self)
        if audit_path is None:
            audit_path = os.path.join(settings.state_dir, "audit.jsonl")
        if audit_path:
            try:
                self.audit: Any = AuditLog(audit_path, reactor.callFromThread)
            except AuditError as exc:
                raise SupervisorError(str(exc)) from None
        else:
            self.audit = MemoryAudit()
        self.commands = CommandDispatcher(topology, reactor, self.masters, self.points, self.bus,
                                          audit=self.audit, alarms=self.alarms, local_time=local_time)
        self.state = StateStore(settings.state_dir, reactor, self.bus, topology) if state else None
        # ---- Modbus bridge (bridge/): built when the topology has [modbus]; a child, so it
        # starts after the dispatcher exists and stops before the point database
        self.modbus: Any = None
        if topology.modbus is not None:
            from st2000r.bridge.regmap import MapError
            from st2000r.bridge.service import ModbusBridge

            try:
                self.modbus = ModbusBridge(topology, reactor, self.bus, self.points, self.commands)
            except MapError as exc:
                raise SupervisorError(str(exc)) from None
            self.modbus.setServiceParent(self)
        # ---- end Modbus bridge
        # ---- historian (historian/): with [historian] enabled (the default: SQLite in the state
        # folder) and ``historian`` (None: as ``state``); like the state store it starts after the
        # restore (restored alarms are no new history) and stops after every child, with a final flush
        self.historian: Any = None
        if (state if historian is None else historian) and topology.historian.enabled:
            from st2000r.historian.writer import for_topology

            self.historian = for_topology(topology, reactor, self.bus, alarms=self.alarms)
        # its upkeep (daily/monthly aggregates, retention) is a child: a timer off the ingest path
        self.historian_upkeep: Any = None
        if self.historian is not None:
            from st2000r.historian.upkeep import for_topology as upkeep_for

            self.historian_upkeep = upkeep_for(topology, reactor, self.historian.url)
            self.historian_upkeep.setServiceParent(self)
        # ---- end historian
        # ---- HTTP API (supervisor/api/): built when the topology has [api]; a child after the
        # dispatcher, so it starts when everything it reads exists and stops before the point database
        self.api: Any = None
        if topology.api is not None:
            from st2000r.supervisor.api.service import ApiService

            self.api = ApiService(topology, reactor, self)
            self.api.setServiceParent(self)
        # ---- end HTTP API

    # ---- state store: built, started first, stopped last (see the module docstring)

    def startService(self) -> None:
        if self.state is not None:
            self.state.startService()
            self.state.restore_into(self.points, self.alarms)
        if self.historian is not None:
            self.historian.startService()
        super().startService()
        self._recover_commands()

    def _recover_commands(self) -> None:
        """Commands of earlier runs into the history; those cut off by a crash closed; the
        API's session records of earlier runs into its session log."""
        path = getattr(self.audit, "path", None)
        if path is None:
            return
        report = read_records(path)
        for offset, why in report.bad_lines:
            log.error("audit log {path}: line at byte {offset} skipped: {why}", path=path, offset=offset, why=why)
        closed = self.commands.recover(report.records)
        if self.api is not None:  # the API's session records of earlier runs (GET /audit/sessions)
            self.api.sessions.restore(report.sessions)
        if closed:
            log.warn("{n} command(s) cut off by the last stop are being closed as interrupted", n=closed)

    def _stop_state(self, result: Any) -> Any:
        if self.state is None or not self.state.running:
            return result
        return self.state.stopService().addCallback(lambda _: result)

    def stopService(self) -> defer.Deferred:
        for name in self.masters:  # a deliberate stop is no fault: no link alarm for it
            self.points.on_link_state(name, "stopped")
        self.commands.shutdown()
        d = defer.maybeDeferred(super().stopService)

        def masters_down(result: Any) -> Any:
            for master in self.masters.values():
                master.shutdown("supervisor stopping")
            return result

        def audit_closed(result: Any) -> Any:
            return self.audit.close().addBoth(lambda _: result)

        def historian_flushed(result: Any) -> Any:  # after the pollers: the final flush sees every reading
            if self.historian is None or not self.historian.running:
                return result
            return self.historian.stopService().addBoth(lambda _: result)

        return d.addBoth(masters_down).addBoth(historian_flushed).addBoth(self._stop_state).addBoth(audit_closed)
