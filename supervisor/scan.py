"""Commissioning scan: walk one field bus and compare what answers with the configuration.

``st2000r scan CONFIG --link NAME`` is what a field engineer runs right after wiring a
community.  This module is the command; the parts live beside it: ``scan_core`` (the walk,
:class:`Scanner`, over a :class:`~st2000r.drivers.st2000r.master.BusMaster`, time from the
injected clock only), ``scan_model`` (the report and its values), ``scan_render`` (text
report, progress bar, draft topology).  Their public names are re-exported here.

The walk (configured CDT addresses and a search range, each CDT's modules, channels and
alarms, standard CJ/T 188 meters) and how its differences are judged are described in
``scan_core``; ``docs/operations.md`` ("Commissioning scan") is the operator's guide.

Exit status of :func:`main`: 0 the bus matches the configuration, 1 differences found,
2 bad input (configuration error, unknown link, bad option, device cannot be opened).
"""


from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, replace
from typing import IO

from twisted.internet import defer
from twisted.logger import Logger

from st2000r.config.cliargs import ArgumentParser, baud, count, fail, host_port, seconds_up_to
from st2000r.config.model import LineSettings, Link, SerialEndpoint, TcpEndpoint, Topology
from st2000r.drivers.st2000r.master import BusMaster
from st2000r.supervisor.scan_core import DEFAULT_SAMPLE, Scanner
from st2000r.supervisor.scan_model import (
    ADDRESS_MAX,
    BroadcastResult,
    DeviceQuality,
    Difference,
    FoundCdt,
    FoundChannel,
    MeterCheck,
    Progress,
    ScanReport,
    kind_of_meter_type,
    parse_addresses,
)
from st2000r.supervisor.scan_render import ProgressBar, draft_config, render_text

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
    "Scanner",
    "ProgressBar",
    "parse_addresses",
    "kind_of_meter_type",
    "render_text",
    "draft_config",
    "run_scan",
    "main",
]

PROG = "st2000r scan"
log = Logger()

# --------------------------------------------------------------------------- command


class _BadInput(Exception):
    """Bad command-line input: exit status 2 with this message."""


#: the longest --connect-timeout: an hour
MAX_CONNECT_TIMEOUT_S = 3600.0


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Commissioning scan of one field bus against the topology.")
    p.add_argument("config", help="topology file (TOML)")
    p.add_argument("--link", required=True, help="name of the link to scan")
    p.add_argument("--addresses", default="1-256", help="CDT addresses to search, e.g. 1-256 or 1-32,100 (default 1-256)")
    p.add_argument("--report-dir", help="write scan-<link>-<timestamp>.json and .txt here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.add_argument("--write-config", metavar="FILE", help="draft a topology file of what was found")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--device", help="scan through this serial device instead of the configured endpoint")
    where.add_argument("--tcp", metavar="HOST:PORT", type=host_port,
                       help="scan through this serial-device server instead")
    p.add_argument("--baud", type=baud, help="line speed override (bit/s)")
    p.add_argument("--meters", action="store_true", help="verify every configured meter with ReadData (default: a sample)")
    p.add_argument("--sample", type=count, default=DEFAULT_SAMPLE, help=f"meters verified without --meters (default {DEFAULT_SAMPLE})")
    p.add_argument("--no-broadcast", action="store_true", help="skip the broadcast read-address")
    p.add_argument("--connect-timeout", type=seconds_up_to(MAX_CONNECT_TIMEOUT_S), default=None, help="seconds to wait for the link (default 10; 120 for GPRS/GSM)")
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
    """Parse and check everything that does not need the reactor; raises ``_BadInput``, or
    ``SystemExit`` from the parser (after its one line for a bad argument, or the help)."""
    from st2000r.config.errors import ConfigError
    from st2000r.config.loader import load

    args = _parser().parse_args(argv)
    try:
        topology = load(args.config)
    except ConfigError as exc:
        sep = " " if len(exc.errors) == 1 else "\n"  # one issue stays on one line
        raise _BadInput(f"configuration error:{sep}{exc}") from None
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
        host, port = args.tcp
        link = replace(link, kind="tcp", endpoint=TcpEndpoint(host, port))
    if args.baud is not None:
        line = link.line
        link = replace(link, line=LineSettings(args.baud, line.bytesize, line.parity, line.stopbits))
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
    except SystemExit as exc:  # the parser's one line went to sys.stderr
        return int(exc.code or 0)
    except _BadInput as exc:
        err.write(f"{PROG}: {exc}\n")
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
        err.write(f"{PROG}: cannot open link {link.name!r}: {exc}\n")
        return 2
    try:
        waited = 0.0
        while not master.connected and waited < opts.connect_timeout:
            d = defer.Deferred()
            reactor.callLater(0.05, d.callback, None)
            await d
            waited += 0.05
        if not master.connected:
            err.write(f"{PROG}: link {link.name!r} did not come up within {opts.connect_timeout:g} s\n")
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
            err.write(f"{PROG}: report written to {stem}.json and {stem}.txt\n")
        if opts.write_config is not None:
            with open(opts.write_config, "w", encoding="utf-8") as f:
                f.write(draft_config(report, opts.topology, link, when=when))
            err.write(f"{PROG}: draft topology written to {opts.write_config}\n")
    except OSError as exc:
        err.write(f"{PROG}: cannot write the report: {exc}\n")
        return 2
    return 0 if report.matches else 1


def main(argv: list[str] | None = None) -> int:
    """``st2000r scan CONFIG --link NAME [...]``; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = _options(args)  # bad input exits 2 before the reactor starts
    except SystemExit as exc:  # --help exits 0; a bad argument exits 2 after one line on stderr
        return int(exc.code or 0)
    except _BadInput as exc:
        return fail(PROG, str(exc))
    from st2000r.supervisor.reactor import install_reactor

    reactor = install_reactor()
    result: list[int] = []

    async def go() -> None:
        try:
            result.append(await _scan(opts, reactor, sys.stdout, sys.stderr))
        except Exception as exc:  # a bug must still end the command with a message
            log.failure("scan failed")
            print(f"{PROG}: internal error: {exc!r}", file=sys.stderr)
            result.append(2)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(go()))
    reactor.run()
    return result[0] if result else 2
