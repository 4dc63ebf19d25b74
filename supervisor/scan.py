"""Commissioning scan: walk one field bus and compare what answers with the configuration.

``st2000r scan CONFIG --link NAME`` is what a field engineer runs right after wiring a
community.  :class:`Scanner` does the walk over a :class:`~st2000r.drivers.st2000r.master.BusMaster`
(time from the injected clock only); :func:`main` is the command around it.

The walk, one transaction at a time:

1. **CDT addresses** -- every configured address of the link, then the search range
   (default 1-256): ``ReadCdtStatus`` with one try plus one retry; the timeout is the
   master's timing model (configured CDTs with their repeater latency, unknown addresses
   with the largest repeater latency of the link, so a CDT behind a repeater is found).
2. **Each CDT found** -- module inventory (``CdtStatus.modules``), ``ReadChannelInfo`` over
   the channels of its modules present (meter type, serial, pulse constant), ``ReadAlarms``.
3. **Standard CJ/T 188 meters** -- ``ReadData`` of a sample of the configured meter serials
   (all with ``meters="all"``) whose channel the CDT reports as configured, and a broadcast
   ``ReadAddress`` (810A) per meter type (10h water, 30h gas, 40h electricity; not AAh,
   which every CDT answers too) that finds a lone standard meter.  A garbled reply means
   several meters answer at once -- normal on an ST2000R bus, where each CDT answers for
   its meters: a note, not a difference.  A single answer from an address that is neither
   configured nor found behind a CDT is an unexpected standard meter.

The :class:`ScanReport` lists :class:`Difference` s (exit status 1 when there is any) and
notes; alarms present (tamper / short / open per channel, mains lost or battery low per CDT)
count as differences: a freshly wired bus should have none.

Exit status of :func:`main`: 0 the bus matches the configuration, 1 differences found,
2 bad input (configuration error, unknown link, bad option, device cannot be opened).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import IO, Any, Final

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from st2000r.config.model import (
    Cdt,
    LineSettings,
    Link,
    Meter,
    MeterKind,
    SerialEndpoint,
    TcpEndpoint,
    Topology,
)
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import BROADCAST
from st2000r.drivers.st2000r.master import BusMaster, LinkDown, Priority, TransactionError, TransactionTimeout
from st2000r.drivers.st2000r.timing import hops_latency_s, max_reply_size

__all__ = [
    "ADDRESS_MAX",
    "Progress",
    "FoundChannel",
    "FoundCdt",
    "MeterCheck",
    "DeviceQuality",
    "Difference",
    "ScanReport",
    "Scanner",
    "ProgressBar",
    "parse_addresses",
    "kind_of_meter_type",
    "render_text",
    "draft_config",
    "main",
]

log = Logger()

ADDRESS_MAX: Final = 99_999_999
DEFAULT_SAMPLE: Final = 8  # configured meters verified with ReadData unless meters="all"
_BROADCAST_TYPES: Final = (0x10, 0x30, 0x40)  # water, gas, electricity (AAh: every CDT answers too)
_METER_TYPE: Final = {MeterKind.WATER: 0x10, MeterKind.GAS: 0x30, MeterKind.ELECTRICITY: 0x40}
_ALARM_NAMES: Final = ((m.AlarmFlag.TAMPER, "tamper"), (m.AlarmFlag.SHORT, "short"), (m.AlarmFlag.OPEN, "open"))


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


def _alarm_names(flags: int) -> tuple[str, ...]:
    return tuple(name for flag, name in _ALARM_NAMES if flags & flag)


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


def _ranges(channels: Iterable[int], limit: int) -> tuple[tuple[int, int], ...]:
    """(first, count) ranges of at most ``limit`` channels covering ``channels``."""
    chans = sorted(set(channels))
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(chans):
        first = chans[i]
        last = first
        while i < len(chans) and chans[i] - first < limit:
            last = chans[i]
            i += 1
        out.append((first, last - first + 1))
    return tuple(out)


# --------------------------------------------------------------------------- scanner


class Scanner:
    """Walks one bus through ``master`` (see the module docstring for the steps).

    ``addresses``: the search range (configured addresses are always tried, first);
    ``on_progress``: called with a :class:`Progress` after each transaction (must not
    raise; errors are logged); ``meters``: ``"sample"`` (up to ``sample`` configured
    meters spread over the CDTs found) or ``"all"``; ``broadcast``: send the 810A broadcasts.
    :meth:`run` never errbacks for bus problems: silence is a finding.
    """

    def __init__(
        self,
        link: Link,
        master: BusMaster,
        clock: IReactorTime,
        *,
        addresses: Iterable[int] = range(1, 257),
        on_progress: Callable[[Progress], None] | None = None,
        meters: str = "sample",
        sample: int = DEFAULT_SAMPLE,
        broadcast: bool = True,
    ) -> None:
        if meters not in ("sample", "all"):
            raise ValueError(f"meters must be 'sample' or 'all', got {meters!r}")
        self.link = link
        self.master = master
        self.clock = clock
        configured = [c.address for c in link.cdts]
        extra = sorted(set(addresses) - set(configured))
        self.addresses: tuple[int, ...] = tuple(configured) + tuple(extra)
        self.on_progress = on_progress
        self.meters = meters
        self.sample = sample
        self.broadcast = broadcast
        self.timing = master.timing
        self._max_hops = max((hops_latency_s(link, r.name) for r in link.repeaters), default=0.0)
        self._done = 0.0
        self._total = 0.0
        self._started = 0.0
        self._phase = ""
        self._transactions = 0
        self._link_down = 0

    # ---------------------------------------------------------------- cost model

    def _cost(self, request: m.Message, *, answered: bool, hops: float = 0.0, attempts: int = 2) -> float:
        """Modelled bus seconds of one transaction: answered -> gap + request + turnaround
        + repeaters + reply; unanswered -> ``attempts`` x (gap + model timeout)."""
        t = self.timing
        q = len(m.encode(request, self.master.preamble))
        r = max_reply_size(request)
        if answered:
            return t.gap_s + t.wire_time(q + r) + t.turnaround_s + 2 * hops
        return attempts * (t.gap_s + t.reply_timeout(q, r, hops))

    def _status_cost(self, address: int) -> float:
        req = m.ReadCdtStatus(meter_type=m.CDT_TYPE, address=f"{address:014d}")
        try:
            cdt = self.link.cdt(address)
        except KeyError:
            return self._cost(req, answered=False, hops=self._max_hops)
        return self._cost(req, answered=True, hops=hops_latency_s(self.link, cdt.repeater))

    def _cdt_detail_cost(self, modules: Iterable[int], hops: float) -> float:
        addr = "00000000000001"
        chans = [(mod - 1) * 3 + i for mod in modules for i in (1, 2, 3)]
        cost = self._cost(m.ReadAlarms(meter_type=m.CDT_TYPE, address=addr), answered=True, hops=hops)
        for first, count in _ranges(chans, m.MAX_INFO):
            req = m.ReadChannelInfo(meter_type=m.CDT_TYPE, address=addr, first_channel=first, count=count)
            cost += self._cost(req, answered=True, hops=hops)
        return cost

    def _meter_cost(self) -> float:
        return self._cost(m.ReadData(meter_type=0x10, address="00000000000001"), answered=True)

    def _progress(self, phase: str | None = None) -> None:
        if phase is not None:
            self._phase = phase
        if self.on_progress is None:
            return
        elapsed = self.clock.seconds() - self._started
        eta = None
        if self._done > 0:
            rate = elapsed / self._done if elapsed > 0 else 1.0
            eta = max(0.0, (self._total - self._done) * rate)
        try:
            self.on_progress(Progress(self._done, self._total, elapsed, eta, self._phase))
        except Exception:
            log.failure("scan: progress callback failed")

    async def _transact(self, request: m.Message, *, retries: int, hops: float) -> m.Message | TransactionError:
        self._transactions += 1
        try:
            return await self.master.transact(
                request, priority=Priority.STATUS, retries=retries, hops_latency_s=hops
            )
        except TransactionError as exc:
            if isinstance(exc, LinkDown):
                self._link_down += 1
            return exc

    # ---------------------------------------------------------------- the walk

    def run(self) -> defer.Deferred:
        """Scan the bus; fires with a :class:`ScanReport`."""
        return defer.ensureDeferred(self._run())

    async def _run(self) -> ScanReport:
        link = self.link
        self._started = self.clock.seconds()
        self._total = sum(self._status_cost(a) for a in self.addresses)
        # the detail of every configured CDT is expected too
        for cdt in link.cdts:
            self._total += self._cdt_detail_cost((mod.number for mod in cdt.modules), hops_latency_s(link, cdt.repeater))
        n_meters = link.meter_count()
        expected_checks = n_meters if self.meters == "all" else min(self.sample, n_meters)
        self._total += expected_checks * self._meter_cost()
        if self.broadcast:
            req = m.ReadAddress(meter_type=0x10, address=BROADCAST)
            self._total += len(_BROADCAST_TYPES) * self._cost(req, answered=False)
        self._progress("CDT addresses")

        statuses: dict[int, m.CdtStatus] = {}
        for address in self.addresses:
            try:
                hops = hops_latency_s(link, link.cdt(address).repeater)
            except KeyError:
                hops = self._max_hops
            req = m.ReadCdtStatus(meter_type=m.CDT_TYPE, address=f"{address:014d}", di_order=_order(link))
            reply = await self._transact(req, retries=1, hops=hops)
            answered = isinstance(reply, m.CdtStatus)
            expected = self._status_cost(address)
            actual = self._cost(req, answered=answered, hops=hops)
            self._total += actual - expected
            self._done += actual
            if answered:
                statuses[address] = reply
                if not _configured(link, address):
                    self._total += self._cdt_detail_cost(reply.modules, hops)
            elif _configured(link, address):
                cdt = link.cdt(address)
                self._total -= self._cdt_detail_cost((mod.number for mod in cdt.modules), hops)
            self._progress()

        found: list[FoundCdt] = []
        self._progress("modules and channels")
        for address, status in sorted(statuses.items()):
            found.append(await self._detail(address, status))

        checks = await self._check_meters(found)
        # device quality before the broadcasts: a direct 810A checking a garbled single answer
        # may address a CDT's number and would blur its row
        quality = self._quality(found, checks)
        broadcasts: list[BroadcastResult] = []
        if self.broadcast:
            self._progress("broadcast read-address")
            for meter_type in _BROADCAST_TYPES:
                broadcasts.append(await self._broadcast(meter_type))
                self._done += self._cost(m.ReadAddress(meter_type=meter_type, address=BROADCAST), answered=False)
                self._progress()
        self._done = self._total
        self._progress()
        if self.broadcast:
            quality += (self._row(BROADCAST, "broadcast"),)
        return self._report(found, checks, tuple(broadcasts), quality)

    async def _detail(self, address: int, status: m.CdtStatus) -> FoundCdt:
        link = self.link
        configured = _configured(link, address)
        hops = hops_latency_s(link, link.cdt(address).repeater) if configured else self._max_hops
        bcd = f"{address:014d}"
        order = _order(link)
        modules = tuple(sorted(status.modules))
        chans = [(mod - 1) * 3 + i for mod in modules for i in (1, 2, 3)]
        channels: list[FoundChannel] | None = []
        for first, count in _ranges(chans, m.MAX_INFO):
            req = m.ReadChannelInfo(meter_type=m.CDT_TYPE, address=bcd, first_channel=first, count=count, di_order=order)
            reply = await self._transact(req, retries=2, hops=hops)
            self._done += self._cost(req, answered=True, hops=hops)
            self._progress()
            if not isinstance(reply, m.ChannelInfoReply):
                channels = None
                break
            for k, info in enumerate(reply.channels):
                n = reply.first_channel + k
                module, inp = (n - 1) // 3 + 1, (n - 1) % 3 + 1
                if info.meter_type == 0 or module not in status.modules:
                    continue
                channels.append(FoundChannel(n, module, inp, info.meter_type, kind_of_meter_type(info.meter_type),
                                             info.serial, info.pulse_constant))  # fmt: skip
        req_alarms = m.ReadAlarms(meter_type=m.CDT_TYPE, address=bcd, di_order=order)
        reply = await self._transact(req_alarms, retries=2, hops=hops)
        self._done += self._cost(req_alarms, answered=True, hops=hops)
        self._progress()
        alarms: tuple[tuple[int, tuple[str, ...]], ...] | None = None
        if isinstance(reply, m.AlarmsReply):
            alarms = tuple((n, _alarm_names(flags)) for n, flags in enumerate(reply.alarms, start=1) if flags)
        return FoundCdt(
            address=address, configured=configured, modules=modules, mains=status.mains,
            battery_low=status.battery_low, battery_mv=status.battery_mv, firmware=tuple(status.firmware),
            channels=None if channels is None else tuple(channels), alarms=alarms,
        )  # fmt: skip

    def _meters_to_check(self, found: list[FoundCdt]) -> list[tuple[int, int, int, Meter]]:
        # only meters the CDT reports as configured: the other channels are reported already
        fitted = {(c.address, ch.module, ch.input, ch.serial, ch.kind) for c in found for ch in c.channels or ()}
        candidates = [(a, mod, inp, meter) for a, mod, inp, meter in self.link.meters()
                      if (a, mod, inp, meter.serial, meter.kind) in fitted]  # fmt: skip
        if self.meters == "all" or len(candidates) <= self.sample:
            return candidates
        if self.sample <= 0:
            return []
        step = len(candidates) / self.sample
        return [candidates[int(i * step)] for i in range(self.sample)]

    async def _check_meters(self, found: list[FoundCdt]) -> list[MeterCheck]:
        todo = self._meters_to_check(found)
        n_meters = self.link.meter_count()
        expected = n_meters if self.meters == "all" else min(self.sample, n_meters)
        self._total += (len(todo) - expected) * self._meter_cost()
        if todo:
            self._progress("standard meter reads")
        out: list[MeterCheck] = []
        order = _order(self.link)
        for address, module, inp, meter in todo:
            hops = hops_latency_s(self.link, self.link.cdt(address).repeater)
            req = m.ReadData(meter_type=_METER_TYPE[meter.kind], address=meter.serial, di_order=order)
            reply = await self._transact(req, retries=1, hops=hops)
            self._done += self._meter_cost()
            self._progress()
            if isinstance(reply, m.CurrentData):
                total = reply.total
                detail = f"total {total.value / 10 ** total.decimals:.{total.decimals}f} (unit code {total.unit:02X}h)"
                out.append(MeterCheck(meter.serial, address, module, inp, "ok", detail))
            elif isinstance(reply, m.ErrorReply):
                out.append(MeterCheck(meter.serial, address, module, inp, "error",
                                      f"abnormal reply, status {reply.status:02X}h"))  # fmt: skip
            elif isinstance(reply, TransactionError):
                out.append(MeterCheck(meter.serial, address, module, inp, "silent", str(reply)))
            else:
                out.append(MeterCheck(meter.serial, address, module, inp, "error",
                                      f"unexpected reply {type(reply).__name__}"))  # fmt: skip
        return out

    async def _broadcast(self, meter_type: int) -> BroadcastResult:
        req = m.ReadAddress(meter_type=meter_type, address=BROADCAST, di_order=_order(self.link))
        before = self.master.device_stats(BROADCAST)
        garbled_before = before.checksum_errors + before.crc_errors
        reply = await self._transact(req, retries=1, hops=self._max_hops)
        if isinstance(reply, (m.AddressReply, m.ErrorReply)):
            # colliding replies AND-ed on the line can still pass the additive checksum:
            # a single answer counts only if that address answers again when asked directly
            direct = m.ReadAddress(meter_type=meter_type, address=reply.address, di_order=_order(self.link))
            again = await self._transact(direct, retries=1, hops=self._max_hops)
            if isinstance(again, (m.AddressReply, m.ErrorReply)) and again.address == reply.address:
                return BroadcastResult(meter_type, "one", reply.address)
            return BroadcastResult(meter_type, "several", None)
        after = self.master.device_stats(BROADCAST)
        # a collided reply often ends as a truncated frame found only when the attempt
        # times out (TransactionTimeout.corrupted stays 0): count the junk instead
        garbled = after.checksum_errors + after.crc_errors > garbled_before
        if isinstance(reply, TransactionTimeout) and (reply.corrupted or garbled):
            return BroadcastResult(meter_type, "several", None)
        return BroadcastResult(meter_type, "none", None)

    # ---------------------------------------------------------------- comparison

    def _report(self, found: list[FoundCdt], checks: list[MeterCheck],
                broadcasts: tuple[BroadcastResult, ...], quality: tuple[DeviceQuality, ...]) -> ScanReport:  # fmt: skip
        link = self.link
        diffs: list[Difference] = []
        notes: list[str] = []
        if self._link_down:
            diffs.append(Difference("link_down", None, None, None,
                                    f"the link was down for {self._link_down} transactions: "
                                    "what did not answer may simply not have been asked"))  # fmt: skip
        by_address = {c.address: c for c in found}
        for cdt in link.cdts:
            if cdt.address not in by_address:
                name = f" ({cdt.name})" if cdt.name else ""
                diffs.append(Difference("missing_cdt", cdt.address, None, None,
                                        f"configured CDT {cdt.address}{name} does not answer"))  # fmt: skip
        for fc in found:
            if not fc.configured:
                diffs.append(Difference(
                    "unexpected_cdt", fc.address, None, None,
                    f"CDT {fc.address} answers but is not configured ({len(fc.modules)} modules, "
                    f"{len(fc.channels or ())} meters)",
                ))  # fmt: skip
        for fc in found:
            cdt = link.cdt(fc.address) if fc.configured else None
            diffs.extend(_compare_cdt(cdt, fc))
        for check in checks:
            if check.outcome == "silent":
                diffs.append(Difference("meter_silent", check.cdt, check.module, check.input,
                                        f"meter {check.serial} does not answer ReadData"))  # fmt: skip
            elif check.outcome == "error":
                diffs.append(Difference("meter_error", check.cdt, check.module, check.input,
                                        f"meter {check.serial}: {check.detail}"))  # fmt: skip
        known = {meter.serial for _, _, _, meter in link.meters()} | {c.bcd_address for c in link.cdts}
        known |= {ch.serial for fc in found for ch in fc.channels or ()}
        known |= {f"{fc.address:014d}" for fc in found}
        for b in broadcasts:
            what = f"broadcast read-address to meter type {b.meter_type:02X}h"
            if b.outcome == "one" and b.address is not None:
                if b.address in known:
                    notes.append(f"{what}: one meter answers, {b.address} (known)")
                else:
                    diffs.append(Difference("unexpected_standard_meter", None, None, None,
                                            f"{what}: standard meter {b.address} answers but is neither "
                                            "configured nor behind a CDT found"))  # fmt: skip
            elif b.outcome == "several":
                notes.append(f"{what}: several meters answer (garbled reply; expected on an ST2000R bus, "
                             "where each CDT answers for its meters)")  # fmt: skip
            else:
                notes.append(f"{what}: no answer")
        if len(checks) and self.meters == "sample":
            notes.append(f"{len(checks)} configured meters verified with ReadData (a sample; --meters for all)")
        return ScanReport(
            link=link.name, started=self._started, ended=self.clock.seconds(), addresses=len(self.addresses),
            cdts=tuple(found), meter_checks=tuple(checks), broadcasts=broadcasts,
            differences=tuple(diffs), notes=tuple(notes),
            quality=quality, transactions=self._transactions,
        )  # fmt: skip

    def _quality(self, found: list[FoundCdt], checks: list[MeterCheck]) -> tuple[DeviceQuality, ...]:
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        for address in sorted({c.address for c in self.link.cdts} | {c.address for c in found}):
            rows.append((f"{address:014d}", "cdt"))
        rows.extend((c.serial, "meter") for c in checks)
        out = []
        for address, role in rows:
            if address not in seen:
                seen.add(address)
                out.append(self._row(address, role))
        return tuple(out)

    def _row(self, address: str, role: str) -> DeviceQuality:
        st = self.master.device_stats(address)
        return DeviceQuality(address, role, st.requests, st.replies, st.timeouts, st.retries,
                             st.checksum_errors, st.crc_errors, st.rtt_p50_s, st.rtt_p99_s)  # fmt: skip


def _order(link: Link) -> m.DiOrder:
    return m.DiOrder.LOW_FIRST if link.di_order == "1F90" else m.DiOrder.HIGH_FIRST


def _configured(link: Link, address: int) -> bool:
    try:
        link.cdt(address)
    except KeyError:
        return False
    return True


def _compare_cdt(cdt: Cdt | None, fc: FoundCdt) -> list[Difference]:
    diffs: list[Difference] = []
    a = fc.address
    if not fc.mains:
        diffs.append(Difference("mains_lost", a, None, None, f"CDT {a} runs on battery (mains lost)"))
    if fc.battery_low:
        diffs.append(Difference("battery_low", a, None, None, f"CDT {a} battery low ({fc.battery_mv} mV)"))
    if fc.alarms is None:
        diffs.append(Difference("alarms_unread", a, None, None, f"CDT {a}: the alarms could not be read"))
    else:
        for n, names in fc.alarms:
            module, inp = (n - 1) // 3 + 1, (n - 1) % 3 + 1
            diffs.append(Difference("alarm", a, module, inp,
                                    f"CDT {a} module {module} channel {inp}: alarm {', '.join(names)}"))  # fmt: skip
    if cdt is None:
        return diffs
    configured_modules = {mod.number for mod in cdt.modules}
    present = set(fc.modules)
    for mod in sorted(configured_modules - present):
        diffs.append(Difference("missing_module", a, mod, None, f"CDT {a}: configured module {mod} does not answer"))
    for mod in sorted(present - configured_modules):
        diffs.append(Difference("unexpected_module", a, mod, None, f"CDT {a}: module {mod} answers but is not configured"))
    if fc.channels is None:
        diffs.append(Difference("channel_info_unread", a, None, None, f"CDT {a}: the channel info could not be read"))
        return diffs
    found = {(ch.module, ch.input): ch for ch in fc.channels}
    for module, inp, meter in cdt.meters():
        if module not in present:
            continue  # reported as a missing module
        ch = found.get((module, inp))
        where = f"CDT {a} module {module} channel {inp}"
        if ch is None:
            diffs.append(Difference("missing_meter", a, module, inp,
                                    f"{where}: configured {meter.kind.value} meter {meter.serial} is not fitted"))  # fmt: skip
            continue
        if ch.kind is not meter.kind:
            got = ch.kind.value if ch.kind else f"meter type {ch.meter_type:02X}h"
            diffs.append(Difference("wrong_kind", a, module, inp,
                                    f"{where}: configured {meter.kind.value}, found {got}"))  # fmt: skip
        if ch.serial != meter.serial:
            diffs.append(Difference("serial_mismatch", a, module, inp,
                                    f"{where}: configured serial {meter.serial}, found {ch.serial}"))  # fmt: skip
        expected_pc = min(meter.pulse_constant, 0xFFFF)  # the wire field is 16 bits
        if ch.pulse_constant != expected_pc:
            diffs.append(Difference("pulse_constant_mismatch", a, module, inp,
                                    f"{where}: configured pulse constant {meter.pulse_constant}, "
                                    f"found {ch.pulse_constant}"))  # fmt: skip
    configured_channels = {(module, inp) for module, inp, _ in cdt.meters()}
    for (module, inp), ch in sorted(found.items()):
        if (module, inp) not in configured_channels and module in configured_modules:
            kind = ch.kind.value if ch.kind else f"meter type {ch.meter_type:02X}h"
            diffs.append(Difference("unexpected_meter", a, module, inp,
                                    f"CDT {a} module {module} channel {inp}: {kind} meter {ch.serial} "
                                    "is fitted but not configured"))  # fmt: skip
    return diffs


# --------------------------------------------------------------------------- rendering


def _secs(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def render_text(report: ScanReport, *, when: str = "") -> str:
    """The human report: verdict, differences, notes, CDTs found, meter checks, reply quality."""
    lines = [f"Commissioning scan of link {report.link}" + (f" ({when})" if when else "")]
    lines.append(
        f"{report.addresses} addresses tried, {len(report.cdts)} CDTs answer, "
        f"{report.transactions} transactions in {_duration(report.ended - report.started)}"
    )
    if report.matches:
        lines.append("RESULT: the bus matches the configuration")
    else:
        n = len(report.differences)
        lines.append(f"RESULT: {n} difference{'' if n == 1 else 's'} from the configuration")
        lines.append("")
        lines.append("Differences:")
        for d in report.differences:
            lines.append(f"  {d.kind:<24} {d.detail}")
    if report.notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"  {n}" for n in report.notes)
    lines.append("")
    lines.append("CDTs found:")
    if not report.cdts:
        lines.append("  (none)")
    for c in report.cdts:
        meters = "?" if c.channels is None else str(len(c.channels))
        alarms = "?" if c.alarms is None else str(len(c.alarms))
        lines.append(
            f"  {c.address:>8}  {'configured' if c.configured else 'UNEXPECTED':<10}  modules {len(c.modules):>2}  "
            f"meters {meters:>3}  alarms {alarms:>2}  {'mains' if c.mains else 'BATTERY'}"
            f"{' battery-low' if c.battery_low else ''}  {c.battery_mv} mV  fw {c.firmware[0]}.{c.firmware[1]}"
        )
    if report.meter_checks:
        lines.append("")
        lines.append("Standard meter reads (ReadData):")
        for mc in report.meter_checks:
            lines.append(f"  {mc.serial}  CDT {mc.cdt} module {mc.module} channel {mc.input}: {mc.outcome}  {mc.detail}")
    lines.append("")
    for b in report.broadcasts:
        lines.append(f"Broadcast read-address, meter type {b.meter_type:02X}h: {b.outcome}"
                     + (f" ({b.address})" if b.address else ""))  # fmt: skip
    lines.append("")
    lines.append("Reply quality per device:")
    lines.append(f"  {'address':<14}  {'role':<9} {'req':>5} {'rep':>5} {'tmo':>5} {'retry':>5} {'cksum':>5} {'crc':>5}  {'rtt p50':>8}  {'rtt p99':>8}")
    for q in report.quality:
        lines.append(
            f"  {q.address:<14}  {q.role:<9} {q.requests:>5} {q.replies:>5} {q.timeouts:>5} {q.retries:>5} "
            f"{q.checksum_errors:>5} {q.crc_errors:>5}  {_secs(q.rtt_p50_s):>8}  {_secs(q.rtt_p99_s):>8}"
        )
    return "\n".join(lines) + "\n"


class ProgressBar:
    """Progress on ``stream``: on a TTY a bar redrawn in place with ``\\r``; otherwise one
    line per 10 %.  Call it with :class:`Progress`; :meth:`finish` ends the line."""

    WIDTH: Final = 30

    def __init__(self, stream: IO[str], *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._decile = -1
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        pct = int(p.fraction * 100)
        eta = "estimating" if p.eta_s is None else f"about {_duration(p.eta_s)} left"
        if self.tty:
            filled = int(p.fraction * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r[{bar}] {pct:3d}%  {eta:<22} {p.phase:<24}")
            self._drawn = True
        else:
            decile = pct // 10
            if decile <= self._decile:
                return
            self._decile = decile
            self.stream.write(f"scan: {decile * 10:3d}%  {eta}  ({p.phase}, {_duration(p.elapsed_s)} elapsed)\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------- draft config


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def draft_config(report: ScanReport, topology: Topology, link: Link, *, when: str = "") -> str:
    """A topology TOML of what the scan found on ``link``: the site and link settings of the
    configuration, every CDT found with its modules and fitted channels (kind, serial, pulse
    constant from the bus; name, repeater, initial and household kept from the configuration
    where the same CDT / serial is configured).  Channels of a meter type that is not a pulse
    meter kind are written as comments.  Loads with ``st2000r.config.loader``."""
    site = next(s for s in topology.sites if any(lk.name == link.name for lk in s.links))
    by_serial = {meter.serial: meter for _, _, _, meter in link.meters()}
    out = [
        f"# Drafted by 'st2000r scan' from link {link.name!r}" + (f" on {when}" if when else ""),
        f"# {len(report.cdts)} CDTs found; review names, repeaters, initial readings and households.",
        "",
        "[[sites]]",
        f"name = {_toml_str(site.name)}",
        f"address = {_toml_str(site.address)}",
        "",
        "[[sites.links]]",
        f"name = {_toml_str(link.name)}",
        f"kind = {_toml_str(link.kind)}",
    ]
    ep = link.endpoint
    if isinstance(ep, SerialEndpoint):
        out.append(f"device = {_toml_str(ep.device)}")
    elif isinstance(ep, TcpEndpoint):
        out += [f"host = {_toml_str(ep.host)}", f"port = {ep.port}"]
    elif link.kind == "gprs":
        out += [f"dtu_id = {_toml_str(ep.dtu_id)}", f"registration = {_toml_str(ep.registration)}",
                f"heartbeat_s = {ep.heartbeat_s}"]  # fmt: skip
    elif link.kind == "gsm":
        out += [f"modem = {_toml_str(ep.modem)}", f"number = {_toml_str(ep.number)}", f"modem_baud = {ep.modem_baud}"]
    line = link.line
    out += [
        f"baud = {line.baud}",
        f"bytesize = {line.bytesize}",
        f"parity = {_toml_str(line.parity)}",
        f"stopbits = {line.stopbits}",
        f"turnaround_ms = {link.turnaround_ms}",
        f"di_order = {_toml_str(link.di_order)}",
    ]
    if link.repeaters:
        reps = []
        for r in link.repeaters:
            parent = f", parent = {_toml_str(r.parent)}" if r.parent else ""
            reps.append(f"  {{ name = {_toml_str(r.name)}{parent}, latency_ms = {r.latency_ms} }},")
        out += ["repeaters = [", *reps, "]"]
    for fc in report.cdts:
        cdt = link.cdt(fc.address) if fc.configured else None
        out += ["", "[[sites.links.cdts]]", f"address = {fc.address}"]
        if cdt is not None and cdt.name:
            out.append(f"name = {_toml_str(cdt.name)}")
        if cdt is not None and cdt.repeater:
            out.append(f"repeater = {_toml_str(cdt.repeater)}")
        if not fc.configured:
            out.append("# not in the configuration: found by the scan")
        if fc.channels is None:
            out.append("# the channel info of this CDT could not be read: modules left out")
            continue
        for module in fc.modules:
            chans = [ch for ch in fc.channels if ch.module == module]
            good = [ch for ch in chans if ch.kind is not None]
            out += ["", "[[sites.links.cdts.modules]]", f"module = {module}"]
            for ch in chans:
                if ch.kind is None:
                    out.append(f"# channel {ch.input}: meter type {ch.meter_type:02X}h serial {ch.serial} "
                               "is not a pulse meter kind")  # fmt: skip
            if not good:
                out.append("channels = []")
                continue
            out.append("channels = [")
            for ch in good:
                known = by_serial.get(ch.serial)
                parts = [f"channel = {ch.input}", f"kind = {_toml_str(ch.kind.value)}",
                         f"pulse_constant = {max(1, ch.pulse_constant)}", f"serial = {_toml_str(ch.serial)}"]  # fmt: skip
                if known is not None and known.kind is ch.kind:
                    parts.append(f"initial = {known.initial}")
                    if known.household is not None:
                        parts.append(f"household = {_toml_str(known.household)}")
                out.append("  { " + ", ".join(parts) + " },")
            out.append("]")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- command


class _BadInput(Exception):
    """Bad command-line input: exit status 2 with this message."""


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _BadInput(message)


def _parser() -> argparse.ArgumentParser:
    p = _ArgParser(prog="st2000r scan", description="Commissioning scan of one field bus against the topology.")
    p.add_argument("config", help="topology file (TOML)")
    p.add_argument("--link", required=True, help="name of the link to scan")
    p.add_argument("--addresses", default="1-256", help="CDT addresses to search, e.g. 1-256 or 1-32,100 (default 1-256)")
    p.add_argument("--report-dir", help="write scan-<link>-<timestamp>.json and .txt here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.add_argument("--write-config", metavar="FILE", help="draft a topology file of what was found")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--device", help="scan through this serial device instead of the configured endpoint")
    where.add_argument("--tcp", metavar="HOST:PORT", help="scan through this serial-device server instead")
    p.add_argument("--baud", type=int, help="line speed override (bit/s)")
    p.add_argument("--meters", action="store_true", help="verify every configured meter with ReadData (default: a sample)")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help=f"meters verified without --meters (default {DEFAULT_SAMPLE})")
    p.add_argument("--no-broadcast", action="store_true", help="skip the broadcast read-address")
    p.add_argument("--connect-timeout", type=float, default=None, help="seconds to wait for the link (default 10; 120 for GPRS/GSM)")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto", help="progress output on stderr")
    return p


@dataclass(frozen=True, slots=True)
class _Options:
    topology: Topology
    link: Link
    addresses: tuple[int, ...]
    report_dir: str | None
    json: bool
    write_config: str | None
    meters: str
    sample: int
    broadcast: bool
    connect_timeout: float
    progress: str


def _options(argv: list[str]) -> _Options:
    """Parse and check everything that does not need the reactor; raises ``_BadInput``."""
    from st2000r.config.errors import ConfigError
    from st2000r.config.loader import load

    args = _parser().parse_args(argv)
    try:
        topology = load(args.config)
    except ConfigError as exc:
        raise _BadInput(f"configuration error:\n{exc}") from None
    try:
        link = topology.link(args.link)
    except KeyError:
        names = ", ".join(lk.name for lk in topology.links()) or "(none)"
        raise _BadInput(f"no link named {args.link!r} in {args.config} (links: {names})") from None
    try:
        addresses = parse_addresses(args.addresses)
    except ValueError as exc:
        raise _BadInput(f"--addresses: {exc}") from None
    if args.device:
        link = replace(link, kind="serial", endpoint=SerialEndpoint(args.device))
    elif args.tcp:
        host, sep, port_s = args.tcp.rpartition(":")
        if not sep or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            raise _BadInput(f"--tcp: expected HOST:PORT with a port 1..65535, got {args.tcp!r}")
        link = replace(link, kind="tcp", endpoint=TcpEndpoint(host, int(port_s)))
    if args.baud is not None:
        if not 50 <= args.baud <= 1_000_000:
            raise _BadInput(f"--baud: {args.baud} is not a plausible line speed")
        line = link.line
        link = replace(link, line=LineSettings(args.baud, line.bytesize, line.parity, line.stopbits))
    if args.sample < 0:
        raise _BadInput("--sample must be >= 0")
    for path in filter(None, (args.write_config,)):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise _BadInput(f"--write-config: folder {parent} does not exist")
    if args.report_dir is not None and os.path.exists(args.report_dir) and not os.path.isdir(args.report_dir):
        raise _BadInput(f"--report-dir: {args.report_dir} is not a folder")
    if link.kind == "serial":
        device = link.endpoint.device
        try:
            fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise _BadInput(f"cannot open serial device {device}: {exc.strerror or exc}") from None
        try:
            is_tty = os.isatty(fd)
        finally:
            os.close(fd)
        if not is_tty:
            raise _BadInput(f"{device} is not a serial device (not a terminal)")
    if link.kind == "gprs" and topology.settings.gprs_listen is None:
        raise _BadInput(f"link {link.name!r} is a GPRS link: set [supervisor] gprs_listen, or use --device/--tcp")
    timeout = args.connect_timeout
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= 3600):
        raise _BadInput(f"--connect-timeout: expected seconds in (0, 3600], got {args.connect_timeout}")
    if timeout is None:
        timeout = 120.0 if link.kind in ("gprs", "gsm") else 10.0
    return _Options(
        topology=topology, link=link, addresses=addresses, report_dir=args.report_dir, json=args.json,
        write_config=args.write_config, meters="all" if args.meters else "sample", sample=args.sample,
        broadcast=not args.no_broadcast, connect_timeout=timeout, progress=args.progress,
    )  # fmt: skip


async def run_scan(argv: list[str], reactor, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """The whole command on a running ``reactor``: returns the exit status (0 / 1 / 2).
    Output goes to ``stdout``/``stderr`` (default ``sys.stdout``/``sys.stderr``)."""
    err = stderr if stderr is not None else sys.stderr
    try:
        opts = _options(argv)
    except _BadInput as exc:
        err.write(f"st2000r scan: {exc}\n")
        return 2
    return await _scan(opts, reactor, stdout if stdout is not None else sys.stdout, err)


async def _scan(opts: _Options, reactor, out: IO[str], err: IO[str]) -> int:
    from twisted.application.service import MultiService

    from st2000r.drivers.st2000r.links import link_service

    link = opts.link
    master = BusMaster(link, reactor, retries=opts.topology.settings.retries, queue_timeout_s=opts.connect_timeout)
    services = MultiService()
    try:
        server = None
        if link.kind == "gprs":
            from st2000r.drivers.st2000r.gprs import GprsServer

            server = GprsServer(opts.topology.settings.gprs_listen, reactor)
            server.setServiceParent(services)
        link_service(link, master, reactor, gprs_server=server).setServiceParent(services)
        services.startService()
        if server is not None:  # a TCP listen fails at once on this reactor: say why
            failed: list = []
            server.when_listening().addErrback(failed.append)
            if failed:
                raise RuntimeError(f"cannot listen for GPRS DTUs: {failed[0].getErrorMessage()}")
    except Exception as exc:
        err.write(f"st2000r scan: cannot open link {link.name!r}: {exc}\n")
        return 2
    try:
        waited = 0.0
        while not master.connected and waited < opts.connect_timeout:
            d = defer.Deferred()
            reactor.callLater(0.05, d.callback, None)
            await d
            waited += 0.05
        if not master.connected:
            err.write(f"st2000r scan: link {link.name!r} did not come up within {opts.connect_timeout:g} s\n")
            return 2
        if opts.progress == "none":
            bar = None
        else:
            bar = ProgressBar(err, tty=None if opts.progress == "auto" else opts.progress == "bar")
        scanner = Scanner(link, master, reactor, addresses=opts.addresses, on_progress=bar, meters=opts.meters,
                          sample=opts.sample, broadcast=opts.broadcast)  # fmt: skip
        report: ScanReport = await scanner.run()
        if bar is not None:
            bar.finish()
    finally:
        await defer.maybeDeferred(services.stopService)
    when_dt = _dt.datetime.fromtimestamp(reactor.seconds(), _dt.timezone.utc)
    when = when_dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    text = render_text(report, when=when)
    doc = {"scanned_at": when_dt.isoformat(), "config": opts.topology.source, **report.to_dict()}
    out.write(json.dumps(doc, indent=2) + "\n" if opts.json else text)
    out.flush()
    try:
        if opts.report_dir is not None:
            os.makedirs(opts.report_dir, exist_ok=True)
            stem = os.path.join(opts.report_dir, f"scan-{link.name}-{when_dt.strftime('%Y%m%dT%H%M%SZ')}")
            with open(stem + ".json", "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            with open(stem + ".txt", "w", encoding="utf-8") as f:
                f.write(text)
            err.write(f"st2000r scan: report written to {stem}.json and {stem}.txt\n")
        if opts.write_config is not None:
            with open(opts.write_config, "w", encoding="utf-8") as f:
                f.write(draft_config(report, opts.topology, link, when=when))
            err.write(f"st2000r scan: draft topology written to {opts.write_config}\n")
    except OSError as exc:
        err.write(f"st2000r scan: cannot write the report: {exc}\n")
        return 2
    return 0 if report.matches else 1


def main(argv: list[str] | None = None) -> int:
    """``st2000r scan CONFIG --link NAME [...]``; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        _parser().print_help()
        return 0
    try:
        opts = _options(args)  # bad input exits 2 before the reactor starts
    except _BadInput as exc:
        print(f"st2000r scan: {exc}", file=sys.stderr)
        return 2
    from st2000r.supervisor.reactor import install_reactor

    reactor = install_reactor()
    result: list[int] = []

    async def go() -> None:
        try:
            result.append(await _scan(opts, reactor, sys.stdout, sys.stderr))
        except Exception as exc:  # a bug must still end the command with a message
            log.failure("scan failed")
            print(f"st2000r scan: internal error: {exc!r}", file=sys.stderr)
            result.append(2)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(go()))
    reactor.run()
    return result[0] if result else 2
