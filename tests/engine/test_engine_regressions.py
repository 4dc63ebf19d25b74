"""Regressions found in review: each test failed before its fix."""

from __future__ import annotations

from twisted.internet.task import Clock

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import FrameDecoder
from st2000r.drivers.st2000r.master import BusMaster

from engine_support import make_cdt, make_link
from support.clock import step_until


def test_adaptive_timeout_comes_back_down_after_a_burst_of_late_replies():
    clock = Clock()
    clock.advance(1000)
    master = BusMaster(make_link([make_cdt(1)], baud=9600), clock, retries=2)
    sent: list[m.Message] = []
    master.connection_made(lambda data: sent.extend(m.parse(f) for f in FrameDecoder().frames(data)))
    req = m.ReadCdtStatus(address="00000000000001")
    model = master.timeout_for(req)

    def reply_to(r):
        return m.encode(m.CdtStatus(address=r.address, ser=r.ser))

    def run_until_sent(n):
        step_until(clock, lambda: len(sent) >= n, 60.0, f"request {n} written")

    for k in range(6):  # the first attempt of each is answered 0.4..0.9 s late
        master.transact(req).addErrback(lambda f: None)
        n = len(sent)
        run_until_sent(n + 1)
        first = sent[-1]
        run_until_sent(n + 2)
        clock.advance(0.4 + 0.1 * k)
        master.data_received(reply_to(first))
        master.data_received(reply_to(sent[-1]))
        clock.advance(0.05)
    assert master.timeout_for(req) > 2 * model  # it did adapt
    for _ in range(3000):  # then a healthy period: prompt replies only
        master.transact(req).addErrback(lambda f: None)
        n = len(sent)
        run_until_sent(n + 1)
        clock.advance(0.005)
        master.data_received(reply_to(sent[-1]))
    assert master.timeout_for(req) < 1.5 * model
