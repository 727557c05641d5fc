import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel.cost import IDEAL, op_cost, sum_max_linear
from perfmodel.graph import Parallel, Pass, lower



GRID = st.integers(-64, 64).map(lambda k: k / 16)  # exact in binary, so the brute force has no rounding ties


@given(st.integers(-50, 50), st.integers(0, 60), GRID, GRID, GRID, GRID)
def test_sum_max_linear_equals_brute_force(a, n, u0, u1, v0, v1):
    b = a + n - 1
    cs = np.arange(a, b + 1)
    u, v = u0 + u1 * cs, v0 + v1 * cs
    total, comp = sum_max_linear(a, b, u0, u1, v0, v1)
    assert float(total) == pytest.approx(np.maximum(u, v).sum(), abs=1e-6)
    assert float(comp) == pytest.approx(u[u >= v].sum(), abs=1e-6)


def test_llama2_decode_on_a100_is_bandwidth_bound(llama2, a100):
    est = pm.estimate(llama2, a100, batch=1, prompt_len=512, gen_len=2, efficiency=IDEAL)
    # 6.74e9 params x 2 bytes = 13.48 GB per token / 2.039 TB/s = 6.61 ms (weights alone, efficiency 1)
    bound = 6_738_415_616 * 2 / 2.039e12
    assert bound == pytest.approx(6.61e-3, rel=0.002)
    # plus the KV cache (513 tokens x 0.5 MB) and activations: a little above the weights-only bound
    assert bound * 0.98 < est.tpot_s < bound * 1.05
    assert est.phase("decode")["bound"] == "memory"


def test_default_efficiency_slows_by_its_fraction(llama2, a100):
    ideal = pm.estimate(llama2, a100, batch=1, prompt_len=512, gen_len=2, efficiency=IDEAL).tpot_s
    real = pm.estimate(llama2, a100, batch=1, prompt_len=512, gen_len=2).tpot_s
    assert real == pytest.approx(ideal / 0.8, rel=0.01)  # memory-bound: 80 % of peak bandwidth


def test_decode_sum_equals_step_by_step():
    """The closed-form sum over the growing KV cache equals costing every decode step one by one."""
    m, d = pm.load_model("mistral-7b"), pm.load_device("a100-80gb-sxm")  # sliding window 4096
    p, g, b = 4000, 200, 4
    est = pm.estimate(m, d, batch=b, prompt_len=p, gen_len=g)
    mach = est.ev.mach
    res_bw = mach.bandwidth_for(est.ev.memory.total_bytes)
    total = 0.0
    for c in range(p + 1, p + g):  # steps 1..g-1 attend over c positions
        for op in lower(m, Pass("decoder", float(b), 1.0, float(c), logits=1.0), est.workload.precision,
                        Parallel()):
            total += np.sum(op_cost(op, mach, res_bw, mach.bandwidth_for(op.act_bytes))["time_s"])
    assert est.ev.decode.total("time_s")[0] == pytest.approx(total, rel=1e-9)
    assert est.tpot_s == pytest.approx(total / (g - 1), rel=1e-9)


def _scaled(device, bw=1.0, flops=1.0):
    data = device.model_dump()
    for lv in data["memory"]:
        if lv.get("bandwidth_gb_per_s"):
            lv["bandwidth_gb_per_s"] *= bw
        if lv.get("transfer_rate_mt_per_s"):
            lv["transfer_rate_mt_per_s"] *= bw
    for unit in ("matrix", "vector"):
        c = data["compute"][unit]
        c["dense_tflops"] = {k: v * flops for k, v in c["dense_tflops"].items()}
        c["flops_per_cycle_per_unit"] = {k: v * flops for k, v in c["flops_per_cycle_per_unit"].items()}
    return pm.Device(**data)


def _fits_context(m, tokens):
    return m.max_seq_len is None or tokens <= m.max_seq_len


WORKLOADS = st.tuples(st.integers(1, 64), st.integers(1, 4096), st.integers(1, 512))
SETUPS = st.sampled_from([("llama-2-7b", "a100-80gb-sxm"), ("mixtral-8x7b", "h200"), ("mistral-7b", "l40s"),
                          ("gpt2", "xeon-8480plus"), ("deepseek-v3", "mi300x"), ("t5-base", "epyc-9654")])


@given(SETUPS, WORKLOADS, st.floats(1.0, 8.0), st.floats(1.0, 8.0))
@settings(max_examples=40, deadline=None)
def test_more_bandwidth_or_compute_never_slower(setup, wl, bw, fl):
    m, d = pm.load_model(setup[0]), pm.load_device(setup[1])
    assume(_fits_context(m, wl[1] + wl[2]))
    kw = dict(batch=wl[0], prompt_len=wl[1], gen_len=wl[2], ignore_capacity=True)
    base = pm.estimate(m, d, **kw)
    faster = pm.estimate(m, _scaled(d, bw, fl), **kw)
    assert faster.e2e_latency_s <= base.e2e_latency_s * (1 + 1e-12)
    assert faster.ttft_s <= base.ttft_s * (1 + 1e-12)


@given(SETUPS, WORKLOADS, st.integers(1, 2048), st.sampled_from(["flash", "unfused"]))
@settings(max_examples=40, deadline=None)
def test_longer_context_never_faster(setup, wl, extra, attention):
    m, d = pm.load_model(setup[0]), pm.load_device(setup[1])
    b, p, g = wl
    assume(_fits_context(m, p + extra + g + extra))
    kw = dict(batch=b, gen_len=g, ignore_capacity=True, attention=attention)
    short = pm.estimate(m, d, prompt_len=p, **kw)
    long = pm.estimate(m, d, prompt_len=p + extra, **kw)
    assert long.ttft_s >= short.ttft_s
    assert long.e2e_latency_s >= short.e2e_latency_s
    if g > 1:
        assert long.tpot_s >= short.tpot_s * (1 - 1e-12)
    more = pm.estimate(m, d, prompt_len=p, batch=b, gen_len=g + extra, ignore_capacity=True, attention=attention)
    assert more.e2e_latency_s >= short.e2e_latency_s


@given(SETUPS, WORKLOADS)
@settings(max_examples=30, deadline=None)
def test_time_at_least_each_roofline_bound(setup, wl):
    m, d = pm.load_model(setup[0]), pm.load_device(setup[1])
    assume(_fits_context(m, wl[1] + wl[2]))
    est = pm.estimate(m, d, batch=wl[0], prompt_len=wl[1], gen_len=wl[2], ignore_capacity=True)
    ops = est.ops
    assert (ops.time_s >= ops.compute_s * (1 - 1e-12)).all()
    assert (ops.time_s >= ops.memory_s * (1 - 1e-12)).all()
    # whole run: at least all FLOPs at the attainable matrix peak, and all main-memory bytes at peak bandwidth
    peak = est.ev.mach.peak(pm.OpKind.MATMUL, est.workload.act)[0]
    fastest_bw = max(bw for _, bw, _ in est.ev.mach.levels)
    assert est.e2e_latency_s >= ops.flops.sum() / peak * (1 - 1e-9)
    assert est.e2e_latency_s >= (ops.weight_bytes + ops.kv_read_bytes).sum() / fastest_bw * (1 - 1e-9)
    assert 0 <= est.mfu <= 1 and 0 <= est.mbu <= 1


def test_small_model_served_from_cache():
    """Hierarchical roofline: a model whose working set fits a cache level is charged at that level."""
    d = pm.load_device("mi300x")  # 256 MiB Infinity Cache at 17.2 TB/s, HBM3 at 5.325 TB/s
    small = pm.ModelSpec(id="tiny", n_layers=4, d_model=1024, n_heads=8, d_ff=4096, vocab_size=1000)
    est = pm.estimate(small, d, batch=1, prompt_len=16, gen_len=8, efficiency=IDEAL)
    # 4 layers x 12.6M + 1.0M embedding + 1.0M head = 52.4M params x 2 bytes = 105 MB: above the 32 MiB L2,
    # inside the 256 MiB Infinity Cache
    assert small.params_total() == 4 * (4 * 1024**2 + 3 * 1024 * 4096 + 2 * 1024) + 2 * 1000 * 1024 + 1024
    assert est.ev.mach.level_name_for(float(est.ev.memory.total_bytes[0])) == "Infinity Cache"
    step_bytes = est.ops[est.ops.phase == "decode"].weight_bytes.sum() / 7  # 7 decode steps
    at_cache = step_bytes / 17.2e12
    assert est.tpot_s == pytest.approx(at_cache, rel=0.05)  # charged at 17.2 TB/s, not HBM's 5.3 TB/s


def _cpu(memory_measured: bool):
    from perfmodel.device import Device

    # 4 cores x 2 GHz, AVX-512 with 2 FMA pipes: fp32 4 x 2e9 x 64 = 512 GFLOP/s; a bf16 dot (VDPBF16PS) at 2x
    return Device(id="c", name="c", kind="cpu", vendor="v",
                  processor={"units": 4, "base_clock_ghz": 2.0, "simd_width_bits": 512, "fma_units_per_core": 2},
                  compute={"vector": {"flops_per_cycle_per_unit": {"fp32": 64, "bf16": 128}}},
                  memory=[{"name": "DRAM", "bandwidth_gb_per_s": 20, "measured": memory_measured}])


def test_a_measured_main_memory_is_not_discounted_again():
    from perfmodel.cost import Machine

    eff = pm.Efficiency(memory=0.5)
    # a datasheet 20 GB/s at a memory fraction of 0.5: 10 GB/s; the same figure measured here: 20 GB/s as it is
    assert float(Machine(_cpu(False), eff, Parallel()).bandwidth_for(1e12)) == pytest.approx(10e9)
    assert float(Machine(_cpu(True), eff, Parallel()).bandwidth_for(1e12)) == pytest.approx(20e9)


def test_cpu_fp16_and_int8_work_runs_at_fp32_not_at_the_bf16_dot_rate():
    from perfmodel.cost import Machine
    from perfmodel.graph import OpKind

    mach = Machine(_cpu(False), pm.Efficiency(vector=0.5), Parallel())
    # bf16 has its instruction: 4 x 2e9 x 128 x 0.5 = 512 GFLOP/s; fp16 and int8 have none: fp32's 512 x 0.5 = 256
    assert mach.peak(OpKind.MATMUL, pm.DType.BF16)[:2] == (pytest.approx(512e9), "vector")
    assert mach.peak(OpKind.MATMUL, pm.DType.FP16)[0] == pytest.approx(256e9)
    assert mach.peak(OpKind.MATMUL, pm.DType.INT8)[0] == pytest.approx(256e9)
