"""Evaluation: the metrics of workloads on devices.

One core, `evaluate_rows`: a model in one configuration is lowered once (perfmodel.table, cached), and the rows of
(batch, prompt, gen), each on its own machine (device + efficiency), are costed in one NumPy pass over (ops, rows)
per phase; decode is summed exactly over the growing context. `evaluate` is its one-device form, used by
`estimate`, `whatif`, `validate` and reports; `sweep` gives it every row of a configuration, whatever the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Mapping

import numpy as np

from .collectives import Fabric, fabric_of
from .cost import (Machine, OpParams, level_bandwidth, needed, op_params, point_costs, stack_params, sum_max_linear,
                   terms)
from .device import Device
from .dtypes import DType
from .efficiency import Efficiency, default_for, with_backend
from .errors import PerfmodelError
from .graph import NUMERIC_FIELDS, Op, OpKind, Parallel, Precision
from .memory import Memory, kv_bytes, weight_bytes
from .model import ModelSpec
from .table import F, OpTable, lowered
from .workload import Workload


def default_gen(model: ModelSpec) -> int:
    return 0 if model.arch == "encoder" else 128


def check(model: ModelSpec, wl: Workload) -> None:
    """Errors that concern the whole combination of model and configuration."""
    if model.n_heads % wl.tp:
        raise PerfmodelError(f"tp must divide n_heads ({model.n_heads}) of {model.id}; got {wl.tp}")
    if wl.pp > model.n_layers:
        raise PerfmodelError(f"pp must be at most n_layers ({model.n_layers}) of {model.id}; got {wl.pp}")
    if wl.cp > 1 and model.arch != "decoder":
        raise PerfmodelError(f"cp (context parallelism, ring attention) applies to decoder-only models; {model.id} is "
                             f"{model.arch.replace('_', '-')}")
    if wl.ep > 1:
        if not model.n_experts:
            raise PerfmodelError(f"ep (expert parallelism) needs an MoE model; {model.id} has no routed experts: use "
                                 f"tp or pp")
        if model.n_experts % wl.ep:
            raise PerfmodelError(f"ep must divide the {model.n_experts} routed experts of {model.id}; got {wl.ep}")
        if max(wl.tp, wl.ep) % min(wl.tp, wl.ep):
            raise PerfmodelError(f"tp and ep must divide one another (a stage's devices are max(tp, ep)); got tp "
                                 f"{wl.tp}, ep {wl.ep}")
        if wl.dp_attention and wl.ep < wl.tp:
            raise PerfmodelError(f"with --dp-attention the experts spread over the whole stage: ep must be 1 or at "
                                 f"least tp ({wl.tp}); got ep {wl.ep}")


def row_errors(model: ModelSpec, prompt: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """Per-scenario errors ('' where fine): only what cannot happen, generation on an encoder-only model."""
    errs = np.full(np.shape(prompt), "", dtype=object)
    if model.arch == "encoder":
        errs[np.asarray(gen) > 0] = f"{model.id} is an encoder-only model and generates no tokens: use gen 0"
    return errs


def row_warnings(model: ModelSpec, prompt: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """Per-scenario warnings ('' where none): a context longer than the model was trained for is estimated (engines
    run such lengths: llama-bench and TensorRT-LLM tables do), with a warning that quality is another matter."""
    warns = np.full(np.shape(prompt), "", dtype=object)
    if model.max_seq_len is not None:
        longest = np.asarray(prompt) + (np.asarray(gen) if model.arch == "decoder" else 0)
        for i in np.flatnonzero(longest > model.max_seq_len):
            warns[i] = (f"prompt + gen = {int(longest[i])} exceeds the context length of {model.id} "
                        f"({model.max_seq_len} tokens, max_position_embeddings): estimated anyway, as engines run it; "
                        f"the model's output quality there is not what it was trained for")
    return warns


_MACHINES: dict[tuple, tuple[Device, Efficiency, Machine]] = {}


def machine(device: Device, eff: Efficiency | None, par: Parallel, fabric: Fabric | None = None) -> Machine:
    """A device with its efficiency, kept per process while the same objects are used (its derived rates and op
    parameters are cached on it); `fabric`: how the devices connect (default: the device's, collectives.fabric_of)."""
    eff = eff or default_for(device.kind)
    key = (id(device), id(eff), par, fabric)
    hit = _MACHINES.get(key)
    if hit is not None and hit[0] is device and hit[1] is eff:
        return hit[2]
    if len(_MACHINES) >= 4096:
        _MACHINES.clear()
    mach = Machine(device, eff, par, fabric)
    _MACHINES[key] = (device, eff, mach)
    return mach




BOUNDS = ("compute", "memory", "comm", "overhead", "-")  # what bounds a phase, by PhaseCost.bound_index (-1: "-")


@dataclass(frozen=True, eq=False)
class PhaseCost:
    """Costs of one phase, totals over the phase (every decode step summed), counts applied: `values` maps the
    cost fields (COST_FIELDS, time_s, compute_bound_s) to arrays (ops, rows), and the op quantities too where the
    evaluation kept detail; `sums` maps the quantities and resident_bytes to their totals over the ops (rows,);
    `steps` (rows,). Summable: two stretches of the same phase add up."""

    table: OpTable | None
    values: Mapping[str, np.ndarray]
    sums: Mapping[str, np.ndarray]
    steps: np.ndarray
    units: tuple[tuple[str, ...], ...] = ()  # per machine, per op: matrix, vector, calibrated or link
    precisions: tuple[tuple[str, ...], ...] = ()
    widen: Mapping[str, np.ndarray] = field(default_factory=dict)  # OpParams.widen_*, broadcast to (ops, rows)

    @property
    def ops(self) -> tuple[Op, ...]:
        """The ops (name, kind, dtype, count; sizes in `values`)."""
        return self.table.shells if self.table is not None else ()

    def total(self, key: str) -> np.ndarray:
        """A field summed over the ops (rows,)."""
        if key in self.sums:
            return self.sums[key]
        v = self.values.get(key)
        return v.sum(axis=0) if v is not None and len(v) else np.zeros_like(self.steps)

    def __add__(self, other: "PhaseCost") -> "PhaseCost":
        return PhaseCost(self.table, {k: v + other.values[k] for k, v in self.values.items()},
                         {k: v + other.sums[k] for k, v in self.sums.items()}, self.steps, self.units,
                         self.precisions, self.widen)

    def bound(self) -> np.ndarray:
        """The resource that took most of the phase's time: compute, memory, comm or overhead ("-" for none)."""
        return np.array(BOUNDS)[self.bound_index()]

    def bound_index(self) -> np.ndarray:
        """bound() as an index into (compute, memory, comm, overhead), -1 where the phase took no time."""
        comp = self.total("compute_bound_s")
        body = self.total("time_s") - self.total("overhead_s") - self.total("comm_s")
        table = np.stack([comp, body - comp, self.total("comm_s"), self.total("overhead_s")])
        return np.where(self.total("time_s") > 0, np.argmax(table, axis=0), -1)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Every row of one model and configuration costed, each row on its machine (`machines[mi[row]]`)."""

    model: ModelSpec
    workload: Workload
    machines: tuple[Machine, ...]
    mi: np.ndarray
    batch: np.ndarray
    prompt: np.ndarray
    gen: np.ndarray
    memory: Memory
    prefill: PhaseCost
    decode: PhaseCost

    @property
    def mach(self) -> Machine:
        return self.machines[0]

    @property
    def device(self) -> Device:
        return self.machines[0].device

    def per_row(self, values: list[float]) -> np.ndarray:
        """A value per machine, as a value per row."""
        return np.asarray(values, dtype=float)[self.mi]

    @cached_property
    def metrics(self) -> dict[str, np.ndarray]:
        b, p, g = self.batch, self.prompt, self.gen
        steps = self.decode.steps
        # host time outside the ops: per forward pass, and per sequence in it
        host = (self.per_row([m.eff.step_overhead_s for m in self.machines])
                + b * self.per_row([m.eff.token_overhead_s for m in self.machines]))
        ttft = self.prefill.total("time_s") + host
        dec = self.decode.total("time_s") + host * steps
        e2e = ttft + dec
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot = np.where(steps > 0, dec / steps, np.nan)
            out = dict(
                ttft_s=ttft,
                tpot_s=tpot,
                decode_tokens_per_s=np.where(steps > 0, steps / dec, np.nan),
                prefill_tokens_per_s=b * p / ttft,
                throughput_tokens_per_s=b * g / e2e,
                e2e_latency_s=e2e,
            )
        flops = self.prefill.total("flops") + self.decode.total("flops")
        moved = self.prefill.total("resident_bytes") + self.decode.total("resident_bytes")
        out["mfu"] = self.utilisation(flops, e2e, "flops")
        out["mbu"] = self.utilisation(moved, e2e, "bytes")
        return out

    def utilisation(self, amount: np.ndarray, time: np.ndarray, what: str) -> np.ndarray:
        """MFU: model FLOPs / (time x matrix peak); MBU: weight + KV bytes / (time x bandwidth of the level that holds
        them). Peaks are datasheet (efficiency 1), per device, averaged over the pp stages that run in turn."""
        pp = self.workload.pp
        if what == "flops":
            peak = self.per_row([m.datasheet_peak(OpKind.MATMUL, self.workload.act) for m in self.machines])
        else:
            peak = level_bandwidth(self.machines, self.mi, self.memory.total_bytes, datasheet=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(time > 0, amount / (time * peak * pp), 0.0)

    def widening_log(self) -> dict[str, np.ndarray]:
        """Per phase and row, the sum over the device's estimated figures of the share of the phase's time each bounds
        x ln(1 + u): the log of the factor by which the error band widens (perfmodel.bands.widening). The shares are
        perfmodel.provenance.used_figures': compute-bound time per unit and precision, memory-bound time for the main
        memory's bandwidth, communication time for the link (weights per op: cost.OpParams.widen_*)."""
        out = {}
        for name, ph in (("prefill", self.prefill), ("decode", self.decode)):
            w = ph.widen
            if not ph.ops or not any(np.any(v) for v in w.values()):  # no estimated figure bounds this phase
                out[name] = np.zeros(len(self.batch))
                continue
            v = ph.values
            mem_time = np.maximum(v["time_s"] - v["compute_bound_s"] - v["overhead_s"], 0.0)
            num = (v["compute_bound_s"] * w["widen_compute"] + mem_time * w["widen_memory"]
                   + v["comm_s"] * w["widen_link"]).sum(axis=0)
            total = ph.total("time_s")
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = np.where(total > 0, num / total, 0.0)
        return out


def workload_fabric(device: Device, wl: Workload) -> Fabric | None:
    """The fabric of the workload's devices: the system's or the device's (collectives.fabric_of), with --devices
    a node where given; None where it is the device's own unchanged (the machine derives it)."""
    if wl.devices is None:
        return None
    fab = fabric_of(device)
    return fab if fab.devices_per_node == wl.devices else replace(fab, devices_per_node=wl.devices)


def layout_error(device: Device, wl: Workload) -> str:
    """Why the layout cannot run on the devices asked for ('' where it can): max(tp, ep) x cp x pp devices against
    devices a node x --nodes (nodes default to as many as the layout needs), and a layout past one node on a system
    whose data give no network between nodes."""
    par = wl.parallel
    fab = fabric_of(device)
    per_node = wl.devices or fab.devices_per_node
    what = device.system.id if device.system is not None else device.id
    if par.devices > per_node and not fab.net_bytes_per_s:
        return (f"the layout needs {par.devices} devices, more than the {per_node} of one {what} node, and {what} "
                f"states no network between nodes: keep max(tp, ep) x cp x pp within {per_node}")
    if wl.nodes is None:
        return ""
    have = per_node * wl.nodes
    if par.devices > have:
        return (f"the layout needs {par.devices} devices (max(tp {par.tp}, ep {par.ep}) x cp {par.cp} x pp {par.pp}); "
                f"{what} with {per_node} a node x {wl.nodes} node{'s' if wl.nodes > 1 else ''} has {have}: raise "
                f"--nodes to {-(-par.devices // per_node)}, or shrink the layout")
    return ""


def workload_machine(device: Device, eff: Efficiency | None, wl: Workload) -> Machine:
    """The machine a workload runs on: the device with its efficiency, the workload's backend facts applied
    (efficiency.with_backend), at the workload's parallelism, on its fabric."""
    return machine(device, with_backend(eff or default_for(device.kind), device, wl.backend, wl.matrix_units,
                                        wl.graphs), wl.parallel, workload_fabric(device, wl))


def evaluate(model: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, batch: np.ndarray,
             prompt: np.ndarray, gen: np.ndarray, detail: bool = False) -> Evaluation:
    """Cost every op of prefill and decode for arrays of (batch, prompt, gen) sharing one model, device and config."""
    batch = np.asarray(batch, dtype=float)
    return evaluate_rows(model, wl, (workload_machine(device, eff, wl),), np.zeros(batch.shape, dtype=int), batch,
                         prompt, gen, detail)


def evaluate_rows(model: ModelSpec, wl: Workload, machines: tuple[Machine, ...], mi: np.ndarray, batch: np.ndarray,
                  prompt: np.ndarray, gen: np.ndarray, detail: bool = False) -> Evaluation:
    """Cost every op of prefill and decode for rows of (batch, prompt, gen) of one model and configuration, row i on
    machines[mi[i]]: the model is lowered once (cached) and each phase is one NumPy pass over (ops, rows).
    `detail`: keep every op's quantities (FLOPs, bytes by kind) per row, not only their totals."""
    batch, prompt, gen = (np.asarray(x, dtype=float) for x in (batch, prompt, gen))
    check(model, wl)
    prec, par = wl.precision, wl.parallel
    low = lowered(model, prec, par, wl.attention == "flash")
    n = len(batch)
    # Pipeline parallelism: the batch runs as min(batch, pp) micro-batches, each costed at its share of the sequences
    micro = micro_batches(batch, par.pp)
    full, batch = batch, batch / micro

    # Prefill: the prompt, and the logits of its last position (the first generated token's), or of every position
    # (Workload.logits "all": a scoring pass)
    env = {"B": batch, "P": prompt, "LG": prompt if wl.logits == "all" else np.ones_like(prompt)}
    params = [op_params(m, low.prefill) for m in machines]
    P, tables = _gather(params, mi)
    mono = low.prefill.monomials_at(env, n)
    q = low.prefill.quantities(mono, n, fields=_needed(params, P) + (NUMERIC_FIELDS if detail else ()))
    act = q["act_bytes"]
    caps = [m.device.main_memory.capacity_bytes for m in machines]
    mem = Memory(
        weights_bytes=np.full(n, _weights(low, prec, par)),
        kv_cache_bytes=np.asarray(kv_bytes(model, prec, par, full, prompt, gen), dtype=float),
        # peak live activations: the largest op's inputs and outputs (inference frees intermediates as it goes)
        activation_bytes=act.max(axis=0) if len(act) else np.zeros(n),
        capacity_bytes=caps[0] if len(machines) == 1 else np.array([np.nan if c is None else c for c in caps])[mi],
    )
    resident_bw = level_bandwidth(machines, mi, mem.total_bytes)
    t = terms(P, tables, q, resident_bw, level_bandwidth(machines, mi, act))
    values = point_costs(t, P["count"])
    if detail:
        values.update({f: q[f] * P["count"] for f in NUMERIC_FIELDS})
    prefill = PhaseCost(low.prefill, values, _sums(low.prefill.totals(mono, n)), np.ones(n),
                        tuple(p.unit for p in params), tuple(p.precision for p in params), _widen(P))

    # Decode: steps 1..gen-1, each one token per sequence over a context that grows by one per step.
    if low.decode is None:
        decode = PhaseCost(None, {}, {}, np.zeros(n))
        return Evaluation(model, wl, machines, mi, full, prompt, gen, mem,
                          _pipelined(prefill, micro, (micro + par.pp - 1) / par.pp), decode)
    if model.arch == "decoder":
        first, last = prompt + 1, prompt + gen - 1
    else:
        first, last = np.full(n, 2.0), gen
    steps = np.maximum(last - first + 1, 0.0)
    params = [op_params(m, low.decode) for m in machines]
    P, tables = _gather(params, mi)
    edges = [0.0, *low.breaks, math.inf]
    decode = None
    for k in range(len(edges) - 1):  # stretches of contexts over which every quantity is linear in the context
        lo, hi = np.maximum(first, edges[k] + 1), np.minimum(last, edges[k + 1])
        values, sums = _stretch(low.decode, params, P, tables, machines, mi, batch, prompt, lo, hi,
                                max(edges[k], 1.0), resident_bw, detail)
        seg = PhaseCost(low.decode, values, sums, steps, tuple(p.unit for p in params),
                        tuple(p.precision for p in params), _widen(P))
        decode = seg if decode is None else decode + seg
    if par.pp > 1:
        prefill = _pipelined(prefill, micro, (micro + par.pp - 1) / par.pp)
        decode = _pipelined(decode, micro, np.ones(n))
    return Evaluation(model, wl, machines, mi, full, prompt, gen, mem, prefill, decode)


def micro_batches(batch: np.ndarray, pp: int) -> np.ndarray:
    """Micro-batches a pipeline of pp stages runs a batch as: min(batch, pp), so every stage has one to work on
    (vLLM and TensorRT-LLM keep pp batches in flight; one sequence cannot be split); 1 without pipelining."""
    return np.minimum(np.asarray(batch, dtype=float), float(pp)) if pp > 1 else np.ones(np.shape(batch))


_TIMES = ("compute_s", "memory_s", "comm_s", "overhead_s", "time_s", "compute_bound_s")


def _pipelined(ph: PhaseCost, micro: np.ndarray, stretch: np.ndarray) -> PhaseCost:
    """A phase costed for one micro-batch walking through every stage, as the pipeline runs it: M micro-batches do
    M times the work (quantities x M), and the phase takes the pipeline's time. Prefill: (M + pp - 1) stage times of
    one micro-batch, (M + pp - 1) / pp of its walk through all pp stages (the fill-and-drain bubble); a decode step:
    while M <= pp micro-batches are in flight each stage is busy M of every pp stage times, so a round (one token for
    every sequence) takes one micro-batch's walk (stretch 1). Without pipelining M = 1 and nothing changes."""
    if np.all(micro == 1.0) and np.all(stretch == 1.0):
        return ph
    values = {k: v * (stretch if k in _TIMES else micro) for k, v in ph.values.items()}
    sums = {k: v * micro for k, v in ph.sums.items()}
    return replace(ph, values=values, sums=sums)


def machine_errors(model: ModelSpec, wl: Workload, machines: tuple[Machine, ...]) -> list[str]:
    """Per machine, why it cannot cost this model and configuration ('' where it can): a figure that no rule
    supplies (perfmodel.cost._peak)."""
    low = lowered(model, wl.precision, wl.parallel, wl.attention == "flash")
    out = []
    for m in machines:
        try:
            for tab in (low.prefill, low.decode):
                if tab is not None:
                    op_params(m, tab)
            m.datasheet_peak(OpKind.MATMUL, wl.act)
            out.append("")
        except PerfmodelError as e:
            out.append(str(e))
    return out


def _needed(params: list[OpParams], P: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The quantities costing reads (cost.needed), kept on a single machine's parameters."""
    if len(params) == 1:
        if "needed" not in params[0].__dict__:
            params[0].__dict__["needed"] = needed(P)
        return params[0].__dict__["needed"]
    return needed(P)


def _weights(low: Any, prec: Precision, par: Parallel) -> float:
    """Weight bytes per device of a lowered configuration (memory.weight_bytes), kept on it."""
    if "weight_bytes" not in low.__dict__:
        low.__dict__["weight_bytes"] = weight_bytes(low.model, prec, par)
    return low.__dict__["weight_bytes"]


def _rows_of(params: list[OpParams], P: dict[str, np.ndarray], ops: np.ndarray) -> dict[str, np.ndarray]:
    """The parameters of the selected ops (kept on a single machine's parameters)."""
    if len(params) == 1:
        key = ("ops", ops.tobytes())
        if key not in params[0].__dict__:
            params[0].__dict__[key] = {k: v[ops] for k, v in P.items()}
        return params[0].__dict__[key]
    return {k: v[ops] for k, v in P.items()}


def _widen(P: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: P[k] for k in ("widen_compute", "widen_memory", "widen_link")}


def _sums(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Quantity totals (FIELDS, rows) as {field: (rows,)}, resident bytes (weights + KV cache) among them."""
    out = {f: totals[F[f]] for f in NUMERIC_FIELDS}
    out["resident_bytes"] = out["weight_bytes"] + out["kv_read_bytes"] + out["kv_write_bytes"]
    return out


_STACKED: dict[tuple, tuple] = {}  # parameters of the same machines for the same table, stacked once


def _gather(params: list[OpParams], mi: np.ndarray) -> tuple[dict[str, np.ndarray], tuple]:
    """Op parameters as arrays that broadcast to (ops, rows): one machine's as (ops, 1), several gathered per row."""
    if len(params) == 1:
        return params[0].column, params[0].tables
    key = tuple(map(id, params))
    hit = _STACKED.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], params)):
        if len(_STACKED) >= 1024:
            _STACKED.clear()
        P, tables = stack_params(params)
        hit = _STACKED[key] = (tuple(params), {k: (v, bool((v == v[:, :1]).all())) for k, v in P.items()}, tables)
    _, P, tables = hit
    # a parameter the machines share (counts, op kinds, often the rates of one device under two engines) stays a
    # column; the others are gathered per row
    return {k: v[:, :1] if same else v[:, mi] for k, (v, same) in P.items()}, tables


def _stretch(tab: OpTable, params: list[OpParams], P: dict, tables: tuple, machines: tuple[Machine, ...],
             mi: np.ndarray, batch: np.ndarray, prompt: np.ndarray, lo: np.ndarray, hi: np.ndarray, x1: float,
             resident_bw: np.ndarray, detail: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Costs of every op summed over decode contexts c in [lo, hi], where its quantities are linear in c: exact for
    the quantities and for max(compute, memory) (cost.sum_max_linear), from the values at x1 and x1 + 1."""
    n = len(batch)
    steps = np.maximum(hi - lo + 1, 0.0)
    mid = (lo + hi) / 2.0  # a quantity linear in c sums over [lo, hi] to steps x its value at the middle
    env = {"B": batch, "X": prompt}
    count = P["count"]
    fields = _needed(params, P)
    q1 = tab.quantities({**env, "C": x1}, n, fields=fields + (NUMERIC_FIELDS if detail else ()))
    dep = tab.depends("C")  # the ops whose quantities grow with the context (attention); the rest are constant
    q2 = tab.quantities({**env, "C": x1 + 1.0}, n, dep, fields) if dep.any() else None
    act1 = q1["act_bytes"]
    act_end = act1
    if dep.any():  # activations at the stretch's last context pick the level that serves them
        act_end = act1.copy()
        act_end[dep] += (q2["act_bytes"] - act1[dep]) * (np.maximum(hi, lo) - x1)
    act_bw = level_bandwidth(machines, mi, act_end)
    t1 = terms(P, tables, q1, resident_bw, act_bw)
    c1, m1 = t1["compute_s"], t1["memory_s"]
    body = steps * np.maximum(c1, m1)
    comp = steps * np.where(c1 >= m1, c1, 0.0)
    out = {"compute_s": steps * c1, "memory_s": steps * m1, "comm_s": steps * t1["comm_s"]}
    if dep.any():  # max(compute, memory) of ops linear in c: summed exactly (cost.sum_max_linear)
        Pd = _rows_of(params, P, dep)
        t2 = terms(Pd, tables, q2, resident_bw, act_bw[dep])
        c1d, m1d = c1[dep], m1[dep]
        us, vs = t2["compute_s"] - c1d, t2["memory_s"] - m1d
        body[dep], comp[dep] = sum_max_linear(lo, hi, c1d - us * x1, us, m1d - vs * x1, vs)
        for k in ("compute_s", "memory_s", "comm_s"):  # sum over c of a line through (x1, a1), (x1 + 1, a2)
            a1 = t1[k][dep]
            out[k][dep] = steps * (a1 + (t2[k] - a1) * (mid - x1))
    oh = t1["overhead_s"]
    g = P["graph_overhead"]
    if np.isfinite(g).any():  # one sequence's decode step replayed from a CUDA graph: no host launch per kernel
        oh = np.where(np.isfinite(g) & (batch == 1.0) & (oh > 0), g, oh)
    out = {k: v * count for k, v in out.items()}
    out.update(overhead_s=oh * steps * count, time_s=(body + oh * steps) * count + out["comm_s"],
               compute_bound_s=comp * count)
    mono_mid = tab.monomials_at({**env, "C": mid}, n)
    if detail:
        qmid = {f: np.array(q1[f]) for f in NUMERIC_FIELDS}
        if dep.any():
            for f, v in tab.quantities(mono_mid, n, dep, NUMERIC_FIELDS).items():
                qmid[f][dep] = v
        out.update({f: qmid[f] * steps * count for f in NUMERIC_FIELDS})
    return out, _sums(tab.totals(mono_mid, n) * steps)


def capacity_messages(model: ModelSpec, device: Device, wl: Workload, mem: Memory, batch: np.ndarray,
                      prompt: np.ndarray, gen: np.ndarray, more: str = "", ignorable: bool = True) -> list[str]:
    """The "does not fit" message of every scenario (arrays over scenarios), with what would fit: the largest batch,
    a tp degree, or a narrower weight format. Vectorised: the advice is computed on arrays, one pass per option."""
    gb = 1e9
    cap = float(mem.capacity_bytes)
    b, p, g = (np.broadcast_to(np.asarray(x, dtype=float), np.shape(batch)) for x in (batch, prompt, gen))
    weights, kv, act = (np.broadcast_to(np.asarray(x, dtype=float), b.shape) for x in (
        mem.weights_bytes, mem.kv_cache_bytes, mem.activation_bytes))
    per_seq = (kv + act) / b
    room = cap - weights
    with np.errstate(divide="ignore", invalid="ignore"):
        best_batch = np.where(room > per_seq, np.floor(room / per_seq), 0)
    tp_hint = np.zeros(b.shape)
    for tp in (2, 4, 8, 16, 32, 64):
        if model.n_heads % tp or tp <= wl.tp:
            continue
        par = Parallel(tp, wl.pp)
        need = weight_bytes(model, wl.precision, par) + kv_bytes(model, wl.precision, par, b, p, g) + act / tp * wl.tp
        tp_hint = np.where((tp_hint == 0) & (need <= cap), tp, tp_hint)
    fmt_hint = np.full(b.shape, "", dtype=object)
    for fmt in (DType.FP8, DType.INT4):
        if fmt.bits < wl.weights.bits:
            prec = replace(wl.precision, weights=fmt)
            need = weight_bytes(model, prec, wl.parallel) + kv + act
            fmt_hint = np.where((fmt_hint == "") & (need <= cap), fmt.value, fmt_hint)
    advice: dict[tuple, str] = {}

    def advise(best: int, tp: int, fmt: str) -> str:
        if (best, tp, fmt) not in advice:
            hints = ([f"--batch {best} (the largest batch that fits)"] if best >= 1 else
                     ([f"--tp {tp}"] if tp else []) + ([f"--weights {fmt}"] if fmt else []))
            advice[best, tp, fmt] = ("Would fit: " + " or ".join(hints) + "." if hints else
                                     "No batch, tp degree up to 64 or weight format tried fits.")
        return advice[best, tp, fmt]

    head, tail = f"{model.id} does not fit on {device.id}: it needs", f"but has {cap / gb:.1f} GB."
    end = " Pass --ignore-capacity to compute anyway." if ignorable else ""
    return [f"{head} {t:.1f} GB per device (weights {w:.1f} GB, KV cache {k:.1f} GB, activations {a:.2f} GB) {tail} "
            f"{advise(bb, tp, fmt)}{' ' + more if more else ''}{end}"
            for t, w, k, a, bb, tp, fmt in zip(((weights + kv + act) / gb).ravel().tolist(),
                                               (weights / gb).ravel().tolist(), (kv / gb).ravel().tolist(),
                                               (act / gb).ravel().tolist(), best_batch.astype(int).ravel().tolist(),
                                               tp_hint.astype(int).ravel().tolist(), fmt_hint.ravel().tolist())]


def capacity_message(model: ModelSpec, device: Device, wl: Workload, mem: Memory, prompt: float, gen: float,
                     more: str = "", ignorable: bool = True) -> str:
    """The "does not fit" message of one scenario (see capacity_messages); `more`: a further way to fit, after the
    others; `ignorable`: whether --ignore-capacity applies (not to a simulation)."""
    return capacity_messages(model, device, wl, mem, np.array([wl.batch], dtype=float), np.array([prompt]),
                             np.array([gen]), more, ignorable)[0]
