"""A live supervisor with its HTTP API, as processes: ``st2000r simulate`` of a topology and
``st2000r run`` of the same topology with ``[api]`` on a free port and one operator per role
(password = name).  For the API's process tests, its fuzzing and its benchmark.

``LiveApi.start()`` returns once the API answers; ``get``/``post`` are blocking JSON calls
with a deadline (the test process's reactor is not involved); ``truth()`` is the
simulator's ground truth from its control interface.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.apirig import ROLES, cheap_hash
from support.process import ST2000R, Lines, stop
from st2000r.config import example_path


def api_config(topology_text: str, state_dir: Path, extra: str = "") -> str:
    """``topology_text`` with ``[api]`` on a free loopback port, the operators and a state folder."""
    ops = "".join(f'\n[[operators]]\nname = "{r}"\nrole = "{r}"\npassword_hash = "{cheap_hash(r)}"\n' for r in ROLES)
    return (topology_text + f'\n[supervisor]\nstate_dir = "{state_dir}"\n\n[api]\nlisten = "127.0.0.1:0"\n' + ops
            + extra)


class LiveApi:
    """See the module docstring.  ``example``: a shipped example topology."""

    def __init__(self, tmp: Path, example: str = "small.toml", extra: str = "") -> None:
        self.tmp = tmp
        text = example_path(example).read_text(encoding="utf-8")
        ptys = tmp / "pty"
        self.sim_config = tmp / "field.toml"
        self.sim_config.write_text(text, encoding="utf-8")
        device = next(line.split('"')[1] for line in text.splitlines() if line.strip().startswith("device ="))
        link = next(line.split('"')[1] for line in text.splitlines() if line.strip().startswith("name =") and
                    "sites.links" in text[:text.index(line)])
        self.link = link
        self.run_config = tmp / "site.toml"
        self.run_config.write_text(api_config(text.replace(device, str(ptys / link)), tmp / "state", extra),
                                   encoding="utf-8")
        self.ptys = ptys
        self.sim: subprocess.Popen | None = None
        self.run: subprocess.Popen | None = None
        self.url = ""
        self.control = ""
        self.tokens: dict[str, str] = {}

    def start(self, timeout: float = 30) -> LiveApi:
        self.sim = subprocess.Popen([ST2000R, "simulate", str(self.sim_config), "--control", "0", "--pty-dir",
                                     str(self.ptys)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sim_out = Lines(self.sim)
        self.control = sim_out.until(r"^control: (http://\S+)", timeout).group(1)
        sim_out.until(r"^ready", timeout)
        self.run = subprocess.Popen([ST2000R, "run", str(self.run_config)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        self.out = Lines(self.run)
        self.url = self.out.until(r"HTTP API on (http://127\.0\.0\.1:\d+)/api/v1", timeout).group(1) + "/api/v1"
        return self

    def stop(self) -> None:
        for proc in (self.run, self.sim):
            if proc is not None:
                stop(proc)

    # ---- blocking calls

    def request(self, method: str, path: str, body: Any = None, *, as_: str | None = None,
                timeout: float = 10) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if as_ is not None:
            headers["Authorization"] = f"Bearer {self.token(as_)}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def token(self, name: str) -> str:
        if name not in self.tokens:
            status, body = self.request("POST", "login", {"name": name, "password": name})
            assert status == 200, body
            self.tokens[name] = body["token"]
        return self.tokens[name]

    def until(self, fn: Any, timeout: float, what: str) -> Any:
        """Poll ``fn()`` every 0.1 s until it returns something true; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = fn()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout} s")

    def truth(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.control}/truth", timeout=10) as resp:
            return json.loads(resp.read())

    def true_meter(self, cdt: int, module: int, channel: int) -> dict[str, Any]:
        for link in self.truth()["links"]:
            for c in link["cdts"]:
                if c["address"] == cdt:
                    for m in c["meters"]:
                        if m["module"] == module and m["input"] == channel:
                            return m
        raise KeyError((cdt, module, channel))
