"""Roofline cost of an operator graph on a device.

Per op: time = max(FLOPs / attainable compute, sum over memory levels of bytes / attainable bandwidth) + overhead;
communication ops cost a ring collective over the interconnect. Hierarchical: weights and KV cache are served by the
fastest memory level that holds the whole working set (weights + KV cache + activations, per device); an op's
activations by the fastest level that holds them (producer-consumer reuse). A level with no sourced bandwidth is
skipped.

Costing is flat: a machine's parameters for every op of a lowered table (OpParams: attainable rate, memory fraction,
overhead, collective cost; derived once per machine and table) and the table's quantities for every row make arrays
(ops, rows), and `terms` costs them all in one pass. `op_cost` runs the same costing on a single op.

Decode time is summed exactly over the growing KV cache: within a stretch of contexts where every byte and FLOP count
is linear in the context c (split at sliding-window sizes), each op costs max(u0 + u1 c, v0 + v1 c), whose sum over
integer c has a closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from .device import Device
from .dtypes import COMPUTE_FALLBACK, DType
from .efficiency import Efficiency, rate_at_rows
from .errors import PerfmodelError
from .collectives import COMM_K, TREE_TABLE, Candidate, Fabric, engine_candidates, fabric_of, nccl_candidates, prune
from .graph import DENSE16, MATRIX_KINDS, Comm, Num, Op, OpKind, Parallel
from .table import FIELDS, table

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
    fabric_spec: Fabric | None = None  # a system's fabric (perfmodel.system); None: the device's own (fabric_of)
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
                # the ladder's figure: the file's, or a cache's derived or estimated one (provenance rule 8)
                fig = self.device.figure(f"memory.{lv.name}.bandwidth")
                spec = fig.value if fig is not None else None
                if datasheet:
                    bw = spec if spec is not None else measured.get(lv.name)
                elif lv.measured:  # attained here already (the local device's main memory): no fraction again
                    bw = measured.get(lv.name, spec)
                else:
                    bw = measured.get(lv.name, spec * self.eff.memory if spec is not None else None)
                if bw is not None:
                    # a cache's size: stated, else the ladder's estimate (rule 9), else it holds nothing; main
                    # memory (the last level) serves whatever does not fit above
                    size = self.device.figure(f"memory.{lv.name}.capacity")
                    cap = lv.capacity_bytes if lv.capacity_bytes is not None else size.value if size else 0.0
                    out.append((cap, bw, lv.name))
            cap_bw, name = out[-1][1], out[-1][2]
            proc, per_unit = self.device.processor, self.eff.unit_bytes_per_s
            if not datasheet and per_unit and proc and name not in measured and not self.device.levels[-1].measured:
                # kernels that keep too few loads in flight per SM/core cannot reach a bandwidth whose
                # latency x bandwidth product exceeds what the units hold (Little's law)
                cap_bw = min(cap_bw, per_unit * proc.units)
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
        return level_bandwidth((self,), None, nbytes, datasheet)

    def datasheet_bandwidth(self, nbytes: Num) -> np.ndarray:
        return self.bandwidth_for(nbytes, datasheet=True)

    def level_name_for(self, nbytes: float) -> str:
        for cap, _, name in self.levels:
            if nbytes <= cap:
                return name
        return self.levels[-1][2]

    def peak(self, kind: OpKind, dtype: DType, cls: str | None = None, variant: str = "") -> tuple[float, str, str]:
        """(attainable FLOP/s, unit, precision) for an op kind at a dtype: the calibrated rate of its class where a
        profile has one (along COMPUTE_FALLBACK), else datasheet peak x efficiency. A 16-bit product (`variant`
        graph.DENSE16) runs at the vendor BLAS's fraction where the engine hands those to it (Efficiency.blas_matrix)."""
        blas = (variant == DENSE16 and kind == OpKind.MATMUL and self.eff.blas_matrix is not None
                and dtype.compute in ("fp16", "bf16"))

        def make() -> tuple[float, str, str]:
            cal = self.calibrated_key(kind, dtype, cls)
            if cal is not None:
                return self.eff.rate_flops_per_s[cal], "calibrated", cal.split(".")[1]
            # the vendor's BLAS runs its own (asynchronous-MMA) kernels, not the engine's
            eff = self.eff.model_copy(update={"matrix": self.eff.blas_matrix, "sync_mma_fraction": 1.0}) if blas \
                else self.eff
            return _peak(self.device, eff, kind in MATRIX_KINDS, dtype.compute)

        return self._memo(("peak", kind, dtype.compute, cls, blas), make)

    def datasheet_peak(self, kind: OpKind, dtype: DType) -> float:
        """Datasheet peak (no efficiency) for MFU; the calibrated rate where the datasheet has none."""
        def make() -> float:
            try:
                return _peak(self.device, IDEAL, kind in MATRIX_KINDS, dtype.compute, sustained=False)[0]
            except PerfmodelError:
                return self.peak(kind, dtype)[0]

        return self._memo(("datasheet peak", kind in MATRIX_KINDS, dtype.compute), make)

    def estimated_log(self, key: str) -> float:
        """ln(1 + u) of a device figure that was estimated (u its rule's uncertainty, perfmodel.provenance), else 0:
        how much it widens an error band per unit share of the time it bounds."""
        def make() -> float:
            fig = self.device.figure(key)
            return math.log1p(fig.uncertainty) if fig is not None and fig.rung == "estimated" else 0.0

        return self._memo(("estimated", key), make)

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

    @property
    def fabric(self) -> Fabric:
        """How the devices are connected: the system's fabric, else the device's by rule (fabric_of)."""
        return self.fabric_spec if self.fabric_spec is not None else self._memo(("fabric",),
                                                                                lambda: fabric_of(self.device))

    def comm_ranks(self, comm: Comm) -> int:
        """Ranks a collective spans: the tensor-parallel group for an all-reduce or all-gather, the expert-parallel
        group for an all-to-all, two for a send between pipeline stages."""
        if comm == Comm.ALL_REDUCE:
            return self.par.att_tp
        if comm in (Comm.ALL_GATHER, Comm.REDUCE_SCATTER):  # the MoE's gather over the stage, or the LM head's
            return self.par.group if self.par.replicas > 1 else self.par.tp
        if comm == Comm.ALL_TO_ALL:
            return self.par.ep
        if comm in (Comm.CP_RING, Comm.CP_GATHER):
            return self.par.cp
        return 2

    def comm_candidates(self, comm: Comm, n: int | None = None) -> list[Candidate]:
        """Every way the libraries run this collective over n ranks (default comm_ranks), with its alpha-beta cost
        (perfmodel.collectives): NCCL's algorithms and protocols, and the serving engines' peer-to-peer kernels
        where the efficiency allows them (Efficiency.custom_allreduce). A send between pipeline stages crosses
        the network where the stages sit on different nodes (stages hold tp ranks each, filled node by node)."""
        n = self.comm_ranks(comm) if n is None else n

        def make() -> list[Candidate]:
            fab = self.fabric
            hop = self.eff.interconnect_latency_s
            if hop is None and self.device.interconnect is not None and self.device.interconnect.latency_us:
                hop = self.device.interconnect.latency_us * 1e-6
            if comm == Comm.P2P:
                return self._stage_sends(fab, hop)
            if comm in (Comm.CP_RING, Comm.CP_GATHER):
                return self._context_parallel(comm, fab, hop)
            out = nccl_candidates(comm, n, fab, self.eff.interconnect, hop)
            if self.eff.custom_allreduce:
                out += engine_candidates(comm, n, fab, self.eff.interconnect)
            return prune(out)

        return self._memo(("comm", comm, n), make)

    def _context_parallel(self, comm: Comm, fab: Fabric, hop: float | None) -> list[Candidate]:
        """Context parallelism's traffic over its cp ranks, which sit tp (or ep) ranks apart: the ring of ring
        attention is cp - 1 sends of a block to the next rank (its bytes are all of them, its latency cp - 1
        sends'); decode's gather of partial outputs is an all-gather over cp. Over the network once the cp ranks
        span nodes."""
        cp, stride = self.par.cp, max(self.par.tp, self.par.ep)
        span = fab if cp * stride <= fab.devices_per_node else replace(fab, devices_per_node=1)
        if comm == Comm.CP_GATHER:
            return prune(nccl_candidates(Comm.ALL_GATHER, cp, span if span is fab else
                                         replace(fab, devices_per_node=max(fab.devices_per_node // stride, 1)),
                                         self.eff.interconnect, hop))
        sends = nccl_candidates(Comm.P2P, 2, span, self.eff.interconnect, hop)
        return [Candidate(c.algorithm, c.protocol, c.per_byte_s, c.fixed_s * (cp - 1), c.link) for c in sends]

    def _stage_sends(self, fab: Fabric, hop: float | None) -> list[Candidate]:
        """A send between neighbouring pipeline stages. Ranks fill nodes in order, a stage's tp (or ep) ranks
        together; the send from stage s - 1 to s crosses the network unless both stages sit wholly on one node. The
        op stands for all pp - 1 sends: its cost blends the crossing and the local ones by how many there are."""
        par, ppn = self.par, fab.devices_per_node
        stage = max(par.tp, par.ep) * par.cp
        cross = sum((s - 1) * stage // ppn != ((s + 1) * stage - 1) // ppn for s in range(1, par.pp))
        f = cross / max(par.pp - 1, 1)
        local = nccl_candidates(Comm.P2P, 2, fab, self.eff.interconnect, hop)
        if f == 0 or not fab.net_bytes_per_s:
            return local
        net = nccl_candidates(Comm.P2P, 2, replace(fab, devices_per_node=1), self.eff.interconnect, hop)
        return [Candidate(a.algorithm, a.protocol, (1 - f) * a.per_byte_s + f * b.per_byte_s,
                          (1 - f) * a.fixed_s + f * b.fixed_s, "net") for a, b in zip(local, net)]


def level_arrays(machines: tuple[Machine, ...], datasheet: bool) -> tuple[np.ndarray, np.ndarray]:
    """(capacity, bandwidth) of each machine's memory levels (machines, levels), fastest first, aligned on the last
    level (main memory, capacity inf); shorter hierarchies are padded in front with levels that hold nothing."""
    tabs = [m._level_table(datasheet) for m in machines]
    n = max(len(t) for t in tabs)
    caps, bws = np.full((len(tabs), n), -np.inf), np.zeros((len(tabs), n))
    for i, t in enumerate(tabs):
        caps[i, n - len(t):] = [c for c, _, _ in t]
        bws[i, n - len(t):] = [b for _, b, _ in t]
    return caps, bws


def level_bandwidth(machines: tuple[Machine, ...], mi: np.ndarray | None, nbytes: Num, datasheet: bool = False
                    ) -> np.ndarray:
    """The bandwidth of the fastest level that holds `nbytes` (main memory if none does), attainable or the
    datasheet's: of the one machine, or of each row's machine `machines[mi[row]]` (nbytes (..., rows))."""
    if len(machines) == 1:  # kept on the machine; a scalar per level broadcasts over any shape
        caps, bws = machines[0]._memo(("level arrays", datasheet), lambda: level_arrays(machines, datasheet))
        caps, bws = caps[0], bws[0]
    else:
        caps, bws = level_arrays(machines, datasheet)
        caps, bws = caps[mi].T, bws[mi].T  # (levels, rows)
    nbytes = np.asarray(nbytes, dtype=float)
    out = np.broadcast_to(bws[-1], nbytes.shape)
    for lv in range(len(caps) - 2, -1, -1):
        out = np.where(nbytes <= caps[lv], bws[lv], out)
    return np.asarray(out, dtype=float)


def _fp32_first(chain: tuple[str, ...]) -> tuple[str, ...]:
    """FP32 first, then the chain's narrower precisions: vector work that accumulates in FP32 runs at the FP32 rate,
    or, on a device whose file gives only a narrower vector rate (Gaudi's TPCs: bf16), at that one."""
    return ("fp32", *(p for p in chain if p != "fp32"))


def _peak(device: Device, eff: Efficiency, matrix: bool, precision: str,
          sustained: bool = True) -> tuple[float, str, str]:
    """(FLOP/s, unit, precision) of `precision` work at efficiency `eff`. `sustained`: matrix peaks at the clock the
    matrix units hold under load (Processor.matrix_clock_ratio), not the quoted boost clock."""
    chain = COMPUTE_FALLBACK[precision]
    units = (("matrix", eff.matrix), ("vector", eff.vector)) if matrix else (("vector", eff.vector),)
    if matrix and eff.vector_matmul:  # no matrix-unit path: the vector ALUs; on a GPU float GEMMs accumulate in FP32
        units = (("vector", eff.vector),)
        if device.kind != "cpu" and precision not in ("int8", "int4"):
            chain = _fp32_first(chain)
    elif not matrix and precision == "fp32":
        chain = _fp32_first(COMPUTE_FALLBACK["bf16"])
    if device.kind == "cpu" and precision not in ("fp32", "fp64"):
        # a CPU's SIMD units run a format they have no instructions for at FP32 after converting it: an FP16
        # product cannot use bf16's VDPBF16PS, nor an int8 dot FP16 arithmetic (llama.cpp's F16 GEMMs convert
        # to FP32 with F16C where the core has no AVX512-FP16)
        chain = (precision, "fp32")
    for unit, e in units:
        if unit == "vector" and matrix and not eff.vector_matmul and not _may_use_vector_for_matmul(device, precision):
            continue  # the ladder already gave the matrix unit its vector rate as a stated lower bound, if any
        for p in chain:
            peak = device.peak_flops_per_s(unit, p, half_accumulate=eff.half_accumulate)
            if peak is not None:
                if unit == "matrix" and device.compute.async_mma:
                    e = e * eff.sync_mma_fraction
                proc = device.processor
                clock = proc.matrix_clock_ratio if unit == "matrix" and sustained and proc is not None else 1.0
                per_unit = _unit_int8_rate(device, eff, sustained) if unit == "matrix" and p == "int8" else None
                if per_unit is not None:  # the engine's own int8 kernels: a rate per unit per clock
                    return min(peak * clock, per_unit), unit, p
                return peak * e * clock, unit, p
    unit = units[0][0]
    raise PerfmodelError(
        f"{device.id} has no figure for {unit} {precision} (or {', '.join(chain[1:]) or 'any fallback'}) and no rule "
        f"derives or estimates one: its file gives neither the peak nor its parts, and no sibling of its family "
        f"({device.family or 'none stated'}) does. Supply it in a spec file: compute.{unit}.dense_tflops.{precision} "
        f"(with its source), or [processor] units and clock_ghz with compute.{unit}.flops_per_cycle_per_unit."
        f"{precision}, or a `family` whose siblings give it"
    )


def _unit_int8_rate(device: Device, eff: Efficiency, sustained: bool = True) -> float | None:
    """int8 ops/s of the engine's own int8 GEMM kernels where the profile measures them per unit per clock for this
    device's vendor (Efficiency.unit_int8_ops_per_cycle): units x (sustained) clock x that; None elsewhere."""
    per_cycle, proc = eff.unit_int8_ops_per_cycle.get(device.vendor or ""), device.processor
    if per_cycle is None or proc is None or proc.peak_clock_hz is None:
        return None
    return proc.units * proc.peak_clock_hz * (proc.matrix_clock_ratio if sustained else 1.0) * per_cycle


def scales_in_mma(device: Device) -> bool:
    """The device's matrix units apply per-block scales inside the instruction (Blackwell's block-scaled MMA,
    CDNA4's scaled MFMA), which every part with an FP4 matrix rate has: block-scaled FP8 GEMMs then need no
    vector-unit promotion (perfmodel.dtypes.BLOCK_SCALE_FLOPS)."""
    return device.peak_flops_per_s("matrix", "fp4") is not None


def _may_use_vector_for_matmul(device: Device, precision: str) -> bool:
    """CPUs run any GEMM on their SIMD units, and fp32 GEMMs run on GPU vector units (tensor cores do TF32, not
    FP32); narrower GEMMs fall back only on devices declared without matrix units (e.g. Apple GPUs)."""
    return device.kind == "cpu" or precision == "fp32" or not device.compute.matrix_units


# Costing a table: per op of a table, how a machine costs it (OpParams), then every op of every row at once ----------

@dataclass(frozen=True, eq=False)
class OpParams:
    """How one machine costs the ops of one table: arrays over ops. Where a calibration profile measured the
    single-row kernel of a class (GEMV, decode attention), `one_row` ops use the `alt_` parameters at rows <= 1."""

    comm: np.ndarray  # communication op
    count: np.ndarray
    peak: np.ndarray  # attainable FLOP/s before any saturation (inf for comm ops)
    calibrated: np.ndarray
    frac: np.ndarray  # fraction of a level's attainable bandwidth the op's kernel reaches
    overhead: np.ndarray  # s per call
    graph_overhead: np.ndarray  # s per call in a single-sequence decode step replayed from a CUDA graph; nan: none
    rows_half: np.ndarray
    rate_table: np.ndarray  # index into `tables` of a measured rate-by-rows table, -1 for none
    one_row: np.ndarray
    alt_peak: np.ndarray
    alt_frac: np.ndarray
    alt_overhead: np.ndarray
    alt_rows_half: np.ndarray
    alt_rate_table: np.ndarray
    keys_half: np.ndarray  # fused attention on datasheet rates: keys at which it reaches half its rate, else 0
    gemm_half: np.ndarray  # weight GEMMs on datasheet rates: rows per call at which they reach half their rate
    vector_peak: np.ndarray  # FP32 vector FLOP/s for block-scale work beside a GEMM (nan where none is needed)
    exp_cost: np.ndarray  # datasheet matrix peak / special-function rate: exponentials' cost in matrix time
    # a collective's candidates (perfmodel.collectives, up to COMM_K, the cheapest wins per size): s per byte, s per
    # call, NCCL protocol index of a tree all-reduce (its size correction) else -1; (ops, COMM_K)
    comm_per_byte: np.ndarray
    comm_fixed: np.ndarray
    comm_tree: np.ndarray
    # ln(1 + u) of the estimated device figure (perfmodel.provenance) that bounds the op's compute-bound time, its
    # memory-bound time (main memory's bandwidth) and its communication (the link); 0 where the figure is not estimated
    widen_compute: np.ndarray
    widen_memory: np.ndarray
    widen_link: np.ndarray
    unit: tuple[str, ...]
    precision: tuple[str, ...]
    tables: tuple[tuple[tuple[float, float], ...], ...]

    @cached_property
    def column(self) -> dict[str, np.ndarray]:
        """The arrays as (ops, 1) columns, which broadcast over rows."""
        return {k: getattr(self, k)[:, None] for k in self.ARRAYS}

    ARRAYS = ("comm", "count", "peak", "calibrated", "frac", "overhead", "graph_overhead", "rows_half", "rate_table",
              "one_row", "alt_peak", "alt_frac", "alt_overhead", "alt_rows_half", "alt_rate_table", "keys_half",
              "gemm_half", "vector_peak", "exp_cost", "comm_per_byte", "comm_fixed", "comm_tree",
              "widen_compute", "widen_memory", "widen_link")


def op_params(mach: Machine, tab: Any, keep: bool = True) -> OpParams:
    """The OpParams of a table (perfmodel.table.OpTable) on a machine, derived once per (machine, table) and kept on
    the machine (`keep`)."""
    hit = mach._cache.get(("params", id(tab)))
    if hit is not None and hit[0] is tab:
        return hit[1]
    eff, n = mach.eff, len(tab)
    a = {k: np.zeros(n) for k in OpParams.ARRAYS}
    a["comm_per_byte"], a["comm_fixed"] = np.zeros((n, COMM_K)), np.full((n, COMM_K), np.inf)
    a["comm_tree"] = np.full((n, COMM_K), -1)
    a["rate_table"] = np.full(n, -1)
    a["alt_rate_table"] = np.full(n, -1)
    a["vector_peak"] = np.full(n, np.nan)
    a["graph_overhead"] = np.full(n, np.nan)
    tables: list[tuple] = []
    unit, prec = [], []
    scale, exp = tab.nonzero("scale_flops"), tab.nonzero("exp_ops")
    mmq = _unit_int8_rate(mach.device, eff) is not None  # int8 kernels at a measured rate that holds their scale work
    sfu_fig = mach.device.figure("compute.special_function")  # sourced, or the family's rate per unit per clock
    sfu = sfu_fig.value if sfu_fig else None

    def table_id(key: str | None) -> int:
        rates = eff.rate_by_rows.get(key) if key else None
        if not rates:
            return -1
        t = tuple(tuple(p) for p in rates)
        if t not in tables:
            tables.append(t)
        return tables.index(t)

    for i, op in enumerate(tab.shells):
        a["count"][i] = op.count
        if op.kind == OpKind.COMM:
            a["comm"][i] = True
            for k, c in enumerate(mach.comm_candidates(op.comm)):
                a["comm_per_byte"][i, k], a["comm_fixed"][i, k] = c.per_byte_s, c.fixed_s
                a["comm_tree"][i, k] = c.tree_index
            a["peak"][i] = a["alt_peak"][i] = np.inf
            a["frac"][i] = a["alt_frac"][i] = 1.0
            unit.append("link")
            prec.append("-")
            continue
        cls = op_class(op)
        peak, u, p = mach.peak(op.kind, op.dtype, cls, op.variant)
        key = mach.calibrated_key(op.kind, op.dtype, cls)
        a["peak"][i], a["calibrated"][i] = peak, u == "calibrated"
        a["frac"][i] = mach.memory_fraction(op.kind, op.dtype, cls)
        a["overhead"][i] = mach.overhead_for(op.kind, op.dtype, cls)
        if eff.graph_op_overhead_s is not None and not (key and key in eff.overhead_by_class_s):
            a["graph_overhead"][i] = eff.graph_op_overhead_s
        a["rows_half"][i] = eff.rows_half.get(key, 0.0) if key else 0.0
        if op.kind == OpKind.MATMUL and u != "calibrated":
            a["gemm_half"][i] = eff.gemm_rows_half
        a["rate_table"][i] = table_id(key)
        if op.kind == OpKind.ATTENTION and u != "calibrated":
            a["keys_half"][i] = eff.attention_keys_half
        per_unit = mmq and u == "matrix" and p == "int8"
        if scale[i] and u != "calibrated" and not per_unit and not (op.variant == "block_scaled"
                                                                    and scales_in_mma(mach.device)):
            # vector work serial with the matrix products (block scales of quantised GEMMs); a rate per unit per
            # clock measured on whole kernels (unit_int8_ops_per_cycle) already holds it
            a["vector_peak"][i] = mach._memo(("vector fp32",), lambda: _peak(mach.device, eff, False, "fp32")[0])
        if sfu and exp[i] and u != "calibrated":
            # softmax's exponentials on the special-function units, in turn with the matrix work (FlashAttention-3:
            # on an H100 "exponential can take 50% of the cycle compared to matmul" at head dim 128), at the same
            # fraction of their peak as the matrix units reach of theirs
            a["exp_cost"][i] = mach.datasheet_peak(op.kind, op.dtype) / sfu
        one = _ONE_ROW_CLASS.get(cls)
        if one and mach.calibrated_key(op.kind, op.dtype, one, strict=True):
            # single-row products run a GEMV kernel, and one query per sequence a decode-attention kernel, each with
            # its own calibrated profile
            akey = mach.calibrated_key(op.kind, op.dtype, one)
            a["one_row"][i] = True
            a["alt_peak"][i] = mach.peak(op.kind, op.dtype, one)[0]
            a["alt_frac"][i] = mach.memory_fraction(op.kind, op.dtype, one)
            a["alt_overhead"][i] = mach.overhead_for(op.kind, op.dtype, one)
            a["alt_rows_half"][i] = eff.rows_half.get(akey, 0.0)
            a["alt_rate_table"][i] = table_id(akey)
        unit.append(u)
        prec.append(p)
    for i, (u, p) in enumerate(zip(unit, prec)):
        if u in ("matrix", "vector"):
            a["widen_compute"][i] = mach.estimated_log(f"compute.{u}.{p}")
            if a["exp_cost"][i] > 0:  # its exponentials ride on the special-function rate, perhaps an estimate
                a["widen_compute"][i] = max(a["widen_compute"][i], mach.estimated_log("compute.special_function"))
    link = np.array([u == "link" for u in unit], dtype=bool)
    a["widen_memory"] = np.where(link, 0.0, mach.estimated_log(f"memory.{mach.device.levels[-1].name}.bandwidth"))
    a["widen_link"] = np.where(link, mach.estimated_log("interconnect.bandwidth") if link.any() else 0.0, 0.0)
    for k in ("comm", "calibrated", "one_row"):
        a[k] = a[k].astype(bool)
    out = OpParams(**a, unit=tuple(unit), precision=tuple(prec), tables=tuple(tables))
    if keep:
        mach._cache[("params", id(tab))] = (tab, out)
    return out


def stack_params(params: list[OpParams]) -> tuple[dict[str, np.ndarray], tuple]:
    """Parameters of several machines for the same table: {name: (ops, machines)}, rate tables renumbered into one
    tuple."""
    tables: list[tuple] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in OpParams.ARRAYS}
    for p in params:
        remap = np.array([len(tables) + j for j in range(len(p.tables))] + [-1])
        tables += p.tables
        for k in OpParams.ARRAYS:
            v = getattr(p, k)
            cols[k].append(remap[v] if k in ("rate_table", "alt_rate_table") else v)
    return {k: np.stack(v, axis=1) for k, v in cols.items()}, tuple(tables)


COST_FIELDS = ("compute_s", "memory_s", "comm_s", "overhead_s")
# rows up to which weight products run a GEMV kernel, not a tiled GEMM: llama.cpp's mul_mat_vec_q takes batches up to
# MMVQ_MAX_BATCH_SIZE = 8 (ggml/src/ggml-cuda/mmvq.cuh)
GEMV_ROWS = 8.0


def needed(P: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The quantities (perfmodel.table fields and sums) that terms() reads with these parameters."""
    out = ["flops", "resident_bytes", "act_bytes"]
    if P["one_row"].any() or (P["rate_table"] >= 0).any() or (P["rows_half"] > 0).any() or (P["gemm_half"] > 0).any():
        out.append("rows")
    if (P["keys_half"] > 0).any():
        out.append("keys")
    if np.isfinite(P["vector_peak"]).any():
        out.append("scale_flops")
    if (P["exp_cost"] > 0).any():
        out.append("exp_ops")
    if P["comm"].any():
        out.append("comm_bytes")
    return tuple(out)


def terms(P: dict[str, np.ndarray], tables: tuple, q: dict[str, np.ndarray], resident_bw: np.ndarray,
          act_bw: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance compute, memory, communication and overhead time of every op (ops, rows), for quantities `q`
    ({perfmodel.table.FIELDS: (ops, rows)}) and parameters P whose arrays broadcast to (ops, rows)."""
    rows, keys = q.get("rows"), q.get("keys")
    alt = P["one_row"] & (rows <= 1 + 1e-9) if P["one_row"].any() else None  # MoE: tokens / expected experts
    pick = (lambda k: np.where(alt, P["alt_" + k], P[k])) if alt is not None else (lambda k: P[k])
    peak, frac, half, tid = pick("peak"), pick("frac"), pick("rows_half"), pick("rate_table")
    calibrated = P["calibrated"] | alt if alt is not None else P["calibrated"]
    if np.any(tid >= 0):
        tid = np.broadcast_to(tid, rows.shape)
        for t in np.unique(tid[tid >= 0]):  # GEMM rate measured at several row counts, interpolated in log(rows)
            peak = np.where(tid == t, rate_at_rows(tables[t], rows), peak)
    if np.any(half > 0):
        # GEMM rate saturates with the number of rows: rate(m) = rate x m / (m + half) (where no table was measured)
        x = np.maximum(rows, 1.0)
        peak = np.where((half > 0) & (tid < 0), peak * x / (x + half), peak)
    gh = P["gemm_half"] if alt is None else np.where(calibrated, 0.0, P["gemm_half"])
    if np.any(gh > 0):
        # a tiled GEMM loads and unpacks each weight tile once per tile of rows; up to GEMV_ROWS rows the engine
        # runs a GEMV kernel instead (memory-bound, no tiles)
        x = np.maximum(rows, 1.0)
        peak = np.where((gh > 0) & (x > GEMV_ROWS), peak * x / (x + gh), peak)
    # op_params sets these only for datasheet rates; a one-row kernel that replaces them is calibrated
    kh = P["keys_half"] if alt is None else np.where(calibrated, 0.0, P["keys_half"])
    if np.any(kh > 0):
        # a fused-attention tile loads its queries, then streams keys: the fixed per-tile work is amortised over the
        # keys each query sees (short or causal sequences run further from peak)
        y = np.maximum(keys, 1.0)
        peak = np.where((kh > 0) & (keys > 0), peak * y / (y + kh), peak)
    resident, act = q["resident_bytes"], q["act_bytes"]
    memory = (resident / resident_bw + act / act_bw) / frac
    flops = q["flops"]
    compute = flops / peak
    vec = P["vector_peak"] if alt is None else np.where(calibrated, np.nan, P["vector_peak"])
    if np.any(np.isfinite(vec)):
        compute = compute + np.where(np.isfinite(vec), q["scale_flops"] / vec, 0.0)
    exp_cost = P["exp_cost"] if alt is None else np.where(calibrated, 0.0, P["exp_cost"])
    if np.any(exp_cost > 0):
        compute = compute + q["exp_ops"] * exp_cost / peak
    oh = pick("overhead")
    # an op with nothing to do (e.g. a conversion only large batches need) launches no kernel
    overhead = np.where(flops + resident + act > 0, oh, 0.0) if np.any(oh > 0) else np.zeros_like(compute)
    comm = np.zeros_like(compute)
    if P["comm"].any():
        ci = np.flatnonzero(P["comm"][:, 0])  # collectives are the same ops on every machine of a table
        comm[ci] = comm_time(q["comm_bytes"][ci], P["comm_per_byte"][ci], P["comm_fixed"][ci], P["comm_tree"][ci])
    return {"compute_s": compute, "memory_s": memory, "comm_s": comm, "overhead_s": overhead}


def comm_time(nbytes: np.ndarray, per_byte: np.ndarray, fixed: np.ndarray, tree: np.ndarray) -> np.ndarray:
    """Time of collectives of `nbytes` (ops, rows) a call: the cheapest of each op's candidates (ops, [rows,] K),
    a tree all-reduce's bandwidth scaled by NCCL's size correction (perfmodel.collectives.TREE_CORRECTION)."""
    b = np.asarray(nbytes, dtype=float)
    if per_byte.ndim == 2:  # one machine: (ops, K) broadcast over rows
        per_byte, fixed, tree = per_byte[:, None, :], fixed[:, None, :], tree[:, None, :]
    x = b[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        idx = np.floor(np.log2(np.maximum(x, 1.0) / 64.0)).astype(int)
    ok = (tree >= 0) & (x >= 64) & (idx < TREE_TABLE.shape[1] - 1)
    corr = np.where(ok, TREE_TABLE[np.clip(tree, 0, 2), np.clip(idx, 0, TREE_TABLE.shape[1] - 1)], 1.0)
    return np.min(fixed + x * per_byte / corr, axis=-1)


def point_costs(t: dict[str, np.ndarray], count: np.ndarray) -> dict[str, np.ndarray]:
    """Costs of ops evaluated at one point (e.g. prefill), counts applied: time = max(compute, memory) + overhead
    per instance, communication apart."""
    body = np.maximum(t["compute_s"], t["memory_s"])
    return {"compute_s": t["compute_s"] * count, "memory_s": t["memory_s"] * count, "comm_s": t["comm_s"] * count,
            "overhead_s": t["overhead_s"] * count, "time_s": (body + t["overhead_s"] + t["comm_s"]) * count,
            "compute_bound_s": np.where(t["compute_s"] >= t["memory_s"], t["compute_s"], 0.0) * count}


def op_cost(op: Op, mach: Machine, resident_bw: Num, act_bw: Num) -> dict[str, Any]:
    """One op with numeric sizes (scalars or arrays) costed at one point, e.g. a kernel in validation and
    calibration: the costing of every evaluation (terms, point_costs), on a table of this one op. Keys as
    point_costs (arrays, or floats for a scalar op), plus `unit` and `precision`."""
    q = {f: np.atleast_1d(np.asarray(getattr(op, f), dtype=float)) for f in FIELDS}
    n = max(len(v) for v in q.values())
    q = {f: np.broadcast_to(v, (1, n)) for f, v in q.items()}
    q["resident_bytes"] = q["weight_bytes"] + q["kv_read_bytes"] + q["kv_write_bytes"]
    q["act_bytes"] = q["act_in_bytes"] + q["act_out_bytes"]
    # the op's shell marks which terms apply (block-scale work, exponentials), as its lowered polynomials would
    shell = Op(op.name, op.kind, op.dtype, count=op.count, comm=op.comm, variant=op.variant,
               scale_flops=float(np.any(q["scale_flops"] > 0)), exp_ops=float(np.any(q["exp_ops"] > 0)))
    p = op_params(mach, table((shell,)), keep=False)
    t = terms(p.column, p.tables, q, np.asarray(resident_bw, dtype=float), np.asarray(act_bw, dtype=float))
    scalar = all(np.ndim(getattr(op, f)) == 0 for f in FIELDS)
    out: dict[str, Any] = {k: float(v[0, 0]) if scalar else np.asarray(v[0])
                           for k, v in point_costs(t, p.column["count"]).items()}
    out["unit"], out["precision"] = p.unit[0], p.precision[0]
    return out


def ops_time_s(ops: "tuple[Op, ...] | list[Op]", mach: Machine) -> Num:
    """Ops run one after another, each at the bandwidth of its own working set (op_cost): their time summed (a
    scalar, or an array where the ops' sizes are arrays)."""
    t: Num = 0.0
    for o in ops:
        bw = mach.bandwidth_for(o.bytes)
        t = t + op_cost(o, mach, bw, bw)["time_s"]
    return t


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
