"""Shared parts of the historian tests: a small topology, deterministic reading batches,
and a TCP proxy in front of PostgreSQL that a test can cut (never the shared server)."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta

from st2000r.config.loader import loads
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.events import MeterId, Purpose, Reading, ReadingBatch

TOPOLOGY = """
[templates.flat]
channels = [
  { channel = 1, kind = "water",       pulse_constant = 10 },
  { channel = 2, kind = "electricity", pulse_constant = 1 },
  { channel = 3, kind = "gas",         pulse_constant = 10 },
]

[[sites]]
name = "Lakeside"
address = "88 Lakeside Avenue"

[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/null"

[[sites.links.cdt_ranges]]
addresses = "1-2"
modules = "1-2"
template = "flat"
serial = "{cdt:03}{module:02}{channel}"
household = "B{cdt:03}-{module:02}"
initial = 1000

[supervisor]
state_dir = "STATE"
"""

START = datetime(2026, 6, 1, tzinfo=UTC)


def topology(state_dir: str = "var", extra: str = ""):
    return loads(TOPOLOGY.replace("STATE", state_dir) + extra, "hist.toml")


def batches(topo, round_no: int, source: Purpose = Purpose.PLAN) -> list[ReadingBatch]:
    """One ReadingBatch per CDT for round ``round_no``: read at START + round minutes; a
    meter's count is ``round_no * channel`` (so values are known by hand)."""
    out = []
    at = START + timedelta(minutes=round_no)
    for link in topo.links():
        for cdt in link.cdts:
            readings = []
            for module, channel, meter in cdt.meters():
                count = round_no * channel
                readings.append(Reading(MeterId(link.name, cdt.address, module, channel),
                                        meter.initial + count * meter.pulse_constant, count, Valve.OPEN, AlarmFlag.NONE))
            out.append(ReadingBatch(link.name, cdt.address, at, source, "daily" if source is Purpose.PLAN else None,
                                    tuple(readings)))
    return out


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; :meth:`cut` closes the listener and every
    connection (new ones are refused); :meth:`restore` listens again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self._listener is not None:
            try:  # wakes the accepting thread (a bare close would leave the socket listening)
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.cut()

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PG_UPSTREAM = (PG_HOST, PG_PORT)


def pg_url(database: str, port: int = PG_PORT, schema: str | None = None) -> str:
    """A psycopg URL of the local server (or of a proxy's ``port``), in ``schema``."""
    url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{port}/{database}"
    if schema is not None:
        url += f"?options=-csearch_path%3D{schema}"
    return url
