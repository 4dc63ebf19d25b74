"""What the handlers work on: the supervisor's parts, the sessions, the event stream and
a static index of the meters for filtering and paging.

The index is built once from the topology (meter order, link, CDT, household and kind
never change while the supervisor runs), so a filtered page looks at the live point of
only the meters the static filters leave.  Cursors are opaque: the position after the
last item of the page, encoded; positions are stable because the order is.
"""

from __future__ import annotations

import base64
import json
from array import array
import binascii
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from st2000r.config.model import Topology
from st2000r.supervisor.api.errors import invalid
from st2000r.supervisor.api.sessions import Sessions
from st2000r.supervisor.api.stream import EventStream
from st2000r.supervisor.api.shapes import meter_json
from st2000r.supervisor.events import MeterChanged, MeterId

__all__ = ["ApiApp", "MeterEntry", "encode_cursor", "decode_cursor", "CANDIDATE_CACHE"]

#: static filter combinations whose matching positions are kept
CANDIDATE_CACHE = 32  # at most 32 x 4 bytes x the meters (3 MiB at 24,576 meters)


@dataclass(frozen=True, slots=True)
class MeterEntry:
    """The static part of a meter (from the topology)."""

    id: MeterId
    household: str | None
    kind: str


def encode_cursor(tag: str, position: int) -> str:
    return base64.urlsafe_b64encode(f"{tag}:{position}".encode()).decode().rstrip("=")


def decode_cursor(tag: str, text: str | None) -> int:
    """The position a cursor of list ``tag`` stands for (0 without one); 400 for a cursor
    that is not one of ours."""
    if text is None:
        return 0
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        kind, _, number = raw.partition(":")
        if kind != tag or not number.isdigit() or len(number) > 12:
            raise ValueError
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor", "not a cursor of this list (pass back the 'next' of the previous page)") from None


class ApiApp:
    """The state the handlers share.  ``historian``: the writer (status, database URL) or None."""

    def __init__(self, topology: Topology, clock: IReactorTime, *, bus: Any, points: Any, alarms: Any, commands: Any,
                 sessions: Sessions, stream: EventStream, historian: Any = None, reactor: Any = None,
                 pollers: dict[str, Any] | None = None, link_services: dict[str, Any] | None = None,
                 gprs_server: Any = None) -> None:
        from st2000r.supervisor.api.routes import ROUTES

        self.topology = topology
        self.clock = clock
        self.reactor = reactor
        self.bus = bus
        self.points = points
        self.alarms = alarms
        self.commands = commands
        self.sessions = sessions
        self.stream = stream
        self.historian = historian
        self.pollers = pollers if pollers is not None else {}
        self.link_services = link_services or {}
        self.gprs_server = gprs_server
        self.routes = ROUTES
        self.history: Any = None  # the historian reader, made on first use
        self.meters: list[MeterEntry] = []
        self.meter_index: dict[MeterId, int] = {}
        #: each meter's (quality, channel alarm flags), and counts of them, kept by MeterChanged:
        #: live filters and the summary never build 24,576 points
        self.live: dict[MeterId, tuple[str, int]] = {}
        self.quality_counts: Counter[str] = Counter()
        self.with_alarms = 0
        for point in points.meters():
            config = points.meter_config(point.id)
            self.meter_index[point.id] = len(self.meters)
            self.meters.append(MeterEntry(point.id, config.household, config.kind.value))
            self._count(point.id, point.quality.value, int(point.alarms))
        self.site_of: dict[str, str] = {}
        for site in topology.sites:
            for link in site.links:
                self.site_of[link.name] = site.name
        self._candidates: OrderedDict[tuple, array] = OrderedDict()
        self._json: dict[MeterId, bytes] = {}  # a meter's JSON bytes until its point changes
        self._unsubscribe = bus.subscribe(self._on_meter, MeterChanged)
        self.meters_per_cdt: dict[tuple[str, int], int] = {}
        self.meters_per_link: dict[str, int] = {}
        for entry in self.meters:
            key = (entry.id.link, entry.id.cdt)
            self.meters_per_cdt[key] = self.meters_per_cdt.get(key, 0) + 1
            self.meters_per_link[entry.id.link] = self.meters_per_link.get(entry.id.link, 0) + 1

    def close(self) -> None:
        self._unsubscribe()
        self._json.clear()

    def _on_meter(self, event: MeterChanged) -> None:
        self._json.pop(event.meter, None)
        self._count(event.meter, event.quality.value, int(event.alarms))

    def _count(self, mid: MeterId, quality: str, flags: int) -> None:
        old = self.live.get(mid)
        if old is not None:
            self.quality_counts[old[0]] -= 1
            self.with_alarms -= bool(old[1])
        self.live[mid] = (quality, flags)
        self.quality_counts[quality] += 1
        self.with_alarms += bool(flags)

    def meter_bytes(self, mid: MeterId) -> bytes:
        """The meter's JSON object (``shapes.meter_json``) as bytes, made once per change of
        its point: a page of meters is then mostly joining bytes."""
        data = self._json.get(mid)
        if data is None:
            data = self._json[mid] = json.dumps(meter_json(self.points.meter(mid)), separators=(",", ":"),
                                                ensure_ascii=False).encode()
        return data

    def candidates(self, link: str | None, cdt: int | None, kind: str | None, household: str | None) -> array:
        """Index positions of the meters that pass the static filters (in order); kept for
        the last ``CANDIDATE_CACHE`` filter combinations, as the topology does not change."""
        key = (link, cdt, kind, household)
        found = self._candidates.get(key)
        if found is not None:
            self._candidates.move_to_end(key)
            return found
        prefix = household[:-1] if household is not None and household.endswith("*") else None
        found = array("i")
        for position, entry in enumerate(self.meters):
            mid = entry.id
            if (link is not None and mid.link != link) or (cdt is not None and mid.cdt != cdt) or \
                    (kind is not None and entry.kind != kind):
                continue
            if household is not None:
                h = entry.household or ""
                if (prefix is not None and not h.startswith(prefix)) or (prefix is None and h != household):
                    continue
            found.append(position)
        self._candidates[key] = found
        while len(self._candidates) > CANDIDATE_CACHE:
            self._candidates.popitem(last=False)
        return found

    def rounds(self, link: str | None = None) -> list[dict[str, Any]]:
        """The poll rounds in progress (of one link): plan, kind, start, CDTs tried / all."""
        from st2000r.supervisor.events import utc

        return [{"link": name, "plan": p.plan, "kind": p.kind, "started_at": utc(p.started).isoformat(),
                 "cdts_done": p.cdts_done, "cdts_total": p.cdts_total}
                for name, poller in self.pollers.items() if link is None or name == link
                for p in poller.progress()]

    def sessions_of(self, link: str) -> list[dict[str, Any]]:
        """The registered DTU sessions of a GPRS link (empty for other kinds)."""
        from st2000r.supervisor.events import utc

        server = self.gprs_server
        if server is None:
            return []
        out = []
        for info in server.sessions().values():
            if info.link != link:
                continue
            out.append({"dtu_id": info.dtu_id, "peer": info.peer, "since": utc(info.since).isoformat(),
                        "last_seen": utc(info.last_seen).isoformat(), "heartbeats": info.heartbeats,
                        "bytes_in": info.bytes_in, "bytes_out": info.bytes_out, "auth": info.auth})
        return out
