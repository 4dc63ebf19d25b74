"""Hypothesis strategies for every codec message (shared by round-trip and fuzz tests)."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from hypothesis import strategies as st

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.units import UNITS, Quantity

addresses = st.text(alphabet="0123456789", min_size=14, max_size=14)
sers = st.integers(0, 255)
orders = st.sampled_from(list(m.DiOrder))
unit_codes = st.sampled_from(sorted(UNITS))
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda t: t.replace(microsecond=0)
)
opt_times = st.none() | times
statuses = st.integers(0, 0xFFFF).map(m.MeterStatus)


def quantities(decimals: int = 2):
    return st.builds(Quantity, st.integers(0, 99_999_999), unit_codes, st.just(decimals))


def _common(meter_type=None):
    return {
        "meter_type": meter_type if meter_type is not None else st.integers(0, 255),
        "address": addresses,
        "ser": sers,
        "di_order": orders,
    }


def _vendor():
    return {"address": addresses, "ser": sers, "di_order": orders}


channel_status = st.integers(0, 255)
readings = st.builds(m.ChannelReading, st.integers(0, 0xFFFFFFFF), channel_status)


@st.composite
def bulk_replies(draw):
    first = draw(st.integers(1, m.MAX_CHANNELS))
    n = draw(st.integers(1, min(m.MAX_BULK, m.MAX_CHANNELS - first + 1)))
    chans = tuple(draw(st.lists(readings, min_size=n, max_size=n)))
    return m.BulkReadReply(**{k: draw(v) for k, v in _vendor().items()}, first_channel=first, channels=chans)


@st.composite
def channel_ranges(draw, cls, limit):
    first = draw(st.integers(1, m.MAX_CHANNELS))
    n = draw(st.integers(1, min(limit, m.MAX_CHANNELS - first + 1)))
    return cls(**{k: draw(v) for k, v in _vendor().items()}, first_channel=first, count=n)


@st.composite
def info_replies(draw):
    first = draw(st.integers(1, m.MAX_CHANNELS))
    n = draw(st.integers(1, min(m.MAX_INFO, m.MAX_CHANNELS - first + 1)))
    info = st.builds(m.ChannelInfo, st.integers(0, 255), addresses, st.integers(0, 0xFFFF))
    chans = tuple(draw(st.lists(info, min_size=n, max_size=n)))
    return m.ChannelInfoReply(**{k: draw(v) for k, v in _vendor().items()}, first_channel=first, channels=chans)


temps = st.integers(0, 999_999).map(lambda v: Decimal(v).scaleb(-2))

MESSAGES = {
    m.ReadData: st.builds(m.ReadData, **_common()),
    m.CurrentData: st.builds(
        m.CurrentData, **_common(), total=quantities(), settlement=quantities(),
        time=opt_times, status=statuses,
    ),
    m.HeatData: st.builds(
        m.HeatData, **_common(), settlement_heat=quantities(), current_heat=quantities(),
        power=quantities(), flow=quantities(4), cumulative_flow=quantities(),
        supply_temp=temps, return_temp=temps, working_hours=st.integers(0, 999_999),
        time=opt_times, status=statuses, unit_first=st.booleans(),
    ),
    m.ReadAddress: st.builds(m.ReadAddress, **_common()),
    m.AddressReply: st.builds(m.AddressReply, **_common(), repeated=st.booleans()),
    m.ValveControl: st.builds(m.ValveControl, **_common(), open=st.booleans(), alt=st.booleans()),
    m.ValveReply: st.builds(
        m.ValveReply, **_common(), status=st.integers(0, 0xFF).map(m.MeterStatus),
        status_bytes=st.sampled_from([1, 2]), alt=st.booleans(),
    ),
    m.WriteAddress: st.builds(m.WriteAddress, **_common(), new_address=addresses),
    m.WriteAddressReply: st.builds(m.WriteAddressReply, **_common()),
    m.ErrorReply: st.builds(
        m.ErrorReply, **_common(), function=st.sampled_from([0x01, 0x03, 0x04, 0x15]),
        status=st.integers(0, 0xFFFF), di=st.none() | st.sampled_from(sorted(m.KNOWN_DIS)),
    ).map(lambda e: e if e.di is not None else replace(e, di_order=m.DiOrder.HIGH_FIRST)),
    m.BulkRead: channel_ranges(m.BulkRead, m.MAX_BULK),
    m.BulkReadReply: bulk_replies(),
    m.ReadAlarms: st.builds(m.ReadAlarms, **_vendor()),
    m.AlarmsReply: st.builds(
        m.AlarmsReply, **_vendor(),
        alarms=st.lists(st.integers(0, 7).map(m.AlarmFlag), max_size=m.MAX_CHANNELS).map(tuple),
    ),
    m.ReadCdtStatus: st.builds(m.ReadCdtStatus, **_vendor()),
    m.CdtStatus: st.builds(
        m.CdtStatus, **_vendor(), mains=st.booleans(), battery_low=st.booleans(),
        battery_mv=st.integers(0, 0xFFFF), modules=st.frozensets(st.integers(1, 32)),
        firmware=st.tuples(st.integers(0, 255), st.integers(0, 255)), time=opt_times,
    ),
    m.ReadChannelInfo: channel_ranges(m.ReadChannelInfo, m.MAX_INFO),
    m.ChannelInfoReply: info_replies(),
    m.SetBase: st.builds(m.SetBase, **_vendor(), channel=st.integers(1, 96), count=st.integers(0, 0xFFFFFFFF)),
    m.SetBaseReply: st.builds(m.SetBaseReply, **_vendor(), channel=st.integers(1, 96), count=st.integers(0, 0xFFFFFFFF)),
    m.TimeSync: st.builds(m.TimeSync, **_vendor(), time=times),
    m.TimeSyncReply: st.builds(m.TimeSyncReply, **_vendor(), time=opt_times),
}  # fmt: skip

any_message = st.one_of(*MESSAGES.values())


def check_property(strategy, test, max_examples: int = 150, examples=()) -> None:
    """Run ``test`` on ``examples`` (pinned, always run first), then on examples of ``strategy``.

    pytest-twisted runs test functions inside its reactor greenlet, and hypothesis's pytest
    integration then fails on parametrized ``@given`` tests ("blockon cannot be called from
    the twisted greenlet"); calling a ``@given`` function directly from a plain test avoids it.
    The example database and derandomisation come from the profile in ``tests/conftest.py``;
    the pytest node id joins the database key, as hypothesis's pytest plugin does for
    ``@given`` tests, so that the cases of a parametrized test keep their failures apart.
    """
    from hypothesis import example, given, settings

    node = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    test._hypothesis_internal_add_digest = node.encode()
    run = given(strategy)(test)
    for pinned in reversed(examples):
        run = example(pinned)(run)
    settings(max_examples=max_examples, deadline=None)(run)()
