"""Roofline cost of an operator graph on a device.

Per op: time = max(FLOPs / attainable compute, sum over memory levels of bytes / attainable bandwidth) + overhead;
communication ops cost a ring collective over the interconnect. Hierarchical: weights and KV cache are served by the
fastest memory level that holds the whole working set (weights + KV cache + activations, per device); an op's
activations by the fastest level that holds them (producer-consumer reuse). A level with no sourced bandwidth is
skipped. Everything is vectorised over scenarios (NumPy arrays).

Decode time is summed exactly over the growing KV cache: within a stretch of contexts where every byte and FLOP count
is linear in the context c (split at sliding-window sizes), each op costs max(u0 + u1 c, v0 + v1 c), whose sum over
integer c has a closed form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .device import Device
from .dtypes import COMPUTE_FALLBACK, DType
from .efficiency import Efficiency, rate_at_rows
from .errors import PerfmodelError
from .graph import MATRIX_KINDS, Comm, Num, Op, OpKind, Parallel

IDEAL = Efficiency(matrix=1, vector=1, memory=1, interconnect=1)
# Kernel classes of a calibration profile, per op kind; elementwise ops split by role (op name suffix).
CLASS_OF_KIND = {OpKind.MATMUL: "gemm", OpKind.ATTENTION: "attention", OpKind.ELEMENTWISE: "elementwise",
                 OpKind.EMBEDDING: "elementwise", OpKind.NORM: "norm", OpKind.COMM: "comm"}
_ROLE_CLASS = {"act": "activation", "softmax": "softmax"}
# Kernels measured apart (e.g. a framework's RMSNorm and LayerNorm differ 2x on a CPU), with the general class to
# fall back on for a profile that lacks them.
_VARIANT_CLASS = {"rmsnorm": "rmsnorm", "layernorm": "layernorm", "silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu"}
_FALLBACK = {"attention": ("gemm",), "decode_attention": ("attention", "gemm"), "activation": ("elementwise",),
             "softmax": ("elementwise",), "gemv": ("gemm",),
             "silu": ("activation", "elementwise"), "gelu": ("activation", "elementwise"), "rmsnorm": ("norm",),
             "layernorm": ("norm",)}


_ONE_ROW_CLASS = {"gemm": "gemv", "attention": "decode_attention"}


def op_class(op: Op) -> str:
    """The calibration class an op is costed with: gemm, attention, elementwise, softmax, activation (silu, gelu)
    or norm (rmsnorm, layernorm)."""
    if op.kind == OpKind.ELEMENTWISE:
        cls = _ROLE_CLASS.get(op.name.rsplit(".", 1)[-1], "elementwise")
        return _VARIANT_CLASS.get(op.variant, cls) if cls == "activation" else cls
    if op.kind == OpKind.NORM:
        return _VARIANT_CLASS.get(op.variant, "norm")
    return CLASS_OF_KIND[op.kind]


@dataclass(frozen=True)
class Machine:
    """A device with efficiencies applied: attainable rates, ready for costing."""

    device: Device
    eff: Efficiency
    par: Parallel
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def _memo(self, key: tuple, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _level_table(self, datasheet: bool) -> list[tuple[float, float, str]]:
        """(capacity_bytes, bytes/s, name) for levels with a known bandwidth, fastest first. Attainable: calibrated
        where a profile measured the level, else datasheet x memory efficiency. Datasheet: as specified, measured
        where the datasheet gives none."""

        def make() -> list[tuple[float, float, str]]:
            out = []
            measured = self.eff.level_bandwidth_bytes_per_s
            for lv in self.device.levels:
                spec = lv.bandwidth_bytes_per_s
                if datasheet:
                    bw = spec if spec is not None else measured.get(lv.name)
                else:
                    bw = measured.get(lv.name, spec * self.eff.memory if spec is not None else None)
                if bw is not None:
                    cap = lv.capacity_bytes if lv.capacity_bytes is not None else np.inf
                    out.append((cap, bw, lv.name))
            cap_bw, name = out[-1][1], out[-1][2]
            proc, per_unit = self.device.processor, self.eff.unit_bytes_per_cycle
            if not datasheet and per_unit and proc and proc.peak_clock_hz and name not in measured:
                # kernels that keep too few loads in flight per SM/core cannot reach a bandwidth whose
                # latency x bandwidth product exceeds what the units hold (Little's law)
                cap_bw = min(cap_bw, per_unit * proc.units * proc.peak_clock_hz)
            out[-1] = (np.inf, cap_bw, name)  # main memory serves whatever does not fit above
            return out

        return self._memo(("levels", datasheet), make)

    @property
    def levels(self) -> list[tuple[float, float, str]]:
        """Attainable level table; see _level_table."""
        return self._level_table(datasheet=False)

    def bandwidth_for(self, nbytes: Num, datasheet: bool = False) -> np.ndarray:
        """Bandwidth of the fastest level holding `nbytes` (main memory if none does): attainable, or the
        datasheet's (for MBU)."""
        lv = self._level_table(datasheet)
        nbytes = np.asarray(nbytes, dtype=float)
        conds = [nbytes <= cap for cap, _, _ in lv[:-1]]
        return np.select(conds, [bw for _, bw, _ in lv[:-1]], default=lv[-1][1]) if conds else np.full_like(
            nbytes, lv[-1][1])

    def datasheet_bandwidth(self, nbytes: Num) -> np.ndarray:
        return self.bandwidth_for(nbytes, datasheet=True)

    def level_name_for(self, nbytes: float) -> str:
        for cap, _, name in self.levels:
            if nbytes <= cap:
                return name
        return self.levels[-1][2]

    def peak(self, kind: OpKind, dtype: DType, cls: str | None = None) -> tuple[float, str, str]:
        """(attainable FLOP/s, unit, precision) for an op kind at a dtype: the calibrated rate of its class where a
        profile has one (along COMPUTE_FALLBACK), else datasheet peak x efficiency."""
        def make() -> tuple[float, str, str]:
            cal = self.calibrated_key(kind, dtype, cls)
            if cal is not None:
                return self.eff.rate_flops_per_s[cal], "calibrated", cal.split(".")[1]
            return _peak(self.device, self.eff, kind in MATRIX_KINDS, dtype.compute)

        return self._memo(("peak", kind, dtype.compute, cls), make)

    def datasheet_peak(self, kind: OpKind, dtype: DType) -> float:
        """Datasheet peak (no efficiency) for MFU; the calibrated rate where the datasheet has none."""
        try:
            return _peak(self.device, IDEAL, kind in MATRIX_KINDS, dtype.compute)[0]
        except PerfmodelError:
            return self.peak(kind, dtype)[0]

    def calibrated_key(self, kind: OpKind, dtype: DType, cls: str | None = None, strict: bool = False) -> str | None:
        """The profile key ("<class>.<precision>") an op is costed with, or None; `strict`: no fallback class."""
        rates = self.eff.rate_flops_per_s
        if not rates:
            return None
        cls = cls or CLASS_OF_KIND[kind]

        def make() -> str | None:
            classes = (cls,) + (() if strict else _FALLBACK.get(cls, ()))
            for c in classes:
                for p in COMPUTE_FALLBACK[dtype.compute]:
                    if f"{c}.{p}" in rates:
                        return f"{c}.{p}"
            return None

        return self._memo(("key", cls, dtype.compute, strict), make)

    def memory_fraction(self, kind: OpKind, dtype: DType, cls: str | None = None) -> float:
        key = self.calibrated_key(kind, dtype, cls)
        return self.eff.memory_fraction.get(key, 1.0) if key else 1.0

    def overhead_for(self, kind: OpKind, dtype: DType, cls: str | None = None) -> float:
        key = self.calibrated_key(kind, dtype, cls)
        if key and key in self.eff.overhead_by_class_s:
            return self.eff.overhead_by_class_s[key]
        return self.overhead_s

    @property
    def overhead_s(self) -> float:
        if self.eff.op_overhead_s is not None:
            return self.eff.op_overhead_s
        return (self.device.op_overhead_us or 0.0) * 1e-6

    def comm_time(self, op: Op) -> Num:
        n = self.par.tp if op.comm in (Comm.ALL_REDUCE, Comm.ALL_GATHER) else 2
        link = self.device.interconnect
        # sourced, derived from the PCIe generation and lanes, or estimated from the launch year (provenance)
        bw = self.device.figure("interconnect.bandwidth").value * self.eff.interconnect
        lat = link.latency_us * 1e-6 if link is not None and link.latency_us else self.eff.interconnect_latency_s
        if op.comm == Comm.ALL_REDUCE:  # ring: reduce-scatter + all-gather, 2(N-1) steps
            return 2 * (n - 1) / n * op.comm_bytes / bw + 2 * (n - 1) * lat
        if op.comm == Comm.ALL_GATHER:
            return (n - 1) / n * op.comm_bytes / bw + (n - 1) * lat
        return op.comm_bytes / bw + lat


def _peak(device: Device, eff: Efficiency, matrix: bool, precision: str) -> tuple[float, str, str]:
    chain = COMPUTE_FALLBACK[precision]
    units = (("matrix", eff.matrix), ("vector", eff.vector)) if matrix else (("vector", eff.vector),)
    for unit, e in units:
        if unit == "vector" and matrix and not _may_use_vector_for_matmul(device, precision):
            continue  # the ladder already gave the matrix unit its vector rate as a stated lower bound, if any
        for p in chain:
            peak = device.peak_flops_per_s(unit, p, half_accumulate=eff.half_accumulate)
            if peak is not None:
                if unit == "matrix" and device.compute.async_mma:
                    e = e * eff.sync_mma_fraction
                return peak * e, unit, p
    unit = units[0][0]
    raise PerfmodelError(
        f"{device.id} has no figure for {unit} {precision} (or {', '.join(chain[1:]) or 'any fallback'}) and no rule "
        f"derives or estimates one: its file gives neither the peak nor its parts, and no sibling of its family "
        f"({device.family or 'none stated'}) does. Supply it in a spec file: compute.{unit}.dense_tflops.{precision} "
        f"(with its source), or [processor] units and clock_ghz with compute.{unit}.flops_per_cycle_per_unit."
        f"{precision}, or a `family` whose siblings give it"
    )


def _may_use_vector_for_matmul(device: Device, precision: str) -> bool:
    """CPUs run any GEMM on their SIMD units, and fp32 GEMMs run on GPU vector units (tensor cores do TF32, not
    FP32); narrower GEMMs fall back only on devices declared without matrix units (e.g. Apple GPUs)."""
    return device.kind == "cpu" or precision == "fp32" or not device.compute.matrix_units


@dataclass(frozen=True)
class Terms:
    """Per-instance cost terms of one op (arrays over scenarios)."""

    compute_s: Num
    memory_s: Num
    comm_s: Num
    unit: str
    precision: str
    overhead_s: float = 0.0


def op_terms(op: Op, mach: Machine, resident_bw: Num, act_bw: Num) -> Terms:
    if op.kind == OpKind.COMM:
        return Terms(0.0, 0.0, mach.comm_time(op), "link", "-")
    cls = op_class(op)
    t = _class_terms(op, mach, resident_bw, act_bw, cls)
    one_row = _ONE_ROW_CLASS.get(cls)
    if one_row and mach.calibrated_key(op.kind, op.dtype, one_row, strict=True):
        # single-row products run a GEMV kernel, and one query per sequence a decode-attention kernel, each with
        # its own calibrated profile
        v = _class_terms(op, mach, resident_bw, act_bw, one_row)
        one = np.asarray(op.rows) <= 1 + 1e-9  # MoE: tokens / expected experts, up to rounding
        return Terms(np.where(one, v.compute_s, t.compute_s), np.where(one, v.memory_s, t.memory_s), 0.0, t.unit,
                     t.precision, np.where(one, v.overhead_s, t.overhead_s))
    return t


def _class_terms(op: Op, mach: Machine, resident_bw: Num, act_bw: Num, cls: str) -> Terms:
    peak, unit, prec = mach.peak(op.kind, op.dtype, cls)
    key = mach.calibrated_key(op.kind, op.dtype, cls)
    table = mach.eff.rate_by_rows.get(key) if key else None
    half = mach.eff.rows_half.get(key, 0.0) if key else 0.0
    if table:  # GEMM rate measured at several row counts, interpolated in log(rows)
        peak = rate_at_rows(table, op.rows)
    elif half:  # GEMM rate saturates with the number of rows: rate(m) = rate x m / (m + half)
        peak = _saturating(peak, op.rows, half)
    half_keys = mach.eff.attention_keys_half
    if half_keys and op.kind == OpKind.ATTENTION and unit != "calibrated" and np.any(np.asarray(op.keys) > 0):
        # a fused-attention tile loads its queries, then streams keys: the fixed per-tile work is amortised over
        # the keys each query sees (short or causal sequences run further from peak)
        peak = _saturating(peak, op.keys, half_keys)
    frac = mach.memory_fraction(op.kind, op.dtype, cls)
    memory = (op.resident_bytes / resident_bw + op.act_bytes / act_bw) / frac
    compute = op.flops / peak
    if unit != "calibrated" and np.any(np.asarray(op.scale_flops) > 0):
        # vector work serial with the matrix products (block scales of quantised GEMMs)
        vec = mach._memo(("vector fp32",), lambda: _peak(mach.device, mach.eff, False, "fp32")[0])
        compute = compute + op.scale_flops / vec
    sfu = mach.device.compute.special_function_tflops
    if sfu and unit != "calibrated" and np.any(np.asarray(op.exp_ops) > 0):
        # softmax's exponentials on the special-function units, in turn with the matrix work (FlashAttention-3:
        # on an H100 "exponential can take 50% of the cycle compared to matmul" at head dim 128), at the same
        # fraction of their peak as the matrix units reach of theirs
        eff = peak / mach.datasheet_peak(op.kind, op.dtype)
        compute = compute + op.exp_ops / (sfu * 1e12 * eff)
    # an op with nothing to do (e.g. a conversion only large batches need) launches no kernel
    work = np.asarray(op.flops) + np.asarray(op.bytes)
    overhead = np.where(work > 0, mach.overhead_for(op.kind, op.dtype, cls), 0.0)
    return Terms(compute, memory, 0.0, unit, prec, overhead if overhead.ndim else float(overhead))


def _saturating(rate: Num, x: Num, half: float) -> Num:
    """rate x / (x + half), x at least 1: a rate that approaches `rate` as x (rows, keys) grows."""
    x = np.maximum(np.asarray(x, dtype=float), 1.0)
    return rate * x / (x + half)


def point_cost(op: Op, t: Terms) -> dict[str, Num]:
    """Costs of one op evaluated at one point (e.g. prefill), counts applied."""
    overhead_s = t.overhead_s
    if op.kind == OpKind.COMM:
        time = t.comm_s
        return dict(compute_s=0.0, memory_s=0.0, comm_s=time * op.count, overhead_s=0.0, time_s=time * op.count,
                    compute_bound_s=0.0)
    body = np.maximum(t.compute_s, t.memory_s)
    return dict(compute_s=t.compute_s * op.count, memory_s=t.memory_s * op.count, comm_s=0.0,
                overhead_s=overhead_s * op.count, time_s=(body + overhead_s) * op.count,
                compute_bound_s=np.where(t.compute_s >= t.memory_s, t.compute_s, 0.0) * op.count)


def series(m: Num, n: Num, p: Num, q: Num) -> Num:
    """sum_{c=m..n} (p + q c); zero when n < m."""
    cnt = np.maximum(np.asarray(n, dtype=float) - m + 1, 0.0)
    return cnt * (p + q * (m + n) / 2.0)


def sum_max_linear(a: Num, b: Num, u0: Num, u1: Num, v0: Num, v1: Num) -> tuple[Num, Num]:
    """(sum over integer c in [a, b] of max(u, v), sum of u over the c where u >= v), u = u0 + u1 c, v = v0 + v1 c."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d0, d1 = np.asarray(u0 - v0, dtype=float), np.asarray(u1 - v1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = -d0 / d1
    # The set where d = d0 + d1 c >= 0 is an interval [lo, hi] of integers.
    lo = np.where(d1 > 0, np.ceil(root), -np.inf)
    hi = np.where(d1 < 0, np.floor(root), np.inf)
    flat = d1 == 0
    lo = np.where(flat, np.where(d0 >= 0, -np.inf, np.inf), lo)
    hi = np.where(flat, np.where(d0 >= 0, np.inf, -np.inf), hi)
    lo, hi = np.maximum(lo, a), np.minimum(hi, b)
    lo_f, hi_f = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, -1.0)
    total = series(a, b, v0, v1) + series(lo_f, hi_f, d0, d1)
    return total, series(lo_f, hi_f, u0, u1)
