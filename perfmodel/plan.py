"""Layout search: which split of a model over a system's devices, at which batch, serves best.

`plan` enumerates the layouts that could run on the devices (tensor x pipeline x expert parallel, data-parallel
attention for MoE models, and as many data-parallel replicas of the layout as the devices hold), costs every batch
size of each in one vectorised evaluation, drops what does not fit, and returns the Pareto front of throughput per
device against time per output token, and the best layout under the latency targets (SLOs), if any meets them.

    >>> p = plan("llama-3-70b", "dgx-h100", prompt_len=1024, gen_len=256, slo_tpot_s=0.05)
    >>> p["best"]["tp"], p["best"]["batch"]
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .errors import PerfmodelError

BATCHES = tuple(2 ** i for i in range(11))  # 1 .. 1,024 sequences


def _powers(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


LONG_PROMPT = 32768  # prompts from which context parallelism is searched (ring attention pays off for long ones)


def layouts(model: Any, devices: int, prompt_len: int = 0) -> list[dict[str, Any]]:
    """Every (tp, pp, ep, dp_attention, cp) in powers of two that the model allows (tp divides the heads, ep the
    experts, pp at most the layers) and max(tp, ep) x cp x pp <= devices; cp > 1 only for prompts of LONG_PROMPT
    tokens and more, on decoder-only models."""
    out = []
    cps = _powers(devices) if prompt_len >= LONG_PROMPT and model.arch == "decoder" else [1]
    moe = bool(model.n_experts)
    for pp in _powers(min(devices, model.n_layers)):
        for tp in _powers(devices // pp):
            if model.n_heads % tp:
                continue
            eps = [1] + ([e for e in _powers(devices // pp) if e > 1 and model.n_experts % e == 0
                          and max(tp, e) % min(tp, e) == 0] if moe else [])
            for ep in eps:
                if max(tp, ep) * pp > devices:
                    continue
                for dp_att in ((False, True) if ep >= tp > 1 else (False,)):
                    for cp in cps:
                        if max(tp, ep) * cp * pp <= devices:
                            out.append({"tp": tp, "pp": pp, "ep": ep, "dp_attention": dp_att, "cp": cp})
    return out


def plan(model: Any, hardware: Any, *, devices: int | None = None, nodes: int | None = None, prompt_len: int = 1024,
         gen_len: int = 256, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
         engine: str | None = None, batches: tuple[int, ...] = BATCHES, **workload: Any) -> dict[str, Any]:
    """Search the layouts of `model` on `hardware` (a system id, or a device with `devices` per node and `nodes`
    nodes: default one node of the system's or the fabric's size). Returns {"devices", "layouts", "evaluated",
    "front": [points], "best": point or None, "slo": {...}}; a point is a layout, its batch per replica, replicas,
    ttft_s, tpot_s, throughput_tokens_per_s (all replicas: output tokens over the end-to-end latency),
    throughput_per_device_tokens_per_s and memory_per_device_bytes. The front: no other point has both more
    throughput per device and a shorter TPOT."""
    from .catalog import load_device, load_model
    from .collectives import fabric_of
    from .engines import checkpoint_formats, efficiency_for, open_act
    from .evaluate import Workload, evaluate

    m, d = load_model(model), load_device(hardware)
    for name, v in (("slo_ttft_s", slo_ttft_s), ("slo_tpot_s", slo_tpot_s)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise PerfmodelError(f"{name} must be a positive number of seconds; got {v!r}")
    base = Workload(prompt_len=prompt_len, gen_len=gen_len, devices=devices, nodes=nodes, **workload)
    prompt_len, gen_len = base.prompt_len, int(base.gen_len)
    per_node = base.devices or fabric_of(d).devices_per_node
    total = per_node * (base.nodes or 1)
    eff, _ = efficiency_for(d, engine, None)
    act = open_act(engine, base.weights, d) if "act" not in workload else base.act
    bs = np.asarray(batches, dtype=float)
    points, tried = [], 0
    for lay in layouts(m, total, prompt_len):
        wl = checkpoint_formats(base.model_copy(update={**lay, "act": act}), m, engine)
        used = max(lay["tp"], lay["ep"]) * lay["cp"] * lay["pp"]
        replicas = total // used
        tried += 1
        try:
            ev = evaluate(m, d, wl, eff, bs, np.full(len(bs), float(prompt_len)), np.full(len(bs), float(gen_len)))
        except PerfmodelError:
            continue
        met, fits = ev.metrics, ev.memory.fits
        fits = np.ones(len(bs), dtype=bool) if fits is None else np.asarray(fits, dtype=bool)
        thr = np.asarray(met["throughput_tokens_per_s"], dtype=float) * replicas
        for i in np.flatnonzero(fits & np.isfinite(thr)):
            points.append({**lay, "replicas": int(replicas), "devices_used": int(used * replicas),
                           "batch": int(bs[i]), "ttft_s": float(met["ttft_s"][i]), "tpot_s": float(met["tpot_s"][i]),
                           "throughput_tokens_per_s": float(thr[i]),
                           "throughput_per_device_tokens_per_s": float(thr[i] / total),
                           "memory_per_device_bytes": float(np.asarray(ev.memory.total_bytes)[i])})
    return _result(points, tried, total, slo_ttft_s, slo_tpot_s, len(bs))


def _result(points: list[dict[str, Any]], tried: int, total: int, slo_ttft_s: float | None,
            slo_tpot_s: float | None, n_batches: int) -> dict[str, Any]:
    if not points:
        return {"devices": total, "layouts": tried, "evaluated": tried * n_batches, "front": [], "best": None,
                "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s}}
    thr = np.array([p["throughput_per_device_tokens_per_s"] for p in points])
    lat = np.array([p["tpot_s"] for p in points])
    order = np.lexsort((-thr, lat))  # by TPOT, then the most throughput first
    front, best_thr = [], -np.inf
    for i in order:  # a point is on the front when it beats every point of shorter TPOT on throughput
        if thr[i] > best_thr:
            front.append(points[i])
            best_thr = thr[i]
    ok = np.ones(len(points), dtype=bool)
    if slo_ttft_s is not None:
        ok &= np.array([p["ttft_s"] for p in points]) <= slo_ttft_s
    if slo_tpot_s is not None:
        ok &= lat <= slo_tpot_s
    best = points[int(np.flatnonzero(ok)[np.argmax(thr[ok])])] if ok.any() else None
    return {"devices": total, "layouts": tried, "evaluated": tried * n_batches, "front": front, "best": best,
            "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s}}


TRAIN_TOP = 10  # layouts `plan_train` lists besides the best and the front


def train_layouts(model: Any, devices: int, global_batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """Every training layout that uses all `devices`, as arrays: tp (a power of two within a node's 8 that divides the
    heads), pp (a power of two, at most the layers), cp (powers of two for sequences of LONG_PROMPT tokens and more),
    ep (MoE: powers of two dividing the experts, within the data x tensor ranks), dp the rest; ZeRO 0-3 (0 alone
    without data parallelism); recomputation none, selective or full; micro-batches of powers of two that divide the
    global batch's share of a rank; sequence parallelism with tp > 1; one model chunk a device."""
    cps = _powers(devices) if seq_len >= LONG_PROMPT else [1]
    eps = [e for e in _powers(devices) if not model.n_experts or model.n_experts % e == 0] if model.n_experts else [1]
    rows = []
    for pp, tp, cp, ep in itertools.product(_powers(min(devices, model.n_layers)), _powers(min(devices, 8)), cps, eps):
        if model.n_heads % tp or devices % (tp * pp * cp):
            continue
        dp = devices // (tp * pp * cp)
        if global_batch % dp or ep > dp * tp or max(tp, ep) % min(tp, ep):
            continue
        share = global_batch // dp  # sequences a data-parallel rank runs a step
        rows += [(tp, pp, cp, ep, dp, mb) for mb in _powers(share) if share % mb == 0]
    if not rows:
        return {}
    base = np.array(rows, dtype=np.int64)
    # every layout with each ZeRO stage and recomputation (ZeRO > 0 needs data-parallel ranks to shard over)
    zero = np.repeat(np.arange(4), 3)
    rc = np.tile(np.array(["none", "selective", "full"]), 4)
    i, j = np.meshgrid(np.arange(len(base)), np.arange(len(zero)), indexing="ij")
    i, j = i.ravel(), j.ravel()
    keep = (base[i, 4] > 1) | (zero[j] == 0)
    i, j = i[keep], j[keep]
    out = {k: base[i, c] for c, k in enumerate(("tp", "pp", "cp", "ep", "dp", "micro_batch"))}
    out.update(zero=zero[j], recompute=rc[j], interleave=np.ones(len(i), dtype=np.int64), sp=out["tp"] > 1)
    return out


def plan_train(model: Any, hardware: Any, *, seq_len: int, global_batch: int, devices: int | None = None,
               nodes: int | None = None, precision: str = "bf16", optimizer: str = "adamw", lora_rank: int = 0,
               quantize_base: str | None = None, engine: str | None = None, tokens: float | None = None,
               top: int = TRAIN_TOP, attention_kernel: str = "engine") -> dict[str, Any]:
    """Search the training layouts of `model` on `hardware` (a system, or a device with `devices` a node and `nodes`
    nodes) for a run of `global_batch` sequences of `seq_len` tokens a step: every layout of train_layouts costed at
    once (perfmodel.training.steps: one forward evaluation per (tp, cp, ep), array arithmetic for the rest). Returns
    {"devices", "layouts", "fit", "best" (the most tokens/s that fits), "front" (no other fitting layout has more
    tokens/s and less memory a device), "top" (the `top` fastest that fit)}; a point is the layout, step_time_s,
    tokens_per_s, mfu, hfu, memory_per_device_bytes, and time_to_train_s with `tokens`."""
    from .catalog import load_device, load_model
    from .collectives import fabric_of
    from .engines import efficiency_for
    from .training import TrainConfig, _check, _Job, steps
    from .workload import Workload

    m, d = load_model(model), load_device(hardware)
    base = Workload(devices=devices, nodes=nodes)
    per_node = base.devices or fabric_of(d).devices_per_node
    total = per_node * (base.nodes or 1)
    # the fixed part of the job, checked as a one-device run would be (names, ranges, LoRA)
    job_cfg = TrainConfig(seq_len=seq_len, global_batch=global_batch, precision=precision, optimizer=optimizer,
                          lora_rank=lora_rank, quantize_base=quantize_base, attention_kernel=attention_kernel)
    _check(m, 1, 1)
    eff = efficiency_for(d, engine)[0]
    job = _Job.of(m, d, job_cfg)
    lay = train_layouts(m, total, global_batch, seq_len)
    n = len(lay.get("tp", ()))
    empty = {"devices": total, "layouts": n, "fit": 0, "best": None, "front": [], "top": []}
    if not n:
        return empty
    r = steps(m, d, eff, job, lay)
    cap = d.main_memory.capacity_bytes
    fits = np.ones(n, dtype=bool) if cap is None else r["total_bytes"] <= cap
    thr, mem = r["tokens_per_s"], r["total_bytes"]

    def point(i: int) -> dict[str, Any]:
        p = {k: (bool(lay[k][i]) if k == "sp" else str(lay[k][i]) if k == "recompute" else int(lay[k][i]))
             for k in ("tp", "pp", "cp", "ep", "dp", "zero", "micro_batch", "recompute", "sp")}
        p.update(micro_batches=int(r["micro_batches"][i]), step_time_s=float(r["step_time_s"][i]),
                 tokens_per_s=float(thr[i]), mfu=float(r["mfu"][i]), hfu=float(r["hfu"][i]),
                 memory_per_device_bytes=float(mem[i]))
        if tokens is not None:
            p["time_to_train_s"] = float(tokens / thr[i])
        return p

    ok = np.flatnonzero(fits)
    if not len(ok):
        return {**empty, "smallest_memory": point(int(np.argmin(mem)))}
    fastest = ok[np.lexsort((mem[ok], -thr[ok]))]  # most tokens/s first, then the least memory
    by_mem = ok[np.lexsort((-thr[ok], mem[ok]))]  # least memory first, then the most tokens/s
    front, best_thr = [], -np.inf
    for i in by_mem:  # a layout is on the front when it beats every layout of less memory on tokens/s
        if thr[i] > best_thr:
            front.append(point(int(i)))
            best_thr = thr[i]
    return {"devices": total, "layouts": n, "fit": int(len(ok)), "best": point(int(fastest[0])), "front": front,
            "top": [point(int(i)) for i in fastest[:top]]}
