"""Helpers of the end-to-end tests (no tests here): topologies, a gated world clock, a
request tap on the simulated bus, event waiters and ground truth.

Everything runs on the real (asyncio) reactor; waiting is on events and Deferreds, each
bounded with ``addTimeout`` -- never on sleeps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet import defer, reactor

from support.truth import meter_of, readings
from st2000r.config.loader import loads
from st2000r.config.model import Link, ReadingPlan, SerialEndpoint, SupervisorSettings, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import NEED_DATA, Frame, FrameDecoder

TIMEOUT = 30.0

#: config/examples/community.toml's link, at a configurable line: the same template, ranges,
#: serial and household patterns (128 CDTs x 32 modules x 3 meters behind R1..R4)
COMMUNITY = """
[templates.flat]
description = "one flat: cold water, electricity, gas"
channels = [
  {{ channel = 1, kind = "water",       pulse_constant = 10 }},
  {{ channel = 2, kind = "electricity", pulse_constant = 1 }},
  {{ channel = 3, kind = "gas",         pulse_constant = 10 }},
]

[[sites]]
name = "Lakeside Gardens"
address = "88 Lakeside Avenue"

[[sites.links]]
name = "lakeside-bus"
kind = "serial"
device = "/dev/ttyUSB0"
baud = {baud}
bytesize = 8
parity = "{parity}"
stopbits = 1
turnaround_ms = {turnaround_ms}
repeaters = [ {{ name = "R1" }}, {{ name = "R2" }}, {{ name = "R3" }}, {{ name = "R4", latency_ms = 8 }} ]
{ranges}
"""

RANGE = """
[[sites.links.cdt_ranges]]
addresses = "{first}-{last}"
repeater = "{repeater}"
name = "Building {{cdt}}"
modules = "1-{modules}"
template = "flat"
serial = "{{cdt:03}}{{module:02}}{{channel}}"
household = "B{{cdt:03}}-{{module:02}}"
"""


def community_text(*, cdts_per_repeater: int = 32, modules: int = 32, baud: int = 115200, parity: str = "N",
                   turnaround_ms: int = 1) -> str:
    """TOML of community.toml's layout (``cdts_per_repeater`` CDTs behind each of R1..R4)."""
    ranges = "".join(
        RANGE.format(first=k * cdts_per_repeater + 1, last=(k + 1) * cdts_per_repeater, repeater=f"R{k + 1}",
                     modules=modules)
        for k in range(4)
    )
    return COMMUNITY.format(baud=baud, parity=parity, turnaround_ms=turnaround_ms, ranges=ranges)


def far_time() -> dt.time:
    """A daily time 12 h from now (local): a plan at it never fires during a test."""
    return (dt.datetime.now() + dt.timedelta(hours=12)).time().replace(second=0, microsecond=0)


def manual_plans() -> tuple[ReadingPlan, ...]:
    """A "full" and a "status" plan that only run when a test starts them."""
    at = (far_time(),)
    return (ReadingPlan("full", "full", at, None, None), ReadingPlan("status", "status", at, None, None))


def for_supervisor(topology: Topology, state_dir: str, *, devices: dict[str, str] | None = None,
                   gprs_listen: str | None = None, operators=(), plans=None, retries: int = 2) -> Topology:
    """``topology`` with serial devices replaced (link -> path), manual plans, settings."""
    devices = devices or {}
    sites = []
    for site in topology.sites:
        links = []
        for link in site.links:
            if link.name in devices:
                if link.kind == "serial":
                    link = replace(link, endpoint=SerialEndpoint(devices[link.name]))
                else:
                    link = replace(link, endpoint=replace(link.endpoint, modem=devices[link.name]))
            links.append(link)
        sites.append(replace(site, links=tuple(links)))
    return replace(topology, sites=tuple(sites), plans=manual_plans() if plans is None else plans,
                   operators=tuple(operators),
                   settings=SupervisorSettings(gprs_listen=gprs_listen, retries=retries, log_format="text",
                                              state_dir=state_dir))


def load_text(text: str) -> Topology:
    return loads(text, "<e2e>")


class GatedClock:
    """An ``IReactorTime.seconds`` for the World: frozen, or running at ``rate`` world
    seconds per reactor second.  Frozen, the ground truth holds still while a sweep reads
    it; running, valves move.  Never goes backwards."""

    def __init__(self, clock: Any = reactor, start: float | None = None) -> None:
        self._clock = clock
        self._base = clock.seconds() if start is None else start
        self._since: float | None = None
        self.rate = 0.0

    def seconds(self) -> float:
        if self._since is None:
            return self._base
        return self._base + (self._clock.seconds() - self._since) * self.rate

    def run(self, rate: float) -> None:
        self.freeze()
        self.rate = rate
        self._since = self._clock.seconds()

    def freeze(self) -> None:
        self._base = self.seconds()
        self._since = None

    def advance(self, seconds: float) -> None:
        """Jump the frozen clock forward."""
        self.freeze()
        self._base += seconds


class TapBus:
    """A ``BusLike`` in front of a ``SimulatedBus``: decodes the master's request frames and
    records ``(reactor seconds, message, wire length)`` for each; ``on_request`` callbacks
    see every one as it arrives."""

    def __init__(self, bus: Any, clock: Any = reactor) -> None:
        self.bus = bus
        self.clock = clock
        self.decoder = FrameDecoder()
        self.requests: list[tuple[float, m.Message, int]] = []
        self.on_request: list[Callable[[float, m.Message, int], None]] = []

    def connect(self, write):
        self.bus.connect(write)

    def disconnect(self):
        self.bus.disconnect()

    def on_link_drop(self, callback):
        self.bus.on_link_drop(callback)

    def data_received(self, data: bytes) -> None:
        now = self.clock.seconds()
        self.decoder.feed(data)
        while True:
            event = self.decoder.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Frame):
                try:
                    msg = m.parse(event)
                except Exception:
                    continue
                size = len(m.encode(msg))
                self.requests.append((now, msg, size))
                for cb in list(self.on_request):
                    cb(now, msg, size)
        self.bus.data_received(data)

    def __getattr__(self, name: str):
        return getattr(self.bus, name)


class Events:
    """Keeps every event of an ``EventBus`` and fires waiters on a predicate."""

    def __init__(self, bus: Any) -> None:
        self.events: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], defer.Deferred]] = []
        self.unsubscribe = bus.subscribe(self._on)

    def _on(self, event: Any) -> None:
        self.events.append(event)
        for item in list(self._waiters):
            predicate, d = item
            if predicate(event):
                self._waiters.remove(item)
                d.callback(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def next(self, predicate: Callable[[Any], bool], timeout: float = TIMEOUT, *, past: bool = False) -> defer.Deferred:
        """Fires with the next event matching (or a past one with ``past``); times out."""
        if past:
            for event in self.events:
                if predicate(event):
                    return defer.succeed(event)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((predicate, d))
        return d.addTimeout(timeout, reactor)


    def until(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> defer.Deferred:
        """Fires when ``condition()`` holds: now, or after some later event; times out."""
        if condition():
            return defer.succeed(None)
        return self.next(lambda _: condition(), timeout)


truth_readings = readings


def truth_meter(world: Any, link: str, cdt: int, channel: int) -> dict[str, Any]:
    return meter_of(world.snapshot(), link, cdt, channel)


def within(d: defer.Deferred, seconds: float = TIMEOUT) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


def link_of(topology: Topology) -> Link:
    return next(topology.links())


def poll(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """``condition()``'s first truthy value, tried every ``interval`` s for at most ``timeout``
    s (fails naming ``what``).  For conditions that only a file shows, with no process
    line or event to wait on (the supervisor's state file)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(interval)


def state_rows(path: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` on a supervisor's ``state.sqlite``, read-only (the committed state, as
    a restarting supervisor would find it; nothing is written)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
