"""Benchmark: loading the shipped topology examples.

Run: ``python bench/bench_config_load.py [N]`` (N loads per example, default 20).
Prints, per example, the median time of one ``st2000r.config.loader.load`` call (read,
TOML parse, whole-file validation, expansion into the model) and its ratio against the
1-second bound the loader is held to for a full 12,288-meter community.  As a peer measured
in the same run it also loads the community written out explicitly (one table per module,
generated in memory, the same 12,288 meters): the cost of not using ranges.
Exits 1 if any median exceeds the bound.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from st2000r.config import EXAMPLES_DIR
from st2000r.config.loader import load, loads
from st2000r.config.model import Topology

BOUND_S = 1.0


def written_out(topology: Topology) -> str:
    """``topology`` as explicit TOML: every CDT, module and channel written out."""
    lines = []
    for site in topology.sites:
        lines += ["[[sites]]", f'name = "{site.name}"', f'address = "{site.address}"']
        for link in site.links:
            lines += ["[[sites.links]]", f'name = "{link.name}"', f'kind = "{link.kind}"',
                      f'device = "{link.endpoint.device}"']
            lines.append("repeaters = [" + ", ".join(f'{{name = "{r.name}"}}' for r in link.repeaters) + "]")
            for cdt in link.cdts:
                lines += ["[[sites.links.cdts]]", f"address = {cdt.address}", f'repeater = "{cdt.repeater}"']
                for module in cdt.modules:
                    lines += ["[[sites.links.cdts.modules]]", f"module = {module.number}", "channels = ["]
                    for c in module.channels:
                        m = c.meter
                        lines.append(f'  {{channel = {c.number}, kind = "{m.kind.value}", pulse_constant = '
                                     f'{m.pulse_constant}, serial = "{m.serial}", household = "{m.household}"}},')
                    lines.append("]")
    return "\n".join(lines) + "\n"


def measure(label: str, n: int, run: Callable[[], Topology]) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        topology = run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{label}: {median:.4f} s per load (bound {BOUND_S:.1f} s, ratio {median / BOUND_S:.4f}; "
          f"best {min(times):.4f} s of {n}, {topology.summary().meters} meters)")
    return median / BOUND_S


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 20
    ratios = []
    for path in sorted(EXAMPLES_DIR.glob("*.toml")):
        ratios.append(measure(path.name, n, lambda path=path: load(path)))
    text = written_out(load(EXAMPLES_DIR / "community.toml"))
    label = f"community.toml written out ({len(text.splitlines())} lines, peer)"
    ratios.append(measure(label, max(3, n // 4), lambda: loads(text)))
    return 0 if max(ratios) <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
