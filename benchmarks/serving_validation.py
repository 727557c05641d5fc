"""The serving rows of validation/ as `perfmodel validate` predicts them: each row's benchmark run by the
request-level simulator (validation._bench, perfmodel.serving.benchmarks), with the shipped engine profiles.

    python benchmarks/serving_validation.py [--repeat 2]

Prints the error per metric (median and mean |error| %, bias), the rows predicted and why the others were not, and
the time of the first pass (every schedule found: sim.schedule) and of the passes after it (schedules replayed with
the profiles' efficiencies: what an engine-profile fit pays per trial).
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np

from perfmodel.validation import load_rows, predict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2, help="passes after the first, timed (median)")
    a = ap.parse_args()
    rows = load_rows()
    serving = rows[rows.category == "serving"].reset_index(drop=True)
    t0 = time.perf_counter()
    pred, why = predict(serving)
    first = time.perf_counter() - t0
    again = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        predict(serving)
        again.append(time.perf_counter() - t0)
    ok = np.isfinite(pred)
    err = pred[ok] / serving.value.to_numpy()[ok] - 1
    replayed = f", then {np.median(again):.1f} s a pass (replayed)" if again else ""
    print(f"{ok.sum()} of {len(serving)} serving rows predicted; first pass {first:.1f} s (schedules found)"
          f"{replayed}")
    print(f"  all: median |err| {np.median(np.abs(err)) * 100:.1f} %, mean {np.mean(np.abs(err)) * 100:.1f} %, "
          f"bias {np.median(err) * 100:+.1f} %")
    metric = serving.metric.to_numpy()[ok]
    for m in sorted(set(metric)):
        e = np.abs(err[metric == m])
        print(f"  {m:<30} rows {len(e):>5}: median {np.median(e) * 100:.1f} %, mean {np.mean(e) * 100:.1f} %")
    for text, n in collections.Counter(w.split(":")[0][:60] for w in why if w).most_common(6):
        print(f"  not predicted ({n}): {text}")


if __name__ == "__main__":
    main()
