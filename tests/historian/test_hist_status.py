"""``HistorianChanged`` on the bus: at once on a change of state, at most every
``status_every_s`` while only the figures move, nothing while nothing moves (Clock-driven;
the database goes away and comes back through the engine factory)."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from twisted.internet.task import Clock

from hist_rig import batches, topology
from st2000r.historian import db
from st2000r.historian.writer import Historian
from st2000r.supervisor.events import EventBus, HistorianChanged

T0 = 1_780_000_000.0


def _start(tmp_path, every):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    down = {"now": True}

    def factory(u):
        if down["now"]:
            raise sa_exc.OperationalError("connect", {}, ConnectionRefusedError("connection refused"))
        return db.make_engine(u)

    clock = Clock()
    clock.advance(T0)
    bus = EventBus(clock)
    seen: list[HistorianChanged] = []
    bus.subscribe(seen.append, (HistorianChanged,))
    topo = topology(str(tmp_path))
    h = Historian(topo, url, clock, bus, str(tmp_path / "spool"), engine_factory=factory, retry_max_s=2.0,
                  status_every_s=every)
    h.startService()
    return h, bus, clock, topo, down, seen


def test_state_changes_at_once_figures_at_most_every_n_seconds(tmp_path):
    h, bus, clock, topo, down, seen = _start(tmp_path, every=5.0)
    assert [(e.state, e.spool_rows) for e in seen] == [("starting", 0)]  # nothing to write: no contact yet
    assert seen[0].at.timestamp() == T0
    del seen[:]
    for r in range(1, 41):  # 20 s of rounds, one every 0.5 s: the spool grows
        for event in batches(topo, r):
            bus.publish(event)
        clock.advance(0.5)
    # "unreachable" at once (the first write found no database), then the figures no more
    # often than every 5 s: published by the flush before it spools the next round
    assert [e.state for e in seen] == ["unreachable"] * 4
    assert seen[0].problem == "(builtins.ConnectionRefusedError) connection refused"
    assert [e.at.timestamp() - T0 for e in seen] == [0.5, 5.5, 10.5, 15.5]
    assert [e.spool_rows for e in seen] == [12, 12 * 10, 12 * 20, 12 * 30]
    assert [e.oldest_age_s for e in seen] == [0, 5, 10, 15]  # the first round was spooled at T0 + 0.5
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    clock.advance(0.5)  # nothing new: the age alone moves, published once 5 s passed
    last = seen[-1]
    status = h.status()
    assert last.at.timestamp() - T0 == 20.5 and last.oldest_age_s == 20
    assert (last.spool_rows, last.spool_bytes, last.spool_max_bytes, last.written, last.quarantined) == (
        status.spool_rows, status.spool_bytes, status.spool_max_bytes, 0, 0)
    assert last.spool_rows == 480 and last.spool_bytes > 0 and last.write_rate == 0

    del seen[:]
    down["now"] = False  # the database answers at the next retry (back-off at most 2 s)
    clock.advance(0.5)
    clock.advance(2.0)
    assert [e.state for e in seen] == ["connected"]  # at once, not 5 s after the last one
    connected = seen[0]
    assert (connected.spool_rows, connected.spool_bytes, connected.oldest_age_s, connected.written) == (0, 0, 0, 480)
    assert connected.problem is None and connected.write_rate > 0

    del seen[:]
    for _ in range(60):  # 30 s idle: nothing moves, nothing is published
        clock.advance(0.5)
    assert seen == []
    h.stopService()



def test_the_database_is_tried_again_while_readings_keep_coming(tmp_path):
    """A flush that only spools (no retry due) does not push the retry back: with a round
    every flush, the database that came back is written within the longest back-off."""
    h, bus, clock, topo, down, seen = _start(tmp_path, every=5.0)
    r = 0
    for _ in range(40):  # 20 s away, readings every 0.5 s: the back-off grows to its bound (2 s)
        r += 1
        for event in batches(topo, r):
            bus.publish(event)
        clock.advance(0.5)
    assert h.status().state == "unreachable"
    down["now"] = False
    for _ in range(5):  # 2.5 s: past the 2 s bound even though every flush had rows to spool
        r += 1
        for event in batches(topo, r):
            bus.publish(event)
        clock.advance(0.5)
    status = h.status()
    assert status.state == "connected" and status.written >= 12 * (r - 1)
    h.stopService()


def test_readings_reach_the_spool_within_spool_delay_and_the_database_in_batches(tmp_path):
    """Rows are durable (in the spool) 0.1 s after they arrive; the database is written every
    0.5 s, so one transaction takes the rows of several spool appends."""
    h, bus, clock, topo, down, seen = _start(tmp_path, every=5.0)
    down["now"] = False
    for r in range(1, 5):
        for event in batches(topo, r):
            bus.publish(event)
        clock.advance(0)  # the queued consumer takes them
        assert h.status().memory_rows == 12
        clock.advance(0.1)
        status = h.status()
        assert status.memory_rows == 0 and status.spool_rows + status.written == 12 * r  # durable
        # the first round went to the database at once (its first try); the next ones wait
        assert status.written == 12
    clock.advance(0.1)  # 0.4 s since that try
    assert (h.status().spool_rows, h.status().written) == (36, 12)
    clock.advance(0.1)
    assert (h.status().spool_rows, h.status().written) == (0, 48)  # one transaction for three appends
    h.stopService()
