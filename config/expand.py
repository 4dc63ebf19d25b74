"""One link's devices: repeaters, CDTs, modules and meters, checked and expanded.

``LinkBuild`` collects what a ``[[sites.links]]`` entry defines -- written out or generated
from address ranges and module templates -- and checks that every physical position (CDT
address, module, channel) and every meter serial is defined exactly once on the link, and
the link-wide limits (256 CDTs, 32 per repeater, 2 repeater levels).

Costs are bounded before anything is built: a range larger than the per-link limit is
rejected from its span count alone, and a link already over its limit registers no further
CDTs and expands no further meters (``st2000r.config.budget`` bounds the file as a whole).
Expansion is one ``str.format_map`` and three dataclass constructions per meter.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from st2000r.config.model import Cdt, Channel, Meter, MeterKind, Module, Repeater
from st2000r.config.schema import (
    CDT_RANGE_SCHEMA,
    CDT_SCHEMA,
    CHANNEL_SCHEMA,
    MODULE_RANGE_SCHEMA,
    MODULE_SCHEMA,
    REPEATER_SCHEMA,
)
from st2000r.config.validation import Context, check_table, indexed
from st2000r.config.values import (
    CDT_ADDRESS_MAX,
    MAX_CDTS_PER_LINK,
    MAX_CDTS_PER_REPEATER,
    MAX_CHANNELS_PER_MODULE,
    MAX_MODULES_PER_CDT,
    MAX_REPEATER_LEVELS,
    SERIAL_DIGITS,
    compact,
    display,
    key_path,
    parse_range,
    span_count,
    span_values,
)

__all__ = ["LinkBuild"]


class LinkBuild:
    """Collects one link's repeaters, CDTs, modules and meters; checks uniqueness and limits.

    ``cdts``: address -> [name, repeater, {module number: Module}, origin path].
    ``serials``: 14-digit serial -> (origin path, cdt, module, channel).
    """

    __slots__ = ("ctx", "path", "site_no", "link_no", "ok", "repeater_tuple", "repeater_paths",
                 "cdts", "unbuilt", "serials", "behind", "slots")

    def __init__(self, ctx: Context, path: str, site_no: int, link_no: int) -> None:
        self.ctx = ctx
        self.path = path
        self.site_no = site_no
        self.link_no = link_no
        self.ok = True
        self.repeater_tuple: tuple[Repeater, ...] = ()
        self.repeater_paths: dict[str, str] = {}
        self.cdts: dict[int, list[Any]] = {}
        #: CDTs of ranges left unregistered once the link was over its limit (counted only)
        self.unbuilt = 0
        self.serials: dict[str, tuple[str, int, int, int]] = {}
        #: repeater name -> number of CDTs naming it
        self.behind: dict[str, int] = {}
        #: explicit Modbus map slot -> path of the CDT that claims it
        self.slots: dict[int, str] = {}

    def error(self, path: str, reason: str) -> None:
        self.ok = False
        self.ctx.error(path, reason)

    # ---- repeaters

    def repeaters(self, items: list[Any]) -> None:
        rpath = key_path(self.path, "repeaters")
        # a repeater with a valid name is known to references even if its other keys are bad
        parsed: list[tuple[str, dict[str, Any], bool]] = []
        for _, p, item in indexed(items, rpath):
            values = check_table(self.ctx, item, p, REPEATER_SCHEMA)
            if values is None:
                self.ok = False
                continue
            complete = len(values) == len(REPEATER_SCHEMA)
            self.ok &= complete
            name = values.get("name")
            if name is None:
                continue
            if name in self.repeater_paths:
                self.error(key_path(p, "name"),
                           f"duplicate repeater name {name!r} on this link "
                           f"(already defined at {self.repeater_paths[name]})")
                continue
            self.repeater_paths[name] = p
            parsed.append((p, values, complete))
        parents = {values["name"]: values.get("parent") for _, values, _ in parsed}
        reported_cycles: set[str] = set()
        result = []
        for p, values, complete in parsed:
            name, parent = values["name"], values.get("parent")
            if parent is not None:
                if parent not in parents:
                    self.error(key_path(p, "parent"), f"unknown repeater {parent!r} (repeaters on this link: "
                                                  f"{', '.join(parents) or 'none'})")
                    continue
                chain = [name]
                node: str | None = parent
                while node is not None and node not in chain and node in parents:
                    chain.append(node)
                    node = parents[node]
                if node == name:
                    if name not in reported_cycles:
                        reported_cycles.update(chain)
                        self.error(key_path(p, "parent"), "repeater cycle: " + " -> ".join(chain + [name]))
                    continue
                if parents[parent] is not None:
                    self.error(key_path(p, "parent"),
                               f"repeater nesting exceeds {MAX_REPEATER_LEVELS} levels: {name!r} -> {parent!r} -> "
                               f"{parents[parent]!r} (a parent repeater must not have a parent itself)")
                    continue
            if complete:
                result.append(Repeater(name=name, parent=parent, latency_ms=values["latency_ms"]))
        self.repeater_tuple = tuple(result)

    def _repeater_ref(self, values: dict[str, Any], path: str, count: int) -> bool:
        repeater = values.get("repeater")
        if repeater is None:
            return True
        if repeater not in self.repeater_paths:
            self.error(key_path(path, "repeater"), f"unknown repeater {repeater!r} (repeaters on this link: "
                                               f"{', '.join(self.repeater_paths) or 'none'})")
            return False
        self.behind[repeater] = self.behind.get(repeater, 0) + count
        return True

    # ---- templates

    def _template(self, values: dict[str, Any], path: str) -> tuple[tuple[int, MeterKind, int], ...] | None:
        name = values.get("template")
        if name is None:
            return None
        templates = self.ctx.templates
        if name not in templates:
            self.error(key_path(path, "template"),
                       f"unknown template {name!r} "
                       f"(defined: {', '.join(map(display, templates)) or 'no templates are defined'})")
            return None
        compiled = templates[name]
        if compiled is None:  # the template itself is invalid and already reported
            self.ok = False
        return compiled

    # ---- CDTs

    def _add_cdt(self, address: int, name: str | None, repeater: str | None, origin: str) -> list[Any]:
        """Register a new CDT (the caller has checked the address is free); its entry."""
        entry = [name, repeater, {}, origin]
        self.cdts[address] = entry
        return entry

    def cdt_range(self, item: Any, path: str) -> None:
        ctx = self.ctx
        values = check_table(ctx, item, path, CDT_RANGE_SCHEMA)
        if values is None:
            self.ok = False
            return
        complete = len(values) == len(CDT_RANGE_SCHEMA)
        self.ok &= complete
        addr_spans, _ = parse_range(values["addresses"], 1, CDT_ADDRESS_MAX) if "addresses" in values else (None, None)
        if addr_spans is None:
            return
        count = span_count(addr_spans)
        apath = key_path(path, "addresses")
        if count > MAX_CDTS_PER_LINK:
            self.error(apath, f"range gives {count} CDTs, more than the limit of {MAX_CDTS_PER_LINK} per link")
            return
        repeater_ok = self._repeater_ref(values, path, count)
        template = self._template(values, path)
        mod_spans = None
        if "modules" in values:
            mod_spans, _ = parse_range(values["modules"], 1, MAX_MODULES_PER_CDT)
        name_fmt = values.get("name")
        fields = {"site_no": self.site_no, "link_no": self.link_no, "cdt": 0}
        duplicates: dict[str, list[int]] = {}
        new: list[tuple[int, list[Any]]] = []
        for seen, address in enumerate(chain.from_iterable(range(a, b + 1) for a, b in addr_spans), start=1):
            if len(self.cdts) > MAX_CDTS_PER_LINK:  # over the limit already: count the rest, build nothing
                self.unbuilt += count - seen + 1
                break
            if address in self.cdts:
                duplicates.setdefault(self.cdts[address][3], []).append(address)
                continue
            fields["cdt"] = address
            try:
                name = name_fmt.format_map(fields) if name_fmt is not None else None
            except (ValueError, OverflowError) as exc:
                self.error(key_path(path, "name"), f"format {name_fmt!r} fails for CDT {address}: {exc}")
                name_fmt = name = None
            new.append((address, self._add_cdt(address, name, values.get("repeater"), apath)))
        for origin, addresses in duplicates.items():
            self.error(apath, f"duplicate CDT address{'es' if len(addresses) > 1 else ''} {compact(addresses)} "
                              f"(already defined at {origin})")
        if not (complete and repeater_ok and template and mod_spans and self._room()):
            return
        modules = span_values(mod_spans)
        self._expand(path, [(a, e[2]) for a, e in new], modules, template, values)

    def cdt(self, item: Any, path: str) -> None:
        ctx = self.ctx
        values = check_table(ctx, item, path, CDT_SCHEMA)
        if values is None:
            self.ok = False
            return
        self.ok &= len(values) == len(CDT_SCHEMA)
        entry = None
        if "address" in values:
            address = values["address"]
            apath = key_path(path, "address")
            if address in self.cdts:
                self.error(apath, f"duplicate CDT address {address} (already defined at {self.cdts[address][3]})")
            else:
                entry = self._add_cdt(address, values.get("name"), values.get("repeater"), apath)
        slot = values.get("slot")
        if slot is not None:
            spath = key_path(path, "slot")
            if slot in self.slots:
                self.error(spath, f"duplicate slot {slot} on this link (already used at {self.slots[slot]})")
            else:
                self.slots[slot] = spath
                if entry is not None:
                    entry.append(slot)
        self._repeater_ref(values, path, 1)
        modules: dict[int, Module] = {}
        origins: dict[int, str] = {}
        mpath = key_path(path, "modules")
        mod_items = values.get("modules", [])
        if len(mod_items) > MAX_MODULES_PER_CDT:
            self.error(mpath, f"{len(mod_items)} modules exceed the limit of {MAX_MODULES_PER_CDT} per CDT")
        address = values.get("address", 0)
        expand = entry is not None and self._room()
        for _, p, mitem in indexed(mod_items, mpath):
            self._module(mitem, p, address, modules, origins, expand)
        rpath = key_path(path, "module_ranges")
        for _, p, ritem in indexed(values.get("module_ranges", []), rpath):
            self._module_range(ritem, p, address, modules, origins, expand)
        if entry is not None:
            entry[2] = modules

    def _room(self) -> bool:
        """False once the link has more CDTs than allowed: stop generating meters for it."""
        return len(self.cdts) <= MAX_CDTS_PER_LINK

    def _claim_module(self, number: int, path: str, address: int, origins: dict[int, str]) -> bool:
        if number in origins:
            self.error(path, f"duplicate module number {number} in CDT {address} "
                             f"(already defined at {origins[number]})")
            return False
        origins[number] = path
        return True

    def _module_range(self, item: Any, path: str, address: int, modules: dict[int, Module],
                      origins: dict[int, str], expand: bool) -> None:
        values = check_table(self.ctx, item, path, MODULE_RANGE_SCHEMA)
        if values is None:
            self.ok = False
            return
        complete = len(values) == len(MODULE_RANGE_SCHEMA)
        self.ok &= complete
        template = self._template(values, path)
        if "modules" not in values:
            return
        spans, _ = parse_range(values["modules"], 1, MAX_MODULES_PER_CDT)
        mpath = key_path(path, "modules")
        numbers = [n for n in span_values(spans or []) if self._claim_module(n, mpath, address, origins)]
        if complete and template and expand:
            self._expand(path, [(address, modules)], numbers, template, values)

    def _module(self, item: Any, path: str, address: int, modules: dict[int, Module],
                origins: dict[int, str], expand: bool) -> None:
        ctx = self.ctx
        values = check_table(ctx, item, path, MODULE_SCHEMA)
        if values is None:
            self.ok = False
            return
        complete = "module" in values and len(values) == len(MODULE_SCHEMA)
        self.ok &= complete
        number = values.get("module")
        if number is not None and not self._claim_module(number, key_path(path, "module"), address, origins):
            complete = False
        has_template = type(item.get("template")) is str or "template" in item
        has_channels = "channels" in item
        if has_template and has_channels:
            self.error(path, "give either 'template' or 'channels', not both")
            return
        if not has_template and not has_channels:
            self.error(path, "missing 'template' or 'channels': a module needs one of them")
            return
        if has_template:
            if "serial" not in item:
                self.error(key_path(path, "serial"), "missing required key 'serial' (a module built from a template "
                                                 "needs a serial format)")
                return
            template = self._template(values, path)
            if complete and template and expand:
                values = dict(values)
                if values["initial"] is None:
                    values["initial"] = 0
                self._expand(path, [(address, modules)], [number], template, values)
            return
        for key in ("serial", "household", "initial"):
            if key in item:
                self.error(key_path(path, key), f"{key!r} applies only with 'template'; with 'channels' give each "
                                            f"channel its own {key!r}")
                complete = False
        cpath = key_path(path, "channels")
        channels_raw = values.get("channels")
        if channels_raw is None:
            return
        if len(channels_raw) > MAX_CHANNELS_PER_MODULE:
            self.error(cpath, f"{len(channels_raw)} channels exceed the limit of {MAX_CHANNELS_PER_MODULE} per module")
            complete = False
        channels: dict[int, Channel] = {}
        channel_paths: dict[int, str] = {}
        for _, p, citem in indexed(channels_raw, cpath):
            ch = check_table(ctx, citem, p, CHANNEL_SCHEMA)
            if ch is None or len(ch) != len(CHANNEL_SCHEMA):
                self.ok = complete = False
                continue
            cno = ch["channel"]
            if cno in channel_paths:
                self.error(key_path(p, "channel"), f"duplicate channel {cno} in module {number} of CDT {address} "
                                               f"(already defined at {channel_paths[cno]})")
                complete = False
                continue
            channel_paths[cno] = key_path(p, "channel")
            serial = ch["serial"].zfill(SERIAL_DIGITS)
            spath = key_path(p, "serial")
            if serial in self.serials:
                self.error(spath, f"duplicate meter serial {serial} ({self._describe(self.serials[serial])})")
                complete = False
                continue
            self.serials[serial] = (spath, address, number or 0, cno)
            meter = Meter(MeterKind(ch["kind"]), ch["pulse_constant"], serial, ch["initial"], ch["household"])
            channels[cno] = Channel(cno, meter)
        if complete and expand:
            modules[number] = Module(number, tuple(channels[n] for n in sorted(channels)))

    @staticmethod
    def _describe(first: tuple[str, int, int, int]) -> str:
        origin, cdt, module, channel = first
        return f"already used by CDT {cdt} module {module} channel {channel}, from {origin}"

    # ---- expansion

    def _expand(self, path: str, targets: list[tuple[int, dict[int, Module]]], module_numbers: list[int],
                template: tuple[tuple[int, MeterKind, int], ...], values: dict[str, Any]) -> None:
        """Build modules ``module_numbers`` from ``template`` into each target CDT's module dict."""
        serial_fmt: str = values["serial"]
        household_fmt: str | None = values["household"]
        initial: int = values["initial"]
        spath = key_path(path, "serial")
        serials = self.serials
        fields = {"site_no": self.site_no, "link_no": self.link_no, "cdt": 0, "module": 0, "channel": 0}
        fmt = serial_fmt.format_map
        hfmt = household_fmt.format_map if household_fmt is not None else None
        bad_first: str | None = None
        bad_count = 0
        dup_first: str | None = None
        dup_count = 0
        for address, modules in targets:
            fields["cdt"] = address
            for number in module_numbers:
                fields["module"] = number
                channels = []
                for cno, kind, pulse_constant in template:
                    fields["channel"] = cno
                    try:
                        serial = fmt(fields)
                        household = hfmt(fields) if hfmt is not None else None
                    except (ValueError, OverflowError) as exc:  # e.g. a spec valid for 1 but not for this value
                        serial = household = f"<{exc}>"
                    if not (len(serial) <= SERIAL_DIGITS and serial.isdigit() and serial.isascii()):
                        bad_count += 1
                        if bad_first is None:
                            bad_first = (f"format {serial_fmt!r} gives {serial!r} for CDT {address} module {number} "
                                         f"channel {cno}: a meter serial must be 1..{SERIAL_DIGITS} decimal digits")
                        continue
                    serial = serial.zfill(SERIAL_DIGITS)
                    if serial in serials:
                        dup_count += 1
                        if dup_first is None:
                            dup_first = (f"format {serial_fmt!r} gives duplicate meter serial {serial} for CDT "
                                         f"{address} module {number} channel {cno} ({self._describe(serials[serial])})")
                        continue
                    serials[serial] = (spath, address, number, cno)
                    channels.append(Channel(cno, Meter(kind, pulse_constant, serial, initial, household)))
                modules[number] = Module(number, tuple(channels))
        if bad_first is not None:
            more = f"; {bad_count} bad serials from this entry in all" if bad_count > 1 else ""
            self.error(spath, bad_first + more)
        if dup_first is not None:
            more = f"; {dup_count} duplicates from this entry in all" if dup_count > 1 else ""
            self.error(spath, dup_first + more)

    # ---- limits and result

    def finish(self) -> tuple[Cdt, ...] | None:
        """Check the link-wide limits; the sorted CDTs, or None if anything on the link failed."""
        total = len(self.cdts) + self.unbuilt
        if total > MAX_CDTS_PER_LINK:
            self.error(self.path, f"{total} CDTs exceed the limit of {MAX_CDTS_PER_LINK} per link")
        for name, count in self.behind.items():
            if count > MAX_CDTS_PER_REPEATER:
                self.error(self.repeater_paths[name], f"{count} CDTs behind repeater {name!r} exceed the limit of "
                                                      f"{MAX_CDTS_PER_REPEATER} per repeater")
        if not self.ok:
            return None
        result = []
        for address in sorted(self.cdts):
            name, repeater, modules, _, *slot = self.cdts[address]
            result.append(Cdt(address, name, repeater, tuple(modules[n] for n in sorted(modules)),
                              slot[0] if slot else None))
        return tuple(result)


