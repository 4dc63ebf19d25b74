"""A deliberate stop is not a fault: stopping a link service tells its observers
``("stopped", {"link"})`` -- before the master learns that the pipe is gone -- and never
``disconnected``; a drop while running still is ``disconnected``.  The master still gets
exactly one ``connection_lost`` for the pipe that closes."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from st2000r.drivers.st2000r.gsm import DialerState
from st2000r.drivers.st2000r.links import SerialLinkService, TcpLinkService
from st2000r.drivers.st2000r.master import BusMaster
from st2000r.simulation.faults import parse_action
from test_links_gsm import _advance, gsm_rig  # noqa: F401  (same directory; gsm_rig is a fixture)


def _record(svc, master) -> list[tuple]:
    """One list, in order, of the link service's events and the master's."""
    seen: list[tuple] = []
    svc.add_observer(lambda event, details: seen.append(("link", event, details)))
    master.add_observer(lambda event, details: seen.append(("master", event)))
    return seen


def _link_events(seen) -> list[str]:
    return [e[1] for e in seen if e[0] == "link" and e[1] != "signal"]


def test_stopping_a_gsm_link_with_a_call_up_notifies_stopped_not_disconnected(gsm_rig):
    clock = gsm_rig.clock
    master = BusMaster(gsm_rig.link, clock, queue_timeout_s=60)
    svc = gsm_rig.make(master)
    seen = _record(svc, master)
    svc.startService()
    _advance(clock, 3.5)
    assert master.connected and _link_events(seen) == ["connected"]
    seen.clear()
    stop = svc.stopService()
    _advance(clock, 3.0)  # guard, +++, guard, OK, ATH, OK
    assert stop.called and gsm_rig.modem.machine.state.value == "command"  # really hung up
    assert seen[0] == ("link", "stopped", {"link": "g"})  # first, before the master's report
    assert _link_events(seen) == ["stopped"]
    assert not master.connected and master.stats.disconnects == 1  # the master was told
    master.shutdown()
    assert clock.getDelayedCalls() == []


def test_a_gsm_drop_while_running_is_still_disconnected_then_stop_is_stopped(gsm_rig):
    clock = gsm_rig.clock
    master = BusMaster(gsm_rig.link, clock)
    svc = gsm_rig.make(master)
    seen = _record(svc, master)
    svc.startService()
    _advance(clock, 3.5)
    gsm_rig.world.apply(parse_action({"action": "link_drop", "link": "g", "seconds": 30}))
    _advance(clock, 0.2)  # NO CARRIER
    assert _link_events(seen) == ["connected", "disconnected"]
    assert seen[-1] == ("link", "disconnected", {"link": "g", "reason": "NO CARRIER"})
    svc.stopService()  # no call up: nothing to hang up
    _advance(clock, 3.0)
    assert _link_events(seen) == ["connected", "disconnected", "stopped"]
    master.shutdown()
    gsm_rig.modem.cut.cancel()  # the simulated network outage's own timer
    assert clock.getDelayedCalls() == []


def test_gsm_stop_when_the_modem_port_goes_away_mid_hang_up_is_still_only_stopped(gsm_rig):
    clock = gsm_rig.clock
    master = BusMaster(gsm_rig.link, clock)
    svc = gsm_rig.make(master)
    seen = _record(svc, master)
    svc.startService()
    _advance(clock, 3.5)
    assert svc.dialer.state is DialerState.ONLINE
    seen.clear()
    stop = svc.stopService()
    _advance(clock, 0.5)  # in the guard time before +++
    gsm_rig.ports[0].protocol.connectionLost(Failure(ConnectionLost("modem unplugged")))
    assert stop.called
    assert _link_events(seen) == ["stopped"]
    master.shutdown()


def test_gsm_stopped_before_it_ever_connected_is_stopped(kit, master):
    link = kit.topology(['name = "g"\nkind = "gsm"\nmodem = "/dev/ttyNOPE"\nnumber = "1"']).link("g")
    clock = Clock()

    def open_port(protocol):
        raise OSError(2, "No such file or directory")

    from st2000r.drivers.st2000r.gsm import GsmLinkService

    svc = GsmLinkService(link, master, reactor, clock=clock, open_port=open_port, retry=lambda n: 1.0)
    seen = []
    svc.add_observer(lambda event, details: seen.append(event))
    svc.startService()
    clock.advance(5.0)
    svc.stopService()
    svc.stopService()  # a second stop of a stopped service says nothing more
    assert seen == ["stopped"] and master.events == []
    assert clock.getDelayedCalls() == []


class ClosingPort:
    """A serial port whose loseConnection ends the connection, as Twisted's does."""

    def __init__(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(StringTransport())

    def loseConnection(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def test_stopping_a_serial_link_notifies_stopped_not_disconnected(kit, master):
    link = kit.topology(['name = "s"\nkind = "serial"\ndevice = "/dev/ttyS9"']).link("s")
    clock = Clock()
    ports: list[ClosingPort] = []
    svc = SerialLinkService(link, master, reactor, clock=clock, retry=lambda n: 1.0,
                            open_port=lambda p: ports.append(ClosingPort(p)) or ports[-1])  # fmt: skip
    seen = []
    svc.add_observer(lambda event, details: seen.append((event, details)))
    svc.startService()
    ports[0].protocol.connectionLost(Failure(ConnectionLost("unplugged")))  # a fault: disconnected
    clock.advance(1.0)  # reopened
    assert [e for e, _ in seen] == ["connected", "disconnected", "connected"]
    svc.stopService()
    assert seen[-1] == ("stopped", {"link": "s"}) and [e for e, _ in seen].count("disconnected") == 1
    assert master.events[-1][0] == "lost" and master.count("lost") == 2
    assert len(ports) == 2 and clock.getDelayedCalls() == []


def test_stopping_a_tcp_link_notifies_stopped_not_disconnected(kit, master):
    link = kit.topology(['name = "t"\nkind = "tcp"\nhost = "127.0.0.1"\nport = 4001']).link("t")
    clock = Clock()
    protocols = []

    class Endpoint:
        def connect(self, factory):
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            protocols.append(proto)
            return defer.succeed(proto)

    svc = TcpLinkService(link, master, reactor, clock=clock, retry=lambda n: 1.0, endpoint=Endpoint())
    seen = []
    svc.add_observer(lambda event, details: seen.append((event, details)))
    svc.startService()
    assert master.connected
    stopped = svc.stopService()
    protocols[0].connectionLost(Failure(ConnectionDone()))  # the close ClientService asked for
    assert stopped.called
    assert [e for e, _ in seen] == ["connected", "stopped"]
    assert seen[-1] == ("stopped", {"link": "t"})
    assert master.events[-1][0] == "lost"
