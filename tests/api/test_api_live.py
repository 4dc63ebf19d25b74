"""The API of a live supervisor process (``st2000r run`` with ``[api]`` against
``st2000r simulate``): a meter read now equals the simulator's ground truth, a valve
closed through the API is closed in the field, and a property-based fuzzer driven by the
served OpenAPI document finds no 5xx and no response that breaks the document."""

from __future__ import annotations

import os

import pytest

from support.liveapi import LiveApi

pytestmark = pytest.mark.slow
METER = "garden-bus/1/1/1"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    api = LiveApi(tmp_path_factory.mktemp("live")).start()
    yield api
    api.stop()


def finished(live, cid):
    status, body = live.request("GET", f"commands/{cid}", as_="viewer")
    assert status == 200, body
    return body if body["state"] not in ("pending", "sent") else None


def test_a_meter_read_now_equals_the_ground_truth(live):
    before = live.true_meter(1, 1, 1)["reading"]
    status, accepted = live.request("POST", "commands", {"kind": "read_now", "target": METER, "reason": "check"},
                                    as_="operator")
    assert status == 202 and accepted["url"] == f"/api/v1/commands/{accepted['id']}"
    outcome = live.until(lambda: finished(live, accepted["id"]), 60, "the read")
    after = live.true_meter(1, 1, 1)["reading"]
    assert outcome["state"] == "succeeded", outcome
    status, meter = live.request("GET", f"meters/{METER}", as_="viewer")
    assert status == 200 and meter["quality"] == "good" and meter["base_unit"] == "L"
    assert before <= meter["value"] <= after, (before, meter["value"], after)


def test_history_comes_from_the_historian(live):
    def rows():
        status, body = live.request("GET", f"meters/{METER}/history", as_="viewer")
        assert status == 200, body
        return body if body["items"] else None

    history = live.until(rows, 30, "a reading in the historian")  # written within its batch delay
    assert history["meter"] == METER and history["base_unit"] == "L"
    item = history["items"][-1]
    assert isinstance(item["value"], int) and item["quality"] == "good" and item["source"] in ("plan", "read_now",
                                                                                             "read_back")
    status, meter = live.request("GET", f"meters/{METER}", as_="viewer")
    assert item["value"] <= meter["value"]
    status, page = live.request("GET", f"meters/{METER}/history?limit=1", as_="viewer")
    if len(history["items"]) > 1:
        assert page["next"] is not None
        status, second = live.request("GET", f"meters/{METER}/history?limit=1&cursor={page['next']}", as_="viewer")
        assert second["items"][0] == history["items"][1]
    status, empty = live.request("GET", f"meters/{METER}/history?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z",
                                 as_="viewer")
    assert status == 200 and empty["items"] == [] and empty["next"] is None
    status, bad = live.request("GET", f"meters/{METER}/history?from=2020-01-01", as_="viewer")
    assert status == 400 and bad["error"]["field"] == "from"


def test_diagnostics_show_the_bus_consumers_and_the_historian_spool(live):
    status, d = live.request("GET", "diagnostics", as_="viewer")
    assert status == 200 and d["historian"]["state"] in ("starting", "connected")
    assert {"spool_rows", "spool_bytes", "oldest_age_s", "written"} <= set(d["historian"])
    names = {c["name"] for c in d["consumers"]}
    assert "api events" in names and len(names) >= 3  # the historian and the state store too
    status, s = live.request("GET", "summary", as_="viewer")
    assert s["meters"]["total"] == 7 and s["historian"]["state"] == d["historian"]["state"]


def test_a_valve_closed_through_the_api_is_closed_in_the_field(live):
    status, accepted = live.request("POST", "commands", {"kind": "valve", "meter": METER, "open": False,
                                                         "reason": "unpaid bill"}, as_="operator")
    assert status == 202 and accepted["state"] in ("pending", "sent")
    outcome = live.until(lambda: finished(live, accepted["id"]), 90, "the valve command's outcome")
    assert outcome["state"] == "succeeded" and outcome["who"] == "operator" and outcome["source"] == "api"
    assert live.true_meter(1, 1, 1)["valve"] == "closed"
    assert live.request("GET", f"meters/{METER}", as_="viewer")[1]["valve"] == "closed"
    status, audit = live.request("GET", "audit?kind=valve", as_="engineer")
    assert audit["items"][0]["id"] == accepted["id"] and audit["items"][0]["peer"] == "127.0.0.1"
    status, reopened = live.request("POST", "commands", {"kind": "valve", "meter": METER, "open": True},
                                    as_="operator")
    assert live.until(lambda: finished(live, reopened["id"]), 90, "reopening")["state"] == "succeeded"


def test_fuzzing_from_the_served_document_finds_no_5xx_and_no_response_off_the_document(live):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    token = live.token("admin")
    ci = os.environ.get("CI", "").lower() == "true"
    failures: list[str] = []
    statuses: dict[int, int] = {}
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ("/api/v1/events", "/api/v1/logout"):  # a stream; ends the token (both tested apart)
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=25, deadline=None, derandomize=ci, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                headers = {"Authorization": f"Bearer {token}"}
                response = case.call(base_url=live.url.removesuffix("/api/v1"), headers=headers, timeout=10)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                try:
                    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                except Exception as exc:  # noqa: BLE001 -- collected and reported below, with the request
                    failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}: "
                                    f"{response.status_code} {response.text[:300]}: {str(exc)[:300]}")

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make negative (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE and not operation.body and not list(operation.iter_parameters())
                continue
            ran += 1
    assert statuses.get(200, 0) > 100 and statuses.get(400, 0) > 100 and max(statuses) < 500, statuses
    assert ran >= 40
    assert failures == [], "\n".join(failures[:20])
    assert live.request("GET", "health")[0] == 200  # the supervisor is still up
