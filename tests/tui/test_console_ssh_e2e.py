"""End to end, as an operator at the utility's centre: ``st2000r simulate`` and
``st2000r run`` (with ``[api]``) as processes, an OpenSSH server on a loopback port with
its own host key and ``ForceCommand st2000r console --url …``, and ``ssh`` inside tmux.
The operator lands in the console (no shell), logs in, reads a meter whose value equals
the simulator's ground truth, closes its valve and sees the outcome; the field's valve is
closed.  Fails (not skips) under CI=true when sshd, ssh or tmux is missing."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.liveapi import LiveApi
from support.process import ST2000R

pytestmark = pytest.mark.slow
METER = "garden-bus/1/1/1"
SSHD = "/usr/sbin/sshd"


def need(tool: str) -> str:
    path = tool if os.path.isabs(tool) and os.access(tool, os.X_OK) else shutil.which(tool)
    if path is None:
        message = f"{tool} is missing: install the Debian packages openssh-server, openssh-client and tmux"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """An OpenSSH server of the test's own: host key, one client key, ForceCommand."""

    def __init__(self, tmp: Path, command: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        for key in ("hk", "ck"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
        (tmp / "authorized_keys").write_text((tmp / "ck.pub").read_text())
        self.config = tmp / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {tmp / 'hk'}", f"PidFile {tmp / 'sshd.pid'}",
            f"AuthorizedKeysFile {tmp / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            "AllowTcpForwarding no", "AllowAgentForwarding no", "X11Forwarding no", "PermitTunnel no",
            f"ForceCommand {command}", "",
        ]))

    def start(self) -> None:
        os.makedirs("/run/sshd", exist_ok=True)  # the privilege-separation directory
        subprocess.run([SSHD, "-f", str(self.config), "-E", str(self.tmp / "sshd.log")], check=True, timeout=10)
        deadline = time.monotonic() + 10
        while not (self.tmp / "sshd.pid").exists():
            assert time.monotonic() < deadline, (self.tmp / "sshd.log").read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        pid_file = self.tmp / "sshd.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), 15)
            except ProcessLookupError:
                pass

    def client(self) -> str:
        return (f"ssh -i {self.tmp / 'ck'} -p {self.port} -o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -t root@127.0.0.1")


class Tmux:
    def __init__(self, tmp: Path) -> None:
        self.socket = str(tmp / "tmux.sock")
        self.env = os.environ | {"TERM": "xterm-256color"}

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True, capture_output=True, text=True,
                              env=self.env, timeout=10).stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "op", "-x", "100", "-y", "30", command)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "op", *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "op", "-l", text)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "op")

    def until(self, pattern: str, timeout: float = 20) -> re.Match:
        """The first match of ``pattern`` on the screen within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.screen())
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"not on screen within {timeout} s: {pattern!r}\n{self.screen()}")
            time.sleep(0.1)

    def stop(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def live(tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    api = LiveApi(folder).start()
    yield api
    api.stop()


def test_an_operator_over_ssh_reads_the_true_value_and_closes_a_valve(tmp_path, live):
    for tool in (SSHD, "ssh", "ssh-keygen", "tmux"):
        need(tool)
    url = live.url.removesuffix("/api/v1")
    sshd = Sshd(tmp_path, f"{ST2000R} console --url {url}")
    tmux = Tmux(tmp_path)
    sshd.start()
    try:
        tmux.start(sshd.client())
        tmux.until(r"Log in to the supervisor at " + re.escape(url))
        tmux.until(r"▶ Name")  # typing goes to the name field
        tmux.type("operator")
        tmux.keys("Enter")
        tmux.until(r"▶ Password")
        tmux.type("operator")
        tmux.keys("Enter")
        tmux.until(r"operator \(operator\) .* live")

        tmux.keys("F2")
        tmux.until(re.escape(METER) + r"\s+A-101")
        tmux.keys("Enter")
        tmux.until(r"Meter " + re.escape(METER))
        before = live.true_meter(1, 1, 1)["reading"]
        tmux.keys("r")  # read now: the value on screen is fresh from the field
        live.until(lambda: read_done(live), 30, "the read-now command")
        api_value = live.request("GET", f"meters/{METER}", as_="viewer")[1]["value"]
        shown = int(tmux.until(r"Value: (\d+) L").group(1))
        if shown != api_value:  # the change event is on its way
            shown = int(tmux.until(rf"Value: ({api_value}) L", 5).group(1))
        after = live.true_meter(1, 1, 1)["reading"]
        assert before <= shown <= after, (before, shown, after)
        print(f"meter {METER}: truth before {before}, on screen {shown}, truth after {after}")

        tmux.keys("v")
        tmux.until(r"Close the valve of meter " + re.escape(METER))
        tmux.type("e2e: unpaid bill")
        tmux.keys("Enter")
        outcome = tmux.until(r"Command (\S+): (succeeded|failed|timed out|refused)", 45)
        assert outcome.group(2) == "succeeded", tmux.screen()
        assert live.true_meter(1, 1, 1)["valve"] == "closed"
        tmux.keys("Escape")
        tmux.until(r"Valve: closed")
        tmux.keys("C-q")
    finally:
        tmux.stop()
        sshd.stop()


def read_done(live) -> bool:
    status, body = live.request("GET", f"commands?target={METER}&limit=1", as_="viewer")
    assert status == 200, body
    return bool(body["items"]) and body["items"][0]["kind"] == "read_now" and body["items"][0]["state"] not in (
        "pending", "sent")
