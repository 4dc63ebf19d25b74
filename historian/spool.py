"""The durable spool: an append-only, fsync'd, checksummed journal of rows for the database.

Why: billing depends on every reading, and the database may be away for days or the
process killed at any instant.  The writer therefore puts every batch here *before* it
tries the database, and a batch leaves only after the database committed it.  A crash
between the commit and the acknowledgement replays that batch; the idempotent keys of the
tables (``historian.schema``) make the replay insert nothing twice.

On disk (one folder, ``STATE_DIR/historian-spool`` by default):

- ``seg-<n>.log`` segments, ``n`` increasing; a segment holds records
  ``[length: u32 BE][crc32 of payload: u32 BE][payload]``, the payload one batch as UTF-8
  JSON; each append is followed by ``fsync`` (the data, then, when a segment is created,
  the folder);
- ``ack``: ``"<segment> <offset> <crc32 of '<segment> <offset>'>"``, the first byte not
  yet committed, rewritten in place (one ``pwrite`` of a fixed-width line) after every
  commit and *not* fsync'd there: the acknowledgement only says how much a restart may
  skip.  If a crash or a power cut leaves an older acknowledgement on disk, the restart
  replays batches the database already holds, and the idempotent keys make the replay insert
  nothing; an acknowledgement that is torn or unreadable (its checksum fails) replays every
  segment left.  It is never *ahead* of the database: it is written only after the commit
  returned.  (It used to be replaced atomically with two fsyncs and a rename per commit,
  a tenth of a batch's time on SQLite.)  It is fsync'd when the spool is closed;
- a segment wholly before the acknowledgement is deleted.

Opening checks every record after the acknowledgement.  A torn record at the very end (the
process died inside an append) is cut off: its batch was never acknowledged to anyone.  A
record with a wrong checksum *followed by* good data cannot come from a crash; the rest of
that segment is moved aside to ``seg-<n>.log.corrupt`` (logged, kept for inspection) and
reading continues with the next segment.

Memory stays bounded however long the database is away: a record's decoded batch is kept
in memory only while the kept ones total at most ``cache_bytes`` (64 MiB of records by
default -- the batches a connected writer spools and writes at once never leave memory);
the others are read back from their segment when their turn comes (:meth:`Spool.load`).
Opening does not decode a record either: the writer puts ``"n"`` (rows) and ``"at"`` (when
it was spooled) first, so they are read from the record's first bytes once its checksum
holds (an older record is decoded whole).  A 7-day spool of a 12,288-meter community (8.3 M
readings, about 1 GB) thus opens in seconds and in little memory.

Not thread-safe: one owner (the historian's writer thread) calls everything.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Spool", "SpoolRecord", "SpoolFull", "HEADER", "read_pending"]

HEADER = struct.Struct(">II")
SEGMENT_BYTES = 16 * 1024 * 1024  # start a new segment beyond this
MAX_RECORD = 256 * 1024 * 1024
CACHE_BYTES = 64 * 1024 * 1024  # decoded batches kept in memory up to this many record bytes
_PREFIX = re.compile(rb'\{"n":(\d+),"at":(-?[0-9.eE+-]+)[,}]')
ACK_WIDTH = 48  # bytes of the ack line, padded: each rewrite covers the previous one whole


class SpoolFull(Exception):
    """Appending would make the spool larger than its bound."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One batch in the spool: where it starts and ends, its rows, when it was spooled
    (``at``: clock seconds, None when the batch did not say) and its decoded payload (None
    when not kept in memory: :meth:`Spool.load` reads it)."""

    segment: int
    offset: int
    end: int
    rows: int
    at: float | None
    payload: dict[str, Any] | None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool in ``folder`` (created if missing).  ``max_bytes``: bound of the unacked
    data (``append`` raises :class:`SpoolFull` beyond it).  ``problems``: what opening
    found (torn tails cut, corrupt parts set aside), one line each."""

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = 1 << 30, *,
                 segment_bytes: int = SEGMENT_BYTES, cache_bytes: int = CACHE_BYTES) -> None:
        self.folder = os.fspath(folder)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.cache_bytes = cache_bytes
        self._cached = 0  # record bytes of the pending records whose payload is in memory
        self.problems: list[str] = []
        os.makedirs(self.folder, exist_ok=True)
        self._pending: deque[SpoolRecord] = deque()  # unacked records, in order
        self.bytes = 0  # unacked bytes (headers included)
        self.rows = 0  # unacked rows
        self._ack_fd: int | None = None
        self._ack = self._read_ack()
        self._scan()
        last = self._segments()[-1] if self._segments() else max(self._ack[0], 1)
        self._segment = last
        path = self._path(last)
        self._file = open(path, "ab")
        if not os.path.exists(path) or self._file.tell() == 0:
            _fsync_dir(self.folder)

    # ---------------------------------------------------------------- files

    def _path(self, n: int) -> str:
        return os.path.join(self.folder, f"seg-{n:09d}.log")

    def _segments(self) -> list[int]:
        out = []
        for name in os.listdir(self.folder):
            if name.startswith("seg-") and name.endswith(".log"):
                try:
                    out.append(int(name[4:-4]))
                except ValueError:
                    continue
        return sorted(out)

    def _read_ack(self) -> tuple[int, int]:
        try:
            return _parse_ack(self.folder)
        except FileNotFoundError:
            return (0, 0)
        except (ValueError, OSError) as exc:
            self.problems.append(f"ack file unreadable ({exc}); replaying every segment (replays insert nothing twice)")
            return (0, 0)

    def _write_ack(self, segment: int, offset: int) -> None:
        if self._ack_fd is None:
            self._ack_fd = os.open(os.path.join(self.folder, "ack"), os.O_RDWR | os.O_CREAT, 0o644)
        line = f"{segment} {offset}"
        os.pwrite(self._ack_fd, f"{line} {zlib.crc32(line.encode())}".ljust(ACK_WIDTH - 1).encode() + b"\n", 0)
        self._ack = (segment, offset)

    def _scan(self) -> None:
        ack_seg, ack_off = self._ack
        segments = self._segments()
        for n in segments:
            if n < ack_seg:
                os.unlink(self._path(n))
                continue
            start = ack_off if n == ack_seg else 0
            for record in self._read_segment(n, start, last=(n == segments[-1])):
                record = self._keep(record, record.payload)
                self._pending.append(record)
                self.bytes += record.end - record.offset
                self.rows += record.rows

    def _read_segment(self, n: int, start: int, *, last: bool) -> Iterator[SpoolRecord]:
        path = self._path(n)
        with open(path, "rb") as f:
            data = f.read()
        found: list[tuple[int, str]] = []
        yield from _records(data, n, start, found, decode=False)
        if found:
            pos, bad = found[0]
            tail = data[pos:]
            if last and bad in ("a torn record header", "a torn record"):
                self.problems.append(f"{path}: {bad} at byte {pos} (the process stopped inside an append); cut off")
            else:
                aside = path + ".corrupt"
                with open(aside, "ab") as out:
                    out.write(tail)
                    out.flush()
                    os.fsync(out.fileno())
                self.problems.append(f"{path}: {bad} at byte {pos}; the remaining {len(tail)} bytes set aside to "
                                     f"{aside}")
            with open(path, "r+b") as f:
                f.truncate(pos)
                f.flush()
                os.fsync(f.fileno())

    # ---------------------------------------------------------------- use

    def append(self, payload: dict[str, Any]) -> SpoolRecord:
        """Write one batch (a JSON object; its ``"n"`` counts its rows) durably; returns its record.  Raises
        :class:`SpoolFull` (nothing written) when it would pass ``max_bytes``."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        size = HEADER.size + len(body)
        if self.bytes + size > self.max_bytes:
            raise SpoolFull(f"spool {self.folder}: {self.bytes + size:,} bytes would pass the bound of "
                            f"{self.max_bytes:,}")
        if self._file.tell() >= self.segment_bytes:
            self._file.close()
            self._segment += 1
            self._file = open(self._path(self._segment), "ab")
            _fsync_dir(self.folder)
        offset = self._file.tell()
        self._file.write(HEADER.pack(len(body), zlib.crc32(body)) + body)
        self._file.flush()
        os.fsync(self._file.fileno())
        at = payload.get("at")
        record = self._keep(SpoolRecord(self._segment, offset, offset + size, int(payload.get("n", 0)),
                                        float(at) if at is not None else None, None), payload)
        self._pending.append(record)
        self.bytes += size
        self.rows += record.rows
        return record

    def _keep(self, record: SpoolRecord, payload: dict[str, Any] | None) -> SpoolRecord:
        """``record`` with ``payload`` kept in memory while the kept ones stay within
        ``cache_bytes``, else without it."""
        size = record.end - record.offset
        if payload is not None and self._cached + size <= self.cache_bytes:
            self._cached += size
            return SpoolRecord(record.segment, record.offset, record.end, record.rows, record.at, payload)
        return SpoolRecord(record.segment, record.offset, record.end, record.rows, record.at, None)

    def load(self, record: SpoolRecord) -> dict[str, Any]:
        """``record``'s batch: from memory, or read back from its segment (checksum checked
        again; ``ValueError`` if the file changed under the spool)."""
        if record.payload is not None:
            return record.payload
        if record.segment == self._segment:
            self._file.flush()
        with open(self._path(record.segment), "rb") as f:
            f.seek(record.offset)
            data = f.read(record.end - record.offset)
        length, crc = HEADER.unpack_from(data, 0)
        body = data[HEADER.size:]
        if len(body) != length or zlib.crc32(body) != crc:
            raise ValueError(f"{self._path(record.segment)}: the record at byte {record.offset} changed on disk")
        return json.loads(body)

    def pending(self) -> list[SpoolRecord]:
        """The unacknowledged records, oldest first."""
        return list(self._pending)

    def head(self, limit: int) -> list[SpoolRecord]:
        """Up to ``limit`` oldest unacknowledged records."""
        out = []
        for record in self._pending:
            if len(out) >= limit:
                break
            out.append(record)
        return out

    def oldest(self) -> SpoolRecord | None:
        """The oldest unacknowledged record (None: the spool is empty).  Safe to call from
        another thread than the owner's (one atomic look at the queue, no iteration)."""
        try:
            return self._pending[0]
        except IndexError:
            return None

    def ack(self, record: SpoolRecord) -> None:
        """``record`` and every record before it are committed: they leave the spool."""
        while self._pending and (self._pending[0].segment, self._pending[0].offset) <= (record.segment, record.offset):
            done = self._pending.popleft()
            if done.payload is not None:
                self._cached -= done.end - done.offset
            self.bytes -= done.end - done.offset
            self.rows -= done.rows
        self._write_ack(record.segment, record.end)
        for n in self._segments():
            if n < record.segment:
                os.unlink(self._path(n))

    def close(self) -> None:
        self._file.close()
        if self._ack_fd is not None:
            os.fsync(self._ack_fd)
            os.close(self._ack_fd)
            self._ack_fd = None


def _parse_ack(folder: str) -> tuple[int, int]:
    """``(segment, offset)`` of the ``ack`` file; raises ``ValueError`` when it is torn (its
    checksum fails) and ``OSError``/``FileNotFoundError`` when it cannot be read.  Also
    reads the older form without a checksum (``"<segment> <offset>"``)."""
    with open(os.path.join(folder, "ack"), encoding="ascii") as f:
        fields = f.read().split()
    if len(fields) == 3 and zlib.crc32(f"{fields[0]} {fields[1]}".encode()) != int(fields[2]):
        raise ValueError("checksum mismatch")
    if len(fields) not in (2, 3):
        raise ValueError(f"{len(fields)} fields")
    return int(fields[0]), int(fields[1])


def _records(data: bytes, n: int, pos: int, bad: list[tuple[int, str]], *, decode: bool = True
             ) -> Iterator[SpoolRecord]:
    """The good records of segment ``n``'s ``data`` from byte ``pos``; at the first record
    that is not, ``(offset, what is wrong)`` goes to ``bad`` and reading stops.  Without
    ``decode`` a record that starts with its ``"n"`` and ``"at"`` is not decoded (its
    payload None; the checksum vouches for it)."""
    while pos < len(data):
        if pos + HEADER.size > len(data):
            bad.append((pos, "a torn record header"))
            return
        length, crc = HEADER.unpack_from(data, pos)
        body = data[pos + HEADER.size: pos + HEADER.size + length]
        if length > MAX_RECORD or len(body) < length:
            bad.append((pos, "a torn record"))
            return
        if zlib.crc32(body) != crc:
            bad.append((pos, "a record with a wrong checksum"))
            return
        end = pos + HEADER.size + length
        prefix = None if decode else _PREFIX.match(body)
        if prefix is not None:
            yield SpoolRecord(n, pos, end, int(prefix.group(1)), float(prefix.group(2)), None)
            pos = end
            continue
        try:
            payload = json.loads(body)
        except ValueError:
            bad.append((pos, "a record that is not JSON"))
            return
        at = payload.get("at") if isinstance(payload, dict) else None
        if not isinstance(payload, dict) or not isinstance(at, (int, float, type(None))):
            bad.append((pos, "a record that is not a batch"))
            return
        yield SpoolRecord(n, pos, end, int(payload.get("n", 0)), at, payload)
        pos = end


def read_pending(folder: str | os.PathLike[str]) -> list[SpoolRecord]:
    """The unacknowledged records of the spool in ``folder``, oldest first, read without
    changing anything (a torn or bad record ends its segment's part, as opening would cut
    it off or set it aside) -- for inspection, and safe while the owner appends (records it
    acknowledges meanwhile may still be listed)."""
    folder = os.fspath(folder)
    try:
        seg, off = _parse_ack(folder)
    except (OSError, ValueError):
        seg, off = 0, 0
    out: list[SpoolRecord] = []
    names = sorted(int(name[4:-4]) for name in os.listdir(folder)
                   if name.startswith("seg-") and name.endswith(".log") and name[4:-4].isdigit())
    for n in names:
        if n < seg:
            continue
        try:
            with open(os.path.join(folder, f"seg-{n:09d}.log"), "rb") as f:
                data = f.read()
        except FileNotFoundError:  # acknowledged and deleted meanwhile
            continue
        out.extend(_records(data, n, off if n == seg else 0, []))
    return out
