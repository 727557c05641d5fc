"""Multi-device layouts: collectives by algorithm (hand-computed), systems and nodes, expert parallelism."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel.collectives import Fabric, choose, engine_candidates, nccl_candidates, prune
from perfmodel.graph import Comm, ranks_per_token

HOPPER = Fabric("switch", 450e9, "nvlink", 8, True, "hopper", 8 * 50e9, "8 x 400 Gb/s", "NVSwitch")


def _by(cands, algo, proto):
    return next(c for c in cands if c.algorithm == algo and c.protocol == proto)


def test_nccl_ring_tree_and_nvls_costs_by_hand():
    c = nccl_candidates(Comm.ALL_REDUCE, 8, HOPPER, 0.8)
    # ring LL on 8 ranks: 6.6 + 14 steps x 0.6 = 15.0 us; bus min(141, 360 x 0.5) = 141 GB/s, x 8 / 14
    ring_ll = _by(c, "ring", "ll")
    assert ring_ll.fixed_s == pytest.approx(15.0e-6)
    assert ring_ll.per_byte_s == pytest.approx(14 / 8 / 141e9)
    # ring Simple: 8.4 + 14 x 3.4 = 56 us; 360 GB/s x 8 / 14
    assert _by(c, "ring", "simple").fixed_s == pytest.approx(56.0e-6)
    assert _by(c, "ring", "simple").per_byte_s == pytest.approx(14 / 8 / 360e9)
    # tree Simple within a node: 8.4 + 2 x 7 x 4.0 = 64.4 us; bus 360 x 0.92, algorithm x 0.5
    assert _by(c, "tree", "simple").fixed_s == pytest.approx(64.4e-6)
    assert _by(c, "tree", "simple").per_byte_s == pytest.approx(1 / (360e9 * 0.92 * 0.5))
    # NVLS: its hardware latency, 25 us; bus 2 x 0.85 x 360 = 612 GB/s, x 8 / 14
    nvls = _by(c, "nvls", "simple")
    assert nvls.fixed_s == pytest.approx(25e-6)
    assert nvls.per_byte_s == pytest.approx(14 / 8 / 612e9)
    # the tree's size correction: a 64 KiB Simple all-reduce is log2(65536 / 64) = 10 -> factor 0.6
    tree = _by(c, "tree", "simple")
    assert tree.time_s(65536) == pytest.approx(64.4e-6 + 65536 * tree.per_byte_s / 0.6)


def test_two_nodes_cross_the_network():
    c = nccl_candidates(Comm.ALL_REDUCE, 16, HOPPER, 0.8)
    # 2 nodes of 8: ring Simple steps 30, 2 of them across nodes at NCCL's NET ring Simple 14 us, the other 28 at
    # max(3.4, 3 x 1 us net overhead) = 3.4 us: 8.4 + 28 x 3.4 + 2 x 14 = 131.6 us; bus min(360, 400 x 0.8 = 320)
    ring = _by(c, "ring", "simple")
    assert ring.fixed_s == pytest.approx(131.6e-6)
    assert ring.per_byte_s == pytest.approx(30 / 16 / 320e9)
    # tree Simple: 8.4 + 2 x (7 x 4.0 + log2(2) x 14) = 92.4 us
    assert _by(c, "tree", "simple").fixed_s == pytest.approx(92.4e-6)
    # NVLS alone needs CollNet across nodes; NVLS tree: 25 + 2 x 1 x 20.9 = 66.8 us
    assert not any(x.algorithm == "nvls" for x in c)
    assert _by(c, "nvls_tree", "simple").fixed_s == pytest.approx(66.8e-6)
    assert all(x.link == "net" for x in c)


def test_engine_kernels_by_hand():
    c = {x.algorithm: x for x in engine_candidates(Comm.ALL_REDUCE, 4, HOPPER, 0.8)}
    assert c["one_shot"].time_s(1e6) == pytest.approx(5e-6 + 3 * 1e6 / 360e9)  # reads 3 peers' buffers
    assert c["two_shot"].time_s(1e6) == pytest.approx(10e-6 + 1.5 * 1e6 / 360e9)
    assert c["multimem"].time_s(1e6) == pytest.approx(10e-6 + 1.5 * 1e6 / (360e9 * 0.85))
    # none across nodes, none over PCIe
    assert engine_candidates(Comm.ALL_REDUCE, 16, HOPPER, 0.8) == []
    pcie = Fabric("pcie", 32e9, "pci", 8)
    assert engine_candidates(Comm.ALL_REDUCE, 4, pcie, 0.8) == []
    # a mesh gives a group of 4 out of 8 only the links to its 3 peers: 3 / 7 of the device's bandwidth
    mesh = Fabric("mesh", 448e9, "nvlink", 8)
    assert mesh.intra_for(4) == pytest.approx(448e9 * 3 / 7)


@given(st.sampled_from([Comm.ALL_REDUCE, Comm.ALL_GATHER]), st.sampled_from([2, 4, 8, 16, 32]),
       st.floats(1, 2**32))
@settings(max_examples=60, deadline=None)
def test_the_choice_is_the_cheapest_and_pruning_keeps_it(comm, n, nbytes):
    cands = nccl_candidates(comm, n, HOPPER, 0.8) + engine_candidates(comm, n, HOPPER, 0.8)
    best, t = choose(cands, nbytes)
    assert t == pytest.approx(min(c.time_s(nbytes) for c in cands))
    assert choose(prune(cands), nbytes)[1] == pytest.approx(t)
    assert t > 0 and math.isfinite(t)


def test_expert_parallel_dispatch_volume():
    # DeepSeek-V3: 256 experts, 8 a token, over 8 ranks (32 each): a token misses a rank with probability
    # C(224, 8) / C(256, 8), so it goes to 8 x (1 - that) ranks
    miss = math.comb(224, 8) / math.comb(256, 8)
    assert ranks_per_token(256, 8, 8) == pytest.approx(8 * (1 - miss))
    assert 5.2 < ranks_per_token(256, 8, 8) < 5.3
    est = pm.estimate("deepseek-v3", "h200", batch=64, prompt_len=1024, gen_len=16, tp=8, ep=8, dp_attention=True,
                      weights="fp8")
    ops = est.ops.set_index(["phase", "name"])
    d = ops.loc[("prefill", "layers.moe.moe.dispatch")]
    # each rank attends 64 / 8 = 8 sequences of 1,024 tokens and sends each token's 7,168 bf16 activations to
    # ranks_per_token ranks, in each of the 58 MoE layers
    assert d.comm_bytes == pytest.approx(58 * 8 * 1024 * ranks_per_token(256, 8, 8) * 7168 * 2)
    assert "all-to-all over 8" in d.algorithm
    # memory: attention whole on every rank, routed experts split 8 ways; with TP attention both are split
    tp = pm.estimate("deepseek-v3", "h200", batch=64, prompt_len=1024, gen_len=16, tp=8, weights="fp8")
    assert est.memory["weights_bytes"] > tp.memory["weights_bytes"]
    assert est.memory["kv_cache_bytes"] < tp.memory["kv_cache_bytes"]  # 8 sequences a rank, not 64


def test_expert_parallelism_needs_an_moe_model_and_a_divisor():
    with pytest.raises(pm.PerfmodelError, match="needs an MoE model"):
        pm.estimate("llama-3-8b", "h100-sxm", tp=2, ep=2)
    with pytest.raises(pm.PerfmodelError, match="ep must divide"):
        pm.estimate("mixtral-8x7b", "h100-sxm", tp=1, ep=3)


def test_imbalance_slows_the_moe_layer():
    kw = dict(batch=64, prompt_len=512, gen_len=16, tp=8, ep=8, weights="fp8")
    even = pm.estimate("qwen3-235b-a22b", "h100-sxm", **kw)
    skew = pm.estimate("qwen3-235b-a22b", "h100-sxm", expert_imbalance=1.5, **kw)
    assert skew.ttft_s > even.ttft_s


def test_a_system_id_gives_its_device_fabric_and_network():
    est = pm.estimate("llama-3.1-405b", "dgx-h100", nodes=2, tp=8, pp=2, batch=1, prompt_len=1024, gen_len=32)
    c = est.communication().set_index(["phase", "name"])
    # the stages sit on the two nodes: their send crosses the InfiniBand NICs; the TP all-reduces stay on NVLink
    assert "ConnectX-7" in c.loc[("decode", "pp.send"), "link"]
    assert "NVSwitch" in c.loc[("decode", "layers.attn.all_reduce"), "link"]
    with pytest.raises(pm.PerfmodelError, match="needs 16 devices"):
        pm.estimate("llama-3.1-405b", "dgx-h100", nodes=1, tp=8, pp=2)
    # a PCIe server: no peer-to-peer kernels, NCCL over PCIe
    l40s = pm.estimate("llama-3-8b", "l40s-8x-pcie", tp=8, batch=1, prompt_len=512, gen_len=16)
    algo = l40s.communication().set_index(["phase", "name"]).loc[("decode", "layers.attn.all_reduce"), "algorithm"]
    assert "ring" in algo or "tree" in algo


def test_unknown_system_suggests_one():
    with pytest.raises(pm.PerfmodelError, match="dgx-h100"):
        pm.estimate("llama-3-8b", "dgx-h10")


def test_pipeline_bubble_and_micro_batches():
    kw = dict(prompt_len=512, gen_len=32, tp=2, pp=4)
    single = pm.estimate("llama-3-70b", "h100-sxm", batch=1, **kw)  # M = 1: one walk through the 4 stages
    two = pm.estimate("llama-3-70b", "h100-sxm", batch=2, **kw)  # M = 2 micro-batches of 1
    four = pm.estimate("llama-3-70b", "h100-sxm", batch=4, **kw)  # M = 4 micro-batches of 1
    # a prompt batch of M micro-batches over pp stages takes (M + pp - 1) stage times: (2 + 3) / 4 = 1.25 and
    # (4 + 3) / 4 = 1.75 walks of one micro-batch (the default engine has no host time per pass)
    assert two.ttft_s == pytest.approx(1.25 * single.ttft_s, rel=1e-9)
    assert four.ttft_s == pytest.approx(1.75 * single.ttft_s, rel=1e-9)
    # decode: with M <= pp micro-batches in flight a round, one token for every sequence, takes one walk
    assert four.tpot_s == pytest.approx(single.tpot_s, rel=1e-9)
    assert four.throughput_tokens_per_s > 3 * single.throughput_tokens_per_s
    # the work is every micro-batch's: 4 sequences' FLOPs, as without pipelining
    flat = pm.estimate("llama-3-70b", "h100-sxm", batch=4, prompt_len=512, gen_len=32, tp=2)
    assert four.ops.flops.sum() == pytest.approx(flat.ops.flops.sum(), rel=1e-9)


def test_plan_returns_a_fitting_layout_on_the_front():
    from perfmodel.plan import plan

    res = plan("llama-3-70b", "dgx-h100", prompt_len=1024, gen_len=128, slo_tpot_s=0.03)
    best, front = res["best"], res["front"]
    assert best is not None and best["tpot_s"] <= 0.03
    assert best["memory_per_device_bytes"] <= 80e9 and best["devices_used"] <= 8
    # the best under the target is on the front: no point has a shorter TPOT and more throughput per device
    assert not any(p["tpot_s"] < best["tpot_s"] and p["throughput_per_device_tokens_per_s"]
                   > best["throughput_per_device_tokens_per_s"] for p in front)
    # the front is ordered by TPOT with throughput rising
    thr = [p["throughput_per_device_tokens_per_s"] for p in front]
    assert thr == sorted(thr) and len(front) >= 3
    # the layout it picks costs what estimate says it costs
    est = pm.estimate("llama-3-70b", "h100-sxm", batch=best["batch"], prompt_len=1024, gen_len=128, tp=best["tp"],
                      pp=best["pp"])
    assert est.tpot_s == pytest.approx(best["tpot_s"], rel=1e-6)
    # an unmeetable target gives no layout, with the front still there
    none = plan("llama-3-70b", "dgx-h100", prompt_len=1024, gen_len=128, slo_tpot_s=1e-4)
    assert none["best"] is None and none["front"]


def test_context_parallel_splits_the_prompt_and_the_cache():
    kw = dict(batch=1, prompt_len=32768, gen_len=8)
    one = pm.estimate("llama-3-8b", "h100-sxm", **kw)
    four = pm.estimate("llama-3-8b", "h100-sxm", cp=4, **kw)
    # each rank keeps a quarter of the KV cache: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B x 32,776 tokens / 4
    assert four.memory["kv_cache_bytes"] == pytest.approx(32 * 8 * 128 * 2 * 2 * 32776 / 4)
    # and does a quarter of the prompt's work (each rank's queries against every key, pairs balanced), but the LM
    # head of the last position whole (2 x 4,096 x 128,256 FLOPs on the rank that holds it)
    pre = lambda e: e.ops[e.ops.phase == "prefill"].flops.sum()  # noqa: E731
    head = 2 * 4096 * 128256
    assert pre(four) == pytest.approx((pre(one) - head) / 4 + head, rel=1e-9)
    assert four.ttft_s < one.ttft_s / 2
    # the ring passes each rank's K/V block 3 times a layer: 3 x 8,192 tokens x 2,048 elements x 2 B x 32 layers
    ring = four.ops.set_index(["phase", "name"]).loc[("prefill", "layers.attn.cp_ring")]
    assert ring.comm_bytes == pytest.approx(32 * 3 * 8192 * 2048 * 2)
    assert "ring-attention" in ring.algorithm
    # decode gathers the ranks' partial outputs, and reads a quarter of the cache a step
    assert ("decode", "layers.attn.cp_gather") in four.ops.set_index(["phase", "name"]).index
    with pytest.raises(pm.PerfmodelError, match="decoder-only"):
        pm.estimate("t5-base", "h100-sxm", cp=2)


def test_llama3_70b_tpot_falls_from_tp1_to_tp8_on_an_hgx_h100():
    # FP8 weights (70.6 GB) fit one H100; at batch 1 each step reads 1 / tp of them and pays two small all-reduces a
    # layer at the engine's one-shot cost (~5 us), so TP 8 is the fastest (the TP 8 > TP 4 inversion is gone)
    tpot = [pm.estimate("llama-3-70b", "dgx-h100", batch=1, prompt_len=1024, gen_len=128, tp=tp, weights="fp8").tpot_s
            for tp in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(tpot, tpot[1:])), tpot
