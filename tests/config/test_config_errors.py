"""Bad configurations: each is rejected with the exact key path and reason, all at once."""

from __future__ import annotations

import pytest

from st2000r.config.errors import ConfigError, ConfigIssue
from st2000r.config.loader import load, loads

BASE = """
[templates.flat]
channels = [ {channel=1, kind="water", pulse_constant=10}, {channel=2, kind="electricity", pulse_constant=1} ]

[[sites]]
name = "North"
address = "1 North Road"

[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/ttyUSB0"
repeaters = [ {name="R1"}, {name="R2", parent="R1"} ]

[[sites.links.cdt_ranges]]
addresses = "1-4"
modules = "1-2"
template = "flat"
serial = "{cdt:02}{module:02}{channel}"

[[sites.links.cdts]]
address = 10
repeater = "R2"

[[sites.links.cdts.modules]]
module = 1
channels = [ {channel=1, kind="gas", pulse_constant=10, serial="777"} ]

[[sites]]
name = "South"
address = "2 South Road"

[[sites.links]]
name = "dtu"
kind = "gprs"
dtu_id = "13900000001"
auth = "none"
"""

LINK0 = "sites[0].links[0]"


def mutate(*pairs: str) -> str:
    """BASE with each (old, new) replacement applied; each old text must occur exactly once."""
    text = BASE
    for old, new in zip(pairs[::2], pairs[1::2], strict=True):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def issues(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        loads(text, source="t.toml")
    for issue in info.value.errors:
        assert issue.file == "t.toml"
    return [(i.path, i.reason) for i in info.value.errors]


def test_base_is_valid():
    topology = loads(BASE)
    s = topology.summary()
    assert (s.sites, s.links, s.cdts, s.modules, s.meters) == (2, 2, 5, 9, 17)


# ---- duplicates


def test_duplicate_cdt_address_explicit_vs_range():
    assert issues(mutate("address = 10", "address = 3")) == [
        (f"{LINK0}.cdts[0].address",
         f"duplicate CDT address 3 (already defined at {LINK0}.cdt_ranges[0].addresses)"),
    ]


def test_duplicate_cdt_addresses_between_ranges_are_summarised():
    text = mutate('serial = "{cdt:02}{module:02}{channel}"\n',
                  'serial = "{cdt:02}{module:02}{channel}"\n'
                  '[[sites.links.cdt_ranges]]\naddresses = "3-6"\nmodules = 1\ntemplate = "flat"\n'
                  'serial = "9{cdt:02}{channel}"\n')
    assert issues(text) == [
        (f"{LINK0}.cdt_ranges[1].addresses",
         f"duplicate CDT addresses 3-4 (already defined at {LINK0}.cdt_ranges[0].addresses)"),
    ]


def test_duplicate_meter_serial_explicit_against_range():
    # CDT 1 module 1 channel 1 of the range has serial "01011" -> 00000000001011
    assert issues(mutate('serial="777"', 'serial="0000001011"')) == [
        (f"{LINK0}.cdts[0].modules[0].channels[0].serial",
         "duplicate meter serial 00000000001011 (already used by CDT 1 module 1 channel 1, "
         f"from {LINK0}.cdt_ranges[0].serial)"),
    ]


def test_duplicate_meter_serial_from_a_format_is_reported_once_with_a_count():
    assert issues(mutate('"{cdt:02}{module:02}{channel}"', '"{cdt:02}{module:02}"')) == [
        (f"{LINK0}.cdt_ranges[0].serial",
         "format '{cdt:02}{module:02}' gives duplicate meter serial 00000000000101 for CDT 1 module 1 "
         f"channel 2 (already used by CDT 1 module 1 channel 1, from {LINK0}.cdt_ranges[0].serial); "
         "8 duplicates from this entry in all"),
    ]


def test_duplicate_module_number_in_a_cdt():
    text = mutate('serial="777"} ]\n', 'serial="777"} ]\n[[sites.links.cdts.modules]]\nmodule = 1\n'
                                       'template = "flat"\nserial = "8{channel}"\n')
    assert issues(text) == [
        (f"{LINK0}.cdts[0].modules[1].module",
         f"duplicate module number 1 in CDT 10 (already defined at {LINK0}.cdts[0].modules[0].module)"),
    ]


def test_duplicate_channel_in_a_module():
    text = mutate('serial="777"} ]', 'serial="777"}, {channel=1, kind="water", pulse_constant=1, serial="778"} ]')
    assert issues(text) == [
        (f"{LINK0}.cdts[0].modules[0].channels[1].channel",
         f"duplicate channel 1 in module 1 of CDT 10 (already defined at {LINK0}.cdts[0].modules[0].channels[0].channel)"),
    ]


def test_duplicate_link_name_across_sites():
    assert issues(mutate('name = "dtu"', 'name = "bus"')) == [
        ("sites[1].links[0].name", f"duplicate link name 'bus' (already used at {LINK0}.name)"),
    ]


def test_duplicate_repeater_name():
    assert issues(mutate('{name="R2", parent="R1"}', '{name="R1"}')) == [
        (f"{LINK0}.repeaters[1].name",
         f"duplicate repeater name 'R1' on this link (already defined at {LINK0}.repeaters[0])"),
        (f"{LINK0}.cdts[0].repeater", "unknown repeater 'R2' (repeaters on this link: R1)"),
    ]


# ---- limits


def test_more_than_256_cdts_on_a_link():
    text = mutate('addresses = "1-4"', 'addresses = "1-9,11-200"',
                  'serial = "{cdt:02}{module:02}{channel}"\n',
                  'serial = "{cdt:03}{module:02}{channel}"\n'
                  '[[sites.links.cdt_ranges]]\naddresses = "201-260"\nmodules = 1\ntemplate = "flat"\n'
                  'serial = "9{cdt:03}{channel}"\n')
    assert issues(text) == [(LINK0, "260 CDTs exceed the limit of 256 per link")]


def test_one_range_with_more_than_256_cdts():
    assert issues(mutate('addresses = "1-4"', 'addresses = "1-9,100-99999999"')) == [
        (f"{LINK0}.cdt_ranges[0].addresses", "range gives 99999909 CDTs, more than the limit of 256 per link"),
    ]


def test_more_than_32_modules_in_a_cdt():
    modules = "".join(f'[[sites.links.cdts.modules]]\nmodule = {n}\ntemplate = "flat"\nserial = "7{{module:02}}{{channel}}"\n'
                      for n in range(2, 34))
    text = mutate('serial="777"} ]\n', 'serial="777"} ]\n' + modules)
    assert issues(text) == [
        (f"{LINK0}.cdts[0].modules", "33 modules exceed the limit of 32 per CDT"),
        (f"{LINK0}.cdts[0].modules[32].module", "value 33 out of range 1..32"),
    ]


def test_module_range_beyond_32():
    assert issues(mutate('modules = "1-2"', 'modules = "1-40"')) == [
        (f"{LINK0}.cdt_ranges[0].modules", "range '1-40' out of range 1..32"),
    ]


def test_more_than_3_channels_in_a_module():
    four = ", ".join(f'{{channel={n}, kind="water", pulse_constant=1, serial="5{n}"}}' for n in range(1, 5))
    assert issues(mutate('{channel=1, kind="gas", pulse_constant=10, serial="777"}', four)) == [
        (f"{LINK0}.cdts[0].modules[0].channels", "4 channels exceed the limit of 3 per module"),
        (f"{LINK0}.cdts[0].modules[0].channels[3].channel", "value 4 out of range 1..3"),
    ]


def test_more_than_32_cdts_behind_a_repeater():
    text = mutate('addresses = "1-4"', 'addresses = "1-9,11-40"', 'modules = "1-2"', 'modules = "1-2"\nrepeater = "R2"')
    assert issues(text) == [
        (f"{LINK0}.repeaters[1]", "40 CDTs behind repeater 'R2' exceed the limit of 32 per repeater"),
    ]


def test_repeater_nesting_deeper_than_two_levels():
    text = mutate('{name="R2", parent="R1"}', '{name="R2", parent="R1"}, {name="R3", parent="R2"}')
    assert issues(text) == [
        (f"{LINK0}.repeaters[2].parent",
         "repeater nesting exceeds 2 levels: 'R3' -> 'R2' -> 'R1' (a parent repeater must not have a parent itself)"),
    ]


# ---- references


def test_repeater_cycle():
    assert issues(mutate('{name="R1"}', '{name="R1", parent="R2"}')) == [
        (f"{LINK0}.repeaters[0].parent", "repeater cycle: R1 -> R2 -> R1"),
    ]


def test_unknown_repeater_reference():
    assert issues(mutate('repeater = "R2"', 'repeater = "R9"')) == [
        (f"{LINK0}.cdts[0].repeater", "unknown repeater 'R9' (repeaters on this link: R1, R2)"),
    ]


def test_unknown_template():
    assert issues(mutate('template = "flat"', 'template = "falt"')) == [
        (f"{LINK0}.cdt_ranges[0].template", "unknown template 'falt' (defined: flat)"),
    ]


# ---- keys, types, values


def test_unknown_key_names_it_and_lists_the_allowed_keys():
    assert issues(mutate('device = "/dev/ttyUSB0"', 'device = "/dev/ttyUSB0"\nport = 4001')) == [
        (f"{LINK0}.port",
         "unknown key 'port' for a serial link (allowed: name, kind, baud, bytesize, parity, stopbits, "
         "turnaround_ms, gap_ms, di_order, repeaters, cdt_ranges, cdts, device)"),
    ]


def test_unknown_top_level_section():
    assert issues("[scada]\nport = 1\n" + BASE) == [
        ("scada", "unknown key 'scada' (allowed: templates, sites, plans, interlocks, operators, supervisor, "
                  "modbus, historian, api)"),
    ]


def test_wrong_type_says_expected_and_got():
    assert issues(mutate('device = "/dev/ttyUSB0"', 'device = "/dev/ttyUSB0"\nbaud = "2400"')) == [
        (f"{LINK0}.baud", "wrong type: expected integer, got string '2400'"),
    ]


def test_serial_as_integer_is_a_wrong_type_with_a_hint():
    assert issues(mutate('serial="777"', "serial=777")) == [
        (f"{LINK0}.cdts[0].modules[0].channels[0].serial",
         'wrong type: expected string, got integer 777 (write serials in quotes, e.g. serial = "00012345")'),
    ]


def test_values_out_of_range_say_the_range():
    text = mutate('kind = "gprs"\ndtu_id = "13900000001"\nauth = "none"',
                  'kind = "tcp"\nhost = "192.0.2.1"\nport = 70000\nturnaround_ms = 2001\nparity = "X"',
                  "address = 10", "address = 100000000")
    assert issues(text) == [
        (f"{LINK0}.cdts[0].address", "value 100000000 out of range 1..99999999"),
        ("sites[1].links[0].parity", "value 'X' is not one of 'N', 'E', 'O'"),
        ("sites[1].links[0].turnaround_ms", "value 2001 out of range 0..2000"),
        ("sites[1].links[0].port", "value 70000 out of range 1..65535"),
    ]


def test_missing_required_keys():
    assert issues(mutate('device = "/dev/ttyUSB0"\n', "", 'address = "2 South Road"\n', "")) == [
        (f"{LINK0}.device", "missing required key 'device' for a serial link"),
        ("sites[1].address", "missing required key 'address'"),
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"1-"', "malformed range '1-': '1-' is not a number or N-M span "
                 '(expected numbers and N-M spans separated by commas, e.g. "1-6,8,10-128")'),
        ('"4-1"', "malformed range '4-1': span 4-1 is descending"),
        ('"1-4,3"', "malformed range '1-4,3': '3' overlaps or precedes the previous item "
                    "(write items ascending, without overlaps)"),
        ('""', "malformed range '': empty "
               '(expected numbers and N-M spans separated by commas, e.g. "1-6,8,10-128")'),
        ("1.5", "wrong type: expected string or integer, got float 1.5"),
    ],
)
def test_malformed_range_strings(value, reason):
    assert issues(mutate('addresses = "1-4"', f"addresses = {value}")) == [
        (f"{LINK0}.cdt_ranges[0].addresses", reason),
    ]


def test_serial_format_producing_non_digits():
    assert issues(mutate('addresses = "1-4"', 'addresses = "9-12"', "{cdt:02}", "{cdt:x}")) == [
        (f"{LINK0}.cdt_ranges[0].serial",
         "format '{cdt:x}{module:02}{channel}' gives 'a011' for CDT 10 module 1 channel 1: "
         "a meter serial must be 1..14 decimal digits; 12 bad serials from this entry in all"),
        (f"{LINK0}.cdts[0].address",
         f"duplicate CDT address 10 (already defined at {LINK0}.cdt_ranges[0].addresses)"),
    ]


def test_serial_format_producing_more_than_14_digits():
    assert issues(mutate("{cdt:02}", "{cdt:012}")) == [
        (f"{LINK0}.cdt_ranges[0].serial",
         "format '{cdt:012}{module:02}{channel}' gives '000000000001011' for CDT 1 module 1 channel 1: "
         "a meter serial must be 1..14 decimal digits; 16 bad serials from this entry in all"),
    ]


@pytest.mark.parametrize(
    ("fmt", "reason"),
    [
        ("{flat}", "unknown placeholder {flat} in format '{flat}' "
                   "(allowed: {site_no}, {link_no}, {cdt}, {module}, {channel})"),
        ("{}", "unknown placeholder {} in format '{}' (allowed: {site_no}, {link_no}, {cdt}, {module}, {channel})"),
        ("{cdt", "malformed format '{cdt': expected '}' before end of string"),
        ("{cdt!r}", "conversion !r not allowed in format '{cdt!r}'"),
        ("{cdt:999}", "format spec '999' not allowed in format '{cdt:999}' (no nested fields, no 'c' type, widths up to 99)"),
    ],
)
def test_bad_serial_formats(fmt, reason):
    assert issues(mutate('"{cdt:02}{module:02}{channel}"', repr(fmt).replace("'", '"'))) == [
        (f"{LINK0}.cdt_ranges[0].serial", reason),
    ]


@pytest.mark.parametrize("serial", ["12a4", "123456789012345", "", "１２３"])
def test_explicit_serial_must_be_1_to_14_ascii_digits(serial):
    assert issues(mutate('serial="777"', f'serial="{serial}"')) == [
        (f"{LINK0}.cdts[0].modules[0].channels[0].serial",
         f"value {serial!r} is not a meter serial: 1..14 decimal digits expected"),
    ]


def test_module_needs_template_or_channels_and_not_both():
    both = mutate("module = 1\n", 'module = 1\ntemplate = "flat"\n')
    assert issues(both) == [(f"{LINK0}.cdts[0].modules[0]", "give either 'template' or 'channels', not both")]
    neither = mutate('channels = [ {channel=1, kind="gas", pulse_constant=10, serial="777"} ]', "")
    assert issues(neither) == [
        (f"{LINK0}.cdts[0].modules[0]", "missing 'template' or 'channels': a module needs one of them"),
    ]


def test_sites_must_be_an_array_of_tables():
    assert issues('[sites]\nname = "x"\n') == [
        ("sites", "wrong type: expected array of tables ([[sites]]), got table"),
    ]
    assert issues("") == [("sites", "missing required key 'sites'")]


def test_every_error_is_collected_in_one_pass():
    text = mutate('kind = "serial"', 'kind = "serial"\nbaud = 1234', 'repeater = "R2"', 'repeater = "R7"',
                  'pulse_constant=10, serial="777"', 'pulse_constant=0, serial="777"', 'dtu_id = "13900000001"',
                  'dtu_id = "13900000001"\nregistration = "xml"')
    assert issues(text) == [
        (f"{LINK0}.baud", "value 1234 is not one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200"),
        (f"{LINK0}.cdts[0].repeater", "unknown repeater 'R7' (repeaters on this link: R1, R2)"),
        (f"{LINK0}.cdts[0].modules[0].channels[0].pulse_constant", "value 0 out of range 1..65535"),
        ("sites[1].links[0].registration", "value 'xml' is not one of 'plain', 'ddp', 'usr'"),
    ]


def test_duplicate_dtu_id_serial_device_and_site_name():
    text = mutate('name = "South"', 'name = "North"', 'kind = "gprs"\ndtu_id = "13900000001"\nauth = "none"',
                  'kind = "serial"\ndevice = "/dev/ttyUSB0"')
    assert issues(text) == [
        ("sites[1].name", "duplicate site name 'North' (already used at sites[0].name)"),
        ("sites[1].links[0].device", "duplicate serial device '/dev/ttyUSB0' (already used at sites[0].links[0].device)"),
    ]


# ---- syntax errors, rendering, files


def test_toml_syntax_error_has_line_and_column():
    with pytest.raises(ConfigError) as info:
        loads('[[sites]]\nname = "x"\naddress = \n', source="bad.toml")
    (issue,) = info.value.errors
    assert (issue.file, issue.path, issue.line, issue.column) == ("bad.toml", "", 3, 11)
    assert str(info.value) == "bad.toml:3:11: TOML syntax error: Invalid value"


def test_str_renders_one_line_per_issue():
    error = ConfigError([ConfigIssue("f.toml", "sites[0].name", "must not be empty"),
                         ConfigIssue("f.toml", "", "cannot read file: No such file or directory")])
    assert str(error).splitlines() == [
        "f.toml: sites[0].name: must not be empty",
        "f.toml: cannot read file: No such file or directory",
    ]


def test_load_reports_unreadable_files_as_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.toml")
    assert str(info.value) == f"{tmp_path / 'missing.toml'}: cannot read file: No such file or directory"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = \xff\n")
    with pytest.raises(ConfigError) as info:
        load(binary)
    assert info.value.errors[0].reason == "not UTF-8 text (byte 7: invalid start byte)"
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert info.value.errors[0].reason.startswith("cannot read file: ")


def test_load_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load(path).source == str(path)


def test_file_wide_duplicates_are_found_even_when_the_link_has_other_errors():
    text = mutate('kind = "gprs"\ndtu_id = "13900000001"\nauth = "none"', 'kind = "serial"\ndevice = "/dev/ttyUSB0"\nbaud = 1')
    assert issues(text) == [
        ("sites[1].links[0].baud", "value 1 is not one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200"),
        ("sites[1].links[0].device", "duplicate serial device '/dev/ttyUSB0' (already used at sites[0].links[0].device)"),
    ]


def test_a_repeater_with_a_bad_value_is_still_known_by_name():
    text = mutate('{name="R1"}', '{name="R1", latency_ms=-1}')
    assert issues(text) == [(f"{LINK0}.repeaters[0].latency_ms", "value -1 out of range 0..1000")]
