"""CJ/T 188 unit codes and exact conversion to the project's integer base units.

A quantity on the wire is a BCD integer with a fixed number of decimals plus a unit code.
The project keeps quantities as integers of a base unit (litres, Wh, J, W, L/h); converting
uses Decimal so that nothing on the way to a bill is ever a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final


@dataclass(frozen=True, slots=True)
class Unit:
    code: int
    symbol: str
    base: str  # base unit symbol
    factor: int  # base units per 1 of this unit


UNITS: Final[dict[int, Unit]] = {
    u.code: u
    for u in (
        Unit(0x01, "J", "J", 1),
        Unit(0x02, "Wh", "Wh", 1),
        Unit(0x03, "Wh×10", "Wh", 10),
        Unit(0x04, "Wh×100", "Wh", 100),
        Unit(0x05, "kWh", "Wh", 1_000),
        Unit(0x06, "kWh×10", "Wh", 10_000),
        Unit(0x07, "kWh×100", "Wh", 100_000),
        Unit(0x08, "MWh", "Wh", 1_000_000),
        Unit(0x09, "MWh×10", "Wh", 10_000_000),
        Unit(0x0A, "MWh×100", "Wh", 100_000_000),
        Unit(0x0B, "kJ", "J", 1_000),
        Unit(0x0C, "kJ×10", "J", 10_000),
        Unit(0x0D, "kJ×100", "J", 100_000),
        Unit(0x0E, "MJ", "J", 10**6),
        Unit(0x0F, "MJ×10", "J", 10**7),
        Unit(0x10, "MJ×100", "J", 10**8),
        Unit(0x11, "GJ", "J", 10**9),
        Unit(0x12, "GJ×10", "J", 10**10),
        Unit(0x13, "GJ×100", "J", 10**11),
        Unit(0x14, "W", "W", 1),
        Unit(0x15, "W×10", "W", 10),
        Unit(0x16, "W×100", "W", 100),
        Unit(0x17, "kW", "W", 1_000),
        Unit(0x18, "kW×10", "W", 10_000),
        Unit(0x19, "kW×100", "W", 100_000),
        Unit(0x1A, "MW", "W", 10**6),
        Unit(0x1B, "MW×10", "W", 10**7),
        Unit(0x1C, "MW×100", "W", 10**8),
        Unit(0x29, "L", "L", 1),
        Unit(0x2A, "L×10", "L", 10),
        Unit(0x2B, "L×100", "L", 100),
        Unit(0x2C, "m³", "L", 1_000),
        Unit(0x2D, "m³×10", "L", 10_000),
        Unit(0x2E, "m³×100", "L", 100_000),
        Unit(0x32, "L/h", "L/h", 1),
        Unit(0x33, "L/h×10", "L/h", 10),
        Unit(0x34, "L/h×100", "L/h", 100),
        Unit(0x35, "m³/h", "L/h", 1_000),
        Unit(0x36, "m³/h×10", "L/h", 10_000),
        Unit(0x37, "m³/h×100", "L/h", 100_000),
    )
}

M3: Final = 0x2C
LITRE: Final = 0x29
KWH: Final = 0x05
WH: Final = 0x02


@dataclass(frozen=True, slots=True)
class Quantity:
    """``value`` × 10^-``decimals`` of the unit with CJ/T 188 code ``unit``.

    ``value`` is the BCD integer exactly as sent (e.g. 123456 with 2 decimals = 1234.56).
    """

    value: int
    unit: int
    decimals: int = 2

    @property
    def decimal(self) -> Decimal:
        return Decimal(self.value).scaleb(-self.decimals)

    @property
    def symbol(self) -> str:
        u = UNITS.get(self.unit)
        return u.symbol if u else f"unit {self.unit:02X}h"

    def to_base(self) -> tuple[Decimal, str] | None:
        """(amount, base unit symbol), or None for an unknown unit code.

        The amount is integral whenever the unit is at least 10^decimals base units
        (m³ with 2 decimals -> whole litres; kWh -> whole Wh).
        """
        u = UNITS.get(self.unit)
        if u is None:
            return None
        amount = (Decimal(self.value) * u.factor).scaleb(-self.decimals)
        if amount == amount.to_integral_value():
            amount = amount.quantize(Decimal(1))
        return amount, u.base
