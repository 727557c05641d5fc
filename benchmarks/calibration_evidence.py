"""Does calibration make predictions match this machine? Prints the figures the README reports.

    python benchmarks/calibration_evidence.py [--backend torch|numpy] [--mode quick|full] [--no-e2e]

1. Kernel level: run the suite, fit on two thirds of the shapes of every class, predict the held-back third
   (every third kernel of each class, in suite order: a fixed split), report the median absolute error.
2. End to end (Torch): a Llama-architecture transformer in plain Torch with random weights (no download), measured
   prefill (prompts 32-1024) and decode steps (batch 1/4/16 at contexts 128 and 1024) against perfmodel's prediction
   with the profile fitted on all kernels, and with the uncalibrated defaults beside it. Timed as the suite times
   kernels: rounds spread over time (three before the suite, three after), the median of a few calls in each, the
   fastest round median kept.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd

import perfmodel as pm
from perfmodel.calibration import NOISY_SPREAD, Calibrator, device_peaks, make_backend, profile_from, run_suite
from perfmodel._local import detect_local

SPEC = pm.ModelSpec(id="bench-llama", name="Llama-architecture benchmark model (random weights)", n_layers=8,
                    d_model=1024, n_heads=16, n_kv_heads=4, d_ff=2816, vocab_size=32000)


def kernel_level(df: pd.DataFrame, levels) -> tuple[Calibrator, pd.DataFrame]:
    df = df.copy()
    df["held_out"] = df.groupby(["cls", "dtype"]).cumcount() % 3 == 2
    cal = Calibrator(levels).fit(df[~df.held_out])
    df["predicted_s"] = cal.predict(df)
    df["abs_err"] = (df.predicted_s / df.time_s - 1).abs()
    return cal, df


def build_model(torch, dtype):
    nn, F = torch.nn, torch.nn.functional
    s = SPEC
    hd, kvh = s.dim_head, s.kv_heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.RMSNorm(s.d_model), nn.RMSNorm(s.d_model)
            self.qkv = nn.Linear(s.d_model, (s.n_heads + 2 * kvh) * hd, bias=False)
            self.o = nn.Linear(s.n_heads * hd, s.d_model, bias=False)
            self.gate_up = nn.Linear(s.d_model, 2 * s.d_ff, bias=False)
            self.down = nn.Linear(s.d_ff, s.d_model, bias=False)

        def forward(self, x, cache, pos, cos, sin):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).split([s.n_heads * hd, kvh * hd, kvh * hd], dim=-1)
            q = q.view(b, t, s.n_heads, hd).transpose(1, 2)  # (B, H, T, hd)
            k = k.view(b, t, kvh, hd).transpose(1, 2)
            v = v.view(b, t, kvh, hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            kc, vc = cache
            kc[:, :, pos:pos + t], vc[:, :, pos:pos + t] = k, v
            a = F.scaled_dot_product_attention(q, kc[:, :, :pos + t], vc[:, :, :pos + t], is_causal=t > 1,
                                               enable_gqa=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
            g, u = self.gate_up(self.n2(x)).chunk(2, dim=-1)
            return x + self.down(F.silu(g) * u)

    def rope(x, cos, sin):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(s.vocab_size, s.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(s.n_layers))
            self.norm = nn.RMSNorm(s.d_model)
            self.head = nn.Linear(s.d_model, s.vocab_size, bias=False)

        def forward(self, tokens, caches, pos):
            t = tokens.shape[1]
            ang = torch.arange(pos, pos + t).float()[:, None] / 10000 ** (torch.arange(hd // 2).float() / (hd // 2))
            cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
            x = self.embed(tokens)
            for blk, cache in zip(self.blocks, caches):
                x = blk(x, cache, pos, cos, sin)
            return self.head(self.norm(x)[:, -1])  # final norm on every position, LM head on the last

    torch.manual_seed(0)
    m = Model().to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.02, 0.02)  # random, non-zero
    return m


class EndToEnd:
    """The end-to-end cases, measured in rounds spread over time (each round: warm-up, then the median of a few
    calls); a case's figure is its fastest round median, the rule the kernel suite uses. Rounds run both before and
    after the suite, so that a slow spell of this shared machine during one phase does not set the ratio between
    the suite's figures and the model's."""

    def __init__(self, dtypes: list[str]):
        import torch

        self.torch = torch
        torch.set_num_threads(detect_local().processor.units)
        self.tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}
        self.models = {dt: build_model(torch, self.tdt[dt]) for dt in dtypes}
        self.cases = []
        for dt in dtypes:
            prompts = (32, 128, 512, 1024) if dt == "fp32" else (32, 128)
            decodes = ((1, 128), (4, 128), (16, 128), (1, 1024), (4, 1024), (16, 1024)) if dt == "fp32" else (
                (1, 128), (4, 128), (1, 1024))
            self.cases += [(dt, "prefill", 1, p) for p in prompts] + [(dt, "decode", b, c) for b, c in decodes]
        self.best = {c: float("inf") for c in self.cases}

    def _run(self, dt, phase, b, n) -> float:
        torch, hd, kvh = self.torch, SPEC.dim_head, SPEC.kv_heads
        cache = [(torch.zeros(b, kvh, n + 1, hd, dtype=self.tdt[dt]),
                  torch.zeros(b, kvh, n + 1, hd, dtype=self.tdt[dt])) for _ in range(SPEC.n_layers)]
        if phase == "prefill":
            tok, pos, reps = torch.randint(0, SPEC.vocab_size, (b, n)), 0, 2 if n >= 512 else 3
        else:  # one decode step attending over n cached positions + itself
            tok, pos, reps = torch.randint(0, SPEC.vocab_size, (b, 1)), n, 5
        model = self.models[dt]
        with torch.inference_mode():
            model(tok, cache, pos)  # warm-up
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                model(tok, cache, pos)
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def measure(self, rounds: int) -> None:
        for _ in range(rounds):
            for c in self.cases:
                self.best[c] = min(self.best[c], self._run(*c))

    def report(self, profile: pm.Efficiency) -> pd.DataFrame:
        rows = []
        for dt, phase, b, n in self.cases:
            measured = self.best[(dt, phase, b, n)]
            wl = dict(batch=b, weights=dt, kv=dt, act=dt)
            pred = {}
            for k, e in (("calibrated", profile), ("uncalibrated", pm.efficiency.default_for("cpu"))):
                est = pm.estimate(SPEC, "local", prompt_len=n, gen_len=1 if phase == "prefill" else 2, efficiency=e,
                                  **wl)
                pred[k] = est.ttft_s if phase == "prefill" else est.tpot_s
            rows.append({"dtype": dt, "phase": phase, "batch": b, "tokens": n, "measured_s": measured,
                         "calibrated_s": pred["calibrated"], "uncalibrated_s": pred["uncalibrated"]})
            r = rows[-1]
            print(f"  {dt} {phase:<7} b={b:<3} n={n:<5} measured {measured * 1e3:9.2f} ms   calibrated "
                  f"{r['calibrated_s'] * 1e3:9.2f} ms ({r['calibrated_s'] / measured - 1:+.0%})   uncalibrated "
                  f"{r['uncalibrated_s'] * 1e3:9.2f} ms ({r['uncalibrated_s'] / measured - 1:+.0%})", flush=True)
        return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--mode", default="quick")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--save", metavar="CSV", help="write the suite's measurements here")
    ap.add_argument("--measurements", metavar="CSV", help="fit these saved measurements instead of measuring")
    a = ap.parse_args()
    dev = detect_local()
    levels = [(lv.name, lv.capacity_bytes or float("inf")) for lv in dev.levels]
    print(f"machine: {dev.name}, {dev.processor.units} cores; backend {a.backend}, mode {a.mode}")
    e2e = EndToEnd(a.dtypes.split(",")) if not a.no_e2e and a.backend == "torch" else None
    if e2e:
        e2e.measure(rounds=3)
    t0 = time.perf_counter()
    backend = make_backend(a.backend)
    df = (pd.read_csv(a.measurements) if a.measurements
          else run_suite(backend, a.mode, llc_bytes=max(c for _, c in levels[:-1])))
    if a.save:
        df.to_csv(a.save, index=False)
    print(f"suite: {len(df)} kernels in {time.perf_counter() - t0:.0f} s")
    _, kd = kernel_level(df, levels)
    held = kd[kd.held_out]
    print("kernel level, held-out third (fit on the other two thirds): median |error| by class")
    for (cls, dt), g in held.groupby(["cls", "dtype"]):
        print(f"  {cls:<16} {dt:<5} {len(g):3d} kernels  median {g.abs_err.median():6.1%}  "
              f"worst {g.abs_err.max():7.1%}")
    print(f"  ALL              {len(held):9d} kernels  median {held.abs_err.median():6.1%}")
    if e2e is None:
        return
    e2e.measure(rounds=3)
    cal = Calibrator(levels, peaks=device_peaks(dev)).fit(df)
    broken = cal.violations()
    print(f"trust checks (perfmodel calibrate's): {len(broken)} bound(s) broken, "
          f"{(df.spread > NOISY_SPREAD).mean():.0%} of kernels noisy" + "".join(f"\n  {v}" for v in broken))
    profile = profile_from(cal, "local", a.backend, backend.versions(), int(df.threads.iloc[0]), a.mode)
    print("end to end (plain-Torch Llama-architecture model, %.0fM params, random weights):"
          % (SPEC.params_total() / 1e6))
    e2e = e2e.report(profile)
    for col in ("calibrated_s", "uncalibrated_s"):
        err = (e2e[col] / e2e.measured_s - 1).abs()
        print(f"  {col[:-2]:<13} median |error| {err.median():6.1%}, worst {err.max():6.1%}, "
              f"within 25 %: {(err <= 0.25).sum()}/{len(err)}")


if __name__ == "__main__":
    main()
