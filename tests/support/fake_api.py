"""An in-memory stand-in for the supervisor's HTTP API (docs/api.md), as an httpx transport.

For console tests that need deterministic data (snapshots: fixed times and values) or a
supervisor that misbehaves on purpose (unreachable, expired token, a command's outcome
held back).  The console tests against the real API use a real supervisor; this fake
follows the same documented shapes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpx

READ_AT = "2026-11-30T02:00:04+00:00"
KINDS = ("water", "electricity", "gas")
UNITS = {"water": "L", "electricity": "Wh", "gas": "L"}


def make_meters(cdts: int = 2, modules: int = 2, link: str = "bus1") -> list[dict]:
    """Meters ``link/cdt/module/channel`` with fixed values: value = cdt*100000 + module*1000 + channel*10."""
    out = []
    for cdt in range(1, cdts + 1):
        for mod in range(1, modules + 1):
            for ch in (1, 2, 3):
                kind = KINDS[ch - 1]
                out.append({
                    "id": f"{link}/{cdt}/{mod}/{ch}", "link": link, "cdt": cdt, "module": mod, "channel": ch,
                    "household": f"B{cdt:03d}-{mod:02d}", "kind": kind, "serial": f"{cdt:06d}{mod:04d}{ch:04d}",
                    "value": cdt * 100000 + mod * 1000 + ch * 10, "count": cdt * 10000 + mod * 100 + ch,
                    "base_unit": UNITS[kind], "quality": "good", "read_at": READ_AT, "quality_since": READ_AT,
                    "alarms": [], "valve": "open" if ch == 1 else "none",
                })
    return out


def alarm(source: str, kind: str = "tamper", state: str = "active-unacked") -> dict:
    return {"id": f"meter:{source}:{kind}", "source": source, "kind": kind, "severity": "major",
            "text": f"meter {source}: {kind} alarm on the channel", "state": state, "active": True,
            "raised_at": "2026-11-30T01:00:00+00:00", "cleared_at": None, "acked_by": None, "acked_at": None,
            "ack_note": None, "shelved_by": None, "shelved_reason": None, "shelved_until": None}


@dataclass
class FakeApi:
    meters: list[dict] = field(default_factory=make_meters)
    alarms: dict[str, dict] = field(default_factory=dict)
    operators: dict[str, tuple[str, str]] = field(default_factory=lambda: {
        "alice": ("s3cret", "operator"), "vera": ("viewpass", "viewer"), "root": ("rootpass", "admin")})
    down: bool = False  # every request fails as a refused connection
    finish_commands: bool = True  # valve commands succeed when the test calls finish()
    run: str = "0123456789abcdef"
    seq: int = 100
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    commands: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    streams: list[asyncio.Queue] = field(default_factory=list)
    last_event_ids: list[str | None] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- events -------------------------------------------------------------------------
    def publish(self, event: dict) -> dict:
        self.seq += 1
        event = {"seq": self.seq, "run": self.run, "at": READ_AT} | event
        for q in self.streams:
            q.put_nowait(event)
        return event

    def change_meter(self, meter_id: str, **changes) -> dict:
        m = next(m for m in self.meters if m["id"] == meter_id)
        m.update(changes)
        return self.publish({"type": "MeterChanged", "meter": meter_id, "value": m["value"], "count": m["count"],
                             "quality": m["quality"], "timestamp": m["read_at"], "valve": m["valve"],
                             "alarms": m["alarms"], "quality_since": m["quality_since"]})

    def set_command(self, cid: str, state: str, detail: str) -> None:
        cmd = self.commands[cid]
        cmd.update(state=state, detail=detail)
        self.publish({"type": "CommandChanged", "command": dict(cmd)})

    def drop_streams(self) -> None:
        for q in self.streams:
            q.put_nowait(None)

    # -- HTTP ---------------------------------------------------------------------------
    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = unquote(request.url.path)
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, path, dict(request.url.params)))
        if (request.method, path) == ("POST", "/api/v1/login"):
            return self.login(body)
        auth = request.headers.get("authorization", "")
        who = self.tokens.get(auth.removeprefix("Bearer "))
        if who is None:
            return err(401, "unauthorized", "missing or unknown token")
        route = (request.method, path)
        if route == ("GET", "/api/v1/events"):
            return self.events(request.headers.get("last-event-id"))
        if route == ("GET", "/api/v1/meters"):
            return self.meter_page(dict(request.url.params))
        if request.method == "GET" and path.startswith("/api/v1/meters/"):
            rest = path.removeprefix("/api/v1/meters/")
            if rest.endswith("/history"):
                return self.history(rest.removesuffix("/history"))
            m = next((m for m in self.meters if m["id"] == rest), None)
            return ok(m | {"last_command": None}) if m else err(404, "not_found", f"no meter {rest}", "meter")
        if route == ("GET", "/api/v1/alarms"):
            return ok({"items": list(self.alarms.values()), "next": None})
        if route == ("POST", "/api/v1/alarms/acknowledge"):
            return self.alarm_op(who, body, "active-acked")
        if route == ("POST", "/api/v1/alarms/shelve"):
            if not body.get("reason"):
                return err(400, "invalid", "reason: required", "reason")
            return self.alarm_op(who, body, "shelved")
        if route == ("POST", "/api/v1/alarms/unshelve"):
            return self.alarm_op(who, body, "active-unacked")
        if route == ("POST", "/api/v1/commands"):
            return self.command(who, body)
        if request.method == "GET" and path.startswith("/api/v1/commands/"):
            cmd = self.commands.get(path.rsplit("/", 1)[1])
            return ok(cmd) if cmd else err(404, "not_found", "no such command")
        if route == ("GET", "/api/v1/summary"):
            return ok(self.summary())
        if route == ("GET", "/api/v1/links"):
            return ok({"items": [{"name": "bus1", "site": "Garden Court", "kind": "serial", "state": "connected",
                                  "connected": True, "signal": None, "since": READ_AT, "cdts": 2,
                                  "meters": len(self.meters), "stats": {"requests": 1234, "timeouts": 5, "rtt_p99_s": 0.141},
                                  "round": None, "sessions": []}], "next": None})
        if route == ("GET", "/api/v1/diagnostics"):
            return ok({"run": self.run, "seq": self.seq, "historian": None,
                       "bus": {"published": self.seq, "failures": 0, "subscribers": 1 + len(self.streams)},
                       "consumers": [], "api": {"sessions": len(self.tokens), "sse_clients": len(self.streams),
                                                "events_buffered": 0, "events_oldest_seq": 1}})
        if route == ("GET", "/api/v1/operators"):
            if who[1] != "admin":
                return err(403, "forbidden", "needs role admin")
            return ok({"items": [{"name": n, "role": r, "can_login": True} for n, (_, r) in self.operators.items()],
                       "next": None})
        if route == ("POST", "/api/v1/logout"):
            return httpx.Response(204)
        return err(404, "not_found", f"no route {path}")

    def login(self, body: dict) -> httpx.Response:
        entry = self.operators.get(body.get("name"))
        if entry is None or entry[0] != body.get("password"):
            return err(401, "bad_credentials", "bad name or password")
        token = f"token-{body['name']}-{len(self.tokens)}"
        self.tokens[token] = (body["name"], entry[1])
        return ok({"token": token, "expires_at": "2026-11-30T15:00:00+00:00", "ttl_s": 28800,
                   "name": body["name"], "role": entry[1]})

    def meter_page(self, params: dict) -> httpx.Response:
        limit = int(params.pop("limit", "100"))
        start = int(params.pop("cursor", "0") or 0)
        items = self.meters
        for key, value in params.items():
            if key == "household" and value.endswith("*"):
                items = [m for m in items if m["household"].startswith(value[:-1])]
            elif key == "alarm":
                items = [m for m in items if (bool(m["alarms"]) if value in ("true", "false") and value == "true"
                                              else not m["alarms"] if value == "false" else value in m["alarms"])]
            elif key in ("link", "household", "kind", "quality"):
                items = [m for m in items if str(m[key]) == value]
            elif key == "cdt":
                items = [m for m in items if str(m["cdt"]) == value]
            else:
                return err(400, "invalid", f"unknown parameter {key}", key)
        page = items[start:start + limit]
        nxt = str(start + limit) if start + limit < len(items) else None
        return ok({"items": page, "next": nxt})

    def history(self, meter_id: str) -> httpx.Response:
        m = next((m for m in self.meters if m["id"] == meter_id), None)
        if m is None:
            return err(404, "not_found", f"no meter {meter_id}")
        base = m["value"] - 7 * 120
        items = [{"read_at": f"2026-11-{23 + d:02d}T02:00:00+00:00", "value": base + d * 120 + (d % 3) * 30,
                  "quality": "good", "source": "plan", "valve": m["valve"], "alarms": []} for d in range(8)]
        return ok({"meter": meter_id, "base_unit": m["base_unit"], "items": items, "next": None})

    def alarm_op(self, who: tuple[str, str], body: dict, state: str) -> httpx.Response:
        if who[1] == "viewer":
            return err(403, "forbidden", "needs role operator")
        a = self.alarms.get(body.get("alarm"))
        if a is None:
            return err(404, "not_found", "no such alarm", "alarm")
        a["state"] = state
        if state == "active-acked":
            a["acked_by"] = who[0]
        if state == "shelved":
            a["shelved_reason"] = body["reason"]
        op = {"active-acked": "acknowledge", "shelved": "shelve", "active-unacked": "unshelve"}[state]
        reason = body.get("note" if op == "acknowledge" else "reason") or ""
        cmd = self.record(f"alarm_{'ack' if op == 'acknowledge' else op}", a["id"], op, who[0], reason)
        cmd.update(state="succeeded", detail=f"alarm {op}d", sent_at=READ_AT, finished_at=READ_AT)
        self.publish({"type": "AlarmChanged", "alarm": dict(a)})
        return ok({"command": dict(cmd), "alarm": a})

    def command(self, who: tuple[str, str], body: dict) -> httpx.Response:
        if who[1] == "viewer":
            return err(403, "forbidden", "needs role operator")
        meter = body.get("meter") or body.get("target")
        if not any(m["id"] == meter for m in self.meters):
            return err(404, "not_found", f"no meter {meter}", "meter")
        action = ("open" if body.get("open") else "close") if body["kind"] == "valve" else "read"
        cid = self.record(body["kind"], meter, action, who[0], body.get("reason") or "")["id"]
        return httpx.Response(202, json={"id": cid, "state": "pending", "url": f"/api/v1/commands/{cid}",
                                         "detail": "accepted"})

    def record(self, kind: str, target: str, action: str, who: str, reason: str) -> dict:
        """A command as the API's ``Command`` schema shapes it, kept for ``GET /commands/{id}``."""
        cid = f"{self.run[:8]}-{len(self.commands) + 1:06d}"
        self.commands[cid] = {"id": cid, "kind": kind, "target": target, "action": action, "who": who,
                              "source": "api", "peer": "127.0.0.1", "reason": reason, "requested_at": READ_AT,
                              "state": "pending", "detail": "accepted", "sent_at": None, "finished_at": None,
                              "late": False, "url": f"/api/v1/commands/{cid}"}
        return self.commands[cid]

    def summary(self) -> dict:
        by_state: dict[str, int] = {}
        for a in self.alarms.values():
            by_state[a["state"]] = by_state.get(a["state"], 0) + 1
        good = sum(m["quality"] == "good" for m in self.meters)
        return {"run": self.run, "seq": self.seq, "links": {"total": 1, "by_state": {"connected": 1}},
                "meters": {"total": len(self.meters), "by_quality": {"good": good}, "with_alarms": 0},
                "alarms": {"total": len(self.alarms), "by_state": by_state, "by_severity": {}},
                "rounds": [{"link": "bus1", "plan": "daily", "kind": "full", "started_at": READ_AT,
                            "cdts_done": 1, "cdts_total": 2}],
                "historian": {"state": "connected", "spool_rows": 0, "oldest_age_s": 0.0}}

    def events(self, last_id: str | None) -> httpx.Response:
        self.last_event_ids.append(last_id)
        queue: asyncio.Queue = asyncio.Queue()
        self.streams.append(queue)

        async def body() -> AsyncIterator[bytes]:
            hello = {"run": self.run, "seq": self.seq, "oldest_seq": 1}
            yield f"event: hello\ndata: {json.dumps(hello)}\n\n".encode()
            try:
                while True:
                    event = await queue.get()
                    if event is None:
                        return
                    yield f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            finally:
                self.streams.remove(queue)

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def ok(body: dict) -> httpx.Response:
    return httpx.Response(200, json=body)


def err(status: int, code: str, message: str, fld: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "field": fld}})
