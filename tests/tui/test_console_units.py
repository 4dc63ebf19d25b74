"""The console's pieces that need no server: the catalogue, SSE parsing, the reconnecting
follower, the paged row store, formatting and the client's error mapping."""

from __future__ import annotations

import asyncio
import re
import string

import httpx
import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from st2000r.tui import format as fmt
from st2000r.tui.client import ApiClient, ApiError, Forbidden, Unauthorized, Unreachable, history_points, meter_path
from st2000r.tui.dialog_shelve import parse_minutes
from st2000r.tui.i18n import CATALOGUES, EN, ZH, Catalogue, language_from_env
from st2000r.tui.meter_rows import MeterRows
from st2000r.tui.model import BadAnswer, Command, Meter, MeterFilter, MeterPage
from st2000r.tui.sse import SseEvent, SseParser
from st2000r.tui.stream import EventFollower, StreamHandlers, backoff


def run(coro):
    return Deferred.fromFuture(asyncio.ensure_future(coro))


# -- catalogue ------------------------------------------------------------------------------
def fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_both_languages_have_the_same_keys_and_placeholders():
    assert EN.keys() == ZH.keys()
    assert [k for k in EN if fields(EN[k]) != fields(ZH[k])] == []


def test_chinese_strings_are_translated_not_copied():
    same = [k for k in EN if EN[k] == ZH[k] and re.search("[A-Za-z]{3}", re.sub(r"\{[^}]*\}", "", EN[k]))]
    assert same == []


def test_every_key_the_code_uses_is_in_the_catalogue():
    from pathlib import Path

    root = Path(__file__).parents[2] / "tui"
    used = set()
    for path in root.glob("*.py"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z_]+\.[a-z_.\-]+)["']""", path.read_text(encoding="utf-8")))
        used |= set(re.findall(r"""Binding\([^)]*?["']((?:key|filter|valve|shelve)\.[a-z_]+)["']""",
                               path.read_text(encoding="utf-8")))
    assert used, "the scan found no keys"
    assert sorted(used - EN.keys()) == []


@pytest.mark.parametrize(("env", "lang"), [
    ({"LANG": "zh_CN.UTF-8"}, "zh"), ({"LANG": "en_US.UTF-8"}, "en"), ({}, "en"),
    ({"LC_ALL": "zh_TW.UTF-8", "LANG": "en_US.UTF-8"}, "zh"), ({"LC_ALL": "C", "LANG": "zh_CN.UTF-8"}, "en"),
    ({"LC_ALL": "", "LC_MESSAGES": "zh_CN", "LANG": "en_US"}, "zh"),
])
def test_language_from_the_locale(env, lang):
    assert language_from_env(env) == lang


def test_unknown_language_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        Catalogue("fr")


# -- SSE ------------------------------------------------------------------------------------
STREAM = ("event: hello\ndata: {\"run\": \"r\"}\n\n: keepalive\n\nid: 7\nevent: MeterChanged\ndata: {\"a\":\n"
          "data: 1}\n\nretry: 1500\nid: 8\ndata: x\r\n\r\n")
EXPECTED = [SseEvent("hello", '{"run": "r"}', None), SseEvent("MeterChanged", '{"a":\n1}', "7"),
            SseEvent("message", "x", "8")]


def test_sse_parser_whole_stream():
    p = SseParser()
    assert p.feed(STREAM) == EXPECTED
    assert p.last_id == "8" and p.retry_ms == 1500


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_sse_parser_same_events_whatever_the_chunking(cuts):
    p = SseParser()
    out = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for a, b in zip(bounds, bounds[1:]):
        out += p.feed(STREAM[a:b])
    assert out == EXPECTED


def test_sse_parser_ignores_an_id_with_nul_and_events_without_data():
    p = SseParser()
    assert p.feed("id: 3\nevent: x\n\nid: 4\0\ndata: d\n\n") == [SseEvent("message", "d", "3")]


# -- follower -------------------------------------------------------------------------------
def test_backoff_grows_and_is_capped_even_after_days():
    assert [backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert backoff(100_000) == 5.0


class ScriptedClient:
    """``events()`` plays one script entry per connection: a list of batches or an exception."""

    def __init__(self, script):
        self.script = list(script)
        self.asked: list[str | None] = []

    async def events(self, last_id=None):
        self.asked.append(last_id)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        yield []
        for batch in item:
            yield batch


def sse(seq, kind="MeterChanged", run="r1"):
    return SseEvent(kind, f'{{"type": "{kind}", "seq": {seq}, "run": "{run}"}}', str(seq))


@pytest_twisted.ensureDeferred
async def test_follower_resumes_with_the_last_id_reports_state_and_resyncs_on_gap_and_restart():
    client = ScriptedClient([
        [[sse(1), sse(2)]],
        Unreachable("refused"),
        Unreachable("refused"),
        [[SseEvent("gap", '{"reason": "evicted"}', None), sse(5)]],
        [[sse(1, run="r2")]],
        Unauthorized(401, "token expired"),
    ])
    seen, states, resyncs, expired, waits = [], [], [], [], []

    async def sleep(s):
        waits.append(s)

    f = EventFollower(client, StreamHandlers(lambda e: seen.extend(x["seq"] for x in e),
                                             lambda c, r: states.append((c, r)), lambda: resyncs.append(1),
                                             lambda: expired.append(1)), sleep=sleep)
    await run(f.run_forever())
    assert seen == [1, 2, 5, 1]
    assert client.asked == [None, "2", "2", "2", "5", "1"]
    assert states[0] == (True, None) and states[1] == (False, "the supervisor closed the event stream")
    assert (True, None) in states[2:]
    assert len(resyncs) == 2 and expired == [1]
    assert waits[:3] == [0.5, 1.0, 2.0]  # back-off grows while down, starts again after a success


# -- rows -----------------------------------------------------------------------------------
def meter(i: int, **kw) -> Meter:
    base = {"id": f"bus/1/1/{i}", "household": "H", "kind": "water", "value": i, "base_unit": "L",
            "quality": "good", "read_at": None, "alarms": (), "valve": "open"}
    return Meter(**(base | kw))


def test_rows_ask_for_more_only_near_the_end_and_drop_pages_of_an_old_filter():
    rows = MeterRows(page_size=10)
    assert rows.needs_more(0)
    rows.loading = True
    assert not rows.needs_more(0)
    added = rows.add_page(MeterPage(tuple(meter(i) for i in range(10)), "c1"), rows.generation)
    assert added == range(0, 10) and rows.cursor == "c1" and not rows.complete
    assert not rows.needs_more(4) and rows.needs_more(5)
    old = rows.generation
    rows.reset(MeterFilter(cdt=2))
    assert rows.add_page(MeterPage((meter(99),), None), old) == range(0) and len(rows) == 0
    rows.add_page(MeterPage((meter(1),), None), rows.generation)
    assert rows.complete and not rows.needs_more(10_000)


def test_rows_apply_a_change_in_place_and_ignore_meters_not_loaded():
    rows = MeterRows()
    rows.add_page(MeterPage((meter(1), meter(2)), None), rows.generation)
    row = rows.apply({"type": "MeterChanged", "meter": "bus/1/1/2", "value": 77, "quality": "stale",
                      "timestamp": "2026-01-01T00:00:00+00:00", "valve": "closed", "alarms": ["tamper"]})
    assert row == 1
    assert rows.rows[1] == meter(2, value=77, quality="stale", read_at="2026-01-01T00:00:00+00:00", valve="closed",
                                 alarms=("tamper",))
    assert rows.apply({"meter": "bus/9/9/9", "value": 1}) is None


# -- formatting -----------------------------------------------------------------------------
@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_meter_line_is_exactly_as_wide_as_asked_in_both_languages(language):
    from rich.cells import cell_len

    cat = Catalogue(language)
    m = meter(1, alarms=("tamper", "short", "open"), household="某小区3号楼-02", value=123456789012)
    for width in (40, 80, 100, 200):
        assert cell_len(fmt.meter_line(cat, m, width)) == width
        assert cell_len(fmt.meter_header(cat, width)) == width


def test_readings_are_exact_integers_with_their_unit():
    assert fmt.reading(123450, "L") == "123450 L" and fmt.reading(None, "L") == "—"
    assert fmt.when("2026-11-30T02:00:04.512000+00:00") == "11-30 02:00:04" and fmt.when(None) == "—"


def test_unknown_values_from_a_newer_supervisor_show_as_sent():
    cat = Catalogue("zh")
    assert fmt.quality(cat, "good") == "正常" and fmt.quality(cat, "weird") == "weird"
    assert fmt.quality(cat, None) == "未抄读"


def test_shelve_minutes_are_whole_and_bounded():
    assert [parse_minutes(t) for t in ("1", " 60 ", "10080", "0", "10081", "1.5", "-3", "x", "")] == [
        1, 60, 10080, None, None, None, None, None, None]


# -- client ---------------------------------------------------------------------------------
def test_meter_ids_go_in_the_path_as_escaped_segments():
    assert meter_path("bus1/3/2/1") == "/api/v1/meters/bus1/3/2/1"
    assert meter_path("a b/1/1/1") == "/api/v1/meters/a%20b/1/1/1"


def test_history_readings_become_daily_usage():
    items = [{"read_at": "2026-11-01T02:00:00+00:00", "value": 100}, {"read_at": "2026-11-01T20:00:00+00:00",
                                                                         "value": 130},
             {"read_at": "2026-11-02T02:00:00+00:00", "value": 160}, {"read_at": "2026-11-03T02:00:00+00:00",
                                                                         "value": 200}]
    assert [(p.day, p.usage) for p in history_points(items)] == [("2026-11-02", 30), ("2026-11-03", 40)]
    with pytest.raises(BadAnswer, match="history item 0"):
        history_points(["x"])


def answering(status: int, body) -> ApiClient:
    return ApiClient("http://x", transport=httpx.MockTransport(lambda r: httpx.Response(status, json=body)))


@pytest_twisted.ensureDeferred
async def test_errors_are_mapped_with_the_field_the_supervisor_names():
    body = {"error": {"code": "invalid", "message": "limit: must be an integer", "field": "limit"}}
    with pytest.raises(ApiError) as err:
        await run(answering(400, body).meters())
    assert (err.value.status, err.value.field, err.value.reason) == (400, "limit", "limit: must be an integer (limit)")
    with pytest.raises(Unauthorized):
        await run(answering(401, {"error": {"code": "unauthorized", "message": "expired", "field": None}}).alarms())
    with pytest.raises(Forbidden):
        await run(answering(403, {"error": {"message": "needs admin"}}).operators())
    with pytest.raises(BadAnswer, match="meters page item 0: field 'id' is missing"):
        await run(answering(200, {"items": [{}], "next": None}).meters())
    with pytest.raises(BadAnswer, match="field 'value' should be int"):
        await run(answering(200, {"items": [{"id": "a/1/1/1", "value": 1.5}], "next": None}).meters())


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_unreachable_with_a_reason():
    client = ApiClient("http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(Unreachable, match="connection refused"):
        await run(client.login("a", "b"))


def test_command_final_states():
    assert [Command("1", "valve", s).final for s in ("pending", "sent", "succeeded", "timed_out", "refused")] == [
        False, False, True, True, True]


# -- command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["ftp://host:1", "127.0.0.1:8080", "http://:80", "http://host:99999"])
def test_console_refuses_a_bad_url_with_status_2_and_the_reason(url):
    import subprocess

    from support.process import ST2000R

    out = subprocess.run([ST2000R, "console", "--url", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"st2000r console: --url {url!r}:") and "Traceback" not in out.stderr


def test_console_refuses_a_missing_or_bad_ca_file(tmp_path):
    import subprocess

    from support.process import ST2000R

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    for path, reason in ((tmp_path / "none.pem", "no such file"), (bad, "not a PEM certificate file")):
        out = subprocess.run([ST2000R, "console", "--url", "https://127.0.0.1:8443", "--ca", str(path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and reason in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_console_is_listed_by_the_dispatcher():
    from st2000r.supervisor.cli import usage

    assert "console" in usage()


def test_a_short_or_empty_filtered_page_with_a_cursor_keeps_asking():
    """docs/api.md: a filtered page may be short (even empty) and still carry ``next``."""
    rows = MeterRows(page_size=100)
    rows.loading = True
    assert rows.add_page(MeterPage((), "c1"), rows.generation) == range(0)
    assert not rows.complete and rows.needs_more(0)
    rows.loading = True
    rows.add_page(MeterPage((meter(1),), None), rows.generation)
    assert rows.complete and len(rows) == 1
