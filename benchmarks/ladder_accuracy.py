"""How far the ladder's estimation rules land from figures that are sourced: leave one figure out, estimate it.

For every catalog device (base entries) and every compute figure, clock and CPU cache size it gives itself (sourced or
derived), the figure is removed from the device's data, the ladder resolves it again by its estimation rules, and the
estimate is compared with the removed figure. Prints per rule the count and the median and 80th-percentile of
|estimate / figure - 1|, and the uncertainty perfmodel.provenance.RULE_UNCERTAINTY holds for it (the 80th percentile
rounded up to the next 0.05, where the rule has 5 or more cases).

    python benchmarks/ladder_accuracy.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perfmodel.catalog import device_data, device_entries  # noqa: E402
from perfmodel.device import Device  # noqa: E402
from perfmodel.provenance import RULE_UNCERTAINTY  # noqa: E402


def _without(data: dict, key: str) -> dict:
    """The device data with one figure removed (a compute peak and its parts, or the clocks)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if key.startswith("memory.") and key.endswith(".capacity"):  # a cache's size
        name = key.split(".")[1]
        data["memory"] = [{k: v for k, v in m.items() if not k.startswith("capacity_")} if m.get("name") == name
                          else m for m in data.get("memory", [])]
        return data
    if key == "processor.clock":
        data["processor"] = {k: v for k, v in data["processor"].items()
                             if k not in ("clock_ghz", "all_core_clock_ghz", "base_clock_ghz", "max_clock_ghz")}
        return data
    _, unit, p = key.split(".")
    compute = {u: {t: (dict(x) if isinstance(x, dict) else x) for t, x in c.items()} if isinstance(c, dict) else c
               for u, c in (data.get("compute") or {}).items()}
    for table in ("dense_tflops", "flops_per_cycle_per_unit", "half_accumulate_dense_tflops"):
        compute.get(unit, {}).get(table, {}).pop(p, None)
    data["compute"] = compute
    return data


def main() -> None:
    rows = []
    for dev_id, path, variant in device_entries():
        if variant is not None:
            continue
        data = device_data(path)
        full = Device(**data)
        for key, fig in full.figures.items():
            cache = key.startswith("memory.") and key.endswith(".capacity") and full.kind == "cpu" and \
                key.split(".")[1] != full.levels[-1].name
            if not (key.startswith("compute.") or key == "processor.clock" or cache) or fig.rung == "estimated":
                continue
            try:
                est = Device(**_without(data, key)).figure(key)
            except ValueError:
                continue
            if est is None or est.rung != "estimated" or not est.rule:
                continue
            rows.append((dev_id, key, est.rule, est.value / fig.value - 1))
    print(f"{'rule':<20}{'n':>5}{'median |err|':>14}{'p80 |err|':>11}{'suggested u':>13}{'u used':>8}   worst")
    for rule in sorted({r[2] for r in rows}):
        errs = np.array([abs(r[3]) for r in rows if r[2] == rule])
        worst = max((r for r in rows if r[2] == rule), key=lambda r: abs(r[3]))
        p80 = float(np.quantile(errs, 0.8))
        suggested = f"{min(math.ceil(p80 / 0.05) * 0.05, 1.0):.2f}" if len(errs) >= 5 else "-"
        print(f"{rule:<20}{len(errs):>5}{np.median(errs) * 100:>13.1f}%{p80 * 100:>10.1f}%{suggested:>13}"
              f"{RULE_UNCERTAINTY.get(rule, float('nan')):>8.2f}   {worst[0]} {worst[1]} {worst[3] * 100:+.0f}%")


if __name__ == "__main__":
    main()
