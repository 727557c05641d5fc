"""The published training runs of validation/train/ as perfmodel.training predicts them: |error| per source on the
scored rows (a run reported in several metrics counts once; kept-out rows are listed with their reason), and the time
of a pass.

    python benchmarks/train_validation.py [--engine default]

Nothing is fitted on these rows (the kernels' efficiencies are the inference profiles'), so every error is held out.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import pandas as pd

from perfmodel.train_validation import load_train_rows, predict_train, train_accuracy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=None, help="efficiency profile (default: each device's default)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = load_train_rows()
    pred, why = predict_train(rows, engine=a.engine)
    took = time.perf_counter() - t0
    scored = rows.scored & np.isfinite(pred)
    print(f"{len(rows)} training rows in {rows.file.nunique()} sources; {int(scored.sum())} scored and predicted "
          f"({int((rows.derived_from != '').sum())} derived from another metric of the same run); {took:.1f} s")
    with pd.option_context("display.width", 200):
        print("step time / throughput (one metric a run):")
        print(train_accuracy(rows, pred).round(1).to_string(index=False))
        print("\nmemory a device:")
        print(train_accuracy(rows, pred, "memory").round(1).to_string(index=False))
    d = rows.assign(predicted=pred)[scored]
    d = d.assign(err=(d.predicted / d.value - 1) * 100)
    print()
    print(d.groupby("metric").err.agg(rows="size", median_abs=lambda e: e.abs().median(),
                                      mean_abs=lambda e: e.abs().mean()).round(1).to_string())
    for reason, n in collections.Counter(w[:110] for w in why if w).most_common():
        print(f"  not predicted ({n}): {reason}")


if __name__ == "__main__":
    main()
