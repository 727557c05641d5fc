import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel.graph import (OpKind, Parallel, Pass, Precision, causal_pairs, expected_experts, lower,
                             tiled_causal_pairs, totals)
from perfmodel.model import ModelSpec

BF16 = Precision()


def test_llama2_decode_reads_its_weights_once(llama2):
    ops = lower(llama2, Pass("decoder", 1.0, 1.0, 512.0, logits=1.0), BF16, Parallel())
    w = totals(ops)["weight_bytes"]
    # every matrix once: (6,738,415,616 - 131,072,000 embedding table - 32*2*4096 - 4096 norms) params x 2 bytes
    # = 6,607,077,376 x 2 = 13,214,154,752 bytes; plus one embedding row (4096 x 2) and the norm weights (65 x 4096 x 2)
    assert w == 13_214_154_752 + 8_192 + 65 * 8_192
    assert w == pytest.approx(13.5e9, rel=0.03)  # "~13.5 GB per token"


def test_causal_pairs():
    assert causal_pairs(512.0, 512.0) == 512 * 513 / 2  # prefill: token j sees j positions
    assert causal_pairs(1.0, 700.0) == 700  # decode: the new token sees the whole context
    assert causal_pairs(1.0, 700.0, window=256) == 256
    # prefill of 10 with window 4: 1+2+3+4+4*6 = 34
    assert causal_pairs(10.0, 10.0, window=4) == 34


def test_expected_experts():
    assert expected_experts(1, 8, 2) == pytest.approx(2)  # one token touches exactly k
    assert expected_experts(10_000, 8, 2) == pytest.approx(8)  # a big batch touches all
    # 4 tokens, top-2 of 8: 8 * (1 - (6/8)^4) = 5.46875
    assert expected_experts(4, 8, 2) == pytest.approx(5.46875)


def test_lm_head_only_last_position_when_generating(llama2):
    gen = lower(llama2, Pass("decoder", 1.0, 100.0, 100.0, logits=1.0), BF16, Parallel())
    score = lower(llama2, Pass("decoder", 1.0, 100.0, 100.0, logits=100.0), BF16, Parallel())
    head = {o.name: o for o in gen}["lm_head"]
    assert head.flops == 2 * 1 * 4096 * 32000
    assert {o.name: o for o in score}["lm_head"].flops == 100 * head.flops


def _attn_flops(model, q, kv):
    ops = lower(model, Pass("decoder", 1.0, q, kv, logits=1.0), BF16, Parallel())
    return sum(o.flops * o.count for o in ops if o.kind == OpKind.ATTENTION)


def test_tiled_causal_pairs():
    # 512 queries over 512 keys: 512 x 513 / 2 causal pairs + 512 x 127 / 2 past the diagonal (128-key tiles)
    assert tiled_causal_pairs(512.0, 512.0) == 512 * 513 / 2 + 512 * 127 / 2
    assert tiled_causal_pairs(8.0, 8.0) == 64  # one tile holds every key: the whole 8 x 8 block, masked
    assert tiled_causal_pairs(1.0, 700.0) == 700  # decode: no diagonal
    assert tiled_causal_pairs(512.0, 512.0, tile=1.0) == 512 * 513 / 2  # 1-key tiles: exactly the causal pairs


@given(p=st.integers(8, 8192))
def test_prefill_attention_quadratic_decode_linear(llama2, p):
    # prefill: 2 * pairs * heads * (qk + v) per layer with pairs = p (p + 1) / 2 causal ones + p x 127 / 2 computed
    # and masked in each query's last 128-key tile, at most p^2
    pairs = lambda n: min(n * (n + 1) / 2 + n * 127 / 2, n * n)  # noqa: E731
    assert _attn_flops(llama2, p, p) == pytest.approx(32 * 2 * pairs(p) * 32 * 256)
    ratio = _attn_flops(llama2, 2 * p, 2 * p) / _attn_flops(llama2, p, p)
    assert ratio == pytest.approx(pairs(2 * p) / pairs(p))  # -> 4 as p grows
    assert _attn_flops(llama2, 1, 2 * p) == pytest.approx(2 * _attn_flops(llama2, 1, p))  # decode: linear


@given(st.sampled_from(["llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b"]), st.integers(16, 4096))
@settings(max_examples=30)
def test_dense_flops_are_two_flops_per_param_per_token_plus_attention(name, p):
    m = pm.load_model(name)
    ops = lower(m, Pass("decoder", 1.0, p, p, logits=float(p)), BF16, Parallel())
    flops = totals(ops)["flops"]
    attn = sum(o.flops * o.count for o in ops if o.kind == OpKind.ATTENTION)
    matmul_params = m.params_total() - m.vocab_size * m.d_model * (1 if m.tie_embeddings else 1)
    # every matrix except the input embedding table runs once per token (the LM head included when scoring)
    expected = 2 * matmul_params * p + attn
    assert flops == pytest.approx(expected, rel=0.01)


def _mha(kv):
    return ModelSpec(id="t", n_layers=4, d_model=512, n_heads=8, n_kv_heads=kv, d_ff=1024, vocab_size=1000)


@given(st.integers(1, 8), st.integers(1, 2048), st.integers(1, 2048))
@settings(max_examples=40)
def test_gqa_with_all_kv_heads_equals_mha(batch, q, ctx):
    kv = max(q, ctx)
    a = lower(_mha(None), Pass("decoder", float(batch), float(q), float(kv), logits=1.0), BF16, Parallel())
    b = lower(_mha(8), Pass("decoder", float(batch), float(q), float(kv), logits=1.0), BF16, Parallel())
    assert a == b


def test_moe_decode_touches_distinct_experts():
    m = pm.load_model("mixtral-8x7b")
    up = lambda b: {o.name: o for o in lower(m, Pass("decoder", b, 1.0, 100.0, logits=1.0), BF16, Parallel())}[
        "layers.moe.experts.up"]
    one_expert = 4096 * 2 * 14336 * 2  # gate+up of one expert, bf16
    assert up(1.0).weight_bytes == pytest.approx(2 * one_expert)  # batch 1: exactly k = 2 experts
    assert up(4.0).weight_bytes == pytest.approx(5.46875 * one_expert)  # 8 (1 - (6/8)^4) distinct experts
    assert up(512.0).weight_bytes == pytest.approx(8 * one_expert)  # all of them
    assert up(4.0).flops == pytest.approx(4 * 2 * 2 * 4096 * 2 * 14336)  # FLOPs follow tokens x k, not experts


def test_tensor_parallel_splits_weights_and_adds_two_all_reduces(llama2):
    one = lower(llama2, Pass("decoder", 1.0, 1.0, 64.0, logits=1.0), BF16, Parallel(1))
    two = lower(llama2, Pass("decoder", 1.0, 1.0, 64.0, logits=1.0), BF16, Parallel(2))
    w1 = sum(o.weight_bytes * o.count for o in one if o.kind == OpKind.MATMUL)
    w2 = sum(o.weight_bytes * o.count for o in two if o.kind == OpKind.MATMUL)
    assert w2 == pytest.approx(w1 / 2)
    comms = [o for o in two if o.kind == OpKind.COMM]
    layer_reduces = sum(o.count for o in comms if o.name.startswith("layers") and o.comm.value == "all_reduce")
    assert layer_reduces == 2 * 32  # after attention and after the MLP, every layer


def test_unfused_attention_materialises_scores(llama2):
    ops = lower(llama2, Pass("decoder", 1.0, 1024.0, 1024.0, logits=1.0), BF16, Parallel(), fused=False)
    scores = {o.name: o for o in ops}["layers.attn.scores"]
    assert scores.act_out_bytes == 32 * 1024 * 1024 * 2  # (B, H, q, kv) bf16 per layer
    names = {o.name for o in ops}
    assert {"layers.attn.softmax", "layers.attn.context"} <= names and "layers.attn.attention" not in names


def test_sliding_window_caps_kv_reads():
    m = pm.load_model("mistral-7b")
    kv_read = lambda c: sum(o.kv_read_bytes * o.count for o in
                            lower(m, Pass("decoder", 1.0, 1.0, c, logits=1.0), BF16, Parallel()))
    per_token = 32 * 2 * 8 * 128 * 2  # layers x (K,V) x kv heads x head dim x bf16
    assert kv_read(1000.0) == per_token * 1000
    assert kv_read(10_000.0) == per_token * 4096


def test_arrays_broadcast():
    m = pm.load_model("gpt2")
    batch = np.array([1.0, 2.0, 4.0])
    ops = lower(m, Pass("decoder", batch, 16.0, 16.0, logits=1.0), BF16, Parallel())
    f = totals(ops)["flops"]
    assert f.shape == (3,) and f[1] == pytest.approx(2 * f[0])


def test_moe_expert_products_have_the_rows_each_expert_sees():
    # Mixtral 8x7B, 2 of 8 experts per token. Decode at batch 1: each of the 2 experts touched sees 1 token (a GEMV).
    # Prefill of 512 tokens: 1,024 expert-token pairs over 8 x (1 - (6/8)^512) = 8 experts -> 128 rows each.
    m = pm.load_model("mixtral-8x7b")
    for q, rows in ((1.0, 1.0), (512.0, 128.0)):
        ops = lower(m, Pass("decoder", 1.0, q, q, logits=1.0), Precision(), Parallel(), True)
        experts = [o for o in ops if ".moe.experts." in o.name and o.kind == OpKind.MATMUL]
        assert experts and all(float(o.rows) == pytest.approx(rows) for o in experts)


def test_micro_batches_cap_the_rows_of_a_call_and_reread_the_weights():
    llama3 = pm.load_model("llama-3-8b")
    whole = {o.name: o for o in lower(llama3, Pass("decoder", 1.0, 2048.0, 2048.0, logits=1.0), Precision(),
                                      Parallel())}
    micro = {o.name: o for o in lower(llama3, Pass("decoder", 1.0, 2048.0, 2048.0, logits=1.0),
                                      Precision(ubatch=512.0), Parallel())}
    name = next(k for k in whole if k.endswith(".qkv"))
    # QKV of LLaMA 3 8B: 4096 x (32 + 2 x 8) x 128 = 4096 x 6144 bf16 weights, 2048 tokens in 4 micro-batches of 512
    assert (whole[name].rows, micro[name].rows) == (2048, 512)
    assert whole[name].weight_bytes == 4096 * 6144 * 2 and micro[name].weight_bytes == 4 * 4096 * 6144 * 2
    assert micro[name].flops == whole[name].flops  # the same products, in four calls
    gpt = pm.load_model("gpt-oss-20b")
    ops = {o.name: o for o in lower(gpt, Pass("decoder", 1.0, 2048.0, 2048.0, logits=1.0), Precision(ubatch=512.0),
                                    Parallel())}
    up = next(o for k, o in ops.items() if k.endswith(".moe.experts.up"))
    # 512 tokens x top-4 over the experts a micro-batch touches, 32 (1 - (1 - 4/32)^512) = 32: 64 rows per call
    touched = 32 * (1 - (1 - 4 / 32) ** 512)
    assert up.rows == pytest.approx(512 * 4 / touched)
    one = {o.name: o for o in lower(gpt, Pass("decoder", 1.0, 2048.0, 2048.0, logits=1.0), Precision(), Parallel())}
    assert up.weight_bytes == pytest.approx(4 * one[up.name].weight_bytes)  # every expert read in each micro-batch
    decode = {o.name: o for o in lower(llama3, Pass("decoder", 1.0, 1.0, 600.0, logits=1.0), Precision(ubatch=512.0),
                                       Parallel())}
    assert decode[name].rows == 1 and decode[name].weight_bytes == 4096 * 6144 * 2  # a decode step: one micro-batch

