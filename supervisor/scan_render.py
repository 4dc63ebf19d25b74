"""The commissioning scan's outputs: the text report, the progress bar, the draft topology."""

from __future__ import annotations

import json
from typing import IO, Final

from st2000r.config.model import Link, SerialEndpoint, TcpEndpoint, Topology
from st2000r.supervisor.scan_model import Progress, ScanReport

__all__ = ["render_text", "ProgressBar", "draft_config"]


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
                f"heartbeat_s = {ep.heartbeat_s}", f"auth = {_toml_str(ep.auth)}"]  # fmt: skip
        if ep.secret is not None:  # as sensitive as the configuration it was drafted from
            out.append(f"secret = {_toml_str(ep.secret)}")
        if ep.allow_from:
            out.append("allow_from = [" + ", ".join(_toml_str(n) for n in ep.allow_from) + "]")
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
    if link.gap_ms is not None:
        out.append(f"gap_ms = {link.gap_ms!r}")
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


