"""Speed of the estimator on this machine: one estimate, and a 10,000-row sweep.

    python benchmarks/speed.py [--rows 10000] [--repeats 7]

Prints medians over repeats, measured in one run (the machines here are small and noisy: compare ratios, not
absolute times across runs).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd

import perfmodel as pm


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def scenarios(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    models = ["llama-2-7b", "llama-3-8b", "mistral-7b", "mixtral-8x7b", "qwen2.5-7b", "gpt-oss-20b", "deepseek-v3"]
    hardware = ["a100-80gb-sxm", "h100-sxm", "h200", "mi300x", "l40s", "rtx-4090", "xeon-8480plus", "epyc-9654"]
    return pd.DataFrame({
        "model": rng.choice(models, n),
        "hardware": rng.choice(hardware, n),
        "batch": rng.integers(1, 129, n),
        "prompt": rng.integers(16, 8192, n),
        "gen": rng.integers(1, 1024, n),
        "weights": rng.choice(["bf16", "fp8", "int4", "q4_k_m"], n),
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()

    model, dev = pm.load_model("llama-3-8b"), pm.load_device("h100-sxm")
    wl = pm.Workload(batch=8, prompt_len=2048, gen_len=256)
    pm.estimate(model, dev, wl)  # warm-up
    one, _ = timed(lambda: pm.estimate(model, dev, wl), a.repeats)
    print(f"one estimate (llama-3-8b on h100-sxm, b=8 p=2048 g=256): median {one * 1e3:.2f} ms "
          f"over {a.repeats}")

    df = scenarios(a.rows)
    groups = df.groupby(["model", "hardware", "weights"]).ngroups
    sweep_t, ts = timed(lambda: pm.sweep(df, ignore_capacity=True), max(3, a.repeats // 2))
    print(f"sweep of {a.rows:,} rows ({groups} model x hardware x format groups): median {sweep_t:.2f} s "
          f"({sweep_t / a.rows * 1e6:.0f} us per row; runs {', '.join(f'{t:.2f}' for t in ts)} s)")
    print(f"  vs {a.rows:,} single estimates at the median above: ~{one * a.rows:.1f} s "
          f"(sweep is {one * a.rows / sweep_t:.0f}x faster)")

    imports = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import perfmodel"], check=True)
        imports.append(time.perf_counter() - t0)
    print(f"python -c 'import perfmodel': median {statistics.median(imports) * 1e3:.0f} ms over 5 fresh processes")


if __name__ == "__main__":
    main()
