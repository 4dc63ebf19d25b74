"""The audit log: one JSON line per command record, on disk before the field acts on it,
and one per session event of the HTTP API (login, logout, failed, throttled, expired).

The command dispatcher appends a record when a command is accepted and waits for
:meth:`AuditLog.append`'s Deferred — the line is written, flushed and fsynced — before the
command's frame goes on the wire, so a crash can lose an outcome but never the fact that a
command was sent.  The writing happens on one writer thread, never on the reactor: an
``fsync`` of tens of milliseconds on a busy disk must not stall the field buses.  Lines
queued while a sync runs are written and synced together (group commit), so a burst of
commands costs one sync, not one each.

A line torn by a crash mid-write (the file does not end in a newline) is found when the
log is opened: it is reported with its byte offset, moved to ``<file>.torn-<n>``, and the
file is cut back to its last whole line — never silently appended to, which would spoil the
next record too.  :func:`read_records` reads the log back (the last line per command id
wins), reporting undecodable lines the same way.

Two record types share the file, told apart by the ``record`` key: a command line has none
(files written before session records existed load as they are), a session line has
``"record": "session"`` (:class:`SessionRecord`: who as given, client address, time, event,
detail; never a password).  Anything else with a ``record`` key is reported as a bad line,
so no other type is ever taken for a command.  Session lines are appended without waiting
(a login is not a change: it never waits for the disk, and a log that cannot be written does
not stop it; the caller is told through the Deferred).

:class:`MemoryAudit` keeps records in memory only (tests, a supervisor run without a state
folder); its appends succeed at once.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from st2000r.supervisor.events import CommandKind, CommandRecord, CommandState, utc

__all__ = ["AuditLog", "MemoryAudit", "AuditError", "read_records", "record_from_json", "AuditReadReport",
           "SessionRecord", "session_from_json", "SESSION_EVENTS", "SESSIONS_KEPT"]

log = Logger()

#: the events of a session record
SESSION_EVENTS = ("login", "logout", "failed", "throttled", "expired")
#: session records :func:`read_records` keeps (the newest) and :class:`MemoryAudit` holds
SESSIONS_KEPT = 2_000


class AuditError(Exception):
    """The audit log cannot be opened or written; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session event of the HTTP API: ``event`` one of :data:`SESSION_EVENTS`, ``at``
    clock seconds, ``name`` as the client gave it, ``peer`` its address."""

    at: float
    name: str | None
    peer: str | None
    event: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": utc(self.at).isoformat(), "name": self.name, "peer": self.peer, "event": self.event,
                "detail": self.detail}


def _line(record: CommandRecord | SessionRecord) -> bytes:
    data = {"record": "session", **record.as_dict()} if isinstance(record, SessionRecord) else record.as_dict()
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _optional_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"session record: {key}: expected a string or null, got {type(value).__name__}")
    return value


def session_from_json(data: dict[str, Any]) -> SessionRecord:
    """A session record from its line (``{"record": "session", ...}``); ``KeyError`` /
    ``ValueError`` naming the field for a malformed one."""
    if data.get("record") != "session":
        raise ValueError(f"not a session record (record = {data.get('record')!r})")
    event = data["event"]
    if event not in SESSION_EVENTS:
        raise ValueError(f"session record: unknown event {event!r}")
    at = datetime.fromisoformat(data["at"])
    if at.tzinfo is None:
        raise ValueError("session record: at: a time without an offset")
    return SessionRecord(at.timestamp(), _optional_text(data, "name"), _optional_text(data, "peer"), event,
                         str(data.get("detail", "")))


def record_from_json(data: dict[str, Any]) -> CommandRecord:
    """A command record from its JSON form (``KeyError``/``ValueError`` for a malformed one,
    and for a line of another record type)."""
    if "record" in data and data["record"] != "command":
        raise ValueError(f"not a command record (record = {data['record']!r})")
    def when(key: str) -> datetime | None:
        value = data.get(key)
        return datetime.fromisoformat(value) if value else None

    return CommandRecord(
        id=str(data["id"]), kind=CommandKind(data["kind"]), target=str(data["target"]), action=str(data["action"]),
        who=str(data["who"]), source=str(data["source"]), peer=data.get("peer"), reason=str(data.get("reason", "")),
        requested_at=datetime.fromisoformat(data["requested_at"]), state=CommandState(data["state"]),
        detail=str(data.get("detail", "")), sent_at=when("sent_at"), finished_at=when("finished_at"),
        late=bool(data.get("late", False)),
    )


@dataclass(frozen=True, slots=True)
class AuditReadReport:
    """What :func:`read_records` found: the command records (last line per id, in
    first-seen order), the lines it could not use, as ``(byte offset, reason)``, and the
    newest session records (oldest first)."""

    records: tuple[CommandRecord, ...]
    bad_lines: tuple[tuple[int, str], ...]
    sessions: tuple[SessionRecord, ...] = ()


def read_records(path: str | os.PathLike[str], *, sessions_kept: int = SESSIONS_KEPT) -> AuditReadReport:
    """Read an audit log back (the newest ``sessions_kept`` session records are kept).  A
    missing file is an empty log."""
    latest: dict[str, CommandRecord] = {}
    sessions: deque[SessionRecord] = deque(maxlen=max(0, sessions_kept))
    bad: list[tuple[int, str]] = []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return AuditReadReport((), ())
    with f:
        offset = 0
        for raw in f:
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn line (no newline at the end of the file)")
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError(f"a line must be a JSON object, got {type(data).__name__}")
                if data.get("record") == "session":
                    sessions.append(session_from_json(data))
                else:
                    record = record_from_json(data)
                    latest[record.id] = record
            except KeyError as exc:
                bad.append((offset, f"missing key {exc}"))
            except (ValueError, TypeError) as exc:
                bad.append((offset, str(exc)[:200]))
            offset += len(raw)
    return AuditReadReport(tuple(latest.values()), tuple(bad), tuple(sessions))


def _cut_torn_tail(path: str) -> None:
    """If the file does not end in a newline, keep its last whole line and set the rest aside."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        start = (size - len(tail)) + cut + 1 if cut >= 0 else size - len(tail)
        if cut < 0 and size > len(tail):
            start = size - len(tail)  # a torn line longer than 64 KiB: set aside what we read
        f.seek(start)
        torn = f.read()
        n = 1
        while os.path.exists(f"{path}.torn-{n}"):
            n += 1
        with open(f"{path}.torn-{n}", "wb") as aside:
            aside.write(torn)
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    log.error("audit log {path}: a torn last line at byte {offset} ({n} bytes, from a crash mid-write) was "
              "moved to {aside}", path=path, offset=start, n=len(torn), aside=f"{path}.torn-{n}")


class MemoryAudit:
    """Audit records kept in memory only (no state folder)."""

    path = None

    def __init__(self) -> None:
        self.records: list[CommandRecord] = []
        self.sessions: deque[SessionRecord] = deque(maxlen=SESSIONS_KEPT)
        self.errors = 0

    def append(self, record: CommandRecord) -> defer.Deferred:
        self.records.append(record)
        return defer.succeed(None)

    def append_session(self, record: SessionRecord) -> defer.Deferred:
        self.sessions.append(record)
        return defer.succeed(None)

    def close(self) -> defer.Deferred:
        return defer.succeed(None)


class AuditLog:
    """Appends command records to ``path`` from one writer thread (rules in the module
    docstring).  ``call_from_thread``: how the writer hands results back to the reactor
    (``reactor.callFromThread``).  Raises :class:`AuditError` if the file cannot be opened
    for appending."""

    def __init__(self, path: str | os.PathLike[str], call_from_thread: Callable[..., Any]) -> None:
        self.path = os.fspath(path)
        self._call = call_from_thread
        self.errors = 0
        self.synced = 0
        try:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            _cut_torn_tail(self.path)
            self._file = open(self.path, "ab")
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: cannot open for appending: {exc.strerror or exc}") from exc
        self._queue: queue.SimpleQueue[tuple[bytes, defer.Deferred] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="st2000r-audit", daemon=True)
        self._thread.start()
        self._closed = False

    def append(self, record: CommandRecord) -> defer.Deferred:
        """Fires with None once the record's line is on disk, or errbacks with
        :class:`AuditError`."""
        return self._append(record)

    def append_session(self, record: SessionRecord) -> defer.Deferred:
        """Queue a session record's line (same writer, same order as commands); the
        Deferred fires as for :meth:`append`."""
        return self._append(record)

    def _append(self, record: CommandRecord | SessionRecord) -> defer.Deferred:
        if self._closed:
            return defer.fail(AuditError(f"audit log {self.path}: closed"))
        d: defer.Deferred = defer.Deferred()
        self._queue.put((_line(record), d))
        return d

    def close(self) -> defer.Deferred:
        """Write what is queued, then stop the writer; fires when done."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        done: defer.Deferred = defer.Deferred()
        self._queue.put(None)
        self._done = done
        return done

    # ---------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = []
            stop = item is None
            if item is not None:
                batch.append(item)
            while not stop:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            if stop:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._call(self._done.callback, None)
                return

    def _write(self, batch: list[tuple[bytes, defer.Deferred]]) -> None:
        start = None
        try:
            start = self._file.tell()
            self._file.write(b"".join(line for line, _ in batch))
            self._file.flush()
            os.fsync(self._file.fileno())
        except Exception as exc:  # the writer thread must outlive any error: report it per record
            error = AuditError(f"audit log {self.path}: cannot write: {getattr(exc, 'strerror', None) or exc}")
            self.errors += 1
            if start is not None:  # never leave half a line for the next record to follow
                try:
                    self._file.truncate(start)
                except (OSError, ValueError):
                    pass
            for _, d in batch:
                self._call(d.errback, error)
            return
        self.synced += 1
        for _, d in batch:
            self._call(d.callback, None)
