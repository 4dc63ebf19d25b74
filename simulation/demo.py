"""``st2000r demo``: the simulator for the packaged example community, ready to connect to.

Runs ``config/examples/community.toml`` (128 CDTs, 12,288 meters on one RS485 bus, found
with ``importlib.resources``) with its serial link on a pseudo-terminal *and* on a TCP
listener (``--tcp-port``, default 4001), the control interface on ``--control`` (default
7188), and prints where to connect and a frame to try.  Runs until Ctrl-C, or for
``--for SECONDS``.  Exit status as ``st2000r simulate``.
"""

from __future__ import annotations

import importlib.resources
import shlex
import sys

from st2000r.simulation.cli import UsageError, _fail, _Parser, _port, add_run_options, options_from_args, run

__all__ = ["main", "community_path"]

PROG = "st2000r demo"
DEFAULT_TCP_PORT = 4001


def community_path():
    """The installed ``community.toml`` (a Traversable)."""
    return importlib.resources.files("st2000r.config") / "examples" / "community.toml"


def _banner(link_name: str, tcp_port_of, control_url_of):
    def lines(service) -> list[str]:
        host_port = tcp_port_of(service)
        url = control_url_of(service)
        pty = next((e.where for e in service.endpoints() if e.kind == "pty"), None)
        ctl = f"st2000r simulate-ctl --url {url}" if url else "st2000r simulate-ctl"
        host, port = host_port.rsplit(":", 1)
        out = [
            "",
            "Where to connect:",
            f"  serial (pseudo-terminal): {pty}   (2400 baud 8E1 on the field side; any settings on the pty)",
            f"  TCP serial-device server: {host_port}",
        ]
        if url:
            out.append(f"  control interface:        {url}")
        out += [
            "",
            "Try it (a bulk read of channels 1-48 of CDT 1, over TCP, decoded):",
            "  st2000r frame encode bulk-read -a 1",
            f"  st2000r frame encode bulk-read -a 1 | xxd -r -p | socat -t 3 - TCP:{host}:{port} | xxd -p | st2000r frame decode -",
        ]
        if pty:
            out.append(f"  (the same on the pty: ... | socat -t 3 - FILE:{shlex.quote(pty)},raw,echo=0 | ...)")
        out += [
            "",
            "Ground truth and faults:",
            f"  {ctl} truth | less",
            f"  {ctl} fault alarm link={link_name} cdt=1 channel=2 flags=tamper",
            f"  {ctl} fault cdt_power link={link_name} cdt=5 mains=false",
            f"  {ctl} fault link_drop link={link_name} seconds=10",
            "",
        ]
        return out

    return lines


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    from st2000r.simulation.service import DEFAULT_CONTROL_PORT

    parser = _Parser(prog=PROG, description="Run the simulator for the example community and show where to connect.")
    add_run_options(parser, control_default=DEFAULT_CONTROL_PORT)
    parser.add_argument("--tcp-port", type=_port, default=DEFAULT_TCP_PORT, metavar="PORT",
                        help=f"TCP listener for the community's bus (0: any free port; default {DEFAULT_TCP_PORT})")
    try:
        args = parser.parse_args(args_in)
    except UsageError as exc:
        return _fail(PROG, str(exc).removeprefix(PROG + ": "))
    from st2000r.config.errors import ConfigError
    from st2000r.config.loader import load

    try:
        with importlib.resources.as_file(community_path()) as path:
            topology = load(path)
    except (ConfigError, FileNotFoundError) as exc:
        return _fail(PROG, f"the packaged example community.toml cannot be loaded: {exc}")
    link = next(topology.links()).name
    options = options_from_args(args, tcp_ports=((link, args.tcp_port),))

    def tcp_of(service) -> str:
        return next(e.where for e in service.endpoints() if e.kind == "tcp")

    def url_of(service) -> str | None:
        return service.control.url if service.control is not None else None

    return run(topology, options, prog=PROG, duration=args.duration, quiet=args.quiet,
               banner=_banner(link, tcp_of, url_of))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
