"""Evaluation: the metrics of one workload (or a vector of them) on one device.

One core, `evaluate`, works on NumPy arrays of batch/prompt/gen; `estimate` wraps a single scenario and `sweep`
groups many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .cost import Machine, Terms, op_terms, point_cost, series, sum_max_linear
from .device import Device
from .dtypes import DType
from .efficiency import Efficiency, default_for
from .errors import PerfmodelError
from .graph import NUMERIC_FIELDS, Op, OpKind, Parallel, Pass, Precision, lower
from .memory import Memory, footprint, weight_bytes, kv_bytes
from .model import ModelSpec
from .workload import Workload


def default_gen(model: ModelSpec) -> int:
    return 0 if model.arch == "encoder" else 128


def check(model: ModelSpec, wl: Workload) -> None:
    """Errors that concern the whole combination of model and configuration."""
    if model.n_heads % wl.tp:
        raise PerfmodelError(f"tp must divide n_heads ({model.n_heads}) of {model.id}; got {wl.tp}")
    if wl.pp > model.n_layers:
        raise PerfmodelError(f"pp must be at most n_layers ({model.n_layers}) of {model.id}; got {wl.pp}")


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


@dataclass
class PhaseCost:
    """Per-op costs of one phase, totals over the phase (every decode step summed)."""

    ops: list[Op]
    costs: list[dict[str, Any]]
    steps: np.ndarray

    def total(self, key: str) -> np.ndarray:
        return sum((np.asarray(c[key], dtype=float) for c in self.costs), np.zeros_like(self.steps))

    def bound(self) -> np.ndarray:
        """The resource that took most of the phase's time: compute, memory, comm or overhead."""
        comp = self.total("compute_bound_s")
        body = self.total("time_s") - self.total("overhead_s") - self.total("comm_s")
        table = np.stack([comp, body - comp, self.total("comm_s"), self.total("overhead_s")])
        labels = np.array(["compute", "memory", "comm", "overhead"])
        return np.where(self.total("time_s") > 0, labels[np.argmax(table, axis=0)], "-")


@dataclass
class Evaluation:
    model: ModelSpec
    device: Device
    workload: Workload
    mach: Machine
    batch: np.ndarray
    prompt: np.ndarray
    gen: np.ndarray
    memory: Memory
    prefill: PhaseCost
    decode: PhaseCost

    @cached_property
    def metrics(self) -> dict[str, np.ndarray]:
        b, p, g = self.batch, self.prompt, self.gen
        steps = self.decode.steps
        # host time outside the ops: per forward pass, and per sequence in it
        host = self.mach.eff.step_overhead_s + b * self.mach.eff.token_overhead_s
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
            peak = self.mach.datasheet_peak(OpKind.MATMUL, self.workload.act)
        else:
            peak = self.mach.datasheet_bandwidth(self.memory.total_bytes)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(time > 0, amount / (time * peak * pp), 0.0)


def evaluate(model: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, batch: np.ndarray,
             prompt: np.ndarray, gen: np.ndarray) -> Evaluation:
    """Cost every op of prefill and decode for arrays of (batch, prompt, gen) sharing one model, device and config."""
    batch, prompt, gen = (np.asarray(x, dtype=float) for x in (batch, prompt, gen))
    check(model, wl)
    prec, par, fused = wl.precision, wl.parallel, wl.attention == "flash"
    mach = Machine(device, eff or default_for(device.kind), par)

    # Prefill: the prompt, and the first generated token's logits (all positions' logits when nothing is generated).
    logits = np.where(gen > 0, 1.0, prompt)
    if model.arch == "decoder":
        passes = [Pass("decoder", batch, prompt, prompt, logits=logits)]
    elif model.arch == "encoder":
        passes = [Pass("encoder", batch, prompt, prompt)]
    else:
        passes = [Pass("encoder", batch, prompt, prompt),
                  Pass("decoder", batch, 1.0, 1.0, cross_len=prompt, logits=1.0)]
    pre_ops = tuple(op for ps in passes for op in lower(model, ps, prec, par, fused))
    mem = footprint(model, device, prec, par, batch, prompt, gen, pre_ops)
    resident_bw = mach.bandwidth_for(mem.total_bytes)

    pre_costs = []
    for op in pre_ops:
        t = op_terms(op, mach, resident_bw, mach.bandwidth_for(op.act_bytes))
        pre_costs.append(_with_quantities(point_cost(op, t), op, t, {f: getattr(op, f) for f in NUMERIC_FIELDS}))
    prefill = PhaseCost(list(pre_ops), pre_costs, np.ones_like(batch))

    # Decode: steps 1..gen-1, each one token per sequence over a context that grows by one per step.
    if model.arch == "encoder":
        return Evaluation(model, device, wl, mach, batch, prompt, gen, mem, prefill,
                          PhaseCost([], [], np.zeros_like(batch)))
    if model.arch == "decoder":
        first, last, cross = prompt + 1, prompt + gen - 1, 0.0
    else:
        first, last, cross = np.full_like(batch, 2.0), gen, prompt
    steps = np.maximum(last - first + 1, 0.0)
    breaks = sorted({model.sliding_window} if model.sliding_window and any(s for s, _ in model.layer_kinds()) else set())
    edges = [0.0, *map(float, breaks), math.inf]
    dec_ops: list[Op] = []
    dec_costs: list[dict[str, Any]] = []
    for k in range(len(edges) - 1):
        lo = np.maximum(first, edges[k] + 1)
        hi = np.minimum(last, edges[k + 1])
        x1 = max(edges[k], 1.0)
        g1 = lower(model, Pass("decoder", batch, 1.0, x1, cross_len=cross, logits=1.0), prec, par, fused)
        g2 = lower(model, Pass("decoder", batch, 1.0, x1 + 1, cross_len=cross, logits=1.0), prec, par, fused)
        for i, (o1, o2) in enumerate(zip(g1, g2)):
            c = _segment_cost(o1, o2, x1, lo, hi, mach, resident_bw)
            if k == 0:
                dec_ops.append(o1)
                dec_costs.append(c)
            else:
                dec_costs[i] = {key: (v + c[key] if key not in ("unit", "precision") else v)
                                for key, v in dec_costs[i].items()}
    decode = PhaseCost(dec_ops, dec_costs, steps)
    return Evaluation(model, device, wl, mach, batch, prompt, gen, mem, prefill, decode)


def _with_quantities(cost: dict, op: Op, t: Terms, q: dict) -> dict:
    cost.update({f: q[f] * op.count for f in NUMERIC_FIELDS})
    cost["resident_bytes"] = (q["weight_bytes"] + q["kv_read_bytes"] + q["kv_write_bytes"]) * op.count
    cost["unit"], cost["precision"] = t.unit, t.precision
    return cost


def _segment_cost(o1: Op, o2: Op, x1: float, lo: np.ndarray, hi: np.ndarray, mach: Machine,
                  resident_bw: np.ndarray) -> dict[str, Any]:
    """Costs of one op summed over decode contexts c in [lo, hi], where its quantities are linear in c."""
    act_end = o1.act_bytes + (o2.act_bytes - o1.act_bytes) * (np.maximum(hi, lo) - x1)
    act_bw = mach.bandwidth_for(act_end)
    t1, t2 = op_terms(o1, mach, resident_bw, act_bw), op_terms(o2, mach, resident_bw, act_bw)
    n = np.maximum(hi - lo + 1, 0.0)
    oh = t1.overhead_s

    def lin(a1: Any, a2: Any) -> np.ndarray:  # sum over c of a(c), a linear through (x1, a1), (x1 + 1, a2)
        slope = np.asarray(a2, dtype=float) - a1
        return series(lo, hi, a1 - slope * x1, slope) * o1.count

    q = {f: lin(getattr(o1, f), getattr(o2, f)) for f in NUMERIC_FIELDS}
    if o1.kind == OpKind.COMM:
        comm = lin(t1.comm_s, t2.comm_s)
        cost = dict(compute_s=0.0, memory_s=0.0, comm_s=comm, overhead_s=0.0, time_s=comm, compute_bound_s=0.0)
    else:
        us, vs = np.asarray(t2.compute_s) - t1.compute_s, np.asarray(t2.memory_s) - t1.memory_s
        body, comp = sum_max_linear(lo, hi, t1.compute_s - us * x1, us, t1.memory_s - vs * x1, vs)
        cost = dict(compute_s=lin(t1.compute_s, t2.compute_s), memory_s=lin(t1.memory_s, t2.memory_s), comm_s=0.0,
                    overhead_s=oh * n * o1.count, time_s=(body + oh * n) * o1.count, compute_bound_s=comp * o1.count)
    cost.update(q)
    cost["resident_bytes"] = q["weight_bytes"] + q["kv_read_bytes"] + q["kv_write_bytes"]
    cost["unit"], cost["precision"] = t1.unit, t1.precision
    return cost


def capacity_messages(model: ModelSpec, device: Device, wl: Workload, mem: Memory, batch: np.ndarray,
                      prompt: np.ndarray, gen: np.ndarray) -> list[str]:
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
            prec = Precision(fmt, wl.kv, wl.act, wl.gemm, wl.dequant)
            need = weight_bytes(model, prec, wl.parallel) + kv + act
            fmt_hint = np.where((fmt_hint == "") & (need <= cap), fmt.value, fmt_hint)
    out = []
    for i in range(b.size):
        if best_batch.flat[i] >= 1:
            hints = [f"--batch {int(best_batch.flat[i])} (the largest batch that fits)"]
        else:
            hints = ([f"--tp {int(tp_hint.flat[i])}"] if tp_hint.flat[i] else []) + (
                [f"--weights {fmt_hint.flat[i]}"] if fmt_hint.flat[i] else [])
        advice = ("Would fit: " + " or ".join(hints) + "." if hints else
                  "No batch, tp degree up to 64 or weight format tried fits.")
        total = weights.flat[i] + kv.flat[i] + act.flat[i]
        out.append(f"{model.id} does not fit on {device.id}: it needs {total / gb:.1f} GB per device (weights "
                   f"{weights.flat[i] / gb:.1f} GB, KV cache {kv.flat[i] / gb:.1f} GB, activations "
                   f"{act.flat[i] / gb:.2f} GB) but has {cap / gb:.1f} GB. {advice} Pass --ignore-capacity to "
                   f"compute anyway.")
    return out


def capacity_message(model: ModelSpec, device: Device, wl: Workload, mem: Memory, prompt: float, gen: float) -> str:
    """The "does not fit" message of one scenario (see capacity_messages)."""
    return capacity_messages(model, device, wl, mem, np.array([wl.batch], dtype=float), np.array([prompt]),
                             np.array([gen]))[0]
