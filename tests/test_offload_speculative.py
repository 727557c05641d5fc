"""Partial offload (perfmodel.offload) and speculative decoding (perfmodel.speculative)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel.cli import main
from perfmodel.errors import CapacityError, PerfmodelError
from perfmodel.memory import weight_bytes
from perfmodel.offload import boundaries, estimate_offload, offload_memory
from perfmodel.speculative import expected_tokens, speculative


# Speculative decoding ---------------------------------------------------------------------------------------------

def test_expected_tokens_golden():
    # Leviathan et al. eq. 1: (1 - a^(k+1)) / (1 - a); a = 0.8, k = 4: (1 - 0.32768) / 0.2 = 3.3616
    assert expected_tokens(0.8, 4) == pytest.approx(3.3616)
    assert expected_tokens(0.0, 4) == 1.0  # every draft rejected: the target's own token only
    assert expected_tokens(1.0, 4) == 5.0  # every draft accepted, plus the target's token
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)  # (1 - 0.25) / 0.5


@given(a=st.floats(0.0, 0.99), k=st.integers(1, 16))
def test_expected_tokens_bounds_and_growth(a, k):
    e = expected_tokens(a, k)
    assert 1.0 <= e <= k + 1
    assert expected_tokens(min(a + 0.01, 1.0), k) >= e - 1e-12
    assert expected_tokens(a, k + 1) >= e - 1e-12


def test_speculative_time_is_drafts_plus_verify_over_tokens():
    m, d = pm.load_model("llama-3-70b"), pm.load_device("h100-sxm")
    wl = pm.Workload(tp=4, prompt_len=512, gen_len=256)
    s = speculative(m, d, wl, None, "llama-3.2-1b", 4, 0.8)
    assert s.tpot_s == pytest.approx((4 * s.draft_step_s + s.verify_step_s) / 3.3616)
    assert s.verify_step_s > s.plain_tpot_s  # 5 tokens a sequence cost more than 1 ...
    assert s.verify_step_s < 2 * s.plain_tpot_s  # ... but far less than 5 x: the weights are read once
    assert s.speedup > 1.5  # a 1B drafter at 0.8 acceptance pays off for a 70B target
    assert speculative(m, d, wl, None, "llama-3.2-1b", 4, 0.0).speedup < 1.0  # all drafts wasted


def test_medusa_heads_golden_and_one_pass_a_step():
    # 4 heads of Llama-2-7B (d 4,096, V 32,000) in FP16: 4 x (4,096^2 + 4,096 x 32,000) x 2 B = 1,182,793,728 B read
    # a pass; at batch 1 on an H100 SXM at its datasheet 3.35 TB/s (ideal: no fraction, no overheads) 0.35307 ms
    from perfmodel.engines import load_engine
    from perfmodel.speculative import medusa_heads_s

    m, d = pm.load_model("llama-2-7b"), pm.load_device("h100-sxm")
    wl = pm.Workload(weights="fp16", act="fp16")
    t = medusa_heads_s(m, d, wl, load_engine("ideal").efficiency(d), 4, 1.0)
    assert t == pytest.approx(1_182_793_728 / 3.35e12, rel=2e-3)  # the activations add 0.05 %
    s = speculative(m, d, wl, None, "medusa", 4, 0.7)
    assert s.draft_passes == 1 and s.drafter == "llama-2-7b-medusa-heads"
    assert s.tpot_s == pytest.approx((s.draft_step_s + s.verify_step_s) / s.expected_tokens_per_step)
    e = speculative(m, d, wl, None, "eagle", 4, 0.7)  # EAGLE's head drafts autoregressively: k passes
    assert e.draft_passes == 4
    assert e.tpot_s == pytest.approx((4 * e.draft_step_s + e.verify_step_s) / e.expected_tokens_per_step)


def test_speculative_drafter_must_share_tokenizer_and_estimate_reports_it():
    with pytest.raises(PerfmodelError, match="tokenizer"):
        pm.estimate("llama-3-8b", "h100-sxm", draft="qwen2.5-0.5b")
    # one tokenizer, tables padded differently (151,936 and 152,064 rows: 0.08 % apart): Qwen2.5-0.5B drafts for 32B
    assert pm.estimate("qwen2.5-32b", "h100-sxm", draft="qwen2.5-0.5b").speculative.drafter == "qwen2.5-0.5b"
    est = pm.estimate("llama-3-8b", "h100-sxm", draft="eagle")
    sp = est.to_dict()["speculative"]
    assert sp["acceptance_assumed"] and sp["drafter"] == "llama-3-8b-eagle-head"
    assert sp["tpot_s"] < est.tpot_s


# Partial offload --------------------------------------------------------------------------------------------------

def testboundaries():
    m = pm.load_model("llama-3-70b")  # 80 layers
    assert boundaries(m, 0, False) == 0  # all on the CPU
    assert boundaries(m, 40, False) == 2  # CPU layers -> GPU layers -> CPU output layer
    assert boundaries(m, 81, False) == 1  # the embedding on the CPU, the rest on the GPU
    mx = pm.load_model("mixtral-8x7b")  # 32 MoE layers: out to the experts and back in each, in from the embedding
    assert boundaries(mx, 33, True) == 1 + 2 * 32


def test_offload_memory_split_golden():
    m = pm.load_model("llama-3-70b")
    wl = pm.Workload(weights="q4_k_m")
    w = weight_bytes(m, wl.precision, wl.parallel)
    parts = m.param_breakdown()
    head = parts["lm_head"] * wl.precision.head_format.bytes
    emb = parts["embedding"] * wl.precision.head_format.bytes
    gpu, host = offload_memory(m, wl, 40, False, kv_total=8e9, act=1e8)
    # 40 of 80 layers: half the layer weights and half the KV cache on the GPU, with the activations
    assert gpu == pytest.approx((w - head - emb) / 2 + 4e9 + 1e8)
    assert host == pytest.approx((w - head - emb) / 2 + head + emb + 4e9)
    assert gpu + host == pytest.approx(w + 8e9 + 1e8)  # nothing lost or counted twice


def test_all_layers_on_gpu_matches_the_plain_estimate():
    wl = pm.Workload(weights="q4_k_m", prompt_len=512, gen_len=128)
    plain = pm.estimate("llama-3-8b", "rtx-4090", wl, engine="llamacpp")
    off = pm.estimate("llama-3-8b", "rtx-4090", wl, engine="llamacpp", gpu_layers=99)
    # the only differences: the embedding look-up on the CPU and one activation copy a step
    assert off.tpot_s == pytest.approx(plain.tpot_s, rel=0.03)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 79))
def test_more_layers_on_the_gpu_decode_faster(n):
    m, d = pm.load_model("llama-3-70b"), pm.load_device("rtx-4090")
    wl = pm.Workload(weights="q4_k_m", prompt_len=256, gen_len=64)
    a = estimate_offload(m, d, wl, None, n, host="ryzen-9-7950x")
    b = estimate_offload(m, d, wl, None, n + 1, host="ryzen-9-7950x")
    assert b.decode_tokens_per_s > a.decode_tokens_per_s


def test_prompt_streams_the_cpu_layers_over_pcie():
    m, d = pm.load_model("llama-3-70b"), pm.load_device("rtx-4090")
    wl = pm.Workload(weights="q4_k_m", prompt_len=512, gen_len=16)
    e = estimate_offload(m, d, wl, None, 0, host="ryzen-9-7950x")
    # a 512-token prompt (>= 32 rows) runs every layer on the GPU, its weights copied over PCIe 4.0 x16:
    # 16 x 16 GT/s x 128/130 / 8 = 31.5 GB/s; the ~42 GB of layers take at least 42e9 / 31.5e9 = 1.3 s
    parts, hb = m.param_breakdown(), wl.precision.head_format.bytes
    layers = weight_bytes(m, wl.precision, wl.parallel) - (parts["embedding"] + parts["lm_head"]) * hb
    assert e.phases["prefill"]["gpu_s"] + e.phases["prefill"]["stream_s"] >= 0.99 * layers / 31.5e9
    assert e.phases["prefill"]["cpu_s"] == 0.0 and e.phases["decode"]["cpu_s"] > 0


def test_capacity_error_suggests_an_offload_and_the_offload_runs(capsys):
    with pytest.raises(CapacityError, match=r"--gpu-layers \d+ \(about [\d.]+ tok/s"):
        pm.estimate("llama-3-70b", "rtx-4090", weights="q4_k_m")
    assert main(["estimate", "--model", "llama-3-70b", "--hardware", "rtx-4090", "--weights", "q4_k_m",
                 "--gpu-layers", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["offload"]["gpu_layers"] == 40 and out["memory"]["fits"] and out["decode_tokens_per_s"] > 0
    assert "host CPU assumed" in " ".join(out["warnings"])


def test_offload_experts_needs_moe_and_gpu():
    with pytest.raises(PerfmodelError, match="MoE"):
        pm.estimate("llama-3-8b", "rtx-4090", offload_experts=True)
    with pytest.raises(PerfmodelError, match="CPU already"):
        pm.estimate("llama-3-8b", "ryzen-9-7950x", gpu_layers=4)
    e = pm.estimate("mixtral-8x7b", "rtx-4090", weights="q4_k_m", offload_experts=True)
    assert e.memory["fits"] and e.phases["decode"]["cpu_s"] > e.phases["decode"]["gpu_s"]


@pytest.mark.parametrize("args,msg", [(["--gpu-layers", "-1"], "--gpu-layers"), (["--host", "ryzen-9-7950x"], "--host"),
                                      (["--gpu-layers", "4", "--host", "ryzen-9-795"], "ryzen"),
                                      (["--acceptance", "1.5", "--draft-model", "eagle"], "--acceptance")])
def test_cli_bad_offload_and_spec_flags(capsys, args, msg):
    assert main(["estimate", "--model", "llama-3-8b", "--hardware", "rtx-4090", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


# Prefix caching ---------------------------------------------------------------------------------------------------

def test_prefix_hit_shortens_ttft_and_none_changes_nothing():
    plain = pm.estimate("llama-3-8b", "h100-sxm", prompt_len=4096)
    zero = pm.estimate("llama-3-8b", "h100-sxm", prompt_len=4096, prefix_hit=0.0).prefix
    assert zero.cached_tokens == 0 and zero.ttft_s == pytest.approx(plain.ttft_s, rel=5e-3)
    ttfts = [pm.estimate("llama-3-8b", "h100-sxm", prompt_len=4096, prefix_hit=h).prefix.ttft_s
             for h in (0.25, 0.5, 0.9)]
    assert ttfts[0] > ttfts[1] > ttfts[2]
    # 90 % cached: 410 new tokens of 4096 (floor(0.9 x 4096) = 3686 cached): less than a quarter of the work
    # (the new queries still attend to all 4096 keys, and the weights are read once either way)
    assert ttfts[2] < 0.25 * plain.ttft_s
    with pytest.raises(PerfmodelError, match="--prefix-hit"):
        pm.estimate("llama-3-8b", "h100-sxm", prefix_hit=1.0)


def test_measured_acceptance_length_replaces_the_formula():
    m, d = pm.load_model("llama-3.1-8b"), pm.load_device("h100-sxm")
    wl = pm.Workload(prompt_len=128, gen_len=256)
    s = speculative(m, d, wl, None, "eagle", 4, accept_length=2.39)
    assert s.expected_tokens_per_step == 2.39
    assert s.tpot_s == pytest.approx((4 * s.draft_step_s + s.verify_step_s) / 2.39)
    assert expected_tokens(s.acceptance, 4) == pytest.approx(2.39, rel=1e-9)  # the rate that gives it
    with pytest.raises(PerfmodelError, match="acceptance length"):
        speculative(m, d, wl, None, "eagle", 2, accept_length=3.5)  # at most k + 1 = 3
