"""Figures of an estimate: hierarchical roofline, time breakdown, memory, and the latency-throughput curve.

Each function returns a matplotlib Figure (never shows one); `save` writes it atomically as PNG or SVG. matplotlib is
imported here, only when a figure is asked for. Figures are drawn with the object API (no pyplot state), so they are
safe in notebooks, scripts and threads alike.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import PerfmodelError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .api import Estimate
    from .device import Device

KIND_COLORS = {"matmul": "#1f77b4", "attention": "#d62728", "elementwise": "#2ca02c", "norm": "#9467bd",
               "embedding": "#8c564b", "comm": "#7f7f7f"}
PHASE_MARKERS = {"prefill": "o", "decode": "^"}
BLOCKS = ("attention", "MLP", "LM head", "communication", "other")
BLOCK_COLORS = {"attention": "#d62728", "MLP": "#1f77b4", "LM head": "#ff7f0e", "communication": "#7f7f7f",
                "other": "#bcbd22"}
PLOTS = ("roofline", "breakdown", "memory", "batch")
MAX_DOT_AREA = 900.0  # points^2 of an op taking the whole time


def _figure(w: float, h: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def to_bytes(fig: "Figure", fmt: str = "png", dpi: float = 130) -> bytes:
    """A figure encoded as PNG (at `dpi`) or SVG."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi if fmt == "png" else None)
    return buf.getvalue()


def save(fig: "Figure", path: str | Path, dpi: float = 130) -> Path:
    """Write a figure as .png or .svg, atomically (an existing file is replaced whole or left as it was)."""
    from ._io import atomic_write_bytes

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise PerfmodelError(f"-o must end in .png or .svg; got {path.name!r}")
    return atomic_write_bytes(path, to_bytes(fig, fmt, dpi))


# Roofline -----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ceiling:
    """One line of a roofline: a bandwidth (bytes/s, sloped) or a compute rate (FLOP/s, flat)."""

    label: str
    value: float
    kind: str  # "memory" or "compute"
    members: tuple[tuple[str, str], ...] = ()  # (unit, precision) pairs at this rate


def ceilings(device: "Device") -> list[Ceiling]:
    """The ceilings of a device: one per memory level with a known bandwidth, and one per unit (matrix, vector) and
    precision with a dense peak on the provenance ladder (estimated ones say so)."""
    out = []
    for lv in device.levels:  # caches too, where the ladder derives or estimates their bandwidth
        fig = device.figure(f"memory.{lv.name}.bandwidth")
        if fig is not None:
            est = " (estimated)" if fig.rung == "estimated" else ""
            out.append(Ceiling(f"{lv.name} {fig.value / 1e9:,.0f} GB/s{est}", fig.value, "memory"))
    same: dict[float, list[tuple[str, str]]] = {}  # precisions at one rate share a line: "matrix fp8/int8"
    estimated = set()
    for unit in ("matrix", "vector"):
        precs = [k.rsplit(".", 1)[1] for k in device.figures if k.startswith(f"compute.{unit}.")]
        for prec in sorted(precs, key=_prec_order):
            fig = device.figure(f"compute.{unit}.{prec}")
            same.setdefault(round(fig.value, -6), []).append((unit, prec))
            if fig.rung == "estimated":
                estimated.add((unit, prec))
    for peak, members in sorted(same.items(), reverse=True):
        names: list[str] = []
        for i, (unit, prec) in enumerate(members):
            names.append(f"/{prec}" if i and members[i - 1][0] == unit else f"{', ' if i else ''}{unit} {prec}")
        est = " (estimated)" if all(m in estimated for m in members) else ""
        out.append(Ceiling(f"{''.join(names)} {_rate(peak)}{est}", peak, "compute", tuple(members)))
    return out


def _prec_order(p: str) -> int:
    order = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "int4")
    return order.index(p) if p in order else len(order)


def _rate(x: float) -> str:
    return f"{x / 1e12:,.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:,.0f} GFLOP/s"


def roofline_points(est: "Estimate") -> "Any":
    """The ops a roofline shows (those with FLOPs and bytes): phase, name, kind, intensity, attained FLOP/s, time
    and the dot area (proportional to the op's share of the end-to-end time)."""
    ops = est.ops
    pts = ops[(ops.flops > 0) & (ops.bytes > 0) & (ops.time_s > 0)].copy()
    total = float(ops.time_s.sum())
    pts["attained_flops_per_s"] = pts.flops / pts.time_s
    pts["share"] = pts.time_s / total
    pts["area"] = MAX_DOT_AREA * pts.share
    return pts.reset_index(drop=True)


def roofline(est: "Estimate", compare: Sequence["Device | str"] = (), ax: "Axes | None" = None) -> "Figure":
    """Hierarchical roofline, log-log: arithmetic intensity (FLOP/byte) against FLOP/s. One sloped ceiling per
    memory level and one flat ceiling per unit and precision, labelled along the line; ridge points (where each
    compute ceiling meets main memory) marked; every op with FLOPs and bytes as a dot sized by its share of the time,
    coloured by kind, circle for prefill and triangle for decode. `compare`: devices whose ceilings are overlaid."""
    from matplotlib.lines import Line2D

    from .catalog import load_device

    fig = ax.figure if ax is not None else _figure(10, 6.5)
    ax = ax or fig.add_subplot()
    pts = roofline_points(est)
    devices = [est.device] + [load_device(d) for d in compare]
    # compared devices: their memory lines, the matrix ceiling at this workload's GEMM precision and their top
    # vector ceiling (all of theirs would bury the figure)
    prec = (est.workload.gemm or est.workload.act).compute
    all_c = [ceilings(devices[0])] + [_main_ceilings(ceilings(d), prec) for d in devices[1:]]
    for d, cs in zip(devices, all_c):
        missing = [k for k in ("compute", "memory") if not any(c.kind == k for c in cs)]
        if missing:
            raise PerfmodelError(f"{d.id} has no {' or '.join(missing)} figure (sourced, derived or estimated), so "
                                 f"its roofline cannot be drawn; add one, or its parts, to its spec file")
    peaks = [c.value for cs in all_c for c in cs if c.kind == "compute"]
    bws = [c.value for cs in all_c for c in cs if c.kind == "memory"]
    xs = list(pts.intensity_flops_per_byte) + [p / b for p in peaks for b in bws]
    x_lo, x_hi = 10 ** math.floor(math.log10(max(min(xs) / 3, 1e-3))), 10 ** math.ceil(math.log10(max(xs) * 3))
    ys = list(pts.attained_flops_per_s) + peaks
    y_lo, y_hi = 10 ** math.floor(math.log10(max(min(ys) / 3, 1.0))), 10 ** math.ceil(math.log10(max(ys) * 2.5))
    ax.set(xscale="log", yscale="log", xlim=(x_lo, x_hi), ylim=(y_lo, y_hi))
    x = np.geomspace(x_lo, x_hi, 200)
    styles = ["-", "--", ":", "-."]
    tints = ["0.15", "#b2182b", "#2166ac", "#1b7837"]
    for i, (dev, cs) in enumerate(zip(devices, all_c)):
        ls, col = styles[i % len(styles)], tints[i % len(tints)]
        top = max(c.value for c in cs if c.kind == "compute")
        main_bw = [c for c in cs if c.kind == "memory"][-1].value
        for c in cs:
            if c.kind == "memory":
                y = np.minimum(x * c.value, top)
                ax.plot(x, y, ls=ls, color=col, lw=1.1, alpha=0.9, label="_nolegend_", gid=f"memory|{dev.id}|{c.label}")
                _slope_label(ax, c.label if i == 0 else f"{dev.id}: {c.label}", c.value, top, col)
            else:
                x0 = c.value / main_bw
                ax.plot([x0, x_hi], [c.value, c.value], ls=ls, color=col, lw=1.1, alpha=0.9,
                        gid=f"compute|{dev.id}|{c.label}")
                ax.plot([x0], [c.value], marker="o", ms=4, mfc="white", mec=col, ls="none", gid=f"ridge|{dev.id}")
                if i == 0:  # the device's own labels at the right edge, compared devices' beside their ridge
                    ax.annotate(c.label, (x_hi, c.value), xytext=(-4, 2), textcoords="offset points", ha="right",
                                va="bottom", fontsize=7, color=col)
                else:
                    ax.annotate(f"{dev.id}: {c.label}", (x0, c.value), xytext=(6, -3), textcoords="offset points",
                                ha="left", va="top", fontsize=7, color=col)
    for phase, marker in PHASE_MARKERS.items():
        for kind, col in KIND_COLORS.items():
            g = pts[(pts.phase == phase) & (pts.kind == kind)]
            if len(g):
                ax.scatter(g.intensity_flops_per_byte, g.attained_flops_per_s, s=np.maximum(g.area, 4),
                           marker=marker, color=col, alpha=0.65, edgecolors="black", linewidths=0.4, zorder=3,
                           gid=f"ops|{phase}|{kind}")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attained FLOP/s")
    wl = est.workload
    ax.set_title(f"{est.model.name} on {est.device.name}: batch {wl.batch}, prompt {wl.prompt_len}, "
                 f"gen {wl.gen_len}, {wl.weights.value} weights", fontsize=10)
    kinds = [k for k in KIND_COLORS if (pts.kind == k).any()]
    handles = [Line2D([], [], marker="s", ls="none", color=KIND_COLORS[k], label=k) for k in kinds]
    handles += [Line2D([], [], marker=m, ls="none", color="0.3", mfc="white", label=p)
                for p, m in PHASE_MARKERS.items() if (pts.phase == p).any()]
    handles += [Line2D([], [], ls=styles[i % 4], color=tints[i % 4], label=d.id) for i, d in enumerate(devices)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", framealpha=0.85, title="dot area = share of time",
              title_fontsize=7)
    ax.grid(True, which="major", color="0.92", lw=0.6)
    return fig


def _main_ceilings(cs: list[Ceiling], prec: str) -> list[Ceiling]:
    from .dtypes import COMPUTE_FALLBACK

    out = [c for c in cs if c.kind == "memory"]
    for p in COMPUTE_FALLBACK.get(prec, (prec,)):  # the precision this device would run the GEMMs at
        hit = [c for c in cs if c.kind == "compute" and ("matrix", p) in c.members]
        if hit:
            out.append(hit[0])
            break
    vec = [c for c in cs if c.kind == "compute" and any(u == "vector" for u, _ in c.members)]
    if vec and vec[0] not in out:
        out.append(vec[0])
    return out


def _slope_label(ax: "Axes", text: str, bw: float, top: float, color: str) -> None:
    """Write a bandwidth's label along its sloped line, low on the left, rotated to the line's on-screen angle."""
    x_lo, _ = ax.get_xlim()
    y_lo, _ = ax.get_ylim()
    x0 = max(x_lo * 1.6, y_lo * 1.6 / bw)
    if x0 * bw > top / 2:
        return
    p0, p1 = ax.transData.transform([(x0, x0 * bw), (x0 * 10, x0 * 10 * bw)])
    angle = math.degrees(math.atan2(p1[1] - p0[1], p1[0] - p0[0]))
    ax.annotate(text, (x0, x0 * bw), xytext=(2, 3), textcoords="offset points", rotation=angle,
                rotation_mode="anchor", fontsize=7, color=color, transform_rotates_text=False)


# Breakdown ----------------------------------------------------------------------------------------------------------

def block_of(name: str, kind: str) -> str:
    """The part of the model an op belongs to, for the breakdown by block."""
    if kind == "comm":
        return "communication"
    if ".attn." in name or name.endswith(".attention"):
        return "attention"
    if ".mlp" in name or ".moe" in name:
        return "MLP"
    if name.startswith("lm_head") or name == "final_norm":
        return "LM head"
    return "other"


def breakdown_table(est: "Estimate") -> "Any":
    """Seconds per phase by op kind and by block (long format: phase, by, group, time_s)."""
    import pandas as pd

    ops = est.ops.copy()
    ops["block"] = [block_of(n, k) for n, k in zip(ops.name, ops.kind)]
    parts = []
    for by, col in (("kind", "kind"), ("block", "block")):
        t = ops.groupby(["phase", col], sort=False).time_s.sum().reset_index().rename(columns={col: "group"})
        t["by"] = by
        parts.append(t)
    return pd.concat(parts, ignore_index=True)[["phase", "by", "group", "time_s"]]


def breakdown(est: "Estimate") -> "Figure":
    """Where the time goes: for prefill and decode, the share of each op kind and of each block (attention, MLP,
    LM head, communication, other), as stacked bars with the phase's total time."""
    t = breakdown_table(est)
    fig = _figure(10, 4.2)
    axes = fig.subplots(1, 2)
    phases = [p for p in ("prefill", "decode") if t[(t.phase == p)].time_s.sum() > 0]
    for ax, (by, groups, colors) in zip(axes, (("kind", list(KIND_COLORS), KIND_COLORS),
                                               ("block", list(BLOCKS), BLOCK_COLORS))):
        for i, ph in enumerate(phases):
            sub = t[(t.phase == ph) & (t.by == by)].set_index("group").time_s
            total = float(sub.sum())
            left = 0.0
            for g in groups:
                v = float(sub.get(g, 0.0)) / total * 100 if total else 0.0
                if v <= 0:
                    continue
                ax.barh(i, v, left=left, color=colors[g], edgecolor="white", lw=0.6,
                        label=g if i == 0 or g not in [h.get_label() for h in ax.patches] else "_nolegend_")
                if v >= 7:
                    ax.text(left + v / 2, i, f"{v:.0f}%", ha="center", va="center", fontsize=7, color="white")
                left += v
            ax.text(101, i, _ms(total), va="center", fontsize=8)
        ax.set_yticks(range(len(phases)), phases)
        ax.set_xlim(0, 118)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_xlabel("% of phase time")
        ax.set_title(f"by {by}", fontsize=10)
        ax.invert_yaxis()
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=min(len(seen), 6), frameon=False)
    fig.suptitle(f"Time breakdown: {est.model.name} on {est.device.name}", fontsize=10)
    return fig


def _ms(s: float) -> str:
    return f"{s * 1e3:,.2f} ms" if s < 1 else f"{s:,.2f} s"


# Memory -------------------------------------------------------------------------------------------------------------

def kv_growth(est: "Estimate", points: int = 64) -> "Any":
    """Memory per device against context length (tokens cached per sequence), batch and formats held: weights, KV
    cache, and activations as for this workload's prompt; up to the model's context length."""
    import pandas as pd

    from .memory import kv_bytes, weight_bytes

    wl, m = est.workload, est.model
    ctx_max = m.max_seq_len or 2 * (wl.prompt_len + (wl.gen_len or 0))
    ctx = np.unique(np.geomspace(16, max(ctx_max, 32), points).astype(int)).astype(float)
    kv = kv_bytes(m, wl.precision, wl.parallel, np.full_like(ctx, wl.batch), ctx, np.zeros_like(ctx))
    return pd.DataFrame({"context": ctx, "weights_bytes": weight_bytes(m, wl.precision, wl.parallel),
                         "kv_cache_bytes": np.broadcast_to(kv, ctx.shape),
                         "activation_bytes": est.memory["activation_bytes"]})


def memory(est: "Estimate") -> "Figure":
    """Memory per device: weights, KV cache and activations against capacity for this workload, and how the total
    grows with context length (where the KV cache overtakes the weights, where it stops fitting)."""
    fig = _figure(10, 4.2)
    ax0, ax1 = fig.subplots(1, 2, width_ratios=[1, 2])
    mm = est.memory
    cap = mm["capacity_bytes"]
    gb = 1e9
    parts = (("weights", mm["weights_bytes"], "#1f77b4"), ("KV cache", mm["kv_cache_bytes"], "#ff7f0e"),
             ("activations", mm["activation_bytes"], "#2ca02c"))
    bottom = 0.0
    for label, v, col in parts:
        ax0.bar(0, v / gb, bottom=bottom / gb, color=col, width=0.5, label=f"{label} {v / gb:,.2f} GB")
        bottom += v
    if cap:
        ax0.axhline(cap / gb, color="black", ls="--", lw=1)
        ax0.annotate(f"capacity {cap / gb:,.0f} GB", (0.5, cap / gb), xytext=(0, 3), textcoords="offset points",
                     ha="right", fontsize=8)
    ax0.set_xticks([])
    ax0.set_xlim(-0.6, 0.6)
    ax0.set_ylim(0, max(bottom, cap or 0) / gb * 1.15)
    ax0.set_ylabel("GB per device")
    ax0.set_title(f"batch {est.workload.batch}, context {est.workload.prompt_len + (est.workload.gen_len or 0)}",
                  fontsize=9)
    ax0.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02), frameon=False)
    g = kv_growth(est)
    ax1.stackplot(g.context, g.weights_bytes / gb, g.kv_cache_bytes / gb, g.activation_bytes / gb,
                  colors=[c for _, _, c in parts], alpha=0.8, labels=["weights", "KV cache", "activations"])
    if cap:
        ax1.axhline(cap / gb, color="black", ls="--", lw=1, label="capacity")
    here = est.workload.prompt_len + (est.workload.gen_len or 0)
    ax1.axvline(here, color="0.3", ls=":", lw=1, label=f"this workload ({here})")
    ax1.set(xscale="log", xlabel="context length (tokens per sequence)", ylabel="GB per device",
            xlim=(g.context.iloc[0], g.context.iloc[-1]))
    ax1.set_title(f"KV cache growth at batch {est.workload.batch}", fontsize=9)
    ax1.set_ylim(0, max(float((g.weights_bytes + g.kv_cache_bytes + g.activation_bytes).max()), cap or 0) / gb * 1.3)
    ax1.legend(fontsize=7, loc="upper center", ncol=3)
    fig.suptitle(f"Memory: {est.model.name} on {est.device.name}", fontsize=10)
    return fig


# Batch: latency against throughput ------------------------------------------------------------------------------------

from .whatif import batch_table, knee  # noqa: E402  (re-exported: the batch figure's data)


def batch_curve(est: "Estimate", batches: Sequence[int] | None = None) -> "Figure":
    """Latency against throughput across batch sizes: TPOT (ms per output token, per sequence) against decode
    tokens/s of the whole batch, each point a batch size; the knee where decode turns compute-bound is marked, and
    batches that do not fit are hollow."""
    t = batch_table(est.model, est.device, est.workload, est.ev.mach.eff, batches)
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    ok = t[t.fits]
    ax.plot(ok.decode_tokens_per_s, ok.tpot_s * 1e3, "-o", color="#1f77b4", ms=5, label="fits in memory")
    no = t[~t.fits]
    if len(no):
        ax.plot(no.decode_tokens_per_s, no.tpot_s * 1e3, "o", mfc="white", mec="#1f77b4", ms=5,
                label="does not fit")
    for r in t.itertuples():
        ax.annotate(f"{r.batch}", (r.decode_tokens_per_s, r.tpot_s * 1e3), xytext=(4, -9),
                    textcoords="offset points", fontsize=7, color="0.3")
    k = knee(t)
    if k is not None:
        r = t[t.batch == k].iloc[0]
        ax.plot([r.decode_tokens_per_s], [r.tpot_s * 1e3], "*", color="#d62728", ms=14, zorder=3,
                label=f"knee: decode GEMMs compute-bound from batch {k}")
    ax.set(xscale="log", yscale="log", xlabel="decode tokens/s (whole batch)",
           ylabel="TPOT (ms per output token)")
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_title(f"{est.model.name} on {est.device.name}: latency vs throughput, prompt {est.workload.prompt_len}",
                 fontsize=10)
    ax.grid(True, which="major", color="0.92", lw=0.6)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def figure(name: str, est: "Estimate", **kw: Any) -> "Figure":
    """A figure by its CLI name: roofline, breakdown, memory or batch."""
    from .errors import did_you_mean

    makers = {"roofline": roofline, "breakdown": breakdown, "memory": memory, "batch": batch_curve}
    if name not in makers:
        raise PerfmodelError(f"plot must be one of: {', '.join(PLOTS)}; got {name!r}.{did_you_mean(name, PLOTS)}")
    return makers[name](est, **kw)
