"""Fit the engine profiles (workloads/engines/*.toml) on the train split of the validation set.

    python tools/fit_engines.py            # fit, print the train and test error, write the profiles
    python tools/fit_engines.py --dry-run  # fit and print only
    python tools/fit_engines.py --loso     # leave-one-source-out: validation/loso.csv, the error per category

Per engine and device class (gpu, apple, cpu, accelerator) the numbers of GRIDS below, each a term of the cost model
with a physical reading (perfmodel/efficiency.py): fractions of matrix peak, memory and link bandwidth; a per-kernel
overhead; host time per forward pass and per sequence; a per-unit concurrency ceiling on main-memory bandwidth; the
key count at which fused attention reaches half its rate; and, for llama.cpp only, the fraction synchronous MMA
reaches on Hopper. They are chosen by coordinate descent over fixed grids to minimise the mean absolute log error on
the train rows of that engine and class; facts written in a profile (half_accumulate) are kept. Test rows are never
looked at here; `perfmodel validate` reports them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perfmodel.catalog import load_device  # noqa: E402
from perfmodel.engines import EngineProfile, device_class, load_engine  # noqa: E402
from perfmodel.validation import load_rows, predict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRIDS = {
    "matrix": [round(float(x), 2) for x in np.arange(0.15, 1.001, 0.05)],
    "memory": [round(float(x), 2) for x in np.arange(0.30, 1.001, 0.05)],
    "op_overhead_s": [0.0, 1e-6, 2e-6, 3e-6, 4e-6, 6e-6, 8e-6, 12e-6, 16e-6, 24e-6, 32e-6, 48e-6],
    "step_overhead_s": [0.0, 0.25e-3, 0.5e-3, 1e-3, 2e-3, 3e-3, 4e-3, 6e-3, 8e-3],
    "token_overhead_s": [0.0, 2e-6, 5e-6, 10e-6, 20e-6, 30e-6, 40e-6, 60e-6, 80e-6, 120e-6],
    "interconnect": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "sync_mma_fraction": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
    "attention_keys_half": [0.0, 16.0, 32.0, 64.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0, 2048.0],
    "unit_bytes_per_cycle": [None, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0],
}
START = {"matrix": 0.7, "memory": 0.8, "op_overhead_s": 4e-6, "step_overhead_s": 0.0, "token_overhead_s": 0.0,
         "interconnect": 0.8, "sync_mma_fraction": 1.0, "attention_keys_half": 0.0, "unit_bytes_per_cycle": None}
MIN_ROWS = 4
KERNEL_ENGINES = ("kernel", "fa2")
# numbers only some engines have: llama.cpp's CUDA kernels are written with synchronous MMA (mma.sync), while
# TensorRT-LLM, vLLM and SGLang ship Hopper kernels with wgmma; elsewhere these stay at their neutral START value
# and a host cost per sequence is told apart from one per pass only where batches exceed 1 (the serving stacks)
ONLY_FOR = {"sync_mma_fraction": ("llamacpp",), "token_overhead_s": ("trtllm", "vllm")}


def loss(rows, base: EngineProfile, cls: str, params: dict[str, float]) -> tuple[float, int]:
    prof = EngineProfile(base.id, base.name, base.description, base.fitted, {**base.classes, cls: params})
    pred, _ = predict(rows, profiles={base.id: prof})
    ok = np.isfinite(pred)
    if not ok.any():
        return float("inf"), 0
    err = np.abs(np.log(pred[ok] / rows.value.to_numpy(dtype=float)[ok]))
    return float(err.mean()), int(ok.sum())


def fit(rows, engine: str, cls: str) -> tuple[dict[str, float], float, int]:
    """Coordinate descent over the grids. Single-kernel rows fit each number on the rows that measure it: `memory`
    on the bandwidth rows, the rest on the GEMM and attention rows (with no bandwidth row to fit on, `memory` stays
    at its sourced default rather than soaking up compute-side misses)."""
    base = load_engine(engine)  # read once: every trial below only swaps this class's numbers
    # facts about the engine written in its profile (e.g. half_accumulate) are kept, not fitted
    fixed = {k: v for k, v in base.classes.get(cls, {}).items() if k not in GRIDS}
    params = {**START, **fixed}
    if engine in KERNEL_ENGINES:
        bw = rows.metric == "bandwidth_gb_per_s"
        on = {k: rows[bw] if k == "memory" else rows[~bw] for k in GRIDS}
    else:
        on = {k: rows for k in GRIDS}
    for _ in range(2):
        for key, grid in GRIDS.items():
            sub = on[key].reset_index(drop=True)
            if sub.empty or engine not in ONLY_FOR.get(key, (engine,)):
                continue
            best, _ = loss(sub, base, cls, params)
            for v in grid:
                trial = {**params, key: v}
                val, _ = loss(sub, base, cls, trial)
                if val < best - 1e-9:
                    best, params = val, trial
    best, n = loss(rows, base, cls, params)
    return params, best, n


def _toml(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(float(v))


def render(prof: EngineProfile, classes: dict[str, dict[str, float]], fitted: str) -> str:
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    lines = [f"id = {q(prof.id)}", f"name = {q(prof.name)}", f"description = {q(prof.description)}",
             f"fitted = {q(fitted)}"]
    for cls, vals in sorted(classes.items()):
        lines += ["", f"[{cls}]"] + [f"{k} = {_toml(v)}" for k, v in vals.items() if v is not None]
    return "\n".join(lines) + "\n"


def prepared(rows):
    """Rows with a device, their engine profile id and device class."""
    rows = rows[rows.hardware.notna() & (rows.hardware.astype(str) != "")].reset_index(drop=True)
    rows["engine_id"] = rows.engine.replace({"mlperf": "trtllm", "sglang": "vllm"})
    rows["cls"] = [device_class(load_device(h)) for h in rows.hardware]
    return rows


def neutral(prof: EngineProfile) -> dict[str, dict[str, float]]:
    """A profile's classes with every fitted number at its neutral START value; facts (half_accumulate) kept."""
    return {cls: {**START, **{k: v for k, v in vals.items() if k not in GRIDS}} for cls, vals in prof.classes.items()}


def fit_profiles(rows, memo: dict | None = None, untrained: bool = False, log=print) -> dict[str, EngineProfile]:
    """Every engine profile fitted on `rows`, per device class with at least MIN_ROWS rows. A class with fewer keeps
    the shipped numbers, or with `untrained` (leave-one-source-out) the neutral START and the profile's facts, so
    that no number fitted on a held-out source leaks back. `memo`: fits by (engine, class, sources), reused by every
    fold whose held-out source has no rows in that group."""
    out = {}
    for engine in sorted(rows.engine_id.unique()):
        prof = load_engine(engine)
        classes = neutral(prof) if untrained else dict(prof.classes)
        for cls in sorted(rows[rows.engine_id == engine].cls.unique()):
            sub = rows[(rows.engine_id == engine) & (rows.cls == cls)].reset_index(drop=True)
            if len(sub) < MIN_ROWS:
                log(f"{engine:<9} {cls:<11} {len(sub):4d} rows: too few to fit, "
                    f"{'neutral values' if untrained else 'left as is'}")
                continue
            key = (engine, cls, tuple(sorted(sub.file.unique())))
            if memo is None or key not in memo:
                params, val, n = fit(sub, engine, cls)
                if memo is not None:
                    memo[key] = params
                log(f"{engine:<9} {cls:<11} {n:4d} rows  mean |log error| {val:.3f}  {params}")
            classes[cls] = memo[key] if memo is not None else params
        out[engine] = EngineProfile(prof.id, prof.name, prof.description, prof.fitted, classes)
    return out


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


def loso(workers: int = 2) -> None:
    """Leave-one-source-out: every source's rows predicted by profiles fitted on all other sources' rows (both
    splits); writes validation/loso.csv and prints the error per category. Every group's fit on all sources is made
    first (a fold whose held-out source is not in a group reuses it); the folds then run in `workers` forked
    processes, which inherit those fits."""
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
    fit_profiles(rows, _FOLDS["memo"], untrained=True, log=lambda *_: None)
    print(f"  every group on all sources: {time.perf_counter() - t0:.1f} s", flush=True)
    sources = sorted(rows.file.unique())
    shares = [sources[i::workers] for i in range(workers)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_folds, shares)
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
    for engine, prof in fit_profiles(train).items():
        if not a.dry_run:
            text = render(prof, prof.classes, "tools/fit_engines.py on the train split of validation/ "
                                              "(validation/README.md)")
            (ROOT / "workloads" / "engines" / f"{engine}.toml").write_text(text)


if __name__ == "__main__":
    main()
