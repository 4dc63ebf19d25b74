"""Commissioning scan core: the real BusMaster back to back with the simulator core on a Clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from twisted.internet.task import Clock

from support.builders import build_cdt, build_link, build_topology
from support.clock import fired
from st2000r.config.loader import loads
from st2000r.config.model import Cdt, Channel, Link, Meter, MeterKind, Module, Repeater, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import BusMaster
from st2000r.simulation import faults
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.world import World
from st2000r.supervisor.scan import (
    Difference,
    Progress,
    ProgressBar,
    Scanner,
    draft_config,
    kind_of_meter_type,
    parse_addresses,
    render_text,
)

def make_cdt(address: int, modules=(1, 2, 3), repeater: str | None = None) -> Cdt:
    return build_cdt(address, modules, repeater=repeater, name=f"Building {address}", household="B{cdt}-{module}",
                     serial=lambda a, mod, ch: f"{a:05d}{mod:02d}{ch}".zfill(14), initial=lambda ch: 100 * ch)


def make_link(cdts, *, baud: int = 9600, name: str = "bus", repeaters=(Repeater("R1", None, 5),)) -> Link:
    return build_link(name, sorted(cdts, key=lambda c: c.address), device="/dev/ttyUSB0", baud=baud,
                      repeaters=repeaters)


def make_topology(link: Link) -> Topology:
    return build_topology((link,), site="Test Gardens", address="1 Test Road")


def configured_link(**kw) -> Link:
    """CDTs 1..8: 1-4 on the bus, 5-8 behind repeater R1."""
    return make_link([make_cdt(a, repeater="R1" if a > 4 else None) for a in range(1, 9)], **kw)


class Rig:
    """World + SimulatedBus (the field as it really is) and the real BusMaster, one Clock."""

    def __init__(self, field_link: Link, *, physical_timing: bool = True, retries: int = 2) -> None:
        self.clock = Clock()
        self.clock.advance(1_780_000_000)
        self.world = World(make_topology(field_link), self.clock, seed=3, start=datetime(2026, 5, 1, 9, 0))
        self.bus = SimulatedBus(self.world, field_link.name, self.clock, physical_timing=physical_timing)
        self.written = 0

    def master_for(self, link: Link, **kw) -> BusMaster:
        master = BusMaster(link, self.clock, **kw)

        def write(data: bytes) -> None:
            self.written += len(data)
            self.bus.data_received(data)

        self.bus.connect(master.data_received)
        master.connection_made(write)
        return master

    def run(self, d, limit: float = 3600.0):
        return fired(self.clock, d, limit, "the scan")


def scan(config_link: Link, field_link: Link, *, actions=(), addresses=range(1, 33), **kw):
    rig = Rig(field_link)
    for action in actions:
        rig.world.apply(action)
    master = rig.master_for(config_link)
    progress: list[Progress] = []
    scanner = Scanner(config_link, master, rig.clock, addresses=addresses, on_progress=progress.append, **kw)
    report = rig.run(scanner.run())
    assert not isinstance(report, Exception), report
    return report, progress, rig


def kinds(report) -> list[tuple[str, int | None, int | None, int | None]]:
    return sorted((d.kind, d.cdt, d.module, d.channel) for d in report.differences)


# --------------------------------------------------------------------------- the acceptance case


def test_two_removed_one_extra_one_alarm_are_exactly_the_differences():
    config = configured_link()
    field = make_link([c for c in config.cdts if c.address not in (3, 6)] + [make_cdt(20, modules=(1, 2))],
                      repeaters=config.repeaters)  # fmt: skip
    alarm = faults.Alarm(link="bus", cdt=5, channel=4, flags=("tamper",))  # module 2, input 1
    report, progress, _ = scan(config, field, actions=(alarm,))
    assert kinds(report) == [
        ("alarm", 5, 2, 1),
        ("missing_cdt", 3, None, None),
        ("missing_cdt", 6, None, None),
        ("unexpected_cdt", 20, None, None),
    ]
    assert not report.matches
    assert {c.address for c in report.cdts} == {1, 2, 4, 5, 7, 8, 20}
    extra = report.found(20)
    assert not extra.configured and extra.modules == (1, 2) and len(extra.channels) == 6
    assert dict(report.found(5).alarms) == {4: ("tamper",)}
    # every CDT answers for its meters: the broadcasts collide, which is only a note
    assert [(b.meter_type, b.outcome) for b in report.broadcasts] == [(0x10, "several"), (0x30, "several"), (0x40, "several")]
    assert any("several meters answer (garbled reply" in n for n in report.notes)
    assert len(report.meter_checks) == 8 and all(c.outcome == "ok" for c in report.meter_checks)
    # reply quality per device, from the master's device statistics
    q = {row.address: row for row in report.quality}
    assert q["00000000000003"].replies == 0 and q["00000000000003"].timeouts == 2  # one try plus one retry
    assert q["00000000000001"].replies >= 3 and q["00000000000001"].rtt_p50_s > 0
    assert q["00000000000020"].role == "cdt" and q["00000000000020"].replies >= 3
    assert all(q[f"{a:014d}"].timeouts == 0 for a in (1, 2, 4, 5, 7, 8, 20))  # a healthy bus
    text = render_text(report)
    assert "4 differences" in text and "missing_cdt" in text and "alarm tamper" in text
    # progress: monotonic, ends at 100 %, with an estimate of time left
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(p.eta_s is not None and p.eta_s > 0 for p in progress)


def test_a_clean_bus_matches_with_no_differences():
    config = configured_link()
    report, _, rig = scan(config, config)
    assert report.matches and report.differences == ()
    assert len(report.cdts) == 8 and all(c.configured for c in report.cdts)
    # statuses, channel info + alarms, meters, broadcasts (+ a direct 810A to check a single
    # answer: colliding replies AND-ed on the line can pass the additive checksum)
    assert 32 + 8 * 2 + 8 + 3 <= report.transactions <= 32 + 8 * 2 + 8 + 6
    assert "RESULT: the bus matches the configuration" in render_text(report)
    js = report.to_dict()
    assert js["matches"] is True and js["differences"] == [] and len(js["cdts"]) == 8


def test_module_and_channel_differences_are_located():
    config = configured_link(repeaters=())
    config = replace(config, repeaters=(), cdts=tuple(replace(c, repeater=None) for c in config.cdts))
    c1, c2 = config.cdts[0], config.cdts[1]
    # field: CDT 1 lacks module 3 and has module 9; CDT 2 module 1 has gas on input 1,
    # another serial on input 2, another pulse constant on input 3... and module 2 input 3 unfitted
    f1 = replace(c1, modules=(c1.modules[0], c1.modules[1], make_cdt(1, modules=(9,)).modules[0]))
    m21, m22, m23 = c2.modules
    w, e, g = (ch.meter for ch in m21.channels)
    m21x = Module(1, (Channel(1, replace(w, kind=MeterKind.GAS)), Channel(2, replace(e, serial="00000000099999")),
                      Channel(3, replace(g, pulse_constant=100))))  # fmt: skip
    m22x = Module(2, m22.channels[:2])
    f2 = replace(c2, modules=(m21x, m22x, m23))
    field = replace(config, cdts=(f1, f2) + config.cdts[2:])
    report, _, _ = scan(config, field, addresses=range(1, 9), meters="all")
    assert kinds(report) == [
        ("missing_meter", 2, 2, 3),
        ("missing_module", 1, 3, None),
        ("pulse_constant_mismatch", 2, 1, 3),
        ("serial_mismatch", 2, 1, 2),
        ("unexpected_module", 1, 9, None),
        ("wrong_kind", 2, 1, 1),
    ]


def test_power_and_battery_of_a_cdt_are_reported():
    config = configured_link()
    report, _, _ = scan(config, config, actions=(faults.CdtPower(link="bus", cdt=2, mains=False),),
                        addresses=range(1, 9))  # fmt: skip
    assert ("mains_lost", 2, None, None) in kinds(report)
    assert {k for k, *_ in kinds(report)} <= {"mains_lost", "battery_low"}


def test_a_lone_standard_meter_answering_the_broadcast_is_found():
    # the field: a single CDT with a single unconfigured meter -> exactly one answer to 810A
    config = make_link([], repeaters=())
    lone = Cdt(9, None, None, (Module(1, (Channel(1, Meter(MeterKind.WATER, 10, "00000012345678", 0, None)),)),))
    field = make_link([lone], repeaters=())
    report, _, _ = scan(config, field, addresses=range(1, 4))
    assert [(b.meter_type, b.outcome, b.address) for b in report.broadcasts] == [
        (0x10, "one", "00000012345678"), (0x30, "none", None), (0x40, "none", None)]
    assert report.cdts == ()
    assert kinds(report) == [("unexpected_standard_meter", None, None, None)]


def test_silent_bus_reports_every_cdt_missing_and_estimates_time():
    config = configured_link(baud=2400)
    field = make_link([], baud=2400)
    report, progress, rig = scan(config, field, addresses=range(1, 17))
    assert [k for k, *_ in kinds(report)] == ["missing_cdt"] * 8
    assert {b.outcome for b in report.broadcasts} == {"none"}
    # the estimate made after a quarter of the work is close to the real remaining time
    total = report.ended - report.started
    quarter = next(p for p in progress if p.fraction >= 0.25 and p.eta_s is not None)
    assert abs((quarter.elapsed_s + quarter.eta_s) - total) < 0.25 * total


# --------------------------------------------------------------------------- draft config


def test_draft_config_loads_and_matches_what_was_found():
    config = configured_link()
    field = make_link([c for c in config.cdts if c.address != 3] + [make_cdt(20, modules=(1, 4))],
                      repeaters=config.repeaters)  # fmt: skip
    report, _, _ = scan(config, field)
    text = draft_config(report, make_topology(config), config, when="now")
    topo = loads(text, "<draft>")
    (link,) = list(topo.links())
    assert link.name == "bus" and link.line == config.line and link.repeaters == config.repeaters
    assert [c.address for c in link.cdts] == [c.address for c in report.cdts]
    for fc in report.cdts:
        cdt = link.cdt(fc.address)
        assert tuple(mod.number for mod in cdt.modules) == fc.modules
        assert sorted((mod, inp, meter.kind, meter.serial, meter.pulse_constant) for mod, inp, meter in cdt.meters()) \
            == sorted((ch.module, ch.input, ch.kind, ch.serial, ch.pulse_constant) for ch in fc.channels)
    # what the configuration knew of the same devices is kept
    assert link.cdt(5) == config.cdt(5)
    assert link.cdt(20).repeater is None and link.cdt(20).name is None
    # the draft describes the field: scanning the field against it finds no difference
    report2, _, _ = scan(link, field)
    assert report2.matches, report2.differences


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1-4", (1, 2, 3, 4)), ("7", (7,)), ("3,1-2,3", (1, 2, 3)), (" 10 - 11 ", (10, 11)), ("1-x", None)],
)
def test_parse_addresses(text, expected):
    if expected is None:
        with pytest.raises(ValueError):
            parse_addresses(text)
    else:
        assert parse_addresses(text) == expected


@pytest.mark.parametrize("bad", ["", "0-3", "5-2", "1-x", "1,,2", "1-100000000", "1-200000"])
def test_parse_addresses_rejects_bad_ranges_with_a_reason(bad):
    with pytest.raises(ValueError, match=r".+"):
        parse_addresses(bad)


def test_kind_of_meter_type():
    assert kind_of_meter_type(0x10) is MeterKind.WATER
    assert kind_of_meter_type(0x30) is MeterKind.GAS
    assert kind_of_meter_type(0x40) is MeterKind.ELECTRICITY
    assert kind_of_meter_type(0x20) is None and kind_of_meter_type(0) is None


def test_progress_bar_tty_redraws_and_lines_every_ten_percent():
    import io

    lines = io.StringIO()
    bar = ProgressBar(lines, tty=False)
    for i in range(101):
        bar(Progress(i, 100, i * 0.1, (100 - i) * 0.1 if i else None, "CDT addresses"))
    out = lines.getvalue().splitlines()
    assert len(out) == 11 and out[0].startswith("scan:   0%") and out[-1].startswith("scan: 100%")
    assert "left" in out[5]
    tty = io.StringIO()
    bar = ProgressBar(tty, tty=True)
    bar(Progress(50, 100, 5.0, 65.0, "modules"))
    bar.finish()
    assert tty.getvalue().startswith("\r[###############...............]  50%  about 1m05s left")
    assert tty.getvalue().endswith("\n")


def test_scanner_rejects_a_bad_meters_option():
    rig = Rig(configured_link())
    with pytest.raises(ValueError, match="meters must be"):
        Scanner(configured_link(), rig.master_for(configured_link()), rig.clock, meters="some")


def test_difference_where():
    assert Difference("alarm", 5, 2, 1, "").where == "CDT 5 module 2 channel 1"
    assert Difference("unexpected_standard_meter", None, None, None, "").where == "bus"
    assert kind_of_meter_type(m.CDT_TYPE) is None  # a CDT's own type is never taken for a standard meter


def test_a_link_lost_during_the_scan_is_a_difference_not_a_silent_bus():
    config = configured_link()
    rig = Rig(config)
    master = rig.master_for(config)
    master.queue_timeout_s = 1.0
    scanner = Scanner(config, master, rig.clock, addresses=range(1, 9), broadcast=False)
    d = scanner.run()
    rig.clock.advance(0.3)
    master.connection_lost("cable pulled")
    report = rig.run(d)
    assert ("link_down", None, None, None) in kinds(report)
    assert "RESULT:" in render_text(report) and not report.matches


def test_an_empty_module_and_an_unread_cdt_survive_the_draft():
    config = make_link([make_cdt(1, modules=(1,))], repeaters=())
    field = make_link([Cdt(1, None, None, (Module(1, ()), Module(2, ())))], repeaters=())
    report, _, _ = scan(config, field, addresses=range(1, 3))
    assert kinds(report) == [("missing_meter", 1, 1, 1), ("missing_meter", 1, 1, 2), ("missing_meter", 1, 1, 3),
                             ("unexpected_module", 1, 2, None)]  # fmt: skip
    topo = loads(draft_config(report, make_topology(config), config), "<draft>")
    assert next(topo.links()).cdt(1).modules == (Module(1, ()), Module(2, ()))
    assert "RESULT: 4 differences" in render_text(report)
