"""The bus master: exactly one transaction in flight on one half-duplex field bus.

:class:`BusMaster` is transport-agnostic: a link hands it a byte pipe with
:meth:`~BusMaster.connection_made` (``write``), feeds it :meth:`~BusMaster.data_received`
and reports :meth:`~BusMaster.connection_lost`; ``links.LinkProtocol`` is the thin Twisted
adapter for serial ports, TCP, a GPRS socket or a GSM data call.  Time comes only from the
injected ``IReactorTime``.

Rules of a transaction (:meth:`BusMaster.transact`):

- requests wait in a priority queue (``Priority``: COMMAND, STATUS, SWEEP, BACKFILL; FIFO
  within a priority); the next one is chosen when the bus is free, so a command waits at
  most for the transaction (attempt) on the wire;
- before every request the bus is left idle for ``timing.gap_s`` (plus a small backoff
  before a retry);
- every attempt gets a fresh SER (rolling 0..255); a reply is accepted only if it is a
  reply frame with a valid checksum and (vendor frames) CRC, from the addressed device
  (any address for a broadcast), with the request's function, DI and SER.  Anything else
  is dropped and counted (``unexpected_replies``; a late reply to a timed-out SER also
  teaches the adaptive timeout);
- decoder junk counts as a checksum error, a frame ``messages.parse`` rejects (vendor CRC,
  bad fields) as a CRC error; either spoils the attempt: once the line has been quiet for
  ``quiet_s`` the attempt is retried without waiting for the timeout.  A corrupted reply is
  never returned;
- the attempt timeout is the model of ``timing.py`` plus an adaptive allowance: the p99 of
  (observed round trip - model) over recent replies, clamped to ``[0, 2 x model + 1 s]``,
  so the timeout stays within ``[model, 3 x model + 1 s]``;
- after ``retries`` failed retries: :class:`TransactionTimeout`; a lost connection with
  the request in flight is retried when the link is back; a request that waited
  ``queue_timeout_s`` for a disconnected link fails with :class:`LinkDown`;
- every transaction that went on the wire ends in exactly one
  :class:`~st2000r.drivers.st2000r.reachability.Outcome` reported to
  :attr:`BusMaster.reachability` (reply or final error, with the address, time and purpose
  given to :meth:`BusMaster.transact`), even when its caller cancelled it: the field
  answered whether or not anyone still waits;
- statistics are kept per device only for addresses the master itself sent to; replies
  from any other address are counted in the link totals only (``unexpected_replies``), so
  forged or stray frames cannot grow a table.

Modules: this one holds :class:`BusMaster`, the adapter between the byte pipe, the timers
and the callers' Deferreds; ``master_queue.py`` the priorities, errors, request records and
the priority queue; ``master_policy.py`` reply matching and the adaptive timeout allowance
(both sans-I/O).  Every public name is importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import Link
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import NEED_DATA, Frame, FrameDecoder
from st2000r.drivers.st2000r.master_policy import AdaptiveAllowance, matches
from st2000r.drivers.st2000r.master_queue import (
    Attempt,
    LinkDown,
    Pending,
    Priority,
    RequestQueue,
    TransactionError,
    TransactionTimeout,
)
from st2000r.drivers.st2000r.reachability import Outcome, Purpose, Reachability
from st2000r.drivers.st2000r.stats import DeviceStats, LinkStats, RttHistogram
from st2000r.drivers.st2000r.timing import BusTiming, max_reply_size

__all__ = [
    "Priority",
    "TransactionError",
    "TransactionTimeout",
    "LinkDown",
    "RttHistogram",
    "DeviceStats",
    "LinkStats",
    "BusMaster",
]

log = Logger()


# --------------------------------------------------------------------------- the master


class BusMaster:
    """Exactly one transaction in flight on one bus; a priority queue (FIFO within a
    priority).  See the module docstring for the rules.

    ``retries``: extra attempts after the first (default for :meth:`transact`);
    ``queue_timeout_s``: how long a request waits for a disconnected link before
    :class:`LinkDown`; ``preamble``: FE wake-up bytes sent before each request;
    ``quiet_s``: line silence after a corrupted/partial reply before the attempt is given up
    (default: ``max(3 x gap, 50 ms)`` on serial links, 0.5 s on network links, where a frame
    may arrive in several packets); ``backoff_s``: extra idle before retry ``k`` is
    ``backoff_s x k`` (default: one gap).
    """

    def __init__(
        self,
        link: Link,
        clock: IReactorTime,
        *,
        retries: int = 2,
        queue_timeout_s: float = 60.0,
        preamble: int = 2,
        quiet_s: float | None = None,
        backoff_s: float | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.link = link
        self.name = link.name
        self._clock = clock
        self.timing = BusTiming.for_link(link)
        self.retries = retries
        self.queue_timeout_s = queue_timeout_s
        self.preamble = preamble
        if quiet_s is None:
            quiet_s = max(3 * self.timing.gap_s, 0.05) if link.kind == "serial" else 0.5
        self.quiet_s = quiet_s
        self.backoff_s = self.timing.gap_s if backoff_s is None else backoff_s
        self.connected = False
        self.stats = LinkStats()
        self.reachability = Reachability(link)
        self._devices: dict[str, DeviceStats] = {}
        self._queue = RequestQueue()
        self._ser = 0
        self._inflight: Attempt | None = None
        self._send_call: IDelayedCall | None = None
        self._quiet_until = -math.inf
        self._decoder = FrameDecoder()
        self._write: Callable[[bytes], None] | None = None
        self._adaptive = AdaptiveAllowance()
        self._observers: list[Callable[[str, dict], None]] = []

    # ---------------------------------------------------------------- public API

    def transact(
        self,
        request: m.Message,
        *,
        priority: Priority = Priority.SWEEP,
        retries: int | None = None,
        hops_latency_s: float = 0.0,
        purpose: Purpose = Purpose.OTHER,
        plan: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> defer.Deferred:
        """Queue ``request`` (its ``ser`` is replaced by the master's rolling SER).

        Fires with the reply message (an :class:`~messages.ErrorReply` is a reply) or
        errbacks with :class:`TransactionTimeout` / :class:`LinkDown`; a request that cannot
        be encoded fails at once with ``CodecError`` (``TypeError`` for a non-message).
        ``hops_latency_s``: one-way repeater latency to the device (``timing.hops_latency_s``).
        ``purpose``/``plan``: why it is made; carried into its :class:`Outcome`.
        ``on_sent()``: called once, when the request's first frame is written (a command
        knows from then on that the field may act on it).
        Cancelling the Deferred removes a queued request; an in-flight one still finishes on
        the wire (its result is dropped).
        """
        if not isinstance(request, m.Message):
            return defer.fail(TypeError(f"transact needs a messages.Message, got {type(request).__name__} {request!r}"))
        try:
            m.encode(replace(request, ser=0))
        except CodecError as exc:
            return defer.fail(exc)
        pending = Pending(
            request, Priority(priority), self.retries if retries is None else retries, hops_latency_s,
            purpose, plan,
        )
        pending.on_sent = on_sent
        pending.deferred = defer.Deferred(lambda d: self._cancel(pending))
        self._queue.push(pending)
        if not self.connected:
            self._start_queue_timer(pending)
        self._kick()
        return pending.deferred

    def connection_made(self, write: Callable[[bytes], None]) -> None:
        """The link's byte pipe is up: requests go to ``write`` from now on."""
        self._write = write
        self._decoder.clear()
        self._quiet_until = self._clock.seconds() + self.timing.gap_s
        if not self.connected:
            self.connected = True
            self.stats.connects += 1
            log.info("link {link}: connected", link=self.name)
            self.reachability.link_up(self._clock.seconds())
            self._notify("connected", {})
        for pending in self._queue:
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.timer = None
        self._kick()

    def data_received(self, data: bytes) -> None:
        """Bytes from the bus, in any chunking.  Never raises."""
        if not data:
            return
        decoder = self._decoder
        decoder.feed(data)
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Frame):
                self._frame(event)
            else:
                self._junk(len(event.data))
        attempt = self._inflight
        if attempt is not None and (attempt.broken or decoder.pending):
            self._arm_quiet(attempt)

    def connection_lost(self, reason: str = "", *, deliberate: bool = False) -> None:
        """The byte pipe is gone.  An in-flight request is retried when the link is back
        (or fails with :class:`LinkDown` if it has no retry left); queued requests wait up to
        ``queue_timeout_s``.  ``deliberate``: we closed it on purpose (an on-demand GSM call
        hung up when idle): the CDTs are not silent, they are just not asked, so the
        reachability is left as it is and observers hear ``("idle", {"reason"})``."""
        self._write = None
        self._decoder.clear()
        if self._send_call is not None and self._send_call.active():
            self._send_call.cancel()
        self._send_call = None
        was = self.connected
        self.connected = False
        if was:
            self.stats.disconnects += 1
            if deliberate:
                log.info("link {link}: idle ({reason})", link=self.name, reason=reason or "no reason")
                self._notify("idle", {"reason": reason})
            else:
                log.warn("link {link}: disconnected ({reason})", link=self.name, reason=reason or "no reason")
                self.reachability.link_down(self._clock.seconds())
                self._notify("disconnected", {"reason": reason})
        attempt = self._inflight
        if attempt is not None:
            self._end_attempt(attempt)
            pending = attempt.pending
            if pending.cancelled:
                pass
            elif pending.retries_left > 0:
                pending.retries_left -= 1
                self.stats.retries += 1
                self._device(pending.request.address).retries += 1
                self._queue.push_front(pending)
            else:
                self._fail(pending, LinkDown(f"link {self.name}: connection lost ({reason})", pending.request))
        for pending in self._queue:
            if not pending.dead:
                self._start_queue_timer(pending)

    def shutdown(self, reason: str = "bus master stopped") -> None:
        """Fail every queued and in-flight request with :class:`LinkDown` and cancel every
        timer (for a service's stopService)."""
        if self._send_call is not None and self._send_call.active():
            self._send_call.cancel()
        self._send_call = None
        attempt = self._inflight
        if attempt is not None:
            self._end_attempt(attempt)
            self._fail(attempt.pending, LinkDown(f"link {self.name}: {reason}", attempt.pending.request))
        for pending in self._queue.drain():
            if not pending.dead:
                pending.dead = True
                self._stop_queue_timer(pending)
                self._fail(pending, LinkDown(f"link {self.name}: {reason}", pending.request))

    def device_stats(self, address: str) -> DeviceStats:
        """Counters of the device at ``address`` (zeros if never addressed)."""
        return self._devices.get(address) or DeviceStats()

    def devices(self) -> dict[str, DeviceStats]:
        """Every addressed device's counters, by address (a copy of the mapping)."""
        return dict(self._devices)

    def add_observer(self, fn: Callable[[str, dict], None]) -> None:
        """``fn(event, data)`` on link-level changes: ``("connected", {})``,
        ``("disconnected", {"reason"})`` (devices: :attr:`reachability`).  Exceptions from
        ``fn`` are logged."""
        self._observers.append(fn)

    @property
    def queued(self) -> int:
        """Requests waiting (not counting the one in flight)."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """A transaction attempt is on the wire."""
        return self._inflight is not None

    def timeout_for(self, request: m.Message, hops_latency_s: float = 0.0) -> float:
        """The attempt timeout (s) the master would use for ``request`` now: the model
        plus the adaptive allowance (see the module docstring)."""
        return self._timeout(request, hops_latency_s)[1]

    # ---------------------------------------------------------------- queue

    def _remove(self, pending: Pending) -> None:
        self._queue.discard(pending)
        self._stop_queue_timer(pending)

    def _start_queue_timer(self, pending: Pending) -> None:
        if pending.timer is None or not pending.timer.active():
            pending.timer = self._clock.callLater(self.queue_timeout_s, self._queue_expired, pending)

    def _stop_queue_timer(self, pending: Pending) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None

    def _queue_expired(self, pending: Pending) -> None:
        pending.timer = None
        if pending.dead or self.connected:
            return
        self._remove(pending)
        self._fail(
            pending,
            LinkDown(f"link {self.name}: not connected within {self.queue_timeout_s:g} s", pending.request),
        )

    def _cancel(self, pending: Pending) -> None:
        pending.cancelled = True
        if self._inflight is None or self._inflight.pending is not pending:
            self._remove(pending)

    # ---------------------------------------------------------------- sending

    def _kick(self) -> None:
        if self._inflight is not None or not self.connected or not self._queue:
            return
        if self._send_call is not None and self._send_call.active():
            return
        delay = self._quiet_until - self._clock.seconds()
        if delay > 0:
            self._send_call = self._clock.callLater(delay, self._send_next)
        else:
            self._send_next()

    def _timeout(self, request: m.Message, latency_s: float) -> tuple[float, float]:
        nbytes = len(m.encode(replace(request, ser=0), self.preamble))
        model = self.timing.reply_timeout(nbytes, max_reply_size(request), latency_s)
        return model, model + self._adaptive.allowance(model)

    def _send_next(self) -> None:
        self._send_call = None
        if self._inflight is not None or not self.connected:
            return
        pending = self._queue.pop()
        if pending is None:
            return
        self._ser = (self._ser + 1) & 0xFF
        msg = replace(pending.request, ser=self._ser)
        wire = m.encode(msg, self.preamble)
        model, timeout = self._timeout(pending.request, pending.latency_s)
        now = self._clock.seconds()
        attempt = Attempt(pending, msg, now, model, timeout)
        self._inflight = attempt
        pending.attempts += 1
        self.stats.requests += 1
        self._device(msg.address).requests += 1
        leftover = self._decoder.clear()
        if leftover:
            self._junk(len(leftover), attribute=False)
        attempt.timer = self._clock.callLater(timeout, self._on_timeout, attempt)
        write = self._write
        try:
            write(wire)
        except Exception as exc:  # a transport that fails to write is a lost link
            log.failure("link {link}: write failed", Failure(), link=self.name)
            self.connection_lost(f"write failed: {exc}")
            return
        on_sent, pending.on_sent = pending.on_sent, None
        if on_sent is not None:
            try:
                on_sent()
            except Exception:
                log.failure("link {link}: on_sent callback failed", link=self.name)

    # ---------------------------------------------------------------- receiving

    def _junk(self, nbytes: int, *, attribute: bool = True) -> None:
        self.stats.junk_bytes += nbytes
        self.stats.checksum_errors += 1
        attempt = self._inflight
        if attempt is not None and attribute:
            self._device(attempt.msg.address).checksum_errors += 1
            attempt.broken = True

    def _frame(self, frame: Frame) -> None:
        if not frame.is_reply:
            return  # our own request echoed by a 2-wire converter, or another master
        attempt = self._inflight
        try:
            reply = m.parse(frame)
        except CodecError:
            self.stats.crc_errors += 1
            if attempt is not None:
                self._device(attempt.msg.address).crc_errors += 1
                attempt.broken = True
            return
        if attempt is not None and matches(attempt.msg, reply):
            self._succeed(attempt, reply)
            return
        self.stats.unexpected_replies += 1
        dev = self._devices.get(reply.address)  # never a new entry for an address we did not ask
        if dev is not None:
            dev.unexpected_replies += 1
        if self._adaptive.late_reply(reply, self._clock.seconds()):
            self.stats.late_replies += 1

    def _arm_quiet(self, attempt: Attempt) -> None:
        if attempt.quiet is not None and attempt.quiet.active():
            attempt.quiet.reset(self.quiet_s)
        else:
            attempt.quiet = self._clock.callLater(self.quiet_s, self._on_quiet, attempt)

    def _on_quiet(self, attempt: Attempt) -> None:
        attempt.quiet = None
        if self._inflight is not attempt:
            return
        leftover = self._decoder.clear()
        if leftover:
            self._junk(len(leftover))
        if attempt.broken:
            attempt.pending.corrupted += 1
            self._retry_or_fail(attempt, "corrupted reply")

    def _on_timeout(self, attempt: Attempt) -> None:
        attempt.timer = None
        if self._inflight is not attempt:
            return
        self.stats.timeouts += 1
        self._device(attempt.msg.address).timeouts += 1
        self._adaptive.timed_out(attempt)
        leftover = self._decoder.clear()
        if leftover:
            self._junk(len(leftover))
        self._retry_or_fail(attempt, "no reply")

    def _end_attempt(self, attempt: Attempt) -> None:
        for call in (attempt.timer, attempt.quiet):
            if call is not None and call.active():
                call.cancel()
        attempt.timer = attempt.quiet = None
        self._inflight = None
        self._quiet_until = self._clock.seconds() + self.timing.gap_s

    def _succeed(self, attempt: Attempt, reply: m.Message) -> None:
        self._end_attempt(attempt)
        now = self._clock.seconds()
        rtt = now - attempt.sent_at
        address = attempt.msg.address
        dev = self._device(address)
        self.stats.replies += 1
        dev.replies += 1
        self.stats.rtt.add(rtt)
        dev.rtt.add(rtt)
        self._adaptive.learn(rtt - attempt.model)
        pending = attempt.pending
        self._report(pending, address, reply, None, now)
        d = pending.deferred
        if not pending.cancelled and d is not None and not d.called:
            d.callback(reply)
        self._kick()

    def _retry_or_fail(self, attempt: Attempt, why: str) -> None:
        self._end_attempt(attempt)
        pending = attempt.pending
        address = attempt.msg.address
        if pending.cancelled:
            self._kick()
            return
        if pending.retries_left > 0:
            pending.retries_left -= 1
            self.stats.retries += 1
            self._device(address).retries += 1
            self._quiet_until += self.backoff_s * pending.attempts
            self._queue.push_front(pending)
            self._kick()
            return
        self.stats.failures += 1
        self._device(address).failures += 1
        detail = f"{pending.corrupted} corrupted" if pending.corrupted else "silence"
        error = TransactionTimeout(
            f"link {self.name}: no valid reply from {address} to {type(pending.request).__name__} "
            f"after {pending.attempts} attempts ({detail})",
            pending.request,
            pending.attempts,
            pending.corrupted,
        )
        self._report(pending, address, None, error, self._clock.seconds())
        self._fail(pending, error)
        self._kick()

    def _fail(self, pending: Pending, error: TransactionError) -> None:
        d = pending.deferred
        if not pending.cancelled and d is not None and not d.called:
            d.errback(error)

    # ---------------------------------------------------------------- helpers

    def _report(self, pending: Pending, address: str, reply: m.Message | None, error: Exception | None,
                at: float) -> None:
        outcome = Outcome(self.name, address, pending.request, reply, error, at, pending.purpose, pending.plan)
        try:
            self.reachability.observe(outcome)
        except Exception:
            log.failure("link {link}: reachability failed on an outcome", link=self.name)

    def _device(self, address: str) -> DeviceStats:
        dev = self._devices.get(address)
        if dev is None:
            dev = self._devices[address] = DeviceStats()
        return dev

    def _notify(self, event: str, data: dict) -> None:
        for fn in list(self._observers):
            try:
                fn(event, data)
            except Exception:
                log.failure("link {link}: observer failed on {event}", link=self.name, event=event)
