"""Handlers that read: health, summary, sites, links, CDTs, meters and a meter's history.

Each takes a :class:`~st2000r.supervisor.api.resource.Call` whose path and query values are
already checked against the route's declarations, and returns the JSON body.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import Counter
from typing import Any

from st2000r.drivers.st2000r.messages import AlarmFlag
from st2000r.supervisor.api.app import decode_cursor, encode_cursor
from st2000r.supervisor.api.errors import ApiError, not_found
from st2000r.supervisor.api.resource import RawJson
from st2000r.supervisor.api.shapes import cdt_json, command_json, link_json, page
from st2000r.supervisor.events import MeterId, utc

__all__ = ["health", "summary", "sites", "links", "link", "cdts", "cdt", "meters", "meter", "me", "historian_json"]

_FLAGS = {"tamper": AlarmFlag.TAMPER, "short": AlarmFlag.SHORT, "open": AlarmFlag.OPEN}


def historian_json(app: Any) -> dict[str, Any] | None:
    if app.historian is None:
        return None
    s = app.historian.status()
    return {"state": s.state, "problem": s.problem, "spool_rows": s.spool_rows, "spool_bytes": s.spool_bytes,
            "spool_max_bytes": s.spool_max_bytes, "oldest_age_s": round(s.oldest_age_s, 3), "written": s.written,
            "rate": round(s.rate, 3), "quarantined": s.quarantined, "memory_rows": s.memory_rows}


def health(call: Any) -> dict[str, Any]:
    app = call.app
    links = app.points.links()
    return {"status": "ok", "run": app.bus.run_id, "seq": app.bus.seq, "time": utc(app.clock.seconds()).isoformat(),
            "links": {"total": len(links), "connected": sum(1 for p in links if p.connected)},
            "meters": len(app.meters)}


def me(call: Any) -> dict[str, Any]:
    s = call.session
    return {"name": s.name, "role": s.role.value, "expires_at": utc(s.expires).isoformat()}


def summary(call: Any) -> dict[str, Any]:
    app = call.app
    links = app.points.links()
    quality = {name: n for name, n in app.quality_counts.items() if n}  # kept by the events: no pass over 24,576
    alarms = app.alarms.alarms()
    return {
        "run": app.bus.run_id, "seq": app.bus.seq,
        "links": {"total": len(links), "by_state": dict(Counter(p.state.value for p in links))},
        "meters": {"total": len(app.meters), "by_quality": quality, "with_alarms": app.with_alarms},
        "alarms": {"total": len(alarms), "by_state": dict(Counter(a.state for a in alarms)),
                   "by_severity": dict(Counter(a.severity for a in alarms))},
        "rounds": app.rounds(),
        "historian": historian_json(app),
    }


def sites(call: Any) -> dict[str, Any]:
    return {"items": [{"name": s.name, "address": s.address, "links": [lk.name for lk in s.links]}
                      for s in call.app.topology.sites]}


def _link_json(app: Any, point: Any) -> dict[str, Any]:
    rounds = app.rounds(point.name)
    return link_json(point, site=app.site_of.get(point.name, ""),
                     cdts=_cdt_count(app, point.name),
                     meters=app.meters_per_link.get(point.name, 0), round_=rounds[0] if rounds else None,
                     sessions=app.sessions_of(point.name))


def _cdt_count(app: Any, link: str) -> int:
    try:
        return len(app.topology.link(link).cdts)
    except KeyError:
        return 0


def links(call: Any) -> dict[str, Any]:
    app = call.app
    return {"items": [_link_json(app, p) for p in app.points.links()], "next": None}


def link(call: Any) -> dict[str, Any]:
    app = call.app
    name = call.path["name"]
    for point in app.points.links():
        if point.name == name:
            return _link_json(app, point)
    raise not_found("name", f"no link {name!r}")


def cdts(call: Any) -> dict[str, Any]:
    app, q = call.app, call.query
    want_link, online = q.get("link"), q.get("online")
    if want_link is not None and want_link not in app.meters_per_link and want_link not in app.site_of:
        raise not_found("link", f"no link {want_link!r}")
    items = [p for p in app.points.cdts(want_link) if online is None or p.online is online]
    start = decode_cursor("c", q.get("cursor"))
    limit = q.get("limit", 100)
    chunk = items[start:start + limit]
    nxt = encode_cursor("c", start + limit) if start + limit < len(items) else None
    return page([cdt_json(p, app.meters_per_cdt.get((p.link, p.address), 0)) for p in chunk], nxt)


def cdt(call: Any) -> dict[str, Any]:
    app = call.app
    name, address = call.path["link"], call.path["address"]
    try:
        point = app.points.cdt(name, address)
    except KeyError:
        raise not_found("address", f"no CDT {address} on link {name!r}") from None
    return cdt_json(point, app.meters_per_cdt.get((name, address), 0))


def meters(call: Any) -> dict[str, Any]:
    """A filtered page: the static filters' positions (cached), then the live filters on
    each candidate's point, from the cursor's position on."""
    app, q = call.app, call.query
    quality = q.get("quality")
    alarm = q.get("alarm")
    limit = q.get("limit", 100)
    position = decode_cursor("m", q.get("cursor"))
    candidates = app.candidates(q.get("link"), q.get("cdt"), q.get("kind"), q.get("household"))
    entries, live_state = app.meters, app.live
    live = quality is not None or alarm is not None
    items: list[bytes] = []
    i = bisect_left(candidates, position)
    while i < len(candidates) and len(items) < limit:
        position = candidates[i] + 1
        i += 1
        mid = entries[position - 1].id
        if live:
            point_quality, flags = live_state[mid]
            if quality is not None and point_quality != quality:
                continue
            if alarm is not None:
                if alarm == "true" and not flags or alarm == "false" and flags:
                    continue
                if alarm in _FLAGS and not flags & _FLAGS[alarm]:
                    continue
        items.append(app.meter_bytes(mid))
    nxt = encode_cursor("m", position) if i < len(candidates) and len(items) == limit else None
    return RawJson(b'{"items":[' + b",".join(items) + b'],"next":' + json.dumps(nxt).encode() + b"}")


def meter_id(call: Any) -> MeterId:
    p = call.path
    mid = MeterId(p["link"], p["cdt"], p["module"], p["channel"])
    if mid not in call.app.meter_index:
        raise not_found("id", f"no meter {mid}")
    return mid


def meter(call: Any) -> RawJson:
    mid = meter_id(call)
    last = call.app.commands.last_for(mid)
    tail = json.dumps(command_json(last) if last is not None else None, separators=(",", ":"), ensure_ascii=False)
    return RawJson(call.app.meter_bytes(mid)[:-1] + b',"last_command":' + tail.encode() + b"}")


def no_historian() -> ApiError:
    return ApiError(409, "this supervisor keeps no history: enable [historian] in its configuration")
