import pytest

import perfmodel as pm
from perfmodel.graph import Parallel, Precision
from perfmodel.memory import kv_bytes, weight_bytes


def test_llama2_kv_cache_bytes(llama2):
    # 2 (K,V) x 32 layers x 32 heads x 128 x 2 bytes = 524,288 bytes per token; 4096 tokens = 2.147 GB
    assert kv_bytes(llama2, Precision(), Parallel(), 1.0, 4000.0, 96.0) == 524_288 * 4096


def test_sliding_window_caps_the_cache():
    m = pm.load_model("mistral-7b")  # window 4096 on every layer
    per_token = 32 * 2 * 8 * 128 * 2
    assert kv_bytes(m, Precision(), Parallel(), 2.0, 30_000.0, 2_000.0) == 2 * 4096 * per_token


def test_mla_cache_per_token():
    m = pm.load_model("deepseek-v3")
    # 61 layers x (512 + 64) latent x 2 bytes = 70,272 bytes per token, not 2 x 128 heads x 128
    assert kv_bytes(m, Precision(), Parallel(), 1.0, 1.0, 0.0) == 61 * 576 * 2
    # the latent is replicated on every tensor-parallel rank
    assert kv_bytes(m, Precision(), Parallel(tp=8), 1.0, 1.0, 0.0) == 61 * 576 * 2


def test_gqa_kv_heads_replicate_beyond_tp():
    m = pm.load_model("llama-3-8b")  # 8 kv heads
    one = kv_bytes(m, Precision(), Parallel(tp=1), 1.0, 100.0, 0.0)
    assert kv_bytes(m, Precision(), Parallel(tp=8), 1.0, 100.0, 0.0) == one / 8
    assert kv_bytes(m, Precision(), Parallel(tp=16), 1.0, 100.0, 0.0) == one / 8  # 1 head per rank at least


def test_weight_bytes_by_format(llama2):
    bf16 = weight_bytes(llama2, Precision(), Parallel())
    # matrices (all params but the 65 norm vectors) x bytes per weight; norms stay at the activation precision
    norms = 65 * 4096
    assert bf16 == (6_738_415_616 - norms) * 2 + norms * 2
    q4 = weight_bytes(llama2, Precision(weights=pm.DType.Q4_K_M), Parallel())
    assert q4 == pytest.approx((6_738_415_616 - norms) * 4.89 / 8 + norms * 2)  # llama.cpp Q4_K_M: 4.89 bpw
    assert weight_bytes(llama2, Precision(), Parallel(tp=2, pp=2)) < bf16 / 3.5


def test_does_not_fit_is_an_error_with_advice():
    with pytest.raises(pm.CapacityError) as e:
        pm.estimate("mixtral-8x7b", "a100-80gb-sxm", batch=1, prompt_len=512, gen_len=128)
    msg = str(e.value)
    assert "needs 93.6 GB" in msg and "has 80.0 GB" in msg  # 46.7e9 params x 2 bytes = 93.4 GB of weights
    assert "--tp 2" in msg and "--weights fp8" in msg and "--ignore-capacity" in msg


def test_largest_batch_is_suggested():
    with pytest.raises(pm.CapacityError, match=r"--batch (\d+) \(the largest batch that fits\)") as e:
        pm.estimate("llama-3-8b", "l4", batch=64, prompt_len=8000, gen_len=192)
    b = int(e.value.args[0].split("--batch ")[1].split()[0])
    assert pm.estimate("llama-3-8b", "l4", batch=b, prompt_len=8000, gen_len=192).memory["fits"]
    with pytest.raises(pm.CapacityError):
        pm.estimate("llama-3-8b", "l4", batch=b + 1, prompt_len=8000, gen_len=192)


def test_ignore_capacity_computes_anyway():
    est = pm.estimate("mixtral-8x7b", "a100-80gb-sxm", ignore_capacity=True)
    assert est.memory["fits"] is False and est.tpot_s > 0


def test_unknown_capacity_is_reported_not_guessed():
    est = pm.estimate("llama-2-7b", "epyc-9654", batch=1, prompt_len=128, gen_len=4)
    assert est.memory["capacity_bytes"] is None and est.memory["fits"] is None
