"""Partial offload: a model too big for the GPU run with some of it on the host CPU, as llama.cpp does.

- `gpu_layers` N (llama.cpp `-ngl N`): the last N of the model's n_layers repeating layers on the GPU, the first
  n_layers - N on the CPU; N = n_layers + 1 also puts the output layer (final norm + LM head) on the GPU; the token
  embedding stays on the CPU (llama.cpp keeps `tok_embd` in host memory). The KV cache of a layer lives with it.
- `offload_experts` (llama.cpp `--cpu-moe`, `-ot exps=CPU`): an MoE model's routed experts in host memory, computed by
  the CPU; attention, dense layers, the router, shared experts and the LM head on the GPU.

Costing: the same ops are costed on the GPU and on the host CPU (each at its own roofline, memory bandwidth and
efficiency) and each op's time is taken from the side that runs it. A pass of at least OFFLOAD_MIN_BATCH tokens (a
prompt) runs the CPU-resident layers on the GPU instead, streaming their weights over PCIe for every micro-batch: the
op's time is the longer of its GPU time and its weights' copy. Each step crosses between CPU and GPU: an activation
copy of d_model values a token each way, at the host link's bandwidth plus CROSSING_LATENCY_S.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import load_device
from .device import Device
from .efficiency import Efficiency
from .engines import efficiency_for, open_act
from .errors import PerfmodelError
from .evaluate import default_gen, evaluate
from .memory import weight_bytes
from .model import ModelSpec
from .pcie import PCIE_FIRST_YEAR, pcie_bytes_per_s
from .workload import Workload

# ggml's CUDA backend runs an op whose batch has at least 32 rows on the GPU even when its weights are in host memory,
# copying them over (ggml-cuda.cu, ggml_backend_cuda_device_offload_op: `const int min_batch_size = 32`)
OFFLOAD_MIN_BATCH = 32
# Latency of one small host<->device copy and synchronisation (estimated: the order of a cudaMemcpy of a few kB, a few
# microseconds of PCIe round trip plus the driver's launch and sync; a figure, not a datasheet value)
CROSSING_LATENCY_S = 10e-6
# Host assumed when none is named: a desktop for GeForce / Radeon / Arc cards, a server for the rest (stated in the
# result as an assumption)
DESKTOP_HOST, SERVER_HOST = "ryzen-9-7950x", "xeon-8480plus"


def default_host(device: Device) -> str:
    name = device.name.lower()
    return DESKTOP_HOST if any(k in name for k in ("geforce", "rtx", "radeon rx", "arc ")) else SERVER_HOST


def host_side(device: Device, wl: Workload, host: str | Device | None, engine: str | None,
              host_efficiency: Efficiency | None = None) -> tuple[Device, Efficiency, Workload]:
    """The host CPU of a partial offload (`host`, else default_host), its efficiency (`host_efficiency`, else the
    engine's on it) and the workload it runs: the same formats, with the engine's compute format on a CPU and its
    own kernels (no backend named)."""
    hdev = host if isinstance(host, Device) else load_device(host or default_host(device))
    heff = host_efficiency or efficiency_for(hdev, engine)[0]
    return hdev, heff, Workload(**{**wl.model_dump(exclude_none=True), "act": open_act(engine, wl.weights, hdev),
                                   "backend": None})


def host_link_bytes_per_s(device: Device) -> tuple[float, str]:
    """The device's host link per direction, and how it was had: its PCIe link where the data state one, else PCIe
    x16 of the newest generation shipping by the device's year (estimated; pcie.PCIE_FIRST_YEAR; 2020 where no year
    is given). The serving simulator swaps KV blocks over it."""
    link = device.interconnect
    if link is not None and link.pcie is not None:
        return pcie_bytes_per_s(*link.pcie), "sourced PCIe link"
    year = device.year or 2020
    gen = max((g for g, y in PCIE_FIRST_YEAR.items() if y <= year), default=4)
    return pcie_bytes_per_s(gen, 16), f"estimated: PCIe {gen}.0 x16, the newest generation shipping in {year}"


def split_times(share: np.ndarray, t_gpu: np.ndarray, t_host: np.ndarray, weight_bytes: np.ndarray,
                rows: np.ndarray | float, link_bytes_per_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(GPU, CPU, weight-copy) time of ops whose `share` of instances is on the GPU: the rest on the host CPU, or, in
    a pass of at least OFFLOAD_MIN_BATCH rows, on the GPU with their weights copied over the host link (the copy's
    time beyond the GPU's). Arrays broadcast (ops, rows); their sum is each op's time."""
    host = 1.0 - share
    streamed = np.asarray(rows) >= OFFLOAD_MIN_BATCH
    gpu = share * t_gpu + np.where(streamed, host * t_gpu, 0.0)
    cpu = np.where(streamed, 0.0, host * t_host)
    copy = np.where(streamed, np.maximum(host * weight_bytes / link_bytes_per_s - host * t_gpu, 0.0), 0.0)
    return gpu, cpu, copy


def crossing_s(model: ModelSpec, n_boundaries: int, tokens: np.ndarray | float, act_bytes: float,
               link_bytes_per_s: float) -> np.ndarray | float:
    """One pass's activation copies between the sides: per change of side, the tokens' hidden states, plus
    CROSSING_LATENCY_S."""
    return n_boundaries * (CROSSING_LATENCY_S + tokens * model.d_model * act_bytes / link_bytes_per_s)


def gpu_share(names: list[str], n_layers: int, gpu_layers: int, offload_experts: bool) -> np.ndarray:
    """Per op (by name), the share of its instances on the GPU: repeating layers by `gpu_layers` of n_layers, the
    output layer with more than n_layers, the embedding never; with `offload_experts`, everything but the routed
    experts."""
    layer = np.array([n.startswith("layers.") for n in names])
    experts = np.array([".experts." in n for n in names])
    head = np.array([n in ("lm_head", "final_norm") for n in names])
    share = np.zeros(len(names))
    if offload_experts:
        share[:] = 1.0
        share[experts] = 0.0
    else:
        share[layer] = min(gpu_layers, n_layers) / n_layers
        share[head] = 1.0 if gpu_layers > n_layers else 0.0
    share[np.array([n == "embed" for n in names])] = 0.0
    return share


def check_offload(model: ModelSpec, device: Device, wl: Workload, gpu_layers: int | None,
                  offload_experts: bool) -> None:
    """What a partial offload needs: a GPU (not a CPU), an MoE model for --offload-experts, gpu_layers >= 0, one
    device (tp, pp, ep 1)."""
    if device.kind == "cpu":
        raise PerfmodelError(f"--gpu-layers / --offload-experts split a model between a GPU and its host; {device.id} "
                             f"is a CPU already")
    if offload_experts and not model.n_experts:
        raise PerfmodelError(f"--offload-experts needs an MoE model; {model.id} has no routed experts: use "
                             f"--gpu-layers")
    if gpu_layers is not None and gpu_layers < 0:
        raise PerfmodelError(f"--gpu-layers must be 0 to {model.n_layers + 1} for {model.id} ({model.n_layers} layers, "
                             f"+ 1 for the output layer, as llama.cpp counts -ngl; more means all); got {gpu_layers}")
    if wl.tp > 1 or wl.pp > 1 or wl.ep > 1:
        raise PerfmodelError("partial offload is costed for one GPU and its host: use tp, pp and ep 1")


@dataclass(frozen=True)
class OffloadEstimate:
    """A partial-offload estimate: metrics, where the memory goes, how the time splits."""

    model: ModelSpec
    device: Device
    host: Device
    workload: Workload
    gpu_layers: int
    offload_experts: bool
    metrics: dict[str, float | None]
    memory: dict[str, Any]
    phases: dict[str, dict[str, float]]
    notes: tuple[str, ...]

    @property
    def ttft_s(self) -> float | None:
        return self.metrics["ttft_s"]

    @property
    def tpot_s(self) -> float | None:
        return self.metrics["tpot_s"]

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.metrics["decode_tokens_per_s"]

    def to_dict(self) -> dict[str, Any]:
        wl = self.workload
        return {"model": self.model.id, "hardware": self.device.id, "batch": wl.batch, "prompt_len": wl.prompt_len,
                "gen_len": wl.gen_len, **self.metrics, "memory": self.memory,
                "offload": {"host": self.host.id, "gpu_layers": self.gpu_layers, "n_layers": self.model.n_layers,
                            "offload_experts": self.offload_experts, "phases": self.phases},
                "config": {"weights": wl.weights.value, "kv": wl.kv.value, "act": wl.act.value},
                "warnings": list(self.notes)}

    def summary(self) -> str:
        m, gb = self.metrics, 1e9
        mem = self.memory

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1e3:,.2f} ms"

        where = ("routed experts on the CPU, the rest on the GPU" if self.offload_experts else
                 f"{min(self.gpu_layers, self.model.n_layers)} of {self.model.n_layers} layers on the GPU"
                 + (" (and the output layer)" if self.gpu_layers > self.model.n_layers else ""))
        lines = [f"{self.model.name or self.model.id} on {self.device.name} + {self.host.name} (partial offload: "
                 f"{where})",
                 f"  batch {self.workload.batch}, prompt {self.workload.prompt_len}, generate {self.workload.gen_len}; "
                 f"weights {self.workload.weights.value}, kv {self.workload.kv.value}", "",
                 f"  {'TTFT':<26}{ms(m['ttft_s']):>16}",
                 f"  {'TPOT (mean decode step)':<26}{ms(m['tpot_s']):>16}",
                 f"  {'decode tokens/s per seq':<26}{m['decode_tokens_per_s'] or 0:>12,.1f} tok/s",
                 f"  {'prefill tokens/s':<26}{m['prefill_tokens_per_s'] or 0:>12,.1f} tok/s", ""]
        for phase, p in self.phases.items():
            lines.append(f"  {phase}: GPU {p['gpu_s'] * 1e3:,.1f} ms, CPU {p['cpu_s'] * 1e3:,.1f} ms, weights over "
                         f"PCIe {p['stream_s'] * 1e3:,.1f} ms, crossings {p['crossing_s'] * 1e3:,.2f} ms")
        lines.append(f"  memory: GPU {mem['gpu_bytes'] / gb:.1f} of {mem['gpu_capacity_bytes'] / gb:.1f} GB, host "
                     f"{mem['host_bytes'] / gb:.1f} GB of {mem['host_capacity_bytes'] / gb:.0f} GB"
                     if mem["host_capacity_bytes"] else
                     f"  memory: GPU {mem['gpu_bytes'] / gb:.1f} GB, host {mem['host_bytes'] / gb:.1f} GB")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def offload_memory(model: ModelSpec, wl: Workload, gpu_layers: int, offload_experts: bool, kv_total: float,
                   act: float) -> tuple[float, float]:
    """(GPU bytes, host bytes): weights by where their layer is, the KV cache with its layer, activations on the
    GPU."""
    prec, par = wl.precision, wl.parallel
    parts = model.param_breakdown()
    total = weight_bytes(model, prec, par)
    emb = parts.get("embedding", 0) * prec.head_format.bytes
    head = parts.get("lm_head", 0) * prec.head_format.bytes
    layers = total - emb - head
    n = model.n_layers
    if offload_experts:
        experts = parts.get("experts", 0) * prec.weights.bytes
        return layers - experts + head + kv_total + act, experts + emb
    f = min(gpu_layers, n) / n
    head_gpu = gpu_layers > n
    return (f * layers + (head if head_gpu else 0) + f * kv_total + act,
            (1 - f) * layers + (0 if head_gpu else head) + emb + (1 - f) * kv_total)


def estimate_offload(model: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None,
                     gpu_layers: int | None, offload_experts: bool = False, host: str | Device | None = None,
                     engine: str | None = None, host_efficiency: Efficiency | None = None) -> OffloadEstimate:
    """Estimate `wl` with the model split between `device` (a GPU) and its host CPU (see the module docstring).
    `gpu_layers` above n_layers + 1 means all of them (llama.cpp's -ngl 99); `host_efficiency`: the host's, where
    not the engine's profile (efficiency_for)."""
    n = model.n_layers
    check_offload(model, device, wl, gpu_layers, offload_experts)
    gpu_layers = min(n + 1 if gpu_layers is None else gpu_layers, n + 1)
    if wl.gen_len is None:
        wl = Workload(**{**wl.model_dump(exclude_none=True), "gen_len": default_gen(model)})
    notes = []
    hdev, heff, wl_h = host_side(device, wl, host, engine, host_efficiency)
    if host is None:
        notes.append(f"host CPU assumed: {hdev.name} ({hdev.id}); name yours with --host")
    one = np.ones(1)
    b, p, g = one * wl.batch, one * wl.prompt_len, one * wl.gen_len
    ev_g = evaluate(model, device, wl, eff, b, p, g, detail=True)
    ev_h = evaluate(model, hdev, wl_h, heff, b, p, g, detail=True)
    link, how = host_link_bytes_per_s(device)
    if how.startswith("estimated"):
        notes.append(f"host link of {device.id} {how} ({link / 1e9:.0f} GB/s a direction)")
    act_bytes = wl.act.bytes
    phases, times = {}, {}
    for phase in ("prefill", "decode"):
        pg, ph = getattr(ev_g, phase), getattr(ev_h, phase)
        if not pg.ops:
            phases[phase] = {"gpu_s": 0.0, "cpu_s": 0.0, "stream_s": 0.0, "crossing_s": 0.0}
            times[phase] = 0.0
            continue
        share = gpu_share([o.name for o in pg.ops], n, gpu_layers, offload_experts)
        tg, th = pg.values["time_s"][:, 0], ph.values["time_s"][:, 0]
        wbytes = pg.values["weight_bytes"][:, 0]
        steps = float(pg.steps[0]) if phase == "decode" else 1.0
        rows = wl.batch * (min(wl.prompt_len, wl.ubatch or wl.prompt_len) if phase == "prefill" else 1)
        gpu_s, cpu_s, stream_s = (float(x.sum()) for x in split_times(share, tg, th, wbytes, rows, link))
        tokens = wl.batch * (wl.prompt_len if phase == "prefill" else 1)
        cross_s = steps * crossing_s(model, boundaries(model, gpu_layers, offload_experts), tokens, act_bytes, link)
        phases[phase] = {"gpu_s": gpu_s, "cpu_s": cpu_s, "stream_s": stream_s, "crossing_s": cross_s}
        times[phase] = gpu_s + cpu_s + stream_s + cross_s
    # host time outside the ops, as the GPU's evaluation has it (per pass, per sequence)
    mg = ev_g.metrics
    host_pre = float(mg["ttft_s"][0] - ev_g.prefill.total("time_s")[0])
    steps = float(ev_g.decode.steps[0])
    host_dec = float(mg["tpot_s"][0] * steps - ev_g.decode.total("time_s")[0]) if steps > 0 else 0.0
    ttft = times["prefill"] + host_pre
    dec = times["decode"] + host_dec
    e2e = ttft + dec
    metrics = {"ttft_s": ttft, "tpot_s": dec / steps if steps > 0 else None,
               "decode_tokens_per_s": steps / dec if steps > 0 and dec > 0 else None,
               "prefill_tokens_per_s": wl.batch * wl.prompt_len / ttft if ttft > 0 else None,
               "throughput_tokens_per_s": wl.batch * wl.gen_len / e2e if e2e > 0 else None, "e2e_latency_s": e2e}
    gpu_b, host_b = offload_memory(model, wl, gpu_layers, offload_experts, float(ev_g.memory.kv_cache_bytes[0]),
                                   float(ev_g.memory.activation_bytes[0]))
    cap_g, cap_h = device.main_memory.capacity_bytes, hdev.main_memory.capacity_bytes
    memory = {"gpu_bytes": gpu_b, "host_bytes": host_b, "gpu_capacity_bytes": cap_g, "host_capacity_bytes": cap_h,
              "fits": (cap_g is None or gpu_b <= cap_g) and (cap_h is None or host_b <= cap_h)}
    if cap_g is not None and gpu_b > cap_g:
        notes.append(f"the GPU's share does not fit: {gpu_b / 1e9:.1f} GB of {cap_g / 1e9:.1f} GB; fewer --gpu-layers")
    if cap_h is not None and host_b > cap_h:
        notes.append(f"the host's share ({host_b / 1e9:.1f} GB) exceeds {hdev.id}'s stated {cap_h / 1e9:.0f} GB")
    return OffloadEstimate(model, device, hdev, wl, gpu_layers, offload_experts, metrics, memory, phases,
                           tuple(notes))


def boundaries(model: ModelSpec, gpu_layers: int, offload_experts: bool) -> int:
    """Changes between CPU and GPU along one pass: embedding (CPU), layers (the first n - N on the CPU), output layer.
    With the experts on the CPU: out to them and back in every MoE layer, and in from the embedding."""
    if offload_experts:
        return 1 + 2 * sum(cnt for (_, moe), cnt in model.layer_kinds().items() if moe)
    n = model.n_layers
    on_gpu = min(gpu_layers, n)
    sides = [False] + [False] * (n - on_gpu) + [True] * on_gpu + [gpu_layers > n]
    return sum(a != b for a, b in zip(sides, sides[1:]))


def suggest_offload(model: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, kv_total: float,
                    act: float, engine: str | None = None) -> str:
    """The partial offload that fits a model too big for the GPU, with its decode rate: the most layers on the GPU
    (and, for an MoE model, the experts on the CPU if that fits), as one sentence; '' when none fits or it does not
    apply (a CPU, tp > 1)."""
    cap = device.main_memory.capacity_bytes
    if (cap is None or device.kind == "cpu" or model.arch != "decoder" or wl.tp > 1 or wl.pp > 1 or wl.ep > 1):
        return ""
    n = model.n_layers
    best = max((k for k in range(0, n + 2) if offload_memory(model, wl, k, False, kv_total, act)[0] <= cap),
               default=None)
    out = []
    try:
        if model.n_experts and offload_memory(model, wl, n + 1, True, kv_total, act)[0] <= cap:
            est = estimate_offload(model, device, wl, eff, None, True, engine=engine)
            out.append(f"--offload-experts (about {est.decode_tokens_per_s:,.1f} tok/s decode)")
        if best is not None and best >= 1:
            est = estimate_offload(model, device, wl, eff, best, False, engine=engine)
            out.append(f"--gpu-layers {best} (about {est.decode_tokens_per_s:,.1f} tok/s decode, the rest on "
                       f"{est.host.id})")
    except PerfmodelError:
        return ""
    return ("With part of the model on the host CPU (llama.cpp -ngl): " + " or ".join(out) + ".") if out else ""
