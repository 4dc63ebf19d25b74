"""Local endpoint plumbing: a real serial device (Twisted SerialPort on a pty standing in
for /dev/ttyUSB0), several endpoints sharing one bus, and a clean SIGTERM stop of
``st2000r simulate``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from support.fakes import EchoBus as FakeBus
from support.process import lines_until
from support.pty import read_until
from st2000r.config.model import LineSettings
from st2000r.simulation.endpoints import DeviceEndpoint, LinkCut, PtyPair, SharedBus
from test_sim_endpoints_cli import SMALL  # same directory


@pytest_twisted.ensureDeferred
async def test_device_endpoint_on_a_serial_device():
    pair = PtyPair()  # the "device" is the slave side; the test plays the far end on the master
    bus = FakeBus()
    clock = Clock()
    ep = DeviceEndpoint("ser", bus, reactor, pair.path, LineSettings(9600, 8, "E", 1), clock=clock)
    ep.startService()
    try:
        assert ep.info().where == pair.path and "9600 8E1" in ep.info().note
        reply = read_until(pair.master, b"R:ping")
        os.write(pair.master, b"ping")
        assert (await reply).endswith(b"R:ping")
        for callback in bus.drops:  # a link drop cuts the device both ways for 10 s
            callback(10.0)
        assert ep.cut.active
        clock.advance(10.0)
        assert not ep.cut.active
    finally:
        await maybeDeferred(ep.stopService)
        pair.close()


def test_shared_bus_replies_go_to_the_last_writer_and_drops_reach_all():
    bus = FakeBus()
    shared = SharedBus(bus)
    a, b = shared.port(), shared.port()
    got_a, got_b, drops = [], [], []
    a.connect(got_a.append)
    b.connect(got_b.append)
    a.on_link_drop(drops.append)
    b.on_link_drop(drops.append)
    a.data_received(b"1")
    b.data_received(b"2")
    a.data_received(b"3")
    assert got_a == [b"R:1", b"R:3"] and got_b == [b"R:2"]
    b.disconnect()  # not the owner: the bus stays with a
    a.data_received(b"4")
    assert got_a[-1] == b"R:4"
    for callback in bus.drops:
        callback(5.0)
    assert drops == [5.0, 5.0]


def test_link_cut_longest_wins():
    clock = Clock()
    ended = []
    cut = LinkCut(clock, on_end=lambda: ended.append(clock.seconds()))
    cut.start(10)
    clock.advance(2)
    cut.start(3)  # shorter than what is left: ignored
    clock.advance(7.9)
    assert cut.active
    clock.advance(0.1)
    assert not cut.active and ended == [10.0]


def test_simulate_stops_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "st2000r.supervisor.cli", "simulate", SMALL, "--control", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
    )
    try:
        lines = lines_until(proc, r"^ready", time.monotonic() + 30)
        pty = next(line.split()[4] for line in lines if line.startswith("endpoint: garden-bus -> pty"))
        assert os.path.exists(pty)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert out.decode().rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
