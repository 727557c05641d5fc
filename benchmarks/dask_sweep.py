"""A sweep past one process: N scenarios on a local Dask cluster, against the in-process sweep on a sample.

    python benchmarks/dask_sweep.py [--rows 10000000] [--workers 1 2]

Writes the scenarios as Parquet (8 models x 8 devices x 3 formats, random batch, prompt, generation length), runs
`perfmodel.distributed.sweep_dask` on 1 and 2 local workers (processes), and prints the wall time and rows/s of each.
One run, on this machine; compare ratios, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perfmodel.distributed import sweep_dask  # noqa: E402

MODELS = ["llama-2-7b", "llama-3-8b", "mistral-7b", "mixtral-8x7b", "qwen2.5-7b", "gpt-oss-20b", "qwen3-8b", "gemma-2-9b"]
DEVICES = ["a100-80gb-sxm", "h100-sxm", "h200", "mi300x", "l40s", "rtx-4090", "xeon-8480plus", "epyc-9654"]


def scenarios(n: int, path: Path, chunk: int = 1_000_000) -> None:
    """Write n rows as a Parquet folder, a million at a time (the whole table never sits in memory)."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        pd.DataFrame({"model": rng.choice(MODELS, m), "hardware": rng.choice(DEVICES, m),
                      "batch": rng.integers(1, 129, m), "prompt": rng.integers(16, 8192, m),
                      "gen": rng.integers(1, 2048, m), "weights": rng.choice(["bf16", "fp8", "q4_k_m"], m)}
                     ).to_parquet(path / f"part-{i // chunk:05d}.parquet", index=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="perfmodel-dask-"))
    try:
        src = tmp / "in.parquet"
        t0 = time.perf_counter()
        scenarios(a.rows, src)
        print(f"wrote {a.rows:,} scenarios in {time.perf_counter() - t0:.1f} s")
        for w in a.workers:
            t0 = time.perf_counter()
            r = sweep_dask(src, tmp / f"out-{w}.parquet", workers=w, progress=False)
            dt = time.perf_counter() - t0
            print(f"{w} worker(s): {r['rows']:,} rows in {r['partitions']} partitions, {dt:.1f} s "
                  f"({r['rows'] / dt:,.0f} rows/s), {r['errors']:,} rows refused (capacity and the like)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
