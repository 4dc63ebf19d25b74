"""Rows for the aggregate and retention tests, written straight into the tables (values
chosen by hand in each test)."""

from __future__ import annotations

from st2000r.historian.schema import installations, meters, readings


def meter(c, meter_id, kind="water", household="H1", serial="00000000000001"):
    link, cdt, module, channel = meter_id.split("/")
    return c.execute(meters.insert().values(meter_id=meter_id, link=link, cdt=int(cdt), module=int(module),
                                            channel=int(channel), kind=kind, base_unit="Wh" if kind == "electricity"
                                            else "L", pulse_constant=10, serial=serial, household=household)
                     ).inserted_primary_key[0]


def install(c, key, serial, installed, start_value, household="H1", removed=None, final_value=None):
    c.execute(installations.insert().values(meter=key, serial=serial, household=household, installed_at=installed,
                                            removed_at=removed, start_value=start_value, final_value=final_value))


def read(c, key, at, value, source="plan", quality="good"):
    c.execute(readings.insert().values(meter=key, read_at=at, source=source, value=value, count=None, quality=quality,
                                       valve=None, alarms=0, plan=None, run="r", seq=0))
