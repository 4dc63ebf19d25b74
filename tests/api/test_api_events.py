"""The event stream over real HTTP: live events with their seq as SSE id, Last-Event-ID
resume, the gap notice when events fell out of the buffer or the run restarted, the type
filter, heartbeats on the clock, the bound on streams, a client too slow to keep up."""

from __future__ import annotations

import pytest
import pytest_twisted

from support.apirig import ApiRig, SseReader, eventually
from support.builders import Recorder, status
from st2000r.supervisor.api.stream import STREAMED
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve


@pytest.fixture
def rig():
    rig = ApiRig(buffer_size=16, max_sse=2)
    rig.start()
    yield rig
    pytest_twisted.blockon(rig.stop())


async def open_stream(rig, role="viewer", **kw):
    token = await rig.token(role) if role else None
    reader = await SseReader(rig.api.port, token, **kw).connect()
    await reader.until(lambda r: r.named("hello") or r.status not in (None, 200))
    return reader


def seqs(reader, event=None):
    return [int(i) for i, e, _ in reader.events if i is not None and (event is None or e == event)]


@pytest_twisted.ensureDeferred
async def test_live_events_carry_their_seq_as_id_and_their_public_json(rig):
    reader = await open_stream(rig)
    try:
        hello = reader.named("hello")[0][2]
        assert hello == {"run": rig.bus.run_id, "seq": rig.bus.seq, "oldest_seq": hello["oldest_seq"]}
        rig.read(1, [5, 6, 7, 8, 9, 10], statuses=[status(Valve.OPEN, AlarmFlag.TAMPER)] + [0] * 5)
        await reader.until(lambda r: r.named("AlarmChanged"))
        changed = reader.named("MeterChanged")
        assert len(changed) == 6 and changed[0][2]["meter"] == "bus/1/1/1" and changed[0][2]["value"] == 1050
        assert all(int(i) == data["seq"] and data["run"] == rig.bus.run_id for i, _, data in reader.events if i)
        assert seqs(reader) == sorted(seqs(reader)) and not reader.named("ReadingBatch")
        alarm = reader.named("AlarmChanged")[0][2]
        assert alarm["type"] == "AlarmChanged" and alarm["alarm"]["id"] == "meter:bus/1/1/1:tamper"
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_a_command_outcome_reaches_the_stream(rig):
    reader = await open_stream(rig, query="?types=CommandChanged")
    try:
        a = await rig.call("POST", "commands", {"kind": "valve", "meter": "bus/1/1/1", "open": False}, as_="operator")
        rig.drain()
        rig.reply_valve()
        rig.clock.advance(3)
        rig.reply_read(Valve.CLOSED)
        await reader.until(lambda r: any(e[2]["command"]["state"] == "succeeded" for e in r.named("CommandChanged")))
        states = [e[2]["command"]["state"] for e in reader.named("CommandChanged")]
        assert states[0] in ("pending", "sent") and states[-1] == "succeeded"
        assert {e[2]["command"]["id"] for e in reader.named("CommandChanged")} == {a.json["id"]}
        assert {e for _, e, _ in reader.events} == {"hello", "CommandChanged"}
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_resume_with_last_event_id_replays_what_was_missed(rig):
    rec = Recorder(rig.bus)
    first = await open_stream(rig)
    rig.read(1, [1] * 6)
    await first.until(lambda r: len(r.named("MeterChanged")) == 6)
    last = seqs(first)[2]  # the client saw three events, then dropped
    first.close()
    rig.read(2, [2] * 6)  # while it was away
    again = await open_stream(rig, last_id=str(last))
    try:
        expected = [e.seq for e in rec.events if e.seq > last and isinstance(e, STREAMED)]
        await again.until(lambda r: len(seqs(r)) >= len(expected))
        assert not again.named("gap") and len(expected) >= 9
        assert seqs(again) == expected  # what the first stream saw after ``last``, then what it missed, once each
        assert seqs(again)[:len([s for s in seqs(first) if s > last])] == [s for s in seqs(first) if s > last]
    finally:
        again.close()


@pytest_twisted.ensureDeferred
async def test_events_that_fell_out_of_the_buffer_are_announced_as_a_gap(rig):
    rig.read(1, [1] * 6)
    last = rig.bus.seq
    for n in range(2, 6):  # 24 more changes: more than the buffer of 16 holds
        rig.read(1, [n] * 6)
    reader = await open_stream(rig, last_id=str(last))
    try:
        gap = reader.named("gap")
        assert len(gap) == 1 and gap[0][2]["reason"] == "evicted" and gap[0][2]["last_event_id"] == last
        assert gap[0][2]["oldest_seq"] > last + 1 and gap[0][2]["run"] == rig.bus.run_id
        assert [e for _, e, _ in reader.events] == ["hello", "gap"]
        rig.read(1, [9] * 6)  # live events follow the notice
        await reader.until(lambda r: len(r.named("MeterChanged")) == 6)
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_an_id_from_an_earlier_run_is_announced_as_a_restart(rig):
    reader = await open_stream(rig, last_id=str(rig.bus.seq + 1000))
    try:
        assert reader.named("gap")[0][2]["reason"] == "restart"
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_heartbeats_on_the_clock(rig):
    reader = await open_stream(rig)
    try:
        rig.clock.advance(15)
        await reader.until(lambda r: r.comments >= 1)
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_the_number_of_streams_is_bounded_and_a_closed_one_frees_its_place(rig):
    a = await open_stream(rig)
    b = await open_stream(rig)
    c = await open_stream(rig)
    try:
        assert c.status == 503
        a.close()
        await a.until(lambda r: r.closed)
        await eventually(lambda: rig.api.stream.clients == 1, what="the closed stream is let go")
        d = await open_stream(rig)
        assert d.status == 200
        d.close()
    finally:
        b.close()


@pytest.mark.parametrize("query, code, field", [("?types=Nope", 400, "types"), ("?types=ReadingBatch", 400, "types"),
                                                ("?last_event_id=x", 400, "last_event_id")])
@pytest_twisted.ensureDeferred
async def test_bad_stream_parameters(rig, query, code, field):
    a = await rig.call("GET", f"events{query}", as_="viewer")
    assert a.status == code and a.json["error"]["field"] == field


@pytest_twisted.ensureDeferred
async def test_the_stream_wants_a_token_in_the_header_or_the_query(rig):
    assert (await rig.call("GET", "events")).status == 401
    token = await rig.token("viewer")
    reader = await open_stream(rig, role=None, query=f"?token={token}")
    try:
        assert reader.status == 200 and reader.named("hello")
    finally:
        reader.close()
    bad = await rig.call("GET", "events", headers={"Last-Event-ID": "abc"}, as_="viewer")
    assert bad.status == 400 and bad.json["error"]["field"] == "Last-Event-ID"


def test_a_client_that_cannot_keep_up_is_dropped_and_others_are_not_delayed():
    from st2000r.supervisor.api.stream import EventStream

    class Req:
        def __init__(self):
            self.written, self.channel, self.lost = [], self, False
            self.transport = self

        def registerProducer(self, producer, streaming):
            self.producer = producer

        def write(self, data):
            self.written.append(data)

        def notifyFinish(self):
            from twisted.internet import defer
            return defer.Deferred()

        def loseConnection(self):
            self.lost = True

    rig = ApiRig()
    stream = EventStream(rig.bus, rig.clock, client_limit=5)
    stream.start()
    slow, fast = Req(), Req()
    stream.open(slow, ["MeterChanged"], None, "slow")
    stream.open(fast, ["MeterChanged"], None, "fast")
    slow.producer.pauseProducing()  # its connection's buffer is full
    rig.points.startService()
    rig.read(1, [1] * 6)
    assert slow.lost and stream.clients == 1 and stream.dropped == 1
    assert b"".join(fast.written).count(b"event: MeterChanged\n") == 6
    assert len(fast.written) == 2  # the hello, then the events of one turn in one write
    stream.stop()
