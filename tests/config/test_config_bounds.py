"""Bad input is bounded: what cannot be a configuration is refused in one line, before it
costs time or memory; the per-link limits hold exactly at their boundary; link gap_ms."""

from __future__ import annotations

import os
import tomllib

import pytest

from st2000r.config import example_path
from st2000r.config.budget import count_meters
from st2000r.config.errors import ConfigError
from st2000r.config.files import InputFileError, read_text
from st2000r.config.loader import MAX_ISSUES, MAX_METERS, load, loads

TEMPLATE = """
[templates.full]
channels = [ {channel=1, kind="water", pulse_constant=10}, {channel=2, kind="water", pulse_constant=10},
             {channel=3, kind="gas", pulse_constant=10} ]

[[sites]]
name = "North"
address = "1 North Road"
"""


def link(n: int, addresses: str, modules: str = "1", extra: str = "") -> str:
    return (f'\n[[sites.links]]\nname = "bus{n}"\nkind = "tcp"\nhost = "10.0.0.1"\nport = {4000 + n}\n{extra}'
            f'[[sites.links.cdt_ranges]]\naddresses = "{addresses}"\nmodules = "{modules}"\ntemplate = "full"\n'
            'serial = "{link_no:03}{cdt:03}{module:02}{channel}"\n')


def issues(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        loads(text, source="t.toml")
    return [(i.path, i.reason) for i in info.value.errors]


# ---- the 256-CDT limit of a link, at its boundary


def test_a_link_with_exactly_256_cdts_loads_and_expands_every_meter():
    topology = loads(TEMPLATE + link(1, "1-256", "1-2"))
    bus = topology.link("bus1")
    assert [c.address for c in bus.cdts] == list(range(1, 257))
    assert bus.meter_count() == 256 * 2 * 3


def test_256_cdts_from_a_range_and_written_out_load():
    text = TEMPLATE + link(1, "1-255") + '[[sites.links.cdts]]\naddress = 256\n'
    assert len(loads(text).link("bus1").cdts) == 256


def test_one_range_of_257_addresses_fails_with_its_own_message():
    assert issues(TEMPLATE + link(1, "1-257")) == [
        ("sites[0].links[0].cdt_ranges[0].addresses", "range gives 257 CDTs, more than the limit of 256 per link"),
    ]


def test_ranges_adding_up_past_the_limit_are_counted_not_built():
    text = TEMPLATE + link(1, "1-200") + ('[[sites.links.cdt_ranges]]\naddresses = "1001-1200"\nmodules = 1\n'
                                         'template = "full"\nserial = "9{cdt:04}{channel}"\n')
    assert issues(text) == [("sites[0].links[0]", "400 CDTs exceed the limit of 256 per link")]


# ---- the meter budget of a file


def test_a_file_over_the_meter_limit_fails_fast_naming_the_limit():
    links = "".join(link(n, "1-256", "1-32") for n in range(1, 42))  # 41 x 24,576 meters
    assert len(links) < 20_000
    assert issues(TEMPLATE + links) == [
        ("sites", f"the templates and ranges expand to 1,007,616 meters, more than the limit of "
                  f"{MAX_METERS:,} meters per file"),
    ]


@pytest.mark.parametrize("name", ["small.toml", "city.toml", "community.toml"])
def test_the_meter_count_before_expansion_matches_the_examples(name):
    path = example_path(name)
    with open(path, "rb") as f:
        data = tomllib.load(f)
    assert count_meters(data) == load(path).summary().meters


def test_the_meter_count_ignores_malformed_values():
    assert count_meters({"sites": [{"links": [{"cdt_ranges": [{"addresses": [1], "modules": {}, "template": []}],
                                               "cdts": ["x", {"modules": "y"}]}]}, 3]}) == 0


# ---- the list of issues


def test_at_most_100_issues_are_listed_then_a_count():
    keys = "".join(f"x{i} = 1\n" for i in range(1000))
    found = issues(keys + TEMPLATE)
    assert len(found) == MAX_ISSUES + 1
    assert found[0] == ("x0", "unknown key 'x0' (allowed: templates, sites, plans, interlocks, operators, supervisor, modbus, historian, api)")
    assert found[-1] == ("", f"... and 900 more problems (only the first {MAX_ISSUES} are listed)")


# ---- files that are not configuration files


def test_a_device_is_refused_before_reading(tmp_path):
    with pytest.raises(ConfigError) as info:
        load("/dev/zero")
    assert str(info.value) == "/dev/zero: cannot read file: a device, not a regular file"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "site.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load(fifo)
    assert str(info.value) == f"{fifo}: cannot read file: a FIFO, not a regular file"


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="a directory, not a regular file"):
        load(tmp_path)


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(8 * 1024 * 1024 + 1)  # sparse: nothing is written, nothing must be read
    with pytest.raises(ConfigError) as info:
        load(big)
    assert str(info.value) == f"{big}: file too large: 8388609 bytes, more than the limit of 8 MiB"


def test_read_text_stops_at_the_limit(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 11)
    assert read_text(path, limit=11) == "a" * 11
    with pytest.raises(InputFileError, match="scenario too large: 11 bytes, more than the limit of 10 bytes"):
        read_text(path, limit=10, what="scenario")


# ---- gap_ms


GAP_BASE = TEMPLATE + link(1, "1-2")


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("0", 0.0), ("2.5", 2.5), ("10000", 10000.0)])
def test_gap_ms_is_optional_and_finite(value, expected):
    text = GAP_BASE if value is None else TEMPLATE + link(1, "1-2", extra=f"gap_ms = {value}\n")
    assert loads(text).link("bus1").gap_ms == expected


@pytest.mark.parametrize(("value", "reason"), [
    ("-1", "value -1 out of range 0..10000 ms (a finite number of milliseconds)"),
    ("inf", "value inf out of range 0..10000 ms (a finite number of milliseconds)"),
    ("nan", "value nan out of range 0..10000 ms (a finite number of milliseconds)"),
    ("10000.5", "value 10000.5 out of range 0..10000 ms (a finite number of milliseconds)"),
    ('"5"', "wrong type: expected integer or float, got string '5'"),
    ("true", "wrong type: expected integer or float, got boolean true"),
])
def test_bad_gap_ms_names_file_key_and_reason(value, reason):
    with pytest.raises(ConfigError) as info:
        loads(TEMPLATE + link(1, "1-2", extra=f"gap_ms = {value}\n"), source="t.toml")
    assert str(info.value) == f"t.toml: sites[0].links[0].gap_ms: {reason}"


# ---- the wide model classes are keyword-only


@pytest.mark.parametrize("cls", ["Link", "Summary", "SupervisorSettings", "Topology"])
def test_wide_model_classes_take_keywords_only(cls):
    import dataclasses

    from st2000r.config import model

    klass = getattr(model, cls)
    assert all(f.kw_only for f in dataclasses.fields(klass))
    with pytest.raises(TypeError):
        klass(*range(len(dataclasses.fields(klass))))
