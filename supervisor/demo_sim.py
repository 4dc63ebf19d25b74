"""The demo's simulator child process and its control interface, for ``st2000r demo``.

The simulator runs as a **child process** (``python -m st2000r.supervisor.cli simulate``,
started through :data:`LAUNCHER`): its own process group, so a terminal's Ctrl-C reaches
only the demo, which stops it in order (SIGTERM, SIGKILL after ``STOP_TIMEOUT_S``); on Linux
the kernel sends it SIGTERM if the demo dies without stopping it (``PR_SET_PDEATHSIG``).
:class:`SimulatorProcess` watches its output for the ``ready`` and ``control:`` lines;
:class:`ControlClient` fetches JSON from its HTTP control interface (``/truth``, ``/stats``,
``/endpoints``).  Nothing here imports the simulator: it is another process, spoken to over
its command line and HTTP.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol

__all__ = [
    "LAUNCHER",
    "ControlClient",
    "SimulatorFailed",
    "SimulatorProcess",
    "community_resource",
    "community_text",
    "port_hint",
    "simulator_command",
    "why_failed",
]

READY_TIMEOUT_S = 60.0  # the simulator builds its world and opens its endpoints within this
STOP_TIMEOUT_S = 15.0  # a stopping simulator gets this long after SIGTERM before SIGKILL
TRUTH_TIMEOUT_S = 60.0  # one control-interface request (a /truth answer is ~4.5 MB)

#: Runs in the child before the simulator: its own process group (a terminal's Ctrl-C goes
#: to the demo only, which then stops the simulator in order), SIGTERM from the kernel when
#: the demo dies (Linux), then exec of ``python -m st2000r.supervisor.cli ARGS``.
#: argv: [demo pid, cli args...].
LAUNCHER = """\
import os, signal, sys
demo = int(sys.argv[1])
os.setpgid(0, 0)
if sys.platform.startswith("linux"):
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
if os.getppid() != demo:  # the demo died before the line above took effect
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", "st2000r.supervisor.cli"] + sys.argv[2:])
"""



def community_resource():
    """The installed ``community.toml`` (a Traversable of the ``config`` room)."""
    return importlib.resources.files("st2000r.config") / "examples" / "community.toml"


def community_text(text: str, baud_rate: int | None) -> str:
    """``community.toml``'s ``text`` with its one link at ``baud_rate`` (unchanged for None).
    Raises ``ValueError`` if the file's link section is not where this expects it."""
    if baud_rate is None:
        return text
    if re.search(r"(?m)^\s*baud\s*=", text):
        out, n = re.subn(r"(?m)^(\s*)baud\s*=\s*\d+", rf"\g<1>baud = {baud_rate}", text)
    else:
        out, n = re.subn(r"(?m)^(\s*)(device\s*=.*)$", rf"\g<1>\g<2>\n\g<1>baud = {baud_rate}", text)
    if n != 1:
        raise ValueError(f"expected one serial link in community.toml, found {n}")
    return out


def simulator_command(config_path: str, link: str, pty_dir: str, *, tcp_port: int, control: int, seed: int,
                      scenario: bool, quiet: bool) -> list[str]:
    """The ``st2000r`` arguments of the child: ``simulate CONFIG ...``."""
    argv = ["simulate", config_path, "--pty-dir", pty_dir, "--tcp", f"{link}={tcp_port}",
            "--control", str(control), "--seed", str(seed)]
    if scenario:
        argv += ["--scenario", "commissioning"]
    if quiet:
        argv.append("--quiet")
    return argv


class SimulatorFailed(Exception):
    """The simulator could not start or ended by itself; the message is the one line to print."""


class SimulatorProcess(protocol.ProcessProtocol):
    """The simulator child as a ``ProcessProtocol``.

    ``ready`` fires when it printed its ``ready`` line (with ``control_url`` known), or fails
    with :class:`SimulatorFailed` if it ends first; ``ended`` fires with ``(exit code,
    signal)`` when it is gone (reaped).  ``echo(line)``, if given, sees every output line.
    """

    def __init__(self, reactor: Any, echo: Callable[[str], None] | None = None) -> None:
        from twisted.internet import defer

        self.reactor = reactor
        self.echo = echo
        self.ready: Any = defer.Deferred()
        self.ended: Any = defer.Deferred()
        self.control_url: str | None = None
        self.pid: int | None = None
        self.exit: tuple[int | None, int | None] | None = None
        self.errors: deque[str] = deque(maxlen=20)
        self._buf = {1: b"", 2: b""}
        self._kill = None

    @property
    def running(self) -> bool:
        return self.exit is None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._buf:
            return
        *lines, self._buf[fd] = (self._buf[fd] + data).split(b"\n")
        for raw in lines:
            self._line(fd, raw.decode("utf-8", "replace").rstrip("\r"))

    def _line(self, fd: int, line: str) -> None:
        if self.echo is not None:
            self.echo(f"simulator| {line}")
        if fd == 2:
            if line.strip():
                self.errors.append(line.strip())
            return
        if line.startswith("control: "):
            self.control_url = line.split(None, 1)[1].strip()
        elif line.startswith("ready") and not self.ready.called:
            self.ready.callback(self)

    def processEnded(self, reason: Any) -> None:
        for fd, rest in self._buf.items():
            if rest:
                self._line(fd, rest.decode("utf-8", "replace"))
        self._buf = {1: b"", 2: b""}
        self.exit = (getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None))
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        if not self.ready.called:
            self.ready.errback(SimulatorFailed(self.why()))
        self.ended.callback(self.exit)

    def why(self) -> str:
        """Why it ended, in one line: its last error line (without its own program name),
        else its exit status or signal."""
        for line in reversed(self.errors):
            if not line.startswith(("Traceback", "File ", "^")):
                return line.removeprefix("st2000r simulate: ")
        code, sig = self.exit or (None, None)
        if sig:
            return f"killed by signal {sig}"
        return f"exit status {code}"

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> Any:
        """SIGTERM now, SIGKILL after ``timeout``; the Deferred fires when it is gone."""
        if self.running:
            self._signal("TERM")
            self._kill = self.reactor.callLater(timeout, self._signal, "KILL")
        return self.ended

    def _signal(self, name: str) -> None:
        from twisted.internet.error import ProcessExitedAlready

        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass


class ControlClient:
    """JSON GETs on the simulator's control interface with twisted.web's ``Agent``."""

    def __init__(self, reactor: Any, url: str) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.url = url.rstrip("/")
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def get(self, path: str, timeout: float = TRUTH_TIMEOUT_S) -> Any:
        """Fires with the decoded JSON object of ``GET URL/path``; fails on a non-200 answer."""
        from twisted.web.client import readBody

        d = self.agent.request(b"GET", f"{self.url}{path}".encode("ascii"))

        def got(response):
            return readBody(response).addCallback(decode, response.code)

        def decode(body: bytes, code: int):
            if code != 200:
                raise ValueError(f"GET {path}: HTTP {code}: {body[:200].decode('utf-8', 'replace')}")
            return json.loads(body)

        return d.addCallback(got).addTimeout(timeout, self.reactor)



def why_failed(exc: BaseException) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    if isinstance(exc, DeferredTimeout):
        return "no answer in time"
    reasons = getattr(exc, "reasons", None)  # twisted.web's ResponseFailed & co: a list of Failures
    if reasons:
        return "; ".join(r.getErrorMessage() or r.type.__name__ for r in reasons)
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def port_hint(message: str, args: Any) -> str:
    if "(" in message:
        return message
    m = re.search(r":(\d+):", message)
    if m and int(m.group(1)) == args.tcp_port:
        return f"{message} (pass --tcp-port 0 or another port)"
    if m and int(m.group(1)) == args.control:
        return f"{message} (pass --control 0 or another port)"
    return message
