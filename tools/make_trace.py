"""Write the synthetic request trace that ships as workloads/traces/synthetic-chat.csv.

    python tools/make_trace.py

Synthetic, not fitted to any dataset: 1,000 requests, Poisson arrivals at 5 requests/s, prompt lengths lognormal
(median 256 tokens, sigma 1.0, clipped to 1-8,192), output lengths lognormal (median 200, sigma 0.8, clipped to
1-2,048), and one request in three opening with the same 200-token system prompt (prefix_tokens 200: cached after
the first). Seed 2026.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "workloads" / "traces" / "synthetic-chat.csv"


def main() -> None:
    rng = np.random.default_rng(2026)
    n = 1000
    arrival = np.cumsum(rng.exponential(1 / 5.0, n))
    arrival -= arrival[0]
    prompt = np.clip(np.rint(256 * np.exp(rng.normal(0, 1.0, n))), 1, 8192).astype(int)
    output = np.clip(np.rint(200 * np.exp(rng.normal(0, 0.8, n))), 1, 2048).astype(int)
    shared = rng.random(n) < 1 / 3
    prompt = np.where(shared, prompt + 200, prompt)
    prefix = np.where(shared, 200, 0)
    prefix[np.argmax(shared)] = 0  # the first to carry the system prompt computes it
    df = pd.DataFrame({"arrival_s": arrival.round(4), "prompt_tokens": prompt, "output_tokens": output,
                       "prefix_tokens": prefix})
    df.to_csv(OUT, index=False)
    print(f"wrote {OUT} ({n} requests)")


if __name__ == "__main__":
    main()
