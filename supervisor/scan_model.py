"""What a commissioning scan finds: the report and its parts, as frozen values.

Produced by ``st2000r.supervisor.scan_core.Scanner``, rendered by
``st2000r.supervisor.scan_render``; ``ScanReport.to_dict`` is the JSON document of
``st2000r scan --json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from st2000r.config.model import MeterKind

__all__ = [
    "ADDRESS_MAX",
    "Progress",
    "FoundChannel",
    "FoundCdt",
    "MeterCheck",
    "DeviceQuality",
    "BroadcastResult",
    "Difference",
    "ScanReport",
    "parse_addresses",
    "kind_of_meter_type",
]

ADDRESS_MAX: Final = 99_999_999

# --------------------------------------------------------------------------- values


def kind_of_meter_type(meter_type: int) -> MeterKind | None:
    """The pulse-meter kind of a CJ/T 188 meter type: 10h-19h water, 30h-39h gas,
    40h-49h electricity; None for anything else (0 = not fitted, 20h-29h heat ...)."""
    if 0x10 <= meter_type <= 0x19:
        return MeterKind.WATER
    if 0x30 <= meter_type <= 0x39:
        return MeterKind.GAS
    if 0x40 <= meter_type <= 0x49:
        return MeterKind.ELECTRICITY
    return None



@dataclass(frozen=True, slots=True)
class Progress:
    """Where the scan is: ``done`` of ``total`` modelled seconds of bus work (``total``
    grows as CDTs are found), ``elapsed_s`` clock seconds since the start, ``eta_s``
    estimated seconds left (None before the first transaction), ``phase`` in words."""

    done: float
    total: float
    elapsed_s: float
    eta_s: float | None
    phase: str

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


@dataclass(frozen=True, slots=True)
class FoundChannel:
    """A fitted channel as the CDT reports it.  ``channel`` 1..96 = (module-1)*3 + input;
    ``kind`` None for a meter type that is not a pulse meter kind."""

    channel: int
    module: int
    input: int
    meter_type: int
    kind: MeterKind | None
    serial: str
    pulse_constant: int


@dataclass(frozen=True, slots=True)
class FoundCdt:
    """A CDT that answered.  ``modules``: module numbers present; ``channels``: fitted
    channels of those modules (None when the channel info could not be read);
    ``alarms``: channel -> alarm names (None when the alarms could not be read)."""

    address: int
    configured: bool
    modules: tuple[int, ...]
    mains: bool
    battery_low: bool
    battery_mv: int
    firmware: tuple[int, int]
    channels: tuple[FoundChannel, ...] | None
    alarms: tuple[tuple[int, tuple[str, ...]], ...] | None


@dataclass(frozen=True, slots=True)
class MeterCheck:
    """``ReadData`` of one configured meter: ``outcome`` ``"ok"``, ``"silent"`` (no valid
    reply) or ``"error"`` (an abnormal reply); ``detail`` says what was read or why not."""

    serial: str
    cdt: int
    module: int
    input: int
    outcome: str
    detail: str


@dataclass(frozen=True, slots=True)
class DeviceQuality:
    """Reply quality of one device address from the master's device statistics; round
    trips in seconds (None without a reply)."""

    address: str
    role: str
    requests: int
    replies: int
    timeouts: int
    retries: int
    checksum_errors: int
    crc_errors: int
    rtt_p50_s: float | None
    rtt_p99_s: float | None


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    """The 810A broadcast to ``meter_type``: ``outcome`` ``"none"`` (silence), ``"one"``
    (``address`` answered) or ``"several"`` (a garbled reply: several meters answer)."""

    meter_type: int
    outcome: str
    address: str | None


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the bus differs from the configuration.

    ``kind``: ``missing_cdt``, ``unexpected_cdt``, ``missing_module``, ``unexpected_module``,
    ``missing_meter``, ``unexpected_meter``, ``wrong_kind``, ``serial_mismatch``,
    ``pulse_constant_mismatch``, ``channel_info_unread``, ``alarms_unread``, ``alarm``,
    ``mains_lost``, ``battery_low``, ``meter_silent``, ``meter_error``,
    ``unexpected_standard_meter``, ``link_down`` (the link dropped during the scan).  ``cdt``/``module``/``channel`` (input 1..3) locate it
    where they apply; ``detail`` is one line for humans.
    """

    kind: str
    cdt: int | None
    module: int | None
    channel: int | None
    detail: str

    @property
    def where(self) -> str:
        parts = []
        if self.cdt is not None:
            parts.append(f"CDT {self.cdt}")
        if self.module is not None:
            parts.append(f"module {self.module}")
        if self.channel is not None:
            parts.append(f"channel {self.channel}")
        return " ".join(parts) or "bus"


@dataclass(frozen=True, slots=True)
class ScanReport:
    """The outcome of one scan of ``link``.  ``started``/``ended``: clock seconds;
    ``addresses``: how many CDT addresses were tried; ``broadcasts``: the 810A broadcasts
    (empty when skipped).  ``matches`` is true when there is no difference."""

    link: str
    started: float
    ended: float
    addresses: int
    cdts: tuple[FoundCdt, ...]
    meter_checks: tuple[MeterCheck, ...]
    broadcasts: tuple[BroadcastResult, ...]
    differences: tuple[Difference, ...]
    notes: tuple[str, ...]
    quality: tuple[DeviceQuality, ...]
    transactions: int

    @property
    def matches(self) -> bool:
        return not self.differences

    def found(self, address: int) -> FoundCdt:
        """The CDT found at ``address``; raises ``KeyError``."""
        for cdt in self.cdts:
            if cdt.address == address:
                return cdt
        raise KeyError(f"no CDT {address} was found")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (kinds as their configuration spelling)."""

        def conv(value: Any) -> Any:
            if isinstance(value, MeterKind):
                return value.value
            if isinstance(value, dict):
                return {k: conv(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [conv(v) for v in value]
            return value

        out = conv(asdict(self))
        for cdt in out["cdts"]:
            if cdt["alarms"] is not None:
                cdt["alarms"] = {str(ch): list(names) for ch, names in cdt["alarms"]}
        out["matches"] = self.matches
        for d, diff in zip(out["differences"], self.differences):
            d["where"] = diff.where
        return out


# --------------------------------------------------------------------------- addresses


def parse_addresses(text: str) -> tuple[int, ...]:
    """``"1-256"``, ``"1-32,40,100-120"`` -> sorted unique addresses in 1..99999999.
    Raises ``ValueError`` naming the bad part."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty part in address list {text!r}")
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"{part!r} is not an address or a range like 1-256") from None
        if not 1 <= lo <= hi <= ADDRESS_MAX:
            raise ValueError(f"range {part!r} must satisfy 1 <= first <= last <= {ADDRESS_MAX}")
        if hi - lo > 100_000:
            raise ValueError(f"range {part!r} is too large to scan (at most 100001 addresses)")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))

