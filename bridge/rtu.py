"""The Modbus RTU slave: the bridge's map on a serial line, for SCADA masters on RS-485.

The same request core as TCP (:class:`~st2000r.bridge.server.Responder`: pymodbus decodes
the request PDU and builds the answer) behind RTU framing (Modbus over serial line v1.02):
``unit id, PDU, CRC-16 (low byte first)``.  The framing stays the slave's own: pymodbus's
``FramerRTU`` keeps no 3.5-character silence (it looks for a frame start byte by byte and
drops the whole buffer at the first bad CRC), where a slave on a shared line judges a frame
it cannot place once the line falls silent (below).

Framing.  A frame ends with a silence of 3.5 characters (at least 1.75 ms above 19200
baud).  Every request the bridge serves has a length known from its first bytes (functions
1-6: 8 bytes; 15: 9 + byte count), so a complete request with a good CRC is answered at
once, without waiting for the silence; anything else (an unknown function, noise, a frame
with a bad CRC) is kept until the line has been silent for 3.5 characters and then judged
whole: a frame of another function with a good CRC answers exception 01, the rest is
dropped.  A buffer never grows beyond the largest RTU frame (256 bytes).

Addressing.  The slave answers the unit ids of the map (or only ``unit`` when configured);
a request for any other address, and a broadcast (0), gets no answer at all: on a
multidrop line other slaves own those addresses.  Exceptions 0Ah never go on the line.

Writes.  A serial master has no address ``write_allow`` could name: coil writes answer
exception 01 (the write policy refuses a request without a client address).

Time comes from the injected reactor (``callLater``), so the silence timer is testable with
a ``Clock``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from st2000r.bridge.server import Responder

__all__ = ["RtuSlave", "crc16", "open_rtu"]

log = Logger()

MAX_FRAME = 256


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _with_crc(frame: bytes) -> bytes:
    return frame + crc16(frame).to_bytes(2, "little")


def _known_length(buf: bytes) -> int | None:
    """The length of the request at the start of ``buf`` if its function has a fixed
    layout and enough of it is there to tell; else None."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if 1 <= fc <= 6:
        return 8
    if fc == 15 and len(buf) >= 7:
        return 9 + buf[6]
    return None


class RtuSlave(Protocol):
    """The slave on one serial line.  ``responder``: the request core (its ``valid`` units
    are the addresses answered); ``clock``: ``callLater`` for the silence timer; ``baud``
    sets the silence (3.5 characters of 11 bits, at least 1.75 ms)."""

    def __init__(self, responder: Responder, clock: Any, baud: int) -> None:
        self.responder = responder
        self.clock = clock
        self.silence = max(3.5 * 11 / baud, 0.00175)
        self.buf = b""
        self._timer: Any = None
        self.frames = 0
        self.dropped = 0

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while True:
            need = _known_length(self.buf)
            if need is None or len(self.buf) < need:
                break
            frame = self.buf[:need]
            if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                break  # not a frame start, or damaged: judged when the line falls silent
            self.buf = self.buf[need:]
            self._frame(frame)
        if len(self.buf) > MAX_FRAME:
            self.dropped += 1
            self.buf = b""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(self.silence, self._silent) if self.buf else None

    def _silent(self) -> None:
        self._timer = None
        frame, self.buf = self.buf, b""
        if len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
            self._frame(frame)
        else:
            self.dropped += 1

    def _frame(self, frame: bytes) -> None:
        unit = frame[0]
        if unit not in self.responder.valid:
            return  # another slave's address, or a broadcast: never answered
        self.frames += 1
        answer = self.responder.respond(unit, frame[1:-2], None)
        if self.transport is not None:
            self.transport.write(_with_crc(bytes((unit,)) + answer))

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def open_rtu(responder: Responder, reactor: Any, device: str, baud: int, parity: str) -> tuple[RtuSlave, Any]:
    """The slave on ``device`` (8 data bits, parity ``"N"``/``"E"``/``"O"``, 2 stop bits
    with ``"N"`` else 1); ``(protocol, serial port)``.  Raises when the device cannot be opened."""
    from twisted.internet.serialport import SerialPort

    slave = RtuSlave(responder, reactor, baud)
    port = SerialPort(slave, device, reactor, baudrate=baud, bytesize=8, parity=parity,
                      stopbits=2 if parity == "N" else 1)
    return slave, port
