"""GSM link: the AT dialogue as a table (sans-I/O), the service against the simulator's
Hayes modem on a Clock (dial, read, hang up, redial, NO CARRIER, on-demand calls), and
the real thing over a pseudo-terminal."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.gsm import (
    BusData,
    CallDown,
    CallUp,
    CancelTimer,
    DialerState,
    Failed,
    GsmDialer,
    GsmLinkService,
    HungUp,
    Ready,
    Send,
    Signal,
    StartTimer,
)
from st2000r.drivers.st2000r.master import BusMaster, Priority

TIMEOUT = 10.0
FRAME = m.encode(m.ReadCdtStatus(address="00000000000007"))

INIT_SCRIPT = [
    # (input: method name or modem bytes, expected outputs)
    ("initialise", [StartTimer("cmd", 5.0), Send(b"ATZ\r")]),
    (b"ATZ\r\r\nOK\r\n", [StartTimer("cmd", 5.0), Send(b"ATE0\r")]),  # echo ignored
    (b"ATE0\r\r\nOK\r\n", [StartTimer("cmd", 5.0), Send(b"AT+CSQ\r")]),
    (b"\r\n+CSQ: 23,0\r\n\r\nOK\r\n", [Signal(23, 0), StartTimer("cmd", 5.0), Send(b"AT+CREG?\r")]),
    (b"\r\n+CREG: 0,1\r\n\r\nOK\r\n", [CancelTimer("cmd"), Ready()]),
]


def run(dialer: GsmDialer, step) -> list:
    if isinstance(step, bytes):
        return dialer.receive(step)
    if step.startswith("timer:"):
        return dialer.timer(step[6:])
    return getattr(dialer, step)()


def ready_dialer() -> GsmDialer:
    d = GsmDialer("+8613800000001", dial_timeout_s=60.0, guard_s=1.0)
    d.port_opened()
    for step, expected in INIT_SCRIPT:
        assert run(d, step) == expected, step
    assert d.state is DialerState.READY and d.csq == 23
    return d


def test_init_table():
    ready_dialer()


def test_init_byte_by_byte():
    d = GsmDialer("1")
    d.port_opened()
    assert d.initialise() == INIT_SCRIPT[0][1]
    for step, expected in INIT_SCRIPT[1:]:
        got = []
        for b in step:
            got += d.receive(bytes((b,)))
        assert got == expected
    assert d.state is DialerState.READY


def test_dial_connect_data_and_no_carrier():
    d = ready_dialer()
    assert d.dial() == [StartTimer("dial", 60.0), Send(b"ATD+8613800000001\r")]
    assert d.receive(b"\r\nCONNECT 9600\r\n" + FRAME[:4]) == [CancelTimer("dial"), CallUp(9600), BusData(FRAME[:4])]
    assert d.receive(FRAME[4:]) == [BusData(FRAME[4:])]
    assert d.receive(b"\x16\r\nNO CARRIER\r\n") == [BusData(b"\x16"), CallDown("NO CARRIER")]
    assert d.state is DialerState.UNINITIALISED
    assert d.dial() == []  # must initialise first


@pytest.mark.parametrize("result", ["NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE", "ERROR"])
def test_dial_failures(result):
    d = ready_dialer()
    d.dial()
    out = d.receive(f"\r\n{result}\r\n".encode())
    assert out[-1] == Failed(f"dialling +8613800000001: {result}")
    assert d.state is DialerState.UNINITIALISED


def test_dial_timeout_aborts():
    d = ready_dialer()
    d.dial()
    out = d.timer("dial")
    assert out[0] == Send(b"\r") and isinstance(out[-1], Failed) and "no CONNECT within 60" in out[-1].reason


def test_hang_up_sequence():
    d = ready_dialer()
    d.dial()
    d.receive(b"\r\nCONNECT\r\n")
    assert d.hangup() == [CallDown("hang up"), StartTimer("guard", 1.2)]
    assert d.receive(FRAME) == []  # a late reply is discarded
    assert d.timer("guard") == [StartTimer("escape", 7.0), Send(b"+++")]
    assert d.receive(b"\r\nOK\r\n") == [CancelTimer("escape"), StartTimer("cmd", 5.0), Send(b"ATH\r")]
    assert d.receive(b"\r\nOK\r\n") == [CancelTimer("cmd"), HungUp()]
    assert d.state is DialerState.UNINITIALISED


def test_escape_without_ok_tries_ath_then_fails():
    d = ready_dialer()
    d.dial()
    d.receive(b"\r\nCONNECT 2400\r\n")
    d.hangup()
    d.timer("guard")
    assert d.timer("escape")[-1] == Send(b"ATH\r")
    assert d.timer("cmd")[-1] == Failed("modem did not answer ATH within 5 s")


@pytest.mark.parametrize(
    "reply, reason",
    [
        (b"\r\n+CREG: 0,2\r\n\r\nOK\r\n", "not registered on the GSM network (+CREG stat 2)"),
        (b"\r\nERROR\r\n", None),  # AT+CREG? is optional
    ],
)
def test_network_registration(reply, reason):
    d = GsmDialer("1")
    d.port_opened()
    d.initialise()
    for step, _ in INIT_SCRIPT[1:4]:
        d.receive(step)
    out = d.receive(reply)
    if reason is None:
        assert out[-1] == Ready()
    else:
        assert out[-1] == Failed(f"modem {reason}")


def test_init_errors_and_timeouts():
    d = GsmDialer("1")
    d.port_opened()
    d.initialise()
    assert d.receive(b"\r\nERROR\r\n")[-1] == Failed("modem answered ERROR to ATZ")
    d.initialise()
    assert d.timer("cmd")[-1] == Failed("modem did not answer ATZ within 5 s")
    assert d.timer("cmd") == []  # stale timer: ignored
    assert d.port_lost()[-1] == CancelTimer("escape")
    assert d.state is DialerState.OFFLINE


def test_garbage_never_raises():
    import random

    rng = random.Random(3)
    for _ in range(200):
        d = ready_dialer()
        for _ in range(20):
            choice = rng.random()
            if choice < 0.6:
                d.receive(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 30))))
            elif choice < 0.8:
                d.timer(rng.choice(["cmd", "dial", "guard", "escape", "x"]))
            else:
                getattr(d, rng.choice(["dial", "hangup", "initialise", "port_lost", "port_opened"]))()


# --------------------------------------------------------------------------- service on a Clock


class ModemPort:
    """A 'serial port' whose far end is the simulator's ModemEndpoint (in memory); bytes
    cross with a zero delay on the clock, as over a real port."""

    def __init__(self, protocol, modem, clock: Clock) -> None:
        self.protocol = protocol
        self.modem = modem
        self.clock = clock
        self.closed = False
        self.transport = StringTransport()
        self.transport.write = self._to_modem
        modem.attach(self._to_dte)
        protocol.makeConnection(self.transport)

    def _to_modem(self, data: bytes) -> None:
        self.clock.callLater(0, self.modem.receive, data)

    def _to_dte(self, data: bytes) -> None:
        if not self.closed:
            self.clock.callLater(0, self.protocol.dataReceived, data)

    def loseConnection(self) -> None:
        self.closed = True


@pytest.fixture
def gsm_rig(kit):
    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.modem import ModemEndpoint
    from st2000r.simulation.world import World

    topo = kit.topology(['name = "g"\nkind = "gsm"\nmodem = "/dev/ttyACM0"\nnumber = "+8613800000001"'])
    link = topo.link("g")
    clock = Clock()
    world = World(topo, clock, seed=3)
    bus = SimulatedBus(world, "g", clock, physical_timing=False)
    modem = ModemEndpoint("g", bus, reactor, number="+8613800000001", clock=clock, dial_s=3.0, guard_s=1.0)
    bus.on_link_drop(modem.drop)
    ports: list[ModemPort] = []

    def make(master, **kw):
        def open_port(protocol):
            ports.append(ModemPort(protocol, modem, clock))
            return ports[-1]

        return GsmLinkService(link, master, reactor, clock=clock, open_port=open_port, retry=lambda n: 5.0, **kw)

    class Rig:
        pass

    rig = Rig()
    rig.__dict__.update(link=link, clock=clock, world=world, modem=modem, make=make, ports=ports)
    return rig


def _advance(clock: Clock, seconds: float, step: float = 0.05) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)


def test_service_dials_reads_hangs_up_and_redials(gsm_rig):
    clock = gsm_rig.clock
    master = BusMaster(gsm_rig.link, clock, retries=1, queue_timeout_s=60)
    svc = gsm_rig.make(master)
    seen = []
    svc.add_observer(lambda e, d: seen.append((e, d.get("csq"))))
    svc.startService()
    _advance(clock, 3.5)  # init + 3 s dial
    assert master.connected and svc.calls == 1 and svc.csq == 23
    assert seen == [("signal", 23), ("connected", None)]
    d = master.transact(m.ReadCdtStatus(address=gsm_rig.link.cdt(7).bcd_address), priority=Priority.STATUS)
    _advance(clock, 1.0)
    assert isinstance(d.result, m.CdtStatus)
    svc.hangup()
    assert not master.connected
    _advance(clock, 2.5)  # guard 1.2 s, +++, guard 1 s, OK, ATH, OK
    # the call is down (ATH) and the modem already re-initialised and dialling again
    assert gsm_rig.modem.machine.state.value == "dialing" and gsm_rig.modem.calls == 1
    _advance(clock, 4.0)  # kept up: re-initialised and redialled
    assert master.connected and svc.calls == 2 and gsm_rig.modem.calls == 2
    d = master.transact(m.ReadCdtStatus(address=gsm_rig.link.cdt(7).bcd_address))
    _advance(clock, 1.0)
    assert isinstance(d.result, m.CdtStatus)
    stop = svc.stopService()
    _advance(clock, 3.0)
    assert stop.called and gsm_rig.modem.machine.state.value == "command"
    master.shutdown()
    assert clock.getDelayedCalls() == []


def test_no_carrier_redials_after_backoff_when_the_network_is_back(gsm_rig):
    from st2000r.simulation.faults import parse_action

    clock = gsm_rig.clock
    master = BusMaster(gsm_rig.link, clock)
    svc = gsm_rig.make(master)
    svc.startService()
    _advance(clock, 3.5)
    assert master.connected
    gsm_rig.world.apply(parse_action({"action": "link_drop", "link": "g", "seconds": 12}))
    _advance(clock, 0.2)  # t = 3.7: NO CARRIER
    assert not master.connected and master.stats.disconnects == 1
    _advance(clock, 11.0)  # redial at 8.7 fails at 11.7 (network down until 15.5): NO CARRIER
    assert not master.connected and svc.failures == 1
    _advance(clock, 6.0)  # redial at 16.7, CONNECT at 19.7
    assert master.connected and svc.calls == 2
    svc.stopService()
    _advance(clock, 3.0)
    master.shutdown()


def test_on_demand_call_dials_for_queued_work_and_hangs_up_when_idle(gsm_rig):
    clock = gsm_rig.clock
    master = BusMaster(gsm_rig.link, clock, queue_timeout_s=60)
    svc = gsm_rig.make(master, idle_hangup_s=20.0, demand_check_s=1.0)
    svc.startService()
    _advance(clock, 10.0)
    assert svc.calls == 0 and svc.dialer.state is DialerState.READY  # nothing to do: no call
    d = master.transact(m.ReadCdtStatus(address=gsm_rig.link.cdt(7).bcd_address))
    _advance(clock, 5.0)  # demand seen within 1 s, 3 s dial
    assert isinstance(d.result, m.CdtStatus) and svc.calls == 1
    _advance(clock, 15.0)
    assert master.connected  # idle 15 s < 20 s
    _advance(clock, 10.0)
    assert not master.connected and gsm_rig.modem.machine.state.value == "command"
    assert svc.dialer.state is DialerState.READY and svc.calls == 1
    svc.stopService()
    master.shutdown()
    assert clock.getDelayedCalls() == []


# --------------------------------------------------------------------------- real pty


@pytest_twisted.ensureDeferred
async def test_gsm_over_a_pty_dial_read_hang_up_redial(kit):
    from twisted.internet.defer import Deferred

    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.modem import ModemEndpoint
    from st2000r.simulation.world import World

    topo = kit.topology(['name = "g"\nkind = "gsm"\nmodem = "/dev/null"\nnumber = "+8613800000001"'])
    world = World(topo, reactor, seed=4)
    bus = SimulatedBus(world, "g", reactor, physical_timing=False)
    modem = ModemEndpoint("g", bus, reactor, number="+8613800000001", dial_s=0.1, guard_s=0.1)
    modem.startService()
    from dataclasses import replace

    from st2000r.config.model import GsmEndpoint

    link = replace(topo.link("g"), endpoint=GsmEndpoint(modem.path, "+8613800000001", 19200))
    master = BusMaster(link, reactor, queue_timeout_s=10)
    svc = GsmLinkService(link, master, reactor, guard_s=0.1, retry=lambda n: 0.1)
    events: list[str] = []
    waiters: list[tuple[int, Deferred]] = []

    def observe(event, details):
        events.append(event)
        for item in list(waiters):
            if events.count("connected") >= item[0]:
                waiters.remove(item)
                item[1].callback(None)

    def calls(n: int) -> Deferred:
        d: Deferred = Deferred()
        waiters.append((n, d))
        observe("-", {})
        return d.addTimeout(TIMEOUT, reactor)

    svc.add_observer(observe)
    svc.startService()
    try:
        await calls(1)
        req = m.ReadCdtStatus(address=link.cdt(7).bcd_address)
        reply = await master.transact(req).addTimeout(TIMEOUT, reactor)
        assert isinstance(reply, m.CdtStatus)
        svc.hangup()
        await calls(2)  # hung up (+++ ATH) and redialled
        reply = await master.transact(req).addTimeout(TIMEOUT, reactor)
        assert isinstance(reply, m.CdtStatus)
        assert modem.calls == 2 and svc.csq == 23
        assert [e for e in events if e != "-"] == ["signal", "connected", "idle", "signal", "connected"]
    finally:
        await svc.stopService()
        master.shutdown()
        modem.stopService()
