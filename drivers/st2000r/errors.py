"""The one error type the codec raises."""

from __future__ import annotations


class CodecError(ValueError):
    """Bytes or values that are not a valid CJ/T 188 / ST2000R frame.

    ``offset`` is the index of the offending byte in the input the caller gave (``None``
    when the problem is not tied to one byte, e.g. an out-of-range field of a message
    being encoded); ``reason`` says what was expected.
    """

    def __init__(self, reason: str, offset: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(f"byte {offset}: {reason}" if offset is not None else reason)
