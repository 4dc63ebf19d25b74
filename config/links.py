"""The ``[templates]`` and ``[[sites]]`` sections: module templates, sites and their links.

A link's own keys (name, kind, endpoint, line settings) are checked here, its devices by
``st2000r.config.expand.LinkBuild``.  Names, serial devices, TCP endpoints and DTU ids are
unique across the whole file.
"""

from __future__ import annotations

from typing import Any

from st2000r.config.expand import LinkBuild
from st2000r.config.model import (
    GprsEndpoint,
    GsmEndpoint,
    LineSettings,
    Link,
    MeterKind,
    SerialEndpoint,
    Site,
    TcpEndpoint,
)
from st2000r.config.schema import (
    LINK_COMMON_SCHEMA,
    LINK_KIND_SCHEMAS,
    SITE_SCHEMA,
    TEMPLATE_CHANNEL_SCHEMA,
    TEMPLATE_SCHEMA,
    Key,
)
from st2000r.config.validation import Context, check_table, indexed, unique
from st2000r.config.values import MAX_CHANNELS_PER_MODULE, check_name, key_path, show, type_name

__all__ = ["templates_section", "sites_section", "compile_template", "build_link"]

def templates_section(ctx: Context, value: Any, path: str) -> None:
    if type(value) is not dict:
        ctx.error(path, f"wrong type: expected table, got {type_name(value)}{show(value)}")
        return
    for name, body in value.items():
        tpath = key_path(path, name)
        reason = check_name(name)
        if reason is not None:
            ctx.error(tpath, f"template {reason}")
        ctx.templates[name] = compile_template(ctx, body, tpath)


def compile_template(ctx: Context, body: Any, path: str) -> tuple[tuple[int, MeterKind, int], ...] | None:
    values = check_table(ctx, body, path, TEMPLATE_SCHEMA)
    if values is None or "channels" not in values:
        return None
    cpath = key_path(path, "channels")
    channels = values["channels"]
    ok = True
    if not channels:
        ctx.error(cpath, "a template needs at least one channel")
        ok = False
    if len(channels) > MAX_CHANNELS_PER_MODULE:
        ctx.error(cpath, f"{len(channels)} channels exceed the limit of {MAX_CHANNELS_PER_MODULE} per module")
        ok = False
    seen: dict[int, str] = {}
    compiled = []
    for _, chpath, item in indexed(channels, cpath):
        ch = check_table(ctx, item, chpath, TEMPLATE_CHANNEL_SCHEMA)
        if ch is None or len(ch) != len(TEMPLATE_CHANNEL_SCHEMA):
            ok = False
            continue
        number = ch["channel"]
        if number in seen:
            ctx.error(key_path(chpath, "channel"), f"duplicate channel {number} (already defined at {seen[number]})")
            ok = False
            continue
        seen[number] = key_path(chpath, "channel")
        compiled.append((number, MeterKind(ch["kind"]), ch["pulse_constant"]))
    if not ok:
        return None
    compiled.sort()
    return tuple(compiled)


# --------------------------------------------------------------------------- sites and links


def sites_section(ctx: Context, value: Any, path: str) -> None:
    if type(value) is not list:
        ctx.error(path, f"wrong type: expected array of tables ([[sites]]), got {type_name(value)}{show(value)}")
        return
    if not value:
        ctx.error(path, "at least one site is required")
        return
    names: dict[str, str] = {}
    for site_no, (_, spath, item) in enumerate(indexed(value, path), start=1):
        values = check_table(ctx, item, spath, SITE_SCHEMA)
        if values is None:
            continue
        name = values.get("name")
        if name is not None:
            if name in names:
                ctx.error(key_path(spath, "name"), f"duplicate site name {name!r} (already used at {names[name]})")
            else:
                names[name] = key_path(spath, "name")
        links = []
        lpath = key_path(spath, "links")
        for link_no, (_, linkpath, litem) in enumerate(indexed(values.get("links", []), lpath), start=1):
            link = build_link(ctx, litem, linkpath, site_no, link_no)
            if link is not None:
                links.append(link)
        if "name" in values and "address" in values:
            ctx.sites.append(Site(name=values["name"], address=values["address"], links=tuple(links)))


def build_link(ctx: Context, item: Any, path: str, site_no: int, link_no: int) -> Link | None:
    kind = item.get("kind") if type(item) is dict else None
    if type(kind) is str and kind in LINK_KIND_SCHEMAS:
        schema = {**LINK_COMMON_SCHEMA, **LINK_KIND_SCHEMAS[kind]}
        what = f" for a {kind} link"
    else:
        # kind missing or wrong (reported by check_table): accept any kind's keys, required or not
        schema = dict(LINK_COMMON_SCHEMA)
        for kind_schema in LINK_KIND_SCHEMAS.values():
            for name, key in kind_schema.items():
                schema[name] = Key(key.types, None, key.check, key.doc, key.hint)
        what = ""
    values = check_table(ctx, item, path, schema, what)
    if values is None:
        return None
    ok = len(values) == len(schema) and type(kind) is str and kind in LINK_KIND_SCHEMAS

    name = values.get("name")
    if name is not None:
        if name in ctx.link_names:
            ctx.error(key_path(path, "name"), f"duplicate link name {name!r} (already used at {ctx.link_names[name]})")
            ok = False
        else:
            ctx.link_names[name] = key_path(path, "name")

    # uniqueness across the file is checked whenever the keys involved are valid
    if kind == "serial" and "device" in values:
        ok &= unique(ctx, ctx.devices, values["device"], key_path(path, "device"), "serial device")
    elif kind == "tcp" and "host" in values and "port" in values:
        ok &= unique(ctx, ctx.endpoints, (values["host"], values["port"]), key_path(path, "port"),
                      f"TCP endpoint {values['host']}:{values['port']}")
    elif kind == "gprs" and "dtu_id" in values:
        ok &= unique(ctx, ctx.dtu_ids, values["dtu_id"], key_path(path, "dtu_id"), "DTU id")
        dtu, registration = values["dtu_id"], values.get("registration")
        if registration == "ddp" and not (dtu.isascii() and len(dtu) <= 11):
            ctx.error(key_path(path, "dtu_id"), f"a DDP identity is 1..11 ASCII characters, got {dtu!r}")
            ok = False
        elif registration in ("plain", "usr") and dtu.startswith("{"):
            ctx.error(key_path(path, "dtu_id"), "a plain or usr identity must not start with '{' (7Bh starts a DDP packet)")
            ok = False

    endpoint: Any = None
    if ok:
        if kind == "serial":
            endpoint = SerialEndpoint(device=values["device"])
        elif kind == "tcp":
            endpoint = TcpEndpoint(host=values["host"], port=values["port"])
        elif kind == "gprs":
            endpoint = GprsEndpoint(dtu_id=values["dtu_id"], registration=values["registration"],
                                    heartbeat_s=values["heartbeat_s"])
        else:
            endpoint = GsmEndpoint(modem=values["modem"], number=values["number"], modem_baud=values["modem_baud"])

    build = LinkBuild(ctx, path, site_no, link_no)
    build.repeaters(values.get("repeaters", []))
    rpath = key_path(path, "cdt_ranges")
    for _, p, entry in indexed(values.get("cdt_ranges", []), rpath):
        build.cdt_range(entry, p)
    cpath = key_path(path, "cdts")
    for _, p, entry in indexed(values.get("cdts", []), cpath):
        build.cdt(entry, p)
    cdts = build.finish()
    if not ok or cdts is None:
        return None
    return Link(
        name=values["name"],
        kind=kind,
        endpoint=endpoint,
        line=LineSettings(baud=values["baud"], bytesize=values["bytesize"], parity=values["parity"],
                          stopbits=values["stopbits"]),
        turnaround_ms=values["turnaround_ms"],
        gap_ms=float(values["gap_ms"]) if values["gap_ms"] is not None else None,
        di_order=values["di_order"],
        repeaters=build.repeater_tuple,
        cdts=cdts,
    )


