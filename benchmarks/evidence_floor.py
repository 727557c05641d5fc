"""How well can any model do on the validation set? The spread of the evidence itself, measured two ways.

1. Cross-source: for every row whose configuration (device, model, weights, engine, backend, batch, lengths, ... every
   column that says what was run, not when or with which build) another source also measured, predict it by the
   median of the other sources' values. That predictor is an oracle that knows the answer for this very
   configuration, from a table that is not the row's own: leave-one-source-out error cannot be expected to fall far
   below it on rows like these.
2. Within one source: configurations a source measured more than once (builds of a CI series, repeated runs), each
   row predicted by the median of the source's other rows of that configuration.

Prints, per category, the rows and configurations matched, the oracle's median and mean |error| %, and the stored
leave-one-source-out prediction's error on the same rows (validation/loso.csv). The error convention is the
validation report's: |predicted / measured - 1| of the metric as stated (rates and times alike).

    python benchmarks/evidence_floor.py [--by-config]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perfmodel import validation as v  # noqa: E402

# columns that describe the source, the build or the reading, not the configuration that was run
NOT_CONFIG = {"value", "where", "note", "file", "row", "source", "url", "software", "hardware_name", "model_name",
              "kept_out", "split", "category"}


def _key_columns(rows) -> list[str]:
    return [c for c in rows.columns if c not in NOT_CONFIG]


def _keys(rows, cols: list[str]):
    """One text per row naming its configuration (missing values as empty fields)."""
    text = rows[cols].map(lambda x: "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x))
    return text.agg("|".join, axis=1)


def _oracle(rows, group_cols: list[str], other_source: bool):
    """Per row with a partner: (row index, oracle value) where the oracle is the median of the partners' values:
    rows of the same configuration from other sources (other_source) or from the same source (not other_source)."""
    keyed = _keys(rows, group_cols)
    idx, val = [], []
    for _, g in rows.groupby(keyed):
        if len(g) < 2:
            continue
        files = g.file.to_numpy()
        values = g.value.to_numpy(dtype=float)
        for i, (f, j) in enumerate(zip(files, g.index)):
            mask = (files != f) if other_source else ((files == f) & (np.arange(len(g)) != i))
            if mask.any():
                idx.append(j)
                val.append(float(np.median(values[mask])))
    return np.asarray(idx, dtype=int), np.asarray(val, dtype=float)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--by-config", action="store_true", help="also print each matched configuration")
    args = ap.parse_args(argv)
    rows = v.load_rows()
    loso, why = v.load_loso(rows)
    rows = rows.assign(loso=loso if loso is not None else np.nan)
    if loso is None:
        print(f"(no LOSO column: {why})")
    rows = rows[rows.kept_out.fillna("").astype(str) == ""]
    cols = _key_columns(rows)
    print(f"configuration = every column but {sorted(NOT_CONFIG)}")
    for label, other in (("cross-source", True), ("within one source", False)):
        print(f"\n{label}: each row predicted by the median of the same configuration's {'other sources' if other else 'other rows of its source'}")
        print(f"{'category':<9} {'rows':>5} {'configs':>7} {'sources':>7}  {'oracle med/mean %':>18}  {'LOSO med/mean %':>16}")
        for cat, g in rows.groupby("category"):
            idx, oracle = _oracle(g, cols, other)
            if not len(idx):
                print(f"{cat:<9} {0:>5}")
                continue
            sub = g.loc[idx]
            measured = sub.value.to_numpy(dtype=float)
            err = np.abs(oracle / measured - 1.0) * 100.0
            lerr = np.abs(sub.loso.to_numpy(dtype=float) / measured - 1.0) * 100.0
            ok = np.isfinite(lerr)
            keyed = _keys(sub, cols)
            print(f"{cat:<9} {len(idx):>5} {keyed.nunique():>7} {sub.file.nunique():>7}  "
                  f"{np.median(err):>8.1f} / {np.mean(err):>6.1f}  "
                  f"{np.median(lerr[ok]) if ok.any() else np.nan:>7.1f} / {np.mean(lerr[ok]) if ok.any() else np.nan:>6.1f}")
            if args.by_config:
                short = sub.hardware.astype(str) + "|" + sub.model.astype(str) + "|" + sub.weights.astype(str) + \
                    "|" + sub.metric.astype(str) + "|" + sub.engine.astype(str)
                t = sub.assign(oracle=err, loso=lerr, cfg=short).groupby("cfg").agg(
                    rows=("oracle", "size"), sources=("file", "nunique"), oracle=("oracle", "mean"),
                    loso=("loso", "mean"))
                print(t.round(1).to_string())


if __name__ == "__main__":
    main()
