"""Figures and reports: what they show is what the estimate and the device spec say (ceilings, ops, areas, shares,
memory), the files are written whole, and the HTML report stands alone."""

import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel import plots
from perfmodel.report import write_report


@pytest.fixture(scope="module")
def est():
    return pm.estimate("llama-3-8b", "h100-sxm", batch=8, prompt_len=1024, gen_len=64)


def _by_gid(ax, prefix):
    arts = list(ax.lines) + list(ax.collections)
    return [a for a in arts if (a.get_gid() or "").startswith(prefix)]


def test_roofline_axes_and_ceilings_follow_the_device_spec(est):
    fig = plots.roofline(est)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    dev = pm.load_device("h100-sxm")
    # H100 SXM: one memory level with a bandwidth (HBM3 3,350 GB/s; L2 has none in the spec) and six distinct
    # dense peaks: matrix fp8/int8 1,978.9, bf16/fp16 989.4, tf32 494.7; vector bf16/fp16 133.8, fp32 (= matrix
    # fp64) 66.9, fp64 33.5 TFLOP/s
    mem = [lv for lv in dev.levels if lv.bandwidth_bytes_per_s]
    assert [a.get_gid().split("|")[2] for a in _by_gid(ax, "memory|")] == ["HBM3 3,350 GB/s"] and len(mem) == 1
    labels = [a.get_gid().split("|")[2] for a in _by_gid(ax, "compute|")]
    assert labels == ["matrix fp8/int8 1,978.9 TFLOP/s", "matrix bf16/fp16 989.4 TFLOP/s", "matrix tf32 494.7 TFLOP/s",
                      "vector bf16/fp16 133.8 TFLOP/s", "matrix fp64, vector fp32 66.9 TFLOP/s",
                      "vector fp64 33.5 TFLOP/s"]
    for line in _by_gid(ax, "compute|"):  # flat, at the peak the label names
        y = line.get_ydata()
        assert y[0] == y[-1]
    # one ridge point per compute ceiling, on the main-memory line: x = peak / bandwidth
    ridges = _by_gid(ax, "ridge|")
    assert len(ridges) == len(labels)
    for r in ridges:
        (x,), (y,) = r.get_xdata(), r.get_ydata()
        assert x == pytest.approx(y / 3.35e12)


def test_roofline_plots_every_op_with_area_proportional_to_time(est):
    fig = plots.roofline(est)
    pts = plots.roofline_points(est)
    ops = est.ops
    assert len(pts) == ((ops.flops > 0) & (ops.bytes > 0)).sum() > 10
    dots = _by_gid(fig.axes[0], "ops|")
    assert sum(len(d.get_offsets()) for d in dots) == len(pts)
    # each dot at (intensity, attained FLOP/s) with area = 900 pt^2 x share of the end-to-end time
    total = float(ops.time_s.sum())
    for d in dots:
        _, phase, kind = d.get_gid().split("|")
        g = pts[(pts.phase == phase) & (pts.kind == kind)]
        assert np.allclose(d.get_offsets(), np.c_[g.intensity_flops_per_byte, g.flops / g.time_s])
        big = g.time_s / total * plots.MAX_DOT_AREA >= 4  # tiny ops are drawn at a floor of 4 pt^2
        assert np.allclose(np.asarray(d.get_sizes())[big.to_numpy()], (g.time_s / total * 900)[big])
    assert {d.get_gid().split("|")[1] for d in dots} == {"prefill", "decode"}


def test_roofline_overlays_the_ceilings_of_compared_devices(est):
    ax = plots.roofline(est, compare=["a100-80gb-sxm"]).axes[0]
    assert {a.get_gid().split("|")[1] for a in _by_gid(ax, "compute|")} == {"h100-sxm", "a100-80gb-sxm"}
    a100 = [a for a in _by_gid(ax, "memory|") if "|a100-80gb-sxm|" in a.get_gid()]
    assert len(a100) == 1 and "2,039 GB/s" in a100[0].get_gid()
    # an Apple GPU's peak is derived from its ALUs and clock: it is drawn like any other
    ax = plots.roofline(est, compare=["m2-max-38c"]).axes[0]
    assert any("|m2-max-38c|" in a.get_gid() for a in _by_gid(ax, "compute|"))
    bare = pm.Device(id="bare", name="bare", kind="gpu", vendor="v", memory=[{"name": "M", "bandwidth_gb_per_s": 1}])
    with pytest.raises(pm.PerfmodelError, match="bare has no compute figure"):
        plots.roofline(est, compare=[bare])


def test_breakdown_shares_add_up_to_each_phase(est):
    t = plots.breakdown_table(est)
    for phase in ("prefill", "decode"):
        phase_s = est.phase(phase)["time_s"]
        for by in ("kind", "block"):
            assert t[(t.phase == phase) & (t.by == by)].time_s.sum() == pytest.approx(phase_s, rel=1e-9)
    fig = plots.breakdown(est)
    for ax in fig.axes:
        widths = {}
        for p in ax.patches:
            widths.setdefault(round(p.get_y() + p.get_height() / 2), []).append(p.get_width())
        assert all(sum(w) == pytest.approx(100, abs=1e-6) for w in widths.values()) and len(widths) == 2
    assert plots.block_of("layers.attn.qkv", "matmul") == "attention"
    assert plots.block_of("layers.moe.experts.up", "matmul") == "MLP"
    assert plots.block_of("lm_head.all_gather", "comm") == "communication"
    assert plots.block_of("lm_head", "matmul") == "LM head" and plots.block_of("embed", "embedding") == "other"


def test_memory_figure_stacks_what_the_estimate_says(est):
    fig = plots.memory(est)
    bar_ax = fig.axes[0]
    heights = [p.get_height() for p in bar_ax.patches]
    m = est.memory
    assert heights == pytest.approx([m["weights_bytes"] / 1e9, m["kv_cache_bytes"] / 1e9,
                                     m["activation_bytes"] / 1e9])
    assert bar_ax.lines[0].get_ydata()[0] == pytest.approx(80.0)  # capacity, GB
    g = plots.kv_growth(est)
    assert (np.diff(g.kv_cache_bytes) > 0).all() and g.context.iloc[-1] == pytest.approx(8192, rel=0.01)


@settings(max_examples=15, deadline=None)
@given(prompt=st.sampled_from([128, 512, 2048]), model=st.sampled_from(["llama-3-8b", "mistral-7b", "gpt2"]))
def test_batch_curve_latency_grows_and_the_knee_is_where_gemms_turn_compute_bound(prompt, model):
    wl = pm.Workload(prompt_len=prompt, gen_len=64)
    t = plots.batch_table(model, "h100-sxm", wl)
    assert (np.diff(t.tpot_s) >= -1e-12).all()  # a bigger batch never makes a step faster
    assert (np.diff(t.decode_tokens_per_s) > 0).all()  # nor the whole batch slower
    k = plots.knee(t)
    if k is not None:
        assert (t[t.batch < k].gemm_bound == "memory").all() and (t[t.batch >= k].gemm_bound == "compute").all()


def test_knee_at_the_ridge_for_a_gemm():
    # llama-3-8b bf16 on an H100 SXM with the default efficiencies (matrix 0.7, memory 0.8): the decode GEMMs'
    # intensity is about the batch (2 FLOPs per 2-byte weight per sequence), ridge 0.7 x 989.4 / (0.8 x 3.35)
    # = 258 FLOP/byte, so they are memory-bound at batch 256 and compute-bound at 512
    t = plots.batch_table("llama-3-8b", "h100-sxm", pm.Workload(prompt_len=128, gen_len=16))
    assert plots.knee(t) == 512


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.external, self.imgs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for key in ("src", "href"):
            if tag != "a" and a.get(key) and not a[key].startswith("data:"):
                self.external.append((tag, a[key]))


def test_html_report_is_self_contained_and_cites_its_sources(est, tmp_path):
    path = write_report(est, tmp_path / "r.html")
    text = path.read_text()
    p = _Refs()
    p.feed(text)
    assert p.external == [] and "script" not in p.tags and "link" not in p.tags
    assert len(p.imgs) == 4 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for s in pm.load_device("h100-sxm").sources:  # every hardware source, by title
        assert s.title.replace("&", "&amp;").replace('"', "&quot;").replace("'", "&#x27;")[:40] in text
    assert "Efficiency profile" in text and "TTFT" in text


def test_markdown_report_writes_its_pngs_beside_it(est, tmp_path):
    path = write_report(est, tmp_path / "r.md")
    text = path.read_text()
    for key in ("roofline", "breakdown", "memory", "batch"):
        png = tmp_path / f"r.{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](r.{key}.png)" in text


def test_plot_and_report_cli(tmp_path, capsys):
    from perfmodel.cli import main

    base = ["--model", "llama-3-8b", "--hardware", "h100-sxm"]
    assert main(["plot", "roofline", *base, "-o", str(tmp_path / "a.svg")]) == 0
    assert (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")
    assert main(["plot", "batch", *base, "-o", str(tmp_path / "b.png")]) == 0
    assert main(["report", *base, "-o", str(tmp_path / "r.html")]) == 0
    capsys.readouterr()
    assert main(["plot", "rooflne", *base, "-o", str(tmp_path / "c.png")]) == 2
    assert "Did you mean 'roofline'" in capsys.readouterr().err
    assert main(["plot", "memory", *base, "-o", str(tmp_path / "c.jpg")]) == 2
    assert "-o must end in .png or .svg" in capsys.readouterr().err
    assert main(["report", *base, "-o", str(tmp_path / "r.pdf")]) == 2
    assert main(["plot", "memory", *base, "--compare", "a100", "-o", str(tmp_path / "c.png")]) == 2
    assert not (tmp_path / "c.png").exists()


def test_figures_do_not_load_with_the_package():
    code = "import sys, perfmodel, perfmodel.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
