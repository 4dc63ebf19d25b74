"""Transaction outcomes and the one place that knows whether a CDT answers.

The bus master reports every finished transaction exactly once, as an :class:`Outcome`
(the matched reply, or the error after the last retry), to the :class:`Reachability` of its
link.  Everything else reads from here instead of keeping its own idea:

- the **point database** receives every reply through :meth:`Reachability.add_reply_listener`
  (plan rounds, on-demand reads and command read-backs alike: one path) and the
  answering/silent transitions through :meth:`Reachability.add_listener`;
- the **poller** asks :meth:`Reachability.failures` to demote a CDT that keeps failing, and
  sees it restored the moment *any* transaction to it succeeds (a command read-back too);
- the **alarm manager** follows the point database's ``CdtChanged.online``, which comes
  from here.

Rules:

- state is kept only for the CDTs of the link's configuration (keyed by their BCD
  address); outcomes for any other address are counted in :attr:`Reachability.others` and
  otherwise ignored, so no reply and no scan can grow a table here;
- a matched reply (an error reply included: the device answered) makes the CDT
  *answering* and resets its failure count;
- a :class:`~st2000r.drivers.st2000r.master.TransactionTimeout` in which at least one
  attempt met silence makes it *silent* and adds one to its failure count; a timeout whose
  every attempt got a corrupted reply does not (the device is there, the line is noisy:
  the poller splits the read instead);
- a link that goes down makes every CDT of it *silent* at once (reason ``"link down"``)
  without adding to the failure counts (the CDTs did nothing wrong); when the link is back,
  those CDTs are *unknown* again (``answering`` None, announced to the listeners) until a
  transaction tells, so nobody alarms on a silence that was only the link's; a
  ``LinkDown`` error of one transaction is not a fact about the CDT and changes nothing;
- listeners are called on transitions only, with the time the transition happened.

Sans-I/O like the codec: it is handed times, it keeps no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from st2000r.config.model import Link
from st2000r.drivers.st2000r import messages as m

__all__ = ["Purpose", "Outcome", "Reachability", "CdtReach"]

log = Logger()


class Purpose(enum.Enum):
    """Why a transaction was made; travels with its outcome so a reading knows its source.
    ``value`` is the JSON spelling."""

    PLAN = "plan"  # a reading-plan round
    READ_NOW = "read_now"  # an on-demand read (operator, start-up)
    READ_BACK = "read_back"  # a command's confirmation read
    COMMAND = "command"  # a write (valve, base reading, time sync)
    OTHER = "other"  # scans, tools


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished transaction.  ``address``: the BCD address the request went to;
    ``reply``: the matched reply (None on failure); ``error``: the final
    ``TransactionError`` (None on success); ``at``: clock seconds when it finished."""

    link: str
    address: str
    request: m.Message
    reply: m.Message | None
    error: Exception | None
    at: float
    purpose: Purpose = Purpose.OTHER
    plan: str | None = None


@dataclass(frozen=True, slots=True)
class CdtReach:
    """What is known of one CDT: ``answering`` None until first tried; ``since``: clock
    seconds of the last transition; ``failures``: silent transactions since the last reply;
    ``last_reply``: clock seconds of the last reply."""

    cdt: int
    answering: bool | None
    since: float | None
    failures: int
    last_reply: float | None
    reason: str = ""


class _State:
    __slots__ = ("cdt", "answering", "since", "failures", "last_reply", "reason")

    def __init__(self, cdt: int) -> None:
        self.cdt = cdt
        self.answering: bool | None = None
        self.since: float | None = None
        self.failures = 0
        self.last_reply: float | None = None
        self.reason = ""


#: ``fn(link, cdt, answering, at, reason)``; ``answering`` None: unknown again (link back)
StateListener = Callable[[str, int, bool | None, float, str], None]
#: ``fn(cdt, outcome)`` for every successful outcome of a configured CDT
ReplyListener = Callable[[int, Outcome], None]


class Reachability:
    """Per-link reachability of the configured CDTs (rules in the module docstring)."""

    def __init__(self, link: Link) -> None:
        self.link = link.name
        self._by_bcd: dict[str, _State] = {}
        self._by_cdt: dict[int, _State] = {}
        for cdt in link.cdts:
            state = _State(cdt.address)
            self._by_bcd[cdt.bcd_address] = state
            self._by_cdt[cdt.address] = state
        self._listeners: list[StateListener] = []
        self._reply_listeners: list[ReplyListener] = []
        self.others = 0  # outcomes for addresses that are not configured CDTs
        self.connected = False

    # ---------------------------------------------------------------- feeding

    def observe(self, outcome: Outcome) -> None:
        """A transaction finished (called by the bus master, once per transaction)."""
        state = self._by_bcd.get(outcome.address)
        if state is None:
            self.others += 1
            return
        if outcome.error is None:
            state.failures = 0
            state.last_reply = outcome.at
            self._transition(state, True, outcome.at, "answers")
            for fn in tuple(self._reply_listeners):
                self._call(fn, state.cdt, outcome)
            return
        if not _is_silence(outcome.error):
            return
        state.failures += 1
        self._transition(state, False, outcome.at, "no answer")

    def link_up(self, at: float) -> None:
        """The link's byte pipe is up: CDTs silent only because it was down are unknown
        again until they answer or fail (their meters stay comm_fail until read)."""
        self.connected = True
        for state in self._by_cdt.values():
            if state.answering is False and state.reason == "link down":
                self._transition(state, None, at, "link back: not tried yet")

    def link_down(self, at: float) -> None:
        """The link's byte pipe is gone: every CDT of it is silent from ``at``."""
        self.connected = False
        for state in self._by_cdt.values():
            self._transition(state, False, at, "link down")

    # ---------------------------------------------------------------- reading

    def failures(self, cdt: int) -> int:
        """Silent transactions to ``cdt`` since its last reply (0 for unknown CDTs)."""
        state = self._by_cdt.get(cdt)
        return state.failures if state is not None else 0

    def answering(self, cdt: int) -> bool | None:
        """True/False after the last outcome; None if never tried or not configured."""
        state = self._by_cdt.get(cdt)
        return state.answering if state is not None else None

    def state(self, cdt: int) -> CdtReach:
        """A snapshot of one CDT; ``KeyError`` for a CDT not on this link."""
        s = self._by_cdt[cdt]
        return CdtReach(s.cdt, s.answering, s.since, s.failures, s.last_reply, s.reason)

    def add_listener(self, fn: StateListener) -> Callable[[], None]:
        """``fn(link, cdt, answering, at, reason)`` on every transition; returns a remover."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def add_reply_listener(self, fn: ReplyListener) -> Callable[[], None]:
        """``fn(cdt, outcome)`` for every reply from a configured CDT; returns a remover."""
        self._reply_listeners.append(fn)
        return lambda: self._reply_listeners.remove(fn) if fn in self._reply_listeners else None

    # ---------------------------------------------------------------- internals

    def _transition(self, state: _State, answering: bool | None, at: float, reason: str) -> None:
        if state.answering is answering:
            return
        was = state.answering
        state.answering = answering
        state.since = at
        state.reason = reason
        if answering and was is False:
            log.info("link {link}: CDT {cdt} answers again", link=self.link, cdt=state.cdt)
        elif answering is False and reason != "link down":
            log.warn("link {link}: CDT {cdt} stopped answering", link=self.link, cdt=state.cdt)
        for fn in tuple(self._listeners):
            self._call(fn, self.link, state.cdt, answering, at, reason)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.failure("link {link}: reachability listener failed", link=self.link)


def _is_silence(error: Exception) -> bool:
    from st2000r.drivers.st2000r.master import TransactionTimeout

    if not isinstance(error, TransactionTimeout):
        return False
    return error.corrupted < max(1, error.attempts)
