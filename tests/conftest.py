"""Test-wide set-up.

``make test`` passes ``-c tests/pytest.ini``, which selects the asyncio reactor.  A bare
``pytest`` run from the checkout does not read that file, so the reactor option is set here
too before pytest-twisted installs a reactor.

Hypothesis profiles: ``dev`` (the default) keeps every failing example in ``.hypothesis/``
at the top of the checkout (git-ignored) and replays it first on the next run, so a
failure found by chance keeps failing until it is fixed; ``ci`` (chosen when ``CI=true``)
derandomises every property test and keeps no database, so CI never fails by chance.
``--hypothesis-profile`` still picks either by name.
"""

import os
import socket
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

EXAMPLES = Path(__file__).resolve().parent.parent / ".hypothesis" / "examples"

settings.register_profile("dev", database=DirectoryBasedExampleDatabase(str(EXAMPLES)))
settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if getattr(config.option, "reactor", None) == "default":
        config.option.reactor = "asyncio"


# Tests marked ``postgres`` need the local server (127.0.0.1:5432): they run whenever it
# answers, are skipped when it does not -- and fail instead when CI=true, so CI cannot go
# green without them.
_POSTGRES: list[bool] = []


def postgres_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    if not _POSTGRES:
        try:
            socket.create_connection((host, port), timeout=2).close()
            _POSTGRES.append(True)
        except OSError:
            _POSTGRES.append(False)
    return _POSTGRES[0]


def pytest_runtest_setup(item):
    if item.get_closest_marker("postgres") is not None and not postgres_answers():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true: the PostgreSQL server at 127.0.0.1:5432 does not answer", pytrace=False)
        pytest.skip("the PostgreSQL server at 127.0.0.1:5432 does not answer")
