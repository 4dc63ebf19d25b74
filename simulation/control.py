"""The simulator's local HTTP control interface (twisted.web, JSON).

::

    GET  /truth      ground truth: World.snapshot()
    GET  /stats      per-link bus and endpoint counters
    GET  /endpoints  where the supervisor connects, one entry per endpoint
    POST /fault      body: one action as JSON, e.g. {"action": "alarm", "link": "bus-a",
                     "cdt": 1, "channel": 2, "flags": ["tamper"]}; applied at once
    POST /ring       body (optional): {"link": NAME}; RING on that link's modem (or all idle)

Every answer is a JSON object.  Errors carry ``{"error": reason}`` with status 400 (bad JSON,
bad action, unknown link/CDT/channel), 404 (unknown path) or 405 (wrong method); no input
raises out of a handler.  It binds 127.0.0.1 by default: there is no authentication.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Any, Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web import resource, server

from st2000r.simulation.endpoints import EndpointInfo

__all__ = ["ControlTarget", "ControlError", "ControlService", "to_json"]

log = Logger(namespace="st2000r.simulation.control")

MAX_BODY = 64 * 1024


class ControlError(ValueError):
    """A control request the simulator cannot carry out; the message says why."""


class ControlTarget(TypingProtocol):
    """What the control interface drives (``SimulatorService`` implements it)."""

    def truth(self) -> dict: ...
    def stats(self) -> dict: ...
    def endpoints(self) -> list[EndpointInfo]: ...
    def apply_fault(self, doc: dict) -> Any: ...  # raises faults.FaultError / ControlError
    def ring(self, link: str | None) -> list[str]: ...  # raises ControlError


def to_json(value: Any) -> Any:
    """``value`` with dataclasses, enums, tuples and sets turned into JSON-ready types."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_json(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if hasattr(value, "value") and hasattr(value, "name") and not isinstance(value, (int, str)):
        return value.value  # a plain Enum
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _reply(request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (json.dumps(to_json(body), indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _error(request, status: int, reason: str) -> bytes:
    return _reply(request, status, {"error": reason})


class _Endpoint(resource.Resource):
    """One path: ``get``/``post`` methods return ``(status, body)``."""

    isLeaf = True

    def __init__(self, target: ControlTarget, name: str) -> None:
        super().__init__()
        self.target = target
        self.name = name

    def render(self, request) -> bytes:
        method = request.method.decode("ascii", "replace").lower()
        handler = getattr(self, method, None)
        if handler is None or method not in ("get", "post"):
            allowed = [m.upper() for m in ("get", "post") if hasattr(self, m)]
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return _error(request, 405, f"/{self.name} accepts {' and '.join(allowed)}, not {method.upper()}")
        try:
            status, body = handler(request)
        except ControlError as exc:
            return _error(request, 400, str(exc))
        except Exception as exc:  # a bug must not kill the simulator; report it
            log.failure("control request {path} failed", path=self.name)
            return _error(request, 500, f"internal error: {type(exc).__name__}: {exc}")
        return _reply(request, status, body)

    def body(self, request, *, required: bool) -> dict:
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            raise ControlError(f"request body larger than {MAX_BODY} bytes")
        if not raw.strip():
            if required:
                raise ControlError("request body is empty: send one JSON object")
            return {}
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ControlError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ControlError(f"request body must be a JSON object, got {type(doc).__name__}")
        return doc


class _Truth(_Endpoint):
    def get(self, request):
        return 200, self.target.truth()


class _Stats(_Endpoint):
    def get(self, request):
        return 200, self.target.stats()


class _Endpoints(_Endpoint):
    def get(self, request):
        return 200, {"endpoints": [asdict(e) | {"line": e.line()} for e in self.target.endpoints()]}


class _Fault(_Endpoint):
    def post(self, request):
        doc = self.body(request, required=True)
        try:
            action = self.target.apply_fault(doc)
        except ValueError as exc:  # faults.FaultError is a ValueError
            raise ControlError(str(exc)) from None
        except KeyError as exc:
            raise ControlError(str(exc.args[0]) if exc.args else "unknown name") from None
        log.info("fault applied: {action}", action=action)
        return 200, {"applied": action.to_doc() if hasattr(action, "to_doc") else to_json(action)}


class _Ring(_Endpoint):
    def post(self, request):
        doc = self.body(request, required=False)
        link = doc.get("link")
        if link is not None and not isinstance(link, str):
            raise ControlError("'link' must be a string (a GSM link name)")
        unknown = set(doc) - {"link"}
        if unknown:
            raise ControlError(f"unknown key(s) {', '.join(sorted(unknown))}: /ring takes only 'link'")
        return 200, {"rang": self.target.ring(link)}


class _Root(resource.Resource):
    def __init__(self, target: ControlTarget) -> None:
        super().__init__()
        self.target = target
        self.paths = {
            b"truth": _Truth(target, "truth"),
            b"stats": _Stats(target, "stats"),
            b"endpoints": _Endpoints(target, "endpoints"),
            b"fault": _Fault(target, "fault"),
            b"ring": _Ring(target, "ring"),
        }

    def getChild(self, path: bytes, request):
        child = self.paths.get(path)
        if child is not None and not request.postpath:
            return child
        return _NotFound(self)

    def render(self, request) -> bytes:
        return _reply(request, 200, {"paths": ["/" + p.decode() for p in self.paths]})


class _NotFound(resource.Resource):
    isLeaf = True

    def __init__(self, root: _Root) -> None:
        super().__init__()
        self.root = root

    def render(self, request) -> bytes:
        known = ", ".join("/" + p.decode() for p in self.root.paths)
        return _error(request, 404, f"no such path {request.path.decode('utf-8', 'replace')}; try {known}")


class ControlService(Service):
    """The control HTTP server for ``target`` on ``host``:``port`` (0 = any free port;
    :attr:`port` holds the bound one after start).  ``startService`` raises
    ``CannotListenError`` when the port is taken."""

    def __init__(self, target: ControlTarget, reactor, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.setName("control")
        self.target = target
        self.reactor = reactor
        self.host = host
        self.port = port
        self.listening = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def startService(self) -> None:
        site = server.Site(_Root(self.target))
        site.noisy = False
        site.log = lambda request: None  # no access log lines per request
        self.listening = self.reactor.listenTCP(self.port, site, interface=self.host)
        self.port = self.listening.getHost().port
        super().startService()
        log.info("control interface on {url}", url=self.url)

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None
