"""The console's in-memory API (tests/support/fake_api.py) is proven against the real one:
every answer the fake gives the console has a status the real OpenAPI document lists for
that route and a body its response schema accepts, and the fake answers no route the
document lacks.  The document is fetched from a real API on a loopback port, so a change
to the real shapes breaks this test, not the console in the field."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import jsonschema_rs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from support.apirig import ApiRig
from support.fake_api import FakeApi, alarm

BASE = "/api/v1"


def run(coro: Any) -> Deferred:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


async def real_document() -> dict:
    rig = ApiRig()
    rig.start()
    try:
        answer = await rig.call("GET", "openapi.json")
    finally:
        await rig.stop()
    assert answer.status == 200, answer.raw
    return answer.json


class Contract:
    """Checks answers against the document: route, documented status, body schema."""

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.ops: list[tuple[str, re.Pattern, str, dict]] = []
        for template, item in doc["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$")
            for method, op in item.items():
                self.ops.append((method.upper(), pattern, template, op))
        self.checked: set[tuple[str, str, int]] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict] | None:
        # a literal path (``/alarms/one``) wins over a template that also matches it
        found = [(t, op) for m, p, t, op in self.ops if m == method and p.match(path)]
        found.sort(key=lambda f: f[0].count("{"))
        return found[0] if found else None

    def schema_errors(self, schema: dict, body: Any) -> list[str]:
        rooted = dict(schema) | {"components": self.doc["components"]}
        validator = jsonschema_rs.validator_for(rooted, validate_formats=True)
        return [f"at /{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(body)]

    def component_errors(self, name: str, body: Any) -> list[str]:
        return self.schema_errors({"$ref": f"#/components/schemas/{name}"}, body)

    def check(self, response: httpx.Response, body: Any = None) -> Any:
        """Assert ``response`` is one the real API could give; return its JSON body."""
        method, path = response.request.method, response.request.url.path
        found = self.operation(method, path)
        assert found is not None, f"the fake answers {method} {path}, which the real document lacks"
        template, op = found
        status = str(response.status_code)
        assert status in op["responses"], f"{method} {template}: status {status} is not documented"
        self.checked.add((method, template, response.status_code))
        content = op["responses"][status].get("content")
        if content is None:
            assert not response.content, f"{method} {template} {status}: documented without a body"
            return None
        mime = response.headers.get("content-type", "").split(";")[0]
        assert mime in content, f"{method} {template} {status}: content type {mime!r} not in {list(content)}"
        if mime != "application/json":
            return None
        data = response.json() if body is None else body
        errors = self.schema_errors(content[mime]["schema"], data)
        assert not errors, f"{method} {template} {status}: " + "; ".join(errors)
        return data


def sse_events(raw: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


@pytest.fixture
def fake() -> FakeApi:
    f = FakeApi()
    for source, state in (("bus1/1/1/1", "active-unacked"), ("bus1/1/2/1", "active-unacked"),
                          ("bus1/2/1/1", "shelved")):
        a = alarm(source, state=state)
        f.alarms[a["id"]] = a
    return f


@pytest_twisted.ensureDeferred
async def test_every_answer_the_fake_gives_the_console_is_one_the_real_api_documents(fake):
    contract = Contract(await real_document())
    http = httpx.AsyncClient(transport=fake.transport(), base_url="http://fake")
    tokens: dict[str, str] = {}

    async def call(method: str, path: str, *, as_: str | None = None, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {tokens[as_]}"} if as_ else {}
        response = await run(http.request(method, BASE + path, headers=headers, **kw))
        return response.status_code, contract.check(response)

    try:
        for name, password in (("root", "rootpass"), ("alice", "s3cret"), ("vera", "viewpass")):
            status, body = await call("POST", "/login", json={"name": name, "password": password})
            assert status == 200
            tokens[name] = body["token"]
        assert (await call("POST", "/login", json={"name": "alice", "password": "nope"}))[0] == 401
        assert (await call("GET", "/summary"))[0] == 401

        for path in ("/summary", "/links", "/diagnostics", "/alarms"):
            assert (await call("GET", path, as_="alice"))[0] == 200, path
        assert (await call("GET", "/operators", as_="root"))[0] == 200
        assert (await call("GET", "/operators", as_="alice"))[0] == 403

        for params in ({}, {"link": "bus1"}, {"cdt": "2"}, {"household": "B001-*"}, {"household": "B002-01"},
                       {"kind": "gas"}, {"quality": "good"}, {"alarm": "true"}, {"alarm": "false"},
                       {"alarm": "tamper"}):
            status, body = await call("GET", "/meters", as_="vera", params=params)
            assert status == 200 and body["next"] is None, params
        pages, cursor = [], None
        while True:
            params = {"limit": "5"} | ({"cursor": cursor} if cursor else {})
            status, body = await call("GET", "/meters", as_="vera", params=params)
            pages.append(body["items"])
            if (cursor := body["next"]) is None:
                break
        assert [len(p) for p in pages] == [5, 5, 2]
        assert (await call("GET", "/meters", as_="vera", params={"colour": "red"}))[0] == 400

        assert (await call("GET", "/meters/bus1/1/2/3", as_="vera"))[0] == 200
        assert (await call("GET", "/meters/bus1/9/9/9", as_="vera"))[0] == 404
        assert (await call("GET", "/meters/bus1/1/2/3/history", as_="vera"))[0] == 200
        assert (await call("GET", "/meters/bus1/9/9/9/history", as_="vera"))[0] == 404

        ids = list(fake.alarms)
        assert (await call("POST", "/alarms/acknowledge", as_="alice", json={"alarm": ids[0], "note": "seen"}))[0] == 200
        assert (await call("POST", "/alarms/shelve", as_="alice",
                           json={"alarm": ids[1], "reason": "works", "duration_s": 3600}))[0] == 200
        assert (await call("POST", "/alarms/shelve", as_="alice", json={"alarm": ids[1], "reason": ""}))[0] == 400
        assert (await call("POST", "/alarms/unshelve", as_="alice", json={"alarm": ids[2], "reason": "done"}))[0] == 200
        assert (await call("POST", "/alarms/acknowledge", as_="alice", json={"alarm": "meter:x:tamper"}))[0] == 404
        assert (await call("POST", "/alarms/acknowledge", as_="vera", json={"alarm": ids[0]}))[0] == 403

        status, valve = await call("POST", "/commands", as_="alice",
                                   json={"kind": "valve", "meter": "bus1/1/1/1", "open": False, "reason": "leak"})
        assert status == 202
        status, read = await call("POST", "/commands", as_="alice", json={"kind": "read_now", "target": "bus1/1/1/2"})
        assert status == 202
        assert (await call("POST", "/commands", as_="alice", json={"kind": "read_now", "target": "bus1/9/9/9"}))[0] == 404
        assert (await call("POST", "/commands", as_="vera", json={"kind": "read_now", "target": "bus1/1/1/2"}))[0] == 403
        for accepted in (valve, read):
            assert (await call("GET", accepted["url"].removeprefix(BASE), as_="alice"))[0] == 200
        assert (await call("GET", "/commands/nope", as_="alice"))[0] == 404

        fake.set_command(valve["id"], "succeeded", "valve closed")
        stream = await run(http.send(http.build_request("GET", BASE + "/events",
                                                        headers={"Authorization": f"Bearer {tokens['alice']}"}),
                                     stream=True))
        contract.check(stream)
        fake.change_meter("bus1/1/1/1", value=100_999, valve="closed")
        fake.set_command(read["id"], "failed", "no answer")
        await call("POST", "/alarms/acknowledge", as_="alice", json={"alarm": ids[1]})
        fake.drop_streams()
        events = sse_events(await run(stream.aread()))
        assert [e for e, _ in events] == ["hello", "MeterChanged", "CommandChanged", "AlarmChanged"]
        # the stream's payload is text in the document; the objects events carry are its components
        for event, data in events:
            if event == "CommandChanged":
                assert not contract.component_errors("Command", data["command"]), contract.component_errors(
                    "Command", data["command"])
            if event == "AlarmChanged":
                assert not contract.component_errors("Alarm", data["alarm"]), contract.component_errors(
                    "Alarm", data["alarm"])

        assert (await call("POST", "/logout", as_="alice"))[0] == 204
    finally:
        await run(http.aclose())
    routes = {(m, t.removeprefix(BASE)) for m, t, _ in contract.checked}
    assert routes == {("POST", "/login"), ("POST", "/logout"), ("GET", "/summary"), ("GET", "/links"),
                      ("GET", "/diagnostics"), ("GET", "/operators"), ("GET", "/meters"),
                      ("GET", "/meters/{link}/{cdt}/{module}/{channel}"),
                      ("GET", "/meters/{link}/{cdt}/{module}/{channel}/history"), ("GET", "/alarms"),
                      ("POST", "/alarms/acknowledge"), ("POST", "/alarms/shelve"), ("POST", "/alarms/unshelve"),
                      ("POST", "/commands"), ("GET", "/commands/{id}"), ("GET", "/events")}


@pytest_twisted.ensureDeferred
async def test_the_fake_answers_no_method_and_path_the_real_document_lacks(fake):
    """Every documented path (templates filled in) and a few near misses, with every method:
    wherever the fake answers something other than 404/405, the real API has that route."""
    contract = Contract(await real_document())
    http = httpx.AsyncClient(transport=fake.transport(), base_url="http://fake")
    login = await run(http.post(BASE + "/login", json={"name": "root", "password": "rootpass"}))
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    filled = {"name": "bus1", "link": "bus1", "cdt": "1", "address": "1", "module": "1", "channel": "1",
              "id": "0123456-000001"}
    paths = {re.sub(r"\{(\w+)\}", lambda m: filled[m.group(1)], p) for p in contract.doc["paths"]}
    paths |= {BASE + p for p in ("/meters/bus1/1/1/1/extra", "/commands/a/b", "/alarms/x", "/login/x", "/")}
    served = []
    try:
        for path in sorted(paths):
            for method in ("GET", "POST", "PUT", "DELETE"):
                # streamed, so the event stream's endless body is not read
                response = await run(http.send(http.build_request(method, path, headers=headers, json={}),
                                               stream=True))
                if response.status_code not in (404, 405):
                    await run(response.aclose())
                    served.append((method, path, response.status_code))
                    assert contract.operation(method, path), f"the fake answers {method} {path} " \
                        f"({response.status_code}); the real API has no such route"
                else:
                    await run(response.aread())
                    assert not contract.component_errors("Error", response.json()), (method, path)
    finally:
        await run(http.aclose())
    assert ("GET", BASE + "/meters", 200) in served and ("GET", BASE + "/events", 200) in served


@pytest_twisted.ensureDeferred
async def test_the_contract_rejects_a_meter_the_real_schema_would_not():
    """The check can fail: a meter without its serial, or with a kind the API never sends."""
    contract = Contract(await real_document())
    meter = FakeApi().meters[0]
    assert contract.component_errors("Meter", meter) == []
    assert contract.component_errors("Meter", {k: v for k, v in meter.items() if k != "serial"})
    assert contract.component_errors("Meter", meter | {"kind": "steam"})
    assert contract.component_errors("Meter", meter | {"value": "12"})
