"""Fit the engine profiles (workloads/engines/*.toml) on the train split of the validation set.

    python tools/fit_engines.py            # fit, print the error, write the profiles
    python tools/fit_engines.py --dry-run  # fit and print only
    python tools/fit_engines.py --loso     # leave-one-source-out: validation/loso.csv, the error per category

What is fitted, its units, bounds and cited defaults, and how: perfmodel/engine_fit.py. Test rows are never looked at
here; `perfmodel validate` reports them. Every fitted number that ends at a bound of its grid is listed in the
profile's `at_bound` with the reason from AT_BOUND below (a number at a bound with no reason stops the write).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perfmodel.engine_fit import (MIN_ROWS, at_bounds, fit, fit_groups, fit_profiles, neutral,  # noqa: E402
                                   prepared, start)
from perfmodel.engines import EngineProfile, load_engine  # noqa: E402
from perfmodel.validation import load_rows, predict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Why a fitted number may sit at a bound of its grid, per (engine, class, number): read off the rows, not assumed.
AT_BOUND: dict[tuple[str, str, str], str] = {
    ("trtllm", "gpu", "memory"): "the datasheet bandwidth, which no kernel exceeds: TensorRT-LLM's per-GPU throughput "
    "tables (perf-overview per-GPU, NIM's Llama 3.3 70B, the A100 GPUStack runs) are faster than the model allows even "
    "at 1.0 (their loss falls all the way to it), while the versioned perf-overview tables ask for 0.9-0.95; with the "
    "sources weighed by the square root of their rows (SOURCE_POWER 0.5) the faster tables tip it from 0.95 to the bound",
    ("hf", "accelerator", "memory"): "the datasheet bandwidth: the Gaudi 2/3 rows (Intel's own tables, FP8) are "
    "faster than the model allows even at 1.0, which a fraction cannot fix (their static-shape graphs are not "
    "modelled)",
}


def _toml(v) -> str:
    if isinstance(v, dict):  # a fact by vendor (unit_int8_ops_per_cycle)
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in sorted(v.items())) + " }"
    return ("true" if v else "false") if isinstance(v, bool) else repr(float(v))


def render(prof: EngineProfile, classes: dict[str, dict[str, float]], fitted: str) -> str:
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    lines = [f"id = {q(prof.id)}", f"name = {q(prof.name)}", f"description = {q(prof.description)}",
             f"fitted = {q(fitted)}"]
    notes = []
    for cls, vals in sorted(classes.items()):
        for key in at_bounds(vals, start(prof.id, cls)):
            why = AT_BOUND.get((prof.id, cls, key))
            if why is None:
                raise SystemExit(f"{prof.id} [{cls}] {key} = {vals[key]} sits at a bound of its grid: say why in "
                                 f"tools/fit_engines.py AT_BOUND, or widen the grid (perfmodel/engine_fit.py)")
            notes.append(f"[{cls}] {key} = {vals[key]}: {why}")
    if notes:
        lines.append(f"at_bound = {q('; '.join(notes))}")
    for cls, vals in sorted(classes.items()):
        lines += ["", f"[{cls}]"] + [f"{k} = {_toml(v)}" for k, v in vals.items() if v is not None]
    return "\n".join(lines) + "\n"


_FOLDS: dict = {}  # the rows and fits a forked worker inherits


def _fit_fold(train):
    import time

    rows, memo = _FOLDS["rows"], _FOLDS["memo"]
    t = time.perf_counter()
    prof = fit_profiles(train, memo, untrained=True, log=lambda *_: None)
    for engine in set(rows.engine_id) - set(prof):  # a stack only the held-out source measured: nothing fitted
        base = load_engine(engine)
        prof[engine] = EngineProfile(base.id, base.name, base.description, base.fitted, neutral(base))
    print(f"  fold without {sorted(set(rows.file) - set(train.file))[0]}: {time.perf_counter() - t:.1f} s", flush=True)
    return prof


def _folds(sources: list[str]) -> np.ndarray:
    from perfmodel.validation import leave_one_source_out

    return leave_one_source_out(_FOLDS["rows"], _fit_fold, lambda prof, part: predict(part, profiles=prof)[0],
                                sources)


def _group_fit(i: int):
    """The i-th group of fit_groups fitted on all sources: its fit_profiles memo entry."""
    engine, cls, sub, key = _FOLDS["groups"][i]
    return key, fit(sub, engine, cls)[0]


def loso(workers: int = 2) -> None:
    """Leave-one-source-out: every source's rows predicted by profiles fitted on all other sources' rows (both
    splits); writes validation/loso.csv and prints the error per category. Every group's fit on all sources is made
    first, in `workers` forked processes (a fold whose held-out source is not in a group reuses it); the folds then
    run in `workers` forked processes that inherit those fits, the costliest first, one source at a time to whichever
    process is free."""
    import multiprocessing as mp
    import time

    import pandas as pd

    from perfmodel._io import atomic_write_text
    from perfmodel.validation import LOSO_FILE, accuracy, rows_digest, unpredicted

    everything = load_rows()
    digest = rows_digest(everything)  # before the long part: what the table is valid for
    rows = prepared(everything)
    _FOLDS.update(rows=rows, memo={})
    t0 = time.perf_counter()
    # every group fit_profiles fits, largest first
    groups = sorted((g for g in fit_groups(rows) if len(g[2]) >= MIN_ROWS), key=lambda g: -len(g[2]))
    _FOLDS["groups"] = groups
    ctx = mp.get_context("fork")
    if workers > 1:
        with ctx.Pool(workers) as pool:
            fits = pool.map(_group_fit, range(len(groups)), chunksize=1)
    else:
        fits = [_group_fit(i) for i in range(len(groups))]
    _FOLDS["memo"].update(fits)
    print(f"  every group on all sources: {time.perf_counter() - t0:.1f} s", flush=True)
    # each fold refits the groups holding its source: the costliest first, handed out one at a time
    size = {(e, c): len(sub) for e, c, sub, _ in groups}
    pairs = rows[["file", "engine_id", "cls"]].drop_duplicates()
    cost = {f: sum(size.get((e, c), 0) for e, c in zip(g.engine_id, g.cls)) for f, g in pairs.groupby("file")}
    sources = sorted(cost, key=lambda f: (-cost[f], f))
    if workers > 1:
        with ctx.Pool(workers) as pool:  # forked after the fits above, which every worker inherits
            parts = list(pool.imap_unordered(_folds, [[f] for f in sources], chunksize=1))
    else:
        parts = [_folds(sources)]
    pred = np.full(len(rows), np.nan)
    for p in parts:
        pred = np.where(np.isfinite(p), p, pred)
    everything = everything.merge(rows[["file", "row"]].assign(predicted=pred), on=["file", "row"], how="left")
    table = pd.DataFrame({"file": everything.file, "row": everything.row, "predicted": everything.predicted,
                          "digest": digest})
    atomic_write_text(ROOT / "validation" / LOSO_FILE, table.to_csv(index=False))
    everything["skipped"] = unpredicted(everything, everything.predicted.to_numpy(dtype=float))
    print(f"leave-one-source-out over {len(sources)} sources in {time.perf_counter() - t0:.0f} s on {workers} "
          f"processes; validation/{LOSO_FILE} written")
    print(accuracy(everything).to_string(index=False, float_format=lambda x: f"{x:.3g}"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--engine", action="append", help="fit only these engines")
    ap.add_argument("--loso", action="store_true", help="leave-one-source-out: write validation/loso.csv")
    ap.add_argument("--workers", type=int, default=2, help="processes for the LOSO folds (default 2)")
    a = ap.parse_args()
    if a.loso:
        loso(a.workers)
        return
    rows = prepared(load_rows())
    train = rows[rows.split == "train"]
    if a.engine:
        train = train[train.engine_id.isin(a.engine)]
    texts = {engine: render(prof, prof.classes, "tools/fit_engines.py on the train split of validation/ "
                                                "(validation/README.md)")
             for engine, prof in fit_profiles(train).items()}  # every profile checked before any is written
    if not a.dry_run:
        from perfmodel._io import atomic_write_text

        for engine, text in texts.items():
            atomic_write_text(ROOT / "workloads" / "engines" / f"{engine}.toml", text)


if __name__ == "__main__":
    main()
