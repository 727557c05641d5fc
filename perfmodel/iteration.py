"""The time of one engine iteration, tabulated from the cost model so the simulator never calls it per step.

An iteration of a continuous-batching engine runs one forward pass over a mix of sequences: decode sequences feed
one token each over their cached context, prefill chunks feed q tokens after o cached ones. The model is lowered
once on a pass with symbolic sizes (B sequences of Q new tokens over K keys, LG logit positions) and its ops split
three ways:

- the token ops (projections, MLP or experts, norms, collectives): they see the iteration's T tokens as one GEMM
  of T rows, weights read once; tabulated over T;
- the LM head (the ops that grow with LG): one row per sequence that emits a token this iteration; tabulated;
- attention (the ops that grow with K): per decode sequence over its context (tabulated over the batch n and the
  mean context, exact where the quantities are linear in the context: no sliding window), and per prefill chunk
  over (q, o) (tabulated on a grid and interpolated).

time = token_ops(T) + lm_head(emitting) + decode_attention(n, mean context) + sum over chunks prefill_attention(q, o)
       + step overhead + n_sequences x token overhead  (efficiency.step_overhead_s, token_overhead_s)

Each part is costed by the same per-op roofline as `estimate` (perfmodel.cost.terms): an iteration of n decode
sequences alone costs what `estimate`'s decode step at batch n does (tested).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .cost import level_bandwidth, needed, op_params, point_costs, terms
from .device import Device
from .efficiency import Efficiency
from .errors import PerfmodelError
from .evaluate import check, workload_machine
from .graph import Pass, lower
from .memory import kv_bytes, weight_bytes
from .model import ModelSpec
from .offload import crossing_s, gpu_share, split_times
from .poly import Poly
from .table import table
from .workload import Workload

_PER_DOUBLING = 12  # grid points per doubling of a tabulated size (interpolation error well under 1 %)


def _locate(xs: list[float], x: float) -> tuple[int, float]:
    """(i, u): x lies u of the way from xs[i] to xs[i + 1] (clamped to the ends)."""
    i = min(max(bisect_right(xs, x) - 1, 0), len(xs) - 2)
    if i < 0:  # a one-point grid
        return 0, 0.0
    u = (x - xs[i]) / (xs[i + 1] - xs[i])
    return i, (0.0 if u < 0.0 else 1.0 if u > 1.0 else u)


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0]
    i, u = _locate(xs, x)
    return ys[i] + u * (ys[i + 1] - ys[i])


def _grid(hi: float, exact_to: int = 64) -> np.ndarray:
    """1, 2, ..., exact_to, then geometric up to hi (inclusive)."""
    hi = max(float(hi), 2.0)
    lo = np.arange(1.0, min(exact_to, hi) + 1.0)
    if hi <= exact_to:
        return lo
    n = int(np.ceil(np.log2(hi / exact_to) * _PER_DOUBLING))
    return np.unique(np.concatenate([lo, exact_to * (hi / exact_to) ** (np.arange(1, n + 1) / n)]))


@dataclass(frozen=True, eq=False)
class StepCost:
    """Tabulated iteration time of one engine (model, device, workload formats and parallelism, efficiency)."""

    tokens: np.ndarray  # grid of T
    token_s: np.ndarray
    emit: np.ndarray  # grid of logit rows
    emit_s: np.ndarray
    ctx: np.ndarray  # grid of the mean decode context
    dec_fixed_s: np.ndarray  # decode attention at n sequences: dec_fixed_s + n x dec_per_seq_s (per context point)
    dec_per_seq_s: np.ndarray
    chunk_q: np.ndarray  # grid of prefill-chunk tokens
    chunk_o: np.ndarray  # grid of cached tokens before the chunk (0 first)
    chunk_s: np.ndarray  # (q, o)
    step_overhead_s: float
    token_overhead_s: float
    kv_bytes_per_token: float  # KV cache bytes per token of context on the busiest device
    weights_bytes: float

    def decode_attention_s(self, n: float, mean_ctx: np.ndarray) -> np.ndarray:
        """Attention of n decode sequences at a mean context (array)."""
        return np.interp(mean_ctx, self.ctx, self.dec_fixed_s) + n * np.interp(mean_ctx, self.ctx,
                                                                               self.dec_per_seq_s)

    @cached_property
    def _lists(self) -> tuple:
        """The tables as Python lists: scalar look-ups in the simulator's loop (np.interp costs microseconds)."""
        return (self.tokens.tolist(), self.token_s.tolist(), self.emit.tolist(), self.emit_s.tolist(),
                self.ctx.tolist(), self.dec_fixed_s.tolist(), self.dec_per_seq_s.tolist(), self.chunk_q.tolist(),
                self.chunk_o.tolist(), self.chunk_s.tolist())

    def chunk_s_at(self, q: float, o: float) -> float:
        """Attention time of a prefill chunk of q tokens after o cached ones: bilinear on the (q, o) grid."""
        *_, qs, os_, s = self._lists
        i, u = _locate(qs, q)
        j, v = _locate(os_, o)
        return ((1 - u) * (1 - v) * s[i][j] + u * (1 - v) * s[i + 1][j] + (1 - u) * v * s[i][j + 1]
                + u * v * s[i + 1][j + 1])

    def _pass_s(self, tokens: float, emit_rows: float, attention_s: float, chunks: list[tuple[float, float]],
                seqs: int) -> float:
        """One pass: the token ops over `tokens`, the LM head over `emit_rows`, the decode attention given, each
        prefill chunk's attention, and the host overheads (per pass, per sequence)."""
        tg, ts, eg, es, *_ = self._lists
        s = _interp(tg, ts, tokens) + (_interp(eg, es, emit_rows) if emit_rows else 0.0) + attention_s
        for q, o in chunks:
            s += self.chunk_s_at(q, o)
        return s + self.step_overhead_s + seqs * self.token_overhead_s

    def iteration_s(self, n_dec: int, sum_ctx: float, chunks: list[tuple[float, float]], emitting: int) -> float:
        """One iteration: n_dec decode sequences whose contexts sum to sum_ctx, prefill chunks (q, o), `emitting`
        sequences producing a token (the decodes and the chunks that finish a prompt)."""
        t = n_dec + sum(q for q, _ in chunks)
        if t <= 0:
            return 0.0
        attention = 0.0
        if n_dec:
            _, _, _, _, cg, cf, cp, *_ = self._lists
            c = sum_ctx / n_dec
            attention = _interp(cg, cf, c) + n_dec * _interp(cg, cp, c)
        return self._pass_s(t, emitting, attention, chunks, n_dec + len(chunks))

    def spec_iteration_s(self, n_dec: int, sum_ctx: float, chunks: list[tuple[float, float]], emitting: int,
                         k: int, draft: "StepCost") -> float:
        """An iteration of speculative decoding (perfmodel.speculative): k drafter decode steps of the n_dec
        sequences, then one target pass where each verifies k + 1 tokens (a chunk of k + 1 queries after its context)
        beside the prefill chunks; the LM head runs on every verified position."""
        if not n_dec:
            return self.iteration_s(0, 0.0, chunks, emitting)
        verify = n_dec * self.chunk_s_at(k + 1.0, max(sum_ctx / n_dec - 1.0, 0.0))
        return (self._pass_s(n_dec * (k + 1) + sum(q for q, _ in chunks), emitting + n_dec * k, verify, chunks,
                             n_dec + len(chunks))
                + k * draft.iteration_s(n_dec, sum_ctx, [], n_dec))

    def decode_run_s(self, n_dec: int, sum_ctx0: float, steps: int) -> np.ndarray:
        """Times of `steps` decode-only iterations of the same n_dec sequences, the first at contexts summing to
        sum_ctx0, each step adding one token to every context (vectorised)."""
        mean = (sum_ctx0 + n_dec * np.arange(steps)) / n_dec
        return self.decode_attention_s(n_dec, mean) + self._pass_s(n_dec, n_dec, 0.0, [], n_dec)


_KEPT: dict[tuple, tuple] = {}  # tabulations of this process, while the same model, device and efficiency are used


@dataclass(frozen=True, eq=False)
class HostSplit:
    """Part of the model on the host CPU (perfmodel.offload): `gpu_layers` (llama.cpp's -ngl, at most n_layers + 1)
    or `offload_experts`, the host as a machine with its own workload formats, the host link, and the changes of side
    a pass makes."""

    gpu_layers: int
    offload_experts: bool
    host: Device
    host_eff: Efficiency | None
    host_wl: Workload
    link_bytes_per_s: float
    boundaries: int


def step_cost(model: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, max_tokens: int,
              max_seqs: int, max_ctx: int, split: HostSplit | None = None) -> StepCost:
    """Tabulate the iteration time of `model` on `device` for up to `max_tokens` tokens an iteration, `max_seqs`
    sequences and contexts up to `max_ctx` (kept: a rate search tabulates once). `split`: part of the model on the
    host CPU, each op's time taken from the side that runs it as perfmodel.offload does."""
    key = (id(model), id(device), id(eff), wl, max_tokens, max_seqs, max_ctx, id(split))
    hit = _KEPT.get(key)
    if hit is not None and hit[0] is model and hit[1] is device and hit[2] is eff:
        return hit[3]
    out = _tabulate(model, device, wl, eff, max_tokens, max_seqs, max_ctx, split)
    if len(_KEPT) >= 64:
        _KEPT.clear()
    _KEPT[key] = (model, device, eff, out)
    return out


def _tabulate(model: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, max_tokens: int,
              max_seqs: int, max_ctx: int, split: HostSplit | None = None) -> StepCost:
    if model.arch != "decoder":
        raise PerfmodelError(f"the serving simulator runs decoder-only models; {model.id} is "
                             f"{model.arch.replace('_', '-')} (use `perfmodel estimate` for its static batches)")
    check(model, wl)
    mach = workload_machine(device, eff, wl)
    prec, par = wl.precision, wl.parallel
    B, Q, K, LG = (Poly.var(v) for v in ("B", "Q", "K", "LG"))
    tab = table(lower(model, Pass("decoder", B, Q, K, logits=LG), prec, par, wl.attention == "flash"))
    params = op_params(mach, tab)
    P = params.column
    attn = tab.depends("K")
    emit = tab.depends("LG") & ~attn
    tok = ~attn & ~emit
    w_bytes = weight_bytes(model, prec, par)
    cap = device.main_memory.capacity_bytes or w_bytes * 2
    resident = np.array([max(cap, w_bytes)])  # weights + the KV pool: the level that serves them (main memory)
    resident_bw = level_bandwidth((mach,), None, resident)

    def on_gpu(env: dict, n: int) -> np.ndarray:
        """(ops, rows) time of every op on the device, counts applied."""
        q = tab.quantities(env, n, fields=needed(P))
        act_bw = level_bandwidth((mach,), None, q["act_bytes"])
        return point_costs(terms(P, params.tables, q, resident_bw, act_bw), P["count"])["time_s"]

    times = on_gpu
    if split is not None:  # each op from the side that runs it (perfmodel.offload's rules)
        hmach = workload_machine(split.host, split.host_eff, split.host_wl)
        htab = table(lower(model, Pass("decoder", B, Q, K, logits=LG), split.host_wl.precision, par,
                           split.host_wl.attention == "flash"))
        hparams = op_params(hmach, htab)
        HP = hparams.column
        h_bw = level_bandwidth((hmach,), None, resident)
        share = gpu_share([o.name for o in tab.shells], model.n_layers, split.gpu_layers,
                          split.offload_experts)[:, None]

        def on_both(env: dict, n: int) -> np.ndarray:
            t_g = on_gpu(env, n)
            hq = htab.quantities(env, n, fields=needed(HP) + ("weight_bytes",))
            t_h = point_costs(terms(HP, hparams.tables, hq, h_bw, level_bandwidth((hmach,), None, hq["act_bytes"])),
                              HP["count"])["time_s"]
            rows = np.broadcast_to(np.asarray(env["B"]) * np.asarray(env["Q"]), (n,))
            return sum(split_times(share, t_g, t_h, hq["weight_bytes"] * HP["count"], rows, split.link_bytes_per_s))

        times = on_both

    one = lambda n: np.ones(n)  # noqa: E731
    tg = _grid(max_tokens)
    t_tok = times({"B": one(len(tg)), "Q": tg, "K": tg, "LG": one(len(tg))}, len(tg))[tok].sum(axis=0)
    if split is not None:  # each change of side copies the pass's hidden states (perfmodel.offload)
        t_tok = t_tok + crossing_s(model, split.boundaries, tg, wl.act.bytes, split.link_bytes_per_s)
    eg = _grid(max(max_seqs, 1))
    t_emit = times({"B": eg, "Q": one(len(eg)), "K": one(len(eg)), "LG": one(len(eg))}, len(eg))[emit].sum(axis=0)
    cg = _grid(max_ctx, exact_to=16)
    nc = len(cg)
    both = times({"B": np.concatenate([one(nc), 2 * one(nc)]), "Q": one(2 * nc), "K": np.concatenate([cg, cg]),
                  "LG": one(2 * nc)}, 2 * nc)[attn].sum(axis=0)
    per_seq = both[nc:] - both[:nc]
    fixed = both[:nc] - per_seq
    qg = _grid(max_tokens, exact_to=16)
    og = np.concatenate([[0.0], _grid(max(max_ctx, 2), exact_to=16)])
    qq, oo = (x.ravel() for x in np.meshgrid(qg, og, indexing="ij"))
    t_chunk = times({"B": one(len(qq)), "Q": qq, "K": qq + oo, "LG": one(len(qq))}, len(qq))[attn].sum(axis=0)
    kv_tok = float(_kv_per_token(model, wl))
    return StepCost(tg, t_tok, eg, t_emit, cg, fixed, per_seq, qg, og, t_chunk.reshape(len(qg), len(og)),
                    mach.eff.step_overhead_s, mach.eff.token_overhead_s, kv_tok, w_bytes)


def _kv_per_token(model: ModelSpec, wl: Workload) -> float:
    # one sequence of one token of context (windowed layers count it too: a context under the window)
    return float(kv_bytes(model, wl.precision, wl.parallel, 1.0, 1.0, 0.0))
