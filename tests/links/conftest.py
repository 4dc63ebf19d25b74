"""Shared test doubles of the link tests: a recording bus master and small topologies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred

from st2000r.config.loader import loads
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import FrameDecoder


class RecordingMaster:
    """The three methods a link calls on a ``BusMaster``, recorded; plus ``request`` to send
    one message and get the next parsed reply frame (a Deferred)."""

    def __init__(self) -> None:
        self.write: Callable[[bytes], None] | None = None
        self.events: list[tuple] = []
        self.received = bytearray()
        self.replies: list[m.Message] = []
        self._decoder = FrameDecoder()
        self._waiters: list[tuple[Callable[[], bool], Deferred]] = []

    # the BusMaster side
    def connection_made(self, write) -> None:
        assert self.write is None, "connection_made twice without connection_lost"
        self.events.append(("made",))
        self.write = write
        self._check()

    def data_received(self, data: bytes) -> None:
        self.received += data
        for frame in self._decoder.frames(data):
            self.replies.append(m.parse(frame))
        self._check()

    def connection_lost(self, reason: str = "", *, deliberate: bool = False) -> None:
        assert self.write is not None, "connection_lost without connection_made"
        self.events.append(("lost", reason) if not deliberate else ("lost", reason, "deliberate"))
        self.write = None
        self._decoder.clear()
        self._check()

    # test helpers
    @property
    def connected(self) -> bool:
        return self.write is not None

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0] == kind)

    def when(self, predicate: Callable[[], bool]) -> Deferred:
        d: Deferred = Deferred()
        if predicate():
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d

    def _check(self) -> None:
        for item in list(self._waiters):
            predicate, d = item
            if predicate():
                self._waiters.remove(item)
                d.callback(None)

    def request(self, msg: m.Message) -> Deferred:
        """Send ``msg``; fires with the next reply message."""
        assert self.write is not None
        n = len(self.replies)
        self.write(m.encode(msg))
        return self.when(lambda: len(self.replies) > n).addCallback(lambda _: self.replies[n])


@pytest.fixture
def master() -> RecordingMaster:
    return RecordingMaster()


@pytest.fixture
def make_master():
    return RecordingMaster


CDTS = """
[[sites.links.cdts]]
address = 7
[[sites.links.cdts.modules]]
module = 1
channels = [ {{ channel = 1, kind = "water", pulse_constant = 10, serial = "{serial}", initial = 1000 }} ]
"""


def topology_text(links: list[str]) -> str:
    """A one-site topology: each entry of ``links`` is the body of a [[sites.links]] table
    (name, kind and endpoint keys); each link gets CDT 7 with one water meter."""
    out = ['[[sites]]\nname = "Test"\naddress = "Test road"\n']
    for i, body in enumerate(links):
        out.append("[[sites.links]]\n" + body + "\n" + CDTS.format(serial=f"{10000000 + i}"))
    return "\n".join(out)


def topology(links: list[str]):
    return loads(topology_text(links), "<test>")


def read_status(link) -> m.ReadCdtStatus:
    """A status request to CDT 7 of ``link``."""
    return m.ReadCdtStatus(meter_type=m.CDT_TYPE, address=link.cdt(7).bcd_address)


class Kit:
    """Helpers handed to tests as the ``kit`` fixture (conftest modules are not imported)."""

    Master = RecordingMaster
    topology = staticmethod(topology)
    topology_text = staticmethod(topology_text)
    read_status = staticmethod(read_status)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
