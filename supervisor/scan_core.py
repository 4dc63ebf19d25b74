"""The commissioning scan's walk: one field bus compared with the configuration.

:class:`Scanner` does the walk over a :class:`~st2000r.drivers.st2000r.master.BusMaster`
(time from the injected clock only); ``st2000r.supervisor.scan`` is the command around it.

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
"""


from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from st2000r.config.model import Cdt, Link, Meter, MeterKind
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import BROADCAST
from st2000r.drivers.st2000r.master import BusMaster, LinkDown, Priority, TransactionError, TransactionTimeout
from st2000r.drivers.st2000r.timing import hops_latency_s, max_reply_size
from st2000r.supervisor.scan_model import (
    BroadcastResult,
    DeviceQuality,
    Difference,
    FoundCdt,
    FoundChannel,
    MeterCheck,
    Progress,
    ScanReport,
    kind_of_meter_type,
)

__all__ = ["Scanner", "DEFAULT_SAMPLE"]

log = Logger()

DEFAULT_SAMPLE: Final = 8  # configured meters verified with ReadData unless meters="all"
_BROADCAST_TYPES: Final = (0x10, 0x30, 0x40)  # water, gas, electricity (AAh: every CDT answers too)
_METER_TYPE: Final = {MeterKind.WATER: 0x10, MeterKind.GAS: 0x30, MeterKind.ELECTRICITY: 0x40}
_ALARM_NAMES: Final = ((m.AlarmFlag.TAMPER, "tamper"), (m.AlarmFlag.SHORT, "short"), (m.AlarmFlag.OPEN, "open"))


def _alarm_names(flags: int) -> tuple[str, ...]:
    return tuple(name for flag, name in _ALARM_NAMES if flags & flag)


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
        self._max_latency_s = max((hops_latency_s(link, r.name) for r in link.repeaters), default=0.0)
        self._done = 0.0
        self._total = 0.0
        self._started = 0.0
        self._phase = ""
        self._transactions = 0
        self._link_down = 0

    # ---------------------------------------------------------------- cost model

    def _cost(self, request: m.Message, *, answered: bool, latency_s: float = 0.0, attempts: int = 2) -> float:
        """Modelled bus seconds of one transaction: answered -> gap + request + turnaround
        + repeaters + reply; unanswered -> ``attempts`` x (gap + model timeout)."""
        t = self.timing
        q = len(m.encode(request, self.master.preamble))
        r = max_reply_size(request)
        if answered:
            return t.gap_s + t.wire_time(q + r) + t.turnaround_s + 2 * latency_s
        return attempts * (t.gap_s + t.reply_timeout(q, r, latency_s))

    def _status_cost(self, address: int) -> float:
        req = m.ReadCdtStatus(meter_type=m.CDT_TYPE, address=f"{address:014d}")
        try:
            cdt = self.link.cdt(address)
        except KeyError:
            return self._cost(req, answered=False, latency_s=self._max_latency_s)
        return self._cost(req, answered=True, latency_s=hops_latency_s(self.link, cdt.repeater))

    def _cdt_detail_cost(self, modules: Iterable[int], latency_s: float) -> float:
        addr = "00000000000001"
        chans = [m.channel_number(mod, i) for mod in modules for i in (1, 2, 3)]
        cost = self._cost(m.ReadAlarms(meter_type=m.CDT_TYPE, address=addr), answered=True, latency_s=latency_s)
        for first, count in _ranges(chans, m.MAX_INFO):
            req = m.ReadChannelInfo(meter_type=m.CDT_TYPE, address=addr, first_channel=first, count=count)
            cost += self._cost(req, answered=True, latency_s=latency_s)
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

    async def _transact(self, request: m.Message, *, retries: int, latency_s: float) -> m.Message | TransactionError:
        self._transactions += 1
        try:
            return await self.master.transact(
                request, priority=Priority.STATUS, retries=retries, hops_latency_s=latency_s
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
                latency_s = hops_latency_s(link, link.cdt(address).repeater)
            except KeyError:
                latency_s = self._max_latency_s
            req = m.ReadCdtStatus(meter_type=m.CDT_TYPE, address=f"{address:014d}", di_order=_order(link))
            reply = await self._transact(req, retries=1, latency_s=latency_s)
            answered = isinstance(reply, m.CdtStatus)
            expected = self._status_cost(address)
            actual = self._cost(req, answered=answered, latency_s=latency_s)
            self._total += actual - expected
            self._done += actual
            if answered:
                statuses[address] = reply
                if not _configured(link, address):
                    self._total += self._cdt_detail_cost(reply.modules, latency_s)
            elif _configured(link, address):
                cdt = link.cdt(address)
                self._total -= self._cdt_detail_cost((mod.number for mod in cdt.modules), latency_s)
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
        latency_s = hops_latency_s(link, link.cdt(address).repeater) if configured else self._max_latency_s
        bcd = f"{address:014d}"
        order = _order(link)
        modules = tuple(sorted(status.modules))
        chans = [m.channel_number(mod, i) for mod in modules for i in (1, 2, 3)]
        channels: list[FoundChannel] | None = []
        for first, count in _ranges(chans, m.MAX_INFO):
            req = m.ReadChannelInfo(meter_type=m.CDT_TYPE, address=bcd, first_channel=first, count=count, di_order=order)
            reply = await self._transact(req, retries=2, latency_s=latency_s)
            self._done += self._cost(req, answered=True, latency_s=latency_s)
            self._progress()
            if not isinstance(reply, m.ChannelInfoReply):
                channels = None
                break
            for k, info in enumerate(reply.channels):
                n = reply.first_channel + k
                module, inp = m.module_input(n)
                if info.meter_type == 0 or module not in status.modules:
                    continue
                channels.append(FoundChannel(n, module, inp, info.meter_type, kind_of_meter_type(info.meter_type),
                                             info.serial, info.pulse_constant))  # fmt: skip
        req_alarms = m.ReadAlarms(meter_type=m.CDT_TYPE, address=bcd, di_order=order)
        reply = await self._transact(req_alarms, retries=2, latency_s=latency_s)
        self._done += self._cost(req_alarms, answered=True, latency_s=latency_s)
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
            latency_s = hops_latency_s(self.link, self.link.cdt(address).repeater)
            req = m.ReadData(meter_type=_METER_TYPE[meter.kind], address=meter.serial, di_order=order)
            reply = await self._transact(req, retries=1, latency_s=latency_s)
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
        reply = await self._transact(req, retries=1, latency_s=self._max_latency_s)
        if isinstance(reply, (m.AddressReply, m.ErrorReply)):
            # colliding replies AND-ed on the line can still pass the additive checksum:
            # a single answer counts only if that address answers again when asked directly
            direct = m.ReadAddress(meter_type=meter_type, address=reply.address, di_order=_order(self.link))
            again = await self._transact(direct, retries=1, latency_s=self._max_latency_s)
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
            module, inp = m.module_input(n)
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


