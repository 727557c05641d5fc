"""Speed of the vectorised sweep path: a 100,000-scenario grid (models x devices x batch x prompt x gen x formats).

    python benchmarks/sweep_speed.py [--repeats 3]

The issue's target is 100,000 scenarios in under 10 s on this 2-core machine. Prints the median over repeats, and
how many rows were computed and how many were refused (longer than a model's context; capacity is ignored).
"""

from __future__ import annotations

import argparse
import statistics
import time

from perfmodel.scenarios import grid, sweep

MODELS = ["llama-3-8b", "llama-2-7b", "mistral-7b", "qwen2.5-7b", "gemma-3-4b", "llama-3-70b", "mixtral-8x7b",
          "phi-3-mini", "gpt2", "llama-3.1-8b"]
DEVICES = ["h100-sxm", "a100-80gb-sxm", "rtx-4090", "l40s", "h200", "mi300x", "b200", "xeon-8480plus",
           "epyc-9654", "m1-max-32c"]
BATCH = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
PROMPT = [128, 256, 512, 1024, 2048]
GEN = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192][:10]
FORMATS = [("bf16", "bf16"), ("fp8", "fp8")]


def scenarios():
    import pandas as pd

    parts = [grid(model=MODELS, hardware=DEVICES, batch=BATCH, prompt=PROMPT, gen=GEN, weights=w, act=a)
             for w, a in FORMATS]
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    df = scenarios()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        res = sweep(df, ignore_capacity=True, progress=False)
        times.append(time.perf_counter() - t0)
    ok = int((res.error == "").sum())
    print(f"sweep of {len(df):,} scenarios ({len(MODELS)} models x {len(DEVICES)} devices x {len(BATCH)} batches x "
          f"{len(PROMPT)} prompts x {len(GEN)} gen lengths x {len(FORMATS)} formats)")
    print(f"  median {statistics.median(times):.2f} s over {a.repeats} runs (all: "
          f"{', '.join(f'{t:.2f}' for t in times)}); {ok:,} computed, {len(df) - ok:,} refused with a reason")
    print(f"  {len(df) / statistics.median(times):,.0f} scenarios/s; target: 100,000 in under 10 s")


if __name__ == "__main__":
    main()
