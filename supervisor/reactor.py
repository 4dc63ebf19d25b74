"""One event loop: Twisted's reactor on asyncio, installed before anything imports it.

Every long-running command of the supervisor (``run``, ``scan``, ``demo``) calls
:func:`install_reactor` first, so pymodbus (asyncio) and Twisted code share one loop.
"""

from __future__ import annotations

import sys
from typing import Any


def install_reactor() -> Any:
    """Install Twisted's asyncio reactor unless a reactor is installed already; return it."""
    if "twisted.internet.reactor" not in sys.modules:
        import asyncio

        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor
