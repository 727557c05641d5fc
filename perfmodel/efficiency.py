"""Efficiency profiles: the fraction of each datasheet peak that real kernels reach.

Attainable = peak x efficiency. The defaults below come from published achieved fractions; a calibration profile
(TOML, fitted on a machine) replaces them. Sources:
- matrix/vector 0.7: llm-analysis README, "How to Set FLOPS and Memory Efficiency": "literature reports ... up to
  0.7 for inference" (https://github.com/cli99/llm-analysis).
- GPU memory 0.8: within the band the sources give for decode-sized transfers. Calculon's A100/H100 HBM table gives
  0.75 for >= 10 MB and 0.90 for >= 100 MB (calculon-ai/calculon systems/a100_80g.json, "MB_efficiency"); llm-analysis
  calls 0.9 "an aggressive target for memory efficiencies".
- CPU memory 0.7: STREAM triad reaches 67-78 % of the DDR4/LPDDR4 wire rate in TI's measurements (SPRACV1B,
  SPRAD45A); server DDR5 figures were not found, so calibrate (perfmodel calibrate) for a CPU you care about.
- interconnect 0.8: NCCL maintainer, NVIDIA/nccl#1054: "Roughly, the app-level bandwidth is 80% of the peak
  bandwidth"; 10 us per collective step: Calculon systems/h100_80g_nvl8.json at commit 71f6435 ("latency": 0.00001).
- per-op overhead 0: assumes an engine that hides launch latency (CUDA graphs, fused decode loops). Eager PyTorch pays
  more: LLMCompass's calibrated A100 overheads are 21 us per matmul, 12 us per softmax, 45 us per layernorm/GELU
  (PrincetonUniversity/LLMCompass hardware_model/compute_module.py); set op_overhead_s to model that.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field



class Efficiency(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    matrix: float = Field(0.7, gt=0, le=1, description="fraction of matrix-unit peak")
    vector: float = Field(0.7, gt=0, le=1, description="fraction of vector-unit peak")
    memory: float = Field(0.8, gt=0, le=1, description="fraction of each memory level's bandwidth")
    interconnect: float = Field(0.8, gt=0, le=1, description="fraction of link bandwidth")
    interconnect_latency_s: float | None = Field(
        None, ge=0, description="latency per ring step; None: the device's latency_us, else NCCL's own per-hop latency "
                                "for the link type (perfmodel.collectives.HW_LAT_US)")
    custom_allreduce: bool = Field(
        True, description="the engine runs its own peer-to-peer all-reduce kernels (one-shot, two-shot, multimem) "
                          "beside NCCL's within a node where the fabric allows (vLLM, SGLang, TensorRT-LLM); false: "
                          "NCCL's algorithms only (nccl-tests, torch.distributed)")
    op_overhead_s: float | None = Field(None, ge=0, description="per kernel; None: the device's, else 0")
    graph_op_overhead_s: float | None = Field(
        None, ge=0, description="per kernel of a decode step of one sequence that the engine replays from a captured "
                                "CUDA graph (llama.cpp's CUDA backend since PR #6766 on Ampere and newer) or "
                                "records into command buffers (its Vulkan backend; graph_backend): no host launch, "
                                "the GPU's gap between dependent kernels; None: no graph replay, op_overhead_s "
                                "everywhere")
    step_overhead_s: float = Field(
        0.0, ge=0, description="fixed host time per forward pass (scheduling, sampling, synchronisation): once per "
                               "prefill and once per decode step; in the metrics, not in the per-op breakdown")
    token_overhead_s: float = Field(
        0.0, ge=0, description="host time per sequence per step (sampling, detokenising, request bookkeeping): it "
                               "bounds tokens/s of small models served at large batches; in the metrics only")
    half_accumulate: bool = Field(
        False, description="the engine's FP16/FP8 GEMMs accumulate in FP16 (llama.cpp's cuBLAS path), so they run at "
                           "a device's FP16-accumulate rate where it has one")
    blas_matrix: float | None = Field(
        None, gt=0, le=1, description="fraction of the matrix peak that 16-bit GEMMs reach where the engine hands them "
                                      "to the vendor's BLAS (llama.cpp's CUDA and ROCm backends: FP16/BF16 weights "
                                      "and the FP16 copies of dequantised ones go to cuBLAS/hipBLAS); None: its own "
                                      "kernels' `matrix` fraction. Backends without a BLAS path drop it "
                                      "(with_backend)")
    sync_mma_fraction: float = Field(
        1.0, gt=0, le=1, description="the engine's kernels use synchronous MMA instructions: on devices whose matrix "
                                     "peak needs asynchronous MMA (Device.compute.async_mma) they reach this fraction "
                                     "of what they reach elsewhere")
    attention_keys_half: float = Field(
        0.0, ge=0, description="keys per query at which fused attention reaches half its matrix rate: each query "
                               "tile pays a fixed prologue/epilogue, so rate x keys / (keys + this); 0: no such cost")
    vector_matmul: bool = Field(
        False, description="the engine's GEMM kernels on this device run on its vector ALUs, not on its matrix units "
                           "(a backend without a matrix-unit path, or a workload with matrix_units false: "
                           "with_backend); float GEMMs on a GPU then run at the FP32 rate (FP16 operands, FP32 "
                           "accumulator: one FMA per lane per cycle)")
    unit_bytes_per_s: float | None = Field(
        None, gt=0, description="most main-memory bytes per second one compute unit (SM, CU, core) streams for the "
                                "engine's kernels: a concurrency ceiling, units x this, on main-memory bandwidth "
                                "(Little's law: the bytes a unit's kernel keeps in flight over a DRAM latency, which "
                                "is set in nanoseconds by the memory, not in cycles by the core clock); None: no "
                                "ceiling")
    gemm_rows_half: float = Field(
        0.0, ge=0, description="rows per weight-GEMM call (tokens, or tokens per expert) at which the engine's GEMMs "
                               "reach half their rate: each weight tile is loaded and unpacked once per tile of rows, "
                               "so rate x m / (m + this); 0: no such cost")
    unit_int8_ops_per_cycle: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        {}, description="int8 matrix operations per cycle one compute unit (SM, CU) completes in the engine's own "
                        "quantised GEMM kernels (llama.cpp's MMQ), by device vendor where measured: int8 matrix work "
                        "on that vendor's parts runs at units x sustained clock x this (at most the int8 peak), a "
                        "rate set by what the kernel does per tile besides the MMA (loading and unpacking quantised "
                        "blocks, applying their scales), not a fraction of the tensor cores' rate; elsewhere matrix x "
                        "the int8 peak")
    source: str = "defaults (perfmodel.efficiency)"

    # Calibrated values (perfmodel calibrate). Where present they replace peak x fraction. Keys of the per-class
    # tables are "<class>.<precision>", class as perfmodel.cost.op_class names it (gemm, gemv, attention, elementwise,
    # softmax, silu, gelu, rmsnorm, layernorm; activation and norm for profiles that do not split them).
    level_bandwidth_bytes_per_s: dict[str, float] = Field({}, description="attained bandwidth per memory level name")
    rate_flops_per_s: dict[str, float] = Field({}, description="attained compute rate per class and precision")
    memory_fraction: dict[str, float] = Field({}, description="fraction of the level's bandwidth a class reaches")
    overhead_by_class_s: dict[str, float] = Field({}, description="per-call overhead per class and precision")
    rows_half: dict[str, float] = Field({}, description="GEMM rows at which the rate reaches half its maximum: "
                                                        "rate(m) = rate x m / (m + rows_half)")
    rate_by_rows: dict[str, list[tuple[float, float]]] = Field(
        {}, description="GEMM rate (FLOP/s) attained at measured row counts, [[rows, rate], ...] by rows; "
                        "interpolated in log(rows), held flat beyond the ends; used instead of rows_half")
    device_id: str | None = Field(None, description="the device a calibrated profile describes ('local' or an id)")
    host: dict[str, str | int | float] = Field({}, description="where and how the profile was measured")
    created: str = ""
    raw_sha256: str = Field("", description="checksum of the raw measurements saved beside the profile")
    values_sha256: str = Field("", description="checksum of every value of the profile (calibration.profile."
                                               "values_digest): an edited calibrated profile is refused")

    @property
    def calibrated(self) -> bool:
        return bool(self.rate_flops_per_s or self.level_bandwidth_bytes_per_s)


def rate_at_rows(table: list[tuple[float, float]], rows):
    """The GEMM rate a `rate_by_rows` table gives at `rows` (scalar or array): interpolated in log(rows), held flat
    beyond the measured ends."""
    import numpy as np

    return np.interp(np.log(np.maximum(np.asarray(rows, dtype=float), 1.0)), np.log([p[0] for p in table]),
                     [p[1] for p in table])


# The kernels an engine runs depend on its backend (llama.cpp: CUDA, ROCm/HIP, Vulkan, Metal, SYCL, CPU); where a
# backend has no path to a device's matrix units, its GEMMs run on the vector ALUs. Facts, each with its source:
# - Vulkan multiplies on matrix units only through cooperative matrices (VK_KHR_cooperative_matrix, NVIDIA's
#   VK_NV_cooperative_matrix2); without them ggml-vulkan's mul_mm shaders run on the vector ALUs with an FP32
#   accumulator. ggml-vulkan enables the KHR extension on Intel only for Xe2 parts
#   (ggml_vk_khr_cooperative_matrix_support: `case VK_VENDOR_ID_INTEL: return arch == INTEL_XE2`, ggml/src/ggml-vulkan/
#   ggml-vulkan.cpp), and only since build b5589 (PR #14001, 2025-06-04: "vulkan: Enable VK_KHR_cooperative_matrix
#   extension for Intel Xe2 GPUs"). That PR's own table measures the difference: Arc B580, gemma-2-2b Q4_K_M pp512
#   491 t/s before and 1,631 t/s after, tg128 unchanged (130 / 127 t/s); the A770 (Xe-HPG) has "matrix cores: none"
#   in both builds. `vulkan` is a current build (cooperative matrices wherever ggml-vulkan enables them); a build or
#   driver without them (before those PRs, a driver without the extension, GGML_VK_DISABLE_COOPMAT set) is the
#   workload's matrix_units = false.
# - SYCL: llama.cpp's documented build (docs/backend/SYCL.md, "Option 1: Use FP32 (recommended for better
#   performance in most cases)", and examples/sycl/build.sh) leaves GGML_SYCL_F16 off; ggml_sycl_op_mul_mat_sycl then
#   has `use_fp16 = false`, dequantises quantised weights to FP32 and multiplies with oneMKL/oneDNN SGEMM, which runs
#   FP32 on the vector ALUs (XMX has no FP32 path; oneMKL uses TF32 only when asked). The Arc A770 SYCL CI
#   (NeoZhangJianyu/ci_log; its build logs compile ggml-sycl without -DGGML_SYCL_F16) measures pp512 at 870-950 t/s
#   for Llama-2-7B Q4_0: 930 x 2 x 6.74e9 = 12.5 TFLOP/s, 73 % of the A770's 17.2 TFLOP/s FP32 and 9 % of its XMX
#   FP16 peak. `sycl` is that build; `sycl-f16` one built with -DGGML_SYCL_F16=ON (FP16 GEMMs on the XMX units).
BACKENDS = ("cuda", "rocm", "vulkan", "metal", "sycl", "sycl-f16", "cpu", "opencl", "cann")
# device families whose Vulkan driver ggml-vulkan does not give cooperative matrices (vendor, family prefix)
NO_COOPMAT = (("intel", "intel-xe-hpg"), ("intel", "intel-xe-lpg"), ("intel", "intel-xe-hpc"), ("intel", "intel-gen"))


def backend_facts(vendor: str, kind: str, family: str | None, backend: str | None) -> dict[str, object]:
    """What a backend changes in how an engine's kernels run on a device of `vendor`, `kind` (gpu, cpu, ...) and
    `family`: {} for the device's own backend (None) or one with a matrix-unit path there."""
    if backend is None or kind == "cpu":  # a CPU's matrix units (AMX): the workload's matrix_units says
        return {}
    if backend == "sycl":
        return {"vector_matmul": True}
    if backend == "vulkan" and any(vendor == v and (family or "").startswith(f) for v, f in NO_COOPMAT):
        return {"vector_matmul": True}
    return {}


# Backends that hand 16-bit GEMMs to the vendor's BLAS: llama.cpp's ggml-cuda.cu sends FP16 weights and FP16 copies
# of dequantised ones to cublasGemmEx / cublasGemmBatchedEx above its GEMV's 8 rows (ggml_cuda_op_mul_mat_cublas,
# ggml_cuda_mul_mat_batched_cublas), and ROCm builds the same file against hipBLAS; Vulkan, Metal and SYCL's F16 path
# run the backend's own shaders and kernels.
BLAS_BACKENDS = ("cuda", "rocm")
BLAS_VENDORS = ("nvidia", "amd")  # whose own GPU backend (a workload without --backend) is one of those


def blas_backend(device, backend: str | None) -> bool:
    """Whether `backend` on `device` runs 16-bit GEMMs through the vendor's BLAS (BLAS_BACKENDS)."""
    if device.kind != "gpu":
        return False
    return backend in BLAS_BACKENDS if backend is not None else device.vendor in BLAS_VENDORS


# CUDA graphs: llama.cpp's CUDA backend captures a decode step of one sequence as a CUDA graph and replays it (PR
# #6766, "Introduction of CUDA Graphs to LLama.cpp", merged May 2024: the H100 PCIe's LLaMA 2 7B Q4_K_M tg went from
# 143.35 to 163.83 t/s, issue #6763); batches of more than one token and MUL_MAT_ID over several tokens disable it
# (ggml_backend_cuda_graph_compute's compatibility check), and so did GPUs before Ampere until PR #25749 (2026).
# HIP graphs are off by default (GGML_HIP_GRAPHS), and Metal and SYCL have none.
# Vulkan has no host launch per kernel either: ggml-vulkan records the whole graph's dispatches into command buffers,
# submitted every ~100 nodes while the rest is recorded (ggml_backend_vk_graph_compute, GGML_VK_MAX_NODES_PER_SUBMIT),
# so a dispatch costs the GPU's gap between dependent dispatches (a pipeline barrier), as a replayed graph does; that
# holds for every vendor's Vulkan driver and every GPU generation.
GRAPH_NO_FAMILIES = ("nvidia-pascal", "nvidia-volta", "nvidia-turing")
RECORDED_BACKENDS = ("vulkan",)


def graph_backend(device, backend: str | None, graphs: bool = True) -> bool:
    """Whether `backend` on `device` runs single-sequence decode steps without a host launch per kernel: replayed
    from CUDA graphs (NVIDIA, not GRAPH_NO_FAMILIES; `graphs` false: a build without replay) or recorded into command
    buffers (RECORDED_BACKENDS, which have no off switch)."""
    if device.kind != "gpu":
        return False
    if backend in RECORDED_BACKENDS:
        return True
    if not graphs or device.vendor != "nvidia" or backend not in (None, "cuda"):
        return False
    return not (device.family or "").startswith(GRAPH_NO_FAMILIES)


_WITH_BACKEND: dict[tuple, tuple[Efficiency, Efficiency]] = {}


def with_backend(eff: Efficiency, device, backend: str | None, matrix_units: bool = True,
                 graphs: bool = True) -> Efficiency:
    """`eff` with the backend's facts applied (backend_facts), and GEMMs on the vector ALUs where the workload says
    its kernels do not use the matrix units; the same object where nothing changes, and one kept object per
    (efficiency, facts), so machines built on it share their derived rates. `graphs` false: a build without graph
    replay (before it existed, or switched off)."""
    facts = backend_facts(device.vendor, device.kind, device.family, backend)
    if not matrix_units:
        facts = {**facts, "vector_matmul": True}
    if eff.blas_matrix is not None and not blas_backend(device, backend):
        facts = {**facts, "blas_matrix": None}
    if eff.graph_op_overhead_s is not None and not graph_backend(device, backend, graphs):
        facts = {**facts, "graph_op_overhead_s": None}
    if not facts or all(getattr(eff, k) == v for k, v in facts.items()):
        return eff
    key = (id(eff), tuple(sorted(facts.items())))
    hit = _WITH_BACKEND.get(key)
    if hit is None or hit[0] is not eff:
        if len(_WITH_BACKEND) > 1024:
            _WITH_BACKEND.clear()
        hit = _WITH_BACKEND[key] = (eff, eff.model_copy(update=facts))
    return hit[1]


DEFAULTS = {"gpu": Efficiency(), "accelerator": Efficiency(), "cpu": Efficiency(memory=0.7)}


def default_for(kind: str) -> Efficiency:
    return DEFAULTS[kind]
