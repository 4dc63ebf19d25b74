"""Handlers of sessions, audit, operators, diagnostics, the OpenAPI document and the
event stream."""

from __future__ import annotations

from typing import Any

from st2000r.supervisor.api.actions import records_page
from st2000r.supervisor.api.app import decode_cursor, encode_cursor
from st2000r.supervisor.api.errors import ApiError, invalid
from st2000r.supervisor.api.reads import historian_json
from st2000r.supervisor.api.shapes import page
from st2000r.supervisor.api.stream import STREAMED_NAMES
from st2000r.supervisor.events import utc

__all__ = ["login", "logout", "audit", "audit_sessions", "operators", "diagnostics", "openapi", "events"]


async def login(call: Any) -> dict[str, Any]:
    session = await call.app.sessions.login(call.body["name"], call.body["password"], call.peer)
    return {"token": session.token, "expires_at": utc(session.expires).isoformat(),
            "ttl_s": int(call.app.sessions.ttl_s), "name": session.name, "role": session.role.value}


def logout(call: Any) -> tuple[int, None]:
    call.app.sessions.logout(call.session, call.peer)
    return 204, None


def audit(call: Any) -> dict[str, Any]:
    return records_page(call, list(reversed(call.app.commands.history())), "u")


def audit_sessions(call: Any) -> dict[str, Any]:
    """Session records of this run and of earlier runs (from the audit log), newest first;
    the cursor is a record's seq, so records added between pages shift nothing."""
    cursor = call.query.get("cursor")
    before = decode_cursor("s", cursor) if cursor is not None else None
    chunk, nxt = call.app.sessions.page(before, call.query.get("limit", 100), call.query.get("event"))
    return page([r.as_dict() for r in chunk], encode_cursor("s", nxt) if nxt is not None else None)


def operators(call: Any) -> dict[str, Any]:
    return {"items": [{"name": o.name, "role": o.role, "can_login": o.password_hash is not None}
                      for o in call.app.topology.operators], "next": None}


def diagnostics(call: Any) -> dict[str, Any]:
    app = call.app
    bus = app.bus
    return {
        "run": bus.run_id, "seq": bus.seq,
        "bus": {"published": bus.published, "failures": bus.failures, "subscribers": bus.subscribers},
        "consumers": [c.stats.as_dict() for c in bus.consumers()],
        "historian": historian_json(app),
        "api": {"sessions": len(app.sessions), "sse_clients": app.stream.clients,
                "events_buffered": app.stream.buffered, "events_oldest_seq": app.stream.oldest_seq},
    }


def openapi(call: Any) -> dict[str, Any]:
    from st2000r.supervisor.api.openapi import document

    return document(call.app.routes)


def events(call: Any) -> None:
    app, q, request = call.app, call.query, call.request
    types = list(STREAMED_NAMES)
    if "types" in q:
        types = [t.strip() for t in q["types"].split(",") if t.strip()]
        unknown = [t for t in types if t not in STREAMED_NAMES]
        if unknown or not types:
            raise invalid("types", f"unknown event type(s) {', '.join(unknown) or '(none given)'} "
                                   f"(streamed: {', '.join(STREAMED_NAMES)})")
    last: int | None = q.get("last_event_id")
    header = request.getHeader(b"last-event-id")
    if header is not None:
        text = header.decode("latin-1").strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise invalid("Last-Event-ID", f"expected the seq of an event (a number), got {text[:40]!r}")
        last = int(text)
    if app.stream.full:
        raise ApiError(503, f"too many event streams open ({app.stream.max_clients}); try again later",
                       headers={"Retry-After": "5"})
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-accel-buffering", b"no")
    app.stream.open(request, types, last, call.peer)
