"""Server-sent events parser (sans-I/O): text in, ``SseEvent`` records out.

Follows the WHATWG event-stream rules the console needs: lines end in LF, CRLF or CR; a
line starting with ``:`` is a comment (keep-alive); ``data`` lines join with LF; a blank
line dispatches; ``id`` is remembered across events (it is what ``Last-Event-ID`` sends
on reconnect) and an ``id`` containing NUL is ignored; ``retry`` sets the reconnect delay
in milliseconds.  An event with no data is not dispatched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(r"[\r\n]")


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str
    id: str | None


class SseParser:
    """Feed text chunks with ``feed``; it returns the events completed by that chunk."""

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: str) -> list[SseEvent]:
        self._buffer += chunk
        out: list[SseEvent] = []
        while True:
            found = _EOL.search(self._buffer)
            if found is None:
                return out
            cut = found.start()
            if self._buffer[cut] == "\r" and cut + 1 == len(self._buffer):
                return out  # a CR at the very end may be half of CRLF: wait for more
            line = self._buffer[:cut]
            skip = 2 if self._buffer.startswith("\r\n", cut) else 1
            self._buffer = self._buffer[cut + skip:]
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self.last_id)
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None
