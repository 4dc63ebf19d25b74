"""``st2000r frame``: decode frames to JSON and build request frames as hex.

Exit status: 0 success; 2 bad input, with one line naming the byte and what was expected.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from st2000r.config.cliargs import ArgumentParser, integer, integer_in
from st2000r.drivers.st2000r import frame as f
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.describe import describe
from st2000r.drivers.st2000r.errors import CodecError


class _Usage(Exception):
    """A combination of arguments the parser cannot check; the message is the one line."""


def parse_hex(text: str) -> bytes:
    """Bytes from hex text; spaces, colons and a 0x prefix per byte are allowed."""
    cleaned = text.replace(":", " ").replace(",", " ")
    tokens = [t[2:] if t.lower().startswith("0x") else t for t in cleaned.split()]
    joined = "".join(tokens)
    if len(joined) % 2:
        raise CodecError(f"odd number of hex digits ({len(joined)})")
    try:
        return bytes.fromhex(joined)
    except ValueError:
        bad = next(i for i, c in enumerate(joined) if c not in "0123456789abcdefABCDEF")
        raise CodecError(f"{joined[bad]!r} is not a hex digit (hex digit {bad})") from None


def decode_all(data: bytes) -> list[tuple[f.Frame, m.Message]]:
    """Every frame in ``data``, back to back (wake-up bytes allowed); strict, raises CodecError."""
    out = []
    i = 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == f.WAKE:
            j += 1
        if j == len(data):
            break
        if data[j] != f.START:
            raise CodecError(f"expected start byte 68h, got {data[j]:02X}h", j)
        if len(data) - j < f.HEADER_LEN:
            raise CodecError(f"frame ends after {len(data) - j} bytes; the header alone is 11", len(data))
        n = f.OVERHEAD + data[j + 10]
        try:
            frame, _ = f.decode_frame(bytes(data[j : j + n]))
        except CodecError as exc:
            raise _shift(exc, j) from None
        out.append((frame, m.parse(frame, base=j)))
        i = j + n
    if not out:
        raise CodecError("no frame: expected start byte 68h", len(data))
    return out


def _shift(exc: CodecError, by: int) -> CodecError:
    return CodecError(exc.reason, None if exc.offset is None else exc.offset + by)


def _cmd_decode(args) -> int:
    text = " ".join(args.hex) if args.hex != ["-"] else sys.stdin.read()
    try:
        data = parse_hex(text)
        frames = decode_all(data)
    except CodecError as exc:
        print(f"st2000r frame decode: {exc}", file=sys.stderr)
        return 2
    for frame, msg in frames:
        doc = describe(msg, raw_control=frame.control)
        print(json.dumps(doc, ensure_ascii=False, indent=None if args.compact else 2))
    return 0


def _address(value: str) -> str:
    if value.lower() in ("broadcast", "aa"):
        return f.BROADCAST
    if value.isdigit() and len(value) <= 14:
        return value.zfill(14)
    if len(value) == 14:
        f.address_bytes(value.upper())
        return value.upper()
    raise argparse.ArgumentTypeError(f"{value!r} is not an address of up to 14 digits")


def _time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date-time (2026-11-25T13:45:00)") from None


COMMANDS = {
    # name: (message class, default meter type, help)
    "read": (m.ReadData, 0x10, "read current data (901F) of a meter"),
    "read-address": (m.ReadAddress, 0xAA, "read address (810A); default broadcast"),
    "valve-open": (m.ValveControl, 0x10, "open a meter's valve (A017 55h)"),
    "valve-close": (m.ValveControl, 0x10, "close a meter's valve (A017 99h)"),
    "write-address": (m.WriteAddress, 0x10, "write a new address (A018)"),
    "bulk-read": (m.BulkRead, m.CDT_TYPE, "ST2000R: counts and status of a CDT's channels"),
    "alarms": (m.ReadAlarms, m.CDT_TYPE, "ST2000R: alarm flags of every channel"),
    "cdt-status": (m.ReadCdtStatus, m.CDT_TYPE, "ST2000R: mains, battery, modules, firmware"),
    "channel-info": (m.ReadChannelInfo, m.CDT_TYPE, "ST2000R: meter type, serial, pulse constant"),
    "set-base": (m.SetBase, m.CDT_TYPE, "ST2000R: set a channel's pulse counter"),
    "time-sync": (m.TimeSync, m.CDT_TYPE, "ST2000R: set the CDT clock"),
}


def _build(args) -> m.Message:
    cls, default_type, _ = COMMANDS[args.command]
    kw = {
        "meter_type": default_type if args.type is None else args.type,
        "address": args.address,
        "ser": args.ser,
        "di_order": m.DiOrder(args.di_order),
    }
    if args.command == "read-address" and args.address is None:
        kw["address"] = f.BROADCAST
    if kw["address"] is None:
        raise _Usage(f"st2000r frame encode {args.command}: --address is required")
    if cls is m.ValveControl:
        kw["open"] = args.command == "valve-open"
        kw["alt"] = args.alt
    elif cls is m.WriteAddress:
        kw["new_address"] = args.new_address
    elif cls is m.BulkRead:
        kw["first_channel"], kw["count"] = args.first, args.count or m.MAX_BULK
    elif cls is m.ReadChannelInfo:
        kw["first_channel"], kw["count"] = args.first, args.count or m.MAX_INFO
    elif cls is m.SetBase:
        kw["channel"], kw["count"] = args.channel, args.value
    elif cls is m.TimeSync:
        kw["time"] = args.time or datetime.now().replace(microsecond=0)
    return cls(**kw)


def _encode_parser(sub) -> None:
    enc = sub.add_parser("encode", help="build a request frame and print it as hex")
    cmds = enc.add_subparsers(dest="command", required=True)
    for name, (cls, _, text) in COMMANDS.items():
        p = cmds.add_parser(name, help=text, description=text)
        p.add_argument("--address", "-a", type=_address,
                       help="meter or CDT address, up to 14 digits (or 'broadcast')")  # fmt: skip
        p.add_argument("--type", "-t", type=integer, help="meter type byte (default by command)")
        p.add_argument("--ser", type=integer, default=0, help="frame serial number 0..255")
        p.add_argument("--di-order", choices=["901F", "1F90"], default="901F",
                       help="DI byte order on the wire")  # fmt: skip
        p.add_argument("--preamble", type=integer_in(0, 4), default=2, help="FE wake-up bytes 0..4 (default 2)")
        if cls is m.ValveControl:
            p.add_argument("--alt", action="store_true", help="vendor control code 2Ah instead of 04h")
        if cls is m.WriteAddress:
            p.add_argument("--new-address", type=_address, required=True)
        if cls in (m.BulkRead, m.ReadChannelInfo):
            p.add_argument("--first", type=integer, default=1, help="first channel 1..96")
            p.add_argument("--count", type=integer, help="number of channels")
        if cls is m.SetBase:
            p.add_argument("--channel", type=integer, required=True, help="channel 1..96")
            p.add_argument("--value", type=integer, default=0, help="new pulse count (default 0)")
        if cls is m.TimeSync:
            p.add_argument("--time", type=_time, help="ISO date-time (default: now)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="st2000r frame", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    dec = sub.add_parser("decode", help="decode frames given as hex and print them as JSON")
    dec.add_argument("hex", nargs="+", help="frame bytes in hex ('-' reads standard input)")
    dec.add_argument("--compact", action="store_true", help="one JSON object per line")
    _encode_parser(sub)
    return parser


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help exits 0; a bad argument exits 2 after one line on stderr
        return int(exc.code or 0)
    try:
        if args.action == "decode":
            return _cmd_decode(args)
        msg = _build(args)
        print(m.encode(msg, preamble=args.preamble).hex(" ").upper())
        return 0
    except _Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    except CodecError as exc:
        print(f"st2000r frame encode: {exc}", file=sys.stderr)
        return 2
