"""The console's only way to the supervisor: its HTTP API (``/api/v1``), over httpx.

Every call returns frozen records from ``model`` or raises one of three errors a screen
can show as it is: ``Unreachable`` (no answer: refused, timed out, reset), ``ApiError``
(the supervisor said no: status, message, the field it names; ``Unauthorized`` for 401,
``Forbidden`` for 403) and ``BadAnswer`` (an answer the console cannot read).  The bearer
token of the last login is sent with every request.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from st2000r.tui.model import (
    Alarm,
    BadAnswer,
    Command,
    HistoryPoint,
    LinkInfo,
    Meter,
    MeterFilter,
    MeterPage,
    Operator,
    Session,
    Summary,
)
from st2000r.tui.sse import SseEvent, SseParser

PREFIX = "/api/v1"


class Unreachable(Exception):
    """No answer from the supervisor; ``reason`` is short and human."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApiError(Exception):
    """The supervisor refused a request (4xx/5xx) and said why."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(f"{status}: {message}" + (f" ({field})" if field else ""))
        self.status, self.message, self.field = status, message, field

    @property
    def reason(self) -> str:
        return f"{self.message} ({self.field})" if self.field else self.message


class Unauthorized(ApiError):
    """401: no token, a bad one or an expired one — log in again."""


class Forbidden(ApiError):
    """403: the operator's role may not do this."""


def _error_from(response: httpx.Response) -> ApiError:
    message, field = response.reason_phrase or f"HTTP {response.status_code}", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("detail") or message)
            field = err.get("field")
        else:
            if isinstance(err, str):
                message = err
            elif isinstance(body.get("message"), str):
                message = body["message"]
            field = body.get("field")
    cls = {401: Unauthorized, 403: Forbidden}.get(response.status_code, ApiError)
    return cls(response.status_code, message, field if isinstance(field, str) else None)


def _unreachable(exc: httpx.TransportError) -> Unreachable:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "SSL" in text:
        text = f"TLS handshake failed ({text})"
    elif isinstance(exc, httpx.ConnectError):
        text = f"connection refused or no route ({text})"
    elif isinstance(exc, httpx.TimeoutException):
        text = "no answer in time"
    return Unreachable(text)


def meter_path(meter_id: str) -> str:
    """``/api/v1/meters/bus/1/1/1``: the id's parts are path segments, each escaped."""
    return f"{PREFIX}/meters/" + "/".join(quote(part, safe="") for part in meter_id.split("/"))


class ApiClient:
    """One supervisor at ``url`` (``http://host:port``).  ``transport`` replaces the
    network in tests (an ``httpx.MockTransport``)."""

    def __init__(self, url: str, *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None,
                 ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.session: Session | None = None
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport, verify=verify)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        """The token, and the header that has the supervisor audit changes with source
        ``console`` (docs/api.md: it names the door, it grants nothing)."""
        auth = {"Authorization": f"Bearer {self.session.token}"} if self.session else {}
        return {"X-St2000r-Client": "console"} | auth

    async def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                      ok: tuple[int, ...] = (200,)) -> Any:
        try:
            response = await self._http.request(method, path, params=params, json=json, headers=self._headers())
        except httpx.TransportError as exc:
            raise _unreachable(exc) from None
        if response.status_code not in ok:
            raise _error_from(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise BadAnswer(f"{method} {path}: the answer is not JSON") from None

    # -- session -------------------------------------------------------------------------
    async def login(self, name: str, password: str) -> Session:
        body = await self.request("POST", f"{PREFIX}/login", json={"name": name, "password": password})
        self.session = Session.from_json(name, body)
        if self.session.role is None:
            try:
                me = await self.request("GET", f"{PREFIX}/me")
                if isinstance(me, dict) and isinstance(me.get("role"), str):
                    self.session = Session(name, self.session.token, self.session.expires_at, me["role"])
            except ApiError:
                pass
        return self.session

    async def logout(self) -> None:
        if self.session is not None:
            try:
                await self.request("POST", f"{PREFIX}/logout", ok=(200, 204))
            finally:
                self.session = None

    # -- reading -------------------------------------------------------------------------
    async def health(self) -> dict:
        return await self.request("GET", f"{PREFIX}/health")

    async def diagnostics(self) -> dict:
        return await self.request("GET", f"{PREFIX}/diagnostics")

    async def summary(self) -> Summary:
        return Summary.from_json(await self.request("GET", f"{PREFIX}/summary"))

    async def meters(self, flt: MeterFilter = MeterFilter(), *, limit: int = 500, cursor: str | None = None) -> MeterPage:
        params = flt.params() | {"limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        return MeterPage.from_json(await self.request("GET", f"{PREFIX}/meters", params=params))

    async def meter(self, meter_id: str) -> Meter:
        return Meter.from_json(await self.request("GET", meter_path(meter_id)))

    async def history(self, meter_id: str) -> tuple[tuple[HistoryPoint, ...], tuple[HistoryPoint, ...]]:
        """(daily consumption, the readings themselves) of the last week, oldest first;
        a reading's ``day`` is its time ``MM-DD hh:mm`` and ``usage`` its value."""
        body = await self.request("GET", meter_path(meter_id) + "/history")
        items = body.get("items", []) if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise BadAnswer("history: 'items' should be a list")
        readings = tuple(HistoryPoint(f"{str(i.get('read_at'))[5:10]} {str(i.get('read_at'))[11:16]}", i["value"])
                         for i in items if isinstance(i, dict) and isinstance(i.get("value"), int))
        return history_points(items), readings

    async def alarms(self) -> tuple[Alarm, ...]:
        body = await self.request("GET", f"{PREFIX}/alarms", params={"limit": "1000"})
        items = body.get("items", []) if isinstance(body, dict) else body
        return tuple(Alarm.from_json(a, f"alarm {n}") for n, a in enumerate(items or ()))

    async def links(self) -> tuple[LinkInfo, ...]:
        body = await self.request("GET", f"{PREFIX}/links")
        items = body.get("items", []) if isinstance(body, dict) else body
        return tuple(LinkInfo.from_json(x, f"link {n}") for n, x in enumerate(items or ()))

    async def operators(self) -> tuple[Operator, ...]:
        body = await self.request("GET", f"{PREFIX}/operators")
        items = body.get("items", []) if isinstance(body, dict) else body
        return tuple(Operator.from_json(x) for x in items or ())

    async def command(self, command: Command | str) -> Command:
        if isinstance(command, Command) and command.url:
            path = command.url
        else:
            cid = command.id if isinstance(command, Command) else command
            path = f"{PREFIX}/commands/{quote(cid, safe='')}"
        return Command.from_json(await self.request("GET", path))

    # -- changing ------------------------------------------------------------------------
    async def valve(self, meter_id: str, *, open: bool, reason: str) -> Command:
        body = await self.request("POST", f"{PREFIX}/commands", ok=(202,),
                                  json={"kind": "valve", "meter": meter_id, "open": open, "reason": reason})
        return Command.from_json({"kind": "valve", "target": meter_id, **(body or {})})

    async def read_now(self, meter_id: str) -> Command:
        body = await self.request("POST", f"{PREFIX}/commands", ok=(202,),
                                  json={"kind": "read_now", "target": meter_id, "reason": "console"})
        return Command.from_json({"kind": "read_now", "target": meter_id, **(body or {})})

    async def ack(self, alarm_id: str, note: str = "") -> None:
        body = {"alarm": alarm_id} | ({"note": note} if note else {})
        await self.request("POST", f"{PREFIX}/alarms/acknowledge", json=body)

    async def shelve(self, alarm_id: str, *, reason: str, minutes: int) -> None:
        await self.request("POST", f"{PREFIX}/alarms/shelve",
                           json={"alarm": alarm_id, "reason": reason, "duration_s": minutes * 60})

    async def unshelve(self, alarm_id: str, reason: str = "") -> None:
        await self.request("POST", f"{PREFIX}/alarms/unshelve",
                           json={"alarm": alarm_id} | ({"reason": reason} if reason else {}))

    # -- live ----------------------------------------------------------------------------
    async def events(self, last_id: str | None = None) -> AsyncIterator[list[SseEvent]]:
        """The event stream, as lists of events (one list per chunk read; an empty list
        first, once the supervisor accepted the stream).  Sends
        ``Last-Event-ID`` when given; ends when the server closes the stream."""
        headers = self._headers() | {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        parser = SseParser()
        try:
            async with self._http.stream("GET", f"{PREFIX}/events", headers=headers,
                                         timeout=httpx.Timeout(10.0, read=None)) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _error_from(response)
                yield []  # connected: the caller learns it before the first event
                async for chunk in response.aiter_text():
                    events = parser.feed(chunk)
                    if events:
                        yield events
        except httpx.TransportError as exc:
            raise _unreachable(exc) from None


def history_points(items: list) -> tuple[HistoryPoint, ...]:
    """Daily consumption from the history endpoint's items.  Items with ``usage`` are
    taken as they are; items that only carry a reading (``value`` at ``at``/``read_at``)
    are turned into per-day differences of the last reading of each day."""
    out: list[HistoryPoint] = []
    last_of_day: dict[str, int] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadAnswer(f"history item {n}: expected an object")
        day = str(item.get("day") or item.get("at") or item.get("read_at") or item.get("time") or "")[:10]
        if isinstance(item.get("usage"), int):
            out.append(HistoryPoint(day, item["usage"]))
        elif isinstance(item.get("value"), int) and day:
            last_of_day[day] = item["value"]
    if out:
        return tuple(out)
    days = sorted(last_of_day)
    return tuple(HistoryPoint(d, last_of_day[d] - last_of_day[p]) for p, d in zip(days, days[1:]))
