"""The JSON forms the API answers with, each beside its JSON Schema.

The shapes are written once here: handlers build responses with the functions, the
OpenAPI document carries the schemas, and the fuzzing test checks every response against
them.  Nullable fields are ``["T", "null"]``.
"""

from __future__ import annotations

from typing import Any

from st2000r.supervisor.audit import SESSION_EVENTS
from st2000r.supervisor.events import Alarm, CommandRecord, jsonable
from st2000r.supervisor.point_types import CdtPoint, LinkPoint, MeterPoint

__all__ = ["meter_json", "cdt_json", "link_json", "alarm_json", "command_json", "page", "SCHEMAS", "ref",
           "command_url", "BASE"]

BASE = "/api/v1"

STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
N_STR = {"type": ["string", "null"]}
N_INT = {"type": ["integer", "null"]}
N_BOOL = {"type": ["boolean", "null"]}
N_TIME = {"type": ["string", "null"]}
QUALITIES = ["good", "stale", "comm_fail", "estimated", "substituted"]
COMMAND_STATES = ["pending", "sent", "succeeded", "failed", "timed_out", "refused", "interrupted"]
COMMAND_KINDS = ["valve", "read_now", "set_base", "time_sync", "alarm_ack", "alarm_shelve", "alarm_unshelve"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": extra}


def command_url(cid: str) -> str:
    return f"{BASE}/commands/{cid}"


def meter_json(p: MeterPoint) -> dict[str, Any]:
    mid = p.id
    return {
        "id": str(mid), "link": mid.link, "cdt": mid.cdt, "module": mid.module, "channel": mid.channel,
        "household": p.household, "kind": p.kind, "serial": p.serial, "value": p.value, "count": p.count,
        "base_unit": p.unit, "quality": p.quality.value,
        "read_at": p.timestamp.isoformat() if p.timestamp else None,
        "quality_since": p.quality_since.isoformat() if p.quality_since else None,
        "alarms": jsonable(p.alarms), "valve": p.valve.name.lower() if p.valve is not None else None,
    }


def cdt_json(p: CdtPoint, meters: int) -> dict[str, Any]:
    out = {"id": f"{p.link}/{p.address}"}
    out.update(p.as_dict())
    out["meters"] = meters
    return out


def link_json(p: LinkPoint, *, site: str, cdts: int, meters: int, round_: dict | None,
              sessions: list[dict[str, Any]]) -> dict[str, Any]:
    out = p.as_dict()
    out.update({"site": site, "cdts": cdts, "meters": meters, "round": round_, "sessions": sessions})
    return out


def alarm_json(a: Alarm) -> dict[str, Any]:
    return a.as_dict()


def command_json(r: CommandRecord) -> dict[str, Any]:
    out = r.as_dict()
    out["url"] = command_url(r.id)
    return out


def page(items: list[Any], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next": next_cursor}


def _page_schema(item: str) -> dict[str, Any]:
    return _obj({"items": {"type": "array", "items": ref(item)}, "next": N_STR})


ROUND = _obj({"link": STR, "plan": STR, "kind": STR, "started_at": N_TIME, "cdts_done": INT, "cdts_total": INT})

#: component schemas of the OpenAPI document
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj({"error": _obj({"code": STR, "message": STR, "field": N_STR})}),
    "Meter": _obj({
        "id": STR, "link": STR, "cdt": INT, "module": INT, "channel": INT, "household": N_STR,
        "kind": {"enum": ["water", "electricity", "gas"]}, "serial": STR, "value": N_INT, "count": N_INT,
        "base_unit": STR, "quality": {"enum": QUALITIES}, "read_at": N_TIME, "quality_since": N_TIME,
        "alarms": {"type": "array", "items": {"enum": ["tamper", "short", "open"]}},
        "valve": {"enum": ["open", "closed", "fault", "none", None]},
    }),
    "Cdt": _obj({
        "id": STR, "link": STR, "address": INT, "name": N_STR, "repeater": N_STR, "online": N_BOOL,
        "mains": N_BOOL, "battery_low": N_BOOL, "battery_mv": N_INT,
        "modules": {"type": ["array", "null"], "items": INT}, "last_seen": N_TIME, "meters": INT,
    }),
    "Round": ROUND,
    "Link": _obj({
        "name": STR, "site": STR, "kind": STR, "state": {"enum": ["connected", "disconnected", "stopped", "idle"]},
        "connected": BOOL, "signal": N_INT, "since": N_TIME, "cdts": INT, "meters": INT,
        "stats": {"type": "object"}, "round": {"oneOf": [{"type": "null"}, ref("Round")]},
        "sessions": {"type": "array", "items": {"type": "object"}},
    }),
    "Site": _obj({"name": STR, "address": STR, "links": {"type": "array", "items": STR}}),
    "Alarm": _obj({
        "id": STR, "source": STR, "kind": STR, "severity": STR, "text": STR, "state": STR, "active": BOOL,
        "raised_at": TIME, "cleared_at": N_TIME, "acked_by": N_STR, "acked_at": N_TIME, "ack_note": N_STR,
        "shelved_by": N_STR, "shelved_reason": N_STR, "shelved_until": N_TIME,
    }),
    "Command": _obj({
        "id": STR, "kind": {"enum": COMMAND_KINDS}, "target": STR, "action": STR, "who": STR, "source": STR,
        "peer": N_STR, "reason": STR, "requested_at": TIME, "state": {"enum": COMMAND_STATES}, "detail": STR,
        "sent_at": N_TIME, "finished_at": N_TIME, "late": BOOL, "url": STR,
    }),
    "CommandAccepted": _obj({"id": STR, "state": {"enum": COMMAND_STATES}, "url": STR, "detail": STR}),
    "AlarmResult": _obj({"command": ref("Command"), "alarm": ref("Alarm")}),
    "Reading": _obj({"read_at": TIME, "value": INT, "quality": STR, "source": STR, "valve": N_STR,
                     "alarms": {"type": "array", "items": STR}}),
    "SessionRecord": _obj({"at": TIME, "name": N_STR, "peer": N_STR,
                           "event": {"enum": list(SESSION_EVENTS)}, "detail": STR}),
    "Operator": _obj({"name": STR, "role": STR, "can_login": BOOL}),
}
SCHEMAS["MeterDetail"] = {**SCHEMAS["Meter"], "properties": {**SCHEMAS["Meter"]["properties"],
                                                               "last_command": {"oneOf": [{"type": "null"},
                                                                                          ref("Command")]}},
                          "required": [*SCHEMAS["Meter"]["required"], "last_command"]}
for _name in ("Meter", "Cdt", "Link", "Alarm", "Command", "SessionRecord", "Operator"):
    SCHEMAS[_name + "Page"] = _page_schema(_name)
SCHEMAS["History"] = _obj({"meter": STR, "base_unit": STR, "items": {"type": "array", "items": ref("Reading")},
                           "next": N_STR})
SCHEMAS["Login"] = _obj({"token": STR, "expires_at": TIME, "ttl_s": INT, "name": STR,
                         "role": {"enum": ["viewer", "operator", "engineer", "admin"]}})
SCHEMAS["Me"] = _obj({"name": STR, "role": STR, "expires_at": TIME})
SCHEMAS["Health"] = _obj({"status": STR, "run": STR, "seq": INT, "time": TIME,
                          "links": _obj({"total": INT, "connected": INT}), "meters": INT})
SCHEMAS["Summary"] = _obj({
    "run": STR, "seq": INT,
    "links": _obj({"total": INT, "by_state": {"type": "object", "additionalProperties": INT}}),
    "meters": _obj({"total": INT, "by_quality": {"type": "object", "additionalProperties": INT},
                    "with_alarms": INT}),
    "alarms": _obj({"total": INT, "by_state": {"type": "object", "additionalProperties": INT},
                    "by_severity": {"type": "object", "additionalProperties": INT}}),
    "rounds": {"type": "array", "items": ref("Round")},
    "historian": {"type": ["object", "null"]},
})
SCHEMAS["Diagnostics"] = _obj({
    "run": STR, "seq": INT, "bus": _obj({"published": INT, "failures": INT, "subscribers": INT}),
    "consumers": {"type": "array", "items": {"type": "object"}}, "historian": {"type": ["object", "null"]},
    "api": _obj({"sessions": INT, "sse_clients": INT, "events_buffered": INT, "events_oldest_seq": INT}),
})
SCHEMAS["SiteList"] = _obj({"items": {"type": "array", "items": ref("Site")}})
