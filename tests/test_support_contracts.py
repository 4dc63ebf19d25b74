"""The fakes in tests/support are shaped like the real classes they stand for: a fake that
drifts from its original would let tests pass against an interface nothing implements."""

from __future__ import annotations

import inspect

from support.fakes import FakeMaster
from st2000r.drivers.st2000r.master import BusMaster


def _parameters(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_fake_master_transact_has_the_real_signature():
    assert _parameters(FakeMaster.transact) == _parameters(BusMaster.transact)


def test_fake_master_has_what_the_supervisor_reads():
    for name in ("name", "reachability", "connected"):
        assert name in vars(FakeMaster(link=__import__("support.builders", fromlist=["x"]).make_link())) or hasattr(FakeMaster, name)
    assert callable(FakeMaster.add_observer) and callable(BusMaster.add_observer)
