"""Error bands: how far to trust an estimate, from how far our predictions missed published measurements.

For each held-out validation row r = measured / predicted, oriented as a rate (for a time metric, predicted /
measured), so that r > 1 means the real system was faster than predicted. The band of a metric is the empirical
7.5th-92.5th percentile of r over the rows of its group (see QUANTILES): (device class, engine, category), falling back to (engine,
category), then (category) when a group has fewer than MIN_ROWS rows. An estimate X of a rate has the band
[X x r10, X x r90]; of a time T, [T / r90, T / r10]. Only rows no profile was fitted on enter: the test split for
the fitted engines, every row for `default` (literature efficiencies) and `ideal` (datasheet peaks).

An estimate that leans on an estimated device figure (perfmodel.provenance) has its band widened: both ends move
out by the factor product over estimated figures of (1 + u) ** share, u the figure's rule uncertainty
(provenance.RULE_UNCERTAINTY) and share the part of the phase's time it bounds.

The table is data, workloads/bands.toml, written by tools/fit_bands.py; its empirical coverage (how often
the band of a row, fitted without that row's source, contains the measured value) is in docs/validation.md.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

COVERAGE = 0.8
# The percentiles of the nominal 80 % band: 7.5th-92.5th, not 10th-90th. Sources differ from one another (setup,
# software version), so a band fitted on other sources covers a new one less often than the in-sample percentiles
# say: measured leave-one-source-out on the held-out rows (tools/fit_bands.py), 10-90 covers 75 % of rows and
# 7.5-92.5 covers 79 %. This is the one number chosen on the validation set; docs/validation.md reports it.
QUANTILES = (0.075, 0.925)
MIN_ROWS = 12
# A band rests on at least this many sources: one benchmark table's own offset (its build, its setup) is not the
# spread a new source will show. Measured leave-one-source-out (tools/fit_bands.py): with 1 source allowed, llama.cpp
# prefill bands covered 57 % of new sources' rows; with 3, see docs/validation.md.
MIN_SOURCES = 3
# Which validation category speaks for each estimate metric; time metrics are inverted (a faster system, a shorter
# time).
METRIC_CATEGORY = {"decode_tokens_per_s": "decode", "tpot_s": "decode", "prefill_tokens_per_s": "prefill",
                   "ttft_s": "prefill", "throughput_tokens_per_s": "serving", "e2e_latency_s": "serving"}
TIME_METRICS = {"tpot_s", "ttft_s", "e2e_latency_s", "latency_s"}
# Fallback levels of the band table, most specific first. `stack` pools the fitted engine profiles (their residuals
# are held-out rows of profiles fitted elsewhere), apart from `default` and `ideal`, whose errors are of another
# size; a calibrated profile has no residuals of its own and takes the pooled fitted band.
LEVELS = (("device_class", "engine", "category"), ("engine", "category"), ("stack", "category"))
UNFITTED = ("default", "ideal")
BAND_CATEGORIES = ("decode", "prefill", "serving")
PHASE_OF = {"decode": ("decode",), "prefill": ("prefill",), "serving": ("prefill", "decode")}


@dataclass(frozen=True)
class Band:
    """r10 and r90 of measured/predicted (rates) over `rows` held-out validation rows of group `basis`."""

    low_ratio: float
    high_ratio: float
    rows: int
    basis: str
    coverage: float = COVERAGE

    def apply(self, value: Any, metric: str, widen: Any = 1.0) -> tuple[Any, Any]:
        """(low, high) of a metric's band around `value` (scalars or arrays), widened by `widen` (>= 1)."""
        v, w = np.asarray(value, dtype=float), np.asarray(widen, dtype=float)
        lo, hi = self.low_ratio / w, self.high_ratio * w
        if metric in TIME_METRICS:
            return v / hi, v / lo
        return v * lo, v * hi


def rate_ratio(measured: Any, predicted: Any, metric: Any) -> np.ndarray:
    """measured / predicted for rates, predicted / measured for times (elementwise)."""
    m, p = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    is_time = np.isin(np.asarray(metric, dtype=object), list(TIME_METRICS))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(is_time, p / m, m / p)


def fit_table(rows: "Any") -> list[dict[str, Any]]:
    """Band entries from a DataFrame of held-out rows with columns device_class, engine, category, ratio: one entry
    per group at each level of the fallback (class+engine+category, engine+category, category) with MIN_ROWS rows
    or more."""
    out = []
    d = rows[np.isfinite(rows.ratio) & (rows.ratio > 0)]
    d = d.assign(stack=np.where(d.engine.isin(UNFITTED), d.engine, "fitted"))
    for keys in LEVELS:
        for name, g in d.groupby(list(keys)):
            name = name if isinstance(name, tuple) else (name,)
            if len(g) < MIN_ROWS or ("file" in g and g.file.nunique() < MIN_SOURCES):
                continue
            lo, hi = np.quantile(g.ratio.to_numpy(), QUANTILES)
            out.append({**dict(zip(keys, name)), "low_ratio": float(lo), "high_ratio": float(hi), "rows": len(g)})
    return out


def lookup(table: list[dict[str, Any]], device_class: str, engine: str, category: str) -> Band | None:
    """The most specific band of the table for a group, or None."""
    stack = engine if engine in UNFITTED else "fitted"
    for want in ({"device_class": device_class, "engine": engine, "category": category},
                 {"engine": engine, "category": category}, {"stack": stack, "category": category}):
        for e in table:
            if all(e.get(k) == v for k, v in want.items()) and set(e) - {"low_ratio", "high_ratio", "rows"} == set(
                    want):
                return Band(e["low_ratio"], e["high_ratio"], e["rows"], "/".join(want.values()))
    return None


@lru_cache(maxsize=256)
def band_for(device_class: str, engine: str, category: str) -> Band | None:
    """The band of the shipped table (workloads/bands.toml) for a group, looked up once per process."""
    return lookup(_table(), device_class, engine, category)


@lru_cache(maxsize=1)
def _table() -> list[dict[str, Any]]:
    from .catalog import data_roots

    for root in data_roots():
        path = root / "workloads" / "bands.toml"
        if path.is_file():
            with open(path, "rb") as f:
                return list(tomllib.load(f).get("bands", []))
    return []


def widening(log_factor: Any) -> Any:
    """exp(sum of share x ln(1 + u)) (Evaluation.widening_log): the factor both band ends move out by."""
    return np.exp(np.asarray(log_factor, dtype=float))


def write_table(entries: list[dict[str, Any]], path: Path, header: str) -> Path:
    """Write the band table as TOML, atomically."""
    from ._io import atomic_write_text

    lines = [f"# {line}" if line else "#" for line in header.splitlines()] + [""]
    for e in entries:
        lines.append("[[bands]]")
        for k, v in e.items():
            lines.append(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {_num(v)}")
        lines.append("")
    text = "\n".join(lines).replace("'", '"')
    return atomic_write_text(path, text)


def _num(v: float) -> str:
    return str(int(v)) if isinstance(v, int) else f"{v:.4f}" if math.isfinite(v) else "nan"


# Bands of one evaluation -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A metric's band over scenarios (arrays): low, high, the band it came from (its basis and rows) and the factor
    estimated figures widened it by."""

    low: Any
    high: Any
    rows: int
    basis: str
    widened: Any
    coverage: float = COVERAGE


def intervals(ev: Any, device_class: str, engine: str, widen_log: dict[str, Any]) -> dict[str, Interval]:
    """The band of every metric of an evaluation (perfmodel.estimate.Evaluation).

    Phase metrics take the band of their own family (decode, prefill). Whole-request metrics (batch throughput, end-
    to-end latency) take the engine's own serving band where its rows have one; otherwise (e.g. llama.cpp, whose
    sources measure phases, not requests) they are composed from the phase bands: e2e low = TTFT low + decode time
    low, and so on, which covers at least the phases' 80 % when their errors move together and more when they do not.
    """
    m = ev.metrics
    out: dict[str, Interval] = {}
    for metric in ("ttft_s", "prefill_tokens_per_s", "tpot_s", "decode_tokens_per_s"):
        category = METRIC_CATEGORY[metric]
        band = band_for(device_class, engine, category)
        if band is None:
            continue
        w = widening(np.maximum.reduce([widen_log[ph] for ph in PHASE_OF[category]]))
        lo, hi = band.apply(np.asarray(m[metric], dtype=float), metric, w)
        out[metric] = Interval(lo, hi, band.rows, band.basis, w)
    serving = band_for(device_class, engine, "serving")
    own = serving is not None and not serving.basis.startswith(("fitted/", "default/", "ideal/"))
    if own or engine in UNFITTED:
        for metric in ("throughput_tokens_per_s", "e2e_latency_s"):
            if serving is None:
                continue
            w = widening(np.maximum(widen_log["prefill"], widen_log["decode"]))
            lo, hi = serving.apply(np.asarray(m[metric], dtype=float), metric, w)
            out[metric] = Interval(lo, hi, serving.rows, serving.basis, w)
    elif "ttft_s" in out and "tpot_s" in out:
        steps = np.asarray(ev.decode.steps, dtype=float)
        tpot_lo, tpot_hi = (np.nan_to_num(np.asarray(x, dtype=float)) for x in (out["tpot_s"].low,
                                                                              out["tpot_s"].high))
        e2e = np.asarray(m["e2e_latency_s"], dtype=float)
        # the metric minus its two phases' central values plus their ends (host time per step rides along)
        rest = e2e - np.asarray(m["ttft_s"], dtype=float) - steps * np.nan_to_num(np.asarray(m["tpot_s"], dtype=float))
        lo = rest + np.asarray(out["ttft_s"].low) + steps * tpot_lo
        hi = rest + np.asarray(out["ttft_s"].high) + steps * tpot_hi
        basis = f"{out['ttft_s'].basis} + {out['tpot_s'].basis}"
        rows = min(out["ttft_s"].rows, out["tpot_s"].rows)
        w = np.maximum(out["ttft_s"].widened, out["tpot_s"].widened)
        out["e2e_latency_s"] = Interval(lo, hi, rows, basis, w)
        tokens = np.asarray(ev.batch, dtype=float) * np.asarray(ev.gen, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["throughput_tokens_per_s"] = Interval(tokens / hi, tokens / lo, rows, basis, w)
    return out
