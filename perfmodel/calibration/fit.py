"""Fit the efficiencies the cost model uses from measured kernels.

Memory levels: per level, the bandwidth the add stream reaches on working sets that level holds.
Kernel classes: per (class, precision), the saturating roofline the cost model evaluates,

    t = t0 + max(FLOPs / R, bytes / (e x BW_level(working set)))

with a per-call overhead t0, an attained compute rate R, and e, the fraction of the level's streaming bandwidth the
class reaches. Time is linear in the work above t0, so attained throughput saturates with size. Parameters are fitted
in log space (relative error) with a small Nelder-Mead search; no SciPy needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..efficiency import rate_at_rows

if TYPE_CHECKING:
    import pandas as pd

Levels = Sequence[tuple[str, float]]  # (name, capacity bytes), fastest first

# Physical bounds a fitted profile must respect (Calibrator.violations):
# - A class streams at most 2x what the add stream (a = b + c) counts at the same level (or on a footprint as large,
#   where that is faster: Calibrator.fit): the add stream counts three
#   arrays but the hardware moves four (write-allocate reads the destination first), so a read-only kernel can reach
#   4/3 of the counted rate, and a level is assigned by the reported cache sizes, which victim and non-inclusive
#   caches exceed (a read-only GEMV reached 1.52x here); twice the level's rate is beyond both.
EFF_MAX = 2.0
# - An attained rate at most 10 % above the device's stated peak (that peak is taken at a sustained clock; short
#   bursts may run at a higher boost clock).
RATE_SLACK = 1.10
# - A fixed per-call time no longer than 1.5x the fastest call of its class took: it is part of every call, and
#   the fit's error on the shortest calls stays well within half of their time on a quiet machine.
OVERHEAD_SLACK = 1.5


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 0.5, iters: int = 400,
                tol: float = 1e-10) -> np.ndarray:
    """Minimise f from x0 (a plain Nelder-Mead simplex)."""
    n = len(x0)
    simplex = [np.asarray(x0, dtype=float)] + [np.asarray(x0, dtype=float) + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if abs(values[-1] - values[0]) < tol:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        worst = simplex[-1]
        xr = centroid + (centroid - worst)
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2 * (centroid - worst)
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (worst - centroid)
            fc = f(xc)
            if fc < values[-1]:
                simplex[-1], values[-1] = xc, fc
            else:
                best = simplex[0]
                simplex = [best] + [best + 0.5 * (x - best) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


def footprint(df: "pd.DataFrame") -> np.ndarray:
    """Bytes a kernel cycled through while timed (its working set times the buffer sets rotated to defeat the
    caches): what decides the memory level that served it."""
    return (df["footprint"] if "footprint" in df else df["working_set"]).to_numpy()


def level_of(working_set: np.ndarray, levels: Levels) -> np.ndarray:
    """Name of the fastest level holding each working set (the last level holds everything else)."""
    names = np.array([n for n, _ in levels], dtype=object)
    idx = np.full(len(working_set), len(levels) - 1)
    for i in range(len(levels) - 2, -1, -1):
        idx = np.where(np.asarray(working_set) <= levels[i][1], i, idx)
    return names[idx]


class Calibrator:
    """Fit a profile from measurements (a DataFrame as `perfmodel.calibration.run_suite` returns).

    >>> cal = Calibrator(levels=[("L2", 1 << 20), ("DRAM", 16e9)]).fit(measurements)
    >>> cal.bandwidth_, cal.rate_, cal.overhead_
    """

    def __init__(self, levels: Levels, peaks: dict[str, float] | None = None,
                 level_limits: dict[str, float] | None = None):
        """`peaks`: the device's stated peak FLOP/s per precision (fp32, bf16, ...), and `level_limits`: stated
        bandwidths per level name, both bounds the fitted values are checked against (violations())."""
        self.levels = list(levels)
        self.peaks = dict(peaks or {})
        self.level_limits = dict(level_limits or {})

    def fit(self, df: "pd.DataFrame") -> "Calibrator":
        streams = df[df.cls.str.startswith("stream.")]
        if streams.empty:
            raise ValueError("no stream measurements to fit memory bandwidth from")
        adds = streams[streams.cls == "stream.add"]
        self.stream_overhead_s_, self.bandwidth_ = self._fit_levels(adds if len(adds) else streams)
        rereads = streams[streams.cls == "stream.reread"]
        if len(rereads):
            # caches, from buffers re-read within one call (Torch): what the level delivers to every thread, with
            # no call per pass; the add stream's single passes over a cache take less than the call's overhead
            lv = level_of(footprint(rereads), self.levels)
            t, b = rereads.time_s.to_numpy(), rereads.bytes.to_numpy()
            for name in set(lv) - {self.levels[-1][0]}:
                here = lv == name
                self.bandwidth_[name] = float(np.median(b[here] / np.maximum(t[here] - self.stream_overhead_s_,
                                                                              1e-12)))
        self.measured_levels_ = set(self.bandwidth_)  # the others inherit a slower level's (too small to time)
        # levels without their own streams (too small to time) inherit the next slower level's bandwidth
        known = [n for n, _ in self.levels if n in self.bandwidth_]
        if not known:
            raise ValueError("no stream measurements to fit memory bandwidth from")
        order = [n for n, _ in self.levels]
        for name in reversed(order):
            if name not in self.bandwidth_:
                slower = [n for n in known if order.index(n) > order.index(name)]
                self.bandwidth_[name] = self.bandwidth_[slower[0]] if slower else self.bandwidth_[known[-1]]
        self.bandwidth_ = {n: self.bandwidth_[n] for n in order}
        self.rate_: dict[str, float] = {}
        self.mem_eff_: dict[str, float] = {}
        self.overhead_: dict[str, float] = {}
        self.rows_half_: dict[str, float] = {}
        self.rate_by_rows_: dict[str, list[tuple[float, float]]] = {}
        self.binds_: dict[str, tuple[bool, bool]] = {}  # (compute binds some kernel, memory binds some kernel)
        self.fastest_s_: dict[str, float] = {}
        # per class, the fastest streaming its calls showed, as a fraction of their level's measured bandwidth: bytes
        # over the time beyond the fixed part, on levels that were measured (not inherited), from calls at least
        # twice as long as that fixed part (shorter ones say little about streaming)
        self.stream_ratio_: dict[str, float] = {}
        # ... against the larger of the level's bandwidth and what the add stream reached on a footprint as large
        # (log-interpolated): a footprint a little above a cache's stated size still partly hits in it (victim and
        # non-inclusive caches), for the add stream as for the kernel, and the two then see the same share of it
        s_fp = footprint(adds) if len(adds) else np.zeros(0)
        order_fp = np.argsort(s_fp)
        s_fp = s_fp[order_fp]
        s_bw = (adds.bytes.to_numpy() / np.maximum(adds.time_s.to_numpy() - self.stream_overhead_s_, 1e-30))[order_fp] \
            if len(adds) else np.zeros(0)
        kernels = df[~df.cls.isin(("stream.add", "stream.reread", "allreduce"))]
        for (cls, dt), rows in kernels.groupby(["cls", "dtype"]):
            key = f"{cls}.{dt}"
            t0, rate, eff, half = self._fit_class(rows, saturate_rows=cls == "gemm")
            self.rate_[key], self.mem_eff_[key], self.overhead_[key] = rate, eff, t0
            fp = footprint(rows)
            bw = self._bw(fp)
            self.binds_[key] = self._sides(rows, bw, rate, eff, half)
            t = rows.time_s.to_numpy()
            self.fastest_s_[key] = float(t.min())
            ok = (t - t0 >= 0.5 * t) & np.isin(level_of(fp, self.levels), list(self.measured_levels_))
            near = np.interp(np.log(fp), np.log(s_fp), s_bw) if len(s_fp) > 1 else np.zeros_like(bw)
            ratio = rows.bytes.to_numpy() / (np.maximum(t - t0, 1e-30) * np.maximum(bw, near))
            self.stream_ratio_[key] = float(ratio[ok].max()) if ok.any() else 0.0
            if half:
                self.rows_half_[key] = half
                table = self._rate_by_rows(rows, t0)
                if table:
                    self.rate_by_rows_[key] = table
        return self

    @staticmethod
    def _sides(rows: "pd.DataFrame", bw: np.ndarray, rate: float, eff: float, half: float) -> tuple[bool, bool]:
        """(compute binds some call, memory binds some call) under the fitted parameters (`bw`: each call's level)."""
        f, b = rows.flops.to_numpy(), rows.bytes.to_numpy()
        m = rows["rows"].to_numpy() if "rows" in rows else np.zeros(len(rows))
        r = rate * m / (m + half) if half else np.full(len(rows), rate)
        comp, mem = f / r, b / (eff * bw)
        return bool(np.any((comp >= mem) & (f > 0))), bool(np.any(mem > comp))

    def violations(self) -> list[str]:
        """What in the fitted profile breaks a physical bound, one sentence each (empty: none). A value only the
        noise of the run could produce; a profile with any is not to be trusted."""
        out = []
        # (Levels are not compared with one another: cache-sized streams run on fewer threads than DRAM-sized ones,
        # NumPy's on one core, so a private cache can measure below a shared level or below main memory.)
        for name, bw in self.bandwidth_.items():
            limit = self.level_limits.get(name)
            if limit and bw > RATE_SLACK * limit:
                out.append(f"the {name} level measured {bw / 1e9:.1f} GB/s, above its stated {limit / 1e9:.1f} GB/s")
        for key in sorted(self.rate_):
            compute, memory = self.binds_.get(key, (True, True))
            dt = key.rsplit(".", 1)[1]
            peak = self.peaks.get(dt)
            rates = [self.rate_[key]] if compute and key not in self.rate_by_rows_ else []
            rates += [r for _, r in self.rate_by_rows_.get(key, [])]
            if peak and rates and max(rates) > RATE_SLACK * peak:
                out.append(f"{key} computes at {max(rates) / 1e9:.1f} GFLOP/s, {max(rates) / peak:.0%} of this "
                           f"device's {dt} peak ({peak / 1e9:.1f} GFLOP/s)")
            if self.stream_ratio_.get(key, 0.0) > EFF_MAX:
                out.append(f"{key} streamed at {self.stream_ratio_[key]:.0%} of the bandwidth the add stream measured "
                           f"at the same memory level (at most {EFF_MAX:.0%} is physical: write-allocate traffic)")
            t0, fastest = self.overhead_[key], self.fastest_s_.get(key, np.inf)
            if t0 > OVERHEAD_SLACK * fastest:
                out.append(f"{key} has a fixed {t0 * 1e6:.1f} us per call, more than its fastest call took "
                           f"({fastest * 1e6:.1f} us)")
        return out

    def _rate_by_rows(self, rows: "pd.DataFrame", t0: float) -> list[tuple[float, float]]:
        """GEMM rate at each measured row count: total FLOPs over total time less overhead of its shapes (the rate
        a model running those shapes in turn sees; one slow shape, e.g. a vocabulary projection, weighs by its
        time), from the shapes whose compute side binds (their rate is what the time shows), made non-decreasing in
        rows by pooling adjacent violators (a BLAS picks kernels by shape, so measured rates are not smooth in rows,
        but a GEMM with more rows is not slower per FLOP). The cost model interpolates in log(rows)."""
        f, b, t = rows.flops.to_numpy(), rows.bytes.to_numpy(), rows.time_s.to_numpy()
        m = rows["rows"].to_numpy()
        busy = t - t0
        ok = (busy > 0) & (b / self._bw(footprint(rows)) < 0.8 * np.maximum(busy, 1e-30))
        ms = sorted(set(m[ok]))
        if len(ms) < 2:
            return []
        blocks = [[float(np.log(f[ok & (m == v)].sum() / busy[ok & (m == v)].sum())), int((ok & (m == v)).sum()), 1]
                  for v in ms]  # [log rate, weight, rows pooled]
        out: list[list[float]] = []
        for blk in blocks:  # pool adjacent violators
            out.append(blk)
            while len(out) > 1 and out[-2][0] > out[-1][0]:
                (a, wa, na), (c, wc, nc) = out[-2], out[-1]
                out[-2:] = [[(a * wa + c * wc) / (wa + wc), wa + wc, na + nc]]
        levels = [v for lv, _, n in out for v in [lv] * n]
        return [(float(v), float(np.exp(lv))) for v, lv in zip(ms, levels)]

    def _fit_levels(self, rows: "pd.DataFrame") -> tuple[float, dict[str, float]]:
        """t = t0 + bytes / BW_level on the add stream (a = b + c, STREAM's triad without the scalar): one shared
        per-call overhead and one bandwidth per level, by least squares on relative error over calls that take at
        least twice the shortest one (shorter ones are mostly overhead). The overhead is then held within
        [0, shortest call] (with one call per level the system is nearly singular and noise can push it anywhere)
        and each level's bandwidth refitted at that overhead. Copy and read (a reduction) are fitted as kernel
        classes like the others."""
        t, b = rows.time_s.to_numpy(), rows.bytes.to_numpy()
        lv = level_of(footprint(rows), self.levels)
        use = t >= 2 * t.min()
        names = [n for n, _ in self.levels if (use & (lv == n)).any()]
        if not names:
            raise ValueError("every stream measurement was too short to measure bandwidth")
        a = np.column_stack([np.ones(use.sum())] + [np.where(lv[use] == n, b[use], 0.0) for n in names])
        coef, *_ = np.linalg.lstsq(a / t[use, None], np.ones(use.sum()), rcond=None)
        t0 = min(max(float(coef[0]), 0.0), float(t.min()))
        bw = {}
        for n in names:
            here = use & (lv == n)
            x, y = b[here] / t[here], (t[here] - t0) / t[here]
            inv = float(x @ y / (x @ x))
            bw[n] = 1.0 / inv if inv > 0 else float(np.median(b[here] / np.maximum(t[here] - t0, 1e-12)))
        return t0, bw

    def _bw(self, working_set: np.ndarray) -> np.ndarray:
        return np.array([self.bandwidth_[n] for n in level_of(working_set, self.levels)])

    def _fit_class(self, rows: "pd.DataFrame", saturate_rows: bool = False) -> tuple[float, float, float, float]:
        """(t0, rate, memory fraction, rows_half); rows_half is 0 unless the rate saturates with GEMM rows:
        rate(m) = rate x m / (m + rows_half)."""
        f, b, t = rows.flops.to_numpy(), rows.bytes.to_numpy(), rows.time_s.to_numpy()
        m = rows["rows"].to_numpy() if "rows" in rows else np.zeros_like(t)
        bw = self._bw(footprint(rows))
        logt = np.log(t)
        saturate_rows = saturate_rows and np.all(m >= 1)

        # GEMMs with several rows: rate(m) saturates with m and the memory fraction is pinned at 1 (both would
        # explain small-m slowness equally well, so fitting both is unstable; single-row GEMV is its own class).
        def unpack(p: np.ndarray) -> tuple[float, float, float, float]:
            if saturate_rows:
                return float(np.exp(p[0])), float(np.exp(p[1])), 1.0, float(np.exp(p[2]))
            return float(np.exp(p[0])), float(np.exp(p[1])), float(np.exp(p[2])), 0.0

        def predict(p: np.ndarray) -> np.ndarray:
            t0, rate, eff, half = unpack(p)
            if saturate_rows:
                rate = rate * m / (m + half)
            return t0 + np.maximum(f / rate, b / (eff * bw))

        def loss(p: np.ndarray) -> float:
            return float(np.mean((np.log(predict(p)) - logt) ** 2))

        x0 = [max(0.5 * t.min(), 1e-9), max(np.max(f / t), 1.0)]
        x0.append(8.0 if saturate_rows else max(np.max(b / (t * bw)), 1e-6))
        best = nelder_mead(loss, np.log(x0))
        best = nelder_mead(loss, best, step=0.1)  # restart: Nelder-Mead stalls easily
        t0, rate, eff, half = unpack(best)
        # A side that never binds in the data is not identified by it. Compute: cap the rate where it still never
        # binds (4x the best observed), so profiles hold readable numbers. Memory: assume the class streams at the
        # level's full measured bandwidth (fraction 1) unless the data showed it binding lower; e.g. prefill SDPA
        # never binds on memory, and a low guess would make decode attention (all KV, few FLOPs) far too slow.
        if saturate_rows:
            return t0, rate, eff, half
        if not np.any(b / (eff * bw) >= f / rate):
            # memory never binds: the fraction is only bounded below, by the fastest streaming the calls showed;
            # the level's full bandwidth (1) unless they streamed faster
            busy = t - t0
            needed = float(np.max(b[busy > 0] / (bw[busy > 0] * busy[busy > 0]))) if np.any(busy > 0) else 0.0
            eff = max(1.0, needed)
        if not np.any(f / rate >= b / (eff * bw)):
            rate = min(rate, 4 * float(np.max(f / t))) if np.any(f > 0) else rate
        eff = min(eff, 4 * float(np.max(b / (t * bw)))) if np.any(b / (eff * bw) >= f / rate) else eff
        return t0, rate, eff, half

    def predict(self, df: "pd.DataFrame") -> np.ndarray:
        """Predicted seconds per call for each measurement row."""
        out = np.empty(len(df))
        m_all = df["rows"].to_numpy() if "rows" in df else np.zeros(len(df))
        for i, (cls, dt, f, b, ws) in enumerate(zip(df.cls, df.dtype, df.flops, df.bytes, footprint(df))):
            bw = self._bw(np.array([ws]))[0]
            if cls in ("stream.add", "stream.reread"):
                out[i] = self.stream_overhead_s_ + b / bw
            elif f"{cls}.{dt}" not in self.rate_:  # a class fitted elsewhere (the all-reduce)
                out[i] = np.nan
            else:
                key = f"{cls}.{dt}"
                rate = self.rate_[key]
                if key in self.rate_by_rows_:
                    rate = float(rate_at_rows(self.rate_by_rows_[key], m_all[i]))
                elif key in self.rows_half_:
                    rate *= m_all[i] / (m_all[i] + self.rows_half_[key])
                out[i] = self.overhead_[key] + max(f / rate, b / (self.mem_eff_[key] * bw))
        return out
