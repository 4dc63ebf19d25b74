"""Regressions found in review: each test failed before its fix."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from support.configs import GSM_SITE, ONE_WATER_METER
from st2000r.config.errors import ConfigError
from st2000r.config.loader import loads
from st2000r.drivers.st2000r.gsm import GsmLinkService
from st2000r.supervisor.service import SupervisorService

GSM = GSM_SITE + ONE_WATER_METER


def test_gsm_signal_before_the_first_call_raises_no_alarm_within_the_grace():
    clock = Clock()
    clock.advance(1_780_000_000)
    protos = []

    class Port:
        def loseConnection(self):
            pass

    def open_port(protocol):
        protocol.makeConnection(StringTransport())
        protos.append(protocol)
        return Port()

    def factory(link, master, reactor, gprs_server=None):
        return GsmLinkService(link, master, clock, open_port=open_port)

    sup = SupervisorService(loads(GSM), clock, link_factory=factory, audit_path=False, state=False)
    sup.startService()
    modem = protos[0]
    modem.dataReceived(b"\r\nOK\r\n")  # ATZ
    modem.dataReceived(b"\r\nOK\r\n")  # ATE0
    modem.dataReceived(b"\r\n+CSQ: 20,0\r\n\r\nOK\r\n")  # signal reported, not yet dialled
    clock.advance(1)
    assert "link:g:disconnected" not in list(sup.alarms.ids())
    clock.advance(60)  # still no call after the grace: now it is alarmed
    assert "link:g:disconnected" in list(sup.alarms.ids())
    sup.stopService()


def _gprs_config(listen: str, dtu_id: str = "DTU1", registration: str = "plain") -> str:
    return textwrap.dedent(f'''
        [supervisor]
        gprs_listen = "{listen}"
        [[sites]]
        name = "S"
        address = "A"
        [[sites.links]]
        name = "g"
        kind = "gprs"
        dtu_id = "{dtu_id}"
        registration = "{registration}"
        auth = "none"
        [[sites.links.cdts]]
        address = 1
        [[sites.links.cdts.modules]]
        module = 1
        channels = [ {{ channel = 1, kind = "water", pulse_constant = 10, serial = "1" }} ]
    ''')


def test_run_exits_1_when_the_gprs_port_is_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(_gprs_config(f"tcp:{port}:interface=127.0.0.1"))
        proc = subprocess.run(
            [sys.executable, "-m", "st2000r.supervisor.cli", "run", str(cfg), "--duration", "5",
             "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr, proc.stderr  # names the port taken


@pytest.mark.parametrize(
    "dtu_id, registration, reason",
    [
        ("ABCDEFGHIJKL", "ddp", "a DDP identity is 1..11 ASCII characters"),
        ("{DTU", "plain", "must not start with '{'"),
    ],
)
def test_dtu_identities_the_driver_cannot_serve_are_config_errors(dtu_id, registration, reason):
    with pytest.raises(ConfigError) as info:
        loads(_gprs_config("tcp:0", dtu_id, registration))
    assert any(i.path.endswith("dtu_id") and reason in i.reason for i in info.value.errors)
