"""Number formats: storage size (bits per element, block scales included) and the compute precision they run at.

Block-quantized formats store a shared scale per block, so their effective bits per weight exceed the nominal width:
- GGUF (llama.cpp) block layouts, ggml-common.h: Q8_0 = 32 int8 + one fp16 scale = 34 bytes / 32 weights = 8.5 bpw;
  Q4_0 = 32 x 4 bit + fp16 scale = 18 bytes / 32 = 4.5 bpw; Q6_K = 210 bytes / 256 = 6.5625 bpw
  (https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-common.h, and the k-quants PR
  https://github.com/ggml-org/llama.cpp/pull/1684).
- Q4_K_M and Q5_K_M are *mixes* (some tensors kept at Q6_K): their bpw is what llama.cpp's quantize tool reports for a
  whole model (Llama-3.1-8B), see GGUF_MIX_BITS below.
- MXFP4: OCP Microscaling Formats (MX) v1.0, blocks of 32 FP4 (E2M1) elements with one 8-bit E8M0 scale:
  4 + 8/32 = 4.25 bits (https://www.opencompute.org/documents/ocp-microscaling-formats-mx-v1-0-spec-final-pdf).
- NVFP4: blocks of 16 FP4 (E2M1) elements with one FP8 (E4M3) scale, plus a per-tensor fp32 scale (negligible):
  4 + 8/16 = 4.5 bits (NVIDIA technical blog "Introducing NVFP4 for Efficient and Accurate Low-Precision Inference",
  https://developer.nvidia.com/blog/introducing-nvfp4-for-efficient-and-accurate-low-precision-inference/).
- FP8 with 128x128 block scales (fp8_b128): E4M3 weights with one fp32 scale per 128 x 128 block, activations
  quantised on the fly with one scale per 1 x 128 group: 8 + 32/16384 bits (DeepSeek-V3 technical report,
  arXiv:2412.19437, section 3.3.2 "Fine-Grained Quantization"; the checkpoints' quantization_config
  weight_block_size [128, 128]). Where the matrix units take no block scales, each 128-deep partial product is
  scaled and added to an FP32 accumulator on the vector ALUs (`BLOCK_SCALE_FLOPS`).
- int8 / int4 are counted at their nominal width (per-channel scales are negligible; group-wise int4 with an fp16
  scale per 128 weights would add 0.125 bit, which we do not assume).
"""

from __future__ import annotations

from enum import Enum

from .errors import PerfmodelError, did_you_mean


class DType(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    FP8_B128 = "fp8_b128"
    INT8 = "int8"
    INT4 = "int4"
    MXFP4 = "mxfp4"
    NVFP4 = "nvfp4"
    Q8_0 = "q8_0"
    Q6_K = "q6_k"
    Q5_K_M = "q5_k_m"
    Q4_K_M = "q4_k_m"
    Q4_0 = "q4_0"

    @property
    def bits(self) -> float:
        """Storage bits per element, block scales included."""
        return _BITS[self]

    @property
    def bytes(self) -> float:
        return _BITS[self] / 8.0

    @property
    def block_scaled(self) -> bool:
        """Scales per block of k as well as per row: a GEMM in this format applies them inside its k loop."""
        return self is DType.FP8_B128

    @property
    def is_gguf(self) -> bool:
        return self in _GGUF

    @property
    def compute(self) -> str:
        """The precision class used to look up a compute ceiling (a key of a device's compute table)."""
        return _COMPUTE[self]

    @classmethod
    def parse(cls, value: "str | DType", field: str = "dtype") -> "DType":
        if isinstance(value, DType):
            return value
        key = str(value).strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        try:
            return cls(key)
        except ValueError:
            allowed = [d.value for d in cls]
            extra = " fp4 is ambiguous: use mxfp4 (OCP MX) or nvfp4 (NVIDIA)." if key == "fp4" else ""
            raise PerfmodelError(
                f"{field} must be one of: {', '.join(allowed)}; got {value!r}.{did_you_mean(key, allowed)}{extra}"
            ) from None


# Effective bits per weight of the GGUF *mixes*, as llama.cpp's quantize tool reports them for Llama-3.1-8B
# (tools/quantize/README.md, https://github.com/ggml-org/llama.cpp/blob/master/tools/quantize/README.md).
GGUF_MIX_BITS = {"q4_k_m": 4.89, "q5_k_m": 5.70}

_BITS = {
    DType.FP32: 32.0,
    DType.BF16: 16.0,
    DType.FP16: 16.0,
    DType.FP8: 8.0,
    DType.FP8_B128: 8.0 + 32.0 / (128 * 128),  # fp32 scale per 128 x 128 block
    DType.INT8: 8.0,
    DType.INT4: 4.0,
    DType.MXFP4: 4.0 + 8.0 / 32,  # E8M0 scale per 32 elements
    DType.NVFP4: 4.0 + 8.0 / 16,  # E4M3 scale per 16 elements
    DType.Q8_0: 34 * 8 / 32,  # 32 int8 + fp16 scale
    DType.Q6_K: 210 * 8 / 256,  # block_q6_K: 128 ql + 64 qh + 16 scales + fp16 d
    DType.Q5_K_M: GGUF_MIX_BITS["q5_k_m"],
    DType.Q4_K_M: GGUF_MIX_BITS["q4_k_m"],
    DType.Q4_0: 18 * 8 / 32,  # 32 x 4 bit + fp16 scale
}
_GGUF = {DType.Q8_0, DType.Q6_K, DType.Q5_K_M, DType.Q4_K_M, DType.Q4_0}
_COMPUTE = {
    DType.FP32: "fp32",
    DType.BF16: "bf16",
    DType.FP16: "fp16",
    DType.FP8: "fp8",
    DType.FP8_B128: "fp8",
    DType.INT8: "int8",
    DType.INT4: "int4",
    DType.MXFP4: "fp4",
    DType.NVFP4: "fp4",
    # GGUF weights are dequantized inside the kernel; they never set the compute precision (see matmul_dtype).
    DType.Q8_0: "int8",
    DType.Q6_K: "int8",
    DType.Q5_K_M: "int8",
    DType.Q4_K_M: "int8",
    DType.Q4_0: "int8",
}
_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16", "e4m3": "fp8", "fp8_e4m3": "fp8",
            "fp8_block": "fp8_b128", "fp8_blockwise": "fp8_b128"}

# Block-scaled GEMMs on matrix units that take no block scales (Hopper's wgmma, Ada's mma, CDNA3's MFMA): after each
# 128-deep block of k the partial sums are promoted to an FP32 accumulator on the vector ALUs, acc += partial x
# (scale_a x scale_b): one multiply and one FMA, 3 FLOPs per output element per block (DeepSeek-V3 report, section
# 3.3.2, "Increasing Accumulation Precision": promotion to CUDA cores every N_C = 128 elements). Per GEMM FLOP
# (2 per output element per k): 3 / (2 x 128). Devices whose matrix units apply block scales themselves (those with
# an FP4 rate: Blackwell's block-scaled tcgen05/mma, CDNA4's scaled MFMA) do it in the instruction.
BLOCK_SCALE_K = 128
BLOCK_SCALE_FLOPS = 3.0 / (2.0 * BLOCK_SCALE_K)

# When a device has no ceiling for a precision, the op runs at the next one in this chain (e.g. fp8 weights on an
# A100 are upcast and run on the fp16 tensor cores).
COMPUTE_FALLBACK = {
    "fp4": ("fp4", "fp8", "bf16", "fp16", "fp32"),
    "fp8": ("fp8", "bf16", "fp16", "fp32"),
    "int4": ("int4", "int8", "fp16", "bf16", "fp32"),
    "int8": ("int8", "fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp32": ("fp32",),
}
