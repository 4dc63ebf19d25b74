"""Household consumption models: how much water, electricity and gas a meter passes, and when.

A meter's consumption is a *pure function of world time*: ``Consumption.cumulative(t)`` is
the amount (base units: litres for water and gas, Wh for electricity) the household would
have drawn from the fixed epoch :data:`EPOCH` (a Monday, 00:00) up to ``t`` seconds after it.
The rate is piecewise constant per hour of the week (a 168-entry table built from a day
profile per household type, weekends shifted later and a little heavier), scaled per
household and shifted by up to ±1 h so that neighbours do not switch on in lock-step.

Because the function is pure and integrated in closed form (whole weeks times the week's
total plus a prefix sum), the world never runs a timer per meter: a meter is advanced only
when it is observed, and the answer does not depend on how often it was observed.  The same
``seed`` and the same physical place (link, CDT, module, channel) give the same household,
whatever else the topology contains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from st2000r.config.model import MeterKind

EPOCH: Final = datetime(2000, 1, 3)  # a Monday; world times are seconds after it
HOUR: Final = 3600.0
WEEK: Final = 7 * 24 * HOUR

# Day profiles: relative draw per hour 00..23 (normalised below to the daily mean).
_DAY_PROFILES: Final[dict[MeterKind, tuple[tuple[float, ...], ...]]] = {
    MeterKind.WATER: (
        # family: morning and evening peaks, a trickle at night
        (0.4, 0.2, 0.2, 0.2, 0.3, 1.5, 6, 9, 6, 3, 2.5, 3, 4, 3, 2, 2, 2.5, 4, 7, 8, 7, 6, 3.5, 1.5),
        # commuters: nothing while at work
        (0.3, 0.2, 0.1, 0.1, 0.3, 2, 8, 7, 1, 0.3, 0.3, 0.3, 0.4, 0.3, 0.3, 0.3, 0.5, 3, 7, 8, 6, 5, 3, 1),
        # at home all day
        (0.3, 0.2, 0.2, 0.2, 0.2, 0.5, 2, 4, 5, 4.5, 4, 4.5, 5, 4, 3.5, 3.5, 4, 4.5, 5, 4.5, 3.5, 2.5, 1.5, 0.6),
    ),
    MeterKind.ELECTRICITY: (
        # standby and fridge all night, evening peak
        (2, 1.8, 1.7, 1.7, 1.7, 2, 3, 4, 3.5, 3, 3, 3.2, 3.5, 3, 2.8, 2.8, 3.2, 4.5, 6.5, 7.5, 7.5, 7, 5.5, 3.5),
        (1.8, 1.6, 1.6, 1.6, 1.6, 2, 3.5, 4, 2, 1.8, 1.8, 1.8, 1.8, 1.8, 1.8, 1.8, 2.2, 4, 7, 8, 8, 7, 5, 3),
        (2, 1.8, 1.7, 1.7, 1.7, 1.8, 2.5, 3.5, 4, 4.2, 4.5, 5, 5.5, 4.8, 4.5, 4.5, 4.8, 5.5, 6.5, 7, 6.5, 5.5, 4, 2.8),
    ),
    MeterKind.GAS: (
        # cooking: breakfast, lunch, dinner; nothing at night
        (0, 0, 0, 0, 0, 0.5, 5, 6, 2, 0.5, 1, 5, 7, 2, 0.5, 0.5, 1, 5, 10, 8, 3, 1.5, 0.5, 0),
        (0, 0, 0, 0, 0, 1, 6, 5, 0.5, 0, 0, 0, 0, 0, 0, 0, 0.5, 4, 10, 9, 3, 1, 0.3, 0),
        (0, 0, 0, 0, 0, 0.3, 3, 5, 3, 1, 2, 6, 7, 3, 1, 1, 2, 5, 8, 6, 2, 1, 0.3, 0),
    ),
}

#: typical daily draw of a household, base units per day
DAILY_MEAN: Final[dict[MeterKind, float]] = {
    MeterKind.WATER: 320.0,  # litres
    MeterKind.ELECTRICITY: 8_000.0,  # Wh
    MeterKind.GAS: 900.0,  # litres
}

_WEEKEND_SHIFT_H: Final = 1  # people get up later at weekends
_WEEKEND_FACTOR: Final = 1.15
_EMPTY_SHARE: Final = 0.06  # share of empty dwellings (standby or drip only)
_EMPTY_SCALE: Final = 0.03


@dataclass(frozen=True, slots=True)
class WeekProfile:
    """Piecewise-constant rate over one week: ``rate[h]`` base units per hour in hour ``h``
    (0 = Monday 00:00), ``prefix[h]`` the amount drawn before hour ``h``, ``total`` per week."""

    rate: tuple[float, ...]
    prefix: tuple[float, ...]
    total: float


def _week(kind: MeterKind, day: tuple[float, ...]) -> WeekProfile:
    norm = DAILY_MEAN[kind] / sum(day)
    rate: list[float] = []
    for weekday in range(7):
        if weekday >= 5:
            s = _WEEKEND_SHIFT_H
            shifted = day[-s:] + day[:-s]
            rate.extend(v * norm * _WEEKEND_FACTOR for v in shifted)
        else:
            rate.extend(v * norm for v in day)
    prefix = [0.0]
    for r in rate:
        prefix.append(prefix[-1] + r)
    return WeekProfile(tuple(rate), tuple(prefix[:-1]), prefix[-1])


PROFILES: Final[dict[MeterKind, tuple[WeekProfile, ...]]] = {
    kind: tuple(_week(kind, day) for day in days) for kind, days in _DAY_PROFILES.items()
}


class Consumption:
    """One household's draw on one meter: a :class:`WeekProfile` times ``scale``, shifted by
    ``phase_s`` seconds.  Immutable; :meth:`cumulative` is pure."""

    __slots__ = ("profile", "scale", "phase_s", "variant")

    def __init__(self, profile: WeekProfile, scale: float, phase_s: float, variant: int) -> None:
        self.profile = profile
        self.scale = scale
        self.phase_s = phase_s
        self.variant = variant

    def cumulative(self, t: float) -> float:
        """Base units drawn from :data:`EPOCH` to ``t`` (seconds after EPOCH, ``t`` >= 0)."""
        p = self.profile
        weeks, r = divmod(t + self.phase_s, WEEK)
        h = int(r // HOUR)
        if h > 167:  # float edge at the very end of a week
            h = 167
        return self.scale * (weeks * p.total + p.prefix[h] + p.rate[h] * (r - h * HOUR) / HOUR)

    def rate_per_hour(self, t: float) -> float:
        """Base units per hour at ``t`` (seconds after EPOCH)."""
        r = (t + self.phase_s) % WEEK
        return self.scale * self.profile.rate[min(int(r // HOUR), 167)]


def household(seed: int, link: str, cdt: int, module: int, channel: int, kind: MeterKind) -> Consumption:
    """The deterministic household model of the meter at this physical place.

    Depends only on ``seed`` and the place, never on the rest of the topology.  ``scale``
    is spread 0.4–2.2 around the kind's :data:`DAILY_MEAN` (6 % of dwellings are empty,
    drawing 3 %); ``phase_s`` is within ±3600 s.
    """
    digest = hashlib.blake2b(
        f"{seed}/{link}/{cdt}/{module}/{channel}".encode(), digest_size=16
    ).digest()
    u1 = int.from_bytes(digest[0:4], "little") / 2**32
    u2 = int.from_bytes(digest[4:8], "little") / 2**32
    u3 = int.from_bytes(digest[8:12], "little") / 2**32
    profiles = PROFILES[kind]
    variant = digest[12] % len(profiles)
    if u1 < _EMPTY_SHARE:
        scale = _EMPTY_SCALE
    else:
        scale = 0.4 + 1.8 * u2 * u2  # skewed: most households below the mean
    phase = (u3 * 2.0 - 1.0) * HOUR
    return Consumption(profiles[variant], scale, phase, variant)
