"""Every route for every role: the least role of each (as declared and documented) gets
through, the role below gets 403, no token 401 — over real HTTP."""

from __future__ import annotations

import pytest
import pytest_twisted

from support.apirig import ROLES, ApiRig
from support.builders import status
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.api.routes import ROUTES

TAMPER = "meter:bus/1/1/1:tamper"
#: one valid request per route: (method, path below /api/v1, body)
REQUESTS = {
    ("GET", "/api/v1/health"): ("health", None),
    ("GET", "/api/v1/openapi.json"): ("openapi.json", None),
    ("POST", "/api/v1/login"): ("login", {"name": "viewer", "password": "viewer"}),
    ("POST", "/api/v1/logout"): ("logout", None),
    ("GET", "/api/v1/me"): ("me", None),
    ("GET", "/api/v1/summary"): ("summary", None),
    ("GET", "/api/v1/sites"): ("sites", None),
    ("GET", "/api/v1/links"): ("links", None),
    ("GET", "/api/v1/links/{name}"): ("links/bus", None),
    ("GET", "/api/v1/cdts"): ("cdts?link=bus", None),
    ("GET", "/api/v1/cdts/{link}/{address}"): ("cdts/bus/1", None),
    ("GET", "/api/v1/meters"): ("meters?kind=water&limit=3", None),
    ("GET", "/api/v1/meters/{link}/{cdt}/{module}/{channel}"): ("meters/bus/1/1/1", None),
    ("GET", "/api/v1/meters/{link}/{cdt}/{module}/{channel}/history"): ("meters/bus/1/1/1/history", None),
    ("GET", "/api/v1/alarms"): ("alarms", None),
    ("GET", "/api/v1/alarms/one"): (f"alarms/one?id={TAMPER}", None),
    ("POST", "/api/v1/alarms/acknowledge"): ("alarms/acknowledge", {"alarm": TAMPER, "note": "seen"}),
    ("POST", "/api/v1/alarms/shelve"): ("alarms/shelve", {"alarm": TAMPER, "reason": "works", "duration_s": 60}),
    ("POST", "/api/v1/alarms/unshelve"): ("alarms/unshelve", {"alarm": TAMPER}),
    ("POST", "/api/v1/commands"): ("commands", {"kind": "read_now", "target": "bus/1", "reason": "test"}),
    ("GET", "/api/v1/commands"): ("commands", None),
    ("GET", "/api/v1/commands/{id}"): ("commands/{cid}", None),
    ("GET", "/api/v1/audit"): ("audit", None),
    ("GET", "/api/v1/audit/sessions"): ("audit/sessions", None),
    ("GET", "/api/v1/operators"): ("operators", None),
    ("GET", "/api/v1/diagnostics"): ("diagnostics", None),
    ("GET", "/api/v1/events"): None,  # a stream: tests/api/test_api_events.py
}
#: engineer-only command kinds: the route's least role is operator, the kind's engineer
ENGINEER_BODIES = [{"kind": "set_base", "meter": "bus/1/1/1", "value": 1010},
                   {"kind": "time_sync", "link": "bus", "cdt": 1}]


def test_every_route_has_a_request_here():
    assert set(REQUESTS) == {(r.method, r.path) for r in ROUTES}


@pytest.fixture
def rig():
    rig = ApiRig()
    rig.start()
    rig.read(1, [1, 2, 3], statuses=[status(Valve.OPEN, AlarmFlag.TAMPER), 0, 0])  # raises the tamper alarm
    yield rig
    pytest_twisted.blockon(rig.stop())


async def _request(rig, route, role):
    path, body = REQUESTS[(route.method, route.path)]
    if "{cid}" in path:
        cid = rig.commands.submit(__import__("st2000r.supervisor.commands_model", fromlist=["x"]).ReadNowRequest(
            "bus/1", "admin", "api")).id
        path = path.format(cid=cid)
    if route.path.endswith("/unshelve"):
        rig.alarms.shelve(TAMPER, "admin", "set up", rig.clock.seconds() + 60)
    return await rig.call(route.method, path, body, as_=role)


CASES = [(r, role) for r in ROUTES if REQUESTS[(r.method, r.path)] is not None for role in ROLES]


@pytest.mark.parametrize("route, role", CASES, ids=[f"{r.method} {r.path} as {role}" for r, role in CASES])
@pytest_twisted.ensureDeferred
async def test_allowed_and_refused_by_role(rig, route, role):
    answer = await _request(rig, route, role)
    least = route.least_role
    allowed = least is None or ROLES.index(role) >= ROLES.index(least.value)
    if allowed:
        expected = 202 if route.path.endswith("/commands") and route.method == "POST" else 204 \
            if route.path.endswith("/logout") else 200
        if route.path.endswith("/history"):
            expected = 409  # authorised; this rig has no historian
        assert answer.status == expected, answer.raw
    else:
        assert answer.status == 403, answer.raw
        err = answer.json["error"]
        assert err["code"] == "forbidden" and least.value in err["message"] and role in err["message"]


@pytest.mark.parametrize("route", [r for r in ROUTES if r.least_role is not None and not r.stream],
                         ids=lambda r: f"{r.method} {r.path}")
@pytest_twisted.ensureDeferred
async def test_every_protected_route_wants_a_token(rig, route):
    path, body = REQUESTS[(route.method, route.path)]
    answer = await rig.call(route.method, path.format(cid="x"), body)
    assert answer.status == 401 and answer.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("body", ENGINEER_BODIES, ids=lambda b: b["kind"])
@pytest.mark.parametrize("role", ROLES)
@pytest_twisted.ensureDeferred
async def test_set_base_and_time_sync_need_an_engineer(rig, role, body):
    answer = await rig.call("POST", "commands", body, as_=role)
    if role in ("engineer", "admin"):
        assert answer.status == 202, answer.raw
        record = rig.commands.get(answer.json["id"])
        assert record.who == role and record.source == "api" and record.peer == "127.0.0.1"
    else:
        assert answer.status == 403
        if role == "operator":  # through the route, refused by the kind
            assert answer.json["error"]["field"] == "kind" and "needs engineer" in answer.json["error"]["message"]
        assert rig.commands.history() == []  # refused before the command path: nothing audited as run
