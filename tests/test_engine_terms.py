"""The cost-model terms that engine profiles switch on: each one changes what it should, by the arithmetic in the
comment, and nothing else."""

import numpy as np
import pytest

import perfmodel as pm
from perfmodel.cost import Machine, op_cost
from perfmodel.dtypes import DType
from perfmodel.efficiency import Efficiency
from perfmodel.evaluate import Workload, evaluate
from perfmodel.graph import Op, OpKind, Parallel, Precision, Pass, lower

IDEAL = Efficiency(matrix=1, vector=1, memory=1, op_overhead_s=0.0)


def _main_bw(device: str, **eff) -> float:
    return float(Machine(pm.load_device(device), IDEAL.model_copy(update=eff), Parallel()).bandwidth_for(1e12))


def test_concurrency_ceiling_caps_main_memory_bandwidth():
    # A100 80GB SXM: 108 SMs x 6 GB/s = 648 GB/s, below its 2,039 GB/s; an RTX 4090's 128 x 8 GB/s = 1,024 GB/s stays
    # above its 1,008 GB/s, so the datasheet rate holds there. The ceiling is per second, not per cycle: a unit's
    # bytes in flight over a DRAM latency set in nanoseconds, so a faster core clock does not raise it
    a100 = pm.load_device("a100-80gb-sxm")
    assert _main_bw("a100-80gb-sxm", unit_bytes_per_s=6e9) == pytest.approx(108 * 6e9)
    assert _main_bw("a100-80gb-sxm") == pytest.approx(2039e9)
    assert _main_bw("rtx-4090", unit_bytes_per_s=8e9) == pytest.approx(1008e9)
    assert _main_bw("rtx-4090", unit_bytes_per_s=6e9) == pytest.approx(128 * 6e9)
    # the datasheet table (for MBU) never sees the ceiling
    m = Machine(a100, IDEAL.model_copy(update={"unit_bytes_per_s": 6e9}), Parallel())
    assert float(m.datasheet_bandwidth(1e12)) == pytest.approx(2039e9)


def test_half_accumulate_uses_the_fp16_accumulate_rate_only_where_it_differs():
    g = pm.load_device("rtx-4090")
    assert g.peak_flops_per_s("matrix", "fp16") == pytest.approx(165.2e12)
    assert g.peak_flops_per_s("matrix", "fp16", half_accumulate=True) == pytest.approx(330.3e12)
    assert g.peak_flops_per_s("matrix", "bf16", half_accumulate=True) == pytest.approx(165.2e12)  # no bf16 entry
    a = pm.load_device("a100-80gb-sxm")  # datacenter part: one rate
    assert a.peak_flops_per_s("matrix", "fp16", half_accumulate=True) == a.peak_flops_per_s("matrix", "fp16")
    half = Machine(g, IDEAL.model_copy(update={"half_accumulate": True}), Parallel())
    assert half.peak(OpKind.MATMUL, DType.FP16)[0] == pytest.approx(330.3e12)


def test_sync_mma_fraction_applies_only_on_devices_that_need_async_mma():
    eff = IDEAL.model_copy(update={"sync_mma_fraction": 0.5})
    h100, a100 = pm.load_device("h100-sxm"), pm.load_device("a100-80gb-sxm")
    assert h100.compute.async_mma and not a100.compute.async_mma
    assert Machine(h100, eff, Parallel()).peak(OpKind.MATMUL, DType.BF16)[0] == pytest.approx(0.5 * 989.4e12, rel=1e-3)
    assert Machine(a100, eff, Parallel()).peak(OpKind.MATMUL, DType.BF16)[0] == pytest.approx(312e12)
    # vector units are not matrix units
    assert Machine(h100, eff, Parallel()).peak(OpKind.ELEMENTWISE, DType.FP32)[0] == pytest.approx(
        h100.peak_flops_per_s("vector", "fp32"))


def test_sixteen_bit_products_run_at_the_blas_fraction_where_the_backend_has_one():
    from perfmodel.efficiency import with_backend
    from perfmodel.graph import DENSE16

    g = pm.load_device("rtx-4090")
    eff = IDEAL.model_copy(update={"matrix": 0.25, "blas_matrix": 0.55, "half_accumulate": True})
    m = Machine(g, eff, Parallel())
    # cuBLAS's share of the 4090's FP16-accumulate peak: 0.55 x 330.3 = 181.7 TFLOP/s; the engine's own kernels 0.25
    assert m.peak(OpKind.MATMUL, DType.FP16, variant=DENSE16)[0] == pytest.approx(0.55 * 330.3e12)
    assert m.peak(OpKind.MATMUL, DType.FP16)[0] == pytest.approx(0.25 * 330.3e12)
    assert m.peak(OpKind.ATTENTION, DType.FP16, variant=DENSE16)[0] == pytest.approx(0.25 * 330.3e12)  # fused: own
    assert with_backend(eff, g, "cuda").blas_matrix == 0.55 and with_backend(eff, g, None).blas_matrix == 0.55
    assert with_backend(eff, g, "vulkan").blas_matrix is None  # the backend's own shaders
    assert with_backend(eff, pm.load_device("m2-max-38c"), None).blas_matrix is None  # Metal
    # which products are 16-bit: FP16 weights and FP16 copies of quantised ones, not fused quantised GEMMs or MMQ
    spec = pm.load_model("llama-3-8b")

    def qkv(**prec):
        ops = lower(spec, Pass("decoder", 1.0, 512.0, 512.0, logits=1.0), Precision(**prec), Parallel(), True)
        return next(o for o in ops if o.name.endswith(".qkv")).variant

    assert qkv(weights=DType.FP16, act=DType.FP16) == DENSE16
    assert qkv(weights=DType.parse("q4_0"), act=DType.FP16, dequant="fp16_copy") == DENSE16
    assert qkv(weights=DType.parse("q4_0"), act=DType.FP16) == ""
    assert qkv(weights=DType.parse("q4_0"), act=DType.FP16, gemm=DType.INT8) == ""


def test_attention_rate_grows_with_the_keys_each_query_sees():
    # A100 (no special-function figure): 1e12 FLOPs at 312 TFLOPS = 3.205 ms; with half-rate at 128 keys,
    # 128 keys per query run at 1/2 the rate (6.41 ms) and 1152 keys at 1152/1280 = 0.9 of it (3.561 ms)
    mach = Machine(pm.load_device("a100-80gb-sxm"), IDEAL.model_copy(update={"attention_keys_half": 128.0}),
                   Parallel())

    def t(keys: float) -> float:
        op = Op("a", OpKind.ATTENTION, DType.FP16, flops=1e12, act_in_bytes=1.0, rows=1024, keys=keys)
        return float(op_cost(op, mach, 1e12, 1e12)["compute_s"])

    assert t(128) == pytest.approx(2 * 1e12 / 312e12, rel=1e-6)
    assert t(1152) == pytest.approx(1e12 / (312e12 * 0.9), rel=1e-6)
    # the graph gives fused attention the keys it computes per query: causal prefill of 1024 tokens sees (1024 + 1) / 2
    # on average, and computes the rest of its last 128-key tile, 127 / 2 more: (1024 + 128) / 2
    m = pm.load_model("llama-3-8b")
    ops = lower(m, Pass("decoder", 1.0, 1024.0, 1024.0, logits=1.0), Precision(), Parallel(), True)
    att = next(o for o in ops if o.kind == OpKind.ATTENTION)
    assert float(att.keys) == pytest.approx(1152 / 2)


def test_host_overheads_add_per_pass_and_per_sequence():
    # step 2 ms per forward pass, 10 us per sequence per pass, at batch 8: TTFT + 2.08 ms, every TPOT + 2.08 ms
    m, d = pm.load_model("llama-3-8b"), pm.load_device("h100-sxm")
    wl = Workload(weights="bf16", kv="bf16", act="bf16")
    args = (np.array([8.0]), np.array([256.0]), np.array([32.0]))
    base = evaluate(m, d, wl, IDEAL, *args).metrics
    host = evaluate(m, d, wl, IDEAL.model_copy(update={"step_overhead_s": 2e-3, "token_overhead_s": 10e-6}),
                    *args).metrics
    assert host["ttft_s"][0] - base["ttft_s"][0] == pytest.approx(2.08e-3, rel=1e-9)
    assert host["tpot_s"][0] - base["tpot_s"][0] == pytest.approx(2.08e-3, rel=1e-9)


def test_int8_gemms_of_block_quantised_weights_pay_their_block_scales_on_vector_units():
    # one 512 x 4096 x 4096 product: 2 x 512 x 4096^2 = 1.718e10 int8 ops on the matrix units, and two FMAs per output
    # per 32-wide block = 4 x 512 x 4096 x 4096 / 32 = 1.074e9 FLOPs on the vector units (flops / 16)
    m = pm.load_model("llama-3-8b")
    p = Pass("decoder", 1.0, 512.0, 512.0, logits=1.0)
    mm = [o for o in lower(m, p, Precision(DType.Q4_0, DType.FP16, DType.FP16, DType.INT8), Parallel(), True)
          if o.kind == OpKind.MATMUL and o.weight_bytes > 0]
    assert all(o.dtype == DType.INT8 for o in mm)
    assert all(float(o.scale_flops) == pytest.approx(float(o.flops) / 16, rel=1e-6) for o in mm)
    plain = [o for o in lower(m, p, Precision(DType.BF16, DType.BF16, DType.BF16), Parallel(), True)
             if o.kind == OpKind.MATMUL]
    assert all(o.dtype == DType.BF16 and o.scale_flops == 0 for o in plain)
    # on a device the vector term shows: RTX 4090, 1.718e10 ops at 660.6 TOPS + 1.074e9 at 82.6 TFLOPS
    mach = Machine(pm.load_device("rtx-4090"), IDEAL, Parallel())
    op = Op("mm", OpKind.MATMUL, DType.INT8, flops=2 * 512 * 4096**2, scale_flops=4 * 512 * 4096**2 / 32, rows=512)
    assert float(op_cost(op, mach, 1e15, 1e15)["compute_s"]) == pytest.approx(
        2 * 512 * 4096**2 / 660.6e12 + 4 * 512 * 4096**2 / 32 / 82.6e12, rel=1e-6)


def test_int8_kernels_measured_per_unit_run_at_units_x_clock_whatever_the_matrix_fraction():
    # llama.cpp's MMQ on NVIDIA: 540 int8 ops per SM per clock. H100 SXM: 132 SMs x 1.98 GHz x 540 = 141.14e12 ops/s,
    # 7.1 % of its 1,978.9 TOPS, at any matrix fraction; RTX 4090: 128 x 2.52 GHz x 540 = 174.18e12 (26.4 % of 660.6)
    eff = Efficiency(matrix=0.2, unit_int8_ops_per_cycle={"nvidia": 540.0})
    h100, g = pm.load_device("h100-sxm"), pm.load_device("rtx-4090")
    assert Machine(h100, eff, Parallel()).peak(OpKind.MATMUL, DType.INT8)[0] == pytest.approx(141.14e12, rel=1e-4)
    assert Machine(g, eff, Parallel()).peak(OpKind.MATMUL, DType.INT8)[0] == pytest.approx(174.18e12, rel=1e-4)
    # never above the int8 peak: 4096 ops per SM per clock would be 128 x 2.52e9 x 4096 = 1,321 TOPS > 660.6
    fast = eff.model_copy(update={"unit_int8_ops_per_cycle": {"nvidia": 4096.0}})
    assert Machine(g, fast, Parallel()).peak(OpKind.MATMUL, DType.INT8)[0] == pytest.approx(660.6e12)
    # other precisions keep matrix x peak (0.2 x 165.2 TFLOPS FP16), and another vendor's int8 too (RX 7900 XTX:
    # 0.2 x 96 CUs x 2.5 GHz x 512 = 24.58 TOPS)
    assert Machine(g, eff, Parallel()).peak(OpKind.MATMUL, DType.FP16)[0] == pytest.approx(0.2 * 165.2e12)
    assert Machine(pm.load_device("rx-7900-xtx"), eff, Parallel()).peak(OpKind.MATMUL, DType.INT8)[0] == \
        pytest.approx(0.2 * 96 * 2.5e9 * 512)
    # the measured rate holds the kernel's block-scale work: no vector term is added (compare the test above)
    mach = Machine(g, IDEAL.model_copy(update={"unit_int8_ops_per_cycle": {"nvidia": 540.0}}), Parallel())
    op = Op("mm", OpKind.MATMUL, DType.INT8, flops=2 * 512 * 4096**2, scale_flops=4 * 512 * 4096**2 / 32, rows=512)
    assert float(op_cost(op, mach, 1e15, 1e15)["compute_s"]) == pytest.approx(2 * 512 * 4096**2 / 174.18e12, rel=1e-4)
    with pytest.raises(ValueError, match="unit_int8_ops_per_cycle.nvidia"):
        Efficiency(unit_int8_ops_per_cycle={"nvidia": -1.0})


def test_tiled_gemms_reach_half_their_rate_at_gemm_rows_half_and_gemvs_are_exempt():
    # RTX 4090, FP16 at the full 165.2 TFLOPS (matrix 1), gemm_rows_half 32: a 64-row product of 4096 x 4096 runs at
    # 165.2 x 64 / (64 + 32) = 110.13 TFLOPS, 2 x 64 x 4096^2 / 110.13e12 = 19.50 us; 8 rows run the GEMV kernel
    # (llama.cpp's MMVQ takes up to 8) at the full rate; attention products are not weight GEMMs
    mach = Machine(pm.load_device("rtx-4090"), IDEAL.model_copy(update={"gemm_rows_half": 32.0}), Parallel())

    def compute_s(rows, kind=OpKind.MATMUL):
        op = Op("mm", kind, DType.FP16, flops=2 * rows * 4096**2, rows=rows)
        return float(op_cost(op, mach, 1e15, 1e15)["compute_s"])

    assert compute_s(64) == pytest.approx(2 * 64 * 4096**2 / (165.2e12 * 64 / 96), rel=1e-6)
    assert compute_s(8) == pytest.approx(2 * 8 * 4096**2 / 165.2e12, rel=1e-6)
    assert compute_s(64, OpKind.ATTENTION) == pytest.approx(2 * 64 * 4096**2 / 165.2e12, rel=1e-6)


def test_a_prompt_pass_computes_the_last_positions_logits_unless_asked_for_all():
    # LLaMA 3 8B, 512-token prompt, nothing generated: the LM head (4,096 x 128,256) runs on 1 position by default
    # (llama-bench, vLLM, TensorRT-LLM) and on all 512 with logits "all": 511 x 2 x 4,096 x 128,256 = 5.3688e11 FLOPs
    # more, in the prefill only
    last = pm.estimate("llama-3-8b", "rtx-4090", prompt_len=512, gen_len=0, weights="fp16", engine="ideal")
    every = pm.estimate("llama-3-8b", "rtx-4090", prompt_len=512, gen_len=0, weights="fp16", logits="all",
                        engine="ideal")
    assert every.phase("prefill")["flops"] - last.phase("prefill")["flops"] == pytest.approx(511 * 2 * 4096 * 128256)
    head = last.ops[(last.ops.phase == "prefill") & (last.ops.name == "lm_head")]
    assert float(head.flops.iloc[0]) == pytest.approx(2 * 4096 * 128256)
    with pytest.raises(ValueError, match="logits must be 'last' or 'all'"):  # a ValidationError
        Workload(logits="some")


def test_ubatch_is_a_workload_field_its_flag_and_its_json_key(capsys):
    from perfmodel.cli import main

    # a 4,096-token prompt in micro-batches of 512 reads LLaMA 3 8B's layer weights 8 times, not once (the LM head
    # runs on the last position only, one row, in the last micro-batch): 7 x their bytes more, all in the prefill
    one = pm.estimate("llama-3-8b", "h100-sxm", prompt_len=4096, gen_len=0, engine="ideal")
    eight = pm.estimate("llama-3-8b", "h100-sxm", prompt_len=4096, gen_len=0, engine="ideal", ubatch=512)
    layers = 32 * 2 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)  # qkv, o, gate/up/down in bf16
    def weights(est):  # the op table's bytes are per op over all its layers (counts applied)
        return float(est.ops[est.ops.phase == "prefill"].weight_bytes.sum())

    assert weights(eight) - weights(one) == pytest.approx(7 * layers)
    assert Workload(ubatch="none").ubatch is None and Workload(ubatch="512").ubatch == 512
    with pytest.raises(ValueError, match="ubatch must be an integer from 1"):
        Workload(ubatch=0)
    assert main(["estimate", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--ubatch", "512", "--json"]) == 0
    import json
    assert json.loads(capsys.readouterr().out)["config"]["ubatch"] == 512


def test_gemm_format_defaults_to_act():
    # a bad --gemm is refused like a bad --act (tests/test_cli.py, test_bad_input_exits_2_with_a_message)
    assert Workload(gemm="int8").precision.gemm == DType.INT8 and Workload().precision.gemm is None


def test_fp16_copy_converts_weights_once_per_micro_batch_of_large_batches_only():
    # one 4096 x 4096 q4_0 product: 16.8 M weights. The conversion reads the blocks (4.5 bits = 0.5625 B each) and
    # writes 2 B each; 1,024 tokens are two micro-batches of 512, so twice. 32 tokens or fewer: no conversion.
    from perfmodel.graph import _Builder

    prec = Precision(DType.Q4_0, DType.FP16, DType.FP16, None, "fp16_copy")
    b = _Builder(pm.load_model("llama-3-8b"), prec, Parallel(), True)
    b.matmul("mm", np.array([1.0, 32.0, 1024.0]), 4096, 4096, 1)
    conv = next(o for o in b.ops if o.name == "mm.to_fp16")
    elems = 4096 * 4096
    assert np.allclose(conv.act_in_bytes, [0, 0, 2 * elems * 0.5625])
    assert np.allclose(conv.act_out_bytes, [0, 0, 2 * 2.0 * elems])
    # a conversion with nothing to do launches nothing: no per-op overhead where it is empty
    mach = Machine(pm.load_device("rtx-4090"), IDEAL.model_copy(update={"op_overhead_s": 5e-6}), Parallel())
    t = op_cost(conv, mach, 1e12, 1e12)
    assert np.allclose(t["overhead_s"], [0, 0, 5e-6])
    fused = _Builder(pm.load_model("llama-3-8b"), Precision(DType.Q4_0, DType.FP16, DType.FP16), Parallel(), True)
    fused.matmul("mm", 1024.0, 4096, 4096, 1)
    assert [o.name for o in fused.ops] == ["mm"]


def test_fp16_scratch_expands_int4_weights_on_every_call_of_more_than_one_row():
    # ONNX Runtime's MatMulNBits: one 5120 x 17920 int4 product (phi-3-medium's gate/up width) = 91.75 M weights.
    # One row: the fused GEMV, no copy. Sixteen rows (a batch-16 decode step) or 512: one expansion per call, reading
    # 0.5 B per weight and writing 2 B, and the GEMM then reads the 2-byte copy: 91,750,400 x 0.5 = 45.9 MB in,
    # 183.5 MB out. FP16 weights have nothing to expand.
    from perfmodel.graph import _Builder

    prec = Precision(DType.INT4, DType.FP16, DType.FP16, None, "fp16_scratch")
    b = _Builder(pm.load_model("phi-3-medium"), prec, Parallel(), True)
    b.matmul("mm", np.array([1.0, 16.0, 512.0]), 5120, 17920, 1)
    conv = next(o for o in b.ops if o.name == "mm.to_fp16")
    assert np.allclose(conv.act_in_bytes, [0, 45_875_200, 45_875_200])
    assert np.allclose(conv.act_out_bytes, [0, 183_500_800, 183_500_800])
    gemm = next(o for o in b.ops if o.name == "mm")
    assert np.allclose(gemm.act_in_bytes - np.array([1.0, 16.0, 512.0]) * 5120 * 2, [0, 183_500_800, 183_500_800])
    plain = _Builder(pm.load_model("phi-3-medium"), Precision(DType.FP16, DType.FP16, DType.FP16, None,
                                                              "fp16_scratch"), Parallel(), True)
    plain.matmul("mm", 16.0, 5120, 17920, 1)
    assert [o.name for o in plain.ops] == ["mm"]


def test_metal_unfused_attention_reads_a_kv_head_once_per_query_head():
    # Llama-3-8B decoding one token at 1,000 cached positions, FP16 cache: a layer's K and V are 1,000 x 2 x 8 KV
    # heads x 128 x 2 B = 4,096,000 B, K half of it. ggml-metal's broadcast products read a KV head once per query
    # head of its group (32 / 8 = 4), so the score product reads 2,048,000 x 4 = 8,192,000 B of K and the context
    # product as much V; flash attention, or another backend, reads each once.
    m = pm.load_model("llama-3-8b")
    p = Pass("decoder", batch=1, q_len=1, kv_len=1000)

    def kv(**kw):
        prec = Workload(weights="fp16", kv="fp16", act="fp16", **kw).precision
        return {o.name.split(".")[-1]: o.kv_read_bytes for o in lower(m, p, prec, Parallel(), fused=False)
                if ".attn." in o.name}

    assert Workload(attention="unfused", backend="metal").precision.kv_per_query_head
    assert not Workload(attention="flash", backend="metal").precision.kv_per_query_head
    assert not Workload(attention="unfused", backend="cuda").precision.kv_per_query_head
    metal, cuda = kv(attention="unfused", backend="metal"), kv(attention="unfused", backend="cuda")
    assert metal["scores"] == pytest.approx(8_192_000) and metal["context"] == pytest.approx(8_192_000)
    assert cuda["scores"] == pytest.approx(2_048_000) and cuda["context"] == pytest.approx(2_048_000)


def test_validation_rows_carry_the_attention_and_dequant_of_their_runs():
    import pandas as pd

    from perfmodel.validation import predict

    row = {"engine": "llamacpp", "hardware": "rtx-4090", "model": "llama-3-8b", "weights": "q4_k_m", "act": "fp16",
           "metric": "prefill_tokens_per_s", "prompt_len": 4096, "batch": 1, "value": 1.0, "category": "prefill"}
    df = pd.DataFrame([row, {**row, "attention": "unfused"}, {**row, "dequant": "fp16_copy"}])
    pred, skip = predict(df, engine="ideal")
    assert list(skip) == ["", "", ""]
    assert pred[1] < pred[0] and pred[2] < pred[0]  # materialised scores and an FP16 copy both cost time


# Backends: the kernels a llama.cpp build runs depend on its backend (perfmodel.efficiency.backend_facts) ------------

def _gemm_rate(device: str, backend: str | None, matrix_units: bool = True, dtype: str = "fp16"
               ) -> tuple[float, str, str]:
    from perfmodel.efficiency import with_backend

    d = pm.load_device(device)
    eff = with_backend(Efficiency(), d, backend, matrix_units)
    return Machine(d, eff, Parallel()).peak(OpKind.MATMUL, DType.parse(dtype))


def test_vulkan_on_a_gpu_without_cooperative_matrices_multiplies_on_the_vector_alus_in_fp32():
    # Arc A770 (Xe-HPG): ggml-vulkan gives it no cooperative matrices, so its GEMMs run on the XVEs with an FP32
    # accumulator: 32 Xe-cores x 256 FP32 FLOPs/cycle x 2.1 GHz = 17.20 TFLOP/s, x 0.7 (default vector fraction)
    # = 12.04 TFLOP/s, where the XMX path (CUDA-like, the default) gives 32 x 2048 x 2.1e9 x 0.7 = 96.34 TFLOP/s
    assert _gemm_rate("arc-a770", "vulkan") == (pytest.approx(32 * 256 * 2.1e9 * 0.7), "vector", "fp32")
    assert _gemm_rate("arc-a770", None) == (pytest.approx(32 * 2048 * 2.1e9 * 0.7), "matrix", "fp16")


def test_vulkan_keeps_the_matrix_units_where_cooperative_matrices_exist_and_matrix_units_false_drops_them():
    # Arc B580 (Xe2): cooperative matrices since b5589 (PR #14001); before (matrix_units false), the vector rate:
    # 20 Xe-cores x 256 x 2.67 GHz x 0.7 = 9.569 TFLOP/s
    assert _gemm_rate("arc-b580", "vulkan") == _gemm_rate("arc-b580", None)
    assert _gemm_rate("arc-b580", "vulkan", False) == (pytest.approx(20 * 256 * 2.67e9 * 0.7), "vector", "fp32")
    # NVIDIA keeps its tensor cores under Vulkan (coopmat2), and CUDA, ROCm, Metal or an FP16 SYCL build change
    # nothing
    for backend in ("vulkan", "cuda", "rocm", "metal", "sycl-f16"):
        assert _gemm_rate("rtx-4090", backend) == _gemm_rate("rtx-4090", None)
    # a CPU's backend changes nothing by itself; without its AMX tiles (llama.cpp before PR #8998) an int8 GEMM runs
    # on AVX-512: the file gives no int8 vector rate, so the int8 ladder ends at FP32, 56 cores x 2.0 GHz x 64
    # FLOPs/cycle x 0.7 = 5.018 TFLOP/s, where AMX int8 gives 229.4 TOPS x 0.7
    assert _gemm_rate("xeon-8480plus", "vulkan") == _gemm_rate("xeon-8480plus", None)
    assert _gemm_rate("xeon-8480plus", None, dtype="int8") == (pytest.approx(229.376e12 * 0.7), "matrix", "int8")
    assert _gemm_rate("xeon-8480plus", "cpu", False, "int8") == (pytest.approx(56 * 2.0e9 * 64 * 0.7), "vector",
                                                                 "fp32")


def test_sycl_default_build_multiplies_in_fp32_on_the_vector_alus():
    # llama.cpp's SYCL build without GGML_SYCL_F16 (the documented default) dequantises to FP32 and calls SGEMM: on an
    # Arc A770 32 Xe-cores x 256 FP32 FLOPs/cycle x 2.1 GHz x 0.7 = 12.04 TFLOP/s (the CI measures ~12.5 at pp512);
    # an FP16 build keeps the XMX rate, 32 x 2048 x 2.1e9 x 0.7 = 96.34 TFLOP/s
    assert _gemm_rate("arc-a770", "sycl") == (pytest.approx(32 * 256 * 2.1e9 * 0.7), "vector", "fp32")
    assert _gemm_rate("arc-a770", "sycl-f16") == (pytest.approx(32 * 2048 * 2.1e9 * 0.7), "matrix", "fp16")
    # on an RTX 4090 the SGEMM runs on the CUDA cores too: 82.6 TFLOP/s FP32 x 0.7
    assert _gemm_rate("rtx-4090", "sycl")[1:] == ("vector", "fp32")


def test_int8_mmq_on_the_vector_alus_runs_at_the_integer_dot_product_rate():
    # ggml-vulkan's DP4A MMQ (PR #12135) on a GPU without cooperative matrices: the A770's XVEs do 64 int8 ops per
    # clock each, 16 per Xe-core: 32 x 1024 x 2.1e9 x 0.7 = 48.17 TOPS, four times its FP32 rate (12.04 TFLOP/s)
    assert _gemm_rate("arc-a770", "vulkan", dtype="int8") == (pytest.approx(32 * 1024 * 2.1e9 * 0.7), "vector",
                                                              "int8")


def test_backend_is_part_of_the_workload_and_a_wrong_name_is_refused():
    fast = pm.estimate("llama-2-7b", "arc-a770", batch=1, prompt_len=512, gen_len=16, weights="q4_0")
    slow = pm.estimate("llama-2-7b", "arc-a770", batch=1, prompt_len=512, gen_len=16, weights="q4_0",
                       backend="vulkan")
    # prefill is compute-bound at 512 tokens: 8x the rate (96.34 / 12.04) must show as a much longer TTFT, while
    # a decode step (memory-bound) barely moves
    assert slow.ttft_s > 4 * fast.ttft_s
    assert slow.tpot_s == pytest.approx(fast.tpot_s, rel=0.05)
    assert slow.to_dict()["config"]["backend"] == "vulkan"
    with pytest.raises(ValueError, match="Did you mean 'vulkan'"):  # pydantic's ValidationError is a ValueError
        Workload(backend="vulcan")


def test_sweep_backend_column_is_per_row_and_a_bad_backend_is_that_rows_error():
    import pandas as pd

    df = pd.DataFrame({"model": ["llama-2-7b"] * 3, "hardware": ["arc-a770"] * 3, "weights": ["q4_0"] * 3,
                       "prompt": [512] * 3, "gen": [16] * 3, "backend": ["", "vulkan", "vulcan"]})
    res = pm.sweep(df)
    one = pm.estimate("llama-2-7b", "arc-a770", batch=1, prompt_len=512, gen_len=16, weights="q4_0",
                      backend="vulkan")
    assert res.ttft_s[1] == pytest.approx(one.ttft_s)
    assert res.ttft_s[0] < res.ttft_s[1]
    assert "backend" in res.error[2] and res.error[:2].tolist() == ["", ""]


def test_matrix_units_flag_reaches_the_json_config_and_a_bad_value_is_exit_2(capsys):
    import json

    from perfmodel.cli import main

    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "arc-a770", "--backend", "vulkan",
                 "--matrix-units", "false", "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert cfg["backend"] == "vulkan" and cfg["matrix_units"] is False
    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "arc-a770", "--matrix-units", "maybe"]) == 2
    assert "matrix_units must be true or false; got 'maybe'" in capsys.readouterr().err


def test_no_catalog_device_refuses_gemms_without_matrix_units():
    # every device has some vector rate for a GEMM that cannot use its matrix units: Gaudi 2's file gives only its
    # TPCs' bf16 rate (11 TFLOP/s), so that is the rate, x 0.7
    from perfmodel.catalog import catalog_devices
    from perfmodel.efficiency import with_backend

    assert _gemm_rate("gaudi2", None, False) == (pytest.approx(11e12 * 0.7), "vector", "bf16")
    for d in catalog_devices():
        rate, unit, _ = Machine(d, with_backend(Efficiency(), d, "vulkan", False), Parallel()).peak(
            OpKind.MATMUL, DType.parse("fp16"))
        assert rate > 0 and unit == "vector", d.id


def _block_fp8_rate(device: str, dtype: str, n: int = 8192) -> float:
    from perfmodel.graph import block_scale_work

    dt = DType.parse(dtype)
    flops = 2.0 * n ** 3
    scale, variant = block_scale_work(dt, dt, flops)
    op = Op("gemm", OpKind.MATMUL, dt, flops=flops, weight_bytes=n * n * dt.bytes, act_in_bytes=n * n * dt.bytes,
            act_out_bytes=2.0 * n * n, rows=n, scale_flops=scale, variant=variant)
    mach = Machine(pm.load_device(device), Efficiency(), Parallel())
    bw = float(mach.bandwidth_for(op.bytes))
    return flops / op_cost(op, mach, bw, bw)["time_s"]


def test_block_scaled_fp8_promotes_partial_sums_on_the_vector_units_where_the_mma_takes_no_scales():
    # H100 SXM, 8192^3, 128x128 block scales: FP8 products at 1978.9 x 0.7 TFLOP/s, and per output element and
    # 128-deep block 3 FP32 FLOPs on the vector units at 66.9 x 0.7: 3/256 of the GEMM FLOPs there. Time per FLOP
    # 1/(1385.2e12) + (3/256)/(46.83e12) = 7.219e-16 + 2.502e-16 = 9.722e-16 s -> 1028.6 TFLOP/s (per-tensor FP8:
    # 1385.2). DeepGEMM's README measures 1,000-1,360 on the H800 at large shapes.
    assert _block_fp8_rate("h100-sxm", "fp8") == pytest.approx(1978.9e12 * 0.7, rel=1e-3)
    assert _block_fp8_rate("h100-sxm", "fp8_b128") == pytest.approx(1 / (1 / 1385.23e12 + (3 / 256) / 46.83e12),
                                                                     rel=1e-3)
    assert _block_fp8_rate("h100-sxm", "fp8_b128") == pytest.approx(1028.6e12, rel=2e-3)
    # a B200 (block-scaled MMA: it has an FP4 rate) applies the scales in the instruction: 4500 x 0.7
    assert _block_fp8_rate("b200", "fp8_b128") == pytest.approx(_block_fp8_rate("b200", "fp8"))
    assert _block_fp8_rate("b200", "fp8_b128") == pytest.approx(4500e12 * 0.7, rel=1e-3)


def test_block_scale_work_runs_at_a_narrower_vector_rate_where_a_device_gives_no_fp32_one():
    # Gaudi 3's file gives its TPCs a BF16 vector rate only (28.7 TFLOP/s) and no FP32 one: the promotion runs there
    # instead of refusing. FP8 products 1835 x 0.7 = 1284.5 TFLOP/s, 3/256 of the FLOPs at 28.7 x 0.7 = 20.09:
    # 1 / (1/1284.5e12 + (3/256)/20.09e12) = 1 / (7.785e-16 + 5.833e-16) = 734.3 TFLOP/s
    assert _block_fp8_rate("gaudi3", "fp8_b128") == pytest.approx(1 / (1 / 1284.5e12 + (3 / 256) / 20.09e12),
                                                                  rel=1e-3)
    assert _block_fp8_rate("gaudi3", "fp8_b128") == pytest.approx(734.3e12, rel=2e-3)


def test_block_scaled_fp8_weights_in_a_model_cost_the_promotion_only_with_fp8_products():
    # DeepSeek-style fp8_b128 weights: with FP8 activations the GEMMs carry the vector work (3/256 of their FLOPs),
    # with BF16 activations (weight-only) they carry none
    spec = pm.load_model("llama-3.1-8b")
    p = Pass("decoder", batch=1, q_len=512, kv_len=512)
    w8a8 = [o for o in lower(spec, p, Precision(DType.FP8_B128, DType.BF16, DType.FP8), Parallel())
            if o.kind == OpKind.MATMUL]
    w8 = [o for o in lower(spec, p, Precision(DType.FP8_B128, DType.BF16, DType.BF16), Parallel())
          if o.kind == OpKind.MATMUL]
    assert w8a8 and all(o.variant == "block_scaled" and o.scale_flops == pytest.approx(o.flops * 3 / 256)
                        for o in w8a8 if not o.name.endswith("lm_head"))
    assert all(o.scale_flops == 0 for o in w8)
    assert DType.parse("fp8_block") is DType.FP8_B128 and DType.FP8_B128.bits == pytest.approx(8 + 32 / 16384)


def test_matrix_units_run_at_the_clock_they_hold_under_a_dense_gemm():
    # MI300X: BF16 peak 1,307.4 TFLOP/s quoted at 2,100 MHz; AMD measured a median 1,207 MHz under a dense hipBLASLt
    # GEMM, so the attainable rate at fraction 0.7 is 1,307.4 x 0.7 x 1.207 / 2.1 = 526.0 TFLOP/s; the datasheet
    # peak (MFU's denominator) stays 1,307.4, and vector work keeps the quoted clock (163.4 FP32)
    dev = pm.load_device("mi300x")
    m = Machine(dev, Efficiency(matrix=0.7, vector=1.0), Parallel())
    assert m.peak(OpKind.MATMUL, DType.BF16)[0] == pytest.approx(526.0e12, rel=1e-3)
    assert m.datasheet_peak(OpKind.MATMUL, DType.BF16) == pytest.approx(1307.4e12)
    assert m.peak(OpKind.ELEMENTWISE, DType.FP32)[0] == pytest.approx(163.4e12)
    assert dev.figure("processor.matrix_clock").rung == "sourced"
    # a part without a measured GEMM clock keeps its quoted peak: H100 SXM BF16 989.4 x 0.7 = 692.6
    h = Machine(pm.load_device("h100-sxm"), Efficiency(matrix=0.7), Parallel())
    assert h.peak(OpKind.MATMUL, DType.BF16)[0] == pytest.approx(692.58e12)


def test_a_what_if_clock_keeps_the_gemm_clock_in_proportion():
    # 2.1 -> 2.4 GHz scales the quoted peaks by 2.4 / 2.1 and the GEMM clock to 1.207 x 2.4 / 2.1 = 1.3794 GHz:
    # the attainable BF16 rate is 1,307.4 x (2.4 / 2.1) x (1.3794 / 2.4) = 858.7 TFLOP/s at fraction 1
    from perfmodel.whatif import scaled

    dev = scaled("mi300x", clock_ghz=2.4)
    assert dev.processor.matrix_clock_ghz == pytest.approx(1.207 * 2.4 / 2.1)
    m = Machine(dev, Efficiency(matrix=1.0), Parallel())
    assert m.peak(OpKind.MATMUL, DType.BF16)[0] == pytest.approx(858.79e12, rel=1e-4)


def test_a_kernel_row_that_times_the_input_quantisation_adds_one_memory_pass():
    # vLLM's W8A8BlockFp8LinearOp.apply quantises the BF16 input first: m x k x 2 bytes read, m x k x (1.00025 + 4/128)
    # written (FP8 at 8.002 bits, one FP32 scale per 128). m = 4096, k = 7168: 29.36e6 elements x 3.0315 B = 89.0 MB at
    # 3.35 TB/s (H100 HBM3, fractions 1, no overhead) = 26.57 us added to the GEMM's time
    from perfmodel.validation import _predict_kernel

    dev = pm.load_device("h100-sxm")
    row = {"metric": "gemm_tflops", "dtype": "fp8_b128", "m": 4096, "n": 2112, "k": 7168}
    plain = _predict_kernel(row, dev, IDEAL)
    quant = _predict_kernel({**row, "quant_input": True}, dev, IDEAL)
    flops = 2.0 * 4096 * 2112 * 7168
    added = 4096 * 7168 * (2 + 8.002 / 8 + 4 / 128) / 3.35e12
    assert added == pytest.approx(26.57e-6, rel=1e-3)
    assert flops / quant / 1e12 == pytest.approx(flops / plain / 1e12 + added)


def test_experts_only_mxfp4_and_its_gguf_match_the_published_sizes():
    # gpt-oss-20b: 24 MoE layers of 32 experts, each a fused gate/up 2880 x 5760 and a down 5760/2 x 2880 with biases:
    # 24 x 32 x (2880 x 5760 + 5760 + 2880 x 2880 + 2880) = 19,115,950,080 expert parameters (plus nothing else
    # routed); the rest are attention, router, embedding and LM head (norms apart, kept at 16 bits).
    from perfmodel.engines import checkpoint_formats
    from perfmodel.memory import weight_bytes

    m = pm.load_model("gpt-oss-20b")
    parts = m.param_breakdown()
    experts = 24 * 32 * (2880 * 5760 + 5760 + 2880 * 2880 + 2880)
    assert parts["experts"] == experts
    norms = parts.get("norms", 0)
    others = m.params_total() - experts - norms
    wl = Workload(weights="mxfp4")
    gguf = checkpoint_formats(wl, m, "llamacpp")  # llama.cpp's GGUF: the others in Q8_0 (8.5 bits)
    assert gguf.dense_weights == DType.Q8_0 and gguf.precision.head_format == DType.Q8_0
    size = weight_bytes(m, gguf.precision, Parallel())
    assert size == pytest.approx(experts * 4.25 / 8 + others * 8.5 / 8 + norms * 2)
    assert size / 2**30 == pytest.approx(11.27, rel=0.005)  # llama-bench: "gpt-oss 20B MXFP4 MoE | 11.27 GiB"
    hf = checkpoint_formats(wl, m, "vllm")  # the Hugging Face checkpoint: BF16 outside the experts
    assert hf.dense_weights == DType.BF16 and hf.head_weights is None and hf.precision.head_format == DType.BF16
    assert weight_bytes(m, hf.precision, Parallel()) == pytest.approx(experts * 4.25 / 8 + (others + norms) * 2)
    # a format given by the user is kept; a dense model has no experts to single out
    assert checkpoint_formats(Workload(weights="mxfp4", dense_weights="fp8"), m, "vllm").dense_weights == DType.FP8
    assert checkpoint_formats(wl, pm.load_model("llama-3-8b"), "llamacpp") == wl


def test_quantised_checkpoints_keep_the_head_at_16_bits_where_their_tools_do():
    from perfmodel.engines import checkpoint_formats

    m = pm.load_model("llama-3-8b")
    fp8 = Workload(weights="fp8", act="fp8")
    assert checkpoint_formats(fp8, m, "vllm").head_weights == DType.BF16  # llm-compressor: ignore lm_head
    assert checkpoint_formats(Workload(weights="int4", act="fp16"), m, "trtllm").head_weights == DType.FP16
    assert checkpoint_formats(Workload(weights="int4"), m, "mlx").head_weights is None  # mlx-lm quantises it
    assert checkpoint_formats(Workload(weights="q4_k_m"), m, "llamacpp").head_weights is None  # in the GGUF mix
    assert checkpoint_formats(Workload(), m, "vllm").head_weights is None  # nothing quantised
    # LLaMA 3 8B's LM head, 4096 x 128,256, read once per decode step: 1,050,673,152 bytes at 16 bits against
    # 525,336,576 at FP8, and it multiplies at 16 bits (not on the FP8 units) while the layers stay FP8
    est = pm.estimate("llama-3-8b", "h100-sxm", engine="vllm", weights="fp8", act="fp8", prompt_len=128, gen_len=2)
    head = est.ops[(est.ops.phase == "decode") & (est.ops.name == "lm_head")]
    assert float(head.weight_bytes.iloc[0]) == pytest.approx(4096 * 128_256 * 2)
    low = lower(m, Pass("decoder", 1, 1, 129, logits=1), checkpoint_formats(fp8, m, "vllm").precision, Parallel())
    kinds = {op.name: op.dtype for op in low}
    assert kinds["lm_head"] == DType.BF16 and kinds["layers.attn.o"] == DType.FP8


def test_checkpoint_format_flags_and_json_keys(capsys):
    import json

    from perfmodel.cli import main

    assert main(["estimate", "--model", "gpt-oss-20b", "--hardware", "h100-sxm", "--weights", "mxfp4", "--engine",
                 "vllm", "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert (cfg["weights"], cfg["dense_weights"], cfg["head_weights"]) == ("mxfp4", "bf16", "bf16")
    assert main(["estimate", "--model", "gpt-oss-20b", "--hardware", "h100-sxm", "--weights", "mxfp4",
                 "--dense-weights", "mxfp4", "--head-weights", "mxfp4", "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert (cfg["dense_weights"], cfg["head_weights"]) == ("mxfp4", "mxfp4")
    assert main(["estimate", "--model", "gpt-oss-20b", "--hardware", "h100-sxm", "--head-weights", "fp5"]) == 2
    assert "head_weights must be one of" in capsys.readouterr().err


def test_cuda_graph_replay_replaces_the_launch_cost_of_one_sequences_decode_step(capsys):
    import json

    from perfmodel.cli import main

    # 6 us per kernel launched from the host, 2 us per kernel of a replayed CUDA graph: a batch-1 decode step's kernel
    # time is a third (2 / 6) of the same step without graphs; batches of two, other backends, pre-Ampere parts and
    # builds without graphs pay the launches. The prompt pass never replays a graph.
    eff = Efficiency(matrix=0.5, memory=0.8, op_overhead_s=6e-6, graph_op_overhead_s=2e-6)

    def overhead(hw="rtx-4090", batch=1, phase="decode", **kw):
        est = pm.estimate("llama-2-7b", hw, efficiency=eff, batch=batch, prompt_len=64, gen_len=9, weights="q4_0",
                          ignore_capacity=True, **kw)
        return float(est.ops[est.ops.phase == phase].overhead_s.sum())

    launched = overhead(graphs=False)
    assert overhead() == pytest.approx(launched / 3)
    assert overhead(batch=2) == pytest.approx(overhead(batch=2, graphs=False))
    # Vulkan records the step's dispatches into command buffers: the replayed cost on every vendor, with no off switch
    assert overhead(backend="vulkan") == pytest.approx(launched / 3)
    assert overhead(backend="vulkan", graphs=False) == pytest.approx(launched / 3)
    assert overhead("rx-7900-xtx", backend="vulkan") == pytest.approx(overhead("rx-7900-xtx", backend="vulkan",
                                                                               batch=1, graphs=False))
    assert overhead("rx-7900-xtx", backend="rocm") > overhead("rx-7900-xtx", backend="vulkan")  # HIP launches
    assert overhead("rtx-2080-ti") == pytest.approx(overhead("rtx-2080-ti", graphs=False))  # Turing: none
    assert overhead(phase="prefill") == pytest.approx(overhead(phase="prefill", graphs=False))
    assert Workload(graphs="false").graphs is False
    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "rtx-4090", "--graphs", "false", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["graphs"] is False
    with pytest.raises(ValueError, match="graphs must be true or false"):
        Workload(graphs="maybe")
