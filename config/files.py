"""Reading an input file whose path comes from the command line: bounded and never blocking.

A path may name anything: ``/dev/zero`` or ``/dev/urandom`` never end, a FIFO blocks the
opener until a writer appears, a directory cannot be read.  ``read_text`` opens without
blocking (``O_NONBLOCK``), refuses anything that is not a regular file before reading a
byte, and reads at most ``limit`` bytes, so a bad path costs bounded time and memory and
ends in one line naming the file.
"""

from __future__ import annotations

import os
import stat

from st2000r.config.values import MAX_CONFIG_BYTES

__all__ = ["InputFileError", "read_text"]


class InputFileError(Exception):
    """The file cannot be used; ``str()`` is the reason, without the file name."""


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_CONFIG_BYTES, what: str = "file") -> str:
    """The UTF-8 text of the regular file at ``path`` (a leading BOM is dropped).

    Raises ``InputFileError`` if it cannot be opened, is not a regular file (device, FIFO,
    socket, directory), is larger than ``limit`` bytes, or is not UTF-8.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputFileError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        try:
            info = os.fstat(fd)
        except OSError as exc:  # pragma: no cover - fstat of an open descriptor
            raise InputFileError(f"cannot read {what}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a file")
            raise InputFileError(f"cannot read {what}: {kind}, not a regular file")
        if info.st_size > limit:
            raise InputFileError(f"{what} too large: {info.st_size} bytes, more than the limit of {_size(limit)}")
        chunks: list[bytes] = []
        total = 0
        try:
            while total <= limit:  # a file growing while it is read stops at limit + 1 bytes
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise InputFileError(f"cannot read {what}: {exc.strerror or exc}") from None
        if total > limit:
            raise InputFileError(f"{what} too large: more than the limit of {_size(limit)}")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
