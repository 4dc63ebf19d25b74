"""The supervisor sections: ``[[plans]]``, ``[interlocks]``, ``[[operators]]``, ``[supervisor]``.

Each runs after ``[[sites]]`` (plans name links, interlocks name households) and stores its
result on the ``Context``; a file without a section keeps the model's defaults.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from st2000r.config.modbus import UNITS_PER_LINK, check_first_unit, parse_listen, parse_network
from st2000r.config.model import (ApiSettings, HistorianSettings, Interlocks, ModbusRtuSettings, ModbusSettings, Operator,
                                  ReadingPlan, SupervisorSettings)
from st2000r.config.schema import HISTORIAN_SCHEMA, INTERLOCKS_SCHEMA, MODBUS_SCHEMA, OPERATOR_SCHEMA, PLAN_SCHEMA, SUPERVISOR_SCHEMA
from st2000r.config.schema import API_SCHEMA, API_TLS_SCHEMA, MODBUS_RTU_SCHEMA, MODBUS_TLS_SCHEMA
from st2000r.config.validation import Context, check_table, indexed, string_list
from st2000r.config.values import check_text, key_path, parse_duration, parse_time, show, type_name

__all__ = ["plans_section", "interlocks_section", "operators_section", "supervisor_section", "modbus_section",
           "historian_section", "api_section"]


def plans_section(ctx: Context, value: Any, path: str) -> None:
    if type(value) is not list:
        ctx.error(path, f"wrong type: expected array of tables ([[plans]]), got {type_name(value)}{show(value)}")
        return
    names: dict[str, str] = {}
    plans: list[ReadingPlan] = []
    ok = True
    for _, ppath, item in indexed(value, path):
        values = check_table(ctx, item, ppath, PLAN_SCHEMA)
        if values is None:
            ok = False
            continue
        good = len(values) == len(PLAN_SCHEMA)
        name = values.get("name")
        if name is not None:
            if name in names:
                ctx.error(key_path(ppath, "name"), f"duplicate plan name {name!r} (already used at {names[name]})")
                good = False
            else:
                names[name] = key_path(ppath, "name")
        times: list[_dt.time] = []
        tpath = key_path(ppath, "at")
        seen: dict[_dt.time, str] = {}
        for _, ipath, raw in indexed(values.get("at", []), tpath):
            parsed, reason = parse_time(raw)
            if reason is not None:
                ctx.error(ipath, reason)
                good = False
            elif parsed in seen:
                ctx.error(ipath, f"duplicate time {parsed:%H:%M:%S} (already listed at {seen[parsed]})")
                good = False
            else:
                seen[parsed] = ipath
                times.append(parsed)
        every = values.get("every")
        every_s = parse_duration(every)[0] if every is not None else None
        if "at" in values and "every" in values and not values["at"] and every is None:
            ctx.error(ppath, "a plan needs 'at' (daily times), 'every' (a period), or both")
            good = False
        links = values.get("links")
        if links is not None:
            lpath = key_path(ppath, "links")
            if not links:
                ctx.error(lpath, "empty list: name at least one link, or leave 'links' out for every link")
                good = False
            names_ok = string_list(ctx, links, lpath, "link name")
            if names_ok is None:
                good = False
            else:
                for i, link in enumerate(links):
                    if link not in ctx.link_names:
                        known = ", ".join(ctx.link_names) or "none"
                        ctx.error(f"{lpath}[{i}]", f"unknown link {link!r} (links in this file: {known})")
                        good = False
        if good:
            plans.append(ReadingPlan(name, values["kind"], tuple(sorted(times)), every_s,
                                     tuple(links) if links is not None else None))
        ok &= good
    if ok:
        ctx.plans = tuple(plans)


def interlocks_section(ctx: Context, value: Any, path: str) -> None:
    values = check_table(ctx, value, path, INTERLOCKS_SCHEMA)
    if values is None:
        return
    hpath = key_path(path, "protected_households")
    households = string_list(ctx, values.get("protected_households", []), hpath, "household", check_text)
    if households is not None and households:
        # a typo here would let a protected household be closed: every name must bill a meter,
        # checked only when the sites themselves loaded cleanly (no cascade of false reports)
        if not any(i.path.startswith(("sites", "templates")) for i in ctx.issues):
            known = {meter.household for site in ctx.sites for link in site.links
                     for _, _, _, meter in link.meters()}
            for i, household in enumerate(households):
                if household not in known:
                    ctx.error(f"{hpath}[{i}]", f"unknown household {household!r} (no meter in the file bills to it)")
                    households = None
    if households is not None and "max_closes_per_minute" in values:
        ctx.interlocks = Interlocks(protected_households=frozenset(households),
                                    max_closes_per_minute=values["max_closes_per_minute"])


def operators_section(ctx: Context, value: Any, path: str) -> None:
    if type(value) is not list:
        ctx.error(path, f"wrong type: expected array of tables ([[operators]]), got {type_name(value)}{show(value)}")
        return
    names: dict[str, str] = {}
    operators: list[Operator] = []
    for _, opath, item in indexed(value, path):
        values = check_table(ctx, item, opath, OPERATOR_SCHEMA)
        if values is None:
            continue
        name = values.get("name")
        if name is not None:
            if name in names:
                ctx.error(key_path(opath, "name"), f"duplicate operator name {name!r} (already used at {names[name]})")
                continue
            names[name] = key_path(opath, "name")
        if len(values) == len(OPERATOR_SCHEMA):
            operators.append(Operator(values["name"], values["role"], values["password_hash"]))
    ctx.operators = tuple(operators)


def supervisor_section(ctx: Context, value: Any, path: str) -> None:
    values = check_table(ctx, value, path, SUPERVISOR_SCHEMA)
    if values is None or len(values) != len(SUPERVISOR_SCHEMA):
        return
    stale = values["stale_after"]
    ctx.settings = SupervisorSettings(
        gprs_listen=values["gprs_listen"],
        retries=values["retries"],
        log_format=values["log_format"],
        state_dir=values["state_dir"],
        stale_after_s=parse_duration(stale)[0] if stale is not None else None,
        command_timeout_s=parse_duration(values["command_timeout"])[0],
        read_on_connect=values["read_on_connect"],
        full_read_after_outage_s=parse_duration(values["full_read_after_outage"])[0],
    )


def modbus_section(ctx: Context, value: Any, path: str) -> None:
    """``[modbus]`` -> ``ctx.modbus`` (``ModbusSettings``); runs after ``[[sites]]`` (``units``
    names links).  Unit ids of two links must not overlap (each link takes ``UNITS_PER_LINK``)."""
    values = check_table(ctx, value, path, MODBUS_SCHEMA)
    if values is None:
        return
    good = len(values) == len(MODBUS_SCHEMA)
    networks: list[str] = []
    wpath = key_path(path, "write_allow")
    for _, ipath, item in indexed(values.get("write_allow", []), wpath):
        network, reason = parse_network(item)
        if reason is not None:
            ctx.error(ipath, reason)
            good = False
        elif network not in networks:
            networks.append(network)
    units: list[tuple[str, int]] = []
    upath = key_path(path, "units")
    taken: dict[int, str] = {}
    for name, first in values.get("units", {}).items():
        ipath = key_path(upath, name)
        reason = check_first_unit(first)
        if reason is None and name not in ctx.link_names:
            reason = f"unknown link {name!r} (links in this file: {', '.join(ctx.link_names) or 'none'})"
        if reason is None:
            for unit in range(first, first + UNITS_PER_LINK):
                if unit in taken:
                    reason = f"unit ids {first}..{first + UNITS_PER_LINK - 1} overlap those of link {taken[unit]!r}"
                    break
        if reason is not None:
            ctx.error(ipath, reason)
            good = False
            continue
        for unit in range(first, first + UNITS_PER_LINK):
            taken[unit] = name
        units.append((name, first))
    tls = rtu = None
    if values.get("tls") is not None:
        tpath = key_path(path, "tls")
        t = check_table(ctx, values["tls"], tpath, MODBUS_TLS_SCHEMA)
        if t is None or len(t) != len(MODBUS_TLS_SCHEMA):
            good = False
        elif values.get("tcp") is None:
            ctx.error(tpath, "tls secures the TCP listener: add tcp = \"IP:PORT\" (Modbus/TCP Security uses port 802)")
            good = False
        else:
            tls = (t["cert"], t["key"], t["ca"])
    if values.get("rtu") is not None:
        r = check_table(ctx, values["rtu"], key_path(path, "rtu"), MODBUS_RTU_SCHEMA)
        if r is None or len(r) != len(MODBUS_RTU_SCHEMA):
            good = False
        else:
            rtu = ModbusRtuSettings(device=r["device"], baud=r["baud"], parity=r["parity"], unit=r["unit"])
    if good:
        tcp = parse_listen(values["tcp"])[0] if values["tcp"] is not None else None
        ctx.modbus = ModbusSettings(tcp=tcp, write_allow=tuple(networks), max_clients=values["max_clients"],
                                    units=tuple(units), map_lock=values["map_lock"], tls=tls, rtu=rtu)


def historian_section(ctx: Context, value: Any, path: str) -> None:
    """``[historian]`` -> ``ctx.historian``.  The URL is checked for its form here (a
    malformed one names this key); whether the database answers is the historian's business
    at run time (an unreachable database is no reason not to start)."""
    values = check_table(ctx, value, path, HISTORIAN_SCHEMA)
    if values is None or len(values) != len(HISTORIAN_SCHEMA):
        return
    url = values["url"]
    if url is not None and not _URL_RE.match(url):
        ctx.error(key_path(path, "url"), f"not a database URL: {url!r} (e.g. \"postgresql+psycopg://user@host/db\", "
                                         "\"mssql+pyodbc://user:password@dsn\", \"sqlite:////var/lib/st2000r/h.sqlite\")")
        return
    ctx.historian = HistorianSettings(url=url, enabled=values["enabled"], spool_max_mb=values["spool_max_mb"],
                                      keep_raw_days=values["keep_raw_days"],
                                      aggregate_timezone=values["aggregate_timezone"])


def api_section(ctx: Context, value: Any, path: str) -> None:
    """``[api]`` -> ``ctx.api`` (``ApiSettings``); its presence turns the HTTP API on."""
    values = check_table(ctx, value, path, API_SCHEMA)
    if values is None or len(values) != len(API_SCHEMA):
        return
    tls = None
    if values.get("tls") is not None:
        t = check_table(ctx, values["tls"], key_path(path, "tls"), API_TLS_SCHEMA)
        if t is None or len(t) != len(API_TLS_SCHEMA):
            return
        tls = (t["cert"], t["key"])
    ctx.api = ApiSettings(listen=parse_listen(values["listen"])[0], token_ttl_s=parse_duration(values["token_ttl"])[0],
                          max_clients=values["max_clients"], max_sse_clients=values["max_sse_clients"], tls=tls)


_URL_RE = re.compile(r"^(sqlite|postgresql|mssql)(\+[a-z0-9_]+)?://")
