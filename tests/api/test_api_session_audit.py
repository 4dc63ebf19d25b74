"""Logins audited like every change: session records in the audit log next to the
command records, served by ``GET /audit/sessions`` after a restart, and a burst of
failed logins from one address raising one security alarm."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent

from support.apirig import ApiRig, cheap_hash
from support.builders import make_link, make_topology
from st2000r.config.model import ApiSettings, Operator
from st2000r.supervisor.api.routes import ROUTES
from st2000r.supervisor.api.sessions import FAIL_LIMIT, FAIL_WINDOW_S, THROTTLE_NOTE_S
from st2000r.supervisor.audit import (
    AuditError,
    AuditLog,
    MemoryAudit,
    SessionRecord,
    read_records,
    record_from_json,
    session_from_json,
)

#: passwords that must never reach the audit log
ALICE_PW, BOB_PW, GUESS = "alice-Corr3ct-horse", "bob-Batt3ry-staple", "guess-Tr0ub4dor-3"
COMMAND_LINE = {"id": "0ldrun00-000007", "kind": "valve", "target": "bus/1/1/2", "action": "close", "who": "alice",
                "source": "api", "peer": "192.0.2.7", "reason": "unpaid bill",
                "requested_at": "2026-11-29T21:00:00+00:00", "state": "sent", "detail": "frame on the wire",
                "sent_at": "2026-11-29T21:00:00+00:00", "finished_at": None, "late": False}
THROTTLE_ALARM = "api:login:throttled"


class NoField(Service):
    """A link service with nothing behind it: these tests only use the API."""


class Client:
    """The HTTP client of ``support.apirig.ApiRig`` for an API built by the supervisor."""

    call = ApiRig.call
    base = ApiRig.base

    def __init__(self, api) -> None:
        self.api = api
        self.agent = Agent(reactor)


def supervisor(audit_path):
    """The assembled supervisor on the real reactor (the API listens on a real port), its
    audit log at ``audit_path``; no field, no state folder, no historian."""
    from st2000r.supervisor.service import SupervisorService

    topology = make_topology(make_link(), operators=(Operator("alice", "admin", cheap_hash(ALICE_PW)),
                                                     Operator("bob", "viewer", cheap_hash(BOB_PW))),
                             api=ApiSettings(listen=("127.0.0.1", 0), token_ttl_s=600))
    return SupervisorService(topology, reactor, link_factory=lambda *a, **k: NoField(), audit_path=audit_path,
                             state=False, historian=False)


async def login(client, name, password):
    return await client.call("POST", "login", {"name": name, "password": password})


@pytest_twisted.ensureDeferred
async def test_session_records_are_in_the_audit_log_and_served_after_a_restart(tmp_path):
    path = tmp_path / "audit.jsonl"
    first = supervisor(path)
    first.startService()
    try:
        http = Client(first.api)
        assert (await login(http, "bob", GUESS)).status == 401
        bob = await login(http, "bob", BOB_PW)
        assert bob.status == 200
        assert (await http.call("POST", "logout", token=bob.json["token"])).status == 204
        alice = (await login(http, "alice", ALICE_PW)).json["token"]
        # a command of the same run, interleaved with the session lines in the file
        assert (await http.call("POST", "commands", {"kind": "read_now", "target": "bus/1", "reason": "check"},
                                token=alice)).status == 202
    finally:
        await first.stopService()
    text = path.read_text(encoding="utf-8")
    for secret in (ALICE_PW, BOB_PW, GUESS):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    sessions = [(d["event"], d["name"], d["peer"]) for d in lines if d.get("record") == "session"]
    assert sessions == [("failed", "bob", "127.0.0.1"), ("login", "bob", "127.0.0.1"), ("logout", "bob", "127.0.0.1"),
                        ("login", "alice", "127.0.0.1")]
    commands = [d for d in lines if "record" not in d]
    assert commands and {d["who"] for d in commands} == {"alice"}

    second = supervisor(path)
    second.startService()
    try:
        http = Client(second.api)
        token = (await login(http, "alice", ALICE_PW)).json["token"]
        items = (await http.call("GET", "audit/sessions", token=token)).json["items"]
        assert [(r["event"], r["name"]) for r in items] == [("login", "alice"), ("login", "alice"),
                                                            ("logout", "bob"), ("login", "bob"), ("failed", "bob")]
        assert items[-1]["detail"] == "wrong password" and items[-1]["at"].endswith("+00:00")
        # the command of the first run is still a command, and only that
        audit = (await http.call("GET", "audit", token=token)).json["items"]
        assert [(c["kind"], c["who"]) for c in audit] == [("read_now", "alice")]
    finally:
        await second.stopService()
    assert GUESS not in path.read_text(encoding="utf-8")


@pytest_twisted.ensureDeferred
async def test_command_and_session_records_interleaved_load_apart(tmp_path):
    path = tmp_path / "audit.jsonl"
    old = json.dumps(COMMAND_LINE) + "\n"  # a file written before session records existed
    path.write_text(old, encoding="utf-8")
    assert [r.id for r in read_records(path).records] == [COMMAND_LINE["id"]]
    audit = AuditLog(path, reactor.callFromThread)
    sent = record_from_json(COMMAND_LINE)
    first = SessionRecord(1_780_000_000.25, "alice", "10.0.0.7", "login", "role admin")
    second = SessionRecord(1_780_000_001.5, "mallory", "10.0.0.9", "failed", "unknown name")
    await defer.gatherResults([audit.append_session(first), audit.append(record_from_json(
        {**COMMAND_LINE, "state": "succeeded", "finished_at": "2026-11-29T21:00:05+00:00"})),
        audit.append_session(second)])
    await audit.close()
    report = read_records(path)
    assert report.bad_lines == ()
    assert [(r.id, r.state.value) for r in report.records] == [(sent.id, "succeeded")]
    assert report.sessions == (first, second)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == old.strip() and json.loads(lines[1])["record"] == "session"
    with pytest.raises(ValueError, match="not a command record"):
        record_from_json(json.loads(lines[1]))
    with pytest.raises(ValueError, match="not a session record"):
        session_from_json(json.loads(lines[0]))


def test_a_line_of_an_unknown_record_type_or_a_broken_session_line_is_reported_not_taken(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = [json.dumps({**COMMAND_LINE, "record": "future"}),
             json.dumps({"record": "session", "at": "2026-11-29T21:00:00+00:00", "name": "x", "peer": None,
                         "event": "sudo", "detail": ""}),
             json.dumps({"record": "session", "name": "x", "event": "login"}),
             json.dumps(COMMAND_LINE)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = read_records(path)
    assert [r.id for r in report.records] == [COMMAND_LINE["id"]] and report.sessions == ()
    reasons = [why for _, why in report.bad_lines]
    assert reasons == ["not a command record (record = 'future')", "session record: unknown event 'sudo'",
                       "missing key 'at'"]
    assert report.bad_lines[1][0] == len(lines[0]) + 1


# --------------------------------------------------------------------------- the security alarm


@pytest.fixture
def rig():
    rig = ApiRig(ttl_s=600)
    rig.start()
    yield rig
    pytest_twisted.blockon(rig.stop())


def throttle_alarms(rig):
    return [a for a in rig.alarms.alarms() if a.id == THROTTLE_ALARM]


async def burst(rig, name="operator"):
    for _ in range(FAIL_LIMIT):
        assert (await rig.call("POST", "login", {"name": name, "password": GUESS})).status == 401


@pytest_twisted.ensureDeferred
async def test_a_burst_of_failed_logins_raises_one_alarm_until_acknowledged(rig):
    for role in ("viewer", "operator"):  # logged in before the address is throttled
        await rig.token(role)
    for _ in range(FAIL_LIMIT - 1):
        assert (await rig.call("POST", "login", {"name": "operator", "password": GUESS})).status == 401
    assert throttle_alarms(rig) == []  # below the limit: no alarm
    assert (await rig.call("POST", "login", {"name": "operator", "password": GUESS})).status == 401
    (alarm,) = throttle_alarms(rig)
    assert alarm.severity == "major" and alarm.kind == "login_throttled" and alarm.source == "api"
    assert alarm.state == "cleared-unacked" and "127.0.0.1" in alarm.text and "operator" not in alarm.text
    raised_at = alarm.raised_at
    for _ in range(3):  # refused while throttled: no new alarm
        assert (await rig.call("POST", "login", {"name": "operator", "password": "operator"})).status == 429
    rig.clock.advance(FAIL_WINDOW_S)
    await burst(rig)  # a second burst while the first alarm waits: still one alarm
    listed = (await rig.call("GET", "alarms?kind=login_throttled", as_="viewer")).json["items"]
    assert [a["id"] for a in listed] == [THROTTLE_ALARM] and throttle_alarms(rig)[0].raised_at == raised_at
    ack = await rig.call("POST", "alarms/acknowledge", {"alarm": THROTTLE_ALARM, "note": "checked"}, as_="operator")
    assert ack.status == 200 and ack.json["alarm"]["state"] == "removed"
    assert throttle_alarms(rig) == []
    rig.clock.advance(FAIL_WINDOW_S)
    await burst(rig)  # after the acknowledgement a new burst is a new alarm
    assert len(throttle_alarms(rig)) == 1 and throttle_alarms(rig)[0].raised_at > raised_at


@pytest_twisted.ensureDeferred
async def test_throttled_refusals_are_recorded_once_a_minute_with_a_count(rig):
    await burst(rig)
    audit = rig.commands.audit
    assert isinstance(audit, MemoryAudit)
    assert [r.event for r in audit.sessions] == ["failed"] * FAIL_LIMIT
    assert "refused for 300 s" in audit.sessions[-1].detail
    for _ in range(20):
        assert (await rig.call("POST", "login", {"name": "operator", "password": GUESS})).status == 429
    throttled = [r for r in audit.sessions if r.event == "throttled"]
    assert len(throttled) == 1 and throttled[0].name == "operator" and throttled[0].peer == "127.0.0.1"
    rig.clock.advance(THROTTLE_NOTE_S)
    assert (await rig.call("POST", "login", {"name": "root", "password": GUESS})).status == 429
    throttled = [r for r in audit.sessions if r.event == "throttled"]
    assert len(throttled) == 2 and throttled[1].name == "root" and "19 more refused" in throttled[1].detail
    assert list(audit.sessions) == list(rig.api.sessions.records)  # what is served is what is persisted


# --------------------------------------------------------------------------- the route


@pytest_twisted.ensureDeferred
async def test_the_session_log_is_admin_only_paged_newest_first_and_filtered(rig):
    assert (await rig.call("GET", "audit/sessions", as_="engineer")).status == 403
    await rig.token("admin")
    for name in ("a1", "a2", "a3"):
        await rig.call("POST", "login", {"name": name, "password": GUESS})
    page1 = (await rig.call("GET", "audit/sessions?limit=2", as_="admin")).json
    assert [r["name"] for r in page1["items"]] == ["a3", "a2"] and page1["next"]
    await rig.call("POST", "login", {"name": "a4", "password": GUESS})  # a new record between pages
    page2 = (await rig.call("GET", f"audit/sessions?limit=2&cursor={page1['next']}", as_="admin")).json
    assert [r["name"] for r in page2["items"]] == ["a1", "admin"]  # nothing repeated, nothing skipped
    failed = (await rig.call("GET", "audit/sessions?event=failed", as_="admin")).json
    assert [r["name"] for r in failed["items"]] == ["a4", "a3", "a2", "a1"] and failed["next"] is None
    bad = await rig.call("GET", "audit/sessions?event=sudo", as_="admin")
    assert bad.status == 400 and bad.json["error"]["field"] == "event"
    doc = (await rig.call("GET", "openapi.json")).json["paths"]["/api/v1/audit/sessions"]["get"]
    assert doc["x-least-role"] == "admin" and "event" in [p["name"] for p in doc["parameters"]]
    (route,) = [r for r in ROUTES if r.path.endswith("/audit/sessions")]
    assert route.least_role.value == "admin"


# --------------------------------------------------------------------------- an unwritable audit log


class FlakyAudit(MemoryAudit):
    """Session records fail while ``broken``."""

    broken = True

    def append_session(self, record):
        if self.broken:
            return defer.fail(AuditError("audit log x: cannot write: No space left on device"))
        return super().append_session(record)


@pytest_twisted.ensureDeferred
async def test_logins_go_on_when_the_audit_log_cannot_be_written_and_it_is_logged_once():
    seen = []

    def observer(event):
        text = event.get("log_format") or ""
        if "session record" in text:
            seen.append((event["log_level"].name, text))

    audit = FlakyAudit()
    rig = ApiRig(audit=audit)
    rig.start()
    globalLogPublisher.addObserver(observer)
    try:
        for role in ("viewer", "operator", "admin"):
            assert (await rig.call("POST", "login", {"name": role, "password": role})).status == 200
        assert (await rig.call("POST", "login", {"name": "viewer", "password": GUESS})).status == 401
        assert [level for level, _ in seen] == ["error"] and rig.api.sessions.unaudited == 4
        assert len(rig.api.sessions.records) == 4  # still served from memory
        audit.broken = False
        await rig.call("POST", "login", {"name": "engineer", "password": "engineer"})
        assert [level for level, _ in seen] == ["error", "info"] and [r.name for r in audit.sessions] == ["engineer"]
    finally:
        globalLogPublisher.removeObserver(observer)
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_a_closed_audit_log_does_not_stop_a_login(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl", reactor.callFromThread)
    await audit.close()
    rig = ApiRig(audit=audit)
    rig.start()
    try:
        assert (await rig.call("POST", "login", {"name": "viewer", "password": "viewer"})).status == 200
        assert "closed" in rig.api.sessions.audit_failed
    finally:
        await rig.stop()
