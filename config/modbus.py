"""``[modbus]``: the checks and parsers of the Modbus bridge's settings.

Kept apart from ``schema`` (which names these checks) and ``sections`` (which builds
``ModbusSettings``) so neither grows a Modbus-specific corner.  Pure functions of single
values: they return a reason string, or None when the value is good.

- ``tcp``: ``"IP:PORT"`` (IPv6 as ``"[::1]:1502"``); the interface is an IP address, never a
  host name, so what is bound is exactly what is written (``0.0.0.0`` or ``::`` must be
  written out to listen everywhere); port 0..65535 (0: any free port, for tests and demos);
- ``write_allow``: IP addresses or networks (``"10.0.0.0/8"``), normalised to networks;
- ``units``: a table link name -> first unit id, 1..247 - ``UNITS_PER_LINK`` + 1.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from st2000r.config.values import show

__all__ = ["UNITS_PER_LINK", "MAX_CLIENTS", "check_listen", "parse_listen", "parse_network", "check_first_unit"]

#: unit ids a link spans on the map (64 CDT slots per unit, 256 CDTs per link)
UNITS_PER_LINK = 4
#: the highest unit id Modbus allows for a slave
MAX_UNIT = 247
#: bound of ``max_clients``
MAX_CLIENTS = 1000


def parse_listen(value: str) -> tuple[tuple[str, int] | None, str | None]:
    """``((ip, port), None)`` for ``"IP:PORT"`` / ``"[IPv6]:PORT"``, else ``(None, reason)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return None, f"value{show(value)} is not IP:PORT, e.g. \"127.0.0.1:1502\" or \"[::1]:1502\""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None, (f"value{show(value)}: interface {host!r} is not an IP address (write the address to "
                      "bind, or 0.0.0.0 for every interface)")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        return None, f"value{show(value)}: port {port!r} is not a TCP port 0..65535"
    return (str(ip), int(port)), None


def check_listen(value: str) -> str | None:
    return parse_listen(value)[1]


def parse_network(value: Any) -> tuple[str | None, str | None]:
    """``(normalised network, None)`` for an IP address or network string, else ``(None, reason)``."""
    if type(value) is not str:
        return None, f"wrong type: expected string (IP address or network){show(value)}"
    try:
        return str(ipaddress.ip_network(value, strict=False)), None
    except ValueError:
        return None, f"value{show(value)} is not an IP address or network, e.g. \"127.0.0.1\" or \"10.0.0.0/8\""


def check_first_unit(value: Any) -> str | None:
    """A link's first unit id: the link takes ``UNITS_PER_LINK`` ids from it."""
    top = MAX_UNIT - UNITS_PER_LINK + 1
    if type(value) is not int:
        return f"wrong type: expected integer (first unit id 1..{top}){show(value)}"
    if not 1 <= value <= top:
        return f"value {value} out of range 1..{top} (a link takes {UNITS_PER_LINK} unit ids from its first)"
    return None
