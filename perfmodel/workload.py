"""The workload: what is run. The one front door for every quantity an estimate takes: its name inside (`prompt_len`)
and outside (`--prompt`, the sweep column `prompt`), its default and its validation live here, and the CLI and
sweeps are generated from these fields.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .dtypes import DType
from .efficiency import BACKENDS
from .errors import PerfmodelError, did_you_mean

if TYPE_CHECKING:
    from .graph import Parallel, Precision

ACT_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "mxfp4", "nvfp4")


class Workload(BaseModel):
    """What is run: batch of sequences, prompt and generated lengths, number formats, parallelism, attention kernel.

    >>> Workload(batch=8, prompt_len=2048, gen_len=256, weights="int4")
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each field's name outside (`name`: the CLI flag --name and the sweep column) is in its json_schema_extra;
    # the CLI and sweeps are generated from these fields (options()), so a quantity has one default, one validator.
    batch: int = Field(1, description="sequences processed together", json_schema_extra={"name": "batch"})
    prompt_len: int = Field(512, description="prompt tokens per sequence", json_schema_extra={"name": "prompt"})
    gen_len: int | None = Field(None, description="generated tokens per sequence (default 128; 0 for encoder-only "
                                                  "models)", json_schema_extra={"name": "gen"})
    weights: DType = Field(DType.BF16, description="weight format: " + " ".join(d.value for d in DType),
                           json_schema_extra={"name": "weights"})
    dense_weights: DType | None = Field(
        None, description="format of the weight matrices outside an MoE model's routed experts (attention, router, "
                          "shared experts, dense layers) where it differs from --weights; default: the checkpoint's "
                          "rule for the engine (an MXFP4 checkpoint quantises only the experts: BF16 elsewhere, Q8_0 "
                          "in llama.cpp's GGUF; docs/model.md, 'Checkpoint formats')",
        json_schema_extra={"name": "dense_weights"})
    head_weights: DType | None = Field(
        None, description="format of the LM head and token-embedding table where it differs from the other "
                          "matrices; default: the checkpoint's rule for the engine (quantised checkpoints for "
                          "TensorRT-LLM, vLLM, SGLang, transformers and LMDeploy keep them at 16 bits; GGUF and MLX "
                          "quantise them with the rest)",
        json_schema_extra={"name": "head_weights"})
    kv: DType = Field(DType.BF16, description="KV-cache format (as --weights)", json_schema_extra={"name": "kv"})
    act: DType = Field(DType.BF16, description="activation/compute format: " + " ".join(ACT_DTYPES),
                       json_schema_extra={"name": "act"})
    gemm: DType | None = Field(None, description="compute format of the weight GEMMs when not --act (e.g. int8: "
                                                 "llama.cpp's MMQ kernels quantise activations for int8 tensor cores)",
                               json_schema_extra={"name": "gemm"})
    tp: int = Field(1, description="tensor-parallel degree", json_schema_extra={"name": "tp"})
    pp: int = Field(1, description="pipeline-parallel degree: stages of consecutive layers; in decode min(batch, pp) "
                                   "micro-batches are in flight, and a prompt batch is split into as many",
                    json_schema_extra={"name": "pp"})
    ep: int = Field(1, description="expert-parallel degree of an MoE model: its routed experts spread over ep ranks "
                                   "(each holds n_experts / ep), tokens sent to them and back by all-to-all; the "
                                   "attention and dense layers stay tensor-parallel over tp (ep may exceed tp: ep / tp "
                                   "data-parallel attention replicas, as with --dp-attention)",
                    json_schema_extra={"name": "ep"})
    cp: int = Field(1, description="context-parallel degree: a prompt's tokens split over cp ranks, which attend them "
                                   "by ring attention (each rank's K/V block passed around the ring) and keep 1 / cp "
                                   "of the KV cache each; a decode step gathers the ranks' partial attention",
                    json_schema_extra={"name": "cp"})
    dp_attention: bool = Field(
        False, description="data-parallel attention (DeepSeek-style, SGLang --enable-dp-attention, TensorRT-LLM "
                           "attention DP): each of the ep ranks runs the attention of its own batch / ep sequences "
                           "with whole attention weights, no all-reduce; the MoE layers stay expert-parallel",
        json_schema_extra={"name": "dp_attention"})
    expert_imbalance: float = Field(
        1.0, description="busiest expert-parallel rank's routed tokens over the mean (>= 1; 1: uniform routing); the "
                         "MoE layer waits for the busiest rank", json_schema_extra={"name": "expert_imbalance"})
    devices: int | None = Field(
        None, description="devices per node (a bare device: how many share its fabric, e.g. 8 L40S in a PCIe "
                          "server); default: the system's, else 8 (72 for GB200)",
        json_schema_extra={"name": "devices"})
    nodes: int | None = Field(
        None, description="nodes of `devices` each, joined by the system's network (InfiniBand, RoCE); the layout "
                          "(max(tp, ep) x cp x pp devices) must fit in devices x nodes; default: as many as it needs",
        json_schema_extra={"name": "nodes"})
    attention: Literal["flash", "unfused"] = Field("flash", description="flash (fused) or unfused",
                                                   json_schema_extra={"name": "attention"})
    dequant: Literal["fused", "fp16_copy", "fp16_scratch"] = Field(
        "fused", description="how quantised weights reach the GEMMs: fused (dequantised inside them), fp16_copy "
                             "(an FP16 copy first: llama.cpp's CUDA path before PR #8075, batches over 32) or "
                             "fp16_scratch (an FP16 copy on every call of more than one row: ONNX Runtime's "
                             "MatMulNBits)",
        json_schema_extra={"name": "dequant"})
    logits: Literal["last", "all"] = Field(
        "last", description="prompt positions whose logits the prompt pass computes: last (the next token's only: "
                            "llama.cpp, vLLM, TensorRT-LLM, Hugging Face generate since logits_to_keep) or all (a "
                            "scoring or perplexity pass)",
        json_schema_extra={"name": "logits"})

    ubatch: int | None = Field(
        None, description="tokens per micro-batch of a prompt (llama.cpp's n_ubatch, 512 in llama-bench): each is a "
                          "pass of its own, so a weight GEMM call has at most that many rows (an MoE expert's share of "
                          "them) and the weights are read once per micro-batch; default: the whole prompt in one pass",
        json_schema_extra={"name": "ubatch"})

    backend: str | None = Field(
        None, description="the engine's kernel backend where it has several (llama.cpp): " + " ".join(BACKENDS)
                          + "; default: the device's own (CUDA on NVIDIA, ROCm on AMD, Metal on Apple)",
        json_schema_extra={"name": "backend"})

    matrix_units: bool = Field(
        True, description="whether the kernels use the device's matrix units (tensor cores, XMX, AMX, MFMA); false: "
                          "GEMMs on the vector ALUs (e.g. llama.cpp's CPU backend before AMX kernels, PR #8998)",
        json_schema_extra={"name": "matrix_units"})

    graphs: bool = Field(
        True, description="whether the engine replays decode steps from captured CUDA graphs where it can (llama.cpp: "
                          "one sequence on its CUDA backend, Ampere and newer, builds since PR #6766 of May 2024); "
                          "false: an older build, or graphs switched off",
        json_schema_extra={"name": "graphs"})

    @field_validator("matrix_units", "graphs", "dp_attention", mode="before")
    @classmethod
    def _flag(cls, v: Any, info) -> bool:
        if isinstance(v, bool):
            return v
        text = str(v).strip().lower()
        if text in ("true", "1", "yes", "on") or (text == "" and info.field_name != "dp_attention"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise PerfmodelError(f"{info.field_name} must be true or false; got {v!r}")

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> str | None:
        if v is None or v == "":
            return None
        if v not in BACKENDS:
            raise PerfmodelError(f"backend must be one of: {', '.join(BACKENDS)}; got {v!r}."
                                 f"{did_you_mean(str(v), list(BACKENDS))}")
        return v

    @field_validator("batch", "prompt_len", "tp", "pp", "ep", "cp", mode="before")
    @classmethod
    def _positive(cls, v: Any, info) -> int:
        return _int_at_least(v, 1, info.field_name)

    @field_validator("devices", "nodes", mode="before")
    @classmethod
    def _count(cls, v: Any, info) -> int | None:
        if v is None or str(v).strip().lower() in ("", "none"):
            return None
        return _int_at_least(v, 1, info.field_name)

    @field_validator("expert_imbalance", mode="before")
    @classmethod
    def _imbalance(cls, v: Any) -> float:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and 1.0 <= f <= 64.0):
            raise PerfmodelError(f"expert_imbalance must be a number from 1 (uniform routing) to 64; got {v!r}")
        return f

    @field_validator("ubatch", mode="before")
    @classmethod
    def _ubatch(cls, v: Any) -> int | None:
        if v is None or str(v).strip().lower() in ("", "none"):
            return None
        return _int_at_least(v, 1, "ubatch", 2**30)

    @field_validator("gen_len", mode="before")
    @classmethod
    def _nonneg(cls, v: Any) -> int | None:
        return None if v is None else _int_at_least(v, 0, "gen_len")

    @field_validator("weights", "kv", "act", "gemm", "dense_weights", "head_weights", mode="before")
    @classmethod
    def _dtype(cls, v: Any, info) -> DType | None:
        if info.field_name in ("gemm", "dense_weights", "head_weights") and (
                v is None or str(v).strip().lower() in ("", "none")):
            return None
        d = DType.parse(v, field=info.field_name)
        if info.field_name in ("act", "gemm") and d.value not in ACT_DTYPES:
            raise PerfmodelError(f"{info.field_name} must be one of: {', '.join(ACT_DTYPES)}; got {d.value!r}")
        return d

    @field_validator("attention", "dequant", "logits", mode="before")
    @classmethod
    def _choice(cls, v: Any, info) -> str:
        allowed = {"attention": ("flash", "unfused"), "dequant": ("fused", "fp16_copy", "fp16_scratch"),
                   "logits": ("last", "all")}[info.field_name]
        if v not in allowed:
            choices = f"{', '.join(map(repr, allowed[:-1]))} or {allowed[-1]!r}"
            raise PerfmodelError(f"{info.field_name} must be {choices}; got {v!r}")
        return v

    @property
    def precision(self) -> Precision:
        from .graph import Precision  # NumPy and the model schema load when a workload is costed, not for --help

        return Precision(self.weights, self.kv, self.act, self.gemm, self.dequant,
                         kv_per_query_head=self.attention == "unfused" and self.backend == "metal",
                         ubatch=float(self.ubatch) if self.ubatch else math.inf, dense=self.dense_weights,
                         head=self.head_weights)

    @property
    def parallel(self) -> Parallel:
        from .graph import Parallel

        return Parallel(self.tp, self.pp, self.ep, self.dp_attention, self.expert_imbalance, self.cp)

    @classmethod
    def options(cls) -> list[tuple[str, str, Any, str]]:
        """(field, outside name, default, help) of every field: the CLI flags (--name) and sweep columns (name)."""
        out = []
        for field, info in cls.model_fields.items():
            default = info.default.value if isinstance(info.default, DType) else info.default
            out.append((field, info.json_schema_extra["name"], default, info.description or ""))
        return out


# The largest value each size takes: past these a number is a typo, not a workload (2^24 sequences, 2^30 tokens,
# 2^16 devices), and it would only overflow the arithmetic.
LIMITS = {"batch": 2**24, "prompt_len": 2**30, "gen_len": 2**30, "tp": 2**16, "pp": 2**16, "ep": 2**16, "cp": 2**16,
          "nodes": 2**16, "devices": 2**16}


def _int_at_least(v: Any, lo: int, name: str, hi: int | None = None) -> int:
    hi = hi if hi is not None else LIMITS.get(name)
    try:
        f = float(v)
        ok = f == int(f)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or int(f) < lo or (hi is not None and int(f) > hi):
        bound = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi:,}"
        raise PerfmodelError(f"{name} must be {bound}; got {v!r}")
    return int(f)
