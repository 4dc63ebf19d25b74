"""Handlers that change something: commands and alarm operations, all through the one
command path (``CommandDispatcher.submit``), which checks the role again, audits who,
from where and why, and reports the outcome.  Nothing here writes to the field itself.
"""

from __future__ import annotations

from typing import Any

from st2000r.supervisor.alarms import AlarmError
from st2000r.supervisor.api.app import decode_cursor, encode_cursor
from st2000r.supervisor.api.errors import ApiError, conflict, invalid, not_found
from st2000r.supervisor.api.shapes import alarm_json, command_json, command_url, page
from st2000r.supervisor.authz import MIN_ROLE, Source
from st2000r.supervisor.commands_model import (AlarmRequest, ReadNowRequest, SetBaseRequest, TimeSyncRequest,
                                               ValveRequest)
from st2000r.supervisor.events import CommandKind, CommandState, MeterId

__all__ = ["post_command", "get_command", "list_commands", "records_page", "list_alarms", "get_alarm", "alarm_op"]


def _meter(app: Any, text: str, field: str) -> MeterId:
    try:
        mid = MeterId.parse(text)
    except ValueError as exc:
        raise invalid(field, str(exc)) from None
    if mid not in app.meter_index:
        raise not_found(field, f"no meter {mid}")
    return mid


def _cdt(app: Any, link: str, address: int, field: str) -> None:
    if (link, address) not in app.meters_per_cdt:
        try:
            app.points.cdt(link, address)
        except KeyError:
            raise not_found(field, f"no CDT {address} on link {link!r}") from None


def source_of(call: Any) -> Source:
    """``console`` when the client says it is the operators' console (header
    ``X-St2000r-Client: console``), else ``api``: only the audit's source column; the
    operator and the role are the token's whatever the header says."""
    header = call.request.getHeader(b"x-st2000r-client")
    return Source.CONSOLE if header is not None and header.strip().lower() == b"console" else Source.API


def post_command(call: Any) -> tuple[int, dict[str, Any]]:
    app, body, session = call.app, call.body, call.session
    kind = CommandKind(body["kind"])
    need = MIN_ROLE[kind]
    if not session.role.at_least(need):
        raise ApiError(403, f"{session.name!r} is a {session.role.value}; {kind.value} needs {need.value} or above",
                       field="kind")
    common = {"who": session.name, "source": source_of(call), "reason": body.get("reason", ""), "peer": call.peer}
    if kind is CommandKind.VALVE:
        request: Any = ValveRequest(_meter(app, body["meter"], "meter"), body["open"], **common)
    elif kind is CommandKind.READ_NOW:
        target = body["target"]
        parts = target.split("/")
        if len(parts) == 2:
            if not parts[1].isascii() or not parts[1].isdigit() or len(parts[1]) > 8:
                raise invalid("target", f"CDT address {parts[1]!r} is not a number")
            _cdt(app, parts[0], int(parts[1]), "target")
        else:
            target = str(_meter(app, target, "target"))
        request = ReadNowRequest(target, **common)
    elif kind is CommandKind.SET_BASE:
        request = SetBaseRequest(_meter(app, body["meter"], "meter"), body["value"], **common)
    else:
        _cdt(app, body["link"], body["cdt"], "cdt")
        request = TimeSyncRequest(body["link"], body["cdt"], **common)
    handle = app.commands.submit(request)
    record = app.commands.get(handle.id)
    return 202, {"id": handle.id, "state": record.state.value, "url": command_url(handle.id), "detail": record.detail}


def get_command(call: Any) -> dict[str, Any]:
    try:
        return command_json(call.app.commands.get(call.path["id"]))
    except KeyError:
        raise not_found("id", f"no command {call.path['id']!r}") from None


def records_page(call: Any, records: list[Any], tag: str) -> dict[str, Any]:
    q = call.query
    for name, attr in (("target", "target"), ("who", "who")):
        if name in q:
            records = [r for r in records if getattr(r, attr) == q[name]]
    if "state" in q:
        records = [r for r in records if r.state.value == q["state"]]
    if "kind" in q:
        records = [r for r in records if r.kind.value == q["kind"]]
    start = decode_cursor(tag, q.get("cursor"))
    limit = q.get("limit", 100)
    chunk = records[start:start + limit]
    nxt = encode_cursor(tag, start + limit) if start + limit < len(records) else None
    return page([command_json(r) for r in chunk], nxt)


def list_commands(call: Any) -> dict[str, Any]:
    return records_page(call, list(reversed(call.app.commands.history())), "k")


def list_alarms(call: Any) -> dict[str, Any]:
    q = call.query
    items = call.app.alarms.alarms()
    if "state" in q:
        items = [a for a in items if a.state == q["state"]]
    if "severity" in q:
        items = [a for a in items if a.severity == q["severity"]]
    if "kind" in q:
        items = [a for a in items if a.kind == q["kind"]]
    if "source" in q:
        items = [a for a in items if a.source == q["source"]]
    if "link" in q:
        link = q["link"]
        items = [a for a in items if a.source == link or a.source.startswith(link + "/")]
    start = decode_cursor("a", q.get("cursor"))
    limit = q.get("limit", 100)
    chunk = items[start:start + limit]
    return page([alarm_json(a) for a in chunk], encode_cursor("a", start + limit) if start + limit < len(items) else None)


def get_alarm(call: Any) -> dict[str, Any]:
    try:
        return alarm_json(call.app.alarms.alarm(call.query["id"]))
    except AlarmError:
        raise not_found("id", f"no alarm {call.query['id']!r} in the list") from None


_OPS = {"acknowledge": CommandKind.ALARM_ACK, "shelve": CommandKind.ALARM_SHELVE, "unshelve": CommandKind.ALARM_UNSHELVE}


def alarm_op(op: str) -> Any:
    kind = _OPS[op]

    def handler(call: Any) -> dict[str, Any]:
        app, body, session = call.app, call.body, call.session
        alarm_id = body["alarm"]
        try:
            before = app.alarms.alarm(alarm_id)
        except AlarmError:
            raise not_found("alarm", f"no alarm {alarm_id!r} in the list") from None
        if kind is CommandKind.ALARM_UNSHELVE and before.shelved_by is None:
            raise conflict(f"alarm {alarm_id!r} is not shelved", "alarm")
        reason = body.get("note", "") if kind is CommandKind.ALARM_ACK else body.get("reason", "")
        if kind is CommandKind.ALARM_SHELVE and not reason.strip():
            raise invalid("reason", "a reason is required to shelve an alarm")
        duration = body.get("duration_s")
        request = AlarmRequest(alarm_id, kind, session.name, source_of(call), reason=reason, peer=call.peer,
                               duration_s=float(duration) if duration is not None else None)
        handle = app.commands.submit(request)
        record = app.commands.get(handle.id)
        if record.state is not CommandState.SUCCEEDED:
            raise ApiError(409, f"{op} refused: {record.detail} (command {record.id})", field="alarm")
        try:
            after = alarm_json(app.alarms.alarm(alarm_id))
        except AlarmError:  # an acknowledged cleared alarm leaves the list
            after = {**alarm_json(before), "state": "removed"}
        return {"command": command_json(record), "alarm": after}

    return handler
