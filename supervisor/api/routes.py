"""The route table: every operation of the API, declared once.

The dispatcher serves exactly these, and ``GET /api/v1/openapi.json`` is generated from
them; docs/api.md describes them for people.
"""

from __future__ import annotations

from st2000r.supervisor.api import actions, admin, history, reads
from st2000r.supervisor.api.declare import MAX_TEXT, Param, Route
from st2000r.supervisor.api.shapes import BASE, QUALITIES, COMMAND_KINDS, COMMAND_STATES, ref
from st2000r.supervisor.alarms import MAX_SHELVE_S
from st2000r.supervisor.audit import SESSION_EVENTS
from st2000r.supervisor.authz import Role

__all__ = ["ROUTES"]

V, O, E, A = Role.VIEWER, Role.OPERATOR, Role.ENGINEER, Role.ADMIN
NAME = {"type": "string", "minLength": 1, "maxLength": 64}
TEXT = {"type": "string", "maxLength": MAX_TEXT}
METER_ID = {"type": "string", "minLength": 1, "maxLength": 96,
            "description": "link/cdt/module/channel, e.g. bus1/3/2/1"}


def limit(default: int, top: int) -> Param:
    return Param("limit", {"type": "integer", "minimum": 1, "maximum": top, "default": default},
                 f"items per page (default {default}, at most {top})")


CURSOR = Param("cursor", {"type": "string", "maxLength": 200}, "the 'next' of the previous page")
PAGE = (limit(100, 1000), CURSOR)
METER_PATH = (
    Param("link", NAME, "link name", True, "path"),
    Param("cdt", {"type": "integer", "minimum": 1, "maximum": 99_999_999}, "CDT address", True, "path"),
    Param("module", {"type": "integer", "minimum": 1, "maximum": 32}, "module 1..32", True, "path"),
    Param("channel", {"type": "integer", "minimum": 1, "maximum": 3}, "channel 1..3", True, "path"),
)
RECORD_FILTERS = (
    Param("state", {"type": "string", "enum": COMMAND_STATES}, "only commands in this state"),
    Param("kind", {"type": "string", "enum": COMMAND_KINDS}, "only commands of this kind"),
    Param("who", NAME, "only commands of this operator"),
    Param("target", {"type": "string", "maxLength": 200}, "only commands on this target"),
)


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _kind(name: str, props: dict, required: list[str]) -> dict:
    return _obj({"kind": {"const": name}, **props, "reason": TEXT}, ["kind", *required])


COMMAND_BODY = {
    "oneOf": [
        _kind("valve", {"meter": METER_ID, "open": {"type": "boolean"}}, ["meter", "open"]),
        _kind("read_now", {"target": {**METER_ID, "description": "a meter (link/cdt/module/channel) or a CDT "
                                                                  "(link/cdt)"}}, ["target"]),
        _kind("set_base", {"meter": METER_ID, "value": {"type": "integer", "minimum": 0,
                                                        "maximum": 10**12}}, ["meter", "value"]),
        _kind("time_sync", {"link": NAME, "cdt": {"type": "integer", "minimum": 1, "maximum": 99_999_999}},
              ["link", "cdt"]),
    ],
    "discriminator": {"propertyName": "kind"},
}
ALARM_ID = {"type": "string", "minLength": 1, "maxLength": 200}


def _ok(schema: str, status: int = 200) -> dict:
    return {status: ref(schema)}


ROUTES: tuple[Route, ...] = (
    Route("GET", f"{BASE}/health", reads.health, "Liveness and the event counter", None, "system",
          responses=_ok("Health")),
    Route("GET", f"{BASE}/openapi.json", admin.openapi, "This document", None, "system",
          responses={200: {"type": "object"}}),
    Route("POST", f"{BASE}/login", admin.login, "Log in: a bearer token", None, "sessions",
          body=_obj({"name": NAME, "password": {"type": "string", "maxLength": 1024}}, ["name", "password"]),
          responses=_ok("Login")),
    Route("POST", f"{BASE}/logout", admin.logout, "End this token", V, "sessions", responses={204: None}),
    Route("GET", f"{BASE}/me", reads.me, "Who this token is", V, "sessions", responses=_ok("Me")),
    Route("GET", f"{BASE}/summary", reads.summary, "Counts for a dashboard", V, "points", responses=_ok("Summary")),
    Route("GET", f"{BASE}/sites", reads.sites, "Sites and their links", V, "points", responses=_ok("SiteList")),
    Route("GET", f"{BASE}/links", reads.links, "Links: state, statistics, round, DTU sessions", V, "points",
          responses=_ok("LinkPage")),
    Route("GET", f"{BASE}/links/{{name}}", reads.link, "One link", V, "points",
          params=(Param("name", NAME, "link name", True, "path"),), responses=_ok("Link")),
    Route("GET", f"{BASE}/cdts", reads.cdts, "CDTs and their health", V, "points",
          params=(Param("link", NAME, "only this link"),
                  Param("online", {"type": "boolean"}, "only CDTs that answer (true) or do not (false)"), *PAGE),
          responses=_ok("CdtPage")),
    Route("GET", f"{BASE}/cdts/{{link}}/{{address}}", reads.cdt, "One CDT", V, "points",
          params=(Param("link", NAME, "link name", True, "path"),
                  Param("address", {"type": "integer", "minimum": 1, "maximum": 99_999_999}, "CDT address", True,
                        "path")),
          responses=_ok("Cdt")),
    Route("GET", f"{BASE}/meters", reads.meters, "Meters: live point with quality, filtered and paged", V, "points",
          params=(Param("link", NAME, "link name"),
                  Param("cdt", {"type": "integer", "minimum": 1, "maximum": 99_999_999}, "CDT address"),
                  Param("household", {"type": "string", "minLength": 1, "maxLength": 200},
                        "exact household, or a prefix ending with *"),
                  Param("kind", {"type": "string", "enum": ["water", "electricity", "gas"]}, "meter kind"),
                  Param("quality", {"type": "string", "enum": QUALITIES}, "point quality"),
                  Param("alarm", {"type": "string", "enum": ["true", "false", "tamper", "short", "open"]},
                        "channel alarms: any (true), none (false), or one flag"),
                  limit(100, 5000), CURSOR),
          responses=_ok("MeterPage")),
    Route("GET", f"{BASE}/meters/{{link}}/{{cdt}}/{{module}}/{{channel}}", reads.meter, "One meter", V, "points",
          params=METER_PATH, responses=_ok("MeterDetail"),
          description="The id may also be sent percent-encoded as one path segment."),
    Route("GET", f"{BASE}/meters/{{link}}/{{cdt}}/{{module}}/{{channel}}/history", history.history,
          "A meter's readings from the historian", V, "points",
          params=(*METER_PATH,
                  Param("from", {"type": "string", "format": "date-time", "maxLength": 64},
                        "start (default: 7 days before 'to')"),
                  Param("to", {"type": "string", "format": "date-time", "maxLength": 64}, "end (default: now)"),
                  limit(1000, 10_000), CURSOR),
          responses={**_ok("History"), 409: ref("Error")}),
    Route("GET", f"{BASE}/alarms", actions.list_alarms, "The alarm list", V, "alarms",
          params=(Param("state", {"type": "string", "enum": ["active-unacked", "active-acked", "cleared-unacked",
                                                             "shelved"]}, "alarm state"),
                  Param("severity", {"type": "string", "enum": ["critical", "major", "minor", "warning"]}, "severity"),
                  Param("kind", NAME, "alarm kind (tamper, offline, …)"),
                  Param("source", {"type": "string", "minLength": 1, "maxLength": 200}, "exactly this source"),
                  Param("link", NAME, "sources on this link"), *PAGE),
          responses=_ok("AlarmPage")),
    Route("GET", f"{BASE}/alarms/one", actions.get_alarm, "One alarm", V, "alarms",
          params=(Param("id", ALARM_ID, "alarm id", True),), responses=_ok("Alarm")),
    Route("POST", f"{BASE}/alarms/acknowledge", actions.alarm_op("acknowledge"), "Acknowledge an alarm", O, "alarms",
          body=_obj({"alarm": ALARM_ID, "note": TEXT}, ["alarm"]), responses={**_ok("AlarmResult"), 409: ref("Error")}),
    Route("POST", f"{BASE}/alarms/shelve", actions.alarm_op("shelve"), "Shelve an alarm for a while", O, "alarms",
          body=_obj({"alarm": ALARM_ID, "reason": {**TEXT, "minLength": 1},
                     "duration_s": {"type": "number", "minimum": 1, "maximum": MAX_SHELVE_S}},
                    ["alarm", "reason", "duration_s"]),
          responses={**_ok("AlarmResult"), 409: ref("Error")}),
    Route("POST", f"{BASE}/alarms/unshelve", actions.alarm_op("unshelve"), "End a shelf now", O, "alarms",
          body=_obj({"alarm": ALARM_ID, "reason": TEXT}, ["alarm"]), responses={**_ok("AlarmResult"), 409: ref("Error")}),
    Route("POST", f"{BASE}/commands", actions.post_command, "Run a command (202: follow its url)", O, "commands",
          body=COMMAND_BODY, responses=_ok("CommandAccepted", 202),
          description="valve and read_now need operator; set_base and time_sync engineer."),
    Route("GET", f"{BASE}/commands", actions.list_commands, "Recent commands, newest first", V, "commands",
          params=(*RECORD_FILTERS, *PAGE), responses=_ok("CommandPage")),
    Route("GET", f"{BASE}/commands/{{id}}", actions.get_command, "One command", V, "commands",
          params=(Param("id", {"type": "string", "minLength": 1, "maxLength": 64}, "command id", True, "path"),),
          responses=_ok("Command")),
    Route("GET", f"{BASE}/audit", admin.audit, "The audit log of commands, newest first", E, "audit",
          params=(*RECORD_FILTERS, *PAGE), responses=_ok("CommandPage")),
    Route("GET", f"{BASE}/audit/sessions", admin.audit_sessions,
          "Logins, logouts, failed and throttled logins, newest first (kept in the audit log)", A, "audit",
          params=(Param("event", {"type": "string", "enum": list(SESSION_EVENTS)}, "only records of this event"),
                  *PAGE),
          responses=_ok("SessionRecordPage"),
          description="Admin only: a name is recorded as the client typed it, a password typed into the "
                      "name field included. Records of earlier runs come from the audit log."),
    Route("GET", f"{BASE}/operators", admin.operators, "Configured operators (never their hashes)", A, "audit",
          responses=_ok("OperatorPage")),
    Route("GET", f"{BASE}/diagnostics", admin.diagnostics, "Event queues, historian spool, API counters", V,
          "system", responses=_ok("Diagnostics")),
    Route("GET", f"{BASE}/events", admin.events, "Server-sent events, resumable with Last-Event-ID", V, "events",
          params=(Param("types", {"type": "string", "maxLength": 400}, "comma-separated event types"),
                  Param("token", {"type": "string", "maxLength": 200}, "the bearer token (for EventSource)"),
                  Param("last_event_id", {"type": "integer", "minimum": 0}, "resume after this seq")),
          responses={200: None}, stream=True),
)
