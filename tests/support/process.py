"""Child processes of a test: the installed ``st2000r`` command, its output read line by
line with a deadline (never blocking past it), a stop that leaves no process behind, and
marks that prove no grandchild is left either.

The process tests mark every process they start with an environment variable, inherited
by whatever those start in turn, and prove afterwards that none is left.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

#: the installed command of this virtualenv
ST2000R = os.path.join(os.path.dirname(sys.executable), "st2000r")

PROCESS_MARK = "ST2000R_TEST_PROCESS_MARK"


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

    def count(self, pattern: str) -> int:
        """How many lines read so far match ``pattern``."""
        rx = re.compile(pattern)
        return sum(1 for line in self.lines if rx.search(line))

    def until_count(self, pattern: str, n: int, timeout: float) -> None:
        """Read until ``n`` lines in all match ``pattern`` (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.count(pattern) < n:
            left = deadline - time.monotonic()
            assert left > 0, (f"{self.count(pattern)} of {n} lines matching {pattern!r} within {timeout} s; got:\n"
                              + "\n".join(self.lines[-30:]))
            self._read(left)

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.proc.stdout.fileno()], [], [], timeout)
        if not ready:
            return
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        assert chunk, f"process ended (rc {self.proc.wait()}):\n" + "\n".join(self.lines[-30:])
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [raw.decode("utf-8", "replace") for raw in done]

    def rest(self, timeout: float) -> str:
        """Everything the process still writes until it exits (within ``timeout``)."""
        out, _ = self.proc.communicate(timeout=timeout)
        text = (self.buf + out).decode("utf-8", "replace")
        self.lines += text.splitlines()
        return text


def lines_until(proc: subprocess.Popen, pattern: str, deadline: float) -> list[str]:
    """``proc``'s stdout lines up to the first matching ``pattern``, read before
    ``deadline`` (a ``time.monotonic()`` instant)."""
    out = Lines(proc)
    out.until(pattern, deadline - time.monotonic())
    return out.lines


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def marked_env(mark: str) -> dict[str, str]:
    """This process's environment plus ``PROCESS_MARK=mark``."""
    return dict(os.environ, **{PROCESS_MARK: mark})


def marked_processes(mark: str) -> list[int]:
    """Pids of the live processes whose environment carries ``PROCESS_MARK=mark`` (a
    zombie's environment reads empty, so it does not count)."""
    needle = f"{PROCESS_MARK}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in env:
            found.append(int(name))
    return found


def wait_exited(pids: list[int], timeout: float) -> list[int]:
    """Wait (on pidfds, no polling) until every pid has exited or ``timeout`` passed;
    returns those still running."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    try:
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)
