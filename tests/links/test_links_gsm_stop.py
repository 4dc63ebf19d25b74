"""Regression: GsmLinkService.stopService while a call is up starts a hang-up (+++ / ATH) and returns a
Deferred.  If the modem port goes away during that hang-up (USB modem unplugged, modem
reset), neither HungUp nor Failed is produced: the Deferred never fires (the reactor's
'before shutdown' trigger waits forever), and the SerialOpener - still running - reopens
the port and the *stopped* service re-initialises and dials again."""
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionLost

from support.configs import GSM_SITE
from st2000r.config.loader import loads
from st2000r.drivers.st2000r.gsm import GsmLinkService, DialerState

CFG = GSM_SITE


class Master:
    queued = 0
    busy = False
    def connection_made(self, w): pass
    def data_received(self, d): pass
    def connection_lost(self, r="", *, deliberate=False): pass


def test_stop_during_hangup_with_port_lost():
    clock = Clock()
    protos, transports = [], []

    class Port:
        def loseConnection(self):
            pass

    def open_port(protocol):
        t = StringTransport()
        protocol.makeConnection(t)
        protos.append(protocol); transports.append(t)
        return Port()

    link = loads(CFG).link("g")
    svc = GsmLinkService(link, Master(), clock, open_port=open_port, retry=lambda n: 1.0)
    svc.startService()
    modem = protos[0]
    for reply in (b"\r\nOK\r\n", b"\r\nOK\r\n", b"\r\n+CSQ: 20,0\r\n\r\nOK\r\n", b"\r\n+CREG: 0,1\r\n\r\nOK\r\n",
                  b"\r\nCONNECT 9600\r\n"):
        modem.dataReceived(reply)
    assert svc.dialer.state is DialerState.ONLINE
    d = svc.stopService()
    fired = []
    d.addBoth(fired.append)
    clock.advance(0.5)                      # in the guard time before +++
    modem.connectionLost(Failure(ConnectionLost("modem unplugged")))
    clock.advance(600)
    assert fired, "stopService Deferred never fired"
    assert len(protos) == 1, "a stopped service reopened the modem port"
