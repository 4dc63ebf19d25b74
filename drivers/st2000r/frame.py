"""CJ/T 188-2004 link layer, sans-I/O: frames to bytes and a resynchronising stream decoder.

Wire format (``docs/protocol.md``, link layer)::

    FE…  68  T  A0 … A6  C  L  DATA(L)  CS  16

``FE`` wake-up bytes (0–4 by the standard, any number accepted) precede a frame; ``T`` is
the meter type, ``A0..A6`` the address in BCD low byte first, ``C`` the control byte, ``L``
the data length (the frame is ``13 + L`` bytes from 68 to 16), ``CS`` the byte sum from
68 to the last data byte, mod 256.

The decoder follows h11's shape: :meth:`FrameDecoder.feed` takes bytes in arbitrary chunks
and :meth:`FrameDecoder.next_event` returns a :class:`Frame`, a :class:`Junk` (bytes it had
to throw away, with the reason — the driver counts them as line errors) or ``NEED_DATA``.
Recovery rules:

* bytes before a 68 are junk (FE preamble bytes are dropped silently);
* a candidate frame whose end byte or checksum is wrong is rejected *one byte at a time*:
  only up to the next 68 is discarded, so a good frame that starts inside the rejected
  span is still found;
* while a candidate is incomplete, a complete good frame starting later in the buffer wins
  (a false 68 in line noise announcing a long frame must not hold back a real reply).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from st2000r.drivers.st2000r.errors import CodecError

START: Final = 0x68
END: Final = 0x16
WAKE: Final = 0xFE
HEADER_LEN: Final = 11  # 68 T A0..A6 C L
OVERHEAD: Final = 13  # header + CS + 16
MAX_DATA: Final = 255
BROADCAST: Final = "AAAAAAAAAAAAAA"

# control byte bits
DIR_UP: Final = 0x80  # D7: 1 = slave -> master (reply)
ERROR: Final = 0x40  # D6: 1 = abnormal reply
FOLLOW: Final = 0x20  # D5: 1 = follow-up frame
FUNCTION_MASK: Final = 0x1F


@dataclass(frozen=True, slots=True)
class Frame:
    """One link-layer frame.

    ``address`` is the 14 hex digits most significant first, as printed on a meter
    (``A6 … A0``); BCD addresses are decimal digit strings, the broadcast address is
    ``"AAAAAAAAAAAAAA"``.  ``data`` is DATA without length, checksum or delimiters.
    """

    meter_type: int
    address: str
    control: int
    data: bytes

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIR_UP)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ERROR)

    @property
    def follow_up(self) -> bool:
        return bool(self.control & FOLLOW)

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK


@dataclass(frozen=True, slots=True)
class Junk:
    """Bytes the decoder discarded and why (noise, bad checksum, bad end byte)."""

    data: bytes
    reason: str


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


def address_bytes(address: str) -> bytes:
    """The 7 wire bytes (A0 first) of a 14-hex-digit address string."""
    if len(address) != 14:
        raise CodecError(f"address {address!r} must have 14 digits")
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError:
        raise CodecError(f"address {address!r} is not 14 hex digits") from None


def address_str(raw: bytes) -> str:
    """Inverse of :func:`address_bytes`."""
    return raw[::-1].hex().upper()


def checksum(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


def encode_frame(frame: Frame, preamble: int = 2) -> bytes:
    """Wire bytes of ``frame`` with ``preamble`` FE wake-up bytes in front."""
    if not 0 <= frame.meter_type <= 0xFF or not 0 <= frame.control <= 0xFF:
        raise CodecError("meter type and control must be bytes (0..255)")
    if len(frame.data) > MAX_DATA:
        raise CodecError(f"data of {len(frame.data)} bytes exceeds the 255-byte L field")
    body = bytearray((START, frame.meter_type))
    body += address_bytes(frame.address)
    body.append(frame.control)
    body.append(len(frame.data))
    body += frame.data
    body.append(checksum(body))
    body.append(END)
    return b"\xfe" * preamble + bytes(body)


def _check(buf: bytes | bytearray, start: int, n: int) -> tuple[int, str] | None:
    """(offset, reason) why ``buf[start:start+n]`` is not a valid frame, or None if it is."""
    cs = checksum(memoryview(buf)[start : start + n - 2])
    if buf[start + n - 2] != cs:
        return start + n - 2, f"checksum expected {cs:02X}h, got {buf[start + n - 2]:02X}h"
    if buf[start + n - 1] != END:
        return start + n - 1, f"expected end byte 16h, got {buf[start + n - 1]:02X}h"
    return None


def _frame_at(buf: bytes | bytearray, start: int, n: int) -> Frame:
    return Frame(
        meter_type=buf[start + 1],
        address=address_str(bytes(buf[start + 2 : start + 9])),
        control=buf[start + 9],
        data=bytes(buf[start + HEADER_LEN : start + n - 2]),
    )


def decode_frame(data: bytes) -> tuple[Frame, int]:
    """Decode exactly one frame (wake-up bytes allowed in front, nothing after it).

    Returns the frame and the offset of its 68 byte.  Raises :class:`CodecError` naming
    the byte and what was expected there.
    """
    i = 0
    while i < len(data) and data[i] == WAKE:
        i += 1
    if i == len(data):
        raise CodecError("no frame: expected start byte 68h", i)
    if data[i] != START:
        raise CodecError(f"expected start byte 68h (after FE wake-up bytes), got {data[i]:02X}h", i)
    if len(data) - i < HEADER_LEN:
        raise CodecError(
            f"frame ends after {len(data) - i} bytes; the header alone is {HEADER_LEN}", len(data)
        )
    n = OVERHEAD + data[i + 10]
    if len(data) - i < n:
        raise CodecError(
            f"frame ends at byte {len(data)}; L={data[i + 10]:02X}h needs {n} bytes from the 68",
            len(data),
        )
    problem = _check(data, i, n)
    if problem is not None:
        raise CodecError(problem[1], problem[0])
    if len(data) > i + n:
        raise CodecError(f"{len(data) - i - n} unexpected byte(s) after the end byte", i + n)
    return _frame_at(data, i, n), i


class FrameDecoder:
    """Incremental decoder for a byte stream carrying frames (see module docstring)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def clear(self) -> bytes:
        """Drop what is buffered (e.g. after a response timeout) and return it."""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def next_event(self) -> Frame | Junk | _NeedData:
        buf = self._buf
        while True:
            i = buf.find(START)
            if i < 0:
                junk = bytes(buf).lstrip(b"\xfe")
                buf.clear()
                if junk:
                    return Junk(junk, "noise without a start byte")
                return NEED_DATA
            if i:
                junk = bytes(buf[:i])
                del buf[:i]
                junk = junk.strip(b"\xfe")
                if junk:
                    return Junk(junk, "noise before a start byte")
                continue
            if len(buf) < HEADER_LEN:
                return NEED_DATA
            n = OVERHEAD + buf[10]
            if len(buf) < n:
                later = self._complete_frame_after(1)
                if later is None:
                    return NEED_DATA
                junk = bytes(buf[:later])
                del buf[:later]
                return Junk(junk, f"truncated frame (L={junk[10] if len(junk) > 10 else 0:02X}h)")
            problem = _check(buf, 0, n)
            if problem is None:
                frame = _frame_at(buf, 0, n)
                del buf[:n]
                return frame
            nxt = buf.find(START, 1)
            cut = nxt if 0 < nxt else len(buf)
            junk = bytes(buf[:cut])
            del buf[:cut]
            # FE bytes right before the next 68 are its wake-up preamble, not line errors
            return Junk(junk.rstrip(b"\xfe") or junk, f"frame of {n} bytes: {problem[1]}")

    def _complete_frame_after(self, start: int) -> int | None:
        buf = self._buf
        j = buf.find(START, start)
        while j >= 0:
            if len(buf) - j >= HEADER_LEN:
                n = OVERHEAD + buf[j + 10]
                if len(buf) - j >= n and _check(buf, j, n) is None:
                    return j
            j = buf.find(START, j + 1)
        return None

    def frames(self, data: bytes = b"") -> list[Frame]:
        """Feed ``data`` and return every complete frame now available (junk is dropped)."""
        if data:
            self.feed(data)
        out = []
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return out
            if isinstance(event, Frame):
                out.append(event)
