"""Login: operators' passwords checked with argon2, opaque expiring bearer tokens, failed
logins throttled per client address, and the log of sessions.

Tokens live only in this process (a restart logs everyone out) and expire ``ttl_s`` after
the login, by the injected clock.  Every table here is bounded: the token table (the
oldest token goes first when it is full), the failure tables per client address (the
least recently failing address goes first) and the session log (a ring).

Every session event (login, logout, failed, throttled, expired) is a
:class:`~st2000r.supervisor.audit.SessionRecord`: kept in the ring, written to the
supervisor's log, and appended to the audit log (``audit.append_session``, the audit
writer's thread) without waiting for it: a login is not a change, so it neither waits for
the disk nor fails when the audit log cannot be written; that failure is logged once (and
once more when records are written again).  The password is never part of a record.

Throttled refusals cost the client nothing (no hash is checked), so a script can send
thousands a second: an address's refusals are recorded at most once per
``THROTTLE_NOTE_S``, the record counting those refused since its last one; otherwise a
flood would fill the disk the command audit needs.  The moment an address reaches
``FAIL_LIMIT`` failures (the throttle trips) ``observer("throttled", {...})`` is told,
once per trip (the alarm manager raises a security alarm from it).

Checking an argon2 hash costs tens of milliseconds and megabytes by design, so it runs
in a thread (``verify_in_thread``) and never on the reactor.  A name that is unknown or
has no hash is checked against a dummy hash all the same, so the time of an answer does
not tell which names exist.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from st2000r.config.model import Operator
from st2000r.supervisor.api.errors import ApiError
from st2000r.supervisor.audit import SessionRecord
from st2000r.supervisor.authz import Role

__all__ = ["Session", "SessionRecord", "Sessions", "hash_password", "verify_password", "FAIL_LIMIT", "FAIL_WINDOW_S",
           "THROTTLE_NOTE_S"]

log = Logger()

#: failed logins from one client address within FAIL_WINDOW_S before logins from it are refused
FAIL_LIMIT = 5
FAIL_WINDOW_S = 300.0
#: an address's throttled refusals are recorded at most once per this many seconds (counted between)
THROTTLE_NOTE_S = 60.0
MAX_TOKENS = 10_000
MAX_PEERS = 10_000
MAX_RECORDS = 2_000


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (``$argon2id$v=19$...``)."""
    return _hasher().hash(password)


_DUMMY: list[str] = []


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches the argon2 hash ``stored``.  Blocking (tens of ms)."""
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    hasher = _hasher()
    if stored is None:
        if not _DUMMY:
            _DUMMY.append(hasher.hash(secrets.token_hex(16)))
        stored, password = _DUMMY[0], password + "\0never"
    try:
        return hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in operator: who, their role, the token and when it expires (clock seconds)."""

    token: str
    name: str
    role: Role
    expires: float
    peer: str | None


class Sessions:
    """Tokens of ``operators`` (name -> Operator).  ``clock``: expiry and throttling time.
    ``verify(stored, password) -> Deferred[bool]``: how a password is checked (default: in
    the reactor's thread pool).  ``audit``: where session records are persisted (an
    ``AuditLog`` or ``MemoryAudit``; None: nowhere).  ``observer(event, data)``: told when
    the throttle trips (``"throttled"``, ``{"peer", "failures", "window_s", "seconds"}``)."""

    def __init__(self, operators: Mapping[str, Operator], clock: IReactorTime, *, ttl_s: float,
                 verify: Callable[[str | None, str], defer.Deferred] | None = None,
                 max_tokens: int = MAX_TOKENS, max_peers: int = MAX_PEERS, audit: Any = None,
                 observer: Callable[[str, Mapping[str, Any]], None] | None = None) -> None:
        self.operators = dict(operators)
        self.clock = clock
        self.ttl_s = float(ttl_s)
        self._verify = verify or _verify_sync
        self.max_tokens = max_tokens
        self.max_peers = max_peers
        self._tokens: OrderedDict[str, Session] = OrderedDict()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.records: deque[SessionRecord] = deque(maxlen=MAX_RECORDS)
        #: records ever put in the ring (restored ones included): the newest has seq total - 1
        self.total = 0
        self.audit = audit
        self.observer = observer
        #: per throttled address: (clock time of its last throttled record, refusals not recorded since)
        self._refusals: OrderedDict[str, tuple[float, int]] = OrderedDict()
        #: why the last session record could not be persisted (None: the last one was)
        self.audit_failed: str | None = None
        self.unaudited = 0

    def __len__(self) -> int:
        return len(self._tokens)

    # ---------------------------------------------------------------- login / logout

    async def login(self, name: str, password: str, peer: str | None) -> Session:
        """A new session, or ApiError 401 ``bad_credentials`` / 429 (throttled)."""
        now = self.clock.seconds()
        key = peer or "?"
        recent = self._recent_failures(key, now)
        if len(recent) >= FAIL_LIMIT:
            retry = max(1, int(recent[0] + FAIL_WINDOW_S - now + 0.999))
            self._refused(key, name, peer, now, len(recent), retry)
            raise ApiError(429, f"too many failed logins from {key}: try again in {retry} s",
                           headers={"Retry-After": str(retry)})
        operator = self.operators.get(name)
        stored = operator.password_hash if operator is not None else None
        ok = await self._verify(stored, password)
        now = self.clock.seconds()
        role = _role(operator) if ok and operator is not None and stored is not None else None
        if role is None:
            before = len(self._recent_failures(key, now))
            self._fail(key, now)
            why = ("unknown name" if operator is None else "no password_hash configured" if stored is None
                   else "unknown role" if ok else "wrong password")
            tripped = before < FAIL_LIMIT <= len(self._failures[key])
            if tripped:
                seconds = max(1, int(self._failures[key][0] + FAIL_WINDOW_S - now + 0.999))
                why += (f"; {FAIL_LIMIT} failed logins from this address in {FAIL_WINDOW_S:.0f} s: "
                        f"its logins are refused for {seconds} s")
            self._note(name, peer, "failed", why)
            if tripped and self.observer is not None:
                self._tell("throttled", {"peer": key, "failures": FAIL_LIMIT, "window_s": FAIL_WINDOW_S,
                                         "seconds": seconds})
            raise ApiError(401, "wrong name or password", code="bad_credentials")
        # a success does not forgive the address's failures: whoever holds any account could
        # otherwise interleave their own logins with guesses at another's password
        token = secrets.token_urlsafe(32)
        session = Session(token, name, role, now + self.ttl_s, peer)
        self._tokens[token] = session
        self._bound(now)
        self._note(name, peer, "login", f"role {role.value}, token valid for {self.ttl_s:.0f} s")
        return session

    def page(self, before: int | None, limit: int, event: str | None = None) -> tuple[list[SessionRecord], int | None]:
        """Up to ``limit`` records with a seq below ``before`` (None: from the newest), newest
        first, of ``event`` only if given; and the ``before`` of the next page (None: none).
        Seqs do not move when records are added, so a page never repeats an item."""
        first = self.total - len(self.records)
        top = self.total if before is None else min(before, self.total)
        out: list[SessionRecord] = []
        seq = top - 1
        while seq >= first and len(out) < limit:
            record = self.records[seq - first]
            if event is None or record.event == event:
                out.append(record)
            seq -= 1
        return out, (seq + 1 if seq >= first else None)

    def logout(self, session: Session, peer: str | None) -> None:
        if self._tokens.pop(session.token, None) is not None:
            self._note(session.name, peer, "logout", "")

    def authenticate(self, token: str | None, peer: str | None = None) -> Session:
        """The session of a bearer token, or ApiError 401 saying why (missing, unknown, expired)."""
        if not token:
            raise ApiError(401, "no token: log in (POST /api/v1/login) and send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
        session = self._tokens.get(token)
        if session is None:
            raise ApiError(401, "unknown token (logged out, or the supervisor restarted): log in again",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if self.clock.seconds() >= session.expires:
            del self._tokens[token]
            self._note(session.name, peer, "expired", "token expired")
            raise ApiError(401, "token expired: log in again",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return session

    # ---------------------------------------------------------------- bookkeeping

    def _recent_failures(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - FAIL_WINDOW_S:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def _fail(self, key: str, now: float) -> None:
        times = self._failures.pop(key, None) or deque(maxlen=FAIL_LIMIT)
        times.append(now)
        self._failures[key] = times  # most recently failing last
        while len(self._failures) > self.max_peers:
            self._failures.popitem(last=False)

    def _bound(self, now: float) -> None:
        if len(self._tokens) <= self.max_tokens:
            return
        for token in [t for t, s in self._tokens.items() if s.expires <= now]:
            del self._tokens[token]
        while len(self._tokens) > self.max_tokens:
            self._tokens.popitem(last=False)

    def _refused(self, key: str, name: str, peer: str | None, now: float, failures: int, retry: int) -> None:
        """A throttled refusal: recorded if the address has no throttled record in the last
        THROTTLE_NOTE_S, else only counted (module docstring)."""
        last = self._refusals.pop(key, None)
        if last is not None and now - last[0] < THROTTLE_NOTE_S:
            self._refusals[key] = (last[0], last[1] + 1)
            return
        more = f"; {last[1]} more refused since the last such record" if last is not None and last[1] else ""
        self._refusals[key] = (now, 0)
        while len(self._refusals) > self.max_peers:
            self._refusals.popitem(last=False)
        self._note(name, peer, "throttled", f"{failures} failed logins from this address in {FAIL_WINDOW_S:.0f} s: "
                                            f"refused for {retry} s more{more}")

    def _tell(self, event: str, data: Mapping[str, Any]) -> None:
        try:
            self.observer(event, data)  # type: ignore[misc]
        except Exception:  # an observer's bug must not turn a failed login into a 500
            log.failure("api session: the observer of {event} failed", event=event)

    # ---------------------------------------------------------------- the session log

    def restore(self, records: Iterable[SessionRecord]) -> int:
        """Put session records of earlier runs (oldest first, from the audit log) before
        this run's in the ring; returns how many are kept."""
        old = list(records)
        current = len(self.records)
        keep = [*old, *self.records][-MAX_RECORDS:]
        self.records = deque(keep, maxlen=MAX_RECORDS)
        self.total += len(old)
        return max(0, len(keep) - current)

    def _note(self, name: str | None, peer: str | None, event: str, detail: str) -> None:
        record = SessionRecord(self.clock.seconds(), name, peer, event, detail)
        self.records.append(record)
        self.total += 1
        log.info("api session: {event} {name} from {peer}{detail}", event=event, name=name or "?",
                 peer=peer or "?", detail=f" ({detail})" if detail else "")
        if self.audit is None:
            return
        try:
            d = self.audit.append_session(record)
        except Exception as exc:  # an audit without session records, or one that breaks: never the login
            d = defer.fail(exc)
        d.addCallbacks(self._persisted, self._not_persisted)

    def _persisted(self, _: Any) -> None:
        if self.audit_failed is not None:
            log.info("audit log: session records are written again ({n} were not)", n=self.unaudited)
            self.audit_failed = None

    def _not_persisted(self, failure: Any) -> None:
        self.unaudited += 1
        if self.audit_failed is None:
            self.audit_failed = failure.getErrorMessage()
            log.error("audit log: a session record was not written ({why}); logins go on, their records are kept "
                      "in memory and in this log only until the audit log can be written again",
                      why=self.audit_failed)


def _role(operator: Operator) -> Role | None:
    try:
        return Role(operator.role)
    except ValueError:
        return None


def _verify_sync(stored: str | None, password: str) -> defer.Deferred:
    return defer.succeed(verify_password(stored, password))


def verify_in_thread(reactor: Any) -> Callable[[str | None, str], defer.Deferred]:
    """A ``verify`` for :class:`Sessions` that checks hashes in the reactor's thread pool."""
    from twisted.internet import threads

    def verify(stored: str | None, password: str) -> defer.Deferred:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), verify_password, stored, password)

    return verify
