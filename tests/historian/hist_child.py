"""A writer process for the fault test: publishes a round of readings every 20 ms into a
real Historian (asyncio reactor, writer thread, spool) and prints ``durable R`` once round
R is in the spool or the database, and, with ``--drain-after N``, stops publishing after round N and prints
``drained`` once the spool is empty.  Usage: ``python hist_child.py CONFIG FIRST_ROUND [--drain-after N]``."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    config, first = sys.argv[1], int(sys.argv[2])
    drain_after = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--drain-after" else None
    from st2000r.supervisor.reactor import install_reactor

    reactor = install_reactor()
    from hist_rig import batches
    from st2000r.config.loader import load
    from st2000r.historian.writer import Historian
    from st2000r.supervisor.events import EventBus

    topo = load(config)
    bus = EventBus(reactor)
    historian = Historian(topo, topo.historian.url, reactor, bus,
                          os.path.join(topo.settings.state_dir, "historian-spool"), max_delay_s=0.05,
                          retry_max_s=0.3)
    historian.startService()
    state = {"round": first, "drained": False}

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def tick() -> None:
        r = state["round"]
        if drain_after is not None and r > drain_after:  # publishing stops: wait for an empty spool
            status = historian.status()
            if status.spool_rows == 0 and status.memory_rows == 0 and status.state == "connected":
                if not state["drained"]:
                    state["drained"] = True
                    say("drained")
                return
            reactor.callLater(0.02, tick)
            return
        state["round"] += 1
        for event in batches(topo, r):
            bus.publish(event)
        reactor.callLater(0, lambda: historian.flush().addCallback(lambda _: say(f"durable {r}")))
        reactor.callLater(0.02, tick)

    reactor.callWhenRunning(tick)
    reactor.addSystemEventTrigger("before", "shutdown", historian.stopService)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


if __name__ == "__main__":
    main()
