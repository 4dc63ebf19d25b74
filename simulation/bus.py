"""One link's half-duplex RS485 bus in the device role, with physical timing.

The master's bytes arrive through an endpoint (pty, TCP, DTU, modem) in any chunking;
:class:`SimulatedBus` puts them on a modelled wire and writes the devices' replies back
when their last byte would have arrived.  Timing rules (seconds, ``bt`` = one byte's wire
time = ``LineSettings.bits_per_byte / baud``; 8E1 = 11 bits):

- a request byte occupies the wire for ``bt``; bytes queue behind the master's previous
  ones (``start = max(arrival, wire free)``); the request is complete when its last byte
  has left the wire;
- the device starts replying ``turnaround_ms`` later, plus twice the one-way latency of
  the repeaters on its path, plus a ``late`` fault's delay; the reply takes ``len x bt``
  and is written in one piece at the instant its last byte arrives.  From the master's last
  write the delay is therefore ``n_req x bt + turnaround + 2 x latency + late + n_rep x bt``;
- half-duplex: when the master transmits while a reply is on the wire (or a reply starts
  while the master is still transmitting), the overlapping reply bytes are garbled and the
  overlapping request bytes are garbled too (the device does not hear it);  when several
  devices answer at once (broadcast), their replies are AND-ed as on an open-collector
  line (idle bits are ones) — a collision the master sees as junk;
- wire faults from the link's world state: ``bit_error_rate`` flips data bits (8 per byte)
  independently with that probability, ``drop_rate`` loses whole bytes (their wire time
  still passes), both directions, drawn from a generator seeded by the world seed and the
  link name;
- a ``link_drop`` discards everything pending, ignores the master for that many (clock)
  seconds, and calls the ``on_link_drop`` callbacks so the endpoint can hang up.

``physical_timing=False`` skips wire time, repeater latency and collisions: a reply is
written ``turnaround (+ late)`` after the request's bytes arrived, still via ``callLater``.
Only the injected clock is used.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from st2000r.drivers.st2000r.frame import Frame, FrameDecoder, NEED_DATA
from st2000r.simulation import devices
from st2000r.simulation.world import World

__all__ = ["SimulatedBus", "BusStats"]

log = Logger()


@dataclass(slots=True)
class BusStats:
    """Counters since the bus was made (a plain mutable record, read by the control API)."""

    requests: int = 0  # frames decoded from the master
    replies: int = 0  # replies written to the endpoint
    silent: int = 0  # requests that no device answered
    collisions: int = 0  # master talked over a reply, or several devices answered at once
    corrupted_bytes: int = 0  # bytes changed by bit errors or collisions (both directions)
    flipped_bits: int = 0  # bits flipped by the bit_errors fault
    dropped_bytes: int = 0  # bytes lost by the drop_bytes fault
    junk_bytes: int = 0  # master bytes that were not part of a valid frame
    bytes_in: int = 0  # from the master
    bytes_out: int = 0  # written to the endpoint
    link_drops: int = 0
    lost_replies: int = 0  # replies cancelled by a link drop or disconnect


class _OnWire:
    __slots__ = ("start", "end", "wire", "call")

    def __init__(self, start: float, end: float, wire: bytearray) -> None:
        self.start = start
        self.end = end
        self.wire = wire
        self.call: IDelayedCall | None = None


class SimulatedBus:
    """One link's half-duplex RS485 bus in the device role, with physical timing."""

    def __init__(
        self, world: World, link_name: str, clock: IReactorTime, *, physical_timing: bool = True
    ) -> None:
        self._link = world.link(link_name)  # FaultError for an unknown link
        self._clock = clock
        self.physical_timing = physical_timing
        line = self._link.line
        self.byte_time = line.bits_per_byte / line.baud
        self.stats = BusStats()
        self._rng = random.Random(f"{world.seed}/bus/{link_name}")
        self._decoder = FrameDecoder()
        self._write: Callable[[bytes], None] | None = None
        self._rx_start = 0.0  # master's current transmission on the wire: [start, free)
        self._rx_free = 0.0
        self._on_wire: list[_OnWire] = []
        self._requests: list[tuple[float, IDelayedCall]] = []  # (last byte time, call)
        self._deaf_until = -math.inf
        self._drop_callbacks: list[Callable[[float], None]] = []
        self._link.add_drop_listener(self._link_drop)

    # ---------------------------------------------------------------- endpoint side

    def connect(self, write: Callable[[bytes], None]) -> None:
        """Send reply bytes to ``write`` from now on (the endpoint's transport.write)."""
        self._write = write

    def disconnect(self) -> None:
        """Forget the endpoint; replies on the wire are lost, partial requests dropped."""
        self._write = None
        self._cancel_all()

    def close(self) -> None:
        """Disconnect and stop listening for link drops (the bus is not used again)."""
        self.disconnect()
        self._link.remove_drop_listener(self._link_drop)

    def on_link_drop(self, callback: Callable[[float], None]) -> None:
        """``callback(seconds)`` runs when a link_drop action applies to this link."""
        self._drop_callbacks.append(callback)

    def reply_time(self, request_bytes: int, reply_bytes: int, cdt: int | None = None) -> float:
        """Model delay (s) from the master's last write of an idle-bus request to the reply
        delivery (``cdt`` adds its repeater latency and late fault)."""
        extra = 0.0
        if cdt is not None:
            state = self._link.cdt_by_address[cdt]
            extra = (2 * state.latency_s if self.physical_timing else 0.0) + state.late_ms / 1000.0
        if not self.physical_timing:
            return self._link.turnaround_s + extra
        return (request_bytes + reply_bytes) * self.byte_time + self._link.turnaround_s + extra

    # ---------------------------------------------------------------- master bytes

    def data_received(self, data: bytes) -> None:
        """Bytes from the master, any chunking.  Never raises."""
        if not data:
            return
        now = self._clock.seconds()
        if now < self._deaf_until:
            return
        stats = self.stats
        stats.bytes_in += len(data)
        n = len(data)
        if self.physical_timing:
            bt = self.byte_time
            start = max(now, self._rx_free)
            end = start + n * bt
            if self._rx_free <= now:  # a new transmission, not a continuation
                self._rx_start = start
            self._rx_free = end
            if self._on_wire:
                data = self._collide_request(data, start, end)
        else:
            bt = 0.0
            start = end = now
        data = self._noise(data)
        decoder = self._decoder
        decoder.feed(data)
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Frame):
                # what is still buffered lies after the frame, at the end of this chunk
                used = len(data) - decoder.pending
                t_end = start + max(0, used) * bt
                if self.physical_timing and t_end > now:
                    call = self._clock.callLater(t_end - now, self._request, event, t_end)
                    self._requests.append((t_end, call))
                else:
                    self._request(event, now)
            else:
                stats.junk_bytes += len(event.data)

    def _request(self, frame: Frame, t: float) -> None:
        self._requests = [(te, c) for te, c in self._requests if c.active()]
        self.stats.requests += 1
        replies = devices.answer(self._link, frame)
        if not replies:
            self.stats.silent += 1
            return
        ta = self._link.turnaround_s
        if self.physical_timing:
            start = t + ta + min(r.latency_s + r.late_s for r in replies)
        else:
            start = t + ta + min(r.late_s for r in replies)
        if len(replies) > 1:
            self.stats.collisions += 1
            size = max(len(r.wire) for r in replies)
            wire = bytearray(b"\xff" * size)
            for r in replies:
                for i, b in enumerate(r.wire):
                    wire[i] &= b
            self.stats.corrupted_bytes += size
        else:
            wire = bytearray(replies[0].wire)
        end = start + len(wire) * self.byte_time if self.physical_timing else start
        wire = bytearray(self._noise(bytes(wire)))
        on_wire = _OnWire(start, end, wire)
        if self.physical_timing and self._rx_free > start:
            # the master is still talking: the reply's head and the master's tail collide
            self.stats.collisions += 1
            self._collide_reply(on_wire, max(start, self._rx_start), self._rx_free)
            for t_end, call in self._requests:
                if t_end > start and call.active():  # its bytes overlapped the reply
                    call.cancel()
            self._requests = [(te, c) for te, c in self._requests if c.active()]
        now = self._clock.seconds()
        on_wire.call = self._clock.callLater(max(0.0, end - now), self._deliver, on_wire)
        self._on_wire.append(on_wire)

    def _deliver(self, on_wire: _OnWire) -> None:
        self._on_wire.remove(on_wire)
        if self._write is None:
            self.stats.lost_replies += 1
            return
        self.stats.replies += 1
        self.stats.bytes_out += len(on_wire.wire)
        if on_wire.wire:
            self._write(bytes(on_wire.wire))

    # ---------------------------------------------------------------- collisions & noise

    def _garble(self, b: int) -> int:
        return b ^ (self._rng.randrange(1, 256))

    def _collide_request(self, data: bytes, start: float, end: float) -> bytes:
        bt = self.byte_time
        out = None
        for p in self._on_wire:
            if p.start < end and start < p.end:
                self.stats.collisions += 1
                self._collide_reply(p, start, end)
                k_lo = max(0, math.floor((p.start - start) / bt))
                k_hi = min(len(data), math.ceil((p.end - start) / bt))
                if out is None:
                    out = bytearray(data)
                for k in range(k_lo, k_hi):
                    out[k] = self._garble(out[k])
                self.stats.corrupted_bytes += max(0, k_hi - k_lo)
        return data if out is None else bytes(out)

    def _collide_reply(self, p: _OnWire, start: float, end: float) -> None:
        """Garble the bytes of reply ``p`` whose wire slots overlap [start, end)."""
        bt = self.byte_time
        i_lo = max(0, math.floor((start - p.start) / bt))
        i_hi = min(len(p.wire), math.ceil((end - p.start) / bt))
        for i in range(i_lo, i_hi):
            p.wire[i] = self._garble(p.wire[i])
        self.stats.corrupted_bytes += max(0, i_hi - i_lo)

    def _noise(self, data: bytes) -> bytes:
        ber = self._link.bit_error_rate
        drop = self._link.drop_rate
        if not ber and not drop:
            return data
        rng = self._rng
        buf = bytearray(data)
        stats = self.stats
        if ber > 0:
            nbits = len(buf) * 8
            log_q = math.log1p(-ber)
            i = -1
            touched = set()
            while True:
                i += 1 + int(math.log(1.0 - rng.random()) / log_q)
                if i >= nbits:
                    break
                buf[i >> 3] ^= 1 << (i & 7)
                touched.add(i >> 3)
                stats.flipped_bits += 1
            stats.corrupted_bytes += len(touched)
        if drop > 0:
            kept = bytearray()
            for b in buf:
                if rng.random() < drop:
                    stats.dropped_bytes += 1
                else:
                    kept.append(b)
            buf = kept
        return bytes(buf)

    # ---------------------------------------------------------------- link drop

    def _cancel_all(self) -> None:
        for p in self._on_wire:
            if p.call is not None and p.call.active():
                p.call.cancel()
                self.stats.lost_replies += 1
        self._on_wire.clear()
        for _, call in self._requests:
            if call.active():
                call.cancel()
        self._requests.clear()
        self._decoder.clear()

    def _link_drop(self, seconds: float) -> None:
        self.stats.link_drops += 1
        self._cancel_all()
        self._deaf_until = self._clock.seconds() + seconds
        log.info("link {link}: dropped for {seconds} s", link=self._link.name, seconds=seconds)
        for callback in list(self._drop_callbacks):
            try:
                callback(seconds)
            except Exception:
                log.failure("link drop callback failed")
