"""Serving under load: requests arriving at a server that batches them continuously, simulated request by request.

>>> import perfmodel as pm
>>> from perfmodel.serving import simulate, synthetic
>>> res = simulate("llama-3-8b", "h100-sxm", requests=synthetic(1000, rate=10, prompt=512, gen=128, seed=0))
>>> res.metrics()["ttft_s"]["p90"]  # seconds

The engine's iterations are costed by the analytical cost model (perfmodel.iteration); the scheduler and the
paged KV cache are simulated (perfmodel.serving.sim). `find_rate` bisects the request rate for latency SLOs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import load_device, load_model
from ..device import Device
from ..efficiency import Efficiency
from ..engines import checkpoint_formats, efficiency_for, open_act
from ..errors import CapacityError, PerfmodelError
from ..evaluate import capacity_message, evaluate, layout_error
from ..model import ModelSpec
from ..offload import boundaries, check_offload, host_link_bytes_per_s, host_side, offload_memory
from ..speculative import MedusaCost, drafter_workload, drafting
from ..workload import Workload
from .requests import Requests, parse_dist, read_trace, synthetic
from .sim import POLICIES, Scheduler, Spec, Trace, replay, run, schedule
from ..iteration import HostSplit, StepCost, step_cost

__all__ = ["simulate", "find_rate", "rate_curve", "RateSearch", "synthetic", "read_trace", "parse_dist", "Requests",
           "Scheduler", "ServeResult", "Bench", "benchmarks", "POLICIES", "kv_memory_rule"]

PERCENTILES = (50, 90, 99)


@dataclass(eq=False)
class ServeResult:
    """Per-request times of a simulated run (arrays in the order of `requests`) and what the engines did."""

    requests: Requests
    first_scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    produced: np.ndarray
    prefilled_tokens: np.ndarray
    preemptions: int
    kv_utilisation: float  # time-weighted mean of the KV blocks in use over those available, busy engines
    peak_kv_utilisation: float
    engines: int
    devices: int
    scheduler: Scheduler
    notes: tuple[str, ...] = ()
    timeline: dict[str, np.ndarray] | None = None
    sent_s: np.ndarray | None = None  # when each request reached the engine: its arrival, or later under --concurrency

    @property
    def start_s(self) -> np.ndarray:
        """When each request's clock starts: sent to the engine (a client's view, as benchmark_serving times it)."""
        return self.requests.arrival_s if self.sent_s is None else self.sent_s

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.start_s

    @property
    def tpot_s(self) -> np.ndarray:
        """(last token - first token) / (output tokens - 1), for requests of more than one output token (as vLLM's
        benchmark_serving computes it)."""
        g = self.requests.output_tokens
        keep = g > 1
        return (self.finish_s[keep] - self.first_token_s[keep]) / (g[keep] - 1)

    @property
    def e2e_latency_s(self) -> np.ndarray:
        return self.finish_s - self.start_s

    @property
    def queueing_s(self) -> np.ndarray:
        return self.first_scheduled_s - self.start_s

    @property
    def span_s(self) -> float:
        """First arrival to last finish."""
        return float(np.max(self.finish_s) - np.min(self.requests.arrival_s))

    def metrics(self) -> dict[str, Any]:
        """The figures `perfmodel serve` prints (its --json keys)."""
        span = self.span_s
        out: dict[str, Any] = {
            "requests": len(self.requests),
            "throughput_requests_per_s": len(self.requests) / span if span > 0 else math.inf,
            "throughput_tokens_per_s": float(self.produced.sum()) / span if span > 0 else math.inf,
            "ttft_s": _stats(self.ttft_s), "tpot_s": _stats(self.tpot_s), "e2e_latency_s": _stats(self.e2e_latency_s),
            "queueing_s": _stats(self.queueing_s),
            "kv_utilisation": {"mean": self.kv_utilisation, "peak": self.peak_kv_utilisation},
            "preemptions": self.preemptions,
            "engines": self.engines, "devices": self.devices,
        }
        out["throughput_tokens_per_s_per_device"] = out["throughput_tokens_per_s"] / self.devices
        return out

    def meets(self, slo_ttft_s: float | None, slo_tpot_s: float | None, percentile: float = 90.0) -> bool:
        ok = True
        if slo_ttft_s is not None:
            ok &= bool(np.percentile(self.ttft_s, percentile) <= slo_ttft_s)
        if slo_tpot_s is not None and len(self.tpot_s):
            ok &= bool(np.percentile(self.tpot_s, percentile) <= slo_tpot_s)
        return ok

    def slo_figures(self, slo_ttft_s: float | None, slo_tpot_s: float | None) -> dict[str, float]:
        """The share of requests within both SLOs, and those per second over the run (goodput)."""
        ok = self.attained(slo_ttft_s, slo_tpot_s)
        return {"slo_attainment": float(ok.mean()), "goodput_requests_per_s": float(ok.sum()) / self.span_s}

    def point(self, rate: float | None, percentile: float) -> dict[str, Any]:
        """One point of a throughput-latency curve: the rate sent, the throughput, and the `percentile` of TTFT and
        TPOT."""
        return {"rate_requests_per_s": rate,
                "throughput_requests_per_s": self.metrics()["throughput_requests_per_s"],
                "ttft_s": float(np.percentile(self.ttft_s, percentile)),
                "tpot_s": float(np.percentile(self.tpot_s, percentile)) if len(self.tpot_s) else None}

    def attained(self, slo_ttft_s: float | None, slo_tpot_s: float | None) -> np.ndarray:
        """Per request: whether it met both SLOs (a request of one output token has no TPOT to miss)."""
        ok = np.ones(len(self.requests), dtype=bool)
        if slo_ttft_s is not None:
            ok &= self.ttft_s <= slo_ttft_s
        if slo_tpot_s is not None:
            g = self.requests.output_tokens
            with np.errstate(divide="ignore", invalid="ignore"):
                tpot = np.where(g > 1, (self.finish_s - self.first_token_s) / np.maximum(g - 1, 1), 0.0)
            ok &= tpot <= slo_tpot_s
        return ok


def _stats(x: np.ndarray) -> dict[str, float | None]:
    if len(x) == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p = np.percentile(x, PERCENTILES)
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "mean": float(np.mean(x))}


@dataclass(frozen=True, eq=False)
class Engine:
    """One engine instance ready to simulate: its tabulated iteration cost and KV cache."""

    step: StepCost
    kv_blocks: int
    swap_bytes_per_s: float
    devices: int
    spec: Spec | None = None


def prepare(model: str | ModelSpec, hardware: str | Device, wl: Workload, scheduler: Scheduler,
            requests: Requests, engine: str | None = None, efficiency: Efficiency | str | Path | None = None,
            draft: str | ModelSpec | None = None, draft_tokens: int | None = None, acceptance: float | None = None,
            gpu_layers: int | None = None, offload_experts: bool = False, host: str | Device | None = None
            ) -> tuple[ModelSpec, Device, Workload, Engine]:
    """Load, resolve the engine's formats (a compute format left open takes the engine's own, as in `estimate`),
    check the layout, tabulate the iteration cost and size the KV cache. `draft` (a catalog model, "eagle" or "medusa"),
    `draft_tokens`, `acceptance`: speculative decoding (perfmodel.speculative), drafter on the same devices.
    `gpu_layers` / `offload_experts` / `host`: part of the model on the host CPU (perfmodel.offload); the KV cache
    of the host's layers in host memory."""
    m, d = load_model(model), load_device(hardware)
    eff, _ = efficiency_for(d, engine, efficiency)
    if "act" not in wl.model_fields_set:
        act = open_act(engine, wl.weights, d)
        if act != wl.act:
            wl = Workload(**{**wl.model_dump(exclude_none=True), "act": act})
    wl = checkpoint_formats(wl, m, engine)
    err = layout_error(d, wl)
    if err:
        raise PerfmodelError(err)
    longest = float((requests.prompt_tokens + requests.output_tokens).max())
    longest_prompt = float(requests.prompt_tokens.max())
    max_tokens = _max_tokens(scheduler, longest_prompt, longest)
    split = _host_split(m, d, wl, engine, gpu_layers, offload_experts, host)
    sc = step_cost(m, d, wl, eff, int(max_tokens), scheduler.max_num_seqs, int(longest) + 1, split)
    # memory: weights and the activations of the largest iteration, the rest of the budget for KV blocks
    largest = min(max_tokens, scheduler.max_batched_tokens)  # tokens of the largest iteration
    cap = d.main_memory.capacity_bytes
    act = _activation_bytes(m, d, wl, eff, largest)
    w_dev, kv_tok = sc.weights_bytes, sc.kv_bytes_per_token
    if split is not None:  # the GPU holds its layers' weights and KV cache; the host the rest
        kv_share = 1.0 if offload_experts else min(split.gpu_layers, m.n_layers) / m.n_layers
        w_dev, w_host = offload_memory(m, wl, split.gpu_layers, offload_experts, 0.0, 0.0)
        if kv_share == 0.0:  # every layer's cache in host memory
            cap, w_dev, act = split.host.main_memory.capacity_bytes, w_host, 0.0
        else:
            kv_tok = kv_tok * kv_share
    kv_blocks = _kv_blocks(cap, scheduler, w_dev, act, kv_tok, wl)
    if cap is not None:
        if kv_blocks * scheduler.block_size < longest and split is not None:
            raise CapacityError(
                f"{m.id} with {'its experts' if offload_experts else f'{split.gpu_layers} layers'} on {d.id} does not "
                f"fit: the GPU's weights ({w_dev / 1e9:.1f} GB), the activations of a {int(largest)}-token iteration "
                f"({act / 1e9:.2f} GB) and the KV cache of the longest request ({int(longest)} tokens) "
                f"exceed {_share(scheduler, cap)}: fewer --gpu-layers, a smaller "
                f"--max-batched-tokens (llama.cpp's server runs 512-token micro-batches) or --memory-utilization")
        if kv_blocks * scheduler.block_size < longest:
            one = np.ones(1)
            free = scheduler.kv_memory == "free"
            mem = evaluate(m, d, wl, eff, one, one * largest, one).memory.at(0)
            # what the engine may use: all but the share of the rest that it leaves free, or its share of all memory
            usable = (mem.weights_bytes + mem.activation_bytes + scheduler.memory_utilization * (
                cap - mem.weights_bytes - mem.activation_bytes)) if free else cap * scheduler.memory_utilization
            mem = replace(mem, capacity_bytes=usable)
            msg = capacity_message(m, d, wl, replace(mem, kv_cache_bytes=longest * sc.kv_bytes_per_token),
                                   requests.prompt_tokens.max(), requests.output_tokens.max(), ignorable=False)
            use = (f"gives its KV cache {scheduler.memory_utilization:.0%} of the memory the weights and activations "
                   f"leave, --memory-utilization; the cache" if free else
                   f"uses {scheduler.memory_utilization:.0%} of device memory, --memory-utilization, for weights, "
                   f"activations and a KV cache that")
            raise CapacityError(f"{msg} (the engine {use} must hold at least the longest request, {int(longest)} "
                                f"tokens)")
    dr = drafting(m, draft, draft_tokens, acceptance)
    spec = None
    if dr is not None:
        draft_cost = (MedusaCost.table(m, d, wl, eff, dr.draft_tokens, scheduler.max_num_seqs) if dr.medusa else
                      step_cost(dr.drafter, d, drafter_workload(wl), eff, scheduler.max_num_seqs,
                                scheduler.max_num_seqs, int(longest) + 1))
        spec = Spec(dr.draft_tokens, dr.tokens_per_step, draft_cost, dr.draft_passes)
    return m, d, wl, Engine(sc, kv_blocks, host_link_bytes_per_s(d)[0], wl.parallel.devices, spec)


# engines that size their KV cache from the memory left free (Scheduler.kv_memory "free"): TensorRT-LLM's
# KvCacheConfig.free_gpu_memory_fraction (default 0.9) is a share of the free memory after the engine has loaded its
# weights and run its largest iteration; vLLM's gpu_memory_utilization and SGLang's mem_fraction_static are shares of
# all device memory
FREE_MEMORY_ENGINES = ("trtllm",)


def kv_memory_rule(engine: str | None) -> str:
    """Scheduler.kv_memory of an engine profile: how it sizes its KV cache."""
    return "free" if engine in FREE_MEMORY_ENGINES else "total"


def _share(sch: Scheduler, cap: float) -> str:
    """What of `cap` bytes the engine uses, in words."""
    if sch.kv_memory == "free":
        return (f"{cap / 1e9:.1f} GB, the KV cache getting {sch.memory_utilization:.0%} of what the weights and "
                f"activations leave")
    return f"{sch.memory_utilization:.0%} of {cap / 1e9:.1f} GB"


def _kv_blocks(cap: float | None, sch: Scheduler, weights_bytes: float, act_bytes: float, kv_bytes_per_token: float,
               wl: Workload) -> int:
    """KV blocks an engine holds: what `memory_utilization` of the device leaves past the weights and the largest
    iteration's activations, or (kv_memory "free") `memory_utilization` of what they leave."""
    if cap is None:
        return 10**9  # no capacity stated: the cache never fills (said in the notes)
    if sch.kv_memory == "free":
        avail = (cap - weights_bytes - act_bytes) * sch.memory_utilization
    else:
        avail = cap * sch.memory_utilization - weights_bytes - act_bytes
    blocks = int(avail // (kv_bytes_per_token * sch.block_size)) if avail > 0 else 0
    # data-parallel attention: each of the replicas keeps the KV cache of its own sequences (kv_bytes_per_token is
    # one device's), so the engine holds replicas x as many
    return blocks * wl.parallel.replicas


_ACT: dict[tuple, tuple] = {}  # activation bytes of an iteration, by model, formats and tokens (no efficiency)


def _activation_bytes(m: ModelSpec, d: Device, wl: Workload, eff: Efficiency | None, tokens: float) -> float:
    """Peak activation bytes of an iteration of `tokens` prompt tokens (memory only: the same at any efficiency)."""
    key = (id(m), wl, tokens)
    hit = _ACT.get(key)
    if hit is None or hit[0] is not m:
        one = np.ones(1)
        hit = (m, float(evaluate(m, d, wl, eff, one, one * tokens, one).memory.activation_bytes[0]))
        if len(_ACT) >= 4096:
            _ACT.clear()
        _ACT[key] = hit
    return hit[1]


def _max_tokens(sch: Scheduler, longest_prompt: float, longest: float) -> float:
    """The most tokens an iteration of `sch` may run (how far the iteration cost is tabulated)."""
    if sch.policy == "static":
        return sch.max_num_seqs * longest_prompt
    if sch.policy == "prefill-first":
        return max(sch.max_batched_tokens, longest)
    return sch.max_batched_tokens


# the simulate() arguments that prepare() takes (what a rate search tabulates once)
_PREPARE = ("engine", "efficiency", "draft", "draft_tokens", "acceptance", "gpu_layers", "offload_experts", "host")


def _host_split(m: ModelSpec, d: Device, wl: Workload, engine: str | None, gpu_layers: int | None,
                offload_experts: bool, host: str | Device | None) -> HostSplit | None:
    """The host-CPU part of a partial offload (perfmodel.offload's placement), or None."""
    if gpu_layers is None and not offload_experts:
        if host is not None:
            raise PerfmodelError("--host names the CPU of a partial offload: give --gpu-layers N or --offload-experts")
        return None
    check_offload(m, d, wl, gpu_layers, offload_experts)
    n = m.n_layers
    layers = min(n + 1 if gpu_layers is None else gpu_layers, n + 1)
    hdev, heff, hwl = host_side(d, wl, host, engine)
    return HostSplit(layers, offload_experts, hdev, heff, hwl, host_link_bytes_per_s(d)[0],
                     boundaries(m, layers, offload_experts))


def simulate(model: str | ModelSpec, hardware: str | Device, workload: Workload | None = None, *,
             requests: Requests, scheduler: Scheduler | None = None, engine: str | None = None,
             efficiency: Efficiency | str | Path | None = None, replicas: int = 1, prefill_instances: int = 1,
             decode_instances: int = 1, record: bool = False, prepared: tuple | None = None,
             concurrency: int | None = None, draft: str | ModelSpec | None = None, draft_tokens: int | None = None,
             acceptance: float | None = None, gpu_layers: int | None = None, offload_experts: bool = False,
             host: str | Device | None = None) -> ServeResult:
    """Serve `requests` with `replicas` identical engines (requests dealt round-robin), each running `workload`'s
    formats and parallelism under `scheduler`. With the disaggregated policy, `prefill_instances` engines prefill and
    `decode_instances` engines decode, the KV cache sent between them over the fabric. `prepared`: the result of
    `prepare` for these arguments (find_rate reuses it). `concurrency`: at most that many requests in flight, as a
    benchmark client with --max-concurrency keeps (closed loop; split evenly over replicas). `draft`,
    `draft_tokens`, `acceptance`: speculative decoding in every decode iteration (sim.Spec). `gpu_layers`,
    `offload_experts`, `host`: part of the model on the host CPU (perfmodel.offload), as llama.cpp's server runs it."""
    sch = scheduler or Scheduler(kv_memory=kv_memory_rule(engine))  # the engine's own memory rule when none given
    wl = workload or Workload()
    for name, v in (("replicas", replicas), ("prefill instances", prefill_instances),
                    ("decode instances", decode_instances)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise PerfmodelError(f"{name} must be a whole number >= 1; got {v!r}")
    m, d, wl, eng = prepared or prepare(model, hardware, wl, sch, requests, engine, efficiency, draft, draft_tokens,
                                        acceptance, gpu_layers, offload_experts, host)
    n = len(requests)
    notes = []
    if wl.pp > 1:
        notes.append("pp > 1: each iteration is costed as one batch walking every stage; the micro-batches a pipeline "
                     "keeps in flight are not simulated, so throughput is understated")
    if d.main_memory.capacity_bytes is None:
        notes.append(f"{d.id} states no memory capacity: the KV cache is taken as never full")
    if concurrency is not None and (not isinstance(concurrency, (int, np.integer)) or concurrency < 1):
        raise PerfmodelError(f"concurrency must be a whole number >= 1; got {concurrency!r}")
    if sch.policy == "disaggregated":
        if concurrency is not None:
            raise PerfmodelError("--concurrency applies to the vllm and prefill-first schedulers")
        return _disaggregated(requests, d, wl, sch, eng, prefill_instances, decode_instances, record, notes)
    parts = []
    for r in range(replicas):
        idx = np.arange(r, n, replicas)
        clients = None if concurrency is None else max(1, concurrency // replicas + (r < concurrency % replicas))
        if len(idx):
            parts.append((idx, run(requests.subset(idx), eng.step, sch, eng.kv_blocks, eng.swap_bytes_per_s,
                                   record=record, clients=clients, spec=eng.spec)))
    return _merge(requests, parts, sch, replicas, replicas * eng.devices, notes, eng.kv_blocks)


def _merge(req: Requests, parts: list[tuple[np.ndarray, Trace]], sch: Scheduler, engines: int, devices: int,
           notes: list[str], kv_blocks: int, first_token: np.ndarray | None = None) -> ServeResult:
    n = len(req)
    arrays = {k: np.full(n, np.nan) for k in ("first_scheduled_s", "first_token_s", "finish_s")}
    produced, pref = np.zeros(n), np.zeros(n)
    sent = req.arrival_s.copy()
    for idx, tr in parts:
        if tr.sent_s is not None:
            sent[idx] = np.maximum(sent[idx], tr.sent_s)
        arrays["first_scheduled_s"][idx] = tr.first_scheduled_s
        arrays["first_token_s"][idx] = tr.first_token_s
        arrays["finish_s"][idx] = tr.finish_s
        produced[idx] += tr.produced
        pref[idx] += tr.prefilled_tokens
    if first_token is not None:
        arrays["first_token_s"] = first_token
    busy = sum(tr.busy_s for _, tr in parts)
    used = sum(tr.kv_block_seconds for _, tr in parts)
    util = used / (busy * kv_blocks) if busy > 0 else 0.0
    peak = max((tr.peak_kv_blocks for _, tr in parts), default=0) / kv_blocks
    timeline = None
    if parts and parts[0][1].timeline:
        timeline = {k: np.asarray(v, dtype=float) for k, v in parts[0][1].timeline.items()}
        timeline["kv_utilisation"] = timeline.pop("kv_blocks") / kv_blocks
    return ServeResult(req, arrays["first_scheduled_s"], arrays["first_token_s"], arrays["finish_s"], produced, pref,
                       sum(tr.preemptions for _, tr in parts), util, peak, engines, devices, sch, tuple(notes),
                       timeline, sent)


def _disaggregated(req: Requests, d: Device, wl: Workload, sch: Scheduler, eng: Engine, n_pre: int, n_dec: int,
                   record: bool, notes: list[str]) -> ServeResult:
    """Prefill engines (chunked, each request done at its first token), the KV cache sent to a decode engine
    (per device its shard, over the fabric's link within a node, the network past it), decode engines admitting the
    requests as their caches arrive."""
    from ..collectives import fabric_of

    n = len(req)
    pre_sch = replace(sch, policy="vllm")
    ones = Requests(req.arrival_s, req.prompt_tokens, np.ones(n), req.prefix_tokens)
    parts = []
    for r in range(n_pre):
        idx = np.arange(r, n, n_pre)
        if len(idx):
            parts.append((idx, run(ones.subset(idx), eng.step, pre_sch, eng.kv_blocks, eng.swap_bytes_per_s)))
    first_tok = np.full(n, np.nan)
    first_sched = np.full(n, np.nan)
    for idx, tr in parts:
        first_tok[idx] = tr.first_token_s
        first_sched[idx] = tr.first_scheduled_s
    fab = fabric_of(d)
    per_node = wl.devices or fab.devices_per_node
    total = (n_pre + n_dec) * eng.devices
    if total <= per_node:
        link, bw = fab.name or fab.kind, fab.intra_bytes_per_s
    elif fab.net_bytes_per_s:
        link, bw = fab.net_name or "network", fab.net_bytes_per_s / per_node
    else:
        raise PerfmodelError(f"{n_pre} prefill + {n_dec} decode engines of {eng.devices} device(s) need {total} "
                             f"devices, more than one {d.id} node of {per_node}, and no network between nodes is "
                             f"stated")
    transfer = req.prompt_tokens * eng.step.kv_bytes_per_token / bw
    notes.append(f"KV cache sent from prefill to decode engines over {link} at {bw / 1e9:.0f} GB/s per device")
    ready = first_tok + transfer
    dec = np.flatnonzero(req.output_tokens > 1)
    order = dec[np.argsort(ready[dec], kind="stable")]
    dparts = []
    for r in range(n_dec):
        idx = order[r::n_dec]
        if len(idx):
            sub = Requests(ready[idx], req.prompt_tokens[idx], req.output_tokens[idx], np.zeros(len(idx)))
            tr = run(sub, eng.step, replace(sch, policy="vllm"), eng.kv_blocks, eng.swap_bytes_per_s, prefilled=True,
                     record=record, spec=eng.spec)
            tr.first_scheduled_s[:] = first_sched[idx]
            tr.produced[:] -= 1  # the first token came from the prefill engine
            tr.sent_s = None  # the request's clock started when it reached the prefill engine
            dparts.append((idx, tr))
    finish = first_tok.copy()
    res = _merge(req, parts + dparts, sch, n_pre + n_dec, total, notes, eng.kv_blocks, first_token=first_tok)
    for idx, tr in dparts:
        finish[idx] = tr.finish_s
    res.finish_s = finish
    res.first_scheduled_s = first_sched
    return res


BENCH_LENGTHS = ("fixed", "uniform")


@dataclass(frozen=True)
class Bench:
    """A benchmark of requests every one sent at time 0, under `scheduler`: `prompt` + `gen` tokens each (`lengths`
    "fixed"), or spread evenly from 1 to twice those less one, means `prompt` and `gen` ("uniform": a benchmark
    client's random dataset with no lower bound, e.g. sglang.bench_serving --dataset-name random at its
    --random-range-ratio 0, which draws from 1 to the nominal length; here the n quantiles of that uniform
    distribution in a seeded random order, so the means are the row's whatever n, and every run the same).
    `requests` of them, or `waves` x the sequences the engine can run at once (max_num_seqs, or fewer where the KV
    cache holds fewer whole requests of the mean lengths); all at once, or `clients` kept in flight (a closed loop,
    each client sending its next request when one finishes)."""

    prompt: int
    gen: int
    scheduler: Scheduler
    requests: int | None = None
    clients: int | None = None
    waves: int = 3
    lengths: str = "fixed"

    def __post_init__(self) -> None:
        if self.lengths not in BENCH_LENGTHS:
            raise PerfmodelError(f"lengths must be one of {', '.join(BENCH_LENGTHS)}; got {self.lengths!r}")

    @property
    def longest_prompt(self) -> int:
        return 2 * self.prompt - 1 if self.lengths == "uniform" else self.prompt

    @property
    def longest(self) -> int:
        """Tokens of the longest request."""
        return self.longest_prompt + (2 * self.gen - 1 if self.lengths == "uniform" else self.gen)

    def requests_of(self, n: int) -> Requests:
        """The benchmark's `n` requests."""
        if self.lengths == "uniform":  # the n quantiles of each length, in a seeded random order
            q, rng = (np.arange(n) + 0.5) / n, np.random.default_rng(0)
            prompt = np.floor(1 + q * (2 * self.prompt - 1))[rng.permutation(n)]
            gen = np.floor(1 + q * (2 * self.gen - 1))[rng.permutation(n)]
        else:
            prompt, gen = np.full(n, float(self.prompt)), np.full(n, float(self.gen))
        return Requests(np.zeros(n), prompt, gen, np.zeros(n))

    def count(self, kv_blocks: int) -> int:
        if self.requests is not None:
            return self.requests
        per = -(-(self.prompt + self.gen) // self.scheduler.block_size)
        slots = min(self.clients or self.scheduler.max_num_seqs, self.scheduler.max_num_seqs)
        return self.waves * max(1, min(slots, kv_blocks // per))


# schedules found in this process, by (Bench, KV blocks): what the scheduler did depends on nothing else
_SCHEDULES: dict[tuple[Bench, int], Any] = {}
_SCHEDULES_MAX_BYTES = 256 * 2**20  # of their iteration arrays (Schedule.nbytes)
_schedules_bytes = 0


def benchmarks(model: str | ModelSpec, hardware: str | Device, wl: Workload, efficiency: Efficiency | None,
               benches: list[Bench]) -> list[ServeResult | PerfmodelError]:
    """Each benchmark simulated on one engine of `wl`'s formats and parallelism (no offload, no speculative
    decoding; `wl` resolved as the caller wants it): the iteration cost tabulated once for all (to the largest
    sizes among them), the KV cache sized per scheduler as `prepare` sizes it, and each benchmark's schedule found
    once per process (sim.schedule) and costed with these efficiencies (sim.replay): the result `simulate` gives on
    tables of the same extent, at a fraction of the cost when the same benchmarks are costed again with other
    efficiencies (an engine-profile fit). A benchmark that cannot run gets its error in its place."""
    m, d = load_model(model), load_device(hardware)
    longest = max(b.longest for b in benches)
    sc = step_cost(m, d, wl, efficiency, int(max(_max_tokens(b.scheduler, b.longest_prompt, b.longest)
                                                  for b in benches)),
                   max(b.scheduler.max_num_seqs for b in benches), int(longest) + 1)
    global _schedules_bytes
    cap = d.main_memory.capacity_bytes
    notes = [f"{d.id} states no memory capacity: the KV cache is taken as never full"] if cap is None else []
    out: list[ServeResult | PerfmodelError] = []
    for b in benches:
        sch = b.scheduler
        largest = min(_max_tokens(sch, b.longest_prompt, b.longest), sch.max_batched_tokens)
        kv_blocks = _kv_blocks(cap, sch, sc.weights_bytes, _activation_bytes(m, d, wl, efficiency, largest),
                               sc.kv_bytes_per_token, wl)
        n = b.count(kv_blocks)
        req = b.requests_of(n)
        need = int((req.prompt_tokens + req.output_tokens).max())
        if kv_blocks * sch.block_size < need:
            out.append(CapacityError(f"{m.id} on {d.id}: the KV cache left past the weights and a "
                                     f"{int(largest)}-token iteration's activations ({kv_blocks * sch.block_size} "
                                     f"tokens) does not hold one request of {need} tokens"))
            continue
        key = (b, kv_blocks)
        s = _SCHEDULES.get(key)
        if s is None:
            try:
                s = schedule(req, sch, kv_blocks, clients=b.clients)
            except PerfmodelError as e:
                out.append(e)
                continue
            if _schedules_bytes + s.nbytes > _SCHEDULES_MAX_BYTES:
                _SCHEDULES.clear()
                _schedules_bytes = 0
            _SCHEDULES[key] = s
            _schedules_bytes += s.nbytes
        out.append(_merge(req, [(np.arange(n), replay(s, sc))], sch, 1, wl.parallel.devices, notes, kv_blocks))
    return out


def rate_curve(model: str | ModelSpec, hardware: str | Device, workload: Workload | None = None, *,
               requests: Requests, shares: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1, 1.25),
               percentile: float = 90.0, **kw: Any) -> list[dict[str, Any]]:
    """Throughput and the `percentile` of TTFT and TPOT at rates that are `shares` of the saturated throughput (every
    request at once), `requests` taken at unit rate: the throughput-latency curve."""
    sch = kw.get("scheduler") or Scheduler(kv_memory=kv_memory_rule(kw.get("engine")))
    wl = workload or Workload()
    kw = {**kw, "prepared": kw.get("prepared") or prepare(model, hardware, wl, sch, requests,
                                                           **{k: kw[k] for k in _PREPARE if k in kw})}
    kw.pop("record", None)
    sat = simulate(model, hardware, wl, requests=requests.at_once(), **kw).metrics()["throughput_requests_per_s"]
    return [simulate(model, hardware, wl, requests=requests.scaled(sat * s), **kw).point(sat * s, percentile)
            for s in shares]


@dataclass(eq=False)
class RateSearch:
    """What find_rate found: the highest rate meeting the SLOs, the run there, and every rate it tried."""

    rate: float
    result: ServeResult | None
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    percentile: float
    tried: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_rate_requests_per_s": self.rate,
                               "slo": {"ttft_s": self.slo_ttft_s, "tpot_s": self.slo_tpot_s,
                                       "percentile": self.percentile}}
        if self.result is not None:
            out.update(self.result.slo_figures(self.slo_ttft_s, self.slo_tpot_s))
        out["searched"] = sorted(self.tried, key=lambda r: r["rate_requests_per_s"])
        return out


def find_rate(model: str | ModelSpec, hardware: str | Device, workload: Workload | None = None, *,
              requests: Requests, slo_ttft_s: float | None, slo_tpot_s: float | None, percentile: float = 90.0,
              tolerance: float = 0.02, **kw: Any) -> RateSearch:
    """The highest request rate at which the `percentile` of TTFT and of TPOT meet their SLOs, by bisection on the
    rate to within `tolerance` (relative): `requests` are taken at unit rate (arrival times scaled by 1 / rate, the
    same draws at every rate, so the latencies rise with the rate). Rate 0 (and no run) when even a lone request
    misses an SLO. The rate is bounded above by the saturated throughput (every request at once)."""
    if slo_ttft_s is None and slo_tpot_s is None:
        raise PerfmodelError("--find-rate needs --slo-ttft and/or --slo-tpot")
    for name, v in (("slo-ttft", slo_ttft_s), ("slo-tpot", slo_tpot_s)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise PerfmodelError(f"--{name} must be a finite number of seconds > 0; got {v!r}")
    if not 0 < percentile < 100:
        raise PerfmodelError(f"--percentile must be in (0, 100); got {percentile!r}")
    sch = kw.get("scheduler") or Scheduler(kv_memory=kv_memory_rule(kw.get("engine")))
    wl = workload or Workload()
    prep = prepare(model, hardware, wl, sch, requests, **{k: kw[k] for k in _PREPARE if k in kw})
    kw = {**kw, "prepared": prep}
    tried: list[dict[str, Any]] = []

    def at(rate: float, req: Requests | None = None) -> tuple[ServeResult, bool]:
        r = simulate(model, hardware, wl, requests=req or requests.scaled(rate), **kw)
        ok = r.meets(slo_ttft_s, slo_tpot_s, percentile)
        tried.append({**r.point(rate, percentile), "meets": ok})
        return r, ok

    _, ok = at(0.0, requests.subset(slice(0, 1)))  # a lone request: the floor of the latencies
    if not ok:
        return RateSearch(0.0, None, slo_ttft_s, slo_tpot_s, percentile, tried)
    sat, ok = at(math.inf, requests.at_once())
    hi = sat.metrics()["throughput_requests_per_s"]
    tried[-1]["rate_requests_per_s"] = None  # every request at once
    r, ok = at(hi)
    if ok:
        return RateSearch(hi, r, slo_ttft_s, slo_tpot_s, percentile, [t for t in tried if t["rate_requests_per_s"]])
    lo, best = 0.0, None
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2 if lo > 0 else hi / 4
        r, ok = at(mid)
        if ok:
            lo, best = mid, r
        else:
            hi = mid
        if lo == 0.0 and hi < 1e-6:  # misses at any measurable rate
            break
    return RateSearch(lo, best, slo_ttft_s, slo_tpot_s, percentile,
                      [t for t in tried if t["rate_requests_per_s"]])
