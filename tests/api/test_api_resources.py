"""What the resources answer: meters filtered and paged, one meter by path segments or
encoded id, CDTs, links, summary, diagnostics; commands through the one command path to
their outcome; alarm operations; and bad input answered 4xx naming the field."""

from __future__ import annotations

import pytest
import pytest_twisted

from support.apirig import ApiRig
from support.builders import status
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve

TAMPER = "meter:bus/1/1/1:tamper"


@pytest.fixture
def rig():
    rig = ApiRig(cdts=3)
    rig.start()
    rig.read(1, [5, 6, 7, 8, 9, 10], statuses=[status(Valve.OPEN, AlarmFlag.TAMPER), 0, 0, 0, 0,
                                             status(Valve.CLOSED, AlarmFlag.OPEN)])
    rig.read(2, [1, 1, 1, 1, 1, 1])
    yield rig
    pytest_twisted.blockon(rig.stop())


async def all_pages(rig, query, limit):
    ids, cursor, pages = [], None, 0
    while True:
        q = f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        a = await rig.call("GET", f"meters?{q}", as_="viewer")
        assert a.status == 200, a.raw
        ids += [m["id"] for m in a.json["items"]]
        pages += 1
        cursor = a.json["next"]
        if cursor is None:
            return ids, pages


@pytest_twisted.ensureDeferred
async def test_meter_items_have_the_pinned_shape(rig):
    a = await rig.call("GET", "meters?link=bus&cdt=1&limit=1", as_="viewer")
    item = a.json["items"][0]
    assert item == {"id": "bus/1/1/1", "link": "bus", "cdt": 1, "module": 1, "channel": 1, "household": "H1-1",
                    "kind": "water", "serial": "00000001001001", "value": 1000 + 5 * 10, "count": 5,
                    "base_unit": "L", "quality": "good", "read_at": "2026-05-28T20:26:40+00:00",
                    "quality_since": item["quality_since"], "alarms": ["tamper"], "valve": "open"}
    assert isinstance(item["value"], int) and a.json["next"] is not None


@pytest.mark.parametrize("query, expected", [
    ("link=bus", 18), ("cdt=2", 6), ("kind=gas", 6), ("household=H1-2", 3), ("household=H1-*", 6),
    ("quality=good", 12), ("quality=stale", 6), ("alarm=true", 2), ("alarm=false", 16), ("alarm=tamper", 1),
    ("alarm=open", 1), ("alarm=short", 0), ("cdt=1&kind=water", 2), ("link=nope", 0),
])
@pytest_twisted.ensureDeferred
async def test_filters_combine_and_paging_visits_every_match_once(rig, query, expected):
    whole, _ = await all_pages(rig, query, 5000)
    paged, pages = await all_pages(rig, query, 4)
    assert len(whole) == expected and paged == whole and len(set(whole)) == expected
    assert pages >= max(1, -(-expected // 4))


@pytest_twisted.ensureDeferred
async def test_one_meter_by_segments_or_encoded_id_with_its_last_command(rig):
    a = await rig.call("GET", "meters/bus/1/2/3", as_="viewer")
    b = await rig.call("GET", "meters/bus%2F1%2F2%2F3", as_="viewer")
    assert a.status == b.status == 200 and a.json == b.json and a.json["valve"] == "closed"
    assert a.json["alarms"] == ["open"] and a.json["last_command"] is None
    c = await rig.call("POST", "commands", {"kind": "read_now", "target": "bus/1/2/3"}, as_="operator")
    assert (await rig.call("GET", "meters/bus/1/2/3", as_="viewer")).json["last_command"]["id"] == c.json["id"]


@pytest_twisted.ensureDeferred
async def test_a_meter_and_its_pages_follow_every_change_of_its_point(rig):
    before = (await rig.call("GET", "meters/bus/2/1/1", as_="viewer")).json
    page = (await rig.call("GET", "meters?cdt=2&limit=1", as_="viewer")).json["items"][0]
    assert before["value"] == page["value"] == 1010
    rig.read(2, [7, 1, 1, 1, 1, 1])
    after = (await rig.call("GET", "meters/bus/2/1/1", as_="viewer")).json
    page = (await rig.call("GET", "meters?cdt=2&limit=1", as_="viewer")).json["items"][0]
    assert after["value"] == page["value"] == 1070
    rig.points.on_reachability("bus", 2, False, rig.clock.seconds(), "no answer")  # quality follows at once
    rig.drain()
    assert (await rig.call("GET", "meters/bus/2/1/1", as_="viewer")).json["quality"] == "comm_fail"
    summary = (await rig.call("GET", "summary", as_="viewer")).json["meters"]
    assert summary == {"total": 18, "by_quality": {"good": 6, "comm_fail": 6, "stale": 6}, "with_alarms": 2}


@pytest_twisted.ensureDeferred
async def test_cdts_links_sites_summary_diagnostics(rig):
    cdts = (await rig.call("GET", "cdts?link=bus", as_="viewer")).json
    assert [c["id"] for c in cdts["items"]] == ["bus/1", "bus/2", "bus/3"] and cdts["items"][0]["meters"] == 6
    one = (await rig.call("GET", "cdts/bus/2", as_="viewer")).json
    assert one["address"] == 2 and one["online"] is None
    links = (await rig.call("GET", "links", as_="viewer")).json["items"]
    assert links[0]["name"] == "bus" and links[0]["state"] == "connected" and links[0]["cdts"] == 3
    assert links[0]["meters"] == 18 and links[0]["round"] is None and links[0]["sessions"] == []
    sites = (await rig.call("GET", "sites", as_="viewer")).json
    assert sites == {"items": [{"name": "test site", "address": "nowhere", "links": ["bus"]}]}
    s = (await rig.call("GET", "summary", as_="viewer")).json
    assert s["meters"] == {"total": 18, "by_quality": {"good": 12, "stale": 6}, "with_alarms": 2}
    assert s["alarms"]["total"] == 2 and s["links"] == {"total": 1, "by_state": {"connected": 1}}
    d = (await rig.call("GET", "diagnostics", as_="viewer")).json
    assert [c["name"] for c in d["consumers"]] == ["api events"] and d["historian"] is None
    assert d["api"]["sessions"] == 1 and d["seq"] == rig.bus.seq


@pytest_twisted.ensureDeferred
async def test_a_valve_closed_through_the_api_reports_its_outcome(rig):
    a = await rig.call("POST", "commands", {"kind": "valve", "meter": "bus/1/1/1", "open": False,
                                            "reason": "unpaid bill"}, as_="operator")
    assert a.status == 202
    cid = a.json["id"]
    assert a.json["url"] == f"/api/v1/commands/{cid}" and a.json["state"] in ("pending", "sent")
    rig.reply_valve()
    rig.clock.advance(3)  # the dispatcher reads the valve back
    rig.reply_read(Valve.CLOSED, count=5)
    got = (await rig.call("GET", f"commands/{cid}", as_="viewer")).json
    assert got["state"] == "succeeded" and got["kind"] == "valve" and got["action"] == "close"
    assert got["who"] == "operator" and got["source"] == "api" and got["peer"] == "127.0.0.1"
    assert got["reason"] == "unpaid bill" and got["finished_at"] is not None
    meter = (await rig.call("GET", "meters/bus/1/1/1", as_="viewer")).json
    assert meter["valve"] == "closed" and meter["last_command"]["state"] == "succeeded"
    listed = (await rig.call("GET", "commands?state=succeeded", as_="viewer")).json["items"]
    assert [c["id"] for c in listed] == [cid]
    audit = (await rig.call("GET", "audit?kind=valve", as_="engineer")).json["items"]
    assert audit[0]["id"] == cid and audit[0]["peer"] == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_the_console_is_audited_as_its_own_source(rig):
    a = await rig.call("POST", "commands", {"kind": "read_now", "target": "bus/1"}, as_="operator",
                       headers={"X-St2000r-Client": "console"})
    b = await rig.call("POST", "alarms/acknowledge", {"alarm": TAMPER}, as_="operator",
                       headers={"X-St2000r-Client": "console"})
    c = await rig.call("POST", "commands", {"kind": "read_now", "target": "bus/2"}, as_="operator")
    assert rig.commands.get(a.json["id"]).source == "console" and b.json["command"]["source"] == "console"
    assert rig.commands.get(c.json["id"]).source == "api"


@pytest_twisted.ensureDeferred
async def test_a_command_the_path_refuses_at_once_is_202_refused_with_the_reason():
    rig = ApiRig(protected=("H1-1",))
    rig.start()
    try:
        a = await rig.call("POST", "commands", {"kind": "valve", "meter": "bus/1/1/1", "open": False},
                           as_="operator")
        assert a.status == 202 and a.json["state"] == "refused" and "protected" in a.json["detail"]
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_alarm_acknowledge_shelve_unshelve(rig):
    alarms = (await rig.call("GET", "alarms?link=bus", as_="viewer")).json["items"]
    assert {a["id"] for a in alarms} == {TAMPER, "meter:bus/1/2/3:open"}
    a = await rig.call("POST", "alarms/acknowledge", {"alarm": TAMPER, "note": "on site"}, as_="operator")
    assert a.status == 200 and a.json["alarm"]["state"] == "active-acked" and a.json["alarm"]["acked_by"] == "operator"
    assert a.json["alarm"]["ack_note"] == "on site"
    assert a.json["command"]["kind"] == "alarm_ack" and a.json["command"]["state"] == "succeeded"
    s = await rig.call("POST", "alarms/shelve", {"alarm": TAMPER, "reason": "sensor swap", "duration_s": 120},
                       as_="operator")
    assert s.status == 200 and s.json["alarm"]["shelved_reason"] == "sensor swap"
    assert s.json["alarm"]["shelved_until"] == "2026-05-28T20:28:40+00:00"
    shelved = (await rig.call("GET", "alarms?state=shelved", as_="viewer")).json["items"]
    assert [x["id"] for x in shelved] == [TAMPER]
    u = await rig.call("POST", "alarms/unshelve", {"alarm": TAMPER}, as_="operator")
    assert u.status == 200 and u.json["alarm"]["shelved_by"] is None
    again = await rig.call("POST", "alarms/unshelve", {"alarm": TAMPER}, as_="operator")
    assert again.status == 409 and again.json["error"]["field"] == "alarm"
    one = (await rig.call("GET", f"alarms/one?id={TAMPER}", as_="viewer")).json
    assert one["id"] == TAMPER and one["state"] == "active-unacked"  # an active alarm needs a new acknowledgement


BAD = [
    ("GET", "meters?limit=0", None, 400, "limit"),
    ("GET", "meters?limit=5001", None, 400, "limit"),
    ("GET", "meters?limit=abc", None, 400, "limit"),
    ("GET", "meters?kind=steam", None, 400, "kind"),
    ("GET", "meters?colour=red", None, 400, "colour"),
    ("GET", "meters?cdt=1&cdt=2", None, 400, "cdt"),
    ("GET", "meters?cursor=!!!", None, 400, "cursor"),
    ("GET", "meters?cursor=YToz", None, 400, "cursor"),  # another list's cursor
    ("GET", "meters/bus/1/1/4", None, 400, "channel"),
    ("GET", "meters/bus/9/1/1", None, 404, "id"),
    ("GET", "meters/bus/1/x/1", None, 400, "module"),
    ("GET", "cdts/bus/99", None, 404, "address"),
    ("GET", "links/nope", None, 404, "name"),
    ("GET", "commands/nope", None, 404, "id"),
    ("GET", "alarms/one", None, 400, "id"),
    ("GET", "alarms/one?id=nope", None, 404, "id"),
    ("GET", "alarms?state=angry", None, 400, "state"),
    ("GET", "nowhere", None, 404, "path"),
    ("DELETE", "meters", None, 405, None),
    ("POST", "commands", {"kind": "valve", "meter": "bus/1/1/1"}, 400, "open"),
    ("POST", "commands", {"kind": "valve", "meter": "bus/1/1", "open": True}, 400, "meter"),
    ("POST", "commands", {"kind": "valve", "meter": "bus/7/1/1", "open": True}, 404, "meter"),
    ("POST", "commands", {"kind": "valve", "meter": "bus/1/1/1", "open": "no"}, 400, "open"),
    ("POST", "commands", {"kind": "explode"}, 400, "kind"),
    ("POST", "commands", {"meter": "bus/1/1/1"}, 400, "kind"),
    ("POST", "commands", {"kind": "valve", "meter": "bus/1/1/1", "open": True, "reason": "x" * 401}, 400, "reason"),
    ("POST", "commands", {"kind": "read_now", "target": "bus/x"}, 400, "target"),
    ("POST", "commands", {"kind": "read_now", "target": "bus/9"}, 404, "target"),
    ("POST", "commands", {"kind": "time_sync", "link": "bus", "cdt": 0}, 400, "cdt"),
    ("POST", "alarms/shelve", {"alarm": TAMPER, "reason": "", "duration_s": 5}, 400, "reason"),
    ("POST", "alarms/shelve", {"alarm": TAMPER, "reason": "r", "duration_s": 10**9}, 400, "duration_s"),
    ("POST", "alarms/acknowledge", {"alarm": "nope"}, 404, "alarm"),
]


@pytest.mark.parametrize("method, path, body, code, field", BAD, ids=[f"{m} {p} {b}"[:80] for m, p, b, _, _ in BAD])
@pytest_twisted.ensureDeferred
async def test_bad_input_gets_a_4xx_naming_the_field(rig, method, path, body, code, field):
    a = await rig.call(method, path, body, as_="engineer")
    assert a.status == code, a.raw
    err = a.json["error"]
    assert err["field"] == field and err["message"] and err["code"]
    if field:
        assert field in err["message"] or code == 404


@pytest.mark.parametrize("raw, why", [(b"{", "not JSON"), (b"", "needs a JSON body"), (b"[" * 60_000, "not JSON"),
                                      (b'{"kind": "valve", "meter": "bus/1/1/1", "open": true, "x": NaN}', "x"),
                                      (b"\xff\xfe", "not JSON"), (b"1" * 5000, "not JSON")])
@pytest_twisted.ensureDeferred
async def test_bodies_that_are_not_json_objects_are_400(rig, raw, why):
    a = await rig.call("POST", "commands", raw=raw, as_="operator")
    assert a.status == 400 and why in a.json["error"]["message"], a.raw


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_limit_is_413(rig):
    a = await rig.call("POST", "commands", raw=b'{"kind": "' + b"x" * 70_000 + b'"}', as_="operator")
    assert a.status == 413 and a.json["error"]["code"] == "too_large"


@pytest_twisted.ensureDeferred
async def test_405_names_the_allowed_methods(rig):
    a = await rig.call("PUT", "commands", as_="viewer")
    assert a.status == 405 and a.header("Allow") == "GET, POST"


@pytest_twisted.ensureDeferred
async def test_connections_beyond_max_clients_are_closed_at_once():
    from twisted.internet import protocol, reactor

    from support.apirig import eventually

    class Idle(protocol.Protocol):
        lost = False

        def connectionLost(self, reason=None):
            self.lost = True

    rig = ApiRig(max_clients=2)
    rig.start()
    creator = protocol.ClientCreator(reactor, Idle)
    try:
        held = [await creator.connectTCP("127.0.0.1", rig.api.port) for _ in range(2)]
        await eventually(lambda: len(rig.api.factory.protocols) == 2, what="two connections held")
        extra = await creator.connectTCP("127.0.0.1", rig.api.port)
        await eventually(lambda: extra.lost, what="the third connection closed")
        assert rig.api.factory.refused == 1 and not any(p.lost for p in held)
        for p in held:
            p.transport.loseConnection()
        await eventually(lambda: len(rig.api.factory.protocols) == 0, what="the held ones let go")
        assert (await rig.call("GET", "health")).status == 200  # a place is free again
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_a_round_in_progress_shows_on_its_link_and_in_the_summary():
    from st2000r.config.model import ReadingPlan
    from st2000r.drivers.st2000r.poller import Poller

    rig = ApiRig(cdts=4)
    rig.master.auto_send = False
    poller = Poller(next(rig.topology.links()), rig.master, rig.clock, rig.points,
                    (ReadingPlan("daily", "full", (), None, None),))
    rig.pollers["bus"] = poller
    rig.start()
    try:
        poller.run_plan_now("daily")
        rig.drain()
        link = (await rig.call("GET", "links/bus", as_="viewer")).json
        assert link["round"] == {"link": "bus", "plan": "daily", "kind": "full", "started_at": "2026-05-28T20:26:40+00:00",
                                 "cdts_done": link["round"]["cdts_done"], "cdts_total": 4}
        assert 0 <= link["round"]["cdts_done"] <= 4
        summary = (await rig.call("GET", "summary", as_="viewer")).json
        assert summary["rounds"] == [link["round"]]
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_operators_are_listed_for_admins_without_their_hashes(rig):
    a = await rig.call("GET", "operators", as_="admin")
    assert a.status == 200 and b"argon2" not in a.raw and b"hash" not in a.raw
    assert a.json["items"] == [{"name": r, "role": r, "can_login": True} for r in ("viewer", "operator", "engineer",
                                                                                   "admin")] + [
        {"name": "modbus", "role": "operator", "can_login": False}]


@pytest_twisted.ensureDeferred
async def test_a_request_stalled_half_way_is_cut_after_the_idle_timeout_but_a_stream_is_not():
    from twisted.internet import protocol, reactor

    from support.apirig import SseReader, eventually
    from st2000r.supervisor.api.resource import IDLE_TIMEOUT_S

    class Stalled(protocol.Protocol):
        lost = False

        def connectionMade(self):
            self.transport.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line

        def connectionLost(self, reason=None):
            self.lost = True

    rig = ApiRig()
    rig.start()
    try:
        stalled = await protocol.ClientCreator(reactor, Stalled).connectTCP("127.0.0.1", rig.api.port)
        stream = await SseReader(rig.api.port, await rig.token("viewer")).connect()
        await stream.until(lambda r: r.named("hello"))
        await eventually(lambda: len(rig.api.factory.protocols) >= 2, what="both connections held")
        rig.clock.advance(IDLE_TIMEOUT_S - 1)
        assert not stalled.lost
        rig.clock.advance(2)
        await eventually(lambda: stalled.lost, what="the stalled request cut")
        rig.read(1, [3] * 6)
        await stream.until(lambda r: len(r.named("MeterChanged")) == 6)  # the stream lives on
        assert not stream.closed
        stream.close()
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_a_gprs_links_dtu_sessions_are_listed(rig):
    from st2000r.drivers.st2000r.gprs import SessionInfo

    class Server:
        def sessions(self):
            return {"DTU-7": SessionInfo("DTU-7", "bus", "192.0.2.9:40000", rig.clock.seconds() - 60,
                                         rig.clock.seconds(), 2, 1200, 300, "challenge"),
                    "DTU-8": SessionInfo("DTU-8", "other", "192.0.2.10:40001", 0.0, 0.0, 0, 0, 0)}

    rig.api.app.gprs_server = Server()
    link = (await rig.call("GET", "links/bus", as_="viewer")).json
    assert link["sessions"] == [{"dtu_id": "DTU-7", "peer": "192.0.2.9:40000", "since": "2026-05-28T20:25:40+00:00",
                                 "last_seen": "2026-05-28T20:26:40+00:00", "heartbeats": 2, "bytes_in": 1200,
                                 "bytes_out": 300, "auth": "challenge"}]
