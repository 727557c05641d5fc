"""The serving rows of validation/ predicted by the request-level simulator, beside today's static heuristics.

    python benchmarks/serving_validation.py [--rows 300] [--seed 0] [--requests-per-slot 3]

`perfmodel validate` still predicts serving rows with validation.py's static heuristics (the largest batch that fits,
costed as one static batch). This script predicts a random sample of the same rows with perfmodel.serving.simulate
(continuous batching with chunked prefill, paged KV cache) and prints both errors on the same rows, per metric, with
the same fitted engine profiles (fitted on the heuristic path: the comparison favours the heuristics). Rows:

- a "max throughput" row (no batch given: an offline benchmark such as trtllm-bench): requests-per-slot x
  max_num_seqs requests all sent at once, up to MAX_SERVING_BATCH sequences an iteration;
- a row at concurrency b (batch given): b clients in a closed loop, 3 b requests (at least 24);
- static-batching rows are skipped (the heuristic is the static batch itself).
Prints medians and means of |error| %, and the bias.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from perfmodel.catalog import load_device, load_model
from perfmodel.engines import load_engine
from perfmodel.errors import PerfmodelError
from perfmodel.serving import Requests, Scheduler, simulate
from perfmodel.validation import MAX_SERVING_BATCH, _n, _row_workload, _s, load_rows, predict, profile_of

METRICS = ("throughput_tokens_per_s", "total_throughput_tokens_per_s", "ttft_s", "tpot_s", "latency_s")


def simulated(r: dict, per_slot: int) -> float:
    hw, mdl = _s(r.get("hardware")), _s(r.get("model"))
    model, device = load_model(mdl), load_device(hw)
    name = profile_of(r["engine"], r.get("software"))
    wl = _row_workload(r, model, device, tp=int(_n(r.get("tp"), 1)), pp=int(_n(r.get("pp"), 1)),
                       ep=int(_n(r.get("ep"), 1)), dp_attention=r.get("dp_attention") is True)
    eff = load_engine(name).efficiency(device)
    p, g = float(_n(r.get("prompt_len"), 512)), float(max(_n(r.get("gen_len"), 128), 1))
    closed = _n(r.get("batch"), 0) > 0  # a concurrency given, else the engine's largest batch
    seqs = int(r["batch"]) if closed else MAX_SERVING_BATCH
    sch = Scheduler(max_num_seqs=seqs, max_batched_tokens=max(8192, seqs))
    n = max(3 * seqs, 24) if closed else per_slot * seqs
    req = Requests(np.zeros(n), np.full(n, p), np.full(n, g), np.zeros(n))
    res = simulate(model, device, wl, requests=req, scheduler=sch, efficiency=eff,
                   concurrency=seqs if closed else None)
    m = res.metrics()
    copies = _n(r.get("n_devices"), wl.parallel.devices) / wl.parallel.devices
    return {"throughput_tokens_per_s": m["throughput_tokens_per_s"] * copies,
            "total_throughput_tokens_per_s": m["throughput_tokens_per_s"] * (p + g) / g * copies,
            "ttft_s": m["ttft_s"]["mean"], "tpot_s": m["tpot_s"]["mean"],
            "latency_s": m["e2e_latency_s"]["mean"]}[r["metric"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests-per-slot", type=int, default=3)
    a = ap.parse_args()
    rows = load_rows()
    serving = rows[(rows.category == "serving") & rows.metric.isin(METRICS)
                   & (rows.batching.fillna("") != "static") & rows.kept_out.fillna("").eq("")
                   & rows.hardware.fillna("").ne("") & rows.model.fillna("").ne("")]
    sample = serving.sample(min(a.rows, len(serving)), random_state=a.seed)
    heur, why = predict(sample)
    sim = np.full(len(sample), np.nan)
    t0 = time.perf_counter()
    for i, r in enumerate(sample.to_dict("records")):
        if why[i]:
            continue
        try:
            sim[i] = simulated(r, a.requests_per_slot)
        except PerfmodelError as e:
            why[i] = str(e)[:80]
    elapsed = time.perf_counter() - t0
    ok = np.isfinite(sim) & np.isfinite(heur)
    v = sample.value.to_numpy()
    print(f"{ok.sum()} of {len(sample)} sampled serving rows (of {len(serving)}) predicted both ways; "
          f"simulation {elapsed:.0f} s")
    for name, pred in (("static heuristics", heur), ("simulator", sim)):
        err = pred[ok] / v[ok] - 1
        print(f"  {name:>17}: median |err| {np.median(np.abs(err)) * 100:.1f} %, "
              f"mean {np.mean(np.abs(err)) * 100:.1f} %, "
              f"bias {np.median(err) * 100:+.1f} %")
    for metric in METRICS:
        sel = ok & (sample.metric.to_numpy() == metric)
        if sel.any():
            e_h = np.abs(heur[sel] / v[sel] - 1)
            e_s = np.abs(sim[sel] / v[sel] - 1)
            print(f"  {metric:<30} rows {sel.sum():>4}: heuristics {np.mean(e_h) * 100:.1f} %, simulator "
                  f"{np.mean(e_s) * 100:.1f} % (mean |err|)")


if __name__ == "__main__":
    main()
