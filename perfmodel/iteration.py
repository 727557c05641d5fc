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
# the (q, o) grid of prefill-chunk attention, the largest table, is coarser: attention is smooth in both, and going
# from 12 to 4 points a doubling moved the throughput and mean TTFT of benchmarks of identical requests by under
# 0.03 % (llama-3-8b, llama-3-70b tp 4, mixtral-8x7b tp 2; prompts of 128 to 20,000 tokens) and the mean TTFT of
# docs/serving.md's Poisson example by 0.04 % (its percentiles by about 1 %: any change of an iteration's time
# reorders arrivals against iterations), while tabulating 2-3x faster
CHUNK_PER_DOUBLING = 4
_DENSE_MAX = 65536  # whole token counts looked up directly (StepCost._dense); larger ones interpolated
_STEPS = np.arange(4096)  # step numbers of a decode run (sliced: np.arange costs microseconds a call)


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


def _grid(hi: float, exact_to: int = 64, per_doubling: int = _PER_DOUBLING) -> np.ndarray:
    """1, 2, ..., exact_to, then geometric up to hi (inclusive), `per_doubling` points a doubling."""
    hi = max(float(hi), 2.0)
    lo = np.arange(1.0, min(exact_to, hi) + 1.0)
    if hi <= exact_to:
        return lo
    n = int(np.ceil(np.log2(hi / exact_to) * per_doubling))
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

    @cached_property
    def _dense(self) -> tuple[list[float], list[float]]:
        """token_s and emit_s at every whole count up to their grids' ends (at most _DENSE_MAX), by the same
        interpolation: the simulator's loop looks them up instead of searching the grid each iteration."""
        tg, ts, eg, es, *_ = self._lists
        return ([_interp(tg, ts, float(x)) for x in range(min(int(tg[-1]), _DENSE_MAX) + 1)],
                [_interp(eg, es, float(x)) for x in range(min(int(eg[-1]), _DENSE_MAX) + 1)])

    def chunk_s_at(self, q: float, o: float) -> float:
        """Attention time of a prefill chunk of q tokens after o cached ones: bilinear on the (q, o) grid."""
        *_, qs, os_, s = self._lists
        i, u = _locate(qs, q)
        j, v = _locate(os_, o)
        return ((1 - u) * (1 - v) * s[i][j] + u * (1 - v) * s[i + 1][j] + (1 - u) * v * s[i][j + 1]
                + u * v * s[i + 1][j + 1])

    def chunks_s(self, q: np.ndarray, o: np.ndarray) -> np.ndarray:
        """chunk_s_at over arrays of chunks (the same bilinear interpolation, vectorised)."""
        qs, os_ = self.chunk_q, self.chunk_o
        if len(qs) < 2 or len(os_) < 2:
            return np.array([self.chunk_s_at(a, b) for a, b in zip(q, o)], dtype=float)
        i = np.clip(np.searchsorted(qs, q, side="right") - 1, 0, len(qs) - 2)
        j = np.clip(np.searchsorted(os_, o, side="right") - 1, 0, len(os_) - 2)
        u = np.clip((q - qs[i]) / (qs[i + 1] - qs[i]), 0.0, 1.0)
        v = np.clip((o - os_[j]) / (os_[j + 1] - os_[j]), 0.0, 1.0)
        s = self.chunk_s
        return ((1 - u) * (1 - v) * s[i, j] + u * (1 - v) * s[i + 1, j] + (1 - u) * v * s[i, j + 1]
                + u * v * s[i + 1, j + 1])

    def iterations_s(self, n_dec: np.ndarray, sum_ctx: np.ndarray, emitting: np.ndarray, chunk_of: np.ndarray,
                     chunk_q: np.ndarray, chunk_o: np.ndarray) -> np.ndarray:
        """iteration_s over arrays of iterations (vectorised): n_dec, sum_ctx and emitting per iteration, and the
        prefill chunks (q, o) with the iteration each belongs to (chunk_of)."""
        n = len(n_dec)
        n_dec = np.asarray(n_dec, dtype=float)
        att = np.bincount(chunk_of, weights=self.chunks_s(chunk_q, chunk_o), minlength=n) if len(chunk_of) else 0.0
        q_sum = np.bincount(chunk_of, weights=chunk_q, minlength=n) if len(chunk_of) else 0.0
        n_chunks = np.bincount(chunk_of, minlength=n) if len(chunk_of) else 0.0
        t = n_dec + q_sum
        mean = sum_ctx / np.maximum(n_dec, 1.0)
        dec = np.where(n_dec > 0, np.interp(mean, self.ctx, self.dec_fixed_s)
                       + n_dec * np.interp(mean, self.ctx, self.dec_per_seq_s), 0.0)
        emit = np.where(emitting > 0, np.interp(emitting, self.emit, self.emit_s), 0.0)
        s = (np.interp(t, self.tokens, self.token_s) + emit + dec + att + self.step_overhead_s
             + (n_dec + n_chunks) * self.token_overhead_s)
        return np.where(t > 0, s, 0.0)

    def _pass_s(self, tokens: float, emit_rows: float, attention_s: float, chunks: list[tuple[float, float]],
                seqs: int) -> float:
        """One pass: the token ops over `tokens`, the LM head over `emit_rows`, the decode attention given, each
        prefill chunk's attention, and the host overheads (per pass, per sequence)."""
        tg, ts, eg, es, *_ = self._lists
        dt, de = self._dense
        ti = int(tokens)
        s = dt[ti] if ti == tokens and ti < len(dt) else _interp(tg, ts, tokens)
        if emit_rows:
            ei = int(emit_rows)
            s += de[ei] if ei == emit_rows and ei < len(de) else _interp(eg, es, emit_rows)
        s += attention_s
        for q, o in chunks:
            s += self.chunk_s_at(q, o)
        return s + self.step_overhead_s + seqs * self.token_overhead_s

    def iteration_s(self, n_dec: int, sum_ctx: float, chunks: list[tuple[float, float]], emitting: int) -> float:
        """One iteration: n_dec decode sequences whose contexts sum to sum_ctx, prefill chunks (q, o), `emitting`
        sequences producing a token (the decodes and the chunks that finish a prompt)."""
        t = n_dec + sum(q for q, _ in chunks)
        if t <= 0:
            return 0.0
        attention = self._decode_attention_at(n_dec, sum_ctx) if n_dec else 0.0
        return self._pass_s(t, emitting, attention, chunks, n_dec + len(chunks))

    def _decode_attention_at(self, n_dec: int, sum_ctx: float) -> float:
        """Attention of n_dec decode sequences whose contexts sum to sum_ctx (scalar; decode_attention_s's
        interpolation, the context grid searched once for both tables)."""
        _, _, _, _, cg, cf, cp, *_ = self._lists
        if len(cg) == 1:
            return cf[0] + n_dec * cp[0]
        i, u = _locate(cg, sum_ctx / n_dec)
        return (cf[i] + u * (cf[i + 1] - cf[i])) + n_dec * (cp[i] + u * (cp[i + 1] - cp[i]))

    def spec_iteration_s(self, n_dec: int, sum_ctx: float, chunks: list[tuple[float, float]], emitting: int,
                         k: int, draft: "StepCost", passes: int) -> float:
        """An iteration of speculative decoding (perfmodel.speculative): `passes` drafter passes over the n_dec
        sequences (k decode steps of a drafting model, one of Medusa's heads), then one target pass where each
        verifies k + 1 tokens (a chunk of k + 1 queries after its context) beside the prefill chunks; the LM head runs
        on every verified position."""
        if not n_dec:
            return self.iteration_s(0, 0.0, chunks, emitting)
        verify = n_dec * self.chunk_s_at(k + 1.0, max(sum_ctx / n_dec - 1.0, 0.0))
        return (self._pass_s(n_dec * (k + 1) + sum(q for q, _ in chunks), emitting + n_dec * k, verify, chunks,
                             n_dec + len(chunks))
                + passes * draft.iteration_s(n_dec, sum_ctx, [], n_dec))

    @cached_property
    def _decode_fixed(self) -> dict[int, float]:
        return {}

    def decode_fixed_s(self, n_dec: int) -> float:
        """What a decode-only iteration of n_dec sequences costs besides attention: the token ops over n_dec tokens,
        the LM head over n_dec rows, the host overheads (kept per n_dec)."""
        s = self._decode_fixed.get(n_dec)
        if s is None:
            s = self._decode_fixed[n_dec] = self._pass_s(n_dec, n_dec, 0.0, [], n_dec)
        return s

    def decode_step_s(self, n_dec: int, sum_ctx: float) -> float:
        """A decode-only iteration of n_dec sequences whose contexts sum to sum_ctx: iteration_s(n_dec, sum_ctx, [],
        n_dec) as decode_run_s adds it up (equal to the last bits of rounding)."""
        return self._decode_attention_at(n_dec, sum_ctx) + self.decode_fixed_s(n_dec)

    def decode_run_s(self, n_dec: int, sum_ctx0: float, steps: int) -> np.ndarray:
        """Times of `steps` decode-only iterations of the same n_dec sequences, the first at contexts summing to
        sum_ctx0, each step adding one token to every context (vectorised)."""
        mean = (sum_ctx0 + n_dec * (_STEPS[:steps] if steps <= len(_STEPS) else np.arange(steps))) / n_dec
        return self.decode_attention_s(n_dec, mean) + self.decode_fixed_s(n_dec)


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
    tab = _step_table(model, prec, par, wl.attention == "flash")
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
        htab = _step_table(model, split.host_wl.precision, par, split.host_wl.attention == "flash")
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

    tg = _grid(max_tokens)  # token ops over T tokens: one sequence of T new tokens
    eg = _grid(max(max_seqs, 1))  # LM head over n rows: n sequences of one token
    cg = _grid(max_ctx, exact_to=16)  # decode attention: one and two sequences of one token over K keys
    qg = _grid(max_tokens, exact_to=16, per_doubling=CHUNK_PER_DOUBLING)  # prefill chunk of q after o cached
    og = np.concatenate([[0.0], _grid(max(max_ctx, 2), exact_to=16, per_doubling=CHUNK_PER_DOUBLING)])
    qq, oo = (x.ravel() for x in np.meshgrid(qg, og, indexing="ij"))
    nt, ne, nc = len(tg), len(eg), len(cg)
    # every table's points in one costing pass: (B, Q, K, LG) per point
    env = {"B": np.concatenate([np.ones(nt), eg, np.ones(nc), 2 * np.ones(nc), np.ones(len(qq))]),
           "Q": np.concatenate([tg, np.ones(ne + 2 * nc), qq]),
           "K": np.concatenate([tg, np.ones(ne), cg, cg, qq + oo]),
           "LG": np.ones(nt + ne + 2 * nc + len(qq))}
    t = times(env, len(env["B"]))
    cut = np.cumsum([nt, ne, 2 * nc])
    t_tok = t[tok, :cut[0]].sum(axis=0)
    if split is not None:  # each change of side copies the pass's hidden states (perfmodel.offload)
        t_tok = t_tok + crossing_s(model, split.boundaries, tg, wl.act.bytes, split.link_bytes_per_s)
    t_emit = t[emit, cut[0]:cut[1]].sum(axis=0)
    both = t[attn, cut[1]:cut[2]].sum(axis=0)
    per_seq = both[nc:] - both[:nc]
    fixed = both[:nc] - per_seq
    t_chunk = t[attn, cut[2]:].sum(axis=0)
    kv_tok = float(_kv_per_token(model, wl))
    return StepCost(tg, t_tok, eg, t_emit, cg, fixed, per_seq, qg, og, t_chunk.reshape(len(qg), len(og)),
                    mach.eff.step_overhead_s, mach.eff.token_overhead_s, kv_tok, w_bytes)


_TABLES: dict[tuple, tuple] = {}  # the symbolic iteration of a model in a configuration, lowered once


def _step_table(model: ModelSpec, prec, par, fused: bool):
    """The op table of one iteration with symbolic sizes (B sequences of Q new tokens over K keys, LG logit rows)."""
    key = (id(model), prec, par, fused)
    hit = _TABLES.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    B, Q, K, LG = (Poly.var(v) for v in ("B", "Q", "K", "LG"))
    tab = table(lower(model, Pass("decoder", B, Q, K, logits=LG), prec, par, fused))
    if len(_TABLES) >= 512:  # a validation pass uses ~170 configurations
        _TABLES.clear()
    _TABLES[key] = (model, tab)
    return tab


def _kv_per_token(model: ModelSpec, wl: Workload) -> float:
    # one sequence of one token of context (windowed layers count it too: a context under the window)
    return float(kv_bytes(model, wl.precision, wl.parallel, 1.0, 1.0, 0.0))
