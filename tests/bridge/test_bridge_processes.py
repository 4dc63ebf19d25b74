"""The bridge with the simulator and the supervisor as processes, read by real clients:
``mbpoll`` (a third-party Modbus master) and pymodbus's own client.

One simulator and one ``st2000r run`` serve every test of the module (module fixture): the
supervisor's first full round (read on connect) fills the registers; values are checked
against the simulator's ground truth *within the read window* (at least the truth before the
supervisor started, at most the truth after the read: meters keep counting).  Waiting is on
conditions with deadlines, never on sleeps of a fixed length.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import time

import pytest
from pymodbus.client import ModbusTcpClient

from support.process import ST2000R, Lines
from support.process import stop as _stop
from st2000r.config import example_path

MBPOLL = shutil.which("mbpoll")
pytestmark = pytest.mark.skipif(MBPOLL is None, reason="mbpoll (Debian package) is not installed")

LINK = "garden-bus"
UNIT = 1
# small.toml: CDT 1 in slot 0 -> block 1000; meter m/c at 1000 + 30(m-1) + 10(c-1)
METERS = {(1, 1): 1000, (1, 2): 1010, (1, 3): 1020, (2, 1): 1030, (2, 2): 1040, (5, 1): 1120, (5, 2): 1130}
CDT_HEADER = 1960
ALLOWED_SOURCE = "127.0.0.2"  # write_allow; mbpoll connects from 127.0.0.1


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(interval)  # polling interval of a bounded wait on a condition, not a timing assumption


class Rig:
    def __init__(self, tmp) -> None:
        self.tmp = tmp
        text = example_path("small.toml").read_text(encoding="utf-8")
        (tmp / "field.toml").write_text(text, encoding="utf-8")
        ptys = tmp / "pty"
        self.sim = subprocess.Popen([ST2000R, "simulate", str(tmp / "field.toml"), "--control", "0",
                                     "--pty-dir", str(ptys), "--seed", "5"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.run = None
        sim_out = Lines(self.sim)
        self.sim_url = sim_out.until(r"(http://127\.0\.0\.1:\d+)", 20).group(1)
        sim_out.until(r"^ready", 20)
        self.truth_before = self.truth()
        (tmp / "site.toml").write_text(
            text.replace("/dev/ttyUSB0", str(ptys / LINK))
            + '\n[[plans]]\nname = "hourly"\nkind = "full"\nevery = "1h"\n'
            + '\n[[plans]]\nname = "status"\nkind = "status"\nevery = 10\n'
            + f'\n[supervisor]\nstate_dir = "{tmp}"\ncommand_timeout = 20\n'
            + f'\n[[operators]]\nname = "modbus"\nrole = "operator"\n'
            + f'\n[modbus]\ntcp = "127.0.0.1:0"\nwrite_allow = ["{ALLOWED_SOURCE}"]\n', encoding="utf-8")
        self.run = subprocess.Popen([ST2000R, "run", str(tmp / "site.toml")], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        self.out = Lines(self.run)
        self.port = int(self.out.until(r"Modbus TCP server listening on 127\.0\.0\.1:(\d+)", 20).group(1))
        self.out.until(r"link garden-bus: round of hourly \(full\) done", 30)

    def truth(self) -> dict:
        out = subprocess.run([ST2000R, "simulate-ctl", "--url", self.sim_url, "truth"], capture_output=True,
                             timeout=20, check=True)
        return json.loads(out.stdout)

    def meter_truth(self, snapshot: dict, module: int, channel: int) -> dict:
        cdt = snapshot["links"][0]["cdts"][0]
        return next(m for m in cdt["meters"] if m["module"] == module and m["input"] == channel)

    def fault(self, *args: str) -> None:
        subprocess.run([ST2000R, "simulate-ctl", "--url", self.sim_url, "fault", *args], capture_output=True,
                       timeout=20, check=True)

    def mbpoll(self, *args: str, write: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([MBPOLL, "-m", "tcp", "-p", str(self.port), "-a", str(UNIT), "-0", "-1", *args,
                               "127.0.0.1", *write], capture_output=True, text=True, timeout=20)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def client(self, source: str | None = None) -> ModbusTcpClient:
        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=5,
                                 source_address=(source, 0) if source else None)
        assert client.connect()
        return client

    def close(self) -> None:
        for proc in (self.run, self.sim):
            if proc is not None:
                _stop(proc)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    rig = Rig(tmp_path_factory.mktemp("bridge"))
    try:
        yield rig
    finally:
        rig.close()


def mbpoll_values(text: str) -> dict[int, int]:
    """``[address]: value`` lines of mbpoll's output."""
    out = {}
    for line in text.splitlines():
        if line.startswith("[") and "]:" in line:
            addr, value = line[1:].split("]:", 1)
            out[int(addr)] = int(value.split()[0])
    return out


def test_mbpoll_reads_meter_values_within_the_read_window(rig):
    values = mbpoll_values(rig.mbpoll("-t", "3:int", "-B", "-r", "1000", "-c", "30").stdout)  # 1000..1059
    values.update(mbpoll_values(rig.mbpoll("-t", "3:int", "-B", "-r", "1120", "-c", "10").stdout))  # 1120..1139
    after = rig.truth()
    for (module, channel), base in METERS.items():
        low = rig.meter_truth(rig.truth_before, module, channel)["reading"]
        high = rig.meter_truth(after, module, channel)["reading"]
        assert low <= values[base] & 0xFFFFFFFF <= high, (module, channel, low, values[base], high)


def test_pymodbus_client_reads_quality_age_alarms_valve_and_cdt_health(rig):
    client = rig.client()
    try:
        truth = rig.truth()
        for (module, channel), base in METERS.items():
            regs = client.read_input_registers(base, count=8, device_id=UNIT).registers
            meter = rig.meter_truth(truth, module, channel)
            assert regs[2] == 0, f"quality of {module}/{channel}: {regs[2]:#x}"  # good, has a value
            assert (regs[3] << 16 | regs[4]) < 120  # age in seconds
            alarm_bits = sum(1 << i for i, name in enumerate(("tamper", "short", "open")) if name in meter["alarms"])
            assert regs[5] == alarm_bits
            assert regs[6] == {"open": 0, "closed": 1, "none": 2, "fault": 3}[meter["valve"]]
        regs = wait_for(lambda: (r := client.read_input_registers(CDT_HEADER, count=9, device_id=UNIT).registers)[1]
                        != 0xFFFF and r, 25, "the first status round")
        cdt = rig.truth()["links"][0]["cdts"][0]
        assert regs[0] == 1  # online
        assert regs[1] == int(cdt["mains"]) and regs[2] == int(cdt["battery_low"])
        assert abs(regs[3] - cdt["battery_mv"]) <= 50  # battery drifts slowly between read and truth
        assert regs[4] << 16 | regs[5] == sum(1 << (n - 1) for n in cdt["modules"])
        assert regs[6] << 16 | regs[7] == 1 and regs[8] == 0  # address, slot
        header = client.read_input_registers(0, count=22, device_id=UNIT).registers
        assert header[0] == 2 and header[10] == 0  # map version, link connected
        assert header[12] << 16 | header[13] > 0  # transactions
    finally:
        client.close()


def test_the_historian_status_registers_follow_the_supervisors_historian(rig):
    """``st2000r run`` with its default historian (SQLite in the state folder): the unit
    header shows it writing, its spool drained and nothing set aside (mbpoll reads them)."""
    def status() -> dict[int, int] | None:
        values = mbpoll_values(rig.mbpoll("-t", "3", "-r", "30", "-c", "10").stdout)
        return values if values[30] == 0 else None  # writing to its database

    values = wait_for(status, 20, "the historian connected")
    assert values[37] < 800 and (values[38] << 16 | values[39]) == 0  # spool far from its bound, none quarantined
    rows = lambda v: v[31] << 16 | v[32]  # noqa: E731
    assert rows(wait_for(lambda: (v := status()) and rows(v) == 0 and v, 20, "the spool drained")) == 0


def test_a_write_from_a_client_not_allowed_gets_an_exception_and_nothing_moves(rig):
    base = METERS[(1, 1)]
    before = rig.meter_truth(rig.truth(), 1, 1)["valve"]
    proc = rig.mbpoll("-t", "0", "-r", str(base), write=("0",), check=False)
    assert proc.returncode != 0
    assert "Illegal function" in proc.stdout + proc.stderr
    client = rig.client()
    try:
        assert client.write_coil(base, False, device_id=UNIT).isError()
        assert client.read_input_registers(base + 7, count=1, device_id=UNIT).registers == [0]  # no command
    finally:
        client.close()
    assert rig.meter_truth(rig.truth(), 1, 1)["valve"] == before == "open"


def test_a_coil_write_from_an_allowed_client_closes_the_valve_and_reports_success(rig):
    base = METERS[(1, 1)]
    client = rig.client(ALLOWED_SOURCE)
    try:
        assert client.read_coils(base, count=1, device_id=UNIT).bits[0] is True
        response = client.write_coil(base, False, device_id=UNIT)
        assert not response.isError(), response
        status = wait_for(lambda: (s := client.read_input_registers(base + 7, count=1, device_id=UNIT).registers[0])
                          in (3, 4, 5, 6) and s, 30, "the command's outcome")
        assert status == 3  # succeeded
        assert rig.meter_truth(rig.truth(), 1, 1)["valve"] == "closed"
        assert client.read_input_registers(base + 6, count=1, device_id=UNIT).registers == [1]
        assert client.read_coils(base, count=1, device_id=UNIT).bits[0] is False
    finally:
        client.close()
    rig.out.until(r"command .*: close garden-bus/1/1/1 by modbus:127\.0\.0\.2 via modbus", 5)


def test_an_injected_valve_jam_reports_failure(rig):
    base = METERS[(2, 1)]
    rig.fault("valve_jam", f"link={LINK}", "cdt=1", "channel=4")  # module 2 channel 1 = CDT channel 4
    client = rig.client(ALLOWED_SOURCE)
    try:
        assert not client.write_coil(base, False, device_id=UNIT).isError()
        status = wait_for(lambda: (s := client.read_input_registers(base + 7, count=1, device_id=UNIT).registers[0])
                          in (3, 4, 5, 6) and s, 40, "the jammed command's outcome")
        assert status == 4  # failed
    finally:
        client.close()


def test_fuzzed_requests_leave_the_server_serving_a_good_client(rig):
    import socket

    good = rig.client()
    rnd = random.Random(7)
    sent = 0
    try:
        expected = good.read_input_registers(0, count=2, device_id=UNIT).registers
        while sent < 10_000:
            with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as s:
                for _ in range(500):
                    kind = rnd.randrange(4)
                    fc = rnd.randrange(256)
                    if kind == 0:  # random bytes
                        frame = rnd.randbytes(rnd.randrange(1, 40))
                    else:  # MBAP with wrong lengths, any function, any unit, random body
                        body = bytes([fc]) + rnd.randbytes(rnd.randrange(0, 12))
                        length = len(body) + 1 + (0 if kind == 1 else rnd.randrange(-3, 4))
                        frame = struct.pack(">HHHB", rnd.randrange(65536), 0 if kind != 3 else rnd.randrange(65536),
                                            length & 0xFFFF, rnd.randrange(256)) + body
                    try:
                        s.sendall(frame)
                    except OSError:
                        break
                    sent += 1
            if sent % 2000 < 500:
                assert good.read_input_registers(0, count=2, device_id=UNIT).registers == expected
        assert good.read_input_registers(0, count=2, device_id=UNIT).registers == expected
        proc = rig.mbpoll("-t", "3", "-r", "0", "-c", "1")
        assert mbpoll_values(proc.stdout) == {0: 2}  # map version
    finally:
        good.close()
    assert rig.run.poll() is None


def test_a_silent_cdt_shows_comm_fail_within_two_status_rounds(rig):
    """Last of the module (the CDT stays silent): the simulator's CDT stops answering; by the
    time two more rounds (status, every 10 s) have completed, every meter of it reads quality
    comm-fail with the comm-fail alarm bit, its value kept, and the CDT reads offline."""
    client = rig.client()
    try:
        def rounds() -> int:
            r = client.read_input_registers(18, count=2, device_id=UNIT).registers
            return r[0] << 16 | r[1]

        before = {base: client.read_input_registers(base, count=8, device_id=UNIT).registers
                  for base in METERS.values()}
        assert all(regs[2] & 0xFF == 0 for regs in before.values())
        rig.fault("no_answer", f"link={LINK}", "cdt=1")
        first = rounds()

        def all_comm_fail():
            regs = {base: client.read_input_registers(base, count=8, device_id=UNIT).registers
                    for base in METERS.values()}
            return (all(r[2] & 0xFF == 2 for r in regs.values()) or rounds() > first + 2) and regs

        regs = wait_for(all_comm_fail, 60, "comm-fail quality or a third round")
        assert rounds() <= first + 2, "comm-fail not shown within two rounds"
        for base, r in regs.items():
            assert r[2] == 2, (base, r)  # comm-fail, the value is kept (no 'never read' flag)
            assert r[5] & 0x8, (base, r)  # the comm-fail alarm bit
            assert r[0:2] == before[base][0:2]  # the last value stays
        assert client.read_input_registers(CDT_HEADER, count=1, device_id=UNIT).registers == [0]  # offline
    finally:
        client.close()
