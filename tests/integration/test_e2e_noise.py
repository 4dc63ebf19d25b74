"""Line noise end to end: the supervisor reads a community-shaped link (8 CDTs x 32 modules)
over a REAL pty while the simulator flips bits at 1e-3 per byte plus bursts.  Every value
the point database ever publishes must be one that existed; after enough rounds all values
are correct; the master's statistics count the errors."""

from __future__ import annotations

from datetime import datetime

import pytest_twisted
from twisted.internet import reactor

from e2e_support import Events, GatedClock, community_text, for_supervisor, load_text, truth_readings, within
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.endpoints import PtyEndpoint
from st2000r.simulation.faults import parse_action
from st2000r.simulation.world import World
from st2000r.supervisor.events import LinkChanged, MeterChanged, Quality
from st2000r.supervisor.service import SupervisorService

LINK = "lakeside-bus"
BYTE_ERROR_RATE = 1e-3
BIT_RATE = BYTE_ERROR_RATE / 8  # the simulator flips each of a byte's 8 data bits independently
BURST_RATE = 0.02  # per bit: ~15 % of bytes hit while a burst lasts (requests too: the bus then idles)
NOISY_ROUNDS = 8


@pytest_twisted.ensureDeferred
async def test_noise_and_bursts_never_yield_a_wrong_value_and_all_end_correct(tmp_path):
    topology = load_text(community_text(cdts_per_repeater=2, modules=32, baud=115200, parity="N", turnaround_ms=1))
    gate = GatedClock()
    world = World(topology, gate, seed=7, start=datetime(2026, 5, 4, 6, 0))
    gate.advance(10 * 86400.0)
    sim_bus = SimulatedBus(world, LINK, reactor, physical_timing=True)
    endpoint = PtyEndpoint(LINK, sim_bus, reactor)
    endpoint.startService()
    service = SupervisorService(for_supervisor(topology, str(tmp_path), devices={LINK: endpoint.path}), reactor)
    events = Events(service.bus)
    lw = world.link(LINK)
    wrong: list[tuple] = []
    last_good: dict = {}
    published = [0]

    def check(event) -> None:  # every published value existed: the truth now, or the last good one
        if not isinstance(event, MeterChanged) or event.value is None:
            return
        published[0] += 1
        mid = event.meter
        if event.quality is Quality.GOOD:
            truth = lw.cdt(mid.cdt).channels[mid.channel_no].reading(world.seconds())
            if event.value != truth:
                wrong.append((str(mid), event.value, truth))
            last_good[mid] = event.value
        elif event.value != last_good.get(mid):
            wrong.append((str(mid), event.value, last_good.get(mid), event.quality))

    service.bus.subscribe(check)
    poller, master = service.pollers[LINK], service.masters[LINK]

    def noise(rate: float) -> None:
        world.apply(parse_action({"action": "bit_errors", "link": LINK, "rate": rate}))

    service.startService()
    calls = []
    try:
        await events.next(lambda e: isinstance(e, LinkChanged) and e.connected, past=True)
        noise(BIT_RATE)
        for k in range(NOISY_ROUNDS):
            if k % 3 == 1:  # a 0.3 s burst early in this round
                calls.append(reactor.callLater(0.1, noise, BURST_RATE))
                calls.append(reactor.callLater(0.4, noise, BIT_RATE))
            await within(poller.run_plan_now("full"), 60)
            gate.advance(3600.0)  # an hour of consumption between rounds: new values each round
        settle = 0
        while True:  # the truth holds still now; noise stays on
            settle += 1
            await within(poller.run_plan_now("full"), 60)
            truth = truth_readings(world)
            points = {str(p.id): p for p in service.points.meters()}
            if all(points[k].value == v and points[k].quality is Quality.GOOD for k, v in truth.items()):
                break
            assert settle < 6, "values still not all correct after 5 more noisy rounds"
    finally:
        for call in calls:
            if call.active():
                call.cancel()
        await within(service.stopService())
        endpoint.stopService()
    s = master.stats
    print(f"\nnoise: {NOISY_ROUNDS}+{settle} rounds, {published[0]} values published, {sim_bus.stats.flipped_bits} bits "
          f"flipped in {sim_bus.stats.corrupted_bytes} bytes; master: {s.requests} requests, "
          f"{s.checksum_errors} checksum errors, {s.crc_errors} CRC errors, {s.retries} retries, "
          f"{s.timeouts} timeouts, {s.failures} failures; poller splits {poller.splits}")
    assert wrong == []
    assert published[0] >= NOISY_ROUNDS * 768 * 0.9  # new values in every round
    assert sim_bus.stats.flipped_bits > 0
    assert s.checksum_errors + s.crc_errors > 0 and s.retries > 0
