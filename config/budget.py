"""The meter budget: how many meters a file's templates and ranges would expand to,
counted from the parsed TOML before any object is built.

A few hundred bytes of ranges and templates can describe millions of meters (a 192 KB file
once expanded to 4.9 million and took over a minute), so the loader counts first and
refuses a file over ``MAX_METERS`` with one issue naming the limit.  The count is an upper
bound of what validation would build: it follows the same per-link and per-CDT limits
(a link expands at most 256 CDTs, a CDT at most 32 modules of 3 channels) and skips
malformed values, which validation reports on its own.
"""

from __future__ import annotations

from typing import Any

from st2000r.config.values import (
    CDT_ADDRESS_MAX,
    MAX_CDTS_PER_LINK,
    MAX_CHANNELS_PER_MODULE,
    MAX_MODULES_PER_CDT,
    parse_range,
    span_count,
)

__all__ = ["count_meters"]

_PER_CDT = MAX_MODULES_PER_CDT * MAX_CHANNELS_PER_MODULE
_PER_LINK = MAX_CDTS_PER_LINK * _PER_CDT


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else []


def _count(value: Any, lo: int, hi: int) -> int:
    """Numbers in a range value; 0 when it is malformed (reported by validation)."""
    if type(value) not in (int, str):
        return 0
    spans, _ = parse_range(value, lo, hi)
    return span_count(spans) if spans else 0


def _template_sizes(data: dict[str, Any]) -> dict[str, int]:
    templates = data.get("templates")
    if type(templates) is not dict:
        return {}
    return {name: min(len(_list(body.get("channels"))), MAX_CHANNELS_PER_MODULE)
            for name, body in templates.items() if type(body) is dict}


def _entry_meters(entry: dict[str, Any], sizes: dict[str, int]) -> int:
    """Meters of one module range (or one templated module: ``modules`` absent, one module)."""
    per_module = sizes.get(entry.get("template"), 0) if type(entry.get("template")) is str else 0
    if "modules" not in entry:
        return per_module
    return _count(entry["modules"], 1, MAX_MODULES_PER_CDT) * per_module


def _cdt_meters(cdt: dict[str, Any], sizes: dict[str, int]) -> int:
    total = 0
    for module in _list(cdt.get("modules")):
        if type(module) is dict:
            channels = module.get("channels")
            total += min(len(channels), MAX_CHANNELS_PER_MODULE) if type(channels) is list \
                else _entry_meters({"template": module.get("template")}, sizes)
    for entry in _list(cdt.get("module_ranges")):
        if type(entry) is dict:
            total += _entry_meters(entry, sizes)
    return min(total, _PER_CDT)


def _link_meters(link: dict[str, Any], sizes: dict[str, int]) -> int:
    total = 0
    for entry in _list(link.get("cdt_ranges")):
        if type(entry) is dict:
            cdts = min(_count(entry.get("addresses"), 1, CDT_ADDRESS_MAX), MAX_CDTS_PER_LINK)
            total += cdts * min(_entry_meters(entry, sizes), _PER_CDT)
    for cdt in _list(link.get("cdts")):
        if type(cdt) is dict:
            total += _cdt_meters(cdt, sizes)
    return min(total, _PER_LINK)


def count_meters(data: dict[str, Any]) -> int:
    """Upper bound of the meters the parsed file ``data`` defines; never raises."""
    sizes = _template_sizes(data)
    total = 0
    for site in _list(data.get("sites")):
        if type(site) is dict:
            for link in _list(site.get("links")):
                if type(link) is dict:
                    total += _link_meters(link, sizes)
    return total
