"""``st2000r demo`` serves the API too: it prints the URL, the demo operator's password and
the console command, and that password logs in to a supervisor reading the community."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

import pytest

from support.process import ST2000R, Lines, stop

pytestmark = pytest.mark.slow


def test_demo_prints_how_to_reach_the_api_and_the_password_works(tmp_path):
    proc = subprocess.Popen([ST2000R, "demo", "--baud", "115200", "--for", "120", "--tcp-port", "0", "--control",
                             "0", "--modbus", "0", "--no-scenario", "--historian", str(tmp_path / "h.sqlite")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out = Lines(proc)
        m = out.until(r"HTTP API on (http://127\.0\.0\.1:(\d+))/api/v1 \(docs/api\.md\); operator 'demo' \(admin\), "
                      r"password '([^']+)'", 60)
        url, password = m.group(1), m.group(3)
        assert out.until(r"^  \.venv/bin/st2000r console --url (\S+)$", 5).group(1) == url
        req = urllib.request.Request(f"{url}/api/v1/login", data=json.dumps({"name": "demo",
                                                                             "password": password}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            token = json.loads(resp.read())["token"]
        req = urllib.request.Request(f"{url}/api/v1/summary", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            summary = json.loads(resp.read())
        assert summary["meters"]["total"] == 12288 and summary["links"]["total"] == 1
        proc.send_signal(signal.SIGTERM)
        out.rest(60)
        assert proc.returncode == 0
    finally:
        stop(proc)
