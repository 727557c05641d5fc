"""Requests a server receives: arrival times and prompt / output lengths, drawn from a process or read from a trace.

Arrivals: Poisson (exponential gaps at `rate` requests/s) or gamma (gaps of coefficient of variation `cv`: burstier
than Poisson above 1, smoother below), or every request at time 0 (an offline batch). Lengths: `fixed:N`,
`uniform:LO:HI` (integers, both ends included), `normal:MEAN:STD` and `lognormal:MEDIAN:SIGMA` (rounded, at least 1),
or the column of a trace. A trace is a CSV or Parquet file with columns `arrival_s`, `prompt_tokens`,
`output_tokens` and optionally `prefix_tokens` (a shared prefix already in the engine's prefix cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PerfmodelError

DISTRIBUTIONS = ("fixed", "uniform", "normal", "lognormal")


@dataclass(frozen=True, eq=False)
class Requests:
    """Requests sorted by arrival: arrays of one length."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_tokens: np.ndarray  # prompt tokens found in the prefix cache (no prefill work)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def scaled(self, factor: float) -> "Requests":
        """The same requests arriving `factor` times faster (arrival times divided by it)."""
        return Requests(self.arrival_s / factor, self.prompt_tokens, self.output_tokens, self.prefix_tokens)

    def at_once(self) -> "Requests":
        """The same requests, every one sent at time 0 (an offline batch: what saturates the engine)."""
        return Requests(np.zeros(len(self)), self.prompt_tokens, self.output_tokens, self.prefix_tokens)

    def subset(self, idx: np.ndarray) -> "Requests":
        return Requests(self.arrival_s[idx], self.prompt_tokens[idx], self.output_tokens[idx],
                        self.prefix_tokens[idx])


def parse_dist(text: str | int, what: str) -> tuple[str, tuple[float, ...]]:
    """`fixed:N` (or just N), `uniform:LO:HI`, `normal:MEAN:STD`, `lognormal:MEDIAN:SIGMA` -> (kind, parameters)."""
    s = str(text).strip()
    kind, _, rest = s.partition(":")
    if not rest:
        kind, rest = "fixed", s
    kind = kind.lower()
    want = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2}
    if kind not in want:
        from ..errors import did_you_mean

        raise PerfmodelError(f"{what} must be fixed:N, uniform:LO:HI, normal:MEAN:STD or lognormal:MEDIAN:SIGMA; got "
                             f"{s!r}.{did_you_mean(kind, list(want))}")
    try:
        vals = tuple(float(x) for x in rest.split(":"))
    except ValueError:
        raise PerfmodelError(f"{what}: the parameters of {kind} must be numbers; got {rest!r}") from None
    if len(vals) != want[kind] or not all(math.isfinite(v) for v in vals):
        raise PerfmodelError(f"{what}: {kind} takes {want[kind]} finite number(s); got {rest!r}")
    if kind == "fixed" and vals[0] < 1:
        raise PerfmodelError(f"{what}: a fixed length must be at least 1 token; got {vals[0]:g}")
    if kind == "uniform" and not 1 <= vals[0] <= vals[1]:
        raise PerfmodelError(f"{what}: uniform:LO:HI needs 1 <= LO <= HI; got {rest!r}")
    if kind in ("normal", "lognormal") and (vals[0] <= 0 or vals[1] < 0):
        raise PerfmodelError(f"{what}: {kind} needs a centre > 0 and a spread >= 0; got {rest!r}")
    return kind, vals


def draw_lengths(spec: tuple[str, tuple[float, ...]], n: int, rng: np.random.Generator) -> np.ndarray:
    kind, v = spec
    if kind == "fixed":
        out = np.full(n, v[0])
    elif kind == "uniform":
        out = rng.integers(int(v[0]), int(v[1]) + 1, n).astype(float)
    elif kind == "normal":
        out = rng.normal(v[0], v[1], n)
    else:
        out = v[0] * np.exp(rng.normal(0.0, v[1], n))
    return np.maximum(np.rint(out), 1.0)


def synthetic(n: int, rate: float, prompt: str | int, gen: str | int, seed: int = 0, arrival: str = "poisson",
              cv: float = 1.0, prefix_hit: float = 0.0) -> Requests:
    """n requests at `rate` per second (inf: all at time 0) with lengths drawn from the `prompt` and `gen` specs.
    `prefix_hit`: the share of each prompt found in the prefix cache."""
    if n < 1:
        raise PerfmodelError(f"requests must be at least 1; got {n}")
    if not (rate > 0) or math.isnan(rate):
        raise PerfmodelError(f"rate must be > 0 requests/s; got {rate!r}")
    if not 0.0 <= prefix_hit < 1.0:
        raise PerfmodelError(f"prefix hit rate must be in [0, 1); got {prefix_hit!r}")
    rng = np.random.default_rng(seed)
    p = draw_lengths(parse_dist(prompt, "--prompt-dist"), n, rng)
    g = draw_lengths(parse_dist(gen, "--gen-dist"), n, rng)
    if math.isinf(rate):
        t = np.zeros(n)
    elif arrival == "poisson":
        t = np.cumsum(rng.exponential(1.0 / rate, n))
    elif arrival == "gamma":
        if not (cv > 0 and math.isfinite(cv)):
            raise PerfmodelError(f"--cv (the gaps' coefficient of variation) must be a finite number > 0; got {cv!r}")
        shape = 1.0 / cv**2  # gamma gaps of mean 1 / rate and CV cv: shape 1 / cv^2, scale cv^2 / rate
        t = np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), n))
    else:
        raise PerfmodelError(f"arrival must be poisson or gamma; got {arrival!r}")
    t -= t[0]  # the first request arrives at 0
    pre = np.floor(p * prefix_hit)
    return Requests(t, p, g, np.minimum(pre, p - 1))


TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


def shipped_traces() -> dict[str, Path]:
    """Traces that ship with perfmodel (workloads/traces), by name."""
    from ..catalog import data_roots

    out: dict[str, Path] = {}
    for root in data_roots():
        base = root / "workloads" / "traces"
        if base.is_dir():
            out.update({f.stem: f for f in sorted(base.glob("*.csv"))})
    return out


def read_trace(path: str | Path) -> Requests:
    """A request trace (CSV or Parquet): arrival_s, prompt_tokens, output_tokens[, prefix_tokens]; or the name of
    one that ships (shipped_traces(): `synthetic-chat`)."""
    import pandas as pd

    from ..scenarios import read_table

    p = Path(path)
    if not p.exists() and str(path) in shipped_traces():
        p = shipped_traces()[str(path)]
    df: pd.DataFrame = read_table(p)
    missing = [c for c in TRACE_COLUMNS if c not in df.columns]
    if missing:
        raise PerfmodelError(f"trace {p}: missing column(s) {', '.join(missing)}; a trace has arrival_s, "
                             f"prompt_tokens, output_tokens and optionally prefix_tokens; got "
                             f"{', '.join(map(str, df.columns))}")
    if df.empty:
        raise PerfmodelError(f"trace {p}: no rows")
    cols = {}
    for c in TRACE_COLUMNS + ("prefix_tokens",):
        if c not in df:
            continue
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(v) | (v < (1 if c in ("prompt_tokens", "output_tokens") else 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            need = "a whole number >= 1" if c in ("prompt_tokens", "output_tokens") else "a finite number >= 0"
            raise PerfmodelError(f"trace {p}, row {i + 1}: {c} must be {need}; got {df[c].iloc[i]!r}")
        cols[c] = v
    order = np.argsort(cols["arrival_s"], kind="stable")
    pre = cols.get("prefix_tokens", np.zeros(len(df)))
    prompt = np.rint(cols["prompt_tokens"][order])
    t = cols["arrival_s"][order]
    return Requests(t - t[0], prompt, np.rint(cols["output_tokens"][order]),
                    np.minimum(np.rint(pre[order]), prompt - 1))
