"""The core's speed on this machine, the figures issue 13 asks for, medians of a few repeats in one run:

    python benchmarks/core_speed.py

- one estimate, warm (model and device loaded), with and without its JSON object;
- 100,000 mixed rows over >= 200 (model, device, format) groups;
- 100,000 rows most of which do not fit (each gets its capacity message);
- 1,000 rows in 1,000 groups;
- 1,000,000 rows in one group, with the peak resident memory of a fresh process;
- `perfmodel --help` and `import perfmodel` in fresh processes.
The Dask figures come from benchmarks/dask_sweep.py.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd

MODELS = ["llama-2-7b", "llama-3-8b", "mistral-7b", "mixtral-8x7b", "qwen2.5-7b", "gpt-oss-20b", "qwen3-8b",
          "gemma-2-9b", "phi-3-mini", "llama-3.2-1b"]
DEVICES = ["a100-80gb-sxm", "h100-sxm", "h200", "mi300x", "l40s", "rtx-4090", "xeon-8480plus", "epyc-9654",
           "m2-max-38c", "rtx-3090"]


def med(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def fresh(code: str, repeats: int = 5) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    import perfmodel as pm

    m, d = pm.load_model("llama-3-8b"), pm.load_device("h100-sxm")
    wl = pm.Workload(batch=8, prompt_len=2048, gen_len=256)
    pm.estimate(m, d, wl).to_dict()
    print(f"estimate, warm: {med(lambda: pm.estimate(m, d, wl), 21) * 1e3:.2f} ms; with its JSON object "
          f"{med(lambda: pm.estimate(m, d, wl).to_dict(), 21) * 1e3:.2f} ms")

    rng = np.random.default_rng(0)
    n = 100_000
    mixed = pd.DataFrame({"model": rng.choice(MODELS, n), "hardware": rng.choice(DEVICES, n),
                          "weights": rng.choice(["bf16", "fp8", "q4_0"], n), "batch": rng.integers(1, 65, n),
                          "prompt": rng.integers(16, 4096, n), "gen": rng.integers(1, 1024, n)})
    groups = mixed.groupby(["model", "hardware", "weights"]).ngroups
    pm.sweep(mixed.head(2000), progress=False)
    print(f"sweep, {n:,} mixed rows in {groups} groups: {med(lambda: pm.sweep(mixed, progress=False), 3):.2f} s")

    refused = pd.DataFrame({"model": rng.choice(["llama-2-7b", "mixtral-8x7b", "gpt-oss-20b"], n),
                            "hardware": rng.choice(["rtx-4090", "h100-sxm", "l4"], n), "batch": rng.integers(1, 129, n),
                            "prompt": rng.integers(16, 8192, n), "gen": rng.integers(1, 2048, n)})
    share = (pm.sweep(refused.head(5000), progress=False).error != "").mean()
    print(f"sweep, {n:,} rows of which about {share:.0%} do not fit: "
          f"{med(lambda: pm.sweep(refused, progress=False), 3):.2f} s")

    one = pd.DataFrame([(mo, hw, w, 1, 512, 128) for mo in MODELS for hw in DEVICES for w in
                        ("bf16", "fp8", "q4_0", "int4", "q8_0", "fp16", "q4_k_m", "q6_k", "nvfp4", "mxfp4")],
                       columns=["model", "hardware", "weights", "batch", "prompt", "gen"])
    print(f"sweep, {len(one):,} rows in {len(one):,} groups: {med(lambda: pm.sweep(one, progress=False), 3):.2f} s")

    code = ("import numpy as np, pandas as pd, time, resource, perfmodel as pm\n"
            "n = 1_000_000\nrng = np.random.default_rng(0)\n"
            "df = pd.DataFrame({'model': 'llama-3-8b', 'hardware': 'h100-sxm', 'batch': rng.integers(1, 65, n),"
            " 'prompt': rng.integers(16, 4096, n), 'gen': rng.integers(1, 1024, n)})\n"
            "t = time.perf_counter(); pm.sweep(df, progress=False); t = time.perf_counter() - t\n"
            "print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    print(f"sweep, 1,000,000 rows in one group: {float(out[0]):.2f} s, peak RSS {int(out[1]) / 1024:.0f} MB")

    helped = fresh("from perfmodel.cli import _parser; _parser().format_help()")
    print(f"perfmodel --help (fresh process, the parser built and formatted): {helped * 1e3:.0f} ms")
    print(f"import perfmodel (fresh process): {fresh('import perfmodel') * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
