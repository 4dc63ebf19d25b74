"""The simulator's ground truth, read from ``World.snapshot()`` (no tests here)."""

from __future__ import annotations

from typing import Any


def readings(world: Any) -> dict[str, int]:
    """``"link/cdt/module/input"`` -> reading in base units, from ``world.snapshot()``."""
    out = {}
    for lw in world.snapshot()["links"]:
        for cdt in lw["cdts"]:
            for meter in cdt["meters"]:
                out[f"{lw['name']}/{cdt['address']}/{meter['module']}/{meter['input']}"] = meter["reading"]
    return out


def cdt_of(snapshot: dict, link: str, cdt: int) -> dict:
    """CDT ``cdt`` of ``link`` in a snapshot; ``KeyError`` when there is none."""
    for lk in snapshot["links"]:
        if lk["name"] == link:
            for c in lk["cdts"]:
                if c["address"] == cdt:
                    return c
    raise KeyError((link, cdt))


def meter_of(snapshot: dict, link: str, cdt: int, channel: int) -> dict:
    """The meter on ``channel`` of CDT ``cdt`` of ``link`` in a snapshot; ``KeyError`` when
    there is none."""
    try:
        meters = cdt_of(snapshot, link, cdt)["meters"]
    except KeyError:
        raise KeyError((link, cdt, channel)) from None
    for meter in meters:
        if meter["channel"] == channel:
            return meter
    raise KeyError((link, cdt, channel))
