"""A meter's history from the historian's database, read off the reactor.

The reader opens its own engine on the historian's URL (the writer's stays the writer's)
and runs each query in the reactor's thread pool.  Pages are keyset pages on
``(read_at, id)``, oldest first, so a page is cheap however deep it is.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy import exc as sa_exc
from twisted.internet import threads

from st2000r.supervisor.api.errors import ApiError, invalid
from st2000r.supervisor.api.reads import meter_id, no_historian
from st2000r.supervisor.events import utc

__all__ = ["HistoryReader", "history"]

_FLAG_NAMES = (("tamper", 1), ("short", 2), ("open", 4))


class HistoryReader:
    """Queries of one historian database (``url``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Any = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def thd_page(self, meter: str, start: datetime, end: datetime, after: tuple[datetime, int] | None,
                 limit: int) -> tuple[list[dict[str, Any]], tuple[datetime, int] | None]:
        from st2000r.historian import db
        from st2000r.historian.schema import as_utc, meters, readings

        if self._engine is None:
            self._engine = db.make_engine(self.url)
        cond = [meters.c.meter_id == meter, readings.c.read_at >= start, readings.c.read_at < end]
        if after is not None:
            cond.append(or_(readings.c.read_at > after[0], and_(readings.c.read_at == after[0],
                                                                readings.c.id > after[1])))
        stmt = (select(readings.c.id, readings.c.read_at, readings.c.value, readings.c.quality, readings.c.source,
                       readings.c.valve, readings.c.alarms)
                .select_from(readings.join(meters, readings.c.meter == meters.c.id))
                .where(*cond).order_by(readings.c.read_at, readings.c.id).limit(limit + 1))
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        items = []
        for row in rows[:limit]:
            items.append({"read_at": as_utc(row.read_at).isoformat(), "value": int(row.value),
                          "quality": row.quality, "source": row.source, "valve": row.valve,
                          "alarms": [name for name, bit in _FLAG_NAMES if (row.alarms or 0) & bit]})
        last = (as_utc(rows[limit - 1].read_at), rows[limit - 1].id) if len(rows) > limit else None
        return items, last


def _cursor(after: tuple[datetime, int]) -> str:
    return base64.urlsafe_b64encode(f"h:{after[0].isoformat()}|{after[1]}".encode()).decode().rstrip("=")


def _after(text: str | None) -> tuple[datetime, int] | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        tag, _, rest = raw.partition(":")
        when, _, rid = rest.rpartition("|")
        if tag != "h" or not rid.isdigit():
            raise ValueError
        return datetime.fromisoformat(when), int(rid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor", "not a cursor of this list (pass back the 'next' of the previous page)") from None


async def history(call: Any) -> dict[str, Any]:
    app, q = call.app, call.query
    mid = meter_id(call)
    if app.historian is None:
        raise no_historian()
    from st2000r.supervisor.api.declare import parse_time

    try:
        end = (parse_time(q["to"], "to") if "to" in q else utc(app.clock.seconds())).astimezone(UTC)
        start = (parse_time(q["from"], "from") if "from" in q else end - timedelta(days=7)).astimezone(UTC)
    except OverflowError:
        raise invalid("from" if "from" in q else "to", "out of the range of times") from None
    if start > end:
        raise invalid("from", "must not be after 'to'")
    if app.history is None:
        app.history = HistoryReader(app.historian.url)
    reactor = app.reactor
    try:
        items, last = await threads.deferToThreadPool(reactor, reactor.getThreadPool(), app.history.thd_page,
                                                      str(mid), start, end, _after(q.get("cursor")),
                                                      q.get("limit", 1000))
    except sa_exc.SQLAlchemyError as exc:
        raise ApiError(503, f"the historian's database does not answer now: {str(exc).splitlines()[0]}") from None
    unit = app.points.meter(mid).unit
    return {"meter": str(mid), "base_unit": unit, "items": items, "next": _cursor(last) if last else None}
