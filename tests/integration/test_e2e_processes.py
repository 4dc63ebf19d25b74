"""The installed commands as processes: ``st2000r run`` against ``st2000r simulate`` over the
simulator's pseudo-terminal, and ``st2000r demo`` (simulator + supervisor in one process)
finishing a round of the 12,288-meter community."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

from st2000r.config import example_path

ST2000R = os.path.join(os.path.dirname(sys.executable), "st2000r")


class Lines:
    """Lines of a process's stdout, read with a deadline (never blocks past it)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buf = b""
        self.lines: list[str] = []

    def until(self, pattern: str, timeout: float) -> re.Match:
        """The first line (read so far or arriving within ``timeout``) matching ``pattern``."""
        rx = re.compile(pattern)
        for line in self.lines:
            if (match := rx.search(line)) is not None:
                return match
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} within {timeout} s; got:\n" + "\n".join(self.lines[-30:])
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            assert chunk, f"process ended (rc {self.proc.wait()}) before {pattern!r}:\n" + "\n".join(self.lines[-30:])
            self.buf += chunk
            *done, self.buf = self.buf.split(b"\n")
            new = [raw.decode("utf-8", "replace") for raw in done]
            self.lines += new
            for line in new:
                if (match := rx.search(line)) is not None:
                    return match

    def rest(self, timeout: float) -> str:
        out, _ = self.proc.communicate(timeout=timeout)
        text = (self.buf + out).decode("utf-8", "replace")
        self.lines += text.splitlines()
        return text


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


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


def test_demo_reads_the_whole_community_and_every_meter_matches_the_truth():
    proc = subprocess.Popen([ST2000R, "demo", "--baud", "115200", "--for", "300", "--tcp-port", "0", "--control", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = Lines(proc)
        out.until(r"full round .* about", 20)
        out.until(r"st2000r simulate-ctl .*truth", 20)
        summary = out.until(r"^summary: (\d+) of (\d+) meters read; (\d+) equal the simulator's ground truth", 240)
        assert summary.groups() == ("12288", "12288", "12288")
        ratio = out.until(r"sweep ([\d.]+) s / wire bound ([\d.]+) s = ([\d.]+)", 5)
        assert float(ratio.group(3)) >= 1.0
        per_meter = out.until(r"([\d.]+) bytes on the wire per meter", 5)
        assert 4 < float(per_meter.group(1)) < 10  # vs 55 for CJ/T 188 per-meter reads
        proc.send_signal(signal.SIGTERM)
        out.rest(20)
        assert proc.returncode == 0, proc.stderr.read().decode()
    finally:
        _stop(proc)
