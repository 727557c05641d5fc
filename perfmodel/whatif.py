"""What-if studies: devices with changed parameters (derived peaks recomputed), the elasticity of tokens/s to each
parameter, the change needed to reach a target, and the latency-throughput Pareto front across batch sizes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import PerfmodelError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

    from .device import Device
    from .efficiency import Efficiency
    from .evaluate import Workload
    from .model import ModelSpec

# What `scaled` can change. Factors multiply; the others set a value.
FACTORS = {
    "memory_bandwidth": "main-memory bandwidth",
    "compute": "every compute peak (matrix and vector)",
    "matrix": "matrix-unit peaks",
    "vector": "vector-unit peaks",
    "cache": "capacity of every cache level",
    "capacity": "main-memory capacity",
    "interconnect": "device-to-device link bandwidth",
}
SETTINGS = {
    "units": "cores / SMs (peaks derived per unit scale with them; quoted peaks are scaled in proportion)",
    "clock_ghz": "the clock peaks are derived at (quoted peaks are scaled in proportion)",
    "simd_width_bits": "vector width: vector FLOPs per cycle scale with it",
    "fma_units": "FMA units per core: vector FLOPs per cycle scale with them",
    "memory_channels": "DRAM channels (bandwidth = channels x MT/s x bus width)",
    "memory_mt_per_s": "DRAM transfer rate",
    "memory_gb_per_s": "main-memory bandwidth, set outright (e.g. HBM in place of DDR)",
    "matrix_engine": "a matrix unit: {precision: FLOPs per cycle per unit}, or a catalog device id to copy it from",
}
# Parameters `sensitivity` and `solve` vary by default: each is a factor on something a designer can change.
SENSITIVITY_PARAMS = ("memory_bandwidth", "compute", "units", "clock_ghz", "cache")


def scaled(device: "Device | str", name: str | None = None, **changes: Any) -> "Device":
    """A copy of `device` with changed parameters; everything derived from them (CPU peaks = cores x clock x
    FLOPs/cycle, DRAM bandwidth = channels x MT/s x width, per-core cache sizes) is recomputed at load.

    >>> scaled("xeon-8480plus", memory_bandwidth=2, units=112).peak_flops_per_s("vector", "fp32")  # twice the cores
    """
    from .catalog import load_device
    from .device import Device

    dev = load_device(device)
    known = {**FACTORS, **SETTINGS}
    for k in changes:
        if k not in known:
            raise PerfmodelError(f"unknown what-if parameter {k!r}.{did_you_mean(k, known)} Allowed: "
                                 f"{', '.join(known)}")
    d = dev.model_dump(exclude_none=True)
    proc = dict(d.get("processor") or {})
    comp = d.setdefault("compute", {})
    mem = [dict(m) for m in d["memory"]]

    def positive(key: str) -> float:
        v = changes[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise PerfmodelError(f"{key} must be a number > 0; got {v!r}")
        return float(v)

    def scale_peaks(unit: str, f: float, quoted_only: bool = False) -> None:
        c = comp.setdefault(unit, {})
        if not quoted_only and not (c.get("dense_tflops") or c.get("flops_per_cycle_per_unit")):
            # the file gives no peak of this unit (the ladder estimates them: e.g. a CPU's FMA pipes x SIMD width):
            # the copy holds the estimates, scaled, as its peaks
            from .provenance import COMPUTE_KEYS

            figs = {p: dev.figure(f"compute.{unit}.{p}") for p in COMPUTE_KEYS}
            c["dense_tflops"] = {p: fig.value / 1e12 for p, fig in figs.items() if fig is not None}
        keys = ("dense_tflops",) if quoted_only else ("dense_tflops", "flops_per_cycle_per_unit")
        for key in keys:
            c[key] = {p: v * f for p, v in (c.get(key) or {}).items()}

    # processor: units and clock (per-unit peaks follow by themselves; quoted peaks in proportion)
    new_proc = dict(proc)
    if "units" in changes:
        if not proc:
            raise PerfmodelError(f"{dev.id} has no [processor] section, so units cannot change")
        new_proc["units"] = int(positive("units"))
    if "clock_ghz" in changes:
        if not proc:
            raise PerfmodelError(f"{dev.id} has no [processor] section, so its clock cannot change")
        for k in ("all_core_clock_ghz", "base_clock_ghz", "max_clock_ghz"):
            new_proc.pop(k, None)
        new_proc["clock_ghz"] = positive("clock_ghz")
    if proc:
        from .device import Processor

        old_p = Processor(**proc)
        if "clock_ghz" in changes and old_p.matrix_clock_ghz:  # the clock held under a GEMM keeps its ratio
            new_proc["matrix_clock_ghz"] = new_proc["clock_ghz"] * old_p.matrix_clock_ratio
        new_p = Processor(**new_proc)
        f = (new_p.units / old_p.units) * ((new_p.peak_clock_hz / old_p.peak_clock_hz)
                                          if old_p.peak_clock_hz and new_p.peak_clock_hz else 1.0)
        if f != 1.0:
            for unit in ("matrix", "vector"):
                scale_peaks(unit, f, quoted_only=True)
        d["processor"] = new_proc
    # vector unit: width and FMA units
    for key, field in (("simd_width_bits", "simd_width_bits"), ("fma_units", "fma_units_per_core")):
        if key in changes:
            old = proc.get(field)
            if not old:
                raise PerfmodelError(f"{dev.id} does not give its {field}, so it cannot be scaled; set 'vector' "
                                     f"(a factor on its vector peaks) instead")
            new = int(positive(key))
            scale_peaks("vector", new / old)
            d["processor"][field] = new
    for unit in ("matrix", "vector"):
        if unit in changes:
            scale_peaks(unit, positive(unit))
    if "compute" in changes:
        for unit in ("matrix", "vector"):
            scale_peaks(unit, positive("compute"))
    if "matrix_engine" in changes:
        eng = changes["matrix_engine"]
        if isinstance(eng, str):
            src = load_device(eng)
            eng = dict(src.compute.matrix.flops_per_cycle_per_unit)
            if not eng:
                raise PerfmodelError(f"{src.id} gives no matrix FLOPs per cycle per unit to copy")
        if not isinstance(eng, dict) or not eng:
            raise PerfmodelError("matrix_engine must be {precision: FLOPs per cycle per unit} or a device id")
        comp.setdefault("matrix", {})["flops_per_cycle_per_unit"] = {k: float(v) for k, v in eng.items()}
        comp["matrix_units"] = True
    # memory: main memory is the last level
    main = mem[-1]
    if any(k in changes for k in ("memory_channels", "memory_mt_per_s")):
        if not (main.get("channels") and main.get("transfer_rate_mt_per_s")):
            raise PerfmodelError(f"{dev.id}'s main memory is not given as channels x MT/s; set memory_bandwidth "
                                 f"(a factor) or memory_gb_per_s instead")
        if "memory_channels" in changes:
            main["channels"] = int(positive("memory_channels"))
        if "memory_mt_per_s" in changes:
            main["transfer_rate_mt_per_s"] = positive("memory_mt_per_s")
        main.pop("bandwidth_gb_per_s", None)
    if "memory_gb_per_s" in changes:
        main["bandwidth_gb_per_s"] = positive("memory_gb_per_s")
    if "memory_bandwidth" in changes:  # a factor on the bandwidth as set so far (channels, MT/s or GB/s)
        bw = Device.model_validate({**d, "memory": mem}).main_memory.bandwidth_bytes_per_s
        main["bandwidth_gb_per_s"] = bw / 1e9 * positive("memory_bandwidth")
    if "capacity" in changes:
        f = positive("capacity")
        for k in [k for k in main if k.startswith("capacity_")]:
            main[k] = main[k] * f
    if "cache" in changes:
        f = positive("cache")
        for lv in mem[:-1]:
            for k in [k for k in lv if k.startswith("capacity_")]:
                lv[k] = lv[k] * f
    d["memory"] = mem
    if "interconnect" in changes:
        ic = dict(d.get("interconnect") or {})
        keys = [k for k in ("bandwidth_gb_per_s", "link_bandwidth_gb_per_s") if k in ic]
        if not keys:
            raise PerfmodelError(f"{dev.id} gives no interconnect bandwidth to scale")
        for k in keys:
            ic[k] = ic[k] * positive("interconnect")
        d["interconnect"] = ic
    desc = ", ".join(f"{k}={_fmt(v)}" for k, v in changes.items())
    d["id"] = f"{dev.id}+whatif"
    d["name"] = name or f"{dev.name} (what-if: {desc})"
    d["aliases"] = ()
    return Device.model_validate(d)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _base(device: "Device", param: str) -> float:
    """The current value of a setting (for relative changes)."""
    p = device.processor
    if param == "units":
        if p is None:
            raise PerfmodelError(f"{device.id} has no [processor] section")
        return float(p.units)
    if param == "clock_ghz":
        if p is None or not p.peak_clock_hz:
            raise PerfmodelError(f"{device.id} gives no clock")
        return p.peak_clock_hz / 1e9
    raise KeyError(param)


def vary(device: "Device", param: str, factor: float) -> "Device":
    """`device` with one parameter multiplied by `factor` (settings such as units are set to base x factor)."""
    if param in FACTORS:
        return scaled(device, **{param: factor})
    if param == "units":
        return scaled(device, units=max(1, round(_base(device, param) * factor)))
    if param == "clock_ghz":
        return scaled(device, clock_ghz=_base(device, param) * factor)
    raise PerfmodelError(f"cannot vary {param!r} by a factor; one of: {', '.join((*FACTORS, 'units', 'clock_ghz'))}"
                         f"{did_you_mean(param, (*FACTORS, 'units', 'clock_ghz'))}")


def _metrics(model, device, wl, eff) -> dict[str, float]:
    from .api import estimate

    est = estimate(model, device, wl, efficiency=eff, ignore_capacity=True)
    return {"prefill_tokens_per_s": est.prefill_tokens_per_s, "decode_tokens_per_s": est.decode_tokens_per_s,
            "throughput_tokens_per_s": est.throughput_tokens_per_s}


def sensitivity(model: "ModelSpec | str", device: "Device | str", workload: "Workload",
                efficiency: "Efficiency | None" = None, params: Sequence[str] = SENSITIVITY_PARAMS,
                step: float = 1.1) -> "pd.DataFrame":
    """Elasticity of tokens/s (prefill, decode, end-to-end throughput) to each parameter: d ln(tokens/s) /
    d ln(parameter), by a central difference over x step and / step. 1 means tokens/s scales with the parameter,
    0 that it does not depend on it. Parameters a device cannot vary get NaN and a note."""
    import pandas as pd

    from .catalog import load_device, load_model

    m, d = load_model(model), load_device(device)
    rows = []
    for p in params:
        try:
            up = _metrics(m, vary(d, p, step), workload, efficiency)
            dn = _metrics(m, vary(d, p, 1 / step), workload, efficiency)
            if p == "units":  # units are whole: use the factors actually applied
                b = _base(d, p)
                hi, lo = max(1, round(b * step)) / b, max(1, round(b / step)) / b
            else:
                hi, lo = step, 1 / step
            row = {"parameter": p, "what": FACTORS.get(p) or SETTINGS.get(p), "note": ""}
            for k in up:
                a, z = up[k], dn[k]
                row[k] = (math.log(a) - math.log(z)) / math.log(hi / lo) if a and z else float("nan")
        except PerfmodelError as e:
            row = {"parameter": p, "what": FACTORS.get(p) or SETTINGS.get(p), "note": str(e)}
        rows.append(row)
    cols = ["parameter", "prefill_tokens_per_s", "decode_tokens_per_s", "throughput_tokens_per_s", "what", "note"]
    return pd.DataFrame(rows).reindex(columns=cols)


def solve(model: "ModelSpec | str", device: "Device | str", workload: "Workload", target: float,
          metric: str = "decode_tokens_per_s", param: str = "memory_bandwidth",
          efficiency: "Efficiency | None" = None, max_factor: float = 1000.0) -> dict[str, Any]:
    """The smallest factor on `param` that brings `metric` to `target` (bisection in log space; tokens/s never
    falls as a resource grows). Returns the factor, the device and the estimate there, or raises naming what
    limits the metric when no factor up to `max_factor` reaches the target."""
    from .catalog import load_device, load_model

    m, d = load_model(model), load_device(device)
    allowed = ("prefill_tokens_per_s", "decode_tokens_per_s", "throughput_tokens_per_s")
    if metric not in allowed:
        raise PerfmodelError(f"metric must be one of: {', '.join(allowed)}; got {metric!r}"
                             f"{did_you_mean(metric, allowed)}")
    if not target > 0:
        raise PerfmodelError(f"target must be > 0; got {target!r}")

    def at(f: float) -> float:
        return _metrics(m, vary(d, param, f), workload, efficiency)[metric]

    now = at(1.0)
    lo, hi = (1.0, max_factor) if now < target else (1.0 / max_factor, 1.0)
    top = at(hi)
    if now < target and top < target:
        raise PerfmodelError(f"{param} x{max_factor:g} gives {top:,.1f} {metric}, short of {target:g}: something "
                             f"else bounds it (see sensitivity)")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if at(mid) >= target:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-4:
            break
    dev = vary(d, param, hi)
    return {"parameter": param, "factor": hi, "metric": metric, "target": target, "now": now,
            "reached": at(hi), "device": dev}


def batch_table(model: "ModelSpec | str", device: "Device | str", workload: "Workload",
                efficiency: "Efficiency | None" = None, batches: Sequence[int] | None = None) -> "pd.DataFrame":
    """TPOT, decode tokens/s, TTFT, the bound of decode and of its weight GEMMs, and whether it fits, for each batch
    size (one vectorised evaluation)."""
    import pandas as pd

    from .catalog import load_device, load_model
    from .evaluate import default_gen, evaluate

    m, d = load_model(model), load_device(device)
    gen = workload.gen_len if workload.gen_len is not None else default_gen(m)
    b = np.array(batches or [2 ** i for i in range(11)], dtype=float)
    ev = evaluate(m, d, workload, efficiency, b, np.full_like(b, workload.prompt_len), np.full_like(b, gen))
    fits = np.ones(len(b), dtype=bool) if ev.memory.fits is None else np.broadcast_to(ev.memory.fits, b.shape)
    gemm = np.array([op.kind.value == "matmul" for op in ev.decode.ops], dtype=bool)
    comp = ev.decode.values["compute_s"][gemm].sum(axis=0)
    mem = ev.decode.values["memory_s"][gemm].sum(axis=0)
    return pd.DataFrame({"batch": b.astype(int), "tpot_s": ev.metrics["tpot_s"],
                         "decode_tokens_per_s": b / ev.metrics["tpot_s"], "ttft_s": ev.metrics["ttft_s"],
                         "bound": ev.decode.bound(), "gemm_bound": np.where(comp >= mem, "compute", "memory"),
                         "fits": fits})


def knee(table: "pd.DataFrame") -> int | None:
    """The first batch at which decode's weight GEMMs are compute-bound: beyond it a larger batch costs time in
    proportion and buys little more throughput (attention may still be memory-bound on its KV cache)."""
    hit = table[table.gemm_bound == "compute"]
    return int(hit.batch.iloc[0]) if len(hit) else None


def pareto(table: "pd.DataFrame", rel: float = 1e-3) -> "pd.DataFrame":
    """The batches no other batch beats on both TPOT (lower) and decode tokens/s (higher), among those that fit; a
    batch must add more than `rel` (0.1 %) to the tokens/s of the faster ones to count."""
    t = table[table.fits].sort_values(["tpot_s", "batch"])
    best = -np.inf
    keep = []
    for i, r in t.iterrows():  # at most a few dozen batch sizes
        if r.decode_tokens_per_s > best * (1 + rel):
            keep.append(i)
            best = r.decode_tokens_per_s
    return table.loc[keep].sort_values("batch")
