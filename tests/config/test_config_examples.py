"""The shipped examples load and give the counts their comments promise; model helpers."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from st2000r.config import example_path
from st2000r.config.loader import load, loads
from st2000r.config.model import (
    GprsEndpoint,
    GsmEndpoint,
    LineSettings,
    MeterKind,
    SerialEndpoint,
    TcpEndpoint,
)


@pytest.fixture(scope="module")
def community():
    return load(example_path("community.toml"))


@pytest.fixture(scope="module")
def city():
    return load(example_path("city.toml"))


def test_small_written_out():
    topology = load(example_path("small.toml"))
    s = topology.summary()
    assert (s.sites, s.links, s.repeaters, s.cdts, s.modules, s.meters) == (1, 1, 0, 1, 3, 7)
    assert s.meters_by_kind == {MeterKind.WATER: 4, MeterKind.ELECTRICITY: 2, MeterKind.GAS: 1}
    link = topology.link("garden-bus")
    assert link.endpoint == SerialEndpoint("/dev/ttyUSB0")
    assert link.line == LineSettings(baud=2400, bytesize=8, parity="E", stopbits=1)
    cdt = link.cdt(1)
    assert [m.number for m in cdt.modules] == [1, 2, 5]
    assert list(cdt.meters())[0] == (1, 1, cdt.modules[0].channels[0].meter)
    meter = cdt.module(1).channels[1].meter
    assert (meter.kind, meter.pulse_constant, meter.serial, meter.initial, meter.household) == (
        MeterKind.ELECTRICITY, 1, "00000020000101", 4567000, "A-101")
    assert cdt.module(1).channels[2].meter.initial == 0


def test_community_counts(community):
    cdts, modules, channels, repeaters = 128, 32, 3, 4
    s = community.summary()
    assert (s.sites, s.links, s.repeaters, s.cdts) == (1, 1, repeaters, cdts)
    assert s.links_by_kind == {"serial": 1, "tcp": 0, "gprs": 0, "gsm": 0}
    assert s.modules == cdts * modules == 4096
    assert s.meters == cdts * modules * channels == 12288
    assert s.meters_by_kind == dict.fromkeys(MeterKind, cdts * modules)
    link = community.sites[0].links[0]
    assert link.meter_count() == 12288 and link.module_count() == 4096


def test_community_repeaters_carry_32_cdts_each(community):
    link = community.link("lakeside-bus")
    assert [(r.name, r.parent, r.latency_ms) for r in link.repeaters] == [
        ("R1", None, 5), ("R2", None, 5), ("R3", None, 5), ("R4", None, 8)]
    assert Counter(cdt.repeater for cdt in link.cdts) == {"R1": 32, "R2": 32, "R3": 32, "R4": 32}
    assert link.cdt(33).repeater == "R2" and link.cdt(128).repeater == "R4"


def test_community_expansion(community):
    link = community.link("lakeside-bus")
    assert [cdt.address for cdt in link.cdts] == list(range(1, 129))
    cdt = link.cdt(7)
    assert (cdt.name, cdt.bcd_address) == ("Building 7", "00000000000007")
    module = cdt.module(3)
    assert [(c.number, c.meter.kind, c.meter.pulse_constant) for c in module.channels] == [
        (1, MeterKind.WATER, 10), (2, MeterKind.ELECTRICITY, 1), (3, MeterKind.GAS, 10)]
    assert module.channels[1].meter.serial == "00000000007032"
    assert module.channels[1].meter.household == "B007-03"


def test_serial_formats_expand_to_unique_14_digit_serials(community, city):
    for topology in (community, city):
        for link in topology.links():
            serials = [meter.serial for *_, meter in link.meters()]
            assert all(len(s) == 14 and s.isdigit() for s in serials)
            assert len(set(serials)) == len(serials)
    # the city's formats start with {site_no}{link_no}: unique across the whole file too
    everything = [meter.serial for link in city.links() for *_, meter in link.meters()]
    assert len(set(everything)) == len(everything)


def test_city_counts(city):
    # per link: (CDTs, modules, meters) computed from the ranges written in city.toml
    expected = {
        "riverside-north": (32 + 16 + 11, 32 * 16 + 16 * 16 + 11 * 8, 3 * (32 * 16 + 16 * 16 + 11 * 8)),
        "riverside-south": (20, 20 * 12, 3 * 20 * 12),
        "hillview-tower-a": (40, 39 * 24 + 20 + 1 + 1, 3 * 39 * 24 + 20 + 3 + 2),
        "hillview-office": (1, 4, 12),
        "oldtown-gsm": (6, 6 * 4, 2 * 6 * 4),
        "oldtown-usr": (10, 10 * 6, 2 * 10 * 6),
    }
    got = {link.name: (len(link.cdts), link.module_count(), link.meter_count()) for link in city.links()}
    assert got == expected
    s = city.summary()
    assert (s.sites, s.links, s.repeaters) == (3, 6, 3)
    assert s.links_by_kind == {"serial": 1, "tcp": 1, "gprs": 3, "gsm": 1}
    assert s.cdts == sum(v[0] for v in expected.values())
    assert s.meters == sum(v[2] for v in expected.values())
    # gas: every flat module (north, south, tower A's range and module 21, the office) + module 22's gas meter
    assert s.meters_by_kind[MeterKind.GAS] == (32 * 16 + 16 * 16 + 11 * 8) + 20 * 12 + (39 * 24 + 1) + 4 + 1
    assert [site.summary().meters for site in city.sites] == [
        expected["riverside-north"][2] + expected["riverside-south"][2],
        expected["hillview-tower-a"][2] + expected["hillview-office"][2],
        expected["oldtown-gsm"][2] + expected["oldtown-usr"][2],
    ]


def test_city_endpoints_and_defaults(city):
    north, south = city.link("riverside-north"), city.link("riverside-south")
    assert north.endpoint == GprsEndpoint(dtu_id="13900000001", registration="ddp", heartbeat_s=120, auth="challenge",
                                          secret="EXAMPLE-ONLY-rvs-north-5u8Jq2Lw", allow_from=("10.64.0.0/16",))
    assert south.endpoint == GprsEndpoint(dtu_id="RVS-SOUTH-02", registration="plain", heartbeat_s=60, auth="password",
                                          secret="EXAMPLE-ONLY-south-pw")
    usr = city.link("oldtown-usr").endpoint
    assert (usr.auth, usr.secret, usr.allow_from) == ("none", None, ("10.64.12.0/24",))
    assert "EXAMPLE-ONLY" not in repr(city)  # secrets stay out of reprs and logs
    assert (south.line, south.turnaround_ms, south.di_order) == (LineSettings(2400, 8, "E", 1), 20, "901F")
    assert city.link("oldtown-usr").endpoint.registration == "usr"
    assert city.link("hillview-tower-a").endpoint == TcpEndpoint("192.0.2.10", 4001)
    gsm = city.link("oldtown-gsm")
    assert gsm.endpoint == GsmEndpoint(modem="/dev/ttyACM0", number="+8613800000001", modem_baud=19200)
    assert (gsm.line.baud, gsm.di_order, gsm.turnaround_ms) == (1200, "1F90", 100)
    assert [(r.name, r.parent) for r in north.repeaters] == [("N1", None), ("N1b", "N1"), ("N2", None)]
    assert [c.address for c in north.cdts if c.repeater == "N2"] == [*range(51, 61), 62]
    office = city.link("hillview-tower-a").cdt(40)
    assert office.module(21).channels[0].meter.initial == 5000
    assert office.module(22).channels[1].meter.serial == "00051700098765"


def test_model_helpers():
    assert LineSettings(2400, 8, "E", 1).bits_per_byte == 11
    assert LineSettings(19200, 8, "N", 1).bits_per_byte == 10
    assert LineSettings(1200, 7, "O", 2).bits_per_byte == 11
    assert [k.base_unit for k in MeterKind] == ["L", "Wh", "L"]
    topology = load(example_path("small.toml"))
    link = topology.link("garden-bus")
    with pytest.raises(KeyError):
        link.cdt(2)
    with pytest.raises(KeyError):
        topology.link("nope")
    with pytest.raises(dataclasses.FrozenInstanceError):
        link.name = "x"  # type: ignore[misc]
    assert not hasattr(link, "__dict__")
    assert isinstance(link.cdts, tuple) and isinstance(link.cdts[0].modules, tuple)
    assert topology == load(example_path("small.toml"))


def test_loads_source_and_sorting():
    text = """
[[sites]]
name = "S"
address = "A"
[[sites.links]]
name = "l"
kind = "serial"
device = "/dev/ttyS1"
[[sites.links.cdts]]
address = 9
[[sites.links.cdts.modules]]
module = 4
channels = [ {channel=3, kind="gas", pulse_constant=1, serial="2"}, {channel=1, kind="water", pulse_constant=1, serial="1"} ]
[[sites.links.cdts.modules]]
module = 2
channels = []
[[sites.links.cdts]]
address = 3
"""
    topology = loads(text, source="inline")
    assert topology.source == "inline"
    link = topology.link("l")
    assert [c.address for c in link.cdts] == [3, 9]
    assert [m.number for m in link.cdt(9).modules] == [2, 4]
    assert [c.number for c in link.cdt(9).module(4).channels] == [1, 3]
    assert link.cdt(3).modules == ()
