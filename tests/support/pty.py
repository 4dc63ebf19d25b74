"""Pseudo-terminals from the far side, on the running reactor: a pty path opened like a
serial port, a frame-decoding master on it, a byte reader waiting for a pattern, and a
bounded wait for a condition.

Every wait is a Deferred with a timeout (``TIMEOUT`` s unless told): a regression fails
with ``TimeoutError`` instead of hanging the run.  The reactor is looked up when used, so
a script may install its own first.
"""

from __future__ import annotations

import os
import tty
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from st2000r.drivers.st2000r.frame import NEED_DATA, Frame, FrameDecoder

TIMEOUT = 5.0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def open_raw(path: str) -> int:
    """``path`` (a pty slave, or a link to one) opened read-write, raw, non-blocking and
    without becoming the controlling terminal; the file descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd


class PtyPort:
    """An open pty read by the reactor: every chunk read goes to ``receive``; ``lost`` (if
    given) is called when the reactor drops the descriptor."""

    def __init__(self, path: str, receive: Callable[[bytes], None], name: str = "pty",
                 lost: Callable[[Any], None] | None = None) -> None:
        self.fd = open_raw(path)
        self._receive = receive
        self._name = name
        self._lost = lost
        _reactor().addReader(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return self._name

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        self._receive(data)

    def connectionLost(self, reason=None) -> None:
        if self._lost is not None:
            self._lost(reason)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        _reactor().removeReader(self)
        os.close(self.fd)


class Master(Protocol):
    """The supervisor's side of a byte stream: decodes frames with the codec; ``until``
    waits (bounded) for a condition, ``frame`` for the next frame; ``closed`` fires when the
    stream is lost."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.events: list = []
        self.waiting: list = []
        self.closed = Deferred()
        self.raw = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self.decoder.feed(data)
        while (event := self.decoder.next_event()) is not NEED_DATA:
            self.events.append(event)
        self._check()

    def _check(self) -> None:
        for item in list(self.waiting):
            predicate, d = item
            if predicate():
                self.waiting.remove(item)
                d.callback(None)

    def until(self, predicate) -> Deferred:
        d = Deferred()
        self.waiting.append((predicate, d))
        self._check()
        return d.addTimeout(TIMEOUT, _reactor())

    async def frame(self) -> Frame:
        await self.until(lambda: any(isinstance(e, Frame) for e in self.events))
        i = next(i for i, e in enumerate(self.events) if isinstance(e, Frame))
        return self.events.pop(i)

    def connectionLost(self, reason=None) -> None:
        if not self.closed.called:
            self.closed.callback(None)


class PtyMaster(Master):
    """A :class:`Master` on a pty path opened like a serial port (the simulator's printed
    path, or a link to it)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.port = PtyPort(path, self.dataReceived, "pty-master", lost=self.connectionLost)

    def send(self, data: bytes) -> None:
        self.port.send(data)

    def close(self) -> None:
        self.port.close()


class PtyReader:
    """Bytes from a pty path, kept until taken; ``expect`` waits (bounded) for a pattern."""

    def __init__(self, path: str) -> None:
        self.buf = bytearray()
        self.waiting: list = []
        self.port = PtyPort(path, self._received, "pty-reader")

    def _received(self, data: bytes) -> None:
        self.buf += data
        for item in list(self.waiting):
            pattern, d = item
            if pattern in self.buf:
                self.waiting.remove(item)
                d.callback(bytes(self.buf))

    def expect(self, pattern: bytes) -> Deferred:
        """Fires with every byte kept so far once ``pattern`` is among them."""
        d = Deferred()
        if pattern in self.buf:
            d.callback(bytes(self.buf))
        else:
            self.waiting.append((pattern, d))
        return d.addTimeout(TIMEOUT, _reactor())

    def send(self, data: bytes) -> None:
        self.port.send(data)

    def take(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def close(self) -> None:
        self.port.close()


def read_until(fd: int, want: bytes, timeout: float = TIMEOUT) -> Deferred:
    """Read the open descriptor ``fd`` (made non-blocking) on the reactor until ``want`` has
    arrived; fires with every byte read.  The reader stays until then."""
    reactor = _reactor()
    d = Deferred()
    buf = bytearray()

    class Reader:
        def fileno(self):
            return fd

        def logPrefix(self):
            return "reader"

        def connectionLost(self, reason):
            pass

        def doRead(self):
            try:
                buf.extend(os.read(fd, 4096))
            except BlockingIOError:
                return
            if want in buf:
                reactor.removeReader(self)
                d.callback(bytes(buf))

    os.set_blocking(fd, False)
    reactor.addReader(Reader())
    return d.addTimeout(timeout, reactor)


def poll(predicate: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.003) -> Deferred:
    """Wait (bounded) until ``predicate()`` holds; it is checked every ``interval`` s of the
    reactor (for state with no event to wait on)."""
    reactor = _reactor()
    d = Deferred()

    def again() -> None:
        if predicate():
            d.callback(None)
        elif not d.called:
            reactor.callLater(interval, again)

    again()
    return d.addTimeout(timeout, reactor)
