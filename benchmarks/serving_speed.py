"""Speed of the serving simulator on this machine: 10,000 requests of Llama-3-8B on an H100, and a rate search.

    python benchmarks/serving_speed.py [--requests 10000] [--repeats 5]

Prints, per load, the median of `repeats` runs (the iteration-cost tables already built: `warm`) and the first run
of the process (which builds them: `cold`), and the time of `perfmodel serve --find-rate` as the CLI runs it. The
issue's targets: <= 2 s for 10,000 requests, <= 20 s for --find-rate, on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import perfmodel as pm
from perfmodel.serving import Scheduler, simulate, synthetic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    pm.load_model("llama-3-8b"), pm.load_device("h100-sxm")
    # ShareGPT-like lengths (lognormal, median 512 prompt / 128 output tokens)
    lengths = dict(prompt="lognormal:512:0.8", gen="lognormal:128:0.8")
    print(f"{a.requests} requests, Llama-3-8B on h100-sxm, vLLM scheduler defaults; seconds (median of {a.repeats})")
    for rate in (2.0, 10.0, 30.0, float("inf")):
        req = synthetic(a.requests, rate, seed=1, **lengths)
        t0 = time.perf_counter()
        res = simulate("llama-3-8b", "h100-sxm", requests=req, scheduler=Scheduler())
        cold = time.perf_counter() - t0
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            simulate("llama-3-8b", "h100-sxm", requests=req, scheduler=Scheduler())
            times.append(time.perf_counter() - t0)
        m = res.metrics()
        print(f"  rate {rate:>5g}/s: warm {statistics.median(times):.2f} s (min {min(times):.2f}), cold {cold:.2f} s; "
              f"throughput {m['throughput_requests_per_s']:.1f} req/s, p90 TTFT {m['ttft_s']['p90']:.3f} s, "
              f"p90 TPOT {m['tpot_s']['p90'] * 1e3:.1f} ms")
    cmd = [sys.executable, "-c", "import sys; from perfmodel.cli import main; sys.exit(main())", "serve",
           "--model", "llama-3-8b", "--hardware", "h100-sxm",
           "--find-rate", "--slo-ttft", "0.5", "--slo-tpot", "0.05", "--prompt-dist", lengths["prompt"],
           "--gen-dist", lengths["gen"], "--requests", "2000"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    print(f"perfmodel serve --find-rate (2,000 requests, p90 TTFT <= 0.5 s, TPOT <= 50 ms): "
          f"{time.perf_counter() - t0:.1f} s, process start included")
    print("  " + next(line.strip() for line in out.splitlines() if "highest rate" in line))


if __name__ == "__main__":
    main()
