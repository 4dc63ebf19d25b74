"""Fakes of the supervisor's collaborators, shaped exactly like the real classes
(``tests/test_support_contracts.py`` compares their signatures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from st2000r.config.model import Link
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import Priority
from st2000r.drivers.st2000r.reachability import Purpose, Reachability


@dataclass
class Call:
    """One ``transact`` call the fake master took; the test decides when it is sent
    (:meth:`FakeMaster.send`) and how it ends (``deferred``)."""

    request: m.Message
    priority: Priority
    purpose: Purpose
    deferred: defer.Deferred
    on_sent: Any = None
    sent: bool = False
    cancelled: bool = False


@dataclass
class FakeMaster:
    """A bus master whose transactions the test drives by hand.  ``auto_send``: the frame
    counts as written the moment it is queued (the link is up and the bus idle)."""

    link: Link
    auto_send: bool = True
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = self.link.name
        self.reachability = Reachability(self.link)
        self.connected = True

    def transact(self, request: m.Message, *, priority: Priority = Priority.SWEEP, retries: int | None = None,
                 hops_latency_s: float = 0.0, purpose: Purpose = Purpose.OTHER, plan: str | None = None,
                 on_sent: Any = None) -> defer.Deferred:
        call = Call(request, priority, purpose, None, on_sent)

        def cancel(d: defer.Deferred) -> None:
            call.cancelled = True

        call.deferred = defer.Deferred(cancel)
        self.calls.append(call)
        if self.auto_send:
            self.send(call)
        return call.deferred

    def send(self, call: Call | None = None) -> None:
        """The frame of ``call`` (the last one) goes on the wire now."""
        call = call or self.calls[-1]
        if not call.sent:
            call.sent = True
            if call.on_sent is not None:
                call.on_sent()

    @property
    def last(self) -> Call:
        return self.calls[-1]

    def add_observer(self, fn: Any) -> None:
        pass


class EchoBus:
    """A simulated bus (``BusLike``: connect, disconnect, data_received, on_link_drop) that
    answers every chunk with ``b"R:" + chunk``; keeps what it received, the link-drop
    callbacks, and how often a writer connected."""

    def __init__(self) -> None:
        self.write = None
        self.received = bytearray()
        self.drops: list = []
        self.connects = 0

    def connect(self, write) -> None:
        self.write = write
        self.connects += 1

    def disconnect(self) -> None:
        self.write = None

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.write is not None:
            self.write(b"R:" + bytes(data))

    def on_link_drop(self, callback) -> None:
        self.drops.append(callback)
