"""Test-wide set-up.

``make test`` passes ``-c tests/pytest.ini``, which selects the asyncio reactor.  A bare
``pytest`` run from the checkout does not read that file, so the reactor option is set here
too before pytest-twisted installs a reactor.
"""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if getattr(config.option, "reactor", None) == "default":
        config.option.reactor = "asyncio"
