"""twisted.web dispatch of the declared routes: match, authenticate, check, call, answer.

Every request goes the same way: the raw path is split into segments and each is
percent-decoded (so a meter id may come as four segments or as one encoded segment),
matched against the route table (404 / 405 with ``Allow``); query parameters are checked
against the route's declarations (unknown or repeated ones are refused); the bearer token
is checked (401) and the caller's role against the route's least role (403); the body is
read (at most ``MAX_BODY`` bytes, 413), parsed as JSON and checked against the route's
schema (400 naming the field); then the handler runs.  Whatever a handler raises other
than ``ApiError`` is logged and answered 500 — a bug, never the client's fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from st2000r.supervisor.api.declare import Route, check, parse_param
from st2000r.supervisor.api.errors import ApiError, invalid
from st2000r.supervisor.api.sessions import Session

__all__ = ["ApiResource", "Call", "ApiSite", "LimitedFactory", "MAX_BODY", "IDLE_TIMEOUT_S", "RawJson"]

log = Logger()

MAX_BODY = 64 * 1024
#: a connection that sends nothing for this long while no request is being answered (idle
#: between requests, or a request's headers or body stalled half-way) is closed
IDLE_TIMEOUT_S = 60
PREFIX = ("api", "v1")


@dataclass(frozen=True, slots=True)
class RawJson:
    """A response body already encoded as JSON (the handler joined cached pieces)."""

    data: bytes


@dataclass(slots=True)
class Call:
    """One request as a handler sees it."""

    app: Any
    route: Route
    request: Any
    session: Session | None
    peer: str | None
    path: dict[str, Any]
    query: dict[str, Any]
    body: Any


class _Request(server.Request):
    """A request whose body is kept only up to ``MAX_BODY`` bytes (the rest is counted)."""

    too_large = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > MAX_BODY:
            self.too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self.too_large = True
            return
        super().handleContentChunk(data)


class ApiSite(server.Site):
    """The site: our request class, no access log to stdout (requests are logged by us).
    twisted.web suspends the idle timeout while a request is answered, so an event stream
    is never cut by it."""

    requestFactory = _Request
    noisy = False

    def log(self, request: Any) -> None:  # the supervisor's log is not an access log
        pass


@implementer(IProtocolNegotiationFactory)
class LimitedFactory(policies.WrappingFactory):
    """At most ``limit`` connections at once; the excess is closed at once.  Under TLS it
    offers ALPN ``http/1.1`` (without it, Twisted's TLS answered a client that offers ALPN
    -- curl, httpx, browsers -- with an internal-error alert)."""

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]

    def __init__(self, factory: Any, limit: int) -> None:
        super().__init__(factory)
        self.limit = limit
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.limit:
            self.refused += 1
            return None
        return super().buildProtocol(addr)


def _segments(raw: bytes) -> list[str]:
    parts = raw.split(b"/")[1:]
    if parts and parts[-1] == b"":
        parts.pop()
    try:
        return [unquote_to_bytes(p).decode("utf-8") for p in parts]
    except UnicodeDecodeError:
        raise invalid("path", "not UTF-8 after percent-decoding") from None


class ApiResource(Resource):
    """The whole API as one leaf resource (``app``: the handlers' state and the routes)."""

    isLeaf = True

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app
        self._by_len: dict[int, list[Route]] = {}
        for route in app.routes:
            self._by_len.setdefault(len(route.segments), []).append(route)

    def render(self, request: Any) -> Any:
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(self._internal, request)
        return server.NOT_DONE_YET

    # ---------------------------------------------------------------- the steps

    def match(self, method: str, segments: list[str]) -> tuple[Route, dict[str, str]]:
        """The route and its raw path values; ApiError 404/405."""
        if len(segments) >= 3 and segments[:3] == ["api", "v1", "meters"] and len(segments) in (4, 5) \
                and "/" in segments[3]:
            segments = segments[:3] + segments[3].split("/") + segments[4:]
        allowed: list[str] = []
        for route in self._by_len.get(len(segments), ()):
            values: dict[str, str] = {}
            for pattern, seg in zip(route.segments, segments):
                if pattern.startswith("{"):
                    values[pattern[1:-1]] = seg
                elif pattern != seg:
                    break
            else:
                if route.method == method:
                    return route, values
                allowed.append(route.method)
        if allowed:
            raise ApiError(405, f"{method} is not allowed here (allowed: {', '.join(sorted(set(allowed)))})",
                           headers={"Allow": ", ".join(sorted(set(allowed)))})
        raise ApiError(404, f"no such path: /{'/'.join(segments)} (the API is under /api/v1; "
                            "GET /api/v1/openapi.json lists every path)", field="path")

    async def _handle(self, request: Any) -> None:
        peer = _peer(request)
        try:
            method = request.method.decode("ascii", "replace")
            route, raw = self.match(method, _segments(request.path))
            path = {name: parse_param(param, raw[name]) for name, param in route.path_params().items()}
            query = self._query(route, request)
            session = self._authorize(route, request, query, peer)
            body = self._body(route, request)
            call = Call(self.app, route, request, session, peer, path, query, body)
            result = route.handler(call)
            if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
                result = await result
        except ApiError as exc:
            self._answer(request, exc.status, exc.body(), exc.headers)
            return
        if route.stream:
            return
        status, payload = result if isinstance(result, tuple) else (200, result)
        self._answer(request, status, payload)

    def _query(self, route: Route, request: Any) -> dict[str, Any]:
        declared = route.query_params()
        out: dict[str, Any] = {}
        for raw_name, values in (request.args or {}).items():
            name = raw_name.decode("utf-8", "replace")
            param = declared.get(name)
            if param is None:
                known = ", ".join(declared) or "none"
                raise invalid(name, f"unknown query parameter (this path takes: {known})")
            if len(values) != 1:
                raise invalid(name, "given more than once")
            try:
                text = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise invalid(name, "not UTF-8") from None
            out[name] = parse_param(param, text)
        for name, param in declared.items():
            if param.required and name not in out:
                raise invalid(name, "missing")
        return out

    def _authorize(self, route: Route, request: Any, query: dict[str, Any], peer: str | None) -> Session | None:
        if route.least_role is None:
            return None
        token = None
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, value = header.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(401, "the Authorization header must be 'Bearer <token>'",
                               headers={"WWW-Authenticate": "Bearer"})
            token = value.strip()
        elif route.stream:
            token = query.get("token")
        session = self.app.sessions.authenticate(token, peer)
        if not session.role.at_least(route.least_role):
            raise ApiError(403, f"{session.name!r} is a {session.role.value}; this needs "
                                f"{route.least_role.value} or above")
        return session

    def _body(self, route: Route, request: Any) -> Any:
        if route.body is None:
            return None
        if getattr(request, "too_large", False):
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")
        request.content.seek(0)
        raw = request.content.read()
        if not raw.strip():
            raise invalid(None, "the request needs a JSON body")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise invalid(None, f"the body is not JSON: {exc}") from None
        check(body, route.body, "")
        return body

    def _answer(self, request: Any, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        request.setHeader(b"cache-control", b"no-store")
        if payload is None:
            request.finish()
            return
        data = payload.data if isinstance(payload, RawJson) else \
            json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"content-length", str(len(data)).encode())
        request.write(data)
        request.finish()

    def _internal(self, failure: Any, request: Any) -> None:
        log.failure("api: {method} {path} failed", failure, method=request.method, path=request.path)
        error = ApiError(500, "internal error (a bug: the supervisor's log has the details)")
        try:
            self._answer(request, 500, error.body())
        except Exception:
            pass


def _peer(request: Any) -> str | None:
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    return str(host) if host is not None else None
