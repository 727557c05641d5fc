"""CPU (and GPU) design trends from the catalog, and LLM inference demands against them.

Per device and launch year: peak FLOP/s per core and per socket (vector and matrix units), clock, cores, DRAM
bandwidth, bandwidth per core, machine balance (FLOP per byte) and cache per core. Growth rates are least-squares
fits of log(value) on year (CAGR, doubling time, factor per 2 years, with the years fitted); the end of clock scaling
is the break point of a two-segment fit to Karl Rupp's 1971-2021 clock series (workloads/trends/karlrupp). LLM
demands: arithmetic intensity of prefill and decode by batch and context, tokens/s each CPU would reach for
reference models and what bounds it, and when the trend of the best socket per year reaches a target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import PerfmodelError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Published rates to compare with (factor per 2 years).
PUBLISHED = (
    {"metric": "peak FLOP/s (server AI hardware)", "per_2y": 3.0, "years": "about 1996-2023 ('past 20 years')",
     "source": "Gholami, Yao, Kim, Hooper, Mahoney, Keutzer: 'AI and Memory Wall', IEEE Micro 2024, abstract",
     "url": "https://arxiv.org/abs/2403.14123"},
    {"metric": "DRAM bandwidth", "per_2y": 1.6, "years": "about 1996-2023",
     "source": "Gholami et al., 'AI and Memory Wall', IEEE Micro 2024, abstract",
     "url": "https://arxiv.org/abs/2403.14123"},
    {"metric": "interconnect bandwidth", "per_2y": 1.4, "years": "about 1996-2023",
     "source": "Gholami et al., 'AI and Memory Wall', IEEE Micro 2024, abstract",
     "url": "https://arxiv.org/abs/2403.14123"},
)
# Training compute of AI models, for comparison with a socket's peak (factor per 2 years: 4.6 x a year squared)
TRAINING_GROWTH = {"metric": "training compute of notable AI models", "per_2y": 4.6 ** 2, "years": "2010-2024",
                   "source": "Epoch AI, 'The training compute of notable AI models is doubling roughly every five "
                             "months' (data insight): 'Since 2010 ... growing at a rate of 4.6x per year'",
                   "url": "https://epoch.ai/data-insights/compute-trend-post-2010"}
# Reference training runs: (model id, tokens, sequence length, where the token count and sequence are stated)
TRAIN_REFERENCE = (
    ("llama-3-8b", 15e12, 8192, "Meta Llama 3 model card: 'pretrained on over 15 trillion tokens', context 8k",
     "https://github.com/meta-llama/llama3/blob/main/MODEL_CARD.md"),
    ("gpt-3-175b", 300e9, 2048, "Brown et al. 2020, sec. 2.2: 'All models were trained for a total of 300 billion "
                                "tokens', context window 2048", "https://arxiv.org/abs/2005.14165"),
)
YEAR_S = 365.25 * 86400.0
RUPP = "Karl Rupp, microprocessor-trend-data (50yrs, CC BY 4.0), https://github.com/karlrupp/microprocessor-trend-data"
TREND_METRICS = {
    "clock_ghz": "clock (GHz)",
    "cores": "cores per socket",
    "vector_fp32_flops_per_s": "vector fp32 peak per socket (FLOP/s)",
    "vector_fp32_flops_per_s_per_core": "vector fp32 peak per core (FLOP/s)",
    "memory_bandwidth_bytes_per_s": "DRAM bandwidth per socket (B/s)",
    "bandwidth_per_core_bytes_per_s": "DRAM bandwidth per core (B/s)",
    "balance_flops_per_byte": "machine balance, vector fp32 (FLOP/byte)",
    "cache_per_core_bytes": "cache per core (B)",
}


GPU_METRICS = {
    "matrix_16bit_flops_per_s": "matrix bf16/fp16 dense peak (FLOP/s)",
    "memory_bandwidth_bytes_per_s": "memory bandwidth (B/s)",
    "balance_flops_per_byte": "machine balance (FLOP/byte)",
}


# Tables ---------------------------------------------------------------------------------------------------------------

def cpu_table(include_undated: bool = False) -> "pd.DataFrame":
    """One row per catalog CPU (one socket): the figures trends are fitted on. Values a spec does not give are NaN."""
    import pandas as pd

    from .catalog import catalog_devices

    rows = []
    for d in catalog_devices():
        if d.kind != "cpu" or (d.year is None and not include_undated):
            continue
        p = d.processor
        cores = p.units if p else math.nan
        vec = d.peak_flops_per_s("vector", "fp32") or math.nan
        vec64 = d.peak_flops_per_s("vector", "fp64") or math.nan
        mat = d.peak_flops_per_s("matrix", "bf16") or math.nan
        bw = d.main_memory.bandwidth_bytes_per_s or math.nan
        caches = [lv.capacity_bytes for lv in d.levels[:-1] if lv.capacity_bytes]
        rows.append({
            "id": d.id, "name": d.name, "vendor": d.vendor, "year": d.year, "cores": cores,
            "clock_ghz": (p.peak_clock_hz / 1e9) if p and p.peak_clock_hz else math.nan,
            "simd_width_bits": (p.simd_width_bits or math.nan) if p else math.nan,
            "vector_fp32_flops_per_s": vec, "vector_fp64_flops_per_s": vec64, "matrix_bf16_flops_per_s": mat,
            "vector_fp32_flops_per_s_per_core": vec / cores, "matrix_bf16_flops_per_s_per_core": mat / cores,
            "memory_bandwidth_bytes_per_s": bw, "bandwidth_per_core_bytes_per_s": bw / cores,
            "balance_flops_per_byte": vec / bw, "balance_matrix_flops_per_byte": mat / bw,
            "cache_per_core_bytes": sum(caches) / cores if caches else math.nan,
        })
    return pd.DataFrame(rows).sort_values(["year", "id"]).reset_index(drop=True)


def gpu_table() -> "pd.DataFrame":
    """One row per dated catalog GPU: dense matrix peak (bf16, else fp16), memory bandwidth, balance, capacity."""
    import pandas as pd

    from .catalog import catalog_devices

    rows = []
    for d in catalog_devices():
        if d.kind != "gpu" or d.year is None:
            continue
        peak = d.peak_flops_per_s("matrix", "bf16") or d.peak_flops_per_s("matrix", "fp16") or math.nan
        bw = d.main_memory.bandwidth_bytes_per_s or math.nan
        rows.append({"id": d.id, "name": d.name, "vendor": d.vendor, "year": d.year, "matrix_16bit_flops_per_s": peak,
                     "memory_bandwidth_bytes_per_s": bw, "balance_flops_per_byte": peak / bw,
                     "capacity_bytes": d.main_memory.capacity_bytes or math.nan})
    return pd.DataFrame(rows).sort_values(["year", "id"]).reset_index(drop=True)


def clock_history() -> "pd.DataFrame":
    """Karl Rupp's 1971-2021 series: year, clock (GHz) and logical cores where given."""
    import pandas as pd

    from .catalog import data_roots

    for root in data_roots():
        base = root / "workloads" / "trends" / "karlrupp"
        if (base / "frequency.dat").is_file():
            freq = _dat(base / "frequency.dat")
            return pd.DataFrame({"year": freq[:, 0], "clock_ghz": freq[:, 1] / 1e3})
    raise PerfmodelError("workloads/trends/karlrupp/frequency.dat is missing from the data folders")


def _dat(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


# Growth fits ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Growth:
    """An exponential trend: value = exp(a + b x year). `per_year` is the CAGR (e.g. 0.26 = +26 %/year)."""

    metric: str
    per_year: float
    doubling_years: float
    per_2y: float
    first_year: float
    last_year: float
    n: int
    r2: float
    intercept: float

    def at(self, year: float) -> float:
        return math.exp(self.intercept + math.log1p(self.per_year) * year)

    def year_reaching(self, value: float) -> float:
        b = math.log1p(self.per_year)
        return (math.log(value) - self.intercept) / b if b else math.inf

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def growth(years: Sequence[float], values: Sequence[float], metric: str = "") -> Growth:
    """Least-squares fit of ln(value) on year over the finite, positive points (at least 3, over 2+ distinct
    years)."""
    y = np.asarray(years, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(y) & np.isfinite(v) & (v > 0)
    y, lv = y[ok], np.log(v[ok])
    if len(y) < 3 or np.ptp(y) == 0:
        raise PerfmodelError(f"{metric or 'a trend'} needs at least 3 points over 2 or more years; got {len(y)}")
    b, a = np.polyfit(y, lv, 1)
    resid = lv - (a + b * y)
    ss = float(((lv - lv.mean()) ** 2).sum())
    r2 = 1 - float((resid ** 2).sum()) / ss if ss > 0 else 1.0
    return Growth(metric, math.expm1(b), math.log(2) / b if b else math.inf, math.exp(2 * b), float(y.min()),
                  float(y.max()), int(len(y)), r2, float(a))


def breakpoint(years: Sequence[float], values: Sequence[float], metric: str = "",
               min_points: int = 5) -> tuple[float, Growth, Growth]:
    """The year splitting a series into two exponential trends that fit it best (least squares in log space, each
    side with at least `min_points` points): (break year, growth before, growth after)."""
    y = np.asarray(years, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(y) & np.isfinite(v) & (v > 0)
    order = np.argsort(y[ok])
    y, v = y[ok][order], v[ok][order]
    best = None
    for i in range(min_points, len(y) - min_points + 1):
        if y[i] == y[i - 1]:
            continue
        sse = 0.0
        for ys, vs in ((y[:i], v[:i]), (y[i:], v[i:])):
            b, a = np.polyfit(ys, np.log(vs), 1)
            sse += float(((np.log(vs) - a - b * ys) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, i)
    if best is None:
        raise PerfmodelError(f"{metric or 'a series'} is too short for a break point ({len(y)} points)")
    i = best[1]
    split = (y[i - 1] + y[i]) / 2
    return split, growth(y[:i], v[:i], f"{metric} before"), growth(y[i:], v[i:], f"{metric} after")


def envelope(table: "pd.DataFrame", col: str) -> "pd.DataFrame":
    """The largest value of `col` in each launch year: the best part one could buy that year. The catalog mixes
    laptops, desktops and servers, so trends are fitted to this envelope, not to every part."""
    t = table[np.isfinite(table[col].astype(float))]
    return t.loc[t.groupby("year")[col].idxmax()].sort_values("year")


def envelope_growth(table: "pd.DataFrame", col: str) -> Growth:
    """The growth of `col`'s yearly envelope (see `envelope`)."""
    e = envelope(table, col)
    return growth(e.year, e[col], col)


def cpu_growth(table: "pd.DataFrame | None" = None, since: float | None = None,
               columns: dict[str, str] = TREND_METRICS) -> "pd.DataFrame":
    """Growth rate of each column's yearly envelope over the catalog CPUs (from `since`, if given)."""
    import pandas as pd

    t = cpu_table() if table is None else table
    if since is not None:
        t = t[t.year >= since]
    rows = []
    for col, label in columns.items():
        try:
            rows.append({"metric": col, "label": label, **envelope_growth(t, col).as_dict()})
        except PerfmodelError:
            continue
    return pd.DataFrame(rows)


def clock_break() -> tuple[float, Growth, Growth]:
    """The end of clock scaling: break point of Karl Rupp's clock series."""
    h = clock_history()
    return breakpoint(h.year, h.clock_ghz, "clock")


# LLM demands ----------------------------------------------------------------------------------------------------------

def llm_intensity(model: str = "llama-3-8b", batches: Sequence[int] = (1, 8, 64, 512),
                  contexts: Sequence[int] = (512, 4096), weights: str = "bf16",
                  device: str = "xeon-8480plus") -> "pd.DataFrame":
    """Arithmetic intensity (FLOP per byte moved) of prefill, of decode, and of their GEMMs and attention, for each
    batch and context (prompt = context, one generated token per step over it). Intensities depend on the model and
    formats, not the device (which only provides the memory hierarchy the bytes are counted against)."""
    import pandas as pd

    from .api import estimate
    from .evaluate import Workload

    rows = []
    for b in batches:
        for ctx in contexts:
            est = estimate(model, device, Workload(batch=b, prompt_len=ctx, gen_len=2, weights=weights, kv=weights
                                                   if weights in ("bf16", "fp16", "fp8") else "bf16",
                                                   act="bf16"), ignore_capacity=True)
            ops = est.ops
            for phase in ("prefill", "decode"):
                g = ops[ops.phase == phase]
                row = {"model": model, "weights": weights, "batch": b, "context": ctx, "phase": phase,
                       "intensity_flops_per_byte": g.flops.sum() / g.bytes.sum()}
                for kind in ("matmul", "attention"):
                    k = g[g.kind == kind]
                    row[f"{kind}_flops_per_byte"] = k.flops.sum() / k.bytes.sum() if k.bytes.sum() else math.nan
                rows.append(row)
    return pd.DataFrame(rows)


REFERENCE = (("llama-3-8b", "bf16"), ("llama-3-8b", "q4_0"))


def cpu_tokens(models: Sequence[tuple[str, str]] = REFERENCE, batch: int = 1, prompt: int = 512, gen: int = 128,
               table: "pd.DataFrame | None" = None) -> "pd.DataFrame":
    """Tokens/s each catalog CPU (one socket, datasheet peaks at the default CPU efficiencies) would reach for the
    reference models, and which resource bounds decode and prefill. One vectorised sweep."""
    import pandas as pd

    from .scenarios import sweep

    t = cpu_table() if table is None else table
    rows = [{"model": m, "hardware": h, "batch": batch, "prompt": prompt, "gen": gen, "weights": w,
             "kv": "bf16", "act": "bf16"} for m, w in models for h in t.id]
    res = sweep(pd.DataFrame(rows), ignore_capacity=True, progress=False)
    res = res.merge(t[["id", "year", "vendor"]], left_on="hardware", right_on="id").drop(columns="id")
    return res[["model", "weights", "hardware", "vendor", "year", "decode_tokens_per_s", "prefill_tokens_per_s",
                "decode_bound", "prefill_bound", "error"]]


def projection(tokens: "pd.DataFrame", target: float, metric: str = "decode_tokens_per_s",
               since: float = 2010) -> dict[str, Any]:
    """When the trend of the best socket per year (from `since`) reaches `target` tokens/s: the fitted growth, the
    year, and the best measured point so far."""
    recent = tokens[tokens.year >= since]
    g = envelope_growth(recent, metric)
    best = recent.loc[recent[metric].astype(float).idxmax()]
    return {"metric": metric, "target": target, "growth": g, "year": g.year_reaching(target),
            "best": {"hardware": best.hardware, "year": int(best.year), "value": float(best[metric])},
            "reached": bool(best[metric] >= target)}


def gap_attribution(model: str, weights: str, hardware: str,
                    metrics: Sequence[str] = ("decode_tokens_per_s", "prefill_tokens_per_s"),
                    rates: "pd.DataFrame | None" = None, batch: int = 1, prompt: int = 512,
                    gen: int = 128) -> dict[str, dict[str, float]]:
    """How much of each metric's trend bandwidth and compute explain: elasticities of the metric to memory
    bandwidth and to compute on `hardware` (what-if sensitivity) times the catalog's per-year growth of each (DRAM
    bandwidth, vector fp32 peak per socket), and their shares of the sum. One entry per metric."""
    from .evaluate import Workload
    from .whatif import sensitivity

    r = cpu_growth() if rates is None else rates
    g = r.set_index("metric").per_year
    sens = sensitivity(model, hardware, Workload(batch=batch, prompt_len=prompt, gen_len=gen, weights=weights,
                                                 act="bf16"), params=("memory_bandwidth", "compute")).set_index(
        "parameter")
    out = {}
    for metric in metrics:
        s = sens[metric]
        bw = float(s["memory_bandwidth"]) * math.log1p(float(g["memory_bandwidth_bytes_per_s"]))
        comp = float(s["compute"]) * math.log1p(float(g["vector_fp32_flops_per_s"]))
        total = bw + comp
        out[metric] = {"elasticity_bandwidth": float(s["memory_bandwidth"]),
                       "elasticity_compute": float(s["compute"]), "bandwidth_per_year": bw,
                       "compute_per_year": comp, "bandwidth_share": bw / total if total else math.nan,
                       "compute_share": comp / total if total else math.nan}
    return out


def training_demand(table: "pd.DataFrame | None" = None,
                    runs: Sequence[tuple] = TRAIN_REFERENCE) -> "pd.DataFrame":
    """FLOPs to train each reference model (perfmodel.training.model_flops_per_token x its tokens: 6 N + 6 L H Q T a
    token) against each catalog CPU socket's peak (its bf16 matrix units where it has them, else its fp32 vector
    units): the socket-years the run would take at that peak, one row per CPU and run (array arithmetic over the
    table)."""
    import pandas as pd

    from .catalog import load_model
    from .training import model_flops_per_token

    t = cpu_table() if table is None else table
    peak = np.fmax(t.matrix_bf16_flops_per_s.to_numpy(float), t.vector_fp32_flops_per_s.to_numpy(float))
    unit = np.where(t.matrix_bf16_flops_per_s.to_numpy(float) >= t.vector_fp32_flops_per_s.to_numpy(float),
                    "matrix bf16", "vector fp32")
    parts = []
    for model, tokens, seq, *_ in runs:
        flops = model_flops_per_token(load_model(model), seq) * tokens
        parts.append(pd.DataFrame({"model": model, "tokens": tokens, "train_flops": flops, "hardware": t.id,
                                   "vendor": t.vendor, "year": t.year, "train_peak_flops_per_s": peak, "unit": unit,
                                   "socket_years": flops / peak / YEAR_S}))
    return pd.concat(parts, ignore_index=True)


def training_headline(table: "pd.DataFrame | None" = None, runs: Sequence[tuple] = TRAIN_REFERENCE
                      ) -> list[dict[str, Any]]:
    """Per reference run: its FLOPs, the best socket so far and the socket-years it would take at peak, the growth of
    the best socket's training peak per year, and the year that trend would let one socket train it within a year
    (against training compute's own growth, TRAINING_GROWTH)."""
    d = training_demand(table, runs)
    out = []
    for model, tokens, seq, note, url in runs:
        sub = d[d.model == model]
        g = envelope_growth(sub, "train_peak_flops_per_s")
        best = sub.loc[sub.train_peak_flops_per_s.idxmax()]
        flops = float(sub.train_flops.iloc[0])
        out.append({"model": model, "tokens": tokens, "seq_len": seq, "train_flops": flops, "source": note,
                    "url": url, "best": {"hardware": best.hardware, "year": int(best.year), "unit": best.unit,
                                         "peak_flops_per_s": float(best.train_peak_flops_per_s),
                                         "socket_years": float(best.socket_years)},
                    "peak_growth": g.as_dict(), "year_one_socket_year": g.year_reaching(flops / YEAR_S)})
    return out


# Headline and figure --------------------------------------------------------------------------------------------------

def headline(target: float = 20.0, table: "pd.DataFrame | None" = None,
             tokens: "pd.DataFrame | None" = None) -> dict[str, Any]:
    """The numbers `perfmodel trends` prints: growth rates (catalog CPUs and GPUs) beside the published ones, the
    end of clock scaling, and when the best CPU socket reaches `target` decode tokens/s on the reference models.
    `table` and `tokens`: cpu_table() and cpu_tokens() when the caller already has them."""
    t = cpu_table() if table is None else table
    rates = cpu_growth(t)
    brk, before, after = clock_break()
    tok = cpu_tokens(table=t) if tokens is None else tokens
    gpus = gpu_table()
    out = {"cpu_growth": rates.to_dict("records"),
           "gpu_growth": [{"label": label, **envelope_growth(gpus, c).as_dict()} for c, label in GPU_METRICS.items()],
           "published": list(PUBLISHED),
           "clock_break": {"year": brk, "before": before.as_dict(), "after": after.as_dict(), "source": RUPP},
           "projections": [], "cpus": len(t), "gpus": len(gpus), "training_demand": training_headline(t),
           "training_growth": TRAINING_GROWTH}
    for m, w in REFERENCE:
        sub = tok[(tok.model == m) & (tok.weights == w)]
        p = projection(sub, target)
        last = envelope(sub, "decode_tokens_per_s").iloc[-1]
        gap = gap_attribution(m, w, str(last.hardware), rates=rates)
        p.update(gap["decode_tokens_per_s"])
        pre = gap["prefill_tokens_per_s"]
        p["prefill"] = {"bandwidth_share": pre["bandwidth_share"], "compute_share": pre["compute_share"]}
        p["model"], p["weights"] = m, w
        p["growth"] = p["growth"].as_dict()
        out["projections"].append(p)
    return out


def figure(target: float = 20.0, table: "pd.DataFrame | None" = None,
           tokens: "pd.DataFrame | None" = None) -> "Figure":
    """Four panels: peaks and bandwidth per socket by year with their fits; machine balance against LLM
    intensities; clock over 50 years with its break point; tokens/s per CPU for the reference models with the trend
    of the best socket and the target."""
    from matplotlib.figure import Figure

    t = cpu_table() if table is None else table
    fig = Figure(figsize=(13, 9.5), dpi=100, layout="constrained")
    (a, b), (c, d) = fig.subplots(2, 2)
    yrs = np.linspace(t.year.min(), t.year.max(), 50)
    for col, label, color in (("vector_fp32_flops_per_s", "vector fp32 peak (FLOP/s)", "#1f77b4"),
                              ("matrix_bf16_flops_per_s", "matrix bf16 peak (FLOP/s)", "#9467bd"),
                              ("memory_bandwidth_bytes_per_s", "DRAM bandwidth (B/s)", "#ff7f0e")):
        ok = np.isfinite(t[col])
        a.scatter(t.year[ok], t[col][ok], s=18, color=color, label=label, alpha=0.8)
        if envelope(t, col).year.nunique() >= 3:
            g = envelope_growth(t, col)
            span = yrs[(yrs >= g.first_year) & (yrs <= g.last_year)]  # a fit is drawn over the years it was fitted on
            a.plot(span, [g.at(y) for y in span], color=color, lw=1, ls="--",
                   label=f"  best per year: x{g.per_2y:.2f} per 2 years ({g.first_year:.0f}-{g.last_year:.0f})")
    a.set(yscale="log", xlabel="launch year", title="Per socket: peak compute and DRAM bandwidth")
    a.legend(fontsize=7, loc="upper left")

    ok = np.isfinite(t.balance_flops_per_byte)
    b.scatter(t.year[ok], t.balance_flops_per_byte[ok], s=18, color="#1f77b4", label="vector fp32 / DRAM")
    okm = np.isfinite(t.balance_matrix_flops_per_byte)
    b.scatter(t.year[okm], t.balance_matrix_flops_per_byte[okm], s=24, marker="D", color="#9467bd",
              label="matrix bf16 / DRAM (AMX)")
    li = llm_intensity(batches=(1, 16, 256), contexts=(2048,))
    for r in li.itertuples():
        if r.phase == "decode" or r.batch == 1:
            name = f"{r.phase}, batch {r.batch}" if r.phase == "decode" else f"prefill, {r.context}-token prompt"
            b.axhline(r.intensity_flops_per_byte, color="0.4", lw=0.8, ls=":")
            b.annotate(f"Llama 3 8B {name}: {r.intensity_flops_per_byte:,.0f} FLOP/B",
                       (t.year.min(), r.intensity_flops_per_byte), xytext=(0, 2), textcoords="offset points",
                       fontsize=7, color="0.25")
    b.set(yscale="log", xlabel="launch year", ylabel="FLOP per byte",
          title="Machine balance against LLM arithmetic intensity (bf16)")
    b.legend(fontsize=7, loc="lower right")

    h = clock_history()
    brk, before, after = clock_break()
    c.scatter(h.year, h.clock_ghz, s=10, color="0.5", label="Rupp (1971-2021)")
    c.scatter(t.year, t.clock_ghz, s=18, color="#d62728", label="catalog CPUs (clock peaks are derived at)")
    for g, lo, hi in ((before, h.year.min(), brk), (after, brk, h.year.max())):
        xs = np.linspace(lo, hi, 20)
        c.plot(xs, [g.at(x) for x in xs], color="black", lw=1, ls="--")
    c.axvline(brk, color="black", lw=0.8, ls=":")
    c.annotate(f"break {brk:.0f}: x{before.per_2y:.2f} per 2 years before, x{after.per_2y:.2f} after", (brk, 0.01),
               xytext=(4, 4), textcoords="offset points", fontsize=7)
    c.set(yscale="log", xlabel="year", ylabel="GHz", title="Clock: the end of frequency scaling")
    c.legend(fontsize=7, loc="lower right")

    tok = cpu_tokens(table=t) if tokens is None else tokens
    colors = {("llama-3-8b", "bf16"): "#1f77b4", ("llama-3-8b", "q4_0"): "#2ca02c"}
    for (m, w), col in colors.items():
        sub = tok[(tok.model == m) & (tok.weights == w)]
        mem = sub.decode_bound == "memory"
        d.scatter(sub.year[mem], sub.decode_tokens_per_s[mem], s=18, color=col, label=f"{m} {w}: memory-bound")
        d.scatter(sub.year[~mem], sub.decode_tokens_per_s[~mem], s=22, marker="x", color=col,
                  label=f"{m} {w}: compute-bound")
        p = projection(sub, target)
        g = p["growth"]
        xs = np.linspace(g.first_year, max(g.last_year, min(p["year"], 2040)), 30)
        d.plot(xs, [g.at(x) for x in xs], color=col, lw=1, ls="--",
               label=f"  best per year: x{g.per_2y:.2f}/2y; {target:g} tok/s in {p['year']:.0f}")
    d.axhline(target, color="black", lw=0.8, ls=":")
    d.set(yscale="log", xlabel="launch year", ylabel="decode tokens/s (batch 1, one socket)",
          title="Llama 3 8B decode per CPU socket (datasheet peaks)")
    d.legend(fontsize=7, loc="upper left")
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b, c, d):
        ax.grid(True, which="major", color="0.92", lw=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
