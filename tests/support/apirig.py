"""The HTTP API served on a real loopback port, over the supervisor's parts driven by a
Clock, and a real HTTP client (twisted.web's Agent) to call it.

``ApiRig``: the command topology (tests/support/builders) with one operator of each role
(password = name), a fake bus master whose transactions the test answers, the alarm
manager, the command dispatcher and the API on ``127.0.0.1:0``.  Events drain and tokens
expire only when the test advances ``rig.clock``; HTTP itself runs on the real reactor.
``SseReader``: a raw TCP client of ``/api/v1/events`` that parses what arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from support.builders import T0, make_link, make_topology
from support.fakes import FakeMaster
from st2000r.config.model import ApiSettings, Interlocks, Operator
from st2000r.supervisor.alarms import AlarmManager
from st2000r.supervisor.commands import CommandDispatcher
from st2000r.supervisor.eventbus import EventBus
from st2000r.supervisor.points import PointDatabase

ROLES = ("viewer", "operator", "engineer", "admin")
_HASHES: dict[str, str] = {}


def cheap_hash(password: str) -> str:
    """An argon2id hash with small costs (the verifier reads the costs from the hash), so
    tests log in in milliseconds; the format is the one ``st2000r operators hash`` prints."""
    if password not in _HASHES:
        from argon2 import PasswordHasher

        _HASHES[password] = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)
    return _HASHES[password]


def operators() -> tuple[Operator, ...]:
    """One operator per role, named after it, password = name; and ``modbus`` without a hash."""
    return (*(Operator(r, r, cheap_hash(r)) for r in ROLES), Operator("modbus", "operator", None))


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self.body = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@dataclass
class Answer:
    status: int
    headers: Any
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class ApiRig:
    """See the module docstring.  ``cdts``: CDTs on link ``bus`` (2 modules, 3 meters each).
    ``audit``: the dispatcher's (and the sessions') audit log (default: in memory)."""

    def __init__(self, *, cdts: int = 2, ttl_s: int = 3600, buffer_size: int = 4096, max_sse: int = 8,
                 protected: tuple[str, ...] = (), tls: tuple[str, str] | None = None, max_clients: int = 64,
                 audit: Any = None) -> None:
        from support.builders import make_cdt
        from st2000r.supervisor.api.service import ApiService

        self.clock = Clock()
        self.clock.advance(T0)
        link = make_link(cdts=tuple(make_cdt(a) for a in range(1, cdts + 1)))
        self.topology = make_topology(link, operators=operators(),
                                      interlocks=Interlocks(frozenset(protected), 10),
                                      api=ApiSettings(listen=("127.0.0.1", 0), token_ttl_s=ttl_s,
                                                      max_sse_clients=max_sse, tls=tls, max_clients=max_clients))
        self.bus = EventBus(self.clock)
        self.points = PointDatabase(self.topology, self.clock, self.bus)
        self.alarms = AlarmManager(self.topology, self.clock, self.bus)
        self.master = FakeMaster(link)
        self.commands = CommandDispatcher(self.topology, self.clock, {"bus": self.master}, self.points, self.bus,
                                          alarms=self.alarms, audit=audit)
        self.historian = None
        self.pollers: dict = {}
        self.gprs_server = None
        self.api = ApiService(self.topology, reactor, self, clock=self.clock, buffer_size=buffer_size)
        self.agent = Agent(reactor)
        self.tokens: dict[str, str] = {}

    def start(self) -> None:
        self.points.startService()
        self.alarms.startService()
        self.api.startService()
        self.points.on_link_state("bus", "connected")
        self.drain()

    def stop(self) -> defer.Deferred:
        return self.api.stopService()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api.port}/api/v1"

    def drain(self) -> None:
        """Let queued bus consumers (the event stream) take what was published."""
        for _ in range(5):
            self.clock.advance(0)

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                   as_: str | None = None, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Answer:
        """``method`` ``path`` (below /api/v1, or a full path starting with /) with a JSON
        ``body`` (or ``raw`` bytes), as operator ``as_`` (logged in on first use) or ``token``."""
        if as_ is not None:
            token = await self.token(as_)
        h = Headers()
        if token is not None:
            h.addRawHeader("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            h.addRawHeader(name, value)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            h.addRawHeader("Content-Type", "application/json")
        url = (f"http://127.0.0.1:{self.api.port}{path}" if path.startswith("/") else f"{self.base}/{path}")
        response = await self.agent.request(method.encode(), url.encode(), h,
                                            _Body(data) if data is not None else None)
        content = await _read_body(response)
        return Answer(response.code, response.headers, content)

    # ---- the field side, by hand (as tests/supervisor/test_sup_commands.py does)

    def read(self, cdt: int, counts: list[int], statuses: list[int] | None = None) -> None:
        """A plan's bulk reply from ``cdt`` with ``counts`` for channels 1.. (a point per meter)."""
        from support.builders import bulk

        self.points.on_bulk("bus", cdt, bulk(cdt, counts, statuses=statuses), self.clock.seconds())
        self.drain()

    def reply_valve(self) -> None:
        """The CDT acknowledges the pending valve frame."""
        from st2000r.drivers.st2000r import messages as m

        call = self.master.last
        r = call.request
        assert isinstance(r, m.ValveControl), r
        call.deferred.callback(m.ValveReply(meter_type=r.meter_type, address=r.address))
        self.drain()

    def reply_read(self, valve: Any, count: int = 42) -> None:
        """Answer the pending read-back showing ``valve``, through the point database first."""
        from support.builders import bulk, status
        from st2000r.drivers.st2000r.reachability import Outcome

        call = self.master.last
        r = call.request
        reply = bulk(int(r.address), [count], first=r.first_channel, statuses=[status(valve)])
        self.points.on_reply(int(r.address), Outcome("bus", r.address, r, reply, None, self.clock.seconds(),
                                                     call.purpose))
        call.deferred.callback(reply)
        self.drain()

    async def token(self, name: str) -> str:
        if name not in self.tokens:
            answer = await self.call("POST", "login", {"name": name, "password": name})
            assert answer.status == 200, answer.raw
            self.tokens[name] = answer.json["token"]
        return self.tokens[name]


async def eventually(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait (real time, polling every 10 ms) until ``predicate()`` holds; fail after ``timeout``."""
    from twisted.internet import task

    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{what}: not within {timeout} s")


class _Collect(protocol.Protocol):
    def __init__(self, done: defer.Deferred) -> None:
        self.done = done
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)  # ResponseDone, or a cut body: the test sees what came


def _read_body(response: Any) -> defer.Deferred:
    done: defer.Deferred = defer.Deferred()
    response.deliverBody(_Collect(done))
    return done


class _SseProtocol(protocol.Protocol):
    def __init__(self, reader: SseReader) -> None:
        self.reader = reader

    def connectionMade(self) -> None:
        self.transport.write(self.reader.request)

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.reader.closed = True
        self.reader._wake()


class SseReader:
    """A raw HTTP/1.1 client of the event stream: ``status``, ``events`` as parsed
    ``(id, event, data)`` tuples (data JSON-decoded), comments counted in ``comments``."""

    def __init__(self, port: int, token: str | None, *, last_id: str | None = None, query: str = "") -> None:
        lines = [f"GET /api/v1/events{query} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        if last_id is not None:
            lines.append(f"Last-Event-ID: {last_id}")
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.port = port
        self.buffer = b""
        self.head: bytes | None = None
        self.status: int | None = None
        self.events: list[tuple[str | None, str | None, Any]] = []
        self.comments = 0
        self.closed = False
        self.proto: _SseProtocol | None = None
        self._waiters: list[tuple[Any, defer.Deferred]] = []

    async def connect(self) -> SseReader:
        endpoint = protocol.ClientCreator(reactor, _SseProtocol, self)
        self.proto = await endpoint.connectTCP("127.0.0.1", self.port)
        return self

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.loseConnection()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.status = int(self.head.split(b" ", 2)[1])
        body = _dechunk(self) if b"chunked" in self.head.lower() else None
        text = body if body is not None else b""
        while b"\n\n" in text:
            block, text = text.split(b"\n\n", 1)
            self._block(block.decode())
        self._rest = text
        self._wake()

    def _block(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            data = fields.get("data")
            self.events.append((fields.get("id"), fields.get("event"), json.loads(data) if data else None))

    def _wake(self) -> None:
        for item in list(self._waiters):
            predicate, d = item
            if predicate(self):
                self._waiters.remove(item)
                d.callback(self)

    def until(self, predicate: Any, timeout: float = 5.0) -> defer.Deferred:
        """Fires when ``predicate(reader)`` holds; fails after ``timeout`` real seconds."""
        d: defer.Deferred = defer.Deferred()
        if predicate(self):
            d.callback(self)
            return d
        self._waiters.append((predicate, d))
        call = reactor.callLater(timeout, lambda: (not d.called) and (self._waiters.remove((predicate, d)),
                                                                       d.errback(AssertionError(
                                                                           f"stream: not seen within {timeout} s; "
                                                                           f"got {self.events}, closed={self.closed}"))))
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def named(self, event: str) -> list[tuple[str | None, str | None, Any]]:
        return [e for e in self.events if e[1] == event]


def _dechunk(reader: SseReader) -> bytes | None:
    """The body bytes received so far of a chunked response, kept whole in ``_chunks``."""
    raw = reader.buffer
    out = getattr(reader, "_chunks", b"")
    while True:
        line_end = raw.find(b"\r\n")
        if line_end < 0:
            break
        size = int(raw[:line_end].split(b";")[0] or b"0", 16)
        if len(raw) < line_end + 2 + size + 2:
            break
        out += raw[line_end + 2:line_end + 2 + size]
        raw = raw[line_end + 2 + size + 2:]
        if size == 0:
            break
    reader.buffer = raw
    consumed = getattr(reader, "_consumed", 0)
    reader._chunks = out
    text = out[consumed:]
    # hand back only complete blocks; remember how far they went
    cut = text.rfind(b"\n\n")
    if cut < 0:
        return b""
    reader._consumed = consumed + cut + 2
    return text[:cut + 2]
