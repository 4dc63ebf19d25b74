"""The register map: addresses derived from the physical place, slots fixed by the lock file
or the configuration, the export's fields, and growth that moves no existing address."""

from __future__ import annotations

import json

import pytest

from st2000r.bridge import layout as L
from st2000r.bridge.cli import main as registers
from st2000r.bridge.regmap import MapError, build_map, load_map
from st2000r.config.errors import ConfigError
from st2000r.config.loader import load, loads

TEMPLATE = """
[templates.flat]
channels = [
  {{ channel = 1, kind = "water", pulse_constant = 10 }},
  {{ channel = 2, kind = "electricity", pulse_constant = 1 }},
  {{ channel = 3, kind = "gas", pulse_constant = 10 }},
]

[[sites]]
name = "S"
address = "A"

[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/ttyUSB0"
{cdts}

[modbus]
tcp = "127.0.0.1:1502"
"""

CDT = """
[[sites.links.cdts]]
address = {address}
{slot}
module_ranges = [ {{ modules = "1-{modules}", template = "flat", serial = "{{cdt:03}}{{module:02}}{{channel}}" }} ]
"""


def config(*cdts: int | tuple[int, int], modules: int = 32) -> str:
    parts = []
    for cdt in cdts:
        address, slot = cdt if isinstance(cdt, tuple) else (cdt, None)
        parts.append(CDT.format(address=address, modules=modules, slot=f"slot = {slot}" if slot is not None else ""))
    return TEMPLATE.format(cdts="".join(parts))


def export(path, fmt="json") -> list[dict]:
    out = path.with_suffix(f".{fmt}")
    assert registers(["export", str(path), "--format", fmt, "--output", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def places(rows: list[dict]) -> dict[tuple[str, str], tuple[int, str, int]]:
    return {(r["source"], r["point"]): (r["unit"], r["table"], r["address"]) for r in rows
            if r["source"] not in ("map", "historian") and not r["point"].startswith("link_")}


def test_addresses_follow_the_documented_formula():
    regmap, _ = build_map(loads(config(7, 3, 5)))
    # a fresh map gives slots in address order: 3 -> 0, 5 -> 1, 7 -> 2
    assert regmap.cdts["bus/3"] == (1, 1000, 0)
    assert regmap.cdts["bus/7"] == (1, 3000, 2)
    assert regmap.meters["bus/5/2/3"] == (1, 2000 + 30 + 20)
    assert L.meter_base(5, 2, 1) == 6030


def test_a_link_spreads_over_four_unit_ids_64_cdts_each():
    regmap, _ = build_map(loads(config(*range(1, 257), modules=1)))
    assert regmap.links["bus"].first_unit == 1
    assert sorted(regmap.units) == [1, 2, 3, 4]
    assert regmap.cdts["bus/64"] == (1, 64000, 63)
    assert regmap.cdts["bus/65"] == (2, 1000, 64)
    assert regmap.cdts["bus/256"] == (4, 64000, 255)
    addresses = [(r.unit, r.table, r.address) for r in regmap.rows()]
    assert len(addresses) == len(set(addresses))
    assert max(a for _, _, a in addresses) <= 65535


def test_adding_a_cdt_anywhere_moves_no_existing_address(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(config(10, 20, 30), encoding="utf-8")
    before = places(export(path))
    assert (tmp_path / "site.modbus-lock.json").exists()
    path.write_text(config(5, 10, 15, 20, 30, 40), encoding="utf-8")  # new CDTs before, between, after
    after = places(export(path))
    assert {k: after[k] for k in before} == before
    assert len(after) > len(before)
    # a CDT removed keeps its slot reserved: put back, it gets its old registers
    path.write_text(config(5, 15, 20, 30, 40), encoding="utf-8")
    export(path)
    path.write_text(config(5, 10, 15, 20, 30, 40), encoding="utf-8")
    assert places(export(path)) == after


def test_an_explicit_slot_wins_and_a_conflict_with_the_lock_is_an_error(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(config((10, 9), 20), encoding="utf-8")
    regmap = load_map(load(path))
    assert regmap.cdts["bus/10"][2] == 9 and regmap.cdts["bus/20"][2] == 0
    path.write_text(config((10, 9), (30, 0), 20), encoding="utf-8")  # slot 0 is CDT 20's in the lock
    with pytest.raises(MapError, match="CDT 30 has slot = 0, but the map lock gives slot 0 to CDT 20"):
        load_map(load(path))


def test_duplicate_slots_and_bad_modbus_keys_are_config_errors():
    with pytest.raises(ConfigError) as exc:
        loads(config((1, 4), (2, 4)).replace('tcp = "127.0.0.1:1502"', 'tcp = "localhost:1502"\nwrite_allow = ["x"]'))
    text = "\n".join(str(i) for i in exc.value.errors)
    assert "sites[0].links[0].cdts[1].slot: duplicate slot 4 on this link" in text
    assert "modbus.tcp: value 'localhost:1502': interface 'localhost' is not an IP address" in text
    assert "modbus.write_allow[0]: value 'x' is not an IP address or network" in text


def test_export_json_has_the_fields_integrators_script_against(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(config(1, modules=1), encoding="utf-8")
    rows = export(path)
    fields = {"unit", "port", "table", "address", "type", "word_order", "point", "source", "unit_of_measure",
              "description", "description_zh"}
    assert all(set(r) == fields for r in rows)
    by = {(r["source"], r["point"]): r for r in rows}
    assert by[("bus/1/1/1", "value")] == {**by[("bus/1/1/1", "value")], "unit": 1, "port": 1502, "table": "input",
                                          "address": 1000, "type": "uint32", "word_order": "big",
                                          "unit_of_measure": "L"}
    assert by[("bus/1/1/2", "value")]["unit_of_measure"] == "Wh"
    assert by[("bus/1/1/3", "valve_open")]["table"] == "coil" and by[("bus/1/1/3", "valve_open")]["address"] == 1020
    assert by[("bus/1", "battery_mv")]["address"] == 1963
    assert by[("map", "map_hash")]["type"] == "uint64"
    assert {r["point"] for r in rows} >= {"value", "quality", "age", "alarms", "valve", "valve_open",
                                          "command_status", "online", "mains", "battery_low", "battery_mv",
                                          "modules", "link_state", "map_version", "map_hash"}
    csv_text = (tmp_path / "site.csv")
    assert registers(["export", str(path), "--format", "csv", "--output", str(csv_text)]) == 0
    lines = csv_text.read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",") == ["unit", "port", "table", "address", "type", "word_order", "point", "source",
                                   "unit_of_measure", "description", "description_zh"]
    assert len(lines) == len(rows) + 1


def test_the_map_hash_changes_with_any_address():
    a, _ = build_map(loads(config(1, 2)))
    b, _ = build_map(loads(config(1, 2)))
    c, _ = build_map(loads(config(1, 2, 3)))
    assert a.hash == b.hash != c.hash


# the header of map version 1: every address in it stays where it was
HEADER_V1 = {"map_version": (0, "uint16"), "map_hash": (1, "uint64"), "unit_index": (5, "uint16"),
             "link_state": (10, "uint16"), "link_signal": (11, "uint16"), "link_transactions": (12, "uint32"),
             "link_timeouts": (14, "uint32"), "link_checksum_errors": (16, "uint32"), "link_rounds": (18, "uint32"),
             "link_cdts_online": (20, "uint16"), "link_cdts": (21, "uint16")}
HISTORIAN = {"historian_state": (30, "uint16"), "historian_spool_rows": (31, "uint32"),
             "historian_oldest_age": (33, "uint32"), "historian_write_rate": (35, "uint32"),
             "historian_spool_used": (37, "uint16"), "historian_quarantined": (38, "uint32")}


def test_the_historian_status_is_in_every_unit_header_and_moved_nothing(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(config(*range(1, 71), modules=1), encoding="utf-8")  # 70 CDTs: two unit ids
    rows = export(path)
    units = sorted({r["unit"] for r in rows})
    assert units == [1, 2]
    words = {"uint16": 1, "uint32": 2, "uint64": 4}
    for unit in units:
        header = {r["point"]: r for r in rows if r["unit"] == unit and r["address"] < 100}
        assert {p: (r["address"], r["type"]) for p, r in header.items()} == {**HEADER_V1, **HISTORIAN}
        assert all(header[p]["source"] == "historian" for p in HISTORIAN)
        taken = [a for r in header.values() for a in range(r["address"], r["address"] + words[r["type"]])]
        assert len(taken) == len(set(taken)) and max(taken) < 100  # no overlap, inside the header
