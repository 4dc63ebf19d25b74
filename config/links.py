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
from st2000r.config.validation import Context, check_table, indexed, string_list, unique
from st2000r.config.values import (
    CHALLENGE_SECRET_MIN,
    MAX_ALLOW_FROM,
    MAX_CHANNELS_PER_MODULE,
    check_name,
    key_path,
    parse_network,
    show,
    type_name,
)

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
    gprs_auth: tuple[str, tuple[str, ...]] | None = None
    if kind == "gprs":
        gprs_auth = _gprs_auth(ctx, values, path)
        ok &= gprs_auth is not None

    endpoint: Any = None
    if ok:
        if kind == "serial":
            endpoint = SerialEndpoint(device=values["device"])
        elif kind == "tcp":
            endpoint = TcpEndpoint(host=values["host"], port=values["port"])
        elif kind == "gprs":
            assert gprs_auth is not None
            endpoint = GprsEndpoint(dtu_id=values["dtu_id"], registration=values["registration"],
                                    heartbeat_s=values["heartbeat_s"], auth=gprs_auth[0], secret=values["secret"],
                                    allow_from=gprs_auth[1])
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


def _gprs_auth(ctx: Context, values: dict[str, Any], path: str) -> tuple[str, tuple[str, ...]] | None:
    """``(auth mode, allow_from networks)`` of a GPRS link, or None after recording why not.

    The rules (docs/security.md): ``auth`` defaults to ``"challenge"`` when a ``secret`` is
    given and to ``"none"`` when only ``allow_from`` is; a link with neither must say
    ``auth = "none"`` itself.  ``challenge``/``password`` need a secret (challenge: at least
    ``CHALLENGE_SECRET_MIN`` characters), ``none`` takes none, ``password`` needs a text
    registration (a DDP packet has no room for one)."""
    if "auth" not in values or "secret" not in values or "allow_from" not in values:
        return None  # a bad value, already reported
    ok = True
    networks: list[str] = []
    apath = key_path(path, "allow_from")
    allow = values["allow_from"]
    if len(allow) > MAX_ALLOW_FROM:
        ctx.error(apath, f"{len(allow)} networks exceed the limit of {MAX_ALLOW_FROM} per link")
        ok = False
    elif string_list(ctx, allow, apath, "network") is None:
        ok = False
    else:
        for i, text in enumerate(allow):
            network, reason = parse_network(text)
            if reason is not None:
                ctx.error(f"{apath}[{i}]", reason)
                ok = False
            else:
                networks.append(network)
    auth, secret = values["auth"], values["secret"]
    name = values.get("name", "?")
    if auth is None:
        if secret is not None:
            auth = "challenge"
        elif allow:
            auth = "none"
        else:
            ctx.error(path, f"GPRS link {name!r} has no proof of identity: give its DTU a secret (auth = \"challenge\" "
                            "or \"password\"), limit it with allow_from = [networks], or write auth = \"none\" to let "
                            "any connection that names its DTU id take the link")
            return None
    spath = key_path(path, "secret")
    if auth in ("challenge", "password") and secret is None:
        ctx.error(spath, f"auth = {auth!r} needs the DTU's secret")
        ok = False
    elif auth == "none" and secret is not None:
        ctx.error(spath, "a secret is never checked with auth = \"none\": remove it, or set auth = \"challenge\" "
                         "or \"password\"")
        ok = False
    elif auth == "challenge" and len(secret) < CHALLENGE_SECRET_MIN:
        ctx.error(spath, f"a challenge secret is at least {CHALLENGE_SECRET_MIN} characters long, got {len(secret)}")
        ok = False
    if auth == "password" and values.get("registration") == "ddp":
        ctx.error(key_path(path, "auth"), "a DDP registration packet has no room for a password: use auth = "
                                          "\"challenge\" (a DTU that can answer it) or allow_from")
        ok = False
    return (auth, tuple(networks)) if ok else None

