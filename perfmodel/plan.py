"""Layout search: which split of a model over a system's devices, at which batch, serves best.

`plan` enumerates the layouts that could run on the devices (tensor x pipeline x expert parallel, data-parallel
attention for MoE models, and as many data-parallel replicas of the layout as the devices hold), costs every batch
size of each in one vectorised evaluation, drops what does not fit, and returns the Pareto front of throughput per
device against time per output token, and the best layout under the latency targets (SLOs), if any meets them.

    >>> p = plan("llama-3-70b", "dgx-h100", prompt_len=1024, gen_len=256, slo_tpot_s=0.05)
    >>> p["best"]["tp"], p["best"]["batch"]
"""

from __future__ import annotations

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
