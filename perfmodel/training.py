"""Training and fine-tuning: memory per device, time per step, MFU and HFU.

Memory (per device, by kind):
- Mixed-precision model states (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", SC 2020, https://arxiv.org/abs/1910.02054, sec. 3.1 and 5): 16-bit weights (2 bytes a parameter) and
  gradients (2), and the optimizer's K bytes (Adam: an FP32 master copy, momentum and variance, K = 12), so 16 bytes a
  parameter. ZeRO stage 1 divides the optimizer states over the data-parallel ranks, stage 2 the gradients too,
  stage 3 the weights too (FSDP's full sharding is stage 3). Tensor and pipeline parallelism divide all of them;
  an MoE layer's experts are divided over max(tp, ep) ranks, and ZeRO shards their states over the data-parallel
  ranks that hold the same experts (dp x tp / max(tp, ep)).
- Activations per layer (Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", MLSys
  2023, https://arxiv.org/abs/2205.05198, sec. 4): s b h (34 + 5 a s / h) bytes for a GPT layer at 16 bits with
  dropout, of which 10 s b h stay whole under tensor parallelism without sequence parallelism and the rest divide by
  t; with sequence parallelism everything divides by t; selective recomputation (and FlashAttention, which never
  stores the scores) drops the 5 a s^2 b of the attention scores; full recomputation keeps only each layer's input,
  2 s b h. Counted here tensor by tensor so that gated MLPs of any width, grouped-query attention and no dropout
  follow (the paper's GPT layer gives its 34 exactly: tested). The first pipeline stage holds its layers' activations
  for p micro-batches under 1F1B (the paper's sec. 4.2.3): L x a layer's, whatever p.
- The last stage also holds the logits of a micro-batch in FP32 for the loss (s b V / t x 4 bytes; a loss computed
  over c chunks of positions, torchtune's CEWithChunkedOutputLoss, 1 / c of them).
- Pure 16-bit training (no FP32 master copy; torchtune's bf16 recipes) keeps 2 + 2 bytes a parameter and the
  optimizer's states in 16 bits (PURE_OPTIMIZER_BYTES); an optimizer run in the backward (torchtune's
  optimizer_in_bwd) frees each gradient once its parameter is stepped, so one tensor's gradient is held at a time;
  paged optimizer states (bitsandbytes) stay on the device while everything fits, else live on the host and cross
  the host link every step.

Time per step, on the cost model of inference (perfmodel.evaluate) at the engine's efficiencies:
- Forward of a micro-batch: the prompt pass of its sequences with every position's logits (`logits = all`), at the
  layout's tp / cp / ep, divided over the pp stages. Expert parallelism: the ep ranks holding an MoE layer's experts
  are tensor ranks (ep <= tp: each expert split further over tp / ep) or span ep / tp data-parallel ranks, whose
  micro-batches the layer's experts see together (each rank attends its own; inference's data-parallel attention),
  the tokens sent to their experts' ranks and back by two all-to-alls (perfmodel.graph._expert_parallel).
- Backward: each op again, with the work the backward pass does: matmuls 2x (input and weight gradients), attention
  2.5x (FlashAttention-2's backward recomputes the scores: five matmuls against the forward's two; Dao 2023,
  https://arxiv.org/abs/2307.08691, sec. 3.1.2), elementwise and norms 2x, collectives 1x (Megatron's f and g
  operators: as many all-reduces backward as forward; an MoE layer's dispatch and combine all-to-alls run again in
  reverse, the gradients of the combined outputs out to the experts' ranks and those of their inputs back). LoRA's
  frozen weights need no weight gradient: 1x.
- The attention kernel (ATTENTION_KERNELS): the engine profile's by default; FlashAttention-2, FlashAttention (v1)
  or FlashAttention in Triton at their published speeds relative to FlashAttention-2, and on Hopper and later at the
  synchronous-MMA fraction of a kernel written for Ampere.
- FP8 (Transformer Engine's recipe): each weight GEMM's input and weight are cast to FP8 and transposed in the
  forward, its output gradient in the backward (Hopper's FP8 MMA reads both operands K-major): memory-bound passes of
  twice the 16-bit bytes, which FP8's faster GEMMs do not shorten.
- Recomputation: full reruns the forward, selective the attention (its scores).
- Pipeline: 1F1B runs m + p - 1 slots of (forward + backward) per step, m = global batch / (dp x micro-batch)
  micro-batches; the interleaved schedule with v chunks a device shrinks the bubble to (p - 1) / v slots
  (Narayanan et al. 2021, https://arxiv.org/abs/2104.04473, sec. 2.2).
- Data-parallel gradients: an all-reduce (ZeRO 1/2: reduce-scatter + all-gather, the same bytes) of the stage's
  16-bit gradients in buckets (PyTorch DDP's 25 MiB, bucket_cap_mb), overlapped with the backward of the last
  micro-batch but for the last bucket; ZeRO-3 / FSDP instead gathers each layer's weights for every micro-batch's
  forward and again for its backward and reduce-scatters its gradients (1.5 x the all-reduce's bytes in all; ZeRO
  paper sec. 7.2.2), prefetched under the compute, one flat collective a layer or, DeepSpeed's ZeRO-3 of 2021, one a
  parameter tensor (GATHER_UNITS). Every collective (and each pipeline send) is costed by NCCL's own model
  (perfmodel.collectives, as inference costs its collectives: latency and bandwidth of each algorithm and protocol,
  the cheapest at the size) on the group's share of the fabric: the ranks of a group that share a node talk over
  its NVLink, and a ring leaving the node runs a channel over each rank's own NIC, so a data-parallel group that
  fills its nodes has their whole network (pure FSDP: all eight NICs of a node), one whose ranks are each alone in
  their node (tensor parallelism 8 within it) one NIC's worth. The experts' gradients synchronise over the ranks
  that hold the same experts.
- The loss: softmax cross-entropy over the FP32 logits of every position, memory-bound passes (LOSS_KERNELS: fused,
  8 bytes a logit forward, read them and write the probabilities, 4 + 2 backward; Megatron-LM's and GPT-NeoX's
  unfused vocab-parallel cross-entropy 38 and 14).
- Optimizer: elementwise over the device's parameters, memory-bound: it reads the gradient and the states and writes
  the states and the 16-bit weights (OPTIMIZER_TRAFFIC bytes a parameter).

MFU counts the model's FLOPs (6 N per token for the weight matmuls, N the parameters a token passes through, LM head
included, embedding lookups not, plus attention: PaLM, Chowdhery et al. 2022, https://arxiv.org/abs/2204.02311,
appendix B, whose 12 L H Q T counts every query-key pair; here the causal half, 6 L H Q T, so that MFU stays a share
of what the hardware could do) against the devices' peak at the training precision; HFU adds the recomputed forward
(Korthikanti et al. sec. 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .catalog import load_device, load_model
from .device import Device
from .dtypes import DType
from .efficiency import Efficiency
from .engines import efficiency_for
from .errors import PerfmodelError, did_you_mean
from .evaluate import evaluate
from .cost import Machine
from .collectives import Fabric, choose, fabric_of, nccl_candidates
from .graph import Comm, OpKind, Parallel
from .model import ModelSpec
from .offload import host_link_bytes_per_s
from .workload import Workload

PRECISIONS = ("bf16", "fp16", "fp8", "fp32")
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "adam8bit")
RECOMPUTE = ("none", "selective", "full")
# Optimizer-state bytes a parameter past the 16-bit weights and gradients (the ZeRO paper's K), mixed precision:
# Adam/AdamW an FP32 master copy, momentum and variance (4 + 4 + 4: the paper's K = 12); SGD with momentum the master
# copy and the momentum (4 + 4); Adafactor (Shazeer and Stern 2018, https://arxiv.org/abs/1804.04235) the master copy
# and a factored second moment of rows + columns a matrix, no first moment (beta1 = 0, its default): 4; 8-bit Adam
# (Dettmers et al. 2022, https://arxiv.org/abs/2110.02861) the master copy and both moments in 8 bits: 4 + 1 + 1
OPTIMIZER_BYTES = {"adamw": 12.0, "adam": 12.0, "sgd": 8.0, "adafactor": 4.0, "adam8bit": 6.0}
# Pure 16-bit training (no FP32 master copy: torchtune's full fine-tuning in bf16, whose optimizer keeps its states in
# the parameters' dtype): Adam's momentum and variance at 2 bytes each, SGD's momentum 2, Adafactor's factored second
# moment ~0, 8-bit Adam's two 8-bit moments 2
PURE_OPTIMIZER_BYTES = {"adamw": 4.0, "adam": 4.0, "sgd": 2.0, "adafactor": 0.0, "adam8bit": 2.0}
# bytes an optimizer step moves a parameter: the gradient read (2), the states read and written, the 16-bit weights
# written (2); in pure 16-bit, the weights read too (no master copy among the states)
OPTIMIZER_TRAFFIC = {k: 2.0 + 2.0 * v + 2.0 for k, v in OPTIMIZER_BYTES.items()}
PURE_OPTIMIZER_TRAFFIC = {k: 2.0 + 2.0 * v + 4.0 for k, v in PURE_OPTIMIZER_BYTES.items()}
DDP_BUCKET_BYTES = 25 * 2**20  # PyTorch DistributedDataParallel's bucket_cap_mb default (25 MiB)
# What ZeRO-3 / FSDP gathers at a time (and reduce-scatters): `layer`, one flat all-gather of a layer's weights (PyTorch
# FSDP's units, a transformer block each; Megatron-FSDP; torchtune's FSDP2), or `tensor`, one all-gather a parameter
# tensor (DeepSpeed ZeRO-3 of 2021: partition_parameters.py's _all_gather runs _allgather_param, a
# torch.distributed.all_gather, for each parameter of a module, and _reduce_scatter_gradients a reduce-scatter for
# each; microsoft/DeepSpeed at 5ca86ae4, 2021-03-30), whose collectives pay NCCL's per-step latency once a tensor
GATHER_UNITS = ("layer", "tensor")
# backward work over forward, by op kind (module docstring)
BACKWARD = {OpKind.MATMUL: 2.0, OpKind.ATTENTION: 2.5, OpKind.ELEMENTWISE: 2.0, OpKind.NORM: 2.0,
            OpKind.EMBEDDING: 1.0, OpKind.COMM: 1.0}
# The attention kernel a run uses, against the engine profile's (modern fused attention): (forward, backward) time
# over FlashAttention-2's, and whether it issues Ampere's synchronous MMA (on a device whose matrix peak needs
# asynchronous MMA, Hopper and later, it then runs at the `fa2` engine profile's sync_mma_fraction: the FlashAttention-3
# paper's "FlashAttention-2 achieving only 35% utilization on the H100", arXiv:2407.08608). Dao, "FlashAttention-2",
# 2023 (https://arxiv.org/abs/2307.08691), sec. 4.1, on an A100: FlashAttention-2 is "around 2x faster than
# FlashAttention", "around 1.3-1.5x faster than FlashAttention in Triton in the forward pass and around 2x faster in
# the backward pass" (midpoints taken). `engine`: the profile's own attention, as inference costs it.
ATTENTION_KERNELS = {"engine": (1.0, 1.0, False), "fa2": (1.0, 1.0, True), "fa1": (2.0, 2.0, True),
                     "triton": (1.4, 2.0, True), "unfused": (1.0, 1.0, False)}
# `unfused`: standard attention, the scores written out: a GEMM over every query-key pair, the (masked) softmax as a
# memory-bound pass, the context GEMM; the backward reruns each by its kind, and the activations keep the softmax
# output (Korthikanti et al.'s 5 a s^2 b term) unless recomputed. Training before FlashAttention (2022) ran it
# (Megatron-LM's fused scale-mask-softmax kernel).
UNFUSED_OPS = (".scores", ".softmax", ".context")
# The loss's memory passes, bytes a logit (forward, backward) beyond the logits' 16-bit GEMM output:
# - fused: one pass over the FP32 logits forward (read them, write the probabilities: 4 + 4), one backward (read the
#   probabilities, write the 16-bit gradient: 4 + 2);
# - megatron: Megatron-LM's and GPT-NeoX's vocab-parallel cross-entropy (megatron/mpu/cross_entropy.py) over
#   `output.float()` (megatron/model/gpt_model.py; fp16_lm_cross_entropy off, the default): the cast (read 2, write
#   4), max (read 4), sub_ (4 + 4), exp (4 + 4), sum (4), div_ (4 + 4) forward, 38; mul_ (4 + 4) and the cast's
#   gradient back to 16 bits (4 + 2) backward, 14.
# - xentropy: flash-attn's fused cross-entropy kernel (flash_attn.losses.cross_entropy, llm-foundry's
#   `fused_crossentropy`) on the 16-bit logits: read them forward (2; the log-sum-exp kept per position), read them
#   and write their gradient backward (2 + 2).
# - torch: PyTorch's F.cross_entropy on 16-bit logits under CUDA autocast, which runs it in FP32 (an eager model's
#   loss, as benchmarks/gpu_measure.py --only train runs it): the cast (read 2, write 4), log_softmax (4 + 4; its
#   max and sum passes over a row re-read it from on-chip memory) forward, 14; nll_loss's backward writes the dense
#   gradient of the log-probabilities (4), log_softmax's backward reads it and the saved output and writes the input
#   gradient (4 + 4 + 4), the cast's backward (4 + 2), 22.
LOSS_KERNELS = {"fused": (8.0, 6.0), "megatron": (38.0, 14.0), "xentropy": (2.0, 4.0), "torch": (14.0, 22.0)}
# LoRA adapters on the projections of attention and MLP (QLoRA's "all linear layers", Dettmers et al. 2023,
# https://arxiv.org/abs/2305.14314, sec. 4)


@dataclass(frozen=True)
class TrainConfig:
    """One training job: the layout (tp x pp x cp x dp devices, ep within them), the batch (global, and micro-batch a
    device), the precision recipe, the optimizer and ZeRO stage, recomputation, and LoRA (rank, quantised base)."""

    seq_len: int
    global_batch: int
    micro_batch: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    dp: int = 1
    zero: int = 0
    recompute: str = "none"
    sequence_parallel: bool | None = None  # default: on with tp > 1 (Megatron's --sequence-parallel)
    precision: str = "bf16"
    optimizer: str = "adamw"
    interleave: int = 1  # model chunks a device (the interleaved 1F1B schedule)
    lora_rank: int = 0
    quantize_base: str | None = None  # the frozen base's format under LoRA (QLoRA: e.g. q4_0, nf4 ~ q4_0)
    dropout: bool = False  # dropout masks kept for the backward (GPT-style runs with dropout > 0)
    master_weights: bool = True  # False: pure 16-bit training, the optimizer's states in the weights' format
    optimizer_in_backward: bool = False  # each parameter stepped and its gradient freed as the backward reaches it
    paged_optimizer: bool = False  # states in unified memory (bitsandbytes' paged optimizers): on the host if short
    loss_chunks: int = 1  # the loss computed over this many chunks of positions: 1 / chunks of the FP32 logits held
    attention_kernel: str = "engine"  # ATTENTION_KERNELS: fa2, fa1, triton (FlashAttention in Triton), engine
    loss_kernel: str = "fused"  # LOSS_KERNELS: the cross-entropy's passes over the logits
    gather_unit: str = "layer"  # GATHER_UNITS: what ZeRO-3 / FSDP gathers at a time

    def __post_init__(self) -> None:
        for name in ("seq_len", "global_batch", "micro_batch", "tp", "pp", "cp", "ep", "dp", "interleave",
                     "loss_chunks"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise PerfmodelError(f"--{name.replace('_', '-')} must be a whole number >= 1; got {v!r}")
        if self.zero not in (0, 1, 2, 3):
            raise PerfmodelError(f"--zero must be 0, 1, 2 or 3; got {self.zero!r}")
        for name, allowed in (("recompute", RECOMPUTE), ("precision", PRECISIONS), ("optimizer", OPTIMIZERS),
                              ("attention_kernel", tuple(ATTENTION_KERNELS)), ("loss_kernel", tuple(LOSS_KERNELS)),
                              ("gather_unit", GATHER_UNITS)):
            v = getattr(self, name)
            if v not in allowed:
                raise PerfmodelError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}; got {v!r}."
                                     f"{did_you_mean(str(v), list(allowed))}")
        if not isinstance(self.lora_rank, (int, np.integer)) or self.lora_rank < 0:
            raise PerfmodelError(f"--lora must be a whole number >= 0 (the adapters' rank); got {self.lora_rank!r}")
        if self.quantize_base is not None and not self.lora_rank:
            raise PerfmodelError("--quantize-base quantises the frozen base of a LoRA run: give --lora R with it")
        if self.optimizer_in_backward and self.global_batch != self.dp * self.micro_batch:
            raise PerfmodelError("--optimizer-in-backward steps each parameter as its gradient arrives, so it cannot "
                                 "accumulate gradients: --global-batch must be dp x --micro-batch")
        if not self.master_weights and self.precision not in ("bf16", "fp16"):
            raise PerfmodelError(f"--no-master-weights is pure 16-bit training: --precision bf16 or fp16; got "
                                 f"{self.precision!r}")
        if self.global_batch % (self.dp * self.micro_batch):
            raise PerfmodelError(f"--global-batch ({self.global_batch}) must be a multiple of dp x micro-batch "
                                 f"({self.dp} x {self.micro_batch}): each data-parallel rank runs whole "
                                 f"micro-batches")

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def micro_batches(self) -> int:
        """Micro-batches a pipeline runs a step (gradient accumulation steps)."""
        return self.global_batch // (self.dp * self.micro_batch)

    @property
    def sp(self) -> bool:
        return self.tp > 1 if self.sequence_parallel is None else bool(self.sequence_parallel)


# Memory --------------------------------------------------------------------------------------------------------------

def state_bytes_per_param(precision: str, optimizer: str, master_weights: bool = True) -> dict[str, float]:
    """Weights, gradients and optimizer states a parameter, bytes (mixed precision; FP32 training keeps no master
    copy: 4 + 4 + the optimizer's states less its master copy; FP8 keeps BF16 weights and an FP8 copy of the GEMM
    weights, 1 byte more, an estimate of Transformer Engine's recipe; pure 16-bit training, `master_weights` False,
    2 + 2 + PURE_OPTIMIZER_BYTES)."""
    if not master_weights:
        return {"weights": 2.0, "gradients": 2.0, "optimizer": PURE_OPTIMIZER_BYTES[optimizer]}
    k = OPTIMIZER_BYTES[optimizer]
    if precision == "fp32":
        return {"weights": 4.0, "gradients": 4.0, "optimizer": k - 4.0}
    return {"weights": 3.0 if precision == "fp8" else 2.0, "gradients": 2.0, "optimizer": k}


def zero_shard(states: dict[str, float], params: float, zero: int, dp: int) -> dict[str, float]:
    """Bytes a device holds of `params` parameters' states under ZeRO `zero` over `dp` ranks (ZeRO paper, sec. 5:
    stage 1 the optimizer states, 2 and the gradients, 3 and the weights)."""
    if np.ndim(zero) or np.ndim(dp):  # arrays of layouts
        div = {k: np.where(np.asarray(zero) >= z, dp, 1) for k, z in (("optimizer", 1), ("gradients", 2),
                                                                         ("weights", 3))}
    else:
        div = {"optimizer": dp if zero >= 1 else 1, "gradients": dp if zero >= 2 else 1,
               "weights": dp if zero >= 3 else 1}
    return {k: params * v / div[k] for k, v in states.items()}


def layer_activation_bytes(model: ModelSpec, seq: Any, batch: Any, tp: Any = 1, sp: Any = False,
                           recompute: Any = "none", flash: bool = True, dropout: bool = False,
                           act_bytes: float = 2.0) -> Any:
    """Bytes of activations one transformer layer keeps for the backward (Korthikanti et al. 2022, sec. 4.1, tensor
    by tensor; module docstring). With a GPT layer (MHA, 4h GELU MLP), dropout and no flash attention, at 16 bits:
    s b h (34 + 5 a s / h). `seq`, `batch`, `tp`, `sp` and `recompute` may be arrays (one value a layout)."""
    s, h, a = np.asarray(seq, dtype=float), float(model.d_model), float(model.n_heads)
    b = np.asarray(batch, dtype=float)
    tp, sp, rc = np.asarray(tp), np.asarray(sp, dtype=bool), np.asarray(recompute)
    unit = act_bytes / 2.0  # the paper's counts are at 2 bytes
    inputs_only = 2.0 * s * b * h / np.where(sp, tp, 1) * unit  # full recomputation: the layer's input, for the rerun
    shape = model.attention_shape()
    hq = float(model.n_heads * model.dim_head)
    hkv = float(shape.n_kv_heads * model.dim_head) if not model.is_mla else hq
    mask = 1.0 if dropout else 0.0
    # attention block: the QKV input (2sbh, whole without SP), Q and K for the scores, V, the projection's input
    # (the attention output), a dropout mask after the projection (whole without SP)
    attn_whole = 2.0 * s * b * h + mask * s * b * h
    attn_split = 2.0 * s * b * hq + 2.0 * s * b * hkv + 2.0 * s * b * hkv + 2.0 * s * b * hq
    # without flash attention and recomputation: the softmax output (2), with dropout its mask (1) and output (2)
    scores = 0.0 if flash else np.where(rc == "none", (5.0 if dropout else 2.0) * a * s * s * b, 0.0)
    # MLP: its input (2sbh, whole without SP), the up projections' outputs (gated: gate and up), the activation's
    # output (the down projection's input), a dropout mask (whole without SP)
    f = float(model.d_ff if not model.is_moe else (model.expert_d_ff or model.d_ff))
    active = 1.0 if not model.is_moe else float(model.experts_per_token) + (1.0 if model.shared_d_ff else 0.0)
    up = (4.0 if model.gated_mlp else 2.0) * s * b * f * active
    mlp_whole = 2.0 * s * b * h + mask * s * b * h
    mlp_split = up + 2.0 * s * b * f * active
    norms = 4.0 * s * b * h  # the two norms' inputs (whole without SP)
    whole, split = attn_whole + mlp_whole + norms, attn_split + mlp_split + scores
    kept = np.where(sp, (whole + split) / tp, whole + split / tp) * unit
    out = np.where(rc == "full", inputs_only, kept)
    return float(out) if out.ndim == 0 else out


# Time ----------------------------------------------------------------------------------------------------------------

@dataclass
class TrainEstimate:
    model: ModelSpec
    device: Device
    config: TrainConfig
    step_time_s: float
    tokens_per_s: float
    mfu: float
    hfu: float
    memory: dict[str, float]  # per device, bytes, by kind, and total
    capacity_bytes: float | None
    breakdown: dict[str, float]  # seconds of a step: compute, bubble, exposed communication, optimizer
    model_flops_per_token: float
    peak_flops_per_s: float  # a device's matrix peak at the training precision (what MFU divides by)
    time_to_train_s: float | None = None
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.capacity_bytes is None or self.memory["total"] <= self.capacity_bytes

    def capacity_message(self) -> str:
        """Why it does not fit, and what would."""
        mem = self.memory
        parts = ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in mem.items() if k != "total")
        what = f"LoRA rank {self.config.lora_rank}" if self.config.lora_rank else "full training"
        would = ("; ".join(self.suggestions) if self.suggestions else
                 "none of a higher ZeRO stage, recomputation, LoRA or up to 512x the devices")
        return (f"{self.model.id} ({what}) does not fit on {self.device.id}: it needs {mem['total'] / 1e9:.1f} GB per "
                f"device ({parts}) but has {(self.capacity_bytes or 0) / 1e9:.1f} GB. Would fit: {would}. "
                f"(--ignore-capacity prints the estimate anyway)")

    def summary(self) -> str:
        c, b = self.config, self.breakdown
        what = f"LoRA rank {c.lora_rank}" + (f" on a {c.quantize_base} base" if c.quantize_base else "") \
            if c.lora_rank else "full training"
        lines = [f"{self.model.name or self.model.id}, {what}, on {c.devices} x {self.device.name or self.device.id}",
                 f"  tp {c.tp}, pp {c.pp}, cp {c.cp}, ep {c.ep}, dp {c.dp}, ZeRO {c.zero}"
                 f"{', sequence parallel' if c.sp and c.tp > 1 else ''}; seq {c.seq_len}, global batch "
                 f"{c.global_batch} ({c.micro_batches} micro-batches of {c.micro_batch}); {c.precision}, "
                 f"{c.optimizer}, recompute {c.recompute}",
                 "",
                 f"  step time          {self.step_time_s:12.3f} s   (compute {b['compute']:.3f} s, pipeline bubble "
                 f"{b['bubble']:.3f} s, exposed communication {b['communication']:.3f} s, optimizer "
                 f"{b['optimizer']:.3f} s)",
                 f"  tokens/s           {self.tokens_per_s:12,.0f}     ({self.tokens_per_s / c.devices:,.0f} a device)",
                 f"  MFU / HFU          {self.mfu:11.1%} / {self.hfu:.1%}"]
        if self.time_to_train_s is not None:
            lines.append(f"  time to train      {self.time_to_train_s / 86400:12.2f} days")
        mem = self.memory
        cap = "" if self.capacity_bytes is None else f" of {self.capacity_bytes / 1e9:.1f} GB"
        lines += ["", "  memory per device: " + " + ".join(f"{k} {v / 1e9:.2f} GB" for k, v in mem.items()
                                                        if k != "total")
                  + f" = {mem['total'] / 1e9:.2f} GB{cap} ({'fits' if self.fits else 'does not fit'})"]
        if not self.fits:
            lines.append("  would fit: " + ("; ".join(self.suggestions) if self.suggestions else
                                           "nothing tried (more devices with --tp, --pp or a smaller --seq)"))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        out = {"model": self.model.id, "hardware": self.device.id, "devices": c.devices,
               "layout": {"tp": c.tp, "pp": c.pp, "cp": c.cp, "ep": c.ep, "dp": c.dp, "zero": c.zero,
                          "sequence_parallel": c.sp, "interleave": c.interleave},
               "seq_len": c.seq_len, "global_batch": c.global_batch, "micro_batch": c.micro_batch,
               "micro_batches": c.micro_batches, "precision": c.precision, "optimizer": c.optimizer,
               "recompute": c.recompute, "lora_rank": c.lora_rank, "quantize_base": c.quantize_base,
               "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s, "mfu": self.mfu, "hfu": self.hfu,
               "model_flops_per_token": self.model_flops_per_token,
               "memory": {**{f"{k}_bytes": v for k, v in self.memory.items() if k != "total"},
                          "total_bytes": self.memory["total"], "capacity_bytes": self.capacity_bytes,
                          "fits": self.fits},
               "breakdown": {f"{k}_s": v for k, v in self.breakdown.items()},
               "notes": self.notes}
        if self.time_to_train_s is not None:
            out["time_to_train_s"] = self.time_to_train_s
        if self.suggestions:
            out["would_fit"] = self.suggestions
        return out


def model_flops_per_token(model: ModelSpec, seq: int, weight_gradients: bool = True, causal: bool = True) -> float:
    """6 N + 12 L H Q T (PaLM appendix B): N the parameters a token's matmuls use (active experts only, the LM head
    included, the embedding table and norms not), attention over the sequence T; `causal` (the default) halves the
    attention term to the pairs a causal model computes (6 L H Q T), PaLM's count keeps all T^2 (and so its MFU of a
    long-sequence causal run can pass 1). Without weight gradients (LoRA's frozen base): 4 N, the forward and the
    input gradients."""
    br = model.param_breakdown()
    n = model.params_active() - br.get("embedding", 0) - br.get("norms", 0)
    if model.tie_embeddings:
        n += model.vocab_size * model.d_model  # the tied table is the LM head's matrix too
    attention = (6.0 if causal else 12.0) * model.n_layers * model.n_heads * model.dim_head * seq
    return (6.0 if weight_gradients else 4.0) * n + attention


def lora_params(model: ModelSpec, rank: int) -> float:
    """Adapter parameters: rank x (d_in + d_out) on each projection of attention (q, k, v, o) and MLP (gate, up,
    down; each routed expert's too), every layer."""
    d, hq = model.d_model, model.n_heads * model.dim_head
    hkv = model.attention_shape().n_kv_heads * model.dim_head
    attn = (d + hq) + 2 * (d + hkv) + (hq + d)
    f = (model.expert_d_ff or model.d_ff) if model.is_moe else model.d_ff
    mats = 3 if model.gated_mlp else 2
    mlp = mats * (d + f) * (model.n_experts if model.is_moe else 1)
    return float(rank * model.n_layers * (attn + mlp))


def _group_fabric(fab: Fabric, ranks: int, stride: int) -> Fabric:
    """The fabric one collective group sees when its `ranks` ranks sit `stride` apart in a dense placement
    (Megatron's order, tensor innermost: a data-parallel group's ranks stride tp x cp, the ranks holding the same
    experts max(tp, ep) x cp, a pipeline pair tp x cp x dp). The g = devices_per_node / stride of them that share a
    node (1 to ranks) talk over its fabric (on a mesh, over the links among them); a ring that leaves the node runs a
    channel a NIC, each rank's own (NCCL on rail-optimised nodes), so the group has g / devices_per_node of the
    node's network: all of it when the group fills the node, one NIC when a rank is alone in its node."""
    from dataclasses import replace

    g = max(1, min(ranks, fab.devices_per_node // max(stride, 1)))
    net = fab.net_bytes_per_s or fab.intra_bytes_per_s
    return replace(fab, kind="switch" if fab.kind == "mesh" else fab.kind, devices_per_node=g,
                   intra_bytes_per_s=fab.intra_for(g) if g > 1 else fab.intra_bytes_per_s,
                   net_bytes_per_s=net * g / fab.devices_per_node)


def _collective_s(device: Device, eff: Efficiency, comm: Comm, ranks: np.ndarray, stride: np.ndarray,
                  nbytes: np.ndarray) -> np.ndarray:
    """Seconds of one collective of `nbytes` (its whole buffer: an all-gather's output, a reduce-scatter's input)
    over each group, by NCCL's cost model (perfmodel.collectives: every algorithm and protocol, the cheapest at the
    size, latency and bandwidth as NCCL's tuner has them) on the group's share of the fabric (_group_fabric); each
    distinct (ranks, stride, bytes) costed once."""
    fab = fabric_of(device)
    ranks, stride, nbytes = np.broadcast_arrays(np.asarray(ranks, dtype=np.int64),
                                                np.asarray(stride, dtype=np.int64), np.asarray(nbytes, dtype=float))
    keys = np.stack([ranks.ravel().astype(float), stride.ravel().astype(float), nbytes.ravel()])
    uniq, back = np.unique(keys, axis=1, return_inverse=True)
    cands: dict[tuple[int, int], list] = {}
    times = np.zeros(uniq.shape[1])
    for i, (r, st, b) in enumerate(uniq.T):
        if r <= 1 or b <= 0:
            continue
        key = (int(r), int(st))
        if key not in cands:
            cands[key] = nccl_candidates(comm, key[0], _group_fabric(fab, *key), eff.interconnect)
        times[i] = choose(cands[key], b)[1] if cands[key] else b / max(fab.intra_bytes_per_s * eff.interconnect, 1.0)
    return times[back.ravel()].reshape(ranks.shape)


def _bucketed_s(device: Device, eff: Efficiency, comm: Comm, ranks: np.ndarray, stride: np.ndarray,
                nbytes: np.ndarray, bucket: float) -> tuple[np.ndarray, np.ndarray]:
    """(all buckets', the last bucket's) seconds of `nbytes` synchronised in buckets of `bucket` bytes, one
    collective each."""
    nbytes = np.asarray(nbytes, dtype=float)
    full = np.floor(nbytes / bucket)
    rest = nbytes - full * bucket
    one = _collective_s(device, eff, comm, ranks, stride, np.full(nbytes.shape, bucket))
    tail = _collective_s(device, eff, comm, ranks, stride, rest)
    return full * one + tail, np.where(rest > 0, tail, np.where(full > 0, one, 0.0))


def train(model: str | ModelSpec, hardware: str | Device, config: TrainConfig, engine: str | None = None,
          efficiency: Efficiency | None = None, tokens: float | None = None) -> TrainEstimate:
    """Step time, throughput, MFU / HFU and memory per device of `config` (module docstring)."""
    m, d = load_model(model), load_device(hardware)
    c = config
    _check(m, c.ep, c.pp, c.tp, c.dp)
    eff = efficiency or efficiency_for(d, engine)[0]
    job = _Job.of(m, d, c)
    notes: list[str] = []
    if c.quantize_base and c.quantize_base.lower() == "nf4":
        notes.append("nf4 (QLoRA's 4-bit NormalFloat) is counted as int4: 4 bits a weight, its block constants "
                     "(0.127 bits with double quantisation) left out")
    lay = {k: np.array([v]) for k, v in (("tp", c.tp), ("pp", c.pp), ("cp", c.cp), ("ep", c.ep), ("dp", c.dp),
                                         ("zero", c.zero), ("micro_batch", c.micro_batch),
                                         ("interleave", c.interleave))}
    lay["sp"] = np.array([c.sp])
    lay["recompute"] = np.array([c.recompute])
    r = steps(m, d, eff, job, lay)
    if r["optimizer_on_host"][0]:
        notes.append("the paged optimizer's states do not fit beside the rest: they live on the host and are paged "
                     "in and out over the host link every step (in the optimizer time)")
    mem = {k: float(r[f"{k}_bytes"][0]) for k in ("weights", "gradients", "optimizer", "activations", "total")}
    est = TrainEstimate(m, d, c, float(r["step_time_s"][0]), float(r["tokens_per_s"][0]), float(r["mfu"][0]),
                        float(r["hfu"][0]), mem, d.main_memory.capacity_bytes,
                        {k: float(r[f"{k}_s"][0]) for k in ("compute", "bubble", "communication", "optimizer")},
                        job.flops_per_token, job.peak,
                        None if tokens is None else tokens / float(r["tokens_per_s"][0]), notes=notes)
    if not est.fits:
        est.suggestions = would_fit(m, d, c, engine, eff)
    return est


def _check(m: ModelSpec, ep: int, pp: int, tp: int = 1, dp: int = 1) -> None:
    if m.arch != "decoder":
        raise PerfmodelError(f"training is modelled for decoder-only models; {m.id} is {m.arch.replace('_', '-')}")
    if ep > 1 and not m.is_moe:
        raise PerfmodelError(f"--ep spreads an MoE model's experts; {m.id} has none")
    if ep > 1 and (max(tp, ep) % min(tp, ep) or ep > tp * dp):
        raise PerfmodelError(f"--ep ({ep}) must divide or be divided by --tp ({tp}) and be at most tp x dp "
                             f"({tp * dp}): expert ranks are tensor or data-parallel ranks")
    if pp > m.n_layers:
        raise PerfmodelError(f"--pp ({pp}) exceeds {m.id}'s {m.n_layers} layers")


@dataclass(frozen=True)
class _Job:
    """What a search keeps fixed: the job's TrainConfig (its sequence, global batch, precision recipe, optimizer,
    LoRA, kernels; its layout fields are the searched arrays' business, not read here) and what follows from it
    (formats, the model FLOPs a token, the peak MFU divides by)."""

    c: TrainConfig
    act: DType
    gemm: DType | None
    base: DType
    flops_per_token: float
    peak: float

    @classmethod
    def of(cls, m: ModelSpec, d: Device, c: TrainConfig) -> "_Job":
        prec = c.precision
        act = DType.parse("bf16" if prec in ("bf16", "fp8") else prec)
        gemm = DType.parse("fp8") if prec == "fp8" else None
        if gemm is not None and d.peak_flops_per_s("matrix", gemm.compute) is None:
            raise PerfmodelError(f"--precision fp8 needs FP8 matrix units; {d.id} has none stated")
        peak = d.peak_flops_per_s("matrix", (gemm or act).compute)
        if peak is None:
            raise PerfmodelError(f"{d.id} states no matrix peak at {(gemm or act).value}: MFU needs one")
        base = _base_format(c.quantize_base) if c.quantize_base else act
        return cls(c, act, gemm, base, model_flops_per_token(m, c.seq_len, weight_gradients=not c.lora_rank), peak)


def _passes(m: ModelSpec, d: Device, eff: Efficiency, job: _Job, tp: int, cp: int, ep: int,
            micro: np.ndarray) -> dict[str, np.ndarray]:
    """Forward, backward and attention seconds of one micro-batch of each size in `micro`, at one (tp, cp, ep): the
    prompt pass of inference with every position's logits (one vectorised evaluation), the attention at the job's
    kernel, the backward by op kind, FP8's casts, the loss's passes and the host's overheads; `cast_bytes` the bytes
    the FP8 casts move."""
    # with ep > tp an MoE layer's expert ranks span ep / tp data-parallel ranks: the pass is theirs together, each
    # rank attending its own micro-batch (inference's data-parallel attention replicas), the experts seeing all
    # their tokens, each rank's sent to them and back by the all-to-alls
    replicas = max(tp, ep) // tp
    wl = Workload(batch=int(micro[0]) * replicas, prompt_len=job.c.seq_len, gen_len=1, weights=job.base, kv=job.act,
                  act=job.act, gemm=job.gemm, tp=tp, cp=cp, ep=ep, logits="all", devices=None,
                  attention="unfused" if job.c.attention_kernel == "unfused" else "flash")
    b = micro.astype(float)
    mach = Machine(d, eff, Parallel())
    fp8 = job.gemm is not None
    ev = evaluate(m, d, wl, eff, b * replicas, np.full(len(b), float(job.c.seq_len)), np.ones(len(b)), detail=fp8)
    pre = ev.prefill
    times = np.asarray(pre.values["time_s"], dtype=float).reshape(len(pre.ops), len(b))
    kinds = [op.kind for op in pre.ops]
    attn = np.array([k == OpKind.ATTENTION or op.name.endswith(UNFUSED_OPS) for k, op in zip(kinds, pre.ops)])
    fwd_x, bwd_x, sync = ATTENTION_KERNELS[job.c.attention_kernel]
    if sync and d.compute.async_mma:  # a kernel of Ampere's MMA on a part whose peak needs asynchronous MMA
        slow = eff.model_copy(update={"sync_mma_fraction": efficiency_for(d, "fa2")[0].sync_mma_fraction})
        again = evaluate(m, d, wl, slow, b * replicas, np.full(len(b), float(job.c.seq_len)), np.ones(len(b)),
                         detail=False).prefill
        times[attn] = np.asarray(again.values["time_s"], dtype=float).reshape(len(again.ops), len(b))[attn]
    times[attn] *= fwd_x
    cast_fwd = cast_bwd = cast_bytes = np.zeros(len(b))
    if fp8:
        # FP8 GEMMs (Transformer Engine) take FP8 operands in both layouts (Hopper's FP8 MMA reads them K-major): each
        # weight GEMM's input and weight are cast from 16 bits and transposed forward (read 2 bytes, write 1 + 1 an
        # element: twice their 16-bit bytes), and the backward's output gradient likewise; memory-bound passes
        v = ev.prefill.values
        gemm = np.array([k == OpKind.MATMUL for k in kinds]) & ~attn
        fwd_bytes = 2.0 * (v["act_in_bytes"][gemm] + v["weight_bytes"][gemm]).reshape(-1, len(b))
        bwd_bytes = 2.0 * np.asarray(v["act_out_bytes"][gemm]).reshape(-1, len(b))
        cast_fwd = (fwd_bytes / mach.bandwidth_for(fwd_bytes)).sum(axis=0)
        cast_bwd = (bwd_bytes / mach.bandwidth_for(bwd_bytes)).sum(axis=0)
        cast_bytes = fwd_bytes.sum(axis=0) + bwd_bytes.sum(axis=0)
    host = eff.step_overhead_s + b * eff.token_overhead_s
    # the loss: softmax cross-entropy over the vocabulary of every position, on the FP32 logits (vocabulary-
    # parallel over tp): memory-bound elementwise passes the prompt pass of inference does not have (LOSS_KERNELS)
    logit_elems = job.c.seq_len / cp * b * m.vocab_size / tp
    fwd_b, bwd_b = LOSS_KERNELS[job.c.loss_kernel]
    loss_fwd, loss_bwd = logit_elems * fwd_b, logit_elems * (bwd_b - 2.0 + job.act.bytes)
    frozen = job.c.lora_rank > 0  # no weight gradients for the frozen base
    # (attention's own GEMMs, unfused, multiply activations: their gradients are needed whatever is frozen)
    factor = np.array([1.0 if (k == OpKind.MATMUL and frozen and not a) else BACKWARD.get(k, 2.0)
                       for k, a in zip(kinds, attn)])
    factor[attn] *= bwd_x / fwd_x  # the backward's slowdown over FlashAttention-2's, on the forward's time
    return {"fwd": times.sum(axis=0) + host + loss_fwd / mach.bandwidth_for(loss_fwd) + cast_fwd,
            "bwd": factor @ times + host + loss_bwd / mach.bandwidth_for(loss_bwd) + cast_bwd,
            "attn": times[attn].sum(axis=0), "cast_bytes": cast_bytes}


def steps(m: ModelSpec, d: Device, eff: Efficiency, job: _Job, lay: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Step time, its parts, memory by kind, MFU and HFU of every layout in `lay` (arrays of one length: tp, pp, cp,
    ep, dp, zero, micro_batch, interleave, sp, recompute), vectorised: the forward is evaluated once per (tp, cp, ep)
    for all its micro-batch sizes, everything else is array arithmetic over the layouts (module docstring)."""
    tp, pp, cp, ep, dp = (np.asarray(lay[k], dtype=np.int64) for k in ("tp", "pp", "cp", "ep", "dp"))
    zero, mb, v = (np.asarray(lay[k], dtype=np.int64) for k in ("zero", "micro_batch", "interleave"))
    sp, rc = np.asarray(lay["sp"], dtype=bool), np.asarray(lay["recompute"])
    n = len(tp)
    fwd, bwd, attn = np.empty(n), np.empty(n), np.empty(n)
    keys = np.stack([tp, cp, ep])
    for key in np.unique(keys, axis=1).T:  # one lowering a (tp, cp, ep)
        sel = np.flatnonzero((keys == key[:, None]).all(axis=0))
        sizes, back = np.unique(mb[sel], return_inverse=True)
        t = _passes(m, d, eff, job, int(key[0]), int(key[1]), int(key[2]), sizes)
        fwd[sel], bwd[sel], attn[sel] = t["fwd"][back], t["bwd"][back], t["attn"][back]
    devices = tp * pp * cp * dp
    micro_batches = job.c.global_batch // (dp * mb)
    t_f, t_b = fwd / pp, bwd / pp
    t_rc = np.where(rc == "full", fwd, np.where(rc == "selective", attn, 0.0)) / pp
    slot = t_f + t_b + t_rc
    compute = micro_batches * slot
    bubble = (pp - 1) / v * slot
    # pipeline sends: a micro-batch's activations forward and their gradients back, at each stage boundary
    xfer = 2.0 * job.c.seq_len * mb * m.d_model * job.act.bytes / np.where(sp, tp, 1) / cp
    p2p = np.where(pp > 1, micro_batches * 2.0 * _collective_s(d, eff, Comm.P2P, np.full(n, 2), tp * cp * dp, xfer),
                   0.0)
    # parameters and their states on a device
    br = m.param_breakdown()
    total = float(m.params_total())
    expert = float(br.get("experts", 0))
    dense = (total - expert) / (tp * pp)
    experts = expert / (np.maximum(tp, ep) * pp)  # ep ranks, each expert split over the tp / ep left
    per_dev = dense + experts
    # an expert's replicas: the data-parallel ranks over the ep / tp of them that share one copy of the experts
    dp_experts = dp * tp // np.maximum(tp, ep)
    states = state_bytes_per_param(job.c.precision, job.c.optimizer, job.c.master_weights)
    opt_table = OPTIMIZER_BYTES if job.c.master_weights else PURE_OPTIMIZER_BYTES
    frozen = job.c.lora_rank > 0
    if frozen:
        base_bytes = job.base.bytes if job.c.quantize_base else states["weights"]
        adapters = lora_params(m, job.c.lora_rank) / (tp * pp)
        mem = zero_shard({"gradients": 2.0, "optimizer": opt_table[job.c.optimizer]}, adapters, zero, dp)
        mem = {"weights": (per_dev * base_bytes + adapters * 2.0) / np.where(zero >= 3, dp, 1), **mem}
        trained = adapters
    else:  # ZeRO shards each parameter's states over its replicas
        mem = zero_shard(states, dense, zero, dp)
        mem = {k: v + w for (k, v), w in zip(mem.items(), zero_shard(states, experts, zero, dp_experts).values())}
        trained = per_dev
    first_stage_layers = np.ceil(m.n_layers / pp)
    per_layer = layer_activation_bytes(m, job.c.seq_len // cp, mb, tp, sp, rc,
                                       flash=job.c.attention_kernel != "unfused", dropout=job.c.dropout,
                                       act_bytes=job.act.bytes)
    in_flight = np.minimum(pp, micro_batches).astype(float)  # 1F1B: the first stage holds p micro-batches'
    # the interleaved schedule holds (1 + (p - 1) / (p v)) times as much (Korthikanti 4.2.3)
    in_flight = np.where(v > 1, in_flight * (1.0 + (pp - 1) / (pp * v)), in_flight)
    logits = job.c.seq_len / cp * mb * m.vocab_size / tp * 4.0 / job.c.loss_chunks
    held = per_layer * first_stage_layers * in_flight
    # the last stage: fewer micro-batches in flight, the logits besides
    mem["activations"] = np.where(pp == 1, held + logits, np.maximum(held, per_layer * first_stage_layers + logits))
    if job.c.optimizer_in_backward and not frozen:
        # each parameter is stepped as its gradient arrives and the gradient freed: one tensor's gradient at a time,
        # at most the largest (the embedding or LM head, an MLP matrix)
        f = m.expert_d_ff or m.d_ff if m.is_moe else m.d_ff
        largest = max(m.vocab_size, f, m.n_heads * m.dim_head) * m.d_model / tp
        mem["gradients"] = np.minimum(mem["gradients"], largest * states["gradients"])
    mem["total"] = mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"]
    paged_out = np.zeros(n, dtype=bool)
    cap = d.main_memory.capacity_bytes
    if job.c.paged_optimizer and cap is not None:
        # paged states (unified memory) stay on the device while everything fits; past that the driver keeps them
        # on the host and pages them in for the step and out again over the host link every step (both directions
        # at once: PCIe is full duplex)
        paged_out = mem["total"] > cap
        page_s = np.where(paged_out, mem["optimizer"] / host_link_bytes_per_s(d)[0], 0.0)
        mem["total"] = np.where(paged_out, mem["total"] - mem["optimizer"], mem["total"])
        mem["optimizer"] = np.where(paged_out, 0.0, mem["optimizer"])
    else:
        page_s = np.zeros(n)
    # data-parallel gradient synchronisation (and ZeRO-3's weight gathers) by NCCL's cost model over each group's
    # share of the fabric: the dense parameters' over the dp ranks (tp x cp apart), the experts' over the ranks that
    # hold the same experts (dp_experts, max(tp, ep) x cp apart)
    groups = [(dp, tp * cp, (adapters if frozen else dense) * 2.0,
               per_dev * base_bytes + adapters * 2.0 if frozen else dense * 2.0)]
    if not frozen and expert > 0:
        groups.append((dp_experts, np.maximum(tp, ep) * cp, experts * 2.0, experts * 2.0))
    # DDP and ZeRO 1/2: the gradients all-reduced (reduce-scatter + all-gather: the same bytes) in buckets (PyTorch
    # DDP's 25 MiB), overlapped with the last micro-batch's backward but for the last bucket
    ddp_all = ddp_last = 0.0
    # FSDP / ZeRO-3: each layer's weights gathered for every micro-batch's forward and again for its backward, its
    # gradients reduce-scattered: three collectives a layer a micro-batch, prefetched under the compute; the last
    # layer's reduce-scatter is exposed
    # (`tensor`: a collective each of a layer's parameter tensors, of their mean size)
    stage_layers = np.ceil(m.n_layers / pp)
    calls = stage_layers * (layer_tensors(m) if job.c.gather_unit == "tensor" else 1)
    per_mb = last_rs = 0.0
    for ranks, stride, grads, weights in groups:
        a, last = _bucketed_s(d, eff, Comm.ALL_REDUCE, ranks, stride, grads, DDP_BUCKET_BYTES)
        ddp_all, ddp_last = ddp_all + a, np.maximum(ddp_last, last)
        rs = _collective_s(d, eff, Comm.REDUCE_SCATTER, ranks, stride, grads / calls)
        per_mb = per_mb + calls * (2.0 * _collective_s(d, eff, Comm.ALL_GATHER, ranks, stride, weights / calls) + rs)
        last_rs = np.maximum(last_rs, rs)
    sharded = micro_batches * np.maximum(per_mb - slot, 0.0) + last_rs
    ddp = np.maximum(ddp_all - t_b, ddp_last)
    exposed = np.where(dp > 1, np.where(zero >= 3, sharded, ddp), 0.0)
    # optimizer step: memory-bound over the device's share of the trained parameters
    shard = trained / np.where(zero >= 1, dp, 1) if frozen else (
        dense / np.where(zero >= 1, dp, 1) + experts / np.where(zero >= 1, dp_experts, 1))
    opt_bytes = shard * (OPTIMIZER_TRAFFIC if job.c.master_weights else PURE_OPTIMIZER_TRAFFIC)[job.c.optimizer]
    mach = Machine(d, eff, Parallel())
    optimizer_s = np.where(opt_bytes > 0, opt_bytes / mach.bandwidth_for(np.maximum(opt_bytes, 1.0)), 0.0) + page_s
    step = compute + bubble + p2p + exposed + optimizer_s
    tokens_step = float(job.c.global_batch * job.c.seq_len)
    attn_fwd = 2.0 * m.n_layers * m.n_heads * m.dim_head * job.c.seq_len  # causal QK^T and AV a token: 6LHQT / 3
    recomputed = np.where(rc == "full", model_flops_per_token(m, job.c.seq_len) / 3.0,  # the forward's FLOPs again
                          np.where(rc == "selective", attn_fwd, 0.0))
    flops = tokens_step / (step * devices * job.peak)
    return {"step_time_s": step, "tokens_per_s": tokens_step / step, "mfu": flops * job.flops_per_token,
            "hfu": flops * (job.flops_per_token + recomputed), "compute_s": compute, "bubble_s": bubble,
            "communication_s": exposed + p2p, "optimizer_s": optimizer_s, "devices": devices,
            "micro_batches": micro_batches, "optimizer_on_host": paged_out,
            **{f"{k}_bytes": np.broadcast_to(val, (n,)).astype(float) for k, val in mem.items()}}


def layer_tensors(m: ModelSpec) -> int:
    """Parameter tensors of one decoder layer, as a framework that keeps each module's weight and bias apart holds
    them (Megatron's fused QKV projection; a gated MLP's gate and up projections fused, as Megatron's linear_fc1): the
    attention's QKV and output projections, the MLP's two (an MoE layer's experts and router counted as the dense
    MLP's: their tensors are its), their biases, the two norms' scales (and LayerNorm's shifts). A GPT layer: 12."""
    matrices = 4
    biases = int(m.qkv_bias) + int(m.out_bias) + 2 * int(m.mlp_bias)  # QKV's, the output's, the MLP's two
    norms = 2 * (2 if m.norm == "layernorm" else 1)
    return matrices + biases + norms


def _base_format(name: str) -> DType:
    """A frozen base's format: a DType, or nf4 (QLoRA's NormalFloat, 4 bits a weight) as int4."""
    return DType.INT4 if name.lower() == "nf4" else DType.parse(name, "--quantize-base")


def would_fit(m: ModelSpec, d: Device, c: TrainConfig, engine: str | None, eff: Efficiency) -> list[str]:
    """Changes that make `c` fit, cheapest first: a higher ZeRO stage, recomputation, LoRA (and QLoRA), more
    devices (data-parallel with ZeRO-3, then tensor-parallel within a node)."""
    from dataclasses import replace

    tries: list[tuple[str, TrainConfig]] = []
    for z in range(c.zero + 1, 4):
        if c.dp > 1:
            tries.append((f"--zero {z}", replace(c, zero=z)))
    for r in ("selective", "full"):
        if RECOMPUTE.index(r) > RECOMPUTE.index(c.recompute):
            tries.append((f"--recompute {r}", replace(c, recompute=r)))
    if not c.lora_rank:
        tries.append(("--lora 16", replace(c, lora_rank=16)))
        tries.append(("--lora 16 --quantize-base q4_0", replace(c, lora_rank=16, quantize_base="q4_0")))
    for n in (2, 4, 8, 16, 32, 64, 128, 256, 512):
        if c.global_batch % (c.dp * n * c.micro_batch) == 0:
            tries.append((f"--devices {c.devices * n} (--dp {c.dp * n} --zero 3)", replace(c, dp=c.dp * n, zero=3)))
    out = []
    for label, cfg in tries:
        try:
            est = train(m, d, cfg, engine, eff)
        except PerfmodelError:
            continue
        if est.fits:
            out.append(f"{label}: {est.memory['total'] / 1e9:.1f} GB a device, {est.tokens_per_s:,.0f} tokens/s")
            if len(out) >= 3:
                break
    return out
