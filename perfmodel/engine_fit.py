"""Fitting the engine profiles (workloads/engines/*.toml) on validation rows: the numbers fitted, their units,
bounds (the grids) and cited defaults, the pull toward those defaults, and the coordinate descent.
`tools/fit_engines.py` runs it on the train split, and per held-out source for leave-one-source-out.

Per engine and device class (gpu, apple, cpu, accelerator) the numbers of GRIDS, each a term of the cost model with a
physical reading (perfmodel/efficiency.py): fractions of matrix and (CPU) vector peak, memory and link bandwidth; a
per-kernel overhead; host time per forward pass and per sequence; a per-unit concurrency ceiling on main-memory
bandwidth; the key count at which fused attention reaches half its rate; and, for llama.cpp only, the fraction
synchronous MMA reaches on Hopper. They are chosen by coordinate descent over fixed grids to minimise the mean absolute
log error on the rows of that engine and class, each source weighing the square root of its rows (SOURCE_POWER), plus
a pull toward the cited defaults (prior_cost); facts written in a profile (half_accumulate) are kept.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .catalog import load_device
from .engines import EngineProfile, device_class, load_engine
from .validation import predict, profiles_of

# Coordinate descent visits the numbers in this order: a ceiling before the fraction it caps (unit_bytes_per_s before
# memory), so the fraction is fitted on the parts the ceiling leaves; visited the other way round, a fraction lowered
# to fit the capped parts first makes the ceiling look useless, and the descent stops in that local minimum
GRIDS = {
    "matrix": [round(float(x), 2) for x in np.arange(0.15, 1.001, 0.05)],
    "vector": [round(float(x), 2) for x in np.arange(0.15, 1.001, 0.05)],
    "blas_matrix": [None] + [round(float(x), 2) for x in np.arange(0.30, 1.001, 0.05)],
    "unit_bytes_per_s": [None, 2e9, 3e9, 4e9, 5e9, 6e9, 7e9, 8e9, 9e9, 10e9, 12e9, 14e9, 16e9, 20e9, 24e9, 32e9, 40e9,
                         48e9, 64e9],
    "memory": [round(float(x), 2) for x in np.arange(0.30, 1.001, 0.05)],
    "op_overhead_s": [0.0, 1e-6, 2e-6, 3e-6, 4e-6, 6e-6, 8e-6, 12e-6, 16e-6, 24e-6, 32e-6, 48e-6, 64e-6, 96e-6, 128e-6,
                      192e-6],
    "graph_op_overhead_s": [None, 0.0, 0.5e-6, 1e-6, 1.5e-6, 2e-6, 3e-6, 4e-6, 6e-6, 8e-6],
    "step_overhead_s": [0.0, 0.25e-3, 0.5e-3, 1e-3, 2e-3, 3e-3, 4e-3, 6e-3, 8e-3],
    "token_overhead_s": [0.0, 2e-6, 5e-6, 10e-6, 20e-6, 30e-6, 40e-6, 60e-6, 80e-6, 120e-6],
    "interconnect": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "sync_mma_fraction": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
    "attention_keys_half": [0.0, 16.0, 32.0, 64.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0, 2048.0],
    "gemm_rows_half": [0.0, 8.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0, 256.0],
}
START = {"matrix": 0.7, "vector": 0.7, "memory": 0.8, "op_overhead_s": 4e-6, "step_overhead_s": 0.0,
         "token_overhead_s": 0.0, "interconnect": 0.8, "sync_mma_fraction": 1.0, "attention_keys_half": 0.0,
         "unit_bytes_per_s": None, "gemm_rows_half": 0.0, "blas_matrix": None, "graph_op_overhead_s": None}
MIN_ROWS = 4
KERNEL_ENGINES = ("kernel", "fa2")
# numbers only some engines have: llama.cpp's CUDA kernels are written with synchronous MMA (mma.sync), while
# TensorRT-LLM, vLLM and SGLang ship Hopper kernels with wgmma; elsewhere these stay at their neutral START value
# and a host cost per sequence is told apart from one per pass only where batches exceed 1 (the serving stacks)
ONLY_FOR = {"sync_mma_fraction": ("llamacpp", "fa2"), "token_overhead_s": ("trtllm", "vllm"),
            "gemm_rows_half": ("llamacpp",), "blas_matrix": ("llamacpp",), "graph_op_overhead_s": ("llamacpp",)}
# numbers only some device classes have: a CPU runs its GEMMs on the vector units (AMX aside), where a GPU's vector
# fraction only scales its elementwise kernels, which the rows cannot tell apart from the memory fraction
CLASS_ONLY = {"vector": ("cpu",)}


# Each number's meaning, unit and cited default (the value it starts from and is pulled toward): the grids above are
# its bounds. Defaults "neutral" switch a term off; the rest are the literature values of perfmodel/efficiency.py.
PARAMS = {
    "matrix": ("fraction of the matrix units' datasheet peak", "1", "0.7: llm-analysis README, 'up to 0.7 for "
               "inference' (github.com/cli99/llm-analysis)"),
    "vector": ("fraction of the vector units' datasheet peak (fitted for CPUs only, whose GEMMs run there)", "1",
               "0.7: llm-analysis README, as matrix"),
    "memory": ("fraction of each memory level's datasheet bandwidth", "1", "0.8: Calculon A100/H100 HBM efficiency "
               "0.75-0.90 for 10-100 MB transfers (calculon-ai/calculon systems/a100_80g.json)"),
    "op_overhead_s": ("host/launch time per kernel", "s", "4 us: estimated, no datasheet gives it; below an eager "
                      "PyTorch op (LLMCompass's calibrated A100 overheads, 12-45 us per op, PrincetonUniversity/"
                      "LLMCompass hardware_model/compute_module.py), above zero for a graph-replayed kernel; "
                      "llama.cpp on Metal 10 us (CLASS_START: Metal's per-dispatch cost)"),
    "graph_op_overhead_s": ("time per kernel of a one-sequence decode step replayed from a CUDA graph (no host "
                            "launch: the gap between dependent kernels on the GPU)", "s",
                            "none: neutral (op_overhead_s, as without graphs); llama.cpp on GPUs 2 us (CLASS_START: "
                            "PR #6766's measured saving per kernel)"),
    "step_overhead_s": ("host time per forward pass", "s", "0: neutral"),
    "token_overhead_s": ("host time per sequence per step", "s", "0: neutral"),
    "interconnect": ("fraction of link bandwidth", "1", "0.8: NCCL maintainer, NVIDIA/nccl#1054"),
    "sync_mma_fraction": ("fraction synchronous mma.sync reaches where the peak needs wgmma", "1", "1: neutral; "
                          "FlashAttention-2 0.7 (CLASS_START: Hopper microbenchmarks, mma.sync against wgmma)"),
    "attention_keys_half": ("keys per query at which fused attention reaches half its rate", "keys", "0: neutral"),
    "gemm_rows_half": ("rows per weight-GEMM call (tokens, or tokens per expert) at which tiled GEMMs reach half their "
                       "rate (each weight tile loaded and unpacked once per tile of rows; GEMV kernels up to "
                       "cost.GEMV_ROWS rows are exempt)", "rows", "0: neutral"),
    "blas_matrix": ("fraction of the matrix peak of 16-bit GEMMs handed to the vendor's BLAS (cuBLAS, hipBLAS)", "1",
                    "none: neutral (the engine's own matrix fraction); llama.cpp on GPUs 0.8 (CLASS_START: what a tuned "
                    "library GEMM reaches)"),
    "unit_bytes_per_s": ("main-memory bytes per second per compute unit (Little's-law ceiling: bytes in flight over "
                         "a DRAM latency in ns)", "B/s", "none: neutral (no ceiling)"),
}
# Defaults that differ by engine and device class where a source measures the mechanism there, each with its
# citation (the rest of START holds). They are where a fit starts and what it is pulled toward (prior_cost), and the
# values a leave-one-source-out fold uses when too few rows are left to fit the class.
CLASS_START: dict[tuple[str, str], dict[str, float]] = {
    # Metal: a kernel encoded and dispatched costs ~10 us ("There is immense overhead to encode kernels on the CPU in
    # separate encoders or command buffers. This latency (~10 microseconds)", P. Turner, philipturner/
    # metal-flash-attention#18; "~378 Metal dispatches/token at 5-15us each", ohdearquant/lattice#172)
    ("llamacpp", "apple"): {"op_overhead_s": 10e-6},
    # FlashAttention-2 runs Ampere's synchronous mma.sync on Hopper, which reaches ~0.7 of what wgmma reaches: on an
    # H800 PCIe, dense FP16 mma.sync m16n8k16 494.4 TFLOP/s (65.3 % of 756.5) against wgmma m64n256k16 729.3
    # (96.4 %), 0.68 (Luo et al., "Dissecting the NVIDIA Hopper Architecture through Microbenchmarking and Multiple
    # Level Analysis", arXiv:2501.12084, section 6.2, as tabulated in waynehacking8/blackwell-tensorcore-kernels
    # VALIDATION.md); their suite rerun on an H100 SXM5, 713.7 against 976.6 per clock, 0.73 (Johnsonms/
    # NVIDIA-Hopper-Benchmark reproduction/H100-dapperdingo/raw/mma_m16n8k16.log and wgmma_fp16.log)
    ("fa2", "gpu"): {"sync_mma_fraction": 0.7},
    # cuBLAS/hipBLAS GEMMs (llama.cpp's FP16 path on CUDA and ROCm) reach what a tuned library GEMM reaches: mamf-finder's
    # best shapes, H100 SXM bf16 792 of 989.4 TFLOP/s (0.80; stas00/ml-engineering compute/accelerator/README.md, the
    # "Maximum Achievable Matmul FLOPS" table, as read into validation/kernel-mamf-ml-engineering.toml)
    # and CUDA graphs (PR #6766) replace a host launch per decode kernel by a replay: on LLaMA 2 7B, whose decode step
    # this model counts as ~420 kernels, the PR's tables save 0.87 ms per token on an H100 PCIe (Q4_K_M, 143.35 ->
    # 163.83 t/s, issue #6763), 0.80 ms on an RTX 3090 and 0.42 ms on an RTX 4090 (Q4_0 tg, 116.31 -> 128.27 and
    # 138.31 -> 146.81, JohannesGaessler's table in the PR): 1.0-2.1 us per kernel, so 2 us below START's 4 us launch
    ("llamacpp", "gpu"): {"blas_matrix": 0.8, "graph_op_overhead_s": 2e-6},
}


def start(engine: str | None = None, cls: str | None = None) -> dict:
    """The defaults of (engine, class): START with that pair's cited CLASS_START values."""
    return {**START, **CLASS_START.get((engine, cls), {})}


# Regularisation: a fit of n rows pays PRIOR_ROWS / n x |log((v + s) / (default + s))| per number moved from its
# default (s: the number's softening scale, so that a zero default can move): a factor e away from the default costs
# what PRIOR_ROWS rows each missed by a factor e would. A source with a handful of rows cannot drag a number far;
# hundreds of rows move it freely. 2 pseudo-rows per number: chosen so that the smallest groups fitted (4-10 rows)
# stay within a factor ~1.5 of the defaults unless every row agrees.
PRIOR_ROWS = 2.0
# The error a fit minimises weighs each row by n_source ^ -SOURCE_POWER (n_source: that source's rows in the fit):
# at 1 it is the mean over sources of each source's mean |log error|, at 0 the mean over rows. A source is one set of
# conditions (one lab's builds, drivers, clocks), so forty rows of one CI log are not forty independent pieces of
# evidence; but neither are they one, and at power 1 a three-row table of unstated prompt lengths (LM Studio's M4
# Max chat readouts) outvoted the 79 rows of llama.cpp's Apple Silicon scoreboard. At 0.5 a source counts as the
# square root of its rows (leave-one-source-out scores by source either way). Measured on the LOSO error (median /
# mean %, decode, prefill, serving, kernel), 6,131 rows of 117 sources: power 1 14.4/22.8, 17.3/34.5, 14.8/22.2,
# 17.3/28.7; power 0.75 13.7/22.9, 17.5/35.6, 15.1/21.9, 15.2/27.5; power 0.5 13.7/22.8, 17.3/34.9, 14.9/21.8,
# 15.2/27.5; power 0.25 14.2/25.2, 16.8/35.9, 14.8/21.7, 14.9/27.4. (On the 5,703 rows of the first wave: power 0
# 23.0/46.9, 25.5/49.6, 19.3/27.0, 20.1/40.4; 0.5 22.3/46.9, 25.3/45.1, 19.2/26.8, 20.0/39.8; 1 21.0/36.0, 20.0/40.5,
# 19.7/28.0, 21.6/40.6.)
SOURCE_POWER = 0.5
SOFTEN = {"op_overhead_s": 2e-6, "graph_op_overhead_s": 1e-6, "step_overhead_s": 0.5e-3, "token_overhead_s": 10e-6,
          "attention_keys_half": 64.0, "gemm_rows_half": 16.0}


def prior_cost(params: dict, n: int, defaults: dict | None = None) -> float:
    """The regularisation term for `params` fitted on `n` rows (PRIOR_ROWS), toward `defaults` (START)."""
    defaults = START if defaults is None else defaults
    total = 0.0
    for key, v in params.items():
        if key not in defaults or key not in GRIDS:
            continue
        d = defaults[key]
        if v is None or d is None:
            total += 0.0 if v is d else 1.0  # a ceiling where the default has none: one e-fold
            continue
        s = SOFTEN.get(key, 0.0)
        total += abs(math.log((v + s) / (d + s)))
    return PRIOR_ROWS / max(n, 1) * total


def at_bounds(params: dict, defaults: dict | None = None) -> list[str]:
    """The fitted numbers that sit at an end of their grid, other than at their default (START)."""
    defaults = START if defaults is None else defaults
    out = []
    for key, v in params.items():
        grid = [g for g in GRIDS.get(key, []) if g is not None]
        if not grid or v is None or v == defaults.get(key):
            continue
        if v <= min(grid) or v >= max(grid):
            out.append(key)
    return out


def loss(rows, base: EngineProfile, cls: str, params: dict[str, float]) -> tuple[float, int]:
    prof = EngineProfile(base.id, base.name, base.description, base.fitted, {**base.classes, cls: params})
    pred, _ = predict(rows, profiles={base.id: prof})
    ok = np.isfinite(pred)
    if not ok.any():
        return float("inf"), 0
    err = np.abs(np.log(pred[ok] / rows.value.to_numpy(dtype=float)[ok]))
    return source_mean(err, rows.file.to_numpy()[ok]), int(ok.sum())


def source_mean(err: np.ndarray, sources: np.ndarray, power: float | None = None) -> float:
    """The mean of `err` with each row weighed by n_source ^ -power (SOURCE_POWER): at 1 the mean over sources of
    each source's mean."""
    power = SOURCE_POWER if power is None else power
    _, inv, counts = np.unique(sources, return_inverse=True, return_counts=True)
    w = counts[inv] ** -float(power)
    return float(np.sum(err * w) / np.sum(w))


def fit(rows, engine: str, cls: str) -> tuple[dict[str, float], float, int]:
    """Coordinate descent over the grids, minimising the mean |log error| (each source weighing the square
    root of its rows: source_mean) + the pull toward the defaults (prior_cost).
    The first pass scans every other point of each grid (and its far end), the second the two grid points either
    side of where the first left each number; a trial already costed is not costed again. Single-kernel rows fit
    each number on the rows that measure it: `memory` on the bandwidth rows, `interconnect` on the collective rows
    (nccl-tests bus bandwidth, all-reduce latency), the rest on the GEMM and attention rows (with no bandwidth row to
    fit on, `memory` stays at its sourced default rather than soaking up compute-side misses)."""
    base = load_engine(engine)  # read once: every trial below only swaps this class's numbers
    # facts about the engine written in its profile (e.g. half_accumulate) are kept, not fitted
    fixed = {k: v for k, v in base.classes.get(cls, {}).items() if k not in GRIDS}
    defaults = start(engine, cls)
    params = {**defaults, **fixed}
    if engine in KERNEL_ENGINES:
        bw = rows.metric == "bandwidth_gb_per_s"
        coll = rows.metric.isin(("bus_bandwidth_gb_per_s", "collective_time_s"))
        on = {k: rows[bw] if k == "memory" else rows[coll] if k == "interconnect" else rows[~bw & ~coll]
              for k in GRIDS}
    else:
        on = {k: rows for k in GRIDS}
    seen: dict = {}

    def cost(sub, key, trial) -> float:
        memo_key = (id(on[key]), tuple(sorted((k, v) for k, v in trial.items() if k in GRIDS)))
        if memo_key not in seen:
            val, n = loss(sub, base, cls, trial)
            seen[memo_key] = val + prior_cost(trial, n, defaults)
        return seen[memo_key]

    for sweep in range(2):
        for key, grid in GRIDS.items():
            sub = on[key].reset_index(drop=True)
            if sub.empty or engine not in ONLY_FOR.get(key, (engine,)) or cls not in CLASS_ONLY.get(key, (cls,)):
                continue
            best = cost(sub, key, params)
            if sweep:
                i = grid.index(params[key]) if params[key] in grid else 0
                grid = grid[max(i - 2, 0):i + 3]
            else:
                grid = grid[::2] + grid[-1:]  # every other point, and the far end
            for v in grid:
                trial = {**params, key: v}
                val = cost(sub, key, trial)
                if val < best - 1e-9:
                    best, params = val, trial
    best, n = loss(rows, base, cls, params)
    return params, best, n


# At most this many rows of one source enter a fit (the rest are still predicted and scored): a 700-row benchmark
# table would otherwise outweigh ten small sources and cost minutes per trial. Which rows: the first by a hash of
# what each row measured (the split's hash), so the choice is fixed and blind to the measured values.
FIT_ROWS_PER_SOURCE = 40


def prepared(rows):
    """Rows with a device (and not kept out), their engine profile id and device class, and `fit_rank`: the row's
    place in its source's fixed order (rows with fit_rank < FIT_ROWS_PER_SOURCE enter the fits)."""
    rows = rows[rows.hardware.notna() & (rows.hardware.astype(str) != "")]
    if "kept_out" in rows:  # rows kept out for a known mismatch are neither fitted nor scored
        rows = rows[rows.kept_out.fillna("").astype(str) == ""]
    rows = rows.reset_index(drop=True)
    rows["engine_id"] = profiles_of(rows)
    rows["cls"] = [device_class(load_device(h)) for h in rows.hardware]
    rows["fit_key"] = [hashlib.sha256(f"{f}|{i}|{w}".encode()).hexdigest()
                       for f, i, w in zip(rows.file, rows.row, rows["where"])]
    rows["fit_rank"] = rows.groupby("file").fit_key.rank(method="first").astype(int) - 1
    return rows


def fit_sample(rows):
    """The rows a fit uses: at most FIT_ROWS_PER_SOURCE of each source (prepared's fixed order)."""
    return rows[rows.fit_rank < FIT_ROWS_PER_SOURCE].reset_index(drop=True)


def fit_groups(rows):
    """(engine, class, fit rows, memo key) of every group a fit covers: each fitted engine (never `default` or
    `ideal`) on each device class it has rows of. The key, (engine, class, sources), names the fit: a fold whose
    held-out source is not among the sources reuses it."""
    for (engine, cls), g in rows.groupby(["engine_id", "cls"], sort=True):
        if engine in ("default", "ideal"):
            continue
        sub = fit_sample(g)
        yield engine, cls, sub, (engine, cls, tuple(sorted(sub.file.unique())))


def neutral(prof: EngineProfile) -> dict[str, dict[str, float]]:
    """A profile's classes with every fitted number at its default (start: START and the class's cited values);
    facts (half_accumulate) kept."""
    return {cls: {**start(prof.id, cls), **{k: v for k, v in vals.items() if k not in GRIDS}}
            for cls, vals in prof.classes.items()}


def fit_profiles(rows, memo: dict | None = None, untrained: bool = False, log=print) -> dict[str, EngineProfile]:
    """Every engine profile fitted on `rows`, per device class with at least MIN_ROWS rows. A class with fewer keeps
    the shipped numbers, or with `untrained` (leave-one-source-out) the neutral START and the profile's facts, so
    that no number fitted on a held-out source leaks back. `memo`: fits by (engine, class, sources), reused by every
    fold whose held-out source has no rows in that group."""
    profiles, classes = {}, {}
    for engine, cls, sub, key in fit_groups(rows):
        if engine not in profiles:
            profiles[engine] = load_engine(engine)
            classes[engine] = neutral(profiles[engine]) if untrained else dict(profiles[engine].classes)
        if len(sub) < MIN_ROWS:
            log(f"{engine:<9} {cls:<11} {len(sub):4d} rows: too few to fit, "
                f"{'neutral values' if untrained else 'left as is'}")
            continue
        if memo is None or key not in memo:
            params, val, n = fit(sub, engine, cls)
            if memo is not None:
                memo[key] = params
            log(f"{engine:<9} {cls:<11} {n:4d} rows  mean |log error| {val:.3f}  {params}")
        classes[engine][cls] = memo[key] if memo is not None else params
    return {e: EngineProfile(p.id, p.name, p.description, p.fitted, classes[e]) for e, p in profiles.items()}
