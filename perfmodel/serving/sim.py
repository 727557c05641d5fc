"""A request-level discrete-event simulator of one serving engine: arrivals, a scheduler, a paged KV cache.

Time advances one engine iteration at a time; each iteration's time comes from the tabulated cost model
(perfmodel.iteration). Stretches of decode-only iterations with nothing to schedule (no prompt waiting that could
be admitted) are run as one vectorised block up to the next event: a request finishing, an arrival that could be
admitted, or the KV cache filling.

Schedulers (Scheduler.policy):
- `vllm`: continuous batching with chunked prefill (vLLM V1, SGLang, TensorRT-LLM in-flight batching): every
  iteration decodes all running sequences, continues the running prompts in chunks and admits waiting requests
  first-come first-served, within `max_num_seqs` sequences and `max_batched_tokens` tokens an iteration;
- `prefill-first`: no chunking (vLLM V0's default): whenever waiting prompts can be admitted an iteration prefills
  them (whole) alone; otherwise it decodes the running batch;
- `static`: a batch of up to max_num_seqs waiting requests is prefilled together and decoded until its longest
  request ends (finished sequences keep their slot: padding); the next batch starts after it (the baseline);
- `disaggregated` (run by perfmodel.serving.simulate): prefill instances and decode instances, the KV cache sent
  over the link between them (DistServe, NVIDIA Dynamo).

KV cache: `block_size` tokens a block (vLLM's default 16); a request holds ceil(tokens / block_size) blocks, taken as
its tokens are written. When a running decode needs a block and none is free, the most recently admitted request is
preempted (vLLM's policy): by recompute (its blocks freed; it re-enters the queue's head and later prefills its prompt
and the tokens it had generated), or by swap (its blocks copied to host memory over PCIe and back when resumed; the
copies' time is added to the iterations that do them).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import PerfmodelError
from .requests import Requests
from ..iteration import StepCost

POLICIES = ("vllm", "prefill-first", "static", "disaggregated")
PREEMPTION = ("recompute", "swap")
KV_MEMORY = ("total", "free")

_WAIT, _PREFILL, _DECODE, _DONE, _SWAPPED = 1, 2, 3, 4, 5
_MACRO_MAX = 4096  # most decode steps run as one block
_MACRO_MIN = 4  # fewer run one by one (a block's NumPy set-up costs more)


@dataclass(frozen=True)
class Scheduler:
    """How the engine batches. Defaults are vLLM's: 256 sequences (`max_num_seqs`), 8192 tokens an iteration
    (`max_num_batched_tokens` of the V1 OpenAI server on GPUs of 70 GiB and more), blocks of 16 tokens, 90 % of device
    memory for weights, activations and KV cache (`gpu_memory_utilization`).
    `kv_memory` says what `memory_utilization` is a share of: "total", all of device memory, weights and activations
    included (vLLM's gpu_memory_utilization, SGLang's mem_fraction_static), or "free", what the weights and the
    largest iteration's activations leave, all of it for the KV cache (TensorRT-LLM's
    KvCacheConfig.free_gpu_memory_fraction, default 0.9: the engine sizes its cache from the free memory it finds)."""

    policy: Literal["vllm", "prefill-first", "static", "disaggregated"] = "vllm"
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    block_size: int = 16
    memory_utilization: float = 0.9
    preemption: Literal["recompute", "swap"] = "recompute"
    kv_memory: Literal["total", "free"] = "total"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            from ..errors import did_you_mean

            raise PerfmodelError(f"scheduler must be one of {', '.join(POLICIES)}; got {self.policy!r}."
                                 f"{did_you_mean(self.policy, list(POLICIES))}")
        if self.preemption not in PREEMPTION:
            raise PerfmodelError(f"preemption must be recompute or swap; got {self.preemption!r}")
        if self.kv_memory not in KV_MEMORY:
            raise PerfmodelError(f"kv-memory must be total (a share of all device memory, vLLM's rule) or free (a "
                                 f"share of what the weights and activations leave, TensorRT-LLM's); got "
                                 f"{self.kv_memory!r}")
        for name in ("max_num_seqs", "max_batched_tokens", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise PerfmodelError(f"{name.replace('_', '-')} must be a whole number >= 1; got {v!r}")
        if self.max_batched_tokens < self.max_num_seqs and self.policy == "vllm":
            raise PerfmodelError(f"max-batched-tokens ({self.max_batched_tokens}) must be at least max-num-seqs "
                                 f"({self.max_num_seqs}): every running sequence decodes one token an iteration")
        if not 0.0 < self.memory_utilization <= 1.0:
            raise PerfmodelError(f"memory utilisation must be in (0, 1]; got {self.memory_utilization!r}")


@dataclass(eq=False)
class Trace:
    """What one engine did: per request (in the order of the Requests given) and over time."""

    first_scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    produced: np.ndarray  # output tokens generated per request (== requested when all finished)
    prefilled_tokens: np.ndarray  # prompt tokens run through prefill (more than the prompt after a recompute)
    preemptions: int
    kv_blocks: int
    kv_block_seconds: float  # integral of blocks in use over time
    peak_kv_blocks: int
    busy_s: float  # time with work on the engine
    timeline: dict[str, list] = field(default_factory=dict)  # t_s, running, kv_blocks: one sample a block of steps
    sent_s: np.ndarray | None = None  # when each request reached the engine (its arrival, unless clients held it)


@dataclass(frozen=True, eq=False)
class Spec:
    """Speculative decoding in the engine: `draft_tokens` k drafted a step by a drafter costing `draft`, and
    `tokens_per_step` E = the mean tokens a sequence gains an iteration (perfmodel.speculative.expected_tokens)."""

    draft_tokens: int
    tokens_per_step: float
    draft: StepCost  # or anything with its iteration_s (speculative.MedusaCost)
    draft_passes: int  # drafter passes an iteration: draft_tokens, or 1 for Medusa's heads


def run(req: Requests, sc: StepCost, sch: Scheduler, kv_blocks: int, swap_bytes_per_s: float = 0.0,
        prefilled: bool = False, record: bool = False, clients: int | None = None, spec: Spec | None = None) -> Trace:
    """Simulate one engine serving `req`. `prefilled`: the requests arrive with their prompt already in their KV
    cache and their first token out (the decode side of a disaggregated pair). `clients`: at most that many requests
    in flight (a benchmark's --max-concurrency): request j is sent at its arrival time or when the (j - clients)-th
    request to finish does, whichever is later. `spec`: speculative decoding, in expectation: every decode iteration
    advances each running sequence by E tokens on average (floor((m + 1) E) - floor(m E) at the m-th, so all stay in
    step), at the cost of k drafter steps and a verification pass of k + 1 tokens a sequence; no stretch of such
    iterations is run as one block."""
    longest = int((req.prompt_tokens + req.output_tokens).max())
    if -(-longest // sch.block_size) > kv_blocks:
        raise PerfmodelError(f"a request of {longest} tokens needs {-(-longest // sch.block_size)} KV blocks of "
                             f"{sch.block_size} tokens; the cache holds {kv_blocks}: it can never run (shorten the "
                             f"requests, or use more devices or a smaller KV format)")
    if sch.policy == "static":
        if clients is not None:
            raise PerfmodelError("--concurrency applies to the continuous schedulers (vllm, prefill-first)")
        if spec is not None:
            raise PerfmodelError("speculative decoding is simulated with the continuous schedulers (vllm, "
                                 "prefill-first, disaggregated), not with static batches")
        return _run_static(req, sc, sch, kv_blocks, record)
    n = len(req)
    bs = sch.block_size
    arrival = req.arrival_s.tolist()
    sent = arrival[:]  # when each request reaches the engine (known up to `known`)
    known = n if clients is None else min(n, clients)
    prompt = [int(x) for x in req.prompt_tokens]
    gen = [int(x) for x in req.output_tokens]
    prefix = [int(x) for x in req.prefix_tokens]
    chunked = sch.policy == "vllm"
    budget_max = sch.max_batched_tokens if chunked else max(sch.max_batched_tokens, int(max(prompt) + max(gen)))

    state = [0] * n
    target = prompt[:]  # tokens to prefill (prompt; prompt + generated after a recompute)
    done = [0] * n  # tokens in the KV cache of a prefilling request
    produced = [0] * n
    blocks = [0] * n
    entry_it = [0] * n
    entry_held = [0] * n
    version = [0] * n
    first_sched = [math.nan] * n
    first_tok = [math.nan] * n
    finish = [math.nan] * n
    pref_tokens = [0] * n

    phase_at = _phases(bs)
    waiting: deque[int] = deque()
    running: dict[int, None] = {}  # admission order: the last is preempted first
    prefilling: dict[int, None] = {}
    heap: list[tuple[int, int, int]] = []  # (decode iteration of the last token, version, request)
    cnt = [0] * bs  # decoding requests by (held - entry iteration) mod bs: who needs a block at iteration it
    n_dec = 0
    s_eh = 0  # sum over decoding requests of entry_held - entry_it: their held tokens sum to s_eh + n_dec x it
    it = 0  # decode token steps run (one an iteration, or floor(m E) after m speculative iterations)
    m_spec = 0  # speculative decode iterations run
    k_spec = spec.draft_tokens if spec is not None else 0
    now = 0.0
    used = 0
    nxt = 0
    finished = 0
    preempt = 0
    block_s = 0.0
    peak = 0
    busy = 0.0
    tl: dict[str, list] = {"t_s": [], "running": [], "kv_blocks": [], "tokens": []} if record else {}

    def enter_decode(i: int) -> None:
        nonlocal n_dec, s_eh
        state[i] = _DECODE
        held = target[i]  # tokens in its KV cache
        entry_it[i], entry_held[i] = it, held
        cnt[(held - it) % bs] += 1
        n_dec += 1
        s_eh += held - it
        version[i] += 1
        heapq.heappush(heap, (it + gen[i] - produced[i] - 1, version[i], i))

    def leave_decode(i: int) -> int:
        """Remove a decoding request from the aggregates; its blocks (returned) are freed by the caller."""
        nonlocal n_dec, s_eh
        held = entry_held[i] + it - entry_it[i]
        cnt[(entry_held[i] - entry_it[i]) % bs] -= 1
        n_dec -= 1
        s_eh -= entry_held[i] - entry_it[i]
        version[i] += 1  # its heap entry is stale
        produced[i] = min(produced[i] + it - entry_it[i], gen[i])  # a speculative step may overshoot the end
        target[i] = held + 1 if produced[i] < gen[i] else held  # a recompute prefills prompt + generated tokens
        return -(-held // bs)

    def preempt_last() -> float:
        """Preempt the most recently admitted running request; the seconds of a swap-out copy."""
        nonlocal used, preempt
        i = next(reversed(running))
        del running[i]
        preempt += 1
        extra = 0.0
        if state[i] == _DECODE:
            b = leave_decode(i)
        else:
            del prefilling[i]
            b = blocks[i]
        used -= b
        blocks[i] = 0
        if sch.preemption == "swap" and state[i] == _DECODE:
            state[i] = _SWAPPED
            extra = (target[i] - 1) * sc.kv_bytes_per_token / swap_bytes_per_s
        else:
            state[i] = _WAIT
            done[i] = 0
        waiting.appendleft(i)
        return extra

    def finish_decodes() -> None:
        """Retire the decoding requests whose last token came out in the iterations run (before `it`)."""
        nonlocal used, finished
        while heap and heap[0][0] < it:
            _, ver, i = heapq.heappop(heap)
            if ver != version[i]:
                continue
            used -= leave_decode(i)
            blocks[i] = 0
            del running[i]
            state[i] = _DONE
            finish[i] = now
            finished += 1
            release()

    def release() -> None:
        """A client freed by a finish sends its next request."""
        nonlocal known
        if clients is not None and known < n:
            sent[known] = max(arrival[known], now)
            known += 1

    # can the head of the queue be admitted now? (else a decode-only stretch runs as one block)
    def admissible(free: int) -> bool:
        if not waiting or len(running) >= sch.max_num_seqs:
            return False
        i = waiting[0]
        if state[i] == _SWAPPED or (prefilled and produced[i] == 0):
            held = target[i] - 1 if state[i] == _SWAPPED else target[i]
            need = -(-held // bs) + (held % bs == 0)
        else:
            start = max(done[i], prefix[i])
            need = -(-(start + min(target[i] - start, budget_max)) // bs)
        return need <= free - (cnt[(-it) % bs] if n_dec else 0)

    while finished < n:
        while nxt < known and sent[nxt] <= now:
            state[nxt] = _WAIT
            waiting.append(nxt)
            nxt += 1
        if not running and not waiting:
            now = sent[nxt]
            continue
        free = kv_blocks - used

        if n_dec and not prefilling and spec is None and not admissible(free):
            while heap and heap[0][1] != version[heap[0][2]]:
                heapq.heappop(heap)
            k = max(1, min(heap[0][0] - it + 1, _MACRO_MAX))
            ctx0 = s_eh + n_dec * it + n_dec
            watch = nxt < known and not waiting and len(running) < sch.max_num_seqs  # an arrival could be admitted
            if watch:  # steps get longer as contexts grow: the first step's time bounds how many fit before it
                k = min(k, int((sent[nxt] - now) / sc.decode_step_s(n_dec, ctx0)) + 2)
            phase = np.asarray(cnt)[phase_at[(-it) % bs, :k]]  # blocks opened at each of the k steps (period bs)
            cum_need = None
            if free >= n_dec * -(-k // bs):  # each request opens at most ceil(k / bs) blocks in k steps
                fit = k
            else:
                cum_need = phase[:k].cumsum()
                fit = int(cum_need.searchsorted(free, side="right"))  # steps whose blocks are free
            if min(fit, k) >= _MACRO_MIN:
                k = min(k, fit)
                dts = sc.decode_run_s(n_dec, ctx0, k)
                cum = dts.cumsum()
                if watch:
                    k = min(k, int(cum.searchsorted(sent[nxt] - now, side="left")) + 1)
                levels = used + (phase[:k].cumsum() if cum_need is None else cum_need[:k])
                block_s += float(levels.dot(dts[:k]))
                used = int(levels[-1])
                peak = max(peak, used)
                now += float(cum[k - 1])
                busy += float(cum[k - 1])
                it += k
                if record:
                    tl["t_s"].append(now)
                    tl["running"].append(len(running))
                    tl["kv_blocks"].append(used)
                    tl["tokens"].append(n_dec)
                finish_decodes()
                continue

        # one iteration: blocks for the decodes (preempting when short), then the prompts
        extra_s = 0.0
        delta = 1 if spec is None else int((m_spec + 1) * spec.tokens_per_step) - int(m_spec * spec.tokens_per_step)

        def dec_need() -> int:
            """Blocks the decoding requests open in this iteration's `delta` token steps."""
            return sum(cnt[(-(it + t)) % bs] for t in range(delta)) if n_dec else 0

        need_dec = dec_need()
        while need_dec > kv_blocks - used and running:
            extra_s += preempt_last()
            need_dec = dec_need()
        budget = budget_max - n_dec * (1 + k_spec) if chunked else budget_max
        chunks: list[tuple[int, int]] = []  # (request, tokens)
        if chunked:
            for i in list(prefilling):
                if budget <= 0:
                    break
                if i not in prefilling:  # preempted for an earlier one's blocks
                    continue
                q = min(target[i] - done[i], budget)
                need = -(-(done[i] + q) // bs) - blocks[i]
                while need > kv_blocks - used - need_dec and next(reversed(running)) != i:
                    extra_s += preempt_last()
                    need_dec = dec_need()
                if need > kv_blocks - used - need_dec:
                    break
                chunks.append((i, q))
                budget -= q
                used += need
                blocks[i] += need
        admit_ok = chunked or not prefilling
        while admit_ok and waiting and len(running) < sch.max_num_seqs and budget > 0:
            i = waiting[0]
            free = kv_blocks - used - need_dec
            if state[i] == _SWAPPED or (prefilled and produced[i] == 0):
                held = target[i] - 1 if state[i] == _SWAPPED else target[i]
                need = -(-held // bs)
                if need + (held % bs == 0) > free:  # its blocks, and the one its first step may open
                    break
                waiting.popleft()
                if state[i] == _SWAPPED:
                    extra_s += held * sc.kv_bytes_per_token / swap_bytes_per_s
                    target[i] = held
                running[i] = None
                used += need
                blocks[i] = need
                if math.isnan(first_sched[i]):
                    first_sched[i] = now
                if prefilled and produced[i] == 0:
                    produced[i] = 1
                    first_tok[i] = now
                enter_decode(i)
                need_dec = dec_need()
                budget -= 1 + k_spec  # it decodes in this iteration
                continue
            start = max(done[i], prefix[i])
            q = min(target[i] - start, budget) if chunked else target[i] - start
            if q > budget and not chunked:
                break
            need = -(-(start + q) // bs)
            if need > free:
                break
            waiting.popleft()
            state[i] = _PREFILL
            done[i] = start
            running[i] = None
            prefilling[i] = None
            if math.isnan(first_sched[i]):
                first_sched[i] = now
            chunks.append((i, q))
            budget -= q
            used += need
            blocks[i] = need
        dec_now = n_dec if (chunked or not chunks) else 0
        if not chunks and not dec_now:
            if extra_s:
                now += extra_s
                busy += extra_s
                continue
            if nxt < known:  # nothing can run until something arrives (blocked queue: not with a free engine)
                now = max(now, sent[nxt])
                continue
            raise PerfmodelError("the serving simulator stalled: requests wait but none can be admitted")
        emitting = dec_now + sum(1 for i, q in chunks if done[i] + q >= target[i])
        ctx = s_eh + n_dec * it + n_dec if dec_now else 0.0
        if spec is not None and dec_now:
            dt = sc.spec_iteration_s(dec_now, ctx, [(q, done[i]) for i, q in chunks], emitting, k_spec,
                                     spec.draft, spec.draft_passes) + extra_s
        else:
            dt = sc.iteration_s(dec_now, ctx, [(q, done[i]) for i, q in chunks], emitting) + extra_s
        if dec_now:
            used += need_dec
        block_s += used * dt
        peak = max(peak, used)
        now += dt
        busy += dt
        entering: list[int] = []
        for i, q in chunks:
            done[i] += q
            pref_tokens[i] += q
            if done[i] >= target[i]:
                del prefilling[i]
                produced[i] += 1
                if math.isnan(first_tok[i]):
                    first_tok[i] = now
                if produced[i] >= gen[i]:
                    del running[i]
                    used -= blocks[i]
                    blocks[i] = 0
                    state[i] = _DONE
                    finish[i] = now
                    finished += 1
                    release()
                else:
                    entering.append(i)  # decodes from the next decode iteration on
        if dec_now:
            if spec is None:
                it += 1
            else:
                m_spec += 1
                it += delta
            finish_decodes()
        for i in entering:
            enter_decode(i)
        if record:
            tl["t_s"].append(now)
            tl["running"].append(len(running))
            tl["kv_blocks"].append(used)
            tl["tokens"].append(dec_now * (1 + k_spec) + sum(q for _, q in chunks))
    return Trace(np.array(first_sched), np.array(first_tok), np.array(finish), np.array(produced, dtype=float),
                 np.array(pref_tokens, dtype=float), preempt, kv_blocks, block_s, peak, busy, tl,
                 np.array(sent))


_PHASES: dict[int, np.ndarray] = {}


def _phases(bs: int) -> np.ndarray:
    """Row r: the phase class (index into run()'s cnt) that opens a block at each of _MACRO_MAX steps from an iteration
    `it` with (-it) % bs == r: (r - step) % bs."""
    if bs not in _PHASES:
        _PHASES[bs] = (np.arange(bs)[:, None] - np.arange(_MACRO_MAX)[None, :]) % bs
    return _PHASES[bs]


def _run_static(req: Requests, sc: StepCost, sch: Scheduler, kv_blocks: int, record: bool) -> Trace:
    """Static batching: when the engine is free, the waiting requests (up to max_num_seqs, and as many as the KV cache
    holds at their full length) are prefilled together and decoded until the longest ends, every sequence costed to
    the end (padding). A request's last token is its finish time."""
    n, bs = len(req), sch.block_size
    arrival, prompt, gen, prefix = (req.arrival_s, req.prompt_tokens, req.output_tokens, req.prefix_tokens)
    per_req = np.ceil((prompt + gen) / bs)  # blocks each request holds to its end (run() checked that one fits)
    first_sched, first_tok, finish = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    tl: dict[str, list] = {"t_s": [], "running": [], "kv_blocks": [], "tokens": []} if record else {}
    now, i0, block_s, busy, peak = 0.0, 0, 0.0, 0.0, 0
    while i0 < n:
        now = max(now, float(arrival[i0]))
        arrived = int(np.searchsorted(arrival, now, side="right"))
        j = min(arrived, i0 + sch.max_num_seqs)
        fit = int(np.searchsorted(np.cumsum(per_req[i0:j]), kv_blocks, side="right"))
        j = i0 + max(fit, 1)
        sl = slice(i0, j)
        m = j - i0
        blocks = int(per_req[sl].sum())
        first_sched[sl] = now
        t_pre = sc.iteration_s(0, 0.0, [(float(p - c), float(c)) for p, c in zip(prompt[sl], prefix[sl])], m)
        t0 = now + t_pre
        first_tok[sl] = t0
        steps = int(gen[sl].max()) - 1
        dts = sc.decode_run_s(m, float((prompt[sl] + 1).sum()), steps) if steps > 0 else np.zeros(0)
        cum = np.concatenate([[0.0], np.cumsum(dts)])
        finish[sl] = t0 + cum[(gen[sl] - 1).astype(int)]
        span = t_pre + float(cum[-1])
        block_s += blocks * span
        peak = max(peak, blocks)
        busy += span
        now += span
        if record:
            tl["t_s"] += [t0, now]
            tl["running"] += [m, m]
            tl["kv_blocks"] += [blocks, blocks]
            tl["tokens"] += [int((prompt[sl] - prefix[sl]).sum()), m]
        i0 = j
    return Trace(first_sched, first_tok, finish, gen.astype(float), (prompt - prefix).astype(float), 0, kv_blocks,
                 block_s, peak, busy, tl)


class _Ticks:
    """Stands in for a StepCost in run(): every iteration, and every step of a decode block, takes one tick, so the
    run's times come out as tick counts; what each tick ran is kept for `replay` to cost with any StepCost."""

    kv_bytes_per_token = 0.0  # no swap copies (schedule() refuses swap preemption)

    def __init__(self) -> None:
        self.ticks = 0
        self.one: list[tuple[int, int, float, int]] = []  # (tick, decodes, their contexts' sum, emitting)
        self.chunks: list[tuple[int, float, float]] = []  # (tick, q, o)
        self.runs: list[tuple[int, int, float, int]] = []  # (first tick, decodes, contexts' sum at the first, steps)

    def iteration_s(self, n_dec: int, sum_ctx: float, chunks: list[tuple[float, float]], emitting: int) -> float:
        self.one.append((self.ticks, n_dec, float(sum_ctx), emitting))
        self.chunks += [(self.ticks, float(q), float(o)) for q, o in chunks]
        self.ticks += 1
        return 1.0

    def decode_step_s(self, n_dec: int, sum_ctx: float) -> float:
        return 1.0

    def decode_run_s(self, n_dec: int, sum_ctx0: float, steps: int) -> np.ndarray:
        self.runs.append((self.ticks, n_dec, float(sum_ctx0), steps))
        self.ticks += steps
        return np.ones(steps)


@dataclass(frozen=True, eq=False)
class Schedule:
    """What an engine ran, iteration by iteration, and when (in iterations) each request was sent, first scheduled,
    gave its first token and finished: a run whose decisions never depend on time, costed by `replay` with any
    StepCost. Arrays: per iteration `n_dec`, `sum_ctx`, `emitting`; per prefill chunk `chunk_of` (its iteration),
    `chunk_q`, `chunk_o`."""

    ticks: int
    n_dec: np.ndarray
    sum_ctx: np.ndarray
    emitting: np.ndarray
    chunk_of: np.ndarray
    chunk_q: np.ndarray
    chunk_o: np.ndarray
    trace: Trace  # the run in ticks: its per-request times are iteration counts

    @property
    def nbytes(self) -> int:
        """Bytes of the iteration arrays (the per-request times of `trace` besides)."""
        return sum(a.nbytes for a in (self.n_dec, self.sum_ctx, self.emitting, self.chunk_of, self.chunk_q,
                                       self.chunk_o))


def schedule(req: Requests, sch: Scheduler, kv_blocks: int, clients: int | None = None) -> Schedule:
    """Run the scheduler once without a cost model, keeping what every iteration ran. Every request must be sent at
    time 0 (all at once, or held by `clients` in a closed loop) and preemption must be by recompute: then no decision
    depends on how long an iteration takes, and `replay(schedule(...), sc)` is `run(..., sc, ...)` (tested), at a
    fraction of its cost. A benchmark of fixed request lengths is scheduled once and costed for every set of
    efficiencies an engine-profile fit tries."""
    if np.any(req.arrival_s != 0.0):
        raise PerfmodelError("a schedule is replayable only when every request is sent at time 0 (all at once, or "
                             "held by clients); with arrivals over time, run the simulator")
    if sch.policy == "disaggregated" or sch.preemption == "swap":
        raise PerfmodelError("a schedule is replayable for one engine preempting by recompute (no disaggregated "
                             "engines, no swap copies)")
    clock = _Ticks()
    tr = run(req, clock, sch, kv_blocks, clients=clients)  # type: ignore[arg-type]
    one = np.array(clock.one, dtype=float).reshape(-1, 4)
    ch = np.array(clock.chunks, dtype=float).reshape(-1, 3)
    runs = np.array(clock.runs, dtype=float).reshape(-1, 4)
    steps = runs[:, 3].astype(np.int64)
    total = int(steps.sum())
    first = np.repeat(runs[:, 0], steps)
    local = np.arange(total) - np.repeat(np.cumsum(steps) - steps, steps)  # step within its run
    n_run = np.repeat(runs[:, 1], steps)
    tick = np.concatenate([one[:, 0], first + local]).astype(np.int64)
    order = np.argsort(tick, kind="stable")
    assert len(tick) == clock.ticks and (tick[order] == np.arange(clock.ticks)).all()
    n_dec = np.concatenate([one[:, 1], n_run])[order].astype(np.int32)
    sum_ctx = np.concatenate([one[:, 2], np.repeat(runs[:, 2], steps) + n_run * local])[order]
    emitting = np.concatenate([one[:, 3], n_run])[order].astype(np.int32)
    return Schedule(clock.ticks, n_dec, sum_ctx, emitting, ch[:, 0].astype(np.int64), ch[:, 1], ch[:, 2], tr)


def replay(s: Schedule, sc: StepCost) -> Trace:
    """The run a Schedule stands for, its iterations costed by `sc`: per-request times in seconds. The KV cache's
    time-weighted use is not kept (kv_block_seconds NaN); its peak is."""
    dt = sc.iterations_s(s.n_dec, s.sum_ctx, s.emitting, s.chunk_of, s.chunk_q, s.chunk_o)
    at = np.concatenate([[0.0], np.cumsum(dt)])
    tr = s.trace

    def t(x: np.ndarray) -> np.ndarray:
        out = np.full(len(x), np.nan)
        ok = np.isfinite(x)
        out[ok] = at[x[ok].astype(np.int64)]
        return out

    return Trace(t(tr.first_scheduled_s), t(tr.first_token_s), t(tr.finish_s), tr.produced, tr.prefilled_tokens,
                 tr.preemptions, tr.kv_blocks, math.nan, tr.peak_kv_blocks, float(at[-1]), {},
                 None if tr.sent_s is None else t(tr.sent_s))
