"""Small TOML configurations shared by the test folders (text: each test loads it with
the real loader).

``FLAT`` is the usual three-meter flat template; ``site`` a site header; ``GSM_SITE`` the
smallest GSM link; ``ONE_WATER_METER`` a CDT with one water meter for the link above it.
``braced`` escapes a piece for a ``str.format`` pattern.
"""

from __future__ import annotations

#: the flat template: 1 water (10 l/pulse), 2 electricity (1), 3 gas (10)
FLAT = """
[templates.flat]
channels = [
  { channel = 1, kind = "water",       pulse_constant = 10 },
  { channel = 2, kind = "electricity", pulse_constant = 1 },
  { channel = 3, kind = "gas",         pulse_constant = 10 },
]
"""


def site(name: str, address: str) -> str:
    """The ``[[sites]]`` header of a site."""
    return f'\n[[sites]]\nname = "{name}"\naddress = "{address}"\n'


#: one GSM link ``g`` (modem /dev/null, number 123) on site ``S``, no CDTs
GSM_SITE = '''
[[sites]]
name = "S"
address = "A"
[[sites.links]]
name = "g"
kind = "gsm"
modem = "/dev/null"
number = "123"
'''

#: CDT 1 with module 1 holding one water meter (serial "1"), for the link above it
ONE_WATER_METER = '''[[sites.links.cdts]]
address = 1
[[sites.links.cdts.modules]]
module = 1
channels = [ { channel = 1, kind = "water", pulse_constant = 10, serial = "1" } ]
'''


def braced(text: str) -> str:
    """``text`` with its braces doubled, to stand as itself inside a ``str.format`` pattern."""
    return text.replace("{", "{{").replace("}", "}}")
