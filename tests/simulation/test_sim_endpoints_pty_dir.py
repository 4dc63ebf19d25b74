"""``--pty-dir DIR``: every endpoint on a pseudo-terminal (a serial link's pty and a GSM
link's modem) gets the symlink ``DIR/<link>``, which a serial client opens like the pty
itself; the symlink goes away when the endpoint stops."""

from __future__ import annotations

import os
from datetime import datetime

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from support.fakes import EchoBus as FakeBus
from support.pty import PtyMaster, poll
from st2000r.config.loader import loads
from st2000r.drivers.st2000r import messages as m
from st2000r.simulation.endpoints import PtyEndpoint, PtyPair
from st2000r.simulation.modem import ModemEndpoint
from st2000r.simulation.service import SimulatorOptions, SimulatorService

TOPOLOGY = """
[templates.flat]
channels = [ { channel = 1, kind = "water", pulse_constant = 10 } ]

[[sites]]
name = "Both"
address = "here"

[[sites.links]]
name = "wire"
kind = "serial"
device = "/dev/ttyUSB0"

[[sites.links.cdt_ranges]]
addresses = "1"
modules = "1"
template = "flat"
serial = "1{cdt:03}{module:02}{channel}"

[[sites.links]]
name = "call"
kind = "gsm"
modem = "/dev/ttyACM9"
number = "13800000001"

[[sites.links.cdt_ranges]]
addresses = "2"
modules = "1"
template = "flat"
serial = "2{cdt:03}{module:02}{channel}"
"""


def _endpoints(link_dir: str):
    clock = Clock()
    return [
        PtyEndpoint("wire", FakeBus(), reactor, link_dir=link_dir, clock=clock),
        ModemEndpoint("call", FakeBus(), reactor, number="13800000001", link_dir=link_dir, clock=clock),
    ]


@pytest.mark.parametrize("index", [0, 1], ids=["pty", "modem"])
def test_every_pty_endpoint_links_its_pty_and_unlinks_on_stop(tmp_path, index):
    link_dir = str(tmp_path / "dev")  # created on start
    ep = _endpoints(link_dir)[index]
    ep.startService()
    link = os.path.join(link_dir, ep.link)
    try:
        assert os.readlink(link) == ep.path and os.path.samefile(link, ep.path)
        assert ep.symlink == link
        info = ep.info()
        assert info.where == link and info.note.startswith(f"-> {ep.path}")
    finally:
        ep.stopService()
    assert not os.path.lexists(link) and ep.symlink is None


def test_a_stale_link_is_replaced_and_a_real_file_is_left_alone(tmp_path):
    os.symlink("/nonexistent/pts/99", tmp_path / "call")
    (tmp_path / "wire").write_text("not a link")
    modem, pty = _endpoints(str(tmp_path))[::-1]
    modem.startService()
    try:
        assert os.readlink(tmp_path / "call") == modem.path
    finally:
        modem.stopService()
    with pytest.raises(FileExistsError):
        pty.startService()
    assert (tmp_path / "wire").read_text() == "not a link"


def test_pty_pair_without_a_dir_makes_no_link():
    pair = PtyPair()
    try:
        assert pair.symlink is None and os.path.exists(pair.path)
    finally:
        pair.close()


@pytest_twisted.ensureDeferred
async def test_simulator_links_the_modem_and_the_serial_pty(tmp_path):
    link_dir = str(tmp_path / "pts")
    clock = Clock()
    options = SimulatorOptions(
        physical_timing=False, control_port=None, start=datetime(2026, 3, 2, 6, 0),
        pty_dir=link_dir, modem_dial_s=1.0,
    )  # fmt: skip
    sim = SimulatorService(loads(TOPOLOGY), options, reactor, clock=clock)
    sim.startService()
    ports = []
    try:
        where = {e.link: e.where for e in sim.endpoints()}
        assert where == {"wire": os.path.join(link_dir, "wire"), "call": os.path.join(link_dir, "call")}
        assert sorted(os.listdir(link_dir)) == ["call", "wire"]
        assert os.readlink(where["call"]) == sim.modems["call"].path

        # the modem answers on its link, and its call carries frames to the bus
        modem = PtyMaster(where["call"])
        ports.append(modem)
        modem.send(b"ATE0\r")
        await modem.until(lambda: b"OK\r\n" in modem.raw)
        modem.raw.clear()
        modem.send(b"ATD13800000001\r")
        await poll(lambda: sim.modems["call"].machine.state.value == "dialing")
        clock.advance(1.0)
        await modem.until(lambda: b"CONNECT 9600\r\n" in modem.raw)
        modem.decoder.clear()
        modem.send(m.encode(m.ReadCdtStatus(address=f"{2:014d}")))
        await poll(lambda: sim.buses["call"].stats.requests == 1)
        clock.advance(1.0)
        assert isinstance(m.parse(await modem.frame()), m.CdtStatus)

        # the serial link's pty on its link
        wire = PtyMaster(where["wire"])
        ports.append(wire)
        wire.send(m.encode(m.ReadCdtStatus(address=f"{1:014d}")))
        await poll(lambda: sim.buses["wire"].stats.requests == 1)
        clock.advance(1.0)
        assert isinstance(m.parse(await wire.frame()), m.CdtStatus)
    finally:
        for port in ports:
            port.close()
        await maybeDeferred(sim.stopService)
    assert os.listdir(link_dir) == []
