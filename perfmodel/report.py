"""A shareable report of one estimate: one self-contained HTML file (figures embedded, no external resources), or
Markdown with its PNGs beside it. Tables of the metrics, phases and heaviest ops; the roofline, breakdown, memory and
batch figures; the efficiency profile and assumptions; and the source of every hardware and model figure.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_bytes, atomic_write_text
from .errors import PerfmodelError

if TYPE_CHECKING:
    from .api import Estimate

FIGURES = (("roofline", "Roofline"), ("breakdown", "Where the time goes"), ("memory", "Memory"),
           ("batch", "Latency against throughput"))
TOP_OPS = 12
ASSUMPTIONS = (
    "Each op's time is max(compute, memory) plus a per-op overhead: compute = FLOPs / (peak x efficiency), "
    "memory = bytes / (bandwidth of the level that holds them x efficiency). Peaks are dense datasheet figures.",
    "Prefill is one pass over the prompt; decode steps run one token per sequence over a context that grows by one "
    "per step; TPOT is the mean decode step.",
    "Memory is per device: weights, the KV cache at the end of generation, and the largest live activation.",
    "Tensor parallelism pays an all-reduce per attention and MLP block; pipeline parallelism runs its stages in turn "
    "(no micro-batch overlap).",
)


def _rows(est: "Estimate") -> dict[str, list[tuple[str, str]]]:
    d = est.to_dict()
    c, mem = d["config"], d["memory"]
    gb = 1e9

    def ms(x: Any) -> str:
        return "-" if x is None else f"{x * 1e3:,.2f} ms"

    def rate(x: Any) -> str:
        return "-" if x is None else f"{x:,.1f} tok/s"

    cap = "unknown" if mem["capacity_bytes"] is None else f"{mem['capacity_bytes'] / gb:,.1f} GB"
    fits = {True: "fits", False: "does NOT fit", None: "capacity unknown"}[mem["fits"]]
    workload = [("model", f"{est.model.name} ({est.model.id})"), ("hardware", f"{est.device.name} ({est.device.id})"),
                ("batch", str(d["batch"])), ("prompt / generated tokens", f"{d['prompt_len']} / {d['gen_len']}"),
                ("weights / KV / activations / GEMMs", f"{c['weights']} / {c['kv']} / {c['act']} / {c['gemm']}"),
                ("tensor / pipeline parallel", f"{c['tp']} / {c['pp']}"), ("attention", c["attention"]),
                ("parameters", f"{d['params']['total'] / 1e9:,.2f} B total, {d['params']['active'] / 1e9:,.2f} B "
                               f"active")]
    pre, dec = d["phases"]["prefill"], d["phases"]["decode"]

    def band(metric: str, fmt) -> str:
        iv = d["intervals"].get(metric)
        return "" if not iv else f"; 80 % band {fmt(iv['low'])} to {fmt(iv['high'])}"

    metrics = [("TTFT", f"{ms(d['ttft_s'])} ({pre['bound']}-bound){band('ttft_s', ms)}"),
               ("TPOT (mean decode step)", f"{ms(d['tpot_s'])} ({dec['bound']}-bound){band('tpot_s', ms)}"),
               ("decode tokens/s per sequence", rate(d["decode_tokens_per_s"]) + band("decode_tokens_per_s", rate)),
               ("prefill tokens/s", rate(d["prefill_tokens_per_s"]) + band("prefill_tokens_per_s", rate)),
               ("throughput (whole batch, end to end)",
                rate(d["throughput_tokens_per_s"]) + band("throughput_tokens_per_s", rate)),
               ("end-to-end latency", ms(d["e2e_latency_s"]) + band("e2e_latency_s", ms)),
               ("MFU / MBU", f"{d['mfu'] * 100:.1f} % / {d['mbu'] * 100:.1f} %"),
               ("memory per device", f"{mem['total_bytes'] / gb:,.2f} GB of {cap} ({fits}): weights "
                                     f"{mem['weights_bytes'] / gb:,.2f}, KV {mem['kv_cache_bytes'] / gb:,.2f}, "
                                     f"activations {mem['activation_bytes'] / gb:,.2f}")]
    eff = est.ev.mach.eff
    shown = {k: v for k, v in eff.model_dump().items()
             if k not in ("host", "raw_sha256", "created") and v not in ({}, None, "")}
    profile = [(k, f"{v:g}" if isinstance(v, float) else str(v)) for k, v in shown.items()]
    figures = [[k, f"{p['value']:.4g}", p["rung"], ", ".join(f"{ph} {v * 100:.0f} %" for ph, v in p["bounds"].items()),
                p["note"]] for k, p in d["provenance"].items()]
    return {"workload": workload, "metrics": metrics, "profile": profile, "figures": figures,
            "warnings": d["warnings"]}


FIGURES_HEAD = ["device figure", "value (SI)", "rung", "share of each phase it bounds", "source or derivation"]


def _phase_table(est: "Estimate") -> tuple[list[str], list[list[str]]]:
    head = ["phase", "time", "steps", "GFLOP", "GB moved", "MFU", "MBU", "bound"]
    body = []
    for name in ("prefill", "decode"):
        p = est.phase(name)
        if not p["time_s"]:
            continue
        body.append([name, f"{p['time_s'] * 1e3:,.2f} ms", str(p["steps"]), f"{p['flops'] / 1e9:,.1f}",
                     f"{p['bytes'] / 1e9:,.2f}", f"{p['mfu'] * 100:.1f} %", f"{p['mbu'] * 100:.1f} %", p["bound"]])
    return head, body


def _ops_table(est: "Estimate") -> tuple[list[str], list[list[str]]]:
    ops = est.ops.sort_values("time_s", ascending=False).head(TOP_OPS)
    total = float(est.ops.time_s.sum()) or 1.0
    head = ["phase", "op", "kind", "unit / precision", "FLOP/byte", "time", "share", "bound"]
    body = [[r.phase, r.name, r.kind, f"{r.unit} / {r.precision}",
             "-" if r.intensity_flops_per_byte == float("inf") else f"{r.intensity_flops_per_byte:,.1f}",
             f"{r.time_s * 1e3:,.3f} ms", f"{r.time_s / total * 100:.1f} %", r.bound] for r in ops.itertuples()]
    return head, body


def _comm_table(est: "Estimate") -> tuple[list[str], list[list[str]]] | None:
    """Communication per collective and phase (None without parallelism)."""
    c = est.communication()
    if c.empty:
        return None
    head = ["phase", "collective", "algorithm", "link", "calls/step", "bytes", "time", "share of phase"]
    body = [[r.phase, r.name, r.algorithm, r.link, f"{r.count:g}", f"{r.comm_bytes / 1e6:,.2f} MB",
             f"{r.time_s * 1e3:,.3f} ms", f"{r.share_of_phase * 100:.1f} %"] for r in c.itertuples()]
    return head, body


def _sources(est: "Estimate") -> list[tuple[str, str, str, str]]:
    out = [("hardware", s.title, s.url, "; ".join(x for x in (s.covers, s.note) if x)) for s in est.device.sources]
    out += [("model", s.title, s.url, "; ".join(x for x in (s.covers, s.note) if x)) for s in est.model.sources]
    return out


def _figures(est: "Estimate") -> list[tuple[str, str, bytes]]:
    from . import plots

    out = []
    for key, title in FIGURES:
        try:
            out.append((key, title, plots.to_bytes(plots.figure(key, est), dpi=110)))
        except PerfmodelError as e:  # e.g. a device without a compute figure has no roofline
            out.append((key, f"{title} (not drawn: {e})", b""))
    return out


def _serving(res: Any, curve: Any) -> tuple[list[str], bytes]:
    """The serving section's lines and figure, from a simulated run (perfmodel.serving.ServeResult)."""
    from . import plots
    from .serving.figures import serving_figure
    from .serving.report import lines

    return lines(res.metrics()), plots.to_bytes(serving_figure(res, None, curve), dpi=110)


def _training(run: Any, search: dict[str, Any] | None) -> tuple[list[str], bytes]:
    """The training section's lines and figure: a run (perfmodel.training.TrainEstimate), and the layout search it
    was the best of (perfmodel.plan.plan_train), if any. Left, a step's time and a device's memory by kind; right,
    every fitting layout on the search's memory-speed front."""
    from . import plots

    if run is None:  # nothing fits: the search's count and the least memory a layout needs
        small = (search or {}).get("smallest_memory")
        return [f"no training layout fits ({(search or {}).get('layouts', 0):,} costed)"
                + (f"; the least memory a layout needs is {small['memory_per_device_bytes'] / 1e9:.1f} GB a device"
                   if small else "")], b""
    c, b, mem = run.config, run.breakdown, run.memory
    lines = [f"{c.devices} x {run.device.id}: tp {c.tp}, pp {c.pp}, cp {c.cp}, ep {c.ep}, dp {c.dp}, ZeRO {c.zero}; "
             f"seq {c.seq_len}, global batch {c.global_batch} ({c.micro_batches} micro-batches of {c.micro_batch}), "
             f"{c.precision}, {c.optimizer}, recompute {c.recompute}"
             + (f", LoRA rank {c.lora_rank}" if c.lora_rank else ""),
             f"step {run.step_time_s:.3f} s: {run.tokens_per_s:,.0f} tokens/s, MFU {run.mfu:.1%}, HFU {run.hfu:.1%}",
             "memory a device: " + ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in mem.items() if k != "total")
             + f" = {mem['total'] / 1e9:.1f} GB ({'fits' if run.fits else 'does not fit'})"]
    if search is not None:
        lines.insert(0, f"the fastest of {search['fit']:,} layouts that fit ({search['layouts']:,} costed: tp x pp x "
                        f"cp x ep x dp, ZeRO stage, recomputation, micro-batch; perfmodel plan --train)")
    if run.time_to_train_s is not None:
        lines.append(f"time to train: {run.time_to_train_s / 86400:,.1f} days")
    fig = plots._figure(11, 3.8)
    ax = fig.subplots(1, 2)
    a = ax[0]
    left = 0.0
    for k in ("compute", "bubble", "communication", "optimizer"):
        a.barh(["step (s)"], [b[k]], left=[left], label=k)
        left += b[k]
    a2 = a.twiny()
    left = 0.0
    for k in ("weights", "gradients", "optimizer", "activations"):
        a2.barh(["memory (GB)"], [mem[k] / 1e9], left=[left], label=k, hatch="//", alpha=0.6)
        left += mem[k] / 1e9
    if run.capacity_bytes:
        a2.axvline(run.capacity_bytes / 1e9, color="k", ls="--", lw=1)
    a.set_title("A step's time (bottom axis) and a device's memory (top axis)")
    a.legend(loc="lower right", fontsize=7)
    a2.legend(loc="upper right", fontsize=7)
    a = ax[1]
    if search is not None and search["front"]:
        fr = search["front"]
        a.plot([p["memory_per_device_bytes"] / 1e9 for p in fr], [p["tokens_per_s"] for p in fr], "o-")
        for p in fr[::max(1, len(fr) // 6)] + fr[-1:]:  # a few labels: the rest would overlap
            a.annotate(f"tp{p['tp']} pp{p['pp']} dp{p['dp']} z{p['zero']} {p['recompute'][0]}",
                       (p["memory_per_device_bytes"] / 1e9, p["tokens_per_s"]), fontsize=6)
    a.set_xlabel("memory a device (GB)")
    a.set_ylabel("tokens/s")
    a.set_title("Layouts: the most tokens/s for the memory")
    a.grid(True, alpha=0.3)
    return lines, plots.to_bytes(fig, dpi=110)


def write_report(est: "Estimate", path: str | Path, title: str | None = None, serving: Any = None,
                 serving_curve: Any = None, training: Any = None, training_search: dict[str, Any] | None = None
                 ) -> Path:
    """Write the report as .html (one self-contained file) or .md (PNGs beside it as <stem>.<figure>.png).
    `serving`: a simulated run of the same engine under load (perfmodel.serving.simulate, record=True), shown as a
    "Serving under load" section with its figure (`serving_curve`: rate_curve's points for its throughput panel).
    `training`: a training run of the model (perfmodel.training.train), shown as a "Training" section with its
    figure (`training_search`: the plan_train result it was chosen from)."""
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in (".html", ".htm", ".md"):
        raise PerfmodelError(f"-o must end in .html or .md; got {path.name!r}")
    title = title or f"{est.model.name} on {est.device.name}"
    figs = _figures(est)
    serve = _serving(serving, serving_curve) if serving is not None else None
    trained = _training(training, training_search) if training is not None or training_search else None
    if fmt == ".md":
        names = {}
        for key, part in (("serving", serve), ("training", trained)):
            if part is not None and part[1]:
                png = path.with_name(f"{path.stem}.{key}.png")
                atomic_write_bytes(png, part[1])
                names[key] = png.name
        for key, _, data in figs:
            if data:
                png = path.with_name(f"{path.stem}.{key}.png")
                atomic_write_bytes(png, data)
                names[key] = png.name
        return atomic_write_text(path, _markdown(est, title, figs, names, serve, trained))
    return atomic_write_text(path, _html(est, title, figs, serve, trained))


def _stamp() -> str:
    from . import __version__

    return f"perfmodel {__version__}, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"


def _markdown(est: "Estimate", title: str, figs: list, names: dict[str, str], serve: Any = None,
              trained: Any = None) -> str:
    r = _rows(est)

    def table(head: list[str], body: list[list[str]]) -> str:
        esc = [[c.replace("|", "\\|") for c in row] for row in body]
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(row) + " |" for row in esc])

    parts = [f"# {title}", "", f"_{_stamp()}_", "", "## Workload", "",
             table(["", ""], [list(x) for x in r["workload"]]), "", "## Results", "",
             table(["metric", "value"], [list(x) for x in r["metrics"]]), "", table(*_phase_table(est)), ""]
    for key, t, _ in figs:
        parts += [f"## {t}", ""] + ([f"![{t}]({names[key]})", ""] if key in names else [])
    if serve is not None:
        parts += ["## Serving under load", "", *(f"- {line.strip()}" for line in serve[0]), "",
                  f"![Serving under load]({names['serving']})", ""]
    if trained is not None:
        parts += ["## Training", "", *(f"- {line}" for line in trained[0]), ""]
        parts += [f"![Training]({names['training']})", ""] if "training" in names else []
    comm = _comm_table(est)
    parts += ["## Heaviest ops", "", table(*_ops_table(est)), ""]
    parts += ["## Communication", "", table(*comm), ""] if comm else []
    parts += ["## Efficiency profile", "",
              table(["setting", "value"], [list(x) for x in r["profile"]]), "", "## Device figures used", "",
              table(FIGURES_HEAD, r["figures"]), ""] + [f"- warning: {w}" for w in r["warnings"]] + [
              "", "## Assumptions", ""]
    parts += [f"- {a}" for a in ASSUMPTIONS] + ["", "## Sources", ""]
    parts += [f"- {what}: [{t}]({u}){' — ' + c if c else ''}" if u else f"- {what}: {t}{' — ' + c if c else ''}"
              for what, t, u, c in _sources(est)]
    return "\n".join(parts) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;border:1px solid #eee}
.stamp{color:#777;font-size:.85em}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1.5em}
@media(max-width:800px){.grid{grid-template-columns:1fr}}li{margin:.2em 0}"""


def _html(est: "Estimate", title: str, figs: list, serve: Any = None, trained: Any = None) -> str:
    r = _rows(est)
    e = html.escape

    def table(head: list[str] | None, body: list[list[str]] | list[tuple[str, str]]) -> str:
        h = "<tr>" + "".join(f"<th>{e(c)}</th>" for c in head) + "</tr>" if head else ""
        rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in body)
        return f"<table>{h}{rows}</table>"

    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>",
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head><body>",
           f"<h1>{e(title)}</h1><p class=\"stamp\">{e(_stamp())}</p>",
           "<div class=\"grid\"><div><h2>Workload</h2>", table(None, r["workload"]), "</div>",
           "<div><h2>Results</h2>", table(None, r["metrics"]), "</div></div>", table(*_phase_table(est))]
    for key, t, data in figs:
        out.append(f"<h2>{e(t)}</h2>")
        if data:
            b64 = base64.b64encode(data).decode()
            out.append(f"<img alt=\"{e(t)}\" src=\"data:image/png;base64,{b64}\">")
    if serve is not None:
        b64 = base64.b64encode(serve[1]).decode()
        out += ["<h2>Serving under load</h2><ul>", *(f"<li>{e(line.strip())}</li>" for line in serve[0]), "</ul>",
                f"<img alt=\"Serving under load\" src=\"data:image/png;base64,{b64}\">"]
    if trained is not None:
        b64 = base64.b64encode(trained[1]).decode()
        out += ["<h2>Training</h2><ul>", *(f"<li>{e(line)}</li>" for line in trained[0]), "</ul>",
                *([f"<img alt=\"Training\" src=\"data:image/png;base64,{b64}\">"] if trained[1] else [])]
    comm = _comm_table(est)
    out += ["<h2>Heaviest ops</h2>", table(*_ops_table(est)),
            *(["<h2>Communication</h2>", table(*comm)] if comm else []),
            "<h2>Efficiency profile</h2>", table(["setting", "value"], r["profile"]),
            "<h2>Device figures used</h2>", table(FIGURES_HEAD, r["figures"]),
            *(f"<p>warning: {e(w)}</p>" for w in r["warnings"]),
            "<h2>Assumptions</h2><ul>", *(f"<li>{e(a)}</li>" for a in ASSUMPTIONS), "</ul>",
            "<h2>Sources</h2><ul>"]
    for what, t, u, c in _sources(est):
        link = f"<a href=\"{e(u)}\">{e(t)}</a>" if u else e(t)
        out.append(f"<li>{e(what)}: {link}{' — ' + e(c) if c else ''}</li>")
    out.append("</ul></body></html>")
    return "\n".join(out) + "\n"
