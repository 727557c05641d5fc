"""The core's speed on this machine, the figures issue 13 asks for, medians of a few repeats in one run:

    python benchmarks/core_speed.py                 # this checkout
    python benchmarks/core_speed.py --against REF   # and a git ref side by side (before/after), alternating runs

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


def measure() -> dict[str, float]:
    """Every figure of this checkout (the perfmodel on sys.path), printed as it is measured."""
    import perfmodel as pm

    fig: dict[str, float] = {}

    m, d = pm.load_model("llama-3-8b"), pm.load_device("h100-sxm")
    wl = pm.Workload(batch=8, prompt_len=2048, gen_len=256)
    pm.estimate(m, d, wl).to_dict()
    fig["estimate, warm (ms)"] = med(lambda: pm.estimate(m, d, wl), 201) * 1e3
    fig["estimate with its JSON object (ms)"] = med(lambda: pm.estimate(m, d, wl).to_dict(), 51) * 1e3
    print(f"estimate, warm: {fig['estimate, warm (ms)']:.2f} ms; with its JSON object "
          f"{fig['estimate with its JSON object (ms)']:.2f} ms")

    rng = np.random.default_rng(0)
    n = 100_000
    mixed = pd.DataFrame({"model": rng.choice(MODELS, n), "hardware": rng.choice(DEVICES, n),
                          "weights": rng.choice(["bf16", "fp8", "q4_0"], n), "batch": rng.integers(1, 65, n),
                          "prompt": rng.integers(16, 4096, n), "gen": rng.integers(1, 1024, n)})
    groups = mixed.groupby(["model", "hardware", "weights"]).ngroups
    pm.sweep(mixed.head(2000), progress=False)
    fig[f"sweep, {n:,} mixed rows in {groups} groups (s)"] = t = med(lambda: pm.sweep(mixed, progress=False), 3)
    print(f"sweep, {n:,} mixed rows in {groups} groups: {t:.2f} s")

    refused = pd.DataFrame({"model": rng.choice(["llama-2-7b", "mixtral-8x7b", "gpt-oss-20b"], n),
                            "hardware": rng.choice(["rtx-4090", "h100-sxm", "l4"], n), "batch": rng.integers(1, 129, n),
                            "prompt": rng.integers(16, 8192, n), "gen": rng.integers(1, 2048, n)})
    share = (pm.sweep(refused.head(5000), progress=False).error != "").mean()
    fig[f"sweep, {n:,} rows, {share:.0%} not fitting (s)"] = t = med(lambda: pm.sweep(refused, progress=False), 3)
    print(f"sweep, {n:,} rows of which about {share:.0%} do not fit: {t:.2f} s")

    one = pd.DataFrame([(mo, hw, w, 1, 512, 128) for mo in MODELS for hw in DEVICES for w in
                        ("bf16", "fp8", "q4_0", "int4", "q8_0", "fp16", "q4_k_m", "q6_k", "nvfp4", "mxfp4")],
                       columns=["model", "hardware", "weights", "batch", "prompt", "gen"])
    pm.sweep(one, progress=False)  # the first sweep of these models lowers them (kept for the process)
    fig[f"sweep, {len(one):,} rows in {len(one):,} groups (s)"] = t = med(lambda: pm.sweep(one, progress=False), 3)
    print(f"sweep, {len(one):,} rows in {len(one):,} groups: {t:.2f} s")

    code = ("import numpy as np, pandas as pd, time, resource, perfmodel as pm\n"
            "n = 1_000_000\nrng = np.random.default_rng(0)\n"
            "df = pd.DataFrame({'model': 'llama-3-8b', 'hardware': 'h100-sxm', 'batch': rng.integers(1, 65, n),"
            " 'prompt': rng.integers(16, 4096, n), 'gen': rng.integers(1, 1024, n)})\n"
            "t = time.perf_counter(); pm.sweep(df, progress=False); t = time.perf_counter() - t\n"
            "print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    fig["sweep, 1,000,000 rows in one group (s)"] = float(out[0])
    fig["  its peak RSS, fresh process (MB)"] = int(out[1]) / 1024
    print(f"sweep, 1,000,000 rows in one group: {float(out[0]):.2f} s, peak RSS {int(out[1]) / 1024:.0f} MB")

    helped = fresh("from perfmodel.cli import _parser; _parser().format_help()")
    fig["perfmodel --help, fresh process (ms)"] = helped * 1e3
    fig["import perfmodel, fresh process (ms)"] = fresh("import perfmodel") * 1e3
    print(f"perfmodel --help (fresh process, the parser built and formatted): "
          f"{fig['perfmodel --help, fresh process (ms)']:.0f} ms")
    print(f"import perfmodel (fresh process): {fig['import perfmodel, fresh process (ms)']:.0f} ms")
    return fig


def against(ref: str, rounds: int = 2) -> None:
    """Before (git ref, in a temporary worktree) and after (this checkout), alternating, `rounds` each; medians."""
    import json
    import os
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", str(tree), ref], check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for _ in range(rounds):
                for label, root in (("before", tree), ("after", here)):
                    env = {**os.environ, "PYTHONPATH": str(root)}
                    # run from the tree's root: `python -c` puts the working directory first on sys.path
                    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json"], env=env,
                                         cwd=root, check=True, capture_output=True, text=True).stdout
                    runs[label].append(json.loads(out.strip().splitlines()[-1]))
        finally:
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(tree)], capture_output=True)
    print(f"{'figure':52} {'before ' + ref:>14} {'after':>10} {'before/after':>13}")
    for key in runs["after"][0]:
        b = statistics.median(r[key] for r in runs["before"] if key in r) if key in runs["before"][0] else None
        a = statistics.median(r[key] for r in runs["after"])
        print(f"{key:52} {b if b is not None else float('nan'):14.2f} {a:10.2f} "
              f"{(b / a if b else float('nan')):13.1f}")


if __name__ == "__main__":
    if "--against" in sys.argv:
        against(sys.argv[sys.argv.index("--against") + 1])
    elif "--json" in sys.argv:
        import contextlib
        import io
        import json

        with contextlib.redirect_stdout(io.StringIO()):
            figures = measure()
        print(json.dumps(figures))
    else:
        measure()
