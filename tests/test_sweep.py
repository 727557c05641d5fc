import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm


@given(st.lists(st.tuples(st.sampled_from(["llama-2-7b", "mistral-7b", "gpt-oss-20b", "t5-base"]),
                          st.sampled_from(["h100-sxm", "mi300x", "xeon-8480plus"]),
                          st.integers(1, 32), st.integers(1, 900), st.integers(1, 100),
                          st.sampled_from(["bf16", "fp8", "q4_k_m"])), min_size=1, max_size=6))
@settings(max_examples=15, deadline=None)
def test_sweep_equals_single_estimates(rows):
    df = pd.DataFrame(rows, columns=["model", "hardware", "batch", "prompt", "gen", "weights"])
    res = pm.sweep(df, ignore_capacity=True)
    for i, (m, h, b, p, g, w) in enumerate(rows):
        est = pm.estimate(m, h, batch=b, prompt_len=p, gen_len=g, weights=w, ignore_capacity=True)
        for key in ("ttft_s", "e2e_latency_s", "throughput_tokens_per_s", "mfu", "mbu"):
            assert res.loc[i, key] == pytest.approx(getattr(est, key), rel=1e-9), key
        if g > 1:
            assert res.loc[i, "tpot_s"] == pytest.approx(est.tpot_s, rel=1e-9)
        assert res.loc[i, "total_bytes"] == pytest.approx(est.memory["total_bytes"])


def test_sweep_unknown_column():
    with pytest.raises(pm.PerfmodelError, match="unknown sweep column"):
        pm.sweep(pd.DataFrame({"model": ["gpt2"], "hardware": ["h100"], "bacth": [1]}))


def test_sweep_capacity_rows_flagged():
    df = pd.DataFrame({"model": ["mixtral-8x7b", "llama-2-7b"], "hardware": ["a100-80gb-sxm"] * 2})
    res = pm.sweep(df)
    assert "does not fit" in res.loc[0, "error"] and np.isnan(res.loc[0, "tpot_s"])
    assert res.loc[1, "error"] == "" and res.loc[1, "tpot_s"] > 0


def test_sweep_engine_column_matches_estimate_engine_row_by_row():
    rows = [("llama-3-8b", "rtx-4090", 1, 512, 128, "q4_0", "llamacpp"),
            ("llama-3-8b", "m1-max-32c", 1, 512, 128, "q4_0", "llamacpp"),
            ("llama-3-8b", "h100-sxm", 8, 1024, 256, "bf16", "vllm"),
            ("llama-3-8b", "h100-sxm", 8, 1024, 256, "bf16", "trtllm"),
            ("llama-3-8b", "xeon-8480plus", 1, 128, 32, "bf16", "")]
    df = pd.DataFrame(rows, columns=["model", "hardware", "batch", "prompt", "gen", "weights", "engine"])
    res = pm.sweep(df)
    assert (res.error == "").all(), res.error.tolist()
    for i, (m, h, b, p, g, w, e) in enumerate(rows):
        est = pm.estimate(m, h, batch=b, prompt_len=p, gen_len=g, weights=w, engine=e or None)
        for key in ("ttft_s", "tpot_s", "decode_tokens_per_s", "throughput_tokens_per_s"):
            assert res.loc[i, key] == pytest.approx(getattr(est, key), rel=1e-9), (h, e, key)
        for metric, iv in est.intervals.items():
            assert res.loc[i, f"{metric}_low"] == pytest.approx(iv["low"], rel=1e-9), (h, e, metric)
            assert res.loc[i, f"{metric}_high"] == pytest.approx(iv["high"], rel=1e-9), (h, e, metric)
    # the same device with and without an engine profile differ (the profile is applied per row)
    assert res.loc[2, "tpot_s"] != pytest.approx(res.loc[3, "tpot_s"], rel=1e-6)


def test_sweep_engine_default_fills_empty_cells_and_bad_engine_is_a_row_error():
    df = pd.DataFrame({"model": ["llama-3-8b"] * 3, "hardware": ["rtx-4090"] * 3, "weights": ["q4_0"] * 3,
                       "engine": ["", "nosuch", "vllm"]})
    res = pm.sweep(df, engine="llamacpp")
    assert res.loc[0, "engine"] == "llamacpp"
    assert res.loc[0, "tpot_s"] == pytest.approx(pm.estimate("llama-3-8b", "rtx-4090", weights="q4_0",
                                                             engine="llamacpp").tpot_s, rel=1e-9)
    assert "engine must be one of" in res.loc[1, "error"] and np.isnan(res.loc[1, "tpot_s"])
    assert res.loc[2, "error"] == "" and res.loc[2, "tpot_s"] > 0


def test_sweep_warns_past_the_context_and_still_computes():
    res = pm.sweep(pd.DataFrame({"model": ["gpt2", "gpt2"], "hardware": ["h100"] * 2, "prompt": [2000, 100]}))
    assert "exceeds the context length" in res.loc[0, "warning"] and res.loc[0, "tpot_s"] > 0
    assert res.loc[1, "warning"] == ""


def test_a_group_evaluated_in_chunks_gives_what_one_pass_gives(monkeypatch):
    from perfmodel import scenarios

    rng = np.random.default_rng(3)
    df = pd.DataFrame({"model": "llama-3-8b", "hardware": "h100-sxm", "batch": rng.integers(1, 300, 50),
                       "prompt": rng.integers(1, 20000, 50), "gen": rng.integers(0, 3000, 50)})
    whole = pm.sweep(df)
    monkeypatch.setattr(scenarios, "CHUNK_ROWS", 7)  # 50 rows: 8 chunks, the last of 1
    chunked = pm.sweep(df)
    assert (whole.error != "").any() and (whole.error == "").any()  # refused and computed rows in the same group
    pd.testing.assert_frame_equal(whole, chunked)


def test_an_engines_own_compute_format_applies_where_act_is_left_open():
    # llama.cpp on a CPU computes in FP32 on dequantised blocks: with --engine llamacpp and no --act, the estimate
    # (and a sweep row with a blank act) uses fp32; an explicit act is kept
    est = pm.estimate("llama-3-8b", "ryzen-9-7950x", batch=1, prompt_len=512, gen_len=16, weights="q4_0",
                      engine="llamacpp")
    assert est.workload.act == pm.DType.FP32
    kept = pm.estimate("llama-3-8b", "ryzen-9-7950x", batch=1, prompt_len=512, gen_len=16, weights="q4_0",
                       engine="llamacpp", act="bf16")
    assert kept.workload.act == pm.DType.BF16
    on_gpu = pm.estimate("llama-3-8b", "rtx-4090", weights="q4_0", engine="llamacpp")  # gen left to its default
    assert on_gpu.workload.act == pm.DType.FP16
    assert pm.estimate("llama-3-8b", "ryzen-9-7950x", batch=1, prompt_len=512, gen_len=16,
                       weights="q4_0").workload.act == pm.DType.BF16  # no engine: the workload's default
    res = pm.sweep(pd.DataFrame({"model": ["llama-3-8b"] * 2, "hardware": ["ryzen-9-7950x"] * 2, "batch": [1, 1],
                                 "prompt": [512, 512], "gen": [16, 16], "weights": ["q4_0"] * 2,
                                 "act": ["", "bf16"], "engine": ["llamacpp"] * 2}))
    assert list(res.act) == ["fp32", "bf16"]
    assert res.ttft_s[0] == pytest.approx(est.ttft_s, rel=1e-9)
    assert res.ttft_s[1] == pytest.approx(kept.ttft_s, rel=1e-9)
