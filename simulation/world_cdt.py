"""One simulated CDT: mains and battery, clock offset, alarms per channel, silence (no I/O).

The battery is linear between power events (the rules in ``world.py``'s module
docstring); a CDT is silent behind a failed repeater, on an empty battery, or when told
not to answer.  Times are world abs seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from st2000r.config.model import Cdt
from st2000r.drivers.st2000r.messages import AlarmFlag

if TYPE_CHECKING:
    from st2000r.simulation.world import LinkWorld
    from st2000r.simulation.world_meter import MeterState

__all__ = ["CdtState", "alarm_names", "BATTERY_HOURS_32", "FIRMWARE"]

BATTERY_HOURS_32: Final = 36.0  # battery life with 32 modules (brochure)
RECHARGE_S: Final = 12 * 3600.0  # empty to full on mains, world seconds
BATTERY_FULL_MV: Final = 12_600
BATTERY_EMPTY_MV: Final = 10_800
BATTERY_LOW_FRACTION: Final = 0.20
FIRMWARE: Final = (2, 1)  # what CDTs report in CdtStatus

FLAG_OF_NAME: Final = {"tamper": AlarmFlag.TAMPER, "short": AlarmFlag.SHORT, "open": AlarmFlag.OPEN}


def alarm_names(flags: AlarmFlag) -> list[str]:
    """``["tamper", "short", "open"]`` subset in that order."""
    return [name for name, flag in FLAG_OF_NAME.items() if flags & flag]



class CdtState:
    """A CDT: power and battery, clock, alarms per channel, silence faults."""

    __slots__ = (
        "config", "link", "address", "bcd_address", "name", "path", "latency_s",
        "channels", "modules", "alarms", "no_answer", "late_ms", "clock_offset_s",
        "_mains", "_charge", "_charge_at", "_capacity_s",
    )  # fmt: skip

    def __init__(self, config: Cdt, link: LinkWorld, path: tuple[str, ...], latency_s: float, t0: float) -> None:
        self.config = config
        self.link = link
        self.address = config.address
        self.bcd_address = config.bcd_address
        self.name = config.name
        self.path = path  # repeater names from the CDT's own repeater up to the bus
        self.latency_s = latency_s  # one way, sum over the path
        self.channels: dict[int, MeterState] = {}
        self.modules = frozenset(m.number for m in config.modules)
        self.alarms: dict[int, AlarmFlag] = {}
        self.no_answer = False
        self.late_ms = 0
        self.clock_offset_s = 0.0
        self._mains = True
        self._charge = 1.0
        self._charge_at = t0
        self._capacity_s = BATTERY_HOURS_32 * 32 / max(1, len(self.modules)) * 3600.0

    # ---------------------------------------------------------------- power

    @property
    def mains(self) -> bool:
        return self._mains

    def charge(self, t: float) -> float:
        """Battery charge 0..1 at ``t``."""
        dt = t - self._charge_at
        if self._mains:
            return min(1.0, self._charge + dt / RECHARGE_S)
        return max(0.0, self._charge - dt / self._capacity_s)

    def battery_mv(self, t: float) -> int:
        return round(BATTERY_EMPTY_MV + (BATTERY_FULL_MV - BATTERY_EMPTY_MV) * self.charge(t))

    def battery_low(self, t: float) -> bool:
        return self.charge(t) < BATTERY_LOW_FRACTION

    def set_mains(self, t: float, mains: bool) -> None:
        self._charge = self.charge(t)
        self._charge_at = t
        self._mains = mains

    def battery_hours(self) -> float:
        """Full-battery life in world hours for this CDT's module count."""
        return self._capacity_s / 3600.0

    # ---------------------------------------------------------------- silence

    def silent_reason(self, t: float) -> str | None:
        """Why the CDT does not answer at ``t``: "repeater", "battery", "no_answer" or None."""
        failed = self.link.failed_repeaters
        if failed and any(name in failed for name in self.path):
            return "repeater"
        if not self._mains and self.charge(t) <= 0.0:
            return "battery"
        if self.no_answer:
            return "no_answer"
        return None

    def silent(self, t: float) -> bool:
        return self.silent_reason(t) is not None

    def alarm(self, channel: int) -> AlarmFlag:
        return self.alarms.get(channel, AlarmFlag.NONE)
