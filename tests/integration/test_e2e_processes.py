"""The installed commands as processes: ``st2000r run`` against ``st2000r simulate`` over the
simulator's pseudo-terminal, and ``st2000r demo`` (the supervisor in its process, the
simulator as its child) finishing a round of the 12,288-meter community, checked against the
simulator's ground truth; every way the demo stops leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest

from support.process import ST2000R, Lines, marked_env, marked_processes, wait_exited
from support.process import stop as _stop
from st2000r.config import example_path
from st2000r.supervisor.events import MeterId, Reading

def test_run_against_simulate_logs_a_completed_round_and_exits_0_on_sigterm(tmp_path):
    ptys = tmp_path / "pty"
    text = example_path("small.toml").read_text(encoding="utf-8")
    sim_config = tmp_path / "field.toml"
    sim_config.write_text(text, encoding="utf-8")
    sup_config = tmp_path / "site.toml"
    sup_config.write_text(
        text.replace("/dev/ttyUSB0", str(ptys / "garden-bus"))
        + f'\n[[plans]]\nname = "hourly"\nkind = "full"\nevery = "1h"\n\n[supervisor]\nstate_dir = "{tmp_path}"\n',
        encoding="utf-8")
    sim = subprocess.Popen([ST2000R, "simulate", str(sim_config), "--control", "0", "--pty-dir", str(ptys)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = None
    try:
        sim_out = Lines(sim)
        sim_out.until(r"^ready", 20)
        assert (ptys / "garden-bus").is_symlink()
        run = subprocess.Popen([ST2000R, "run", str(sup_config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = Lines(run)
        out.until(r"supervising .*1 CDTs, 7 meters", 20)
        done = out.until(r"link garden-bus: round of hourly \(full\) done in [\d.]+ s: 1 CDTs tried, 0 unreachable", 30)
        assert done
        run.send_signal(signal.SIGTERM)
        out.rest(20)
        assert run.returncode == 0, run.stderr.read().decode()
        assert out.lines[-1].endswith("stopped")
        sim.send_signal(signal.SIGTERM)
        sim_out.rest(20)
        assert sim.returncode == 0
    finally:
        _stop(sim)
        if run is not None:
            _stop(run)




# --------------------------------------------------------------------------- st2000r demo


class Demo:
    """An ``st2000r demo`` process in its own session (so a signal to its process group is
    what a terminal's Ctrl-C does), every process it starts marked; :meth:`leftovers`
    lists the marked processes still alive once they had ``timeout`` to go."""

    def __init__(self, *args: str) -> None:
        self.mark = uuid.uuid4().hex
        self.proc = subprocess.Popen([ST2000R, "demo", "--tcp-port", "0", "--control", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=marked_env(self.mark),
                                     start_new_session=True)
        self.out = Lines(self.proc)

    def started(self, timeout: float = 60) -> int:
        """Waits for the round to start; the simulator's pid (from the first line)."""
        pid = int(self.out.until(r"^st2000r demo: .* in process (\d+), the supervisor", timeout).group(1))
        self.out.until(r"^full round started", timeout)
        return pid

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Waits for the exit; ``(status, stderr)``."""
        out, err = self.proc.communicate(timeout=timeout)
        self.out.lines += (self.out.buf + out).decode("utf-8", "replace").splitlines()
        self.out.buf = b""
        return self.proc.returncode, err.decode("utf-8", "replace")

    def leftovers(self, timeout: float = 20) -> list[int]:
        return wait_exited(marked_processes(self.mark), timeout)

    def close(self) -> None:
        for pid in marked_processes(self.mark):  # a failed test must not leave them either
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _stop(self.proc)


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")


def test_demo_reads_the_whole_community_and_every_meter_matches_the_truth():
    demo = Demo("--baud", "115200", "--for", "300")
    try:
        out = demo.out
        out.until(r"a full round at 115200 baud 8E1 takes about", 30)
        sim_pid = demo.started()
        # the simulator is a process of its own: the supervisor's process never loads it
        assert sim_pid != demo.proc.pid
        assert _cmdline(sim_pid)[1:4] == ["-m", "st2000r.supervisor.cli", "simulate"]
        out.until(r"st2000r simulate-ctl --url http://127\.0\.0\.1:\d+ truth", 5)
        first = out.until(r"^\[ *[\d.]+ s\] meters ([\d,]+)/12,288 read, CDT halves (\d+)/256", 60)
        assert int(first.group(2)) > 0  # counted as replies arrive, not when whole CDTs complete
        summary = out.until(r"^summary: (\d+) of (\d+) meters read; (\d+) equal the simulator's ground truth "
                            r"within the read window \(.*widest window ([\d.]+) s\); (\d+) CDTs unreachable", 240)
        assert summary.groups()[:3] == ("12288", "12288", "12288")
        assert summary.group(5) == "0"
        ratio = out.until(r"sweep ([\d.]+) s / wire bound ([\d.]+) s = ([\d.]+)", 5)
        assert float(ratio.group(3)) >= 1.0
        # the window of a reading spans at most the round and the two snapshots around it
        assert float(summary.group(4)) < float(ratio.group(1)) + 30
        per_meter = out.until(r"([\d.]+) bytes on the wire per meter", 5)
        assert 4 < float(per_meter.group(1)) < 10  # vs 55 for CJ/T 188 per-meter reads
        assert not any(line.startswith("summary: not equal") for line in out.lines)
        demo.proc.send_signal(signal.SIGTERM)
        status, err = demo.finish()
        assert status == 0, err
        assert out.lines[-1] == "stopped"
        assert demo.leftovers() == []
    finally:
        demo.close()


def test_demo_ctrl_c_mid_round_prints_the_interrupted_summary_and_stops_its_simulator():
    demo = Demo("--baud", "115200", "--no-scenario")
    try:
        sim_pid = demo.started()
        demo.out.until(r"^\[ *[\d.]+ s\] meters [\d,]+/12,288 read", 30)
        os.killpg(demo.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        interrupted = demo.out.until(r"^summary: the round was interrupted after", 60)
        assert interrupted
        summary = demo.out.until(r"^summary: (\d+) of 12288 meters read; (\d+) equal the simulator's ground truth "
                                 r"within the read window", 30)
        read, equal = map(int, summary.groups())
        assert 0 < read < 12288 and equal == read
        status, err = demo.finish()
        assert status == 0, err
        assert demo.out.lines[-1] == "stopped"
        assert wait_exited([sim_pid], 5) == []
        assert demo.leftovers() == []
    finally:
        demo.close()


def test_demo_for_seconds_stops_by_itself_and_leaves_no_process():
    """Three seconds end it wherever it is: starting the simulator, fetching the first
    ground truth, or reading."""
    demo = Demo("--baud", "115200", "--for", "3", "--no-scenario", "--truth-every", "0")
    try:
        status, err = demo.finish()
        assert status == 0, err
        assert err == ""
        assert demo.out.lines[-1] == "stopped"
        assert demo.leftovers() == []
    finally:
        demo.close()


@pytest.mark.parametrize("option", ["--control", "--tcp-port"])
def test_demo_with_a_port_taken_exits_2_with_one_line_and_no_process(option):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = taken.getsockname()[1]
        demo = Demo("--baud", "115200", "--for", "30", option, str(number))
        try:
            status, err = demo.finish()
            assert status == 2
            lines = err.splitlines()
            assert len(lines) == 1, err
            assert lines[0].startswith("st2000r demo: the simulator cannot start: "
                                       f"cannot listen on 127.0.0.1:{number}: ")
            assert f"pass {option} 0 or another port" in err
            assert "summary" not in "\n".join(demo.out.lines)
            assert demo.leftovers() == []
        finally:
            demo.close()


def test_demo_whose_simulator_dies_exits_2_with_one_line():
    demo = Demo("--baud", "115200", "--no-scenario")
    try:
        sim_pid = demo.started()
        os.kill(sim_pid, signal.SIGKILL)
        status, err = demo.finish()
        assert status == 2
        expected = f"st2000r demo: the simulator (process {sim_pid}) ended by itself: killed by signal 9"
        assert err.splitlines() == [expected]
        assert demo.leftovers() == []
    finally:
        demo.close()


def test_simulator_stops_when_the_demo_is_killed():
    """SIGKILL leaves the demo no chance to stop its child: the kernel sends it SIGTERM."""
    demo = Demo("--baud", "115200", "--no-scenario")
    try:
        sim_pid = demo.started()
        demo.proc.kill()
        demo.proc.wait(10)
        assert wait_exited([sim_pid], 20) == []
        assert demo.leftovers() == []
    finally:
        demo.close()


def test_demo_simulator_only_runs_the_simulator_demo():
    proc = subprocess.Popen([ST2000R, "demo", "--simulator-only", "--for", "2", "--tcp-port", "0", "--control", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = Lines(proc)
        out.until(r"^endpoint: lakeside-bus -> pty ", 30)
        out.until(r"^Where to connect:", 5)
        out.rest(30)
        assert proc.returncode == 0, proc.stderr.read().decode()
        assert out.lines[-1] == "stopped"
    finally:
        _stop(proc)


# --------------------------------------------------------------------------- the demo's pieces


def test_truth_check_brackets_each_reading_between_snapshots_around_its_read():
    from st2000r.supervisor.demo import Snapshot, TruthCheck

    meter = MeterId("bus", 1, 1, 2)

    def reading(value):
        return (Reading(meter, value, value, None, None),)

    def snap(sent, received, value):
        return Snapshot(sent, received, {("bus", 1, 2): value})

    check = TruthCheck()
    check.snapshot(snap(0.0, 1.0, 100))
    check.batch(reading(105), arrived=5.0, not_before=2.0)  # request written after 2.0: snapshot 0 is before
    check.snapshot(snap(3.0, 4.0, 103))  # requested before the reply arrived: not "after"
    assert check.verdict == {} and check.unchecked == 1
    check.snapshot(snap(6.0, 7.0, 110))
    assert check.verdict == {meter: True}
    assert check.widest == 7.0
    # the next reply: its "before" is snapshot 2 (received 7.0 <= 8.0); 109 < 110 is not
    # consistent with a counter that never decreases
    check.batch(reading(109), arrived=9.0, not_before=8.0)
    check.snapshot(snap(9.5, 10.0, 111))
    assert check.verdict == {meter: False}
    assert check.mismatches == ["bus/1/1/2: read 109, ground truth 110..111"]


def test_truth_check_cannot_check_a_reading_without_a_snapshot_before_its_request():
    from st2000r.supervisor.demo import TruthCheck

    check = TruthCheck()
    check.batch((Reading(MeterId("bus", 1, 1, 1), 1, 1, None, None),), arrived=2.0, not_before=1.0)
    assert check.unchecked == 1 and check.verdict == {}


def test_community_text_sets_the_links_baud_rate():
    from st2000r.config.loader import loads
    from st2000r.supervisor.demo import community_resource, community_text

    text = community_resource().read_text(encoding="utf-8")
    assert community_text(text, None) == text
    fast = loads(community_text(text, 115200), "<demo>")
    plain = loads(text, "<demo>")
    assert next(fast.links()).line.baud == 115200
    assert next(plain.links()).line.baud == 2400
    assert fast.summary() == plain.summary()
    assert next(loads(community_text(community_text(text, 9600), 19200), "<demo>").links()).line.baud == 19200


@pytest.mark.parametrize("argv", [["--for", "inf"], ["--for", "nan"], ["--progress", "0"], ["--truth-every", "-1"],
                                  ["--baud", "12"], ["--control", "70000"]])
def test_demo_rejects_bad_numbers_with_one_line(argv, capsys):
    from st2000r.supervisor import demo

    assert demo.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("st2000r demo: argument ") and err.count("\n") == 1
