"""The one error shape of the API: ``{"error": {"code", "message", "field"}}``.

Handlers raise :class:`ApiError`; the dispatcher turns it into the response.  Anything
else a handler raises is a bug, answered 500 ``internal`` and logged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "invalid", "not_found", "conflict", "STATUS_CODES"]

#: the code each status carries (docs/api.md lists when each is used)
STATUS_CODES: dict[int, str] = {
    400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "too_large", 429: "too_many_requests", 500: "internal", 503: "unavailable",
}


class ApiError(Exception):
    """An answer other than success.  ``field``: the parameter, body key (dotted) or path
    part at fault, or None.  ``headers``: extra response headers (``Retry-After``, ``Allow``)."""

    def __init__(self, status: int, message: str, *, field: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def invalid(field: str | None, message: str) -> ApiError:
    """400 ``invalid``; ``field`` "" is the body as a whole (reported as null)."""
    if field == "":
        return ApiError(400, f"the body: {message}", field=None)
    return ApiError(400, f"{field}: {message}" if field else message, field=field)


def not_found(field: str | None, message: str) -> ApiError:
    return ApiError(404, message, field=field)


def conflict(message: str, field: str | None = None) -> ApiError:
    return ApiError(409, message, field=field)
