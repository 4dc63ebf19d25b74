"""GSM modem: the Hayes state machine as tables (sans-I/O), and the pty adapter answering
a real dial sequence and then carrying bytes to the bus."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from support.fakes import EchoBus as FakeBus
from support.pty import PtyReader
from st2000r.simulation.modem import (
    CallDown,
    CallUp,
    CancelTimer,
    ModemEndpoint,
    ModemMachine,
    ModemState,
    StartTimer,
    ToBus,
    ToDte,
)

def dte(outputs) -> bytes:
    return b"".join(o.data for o in outputs if isinstance(o, ToDte))


def test_dial_sequence_table():
    m = ModemMachine("13800000001", rate=9600, dial_s=3.0)
    assert dte(m.receive(b"ATZ\r", 0.0)) == b"ATZ\r\r\nOK\r\n"  # echo is on after reset
    assert dte(m.receive(b"ATE0\r", 0.1)) == b"ATE0\r\r\nOK\r\n"  # echoed before it takes effect
    assert dte(m.receive(b"AT\r", 0.2)) == b"\r\nOK\r\n"
    assert dte(m.receive(b"at+csq\r", 0.3)) == b"\r\n+CSQ: 23,0\r\n\r\nOK\r\n"
    assert dte(m.receive(b"AT+CREG?\r", 0.4)) == b"\r\n+CREG: 0,1\r\n\r\nOK\r\n"
    assert dte(m.receive(b"ATI\r", 0.5)).endswith(b"\r\nOK\r\n")
    assert dte(m.receive(b"ATX9\r", 0.6)) == b"\r\nERROR\r\n"
    assert dte(m.receive(b"hello\r", 0.6)) == b"\r\nERROR\r\n"
    out = m.receive(b"ATD13800000001\r", 1.0)
    assert out == [StartTimer("dial", 3.0)] and m.state is ModemState.DIALING
    out = m.timer("dial", 4.0)
    assert out == [CallUp(), ToDte(b"\r\nCONNECT 9600\r\n")] and m.state is ModemState.ONLINE
    assert m.receive(b"\x68\x10", 4.1) == [ToBus(b"\x68\x10")]
    assert m.from_bus(b"reply") == [ToDte(b"reply")]


def test_escape_needs_guard_time_and_ath_hangs_up():
    m = ModemMachine("1", dial_s=1.0)
    m.receive(b"ATE0\r", 0.0)
    m.receive(b"ATD1\r", 0.0)
    m.timer("dial", 1.0)
    # "+++" without the leading guard time is data
    assert m.receive(b"x+++", 1.5) == [ToBus(b"x+++")]
    # with a second of silence before: held back, guard timer started
    assert m.receive(b"+++", 3.0) == [StartTimer("guard", 1.0)]
    assert m.timer("guard", 4.0) == [ToDte(b"\r\nOK\r\n")] and m.state is ModemState.ONLINE_COMMAND
    assert m.from_bus(b"late") == []  # nothing reaches the DTE in command mode
    assert dte(m.receive(b"ATO\r", 5.0)) == b"\r\nCONNECT 9600\r\n" and m.state is ModemState.ONLINE
    m.receive(b"+++", 7.0)
    m.timer("guard", 8.0)
    out = m.receive(b"ATH\r", 9.0)
    assert CallDown() in out and dte(out) == b"\r\nOK\r\n" and m.state is ModemState.COMMAND
    assert dte(m.receive(b"ATO\r", 9.5)) == b"\r\nNO CARRIER\r\n"


def test_escape_interrupted_by_data_passes_the_pluses_on():
    m = ModemMachine("1", dial_s=1.0)
    m.receive(b"ATD1\r", 0.0)
    m.timer("dial", 1.0)
    m.receive(b"+++", 5.0)
    assert m.receive(b"A", 5.5) == [CancelTimer("guard"), ToBus(b"+++A")]
    assert m.timer("guard", 6.0) == [] and m.state is ModemState.ONLINE


def test_wrong_number_network_down_abort_and_carrier_loss():
    m = ModemMachine("555", dial_s=1.0)
    m.receive(b"ATE0\r", 0.0)
    m.receive(b"ATDT 556\r", 0.0)
    assert dte(m.timer("dial", 1.0)) == b"\r\nNO CARRIER\r\n"
    m.network_up = False
    m.receive(b"ATD555\r", 2.0)
    assert dte(m.timer("dial", 3.0)) == b"\r\nNO CARRIER\r\n"
    m.network_up = True
    m.receive(b"ATD555\r", 4.0)
    assert m.receive(b"\r", 4.5) == [CancelTimer("dial"), ToDte(b"\r\nNO CARRIER\r\n")]  # a key aborts
    m.receive(b"ATD555\r", 5.0)
    m.timer("dial", 6.0)
    assert m.carrier_lost() == [CallDown(), CancelTimer("guard"), ToDte(b"\r\nNO CARRIER\r\n")]
    assert m.state is ModemState.COMMAND


def test_ring_and_answer():
    m = ModemMachine("1", dial_s=2.0)
    m.receive(b"ATE0\r", 0.0)
    assert dte(m.receive(b"ATA\r", 0.0)) == b"\r\nNO CARRIER\r\n"  # nothing to answer
    assert m.ring() == [ToDte(b"\r\nRING\r\n"), StartTimer("ring", 30.0)]
    assert m.receive(b"ATA\r", 1.0) == [CancelTimer("ring"), StartTimer("dial", 2.0)]
    assert m.timer("dial", 3.0)[0] == CallUp()
    assert m.ring() == []  # busy in a call


def test_no_input_raises():
    m = ModemMachine("1")
    for chunk in (bytes(range(256)), b"AT" + bytes(range(256)) + b"\r", b"ATS\r", b"ATS0=\r", b"AT&Q\r", b"+++\r" * 3):
        m.receive(chunk, 0.0)


@pytest_twisted.ensureDeferred
async def test_modem_on_a_real_pty_dials_and_carries():
    clock, bus = Clock(), FakeBus()
    modem = ModemEndpoint("gsm1", bus, reactor, number="13800000001", clock=clock, dial_s=3.0)
    modem.startService()
    port = PtyReader(modem.path)
    try:
        for command, answer in ((b"ATZ\r", b"OK\r\n"), (b"ATE0\r", b"OK\r\n"), (b"AT+CSQ\r", b"+CSQ: 23,0\r\n\r\nOK\r\n")):
            port.send(command)
            await port.expect(answer)
            port.take()
        port.send(b"ATD13800000001\r")
        # the dial takes 3 s of the modem's clock: wait (bounded) until the modem has read ATD
        for _ in range(400):
            if modem.machine.state is ModemState.DIALING:
                break
            await _tick()
        assert bus.write is None
        clock.advance(3.0)
        assert (await port.expect(b"CONNECT 9600\r\n")).endswith(b"\r\nCONNECT 9600\r\n")
        port.take()
        port.send(b"\xfe\x68frame\x16")
        assert await port.expect(b"R:\xfe\x68frame\x16")
        assert bytes(bus.received) == b"\xfe\x68frame\x16"
        for callback in bus.drops:  # the call drops
            callback(10.0)
        await port.expect(b"NO CARRIER\r\n")
        assert bus.write is None and modem.machine.state is ModemState.COMMAND
    finally:
        port.close()
        await maybeDeferred(modem.stopService)


def _tick() -> Deferred:
    d = Deferred()
    reactor.callLater(0.005, d.callback, None)
    return d
