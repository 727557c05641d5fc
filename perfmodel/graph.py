"""Lowering: model spec + one forward pass -> operator graph.

Prefill and decode are the same code: a pass is `q_len` new tokens per sequence attending over `kv_len` positions
(prefill: q_len = kv_len = prompt; decode: q_len = 1, kv_len = context). Sizes may be NumPy arrays, so one lowering
serves a whole sweep. Every op is per device (tensor-parallel shards) and per instance; `count` repeats it.

Conventions: a multiply-add is 2 FLOPs. Bytes are what an op reads and writes in memory, split by what they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace, fields
from enum import Enum
from typing import Any, Literal, Union

import numpy as np

from .dtypes import BLOCK_SCALE_FLOPS, DType
from .model import ModelSpec
from .poly import Poly, call, positive

Num = Union[float, np.ndarray, Poly]  # a Poly when lowered once for a table (perfmodel.table)


class OpKind(str, Enum):
    MATMUL = "matmul"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"
    NORM = "norm"
    EMBEDDING = "embedding"
    COMM = "comm"


MATRIX_KINDS = frozenset({OpKind.MATMUL, OpKind.ATTENTION})


class Comm(str, Enum):
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    P2P = "p2p"
    CP_RING = "cp_ring"  # ring attention: each context-parallel rank's KV block passed around the ring
    CP_GATHER = "cp_gather"  # decode under context parallelism: every rank's partial attention gathered


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    kind: OpKind
    dtype: DType
    flops: Num = 0.0
    weight_bytes: Num = 0.0
    act_in_bytes: Num = 0.0
    act_out_bytes: Num = 0.0
    kv_read_bytes: Num = 0.0
    kv_write_bytes: Num = 0.0
    comm_bytes: Num = 0.0
    count: int = 1
    comm: Comm | None = None
    rows: Num = 0.0  # matmuls: the M dimension (tokens; per head for attention products); attention: queries per
    #                  sequence (1 when decoding). Sets which calibrated kernel class (GEMV, decode attention) applies
    variant: str = ""  # norms: rmsnorm|layernorm; activations: silu|gelu|gelu_tanh|relu (calibrated separately)
    exp_ops: Num = 0.0  # exponentials (fused attention's softmax: one per query-key pair and head)
    scale_flops: Num = 0.0  # vector-unit work beside the matrix work: block scales of quantised GEMMs (llama.cpp MMQ)
    keys: Num = 0.0  # fused attention: keys each query attends to, on average (sets how full its tile pipeline runs)

    @property
    def act_bytes(self) -> Num:
        return self.act_in_bytes + self.act_out_bytes

    @property
    def resident_bytes(self) -> Num:
        """Bytes of long-lived state: weights and KV cache."""
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes

    @property
    def bytes(self) -> Num:
        return self.resident_bytes + self.act_bytes


NUMERIC_FIELDS = tuple(f.name for f in fields(Op) if f.name not in ("name", "kind", "dtype", "count", "comm", "rows",
                                                                          "variant", "keys"))

# FLOPs per element of the vector ops (conventions, stated once).
NORM_FLOPS = {"rmsnorm": 4, "layernorm": 7}  # rms: x^2, sum, x*r, *g; ln: sum, -mean, ^2, sum, *r, *g, +b
ACT_FLOPS = {"silu": 4, "gelu": 8, "gelu_tanh": 8, "relu": 1}  # silu: exp, +1, /, *; gelu(tanh): ~8 ops
ROPE_FLOPS = 3  # x*cos + rotate(x)*sin
SOFTMAX_FLOPS = 5  # max, -, exp, sum, /
# Keys per tile of a fused causal attention kernel: the diagonal tile of each query block is computed whole and masked.
# FlashAttention-3's Hopper forward at head dim 128 runs 128 x 128 tiles when causal (kBlockN = Is_causal ? 128 : 176,
# hopper/flash_fwd_launch_template.h, run_mha_fwd_hdim128); FlashAttention-2's Ampere/Hopper kernel 128 x 64.
CAUSAL_TILE_KEYS = 128.0
# Op variant of a product whose operands reach it in 16 bits (FP16/BF16 weights, an FP16 copy of quantised ones, a
# 16-bit KV cache in unfused attention): what an engine may hand to the vendor's BLAS (Efficiency.blas_matrix)
DENSE16 = "dense16"


@dataclass(frozen=True, slots=True)
class Precision:
    weights: DType = DType.BF16
    kv: DType = DType.BF16
    act: DType = DType.BF16
    gemm: DType | None = None  # compute format of the weight GEMMs where it differs from act (llama.cpp MMQ: int8)
    dequant: str = "fused"  # fused: quantised weights are expanded inside the GEMM; fp16_copy, fp16_scratch: into an
    # FP16 copy first (llama.cpp CUDA before PR #8075 above 32 rows; ONNX Runtime MatMulNBits above one row)
    kv_per_query_head: bool = False  # unfused attention reads a KV head's K and V once per query head of its group
    ubatch: float = math.inf  # tokens per micro-batch of a pass (llama.cpp's n_ubatch): rows per weight-GEMM call
    # at most this, and the weights read once per micro-batch
    dense: DType | None = None  # matrices outside the routed experts, where not `weights` (an MXFP4 checkpoint's)
    head: DType | None = None  # LM head and embedding table, where not `dense` (16-bit in most quantised checkpoints)

    @property
    def dense_format(self) -> DType:
        """Format of the weight matrices outside an MoE model's routed experts (all of a dense model's layers)."""
        return self.dense or self.weights

    @property
    def head_format(self) -> DType:
        """Format of the LM head and the token-embedding table."""
        return self.head or self.dense_format


@dataclass(frozen=True, slots=True)
class Parallel:
    """How a model is split: tensor (tp), pipeline (pp) and expert (ep) parallel degrees. Expert parallelism spreads
    an MoE layer's experts over ep ranks (each holds n_experts / ep of them whole, and tokens reach them by an
    all-to-all); with dp_attention the attention runs data-parallel over those ranks (DeepSeek-style: each rank
    attends its own sequences with the whole attention weights) instead of tensor-parallel."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp_attention: bool = False
    expert_imbalance: float = 1.0  # busiest EP rank's routed tokens over the mean
    cp: int = 1  # context parallel: a prompt's tokens (and its KV cache) split over cp ranks

    @property
    def devices(self) -> int:
        return self.group * self.cp * self.pp

    @property
    def group(self) -> int:
        """Devices of one pipeline stage: max(tp, ep)."""
        return max(self.tp, self.ep)

    @property
    def att_tp(self) -> int:
        """Tensor-parallel degree of the attention (and dense layers): 1 with data-parallel attention, else tp."""
        return 1 if self.dp_attention else self.tp

    @property
    def replicas(self) -> int:
        """Data-parallel attention replicas in a stage, each attending batch / replicas sequences."""
        return max(self.group // self.att_tp, 1)

    @property
    def expert_tp(self) -> int:
        """Tensor-parallel degree within an expert: the stage's devices over the expert-parallel ranks."""
        return max(self.group // self.ep, 1)


@dataclass(frozen=True, slots=True)
class Pass:
    """One forward pass of a stack. `logits` is the number of positions per sequence fed to the LM head."""

    stack: Literal["decoder", "encoder"]
    batch: Num
    q_len: Num
    kv_len: Num
    cross_len: Num = 0.0
    logits: Num = 0.0
    embed: bool = True


def tiled_causal_pairs(q_len: Num, kv_len: Num, window: float = math.inf, tile: float = CAUSAL_TILE_KEYS) -> Num:
    """Pairs a fused causal kernel computes: the causal pairs plus the masked rest of each query's last key tile,
    (tile - 1) / 2 per query of a pass of more than one query, at most all q x kv pairs; a single query (decode)
    computes its causal pairs only."""
    return call("tiled_causal_pairs", q_len, kv_len, params=(window, tile))


def causal_pairs(q_len: Num, kv_len: Num, window: float = math.inf) -> Num:
    """Query-key pairs when q_len new tokens follow kv_len - q_len cached ones, each attending to at most `window`
    positions (itself included): sum over positions j in (kv - q, kv] of min(j, window)."""
    return call("causal_pairs", q_len, kv_len, params=(window,))


def expected_experts(tokens: Num, n_experts: int, k: int) -> Num:
    """Distinct experts touched when each of `tokens` tokens picks k of n experts, routing assumed uniform:
    E * (1 - (1 - k/E)^T)."""
    return call("expected_experts", tokens, params=(n_experts, k))


def block_scale_work(weights: DType, gemm: DType, flops: Num) -> tuple[Num, str]:
    """(vector-unit FLOPs, op variant) of a GEMM of `flops` whose weights carry a scale per block of k and whose
    products run in FP8: each 128-deep block's partial sums are scaled into an FP32 accumulator on the vector units
    (dtypes.BLOCK_SCALE_FLOPS); devices whose matrix units take the scales skip it (cost.scales_in_mma).
    (0, "") for any other GEMM."""
    if weights.block_scaled and gemm.compute == "fp8":
        return flops * BLOCK_SCALE_FLOPS, "block_scaled"
    return 0.0, ""


class _Builder:
    def __init__(self, model: ModelSpec, prec: Precision, par: Parallel, fused: bool):
        self.m, self.prec, self.par, self.fused = model, prec, par, fused
        self.tp = par.att_tp  # the attention's and dense layers' tensor-parallel degree
        self.global_tokens: Num = 0.0
        self.context: Pass | None = None  # under context parallelism, the whole pass (its queries and keys)
        self.a, self.kvb = prec.act.bytes, prec.kv.bytes
        self.ops: list[Op] = []

    def add(self, name: str, kind: OpKind, count: int, dtype: DType | None = None, **q: Num | str) -> None:
        if count > 0:
            self.ops.append(Op(name, kind, dtype or self.prec.act, count=count, **q))

    def matmul(self, name: str, tokens: Num, k: float, n: float, count: int, *, bias: bool = False,
               full_input: bool = True, weight_rows: Num | None = None, w_count: Num = 1.0,
               micro: tuple[Num, Num, Num] | None = None, fmt: DType | None = None) -> None:
        """(tokens, k) @ (k, n). `full_input`: column-parallel layers read the whole input on every TP rank.
        `w_count` weight matrices (MoE experts) share the tokens, so each product has tokens / w_count rows.
        Micro-batches (Precision.ubatch): `micro` = (tokens per call, weight matrices per call, calls), by default
        min(tokens, ubatch), w_count and ceil(tokens / ubatch): each call reads its weights again. `fmt`: the
        weights' format (default Precision.dense_format; routed experts Precision.weights, the LM head
        Precision.head_format). A 16-bit matrix among quantised ones multiplies at 16 bits."""
        fmt = fmt or self.prec.dense_format
        w = fmt.bytes
        gemm = self.prec.gemm
        if fmt is not self.prec.weights and fmt.bits >= 16:
            gemm = fmt if self.prec.act.bits < 16 else None
        flops = 2.0 * tokens * k * n
        blocks = fmt.is_gguf or fmt == DType.MXFP4  # block-quantised weights
        scale = 0.0
        if gemm == DType.INT8 and blocks:
            # MMQ: int8 products per 32-wide block of k, then on the vector units two FMAs per output and block (the
            # weight block's scale and the activation block's; llama.cpp mmq.cuh, vec_dot_q4_0_q8_1 and kin)
            scale = 4.0 * tokens * n * k / 32
        block, variant = block_scale_work(fmt, gemm or self.prec.act, flops)
        scale += block  # never both: MMQ's block scales need int8 products, these FP8 ones
        fp16_read = 0.0
        copied = (self.prec.dequant == "fp16_copy" and blocks) or (self.prec.dequant == "fp16_scratch"
                                                                   and fmt.bits < self.prec.act.bits)
        if not variant and (gemm is None or gemm.bits >= 16) and (copied or fmt in (DType.FP16, DType.BF16)):
            variant = DENSE16
        if copied:
            # a conversion kernel first writes an FP16 copy of the weights, and cuBLAS reads that copy. llama.cpp's
            # CUDA path before PR #8075 (batches over 32 rows): once per micro-batch of 512 tokens (llama-bench's
            # default n_ubatch). ONNX Runtime's MatMulNBits: its int4/int8 GEMV refuses more than one row
            # (matmul_4bits.cu, TryMatMul4Bits: `m > 1` returns false), and the fallback dequantises the whole
            # weight into a scratch buffer for a cuBLAS GEMM on every call (matmul_nbits.cc, DequantizeBlockwise4b)
            passes = call("fp16_passes" if self.prec.dequant == "fp16_copy" else "scratch_passes", tokens)
            elems = k * n * w_count
            self.add(name + ".to_fp16", OpKind.ELEMENTWISE, count, flops=elems * passes,
                     act_in_bytes=elems * w * passes, act_out_bytes=2.0 * elems * passes)
            fp16_read = 2.0 * elems * passes
        one, per_call, calls = tokens, w_count, 1.0  # rows of a call before the experts share them, matrices, calls
        if micro is not None:
            one, per_call, calls = micro
        elif math.isfinite(self.prec.ubatch):
            one, calls = self.micro_rows(tokens), self.micro_passes(tokens)
        weights = per_call * calls * (k * n * w + (n * self.a if bias else 0.0))
        self.add(
            name, OpKind.MATMUL, count, gemm,
            flops=flops + (tokens * n if bias else 0.0), scale_flops=scale, variant=variant,
            weight_bytes=weights,
            act_in_bytes=tokens * k * self.a + fp16_read,
            act_out_bytes=tokens * n * self.a,
            rows=one / call("at_least_one", per_call),
        )

    def micro_rows(self, tokens: Num) -> Num:
        """Tokens of one micro-batch: at most Precision.ubatch."""
        return call("micro_rows", tokens, params=(self.prec.ubatch,))

    def micro_passes(self, tokens: Num) -> Num:
        """Micro-batches of a pass of `tokens` tokens."""
        return call("micro_passes", tokens, params=(self.prec.ubatch,))

    def norm(self, name: str, tokens: Num, width: float, count: int) -> None:
        wb = (2 if self.m.norm == "layernorm" else 1) * width * self.a
        self.add(name, OpKind.NORM, count, flops=NORM_FLOPS[self.m.norm] * tokens * width, weight_bytes=wb,
                 act_in_bytes=tokens * width * self.a, act_out_bytes=tokens * width * self.a, variant=self.m.norm)

    def elementwise(self, name: str, elems: Num, flops_per: float, count: int, n_in: int = 1,
                    variant: str = "") -> None:
        self.add(name, OpKind.ELEMENTWISE, count, flops=flops_per * elems,
                 act_in_bytes=n_in * elems * self.a, act_out_bytes=elems * self.a, variant=variant)

    def comm(self, name: str, kind: Comm, nbytes: Num, count: int) -> None:
        self.add(name, OpKind.COMM, count, comm=kind, comm_bytes=nbytes)


def lower(model: ModelSpec, p: Pass, prec: Precision, par: Parallel, fused: bool = True) -> tuple[Op, ...]:
    """The operator graph of one pass, per device. See the module docstring for conventions."""
    b = _Builder(model, prec, par, fused)
    b.global_tokens = p.batch * p.q_len  # what the experts see: every replica's tokens
    if par.replicas > 1:  # data-parallel attention: this rank's share of the sequences (the busiest rank's)
        p = replace(p, batch=call("ceil_div", p.batch, params=(float(par.replicas),)))
    if par.cp > 1 and p.stack == "decoder":  # context parallel: this rank's share of the prompt, or of the cache
        b.context = p
        if isinstance(p.q_len, Poly) or float(p.q_len) > 1:
            p = replace(p, q_len=p.q_len / par.cp)
    m, tp = model, b.tp
    d, T = m.d_model, p.batch * p.q_len
    prefix = "encoder." if (p.stack == "encoder" and m.arch == "encoder_decoder") else ""

    if p.embed:
        rows = T * (1 + (m.position == "learned") + (m.token_types > 0))
        b.add(prefix + "embed", OpKind.EMBEDDING, 1, weight_bytes=rows * d * b.prec.head_format.bytes / tp,
              act_out_bytes=T * d * b.a)
        if tp > 1:  # vocab-parallel embedding: partial rows summed across ranks
            b.comm(prefix + "embed.all_reduce", Comm.ALL_REDUCE, T * d * b.a, 1)
        if m.embedding_norm:
            b.norm(prefix + "embed.norm", T, d, 1)

    if p.stack == "encoder":
        n_layers = m.n_encoder_layers if m.arch == "encoder_decoder" else m.n_layers
        kinds = {(False, False): n_layers}
    else:
        kinds = m.layer_kinds()
    for (sliding, moe), n in kinds.items():
        tag = prefix + "layers" + (".sliding" if sliding and len(kinds) > 1 else "") + (".moe" if moe and
                                                                                          len(kinds) > 1 else "")
        _layer(b, tag, p, n, sliding, moe)

    if p.stack == "encoder" and m.arch == "encoder_decoder":
        b.norm(prefix + "final_norm", T, d, 1)
        # Cross-attention K/V of every decoder layer, computed once from the encoder output and cached.
        shape = m.attention_shape()
        kv_dev = math.ceil(shape.n_kv_heads / tp) * shape.qk_dim * 2
        b.matmul("decoder.layers.cross_kv", T, d, kv_dev, m.n_layers)
        last = b.ops[-1]
        b.ops[-1] = Op(last.name, last.kind, last.dtype, last.flops, last.weight_bytes, last.act_in_bytes, 0.0,
                       0.0, T * kv_dev * b.kvb, count=last.count, rows=last.rows)
        return tuple(b.ops)

    b.norm(prefix + "final_norm", T, d, 1 if m.final_norm else 0)
    if m.pooler and p.stack == "encoder":
        b.matmul("pooler", p.batch, d, d, 1, bias=True, fmt=b.prec.head_format)
    heads = p.batch * p.logits
    if positive(heads):
        b.matmul(prefix + "lm_head", heads, d, m.vocab_size / tp, 1, fmt=b.prec.head_format)
        if tp > 1:
            b.comm(prefix + "lm_head.all_gather", Comm.ALL_GATHER, heads * m.vocab_size * b.a, 1)
    if par.pp > 1:
        b.comm(prefix + "pp.send", Comm.P2P, T * d * b.a, par.pp - 1)
    return tuple(b.ops)


def _layer(b: _Builder, tag: str, p: Pass, n: int, sliding: bool, moe: bool) -> None:
    m, d = b.m, b.m.d_model
    T = p.batch * p.q_len
    window = float(m.sliding_window) if sliding else math.inf
    norms = 2 if p.stack == "encoder" and m.arch == "encoder_decoder" else m.norms_per_layer
    b.norm(tag + ".norm", T, d, n * norms)
    _attention_block(b, tag + ".attn", p, n, window, cached=p.stack == "decoder", kv_len=p.kv_len)
    if p.stack == "decoder" and m.arch == "encoder_decoder":
        _attention_block(b, tag + ".cross", p, n, math.inf, cached=True, kv_len=p.cross_len, cross=True)
    _mlp_block(b, tag, p, n, moe)


def _attention_block(b: _Builder, tag: str, p: Pass, n: int, window: float, cached: bool, kv_len: Num,
                     cross: bool = False) -> None:
    m, tp, d = b.m, b.tp, b.m.d_model
    T, batch, q = p.batch * p.q_len, p.batch, p.q_len
    shape = m.attention_shape()
    h = m.n_heads / tp
    kv_heads = math.ceil(shape.n_kv_heads / tp)  # KV heads are replicated when fewer than TP ranks
    kv_elems = shape.kv_elems if shape.shared_kv else 2 * kv_heads * m.dim_head

    # Projections producing Q (and the new K/V) ---------------------------------------------------------------------
    if m.is_mla:
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            b.matmul(tag + ".q_a", T, d, m.q_lora_rank, n)
            b.norm(tag + ".q_a_norm", T, m.q_lora_rank, n)
            b.matmul(tag + ".q_b", T, m.q_lora_rank, h * qk, n)
        else:
            b.matmul(tag + ".q", T, d, h * qk, n)
        b.matmul(tag + ".kv_a", T, d, m.kv_lora_rank + m.qk_rope_head_dim, n)
        b.norm(tag + ".kv_a_norm", T, m.kv_lora_rank, n)
        b.elementwise(tag + ".rope", T * (h + 1) * m.qk_rope_head_dim, ROPE_FLOPS, n)
        # Absorbed up-projections (DeepSeek-V3 inference/model.py, attn_impl="absorb"): q_nope -> latent per head.
        b.matmul(tag + ".q_absorb", T * h, m.qk_nope_head_dim, m.kv_lora_rank, n, w_count=h)
    else:
        hd = m.dim_head
        if cross:  # cross-attention: only Q is projected per step; K/V come from the cached encoder output
            b.matmul(tag + ".q", T, d, h * hd, n, bias=m.qkv_bias)
        else:
            b.matmul(tag + ".qkv", T, d, (h + 2 * kv_heads) * hd, n, bias=m.qkv_bias)
        if m.qk_norm:
            b.norm(tag + ".qk_norm", T * (h + kv_heads), hd, n)
        if m.position == "rope" and not cross:
            b.elementwise(tag + ".rope", T * (h + kv_heads) * hd * m.rope_fraction, ROPE_FLOPS, n)

    # Attention proper ---------------------------------------------------------------------------------------------
    if p.stack == "encoder":
        pairs = q * kv_len  # bidirectional
        keys = kv_len
    elif cross:
        pairs, keys = q * kv_len, kv_len
    else:
        pairs = causal_pairs(q, kv_len, window)
        keys = call("window_keys", q, kv_len, params=(window,)) if math.isfinite(window) else kv_len
    # context parallelism: a prompt's queries split over cp ranks, each attending all keys (ring attention, blocks
    # balanced so every rank has 1 / cp of the causal pairs); in decode each rank attends its 1 / cp of the cache
    cpf = b.par.cp if (b.context is not None and not cross and p.stack == "decoder") else 1
    prefill_cp = cpf > 1 and b.context.q_len is not p.q_len
    if cpf > 1:
        q_full = b.context.q_len if prefill_cp else q
        pairs = causal_pairs(q_full, kv_len, window) / cpf
        if not prefill_cp:
            keys = keys / cpf
    k_bytes = b.kvb if cached else b.a
    kv_read = batch * keys * kv_elems * k_bytes
    kv_write = 0.0 if (cross or not cached) else T * kv_elems * b.kvb
    act_in = T * h * shape.qk_dim * b.a
    act_out = T * h * shape.v_dim * b.a
    if not cached:  # encoder: K/V are activations, not a cache
        act_in, kv_read = act_in + kv_read, 0.0
    if b.fused:
        # a causal pass of several queries also computes the masked part of each query's last key tile
        done = pairs if (p.stack == "encoder" or cross) else tiled_causal_pairs(q, kv_len, window)
        if cpf > 1:
            done = tiled_causal_pairs(b.context.q_len if prefill_cp else q, kv_len, window) / cpf
        b.add(tag + ".attention", OpKind.ATTENTION, n, flops=2.0 * batch * done * h * (shape.qk_dim + shape.v_dim),
              act_in_bytes=act_in, act_out_bytes=act_out, kv_read_bytes=kv_read, kv_write_bytes=kv_write, rows=q,
              exp_ops=batch * done * h, keys=done / call("at_least_one", q))
    else:
        # Unfused (eager) attention materialises the full (B, H, q, keys) score matrix, masked but computed.
        full = batch * q * keys * h
        if b.prec.kv_per_query_head and not shape.shared_kv:
            # ggml-metal's broadcast products: the grid's z is the query head and each head's threadgroups read the
            # rows of its KV head (offset (i12 / r2) x nb02 in kernel_mul_mv and kernel_mul_mm), so under GQA a KV
            # head is streamed once per query head of its group
            kv_read = kv_read * h / kv_heads
        k_share = shape.qk_dim / (shape.qk_dim + shape.v_dim) if not shape.shared_kv else 1.0
        v_share = 1.0 - k_share if not shape.shared_kv else shape.v_dim / shape.qk_dim
        dense = DENSE16 if b.prec.kv in (DType.FP16, DType.BF16) else ""
        b.add(tag + ".scores", OpKind.MATMUL, n, flops=2.0 * full * shape.qk_dim, act_in_bytes=act_in,
              act_out_bytes=full * b.a, kv_read_bytes=kv_read * k_share, kv_write_bytes=kv_write, rows=q,
              variant=dense)
        b.add(tag + ".softmax", OpKind.ELEMENTWISE, n, flops=SOFTMAX_FLOPS * full, act_in_bytes=full * b.a,
              act_out_bytes=full * b.a)
        b.add(tag + ".context", OpKind.MATMUL, n, flops=2.0 * full * shape.v_dim, act_in_bytes=full * b.a,
              act_out_bytes=act_out, kv_read_bytes=kv_read * v_share, rows=q, variant=dense)

    if prefill_cp:  # ring attention passes each rank's new K/V block to the next, cp - 1 times
        b.comm(tag + ".cp_ring", Comm.CP_RING, (cpf - 1) * T * kv_elems * b.kvb, n)
    elif cpf > 1:  # decode: the ranks' partial outputs (and their softmax sums) gathered
        b.comm(tag + ".cp_gather", Comm.CP_GATHER, cpf * T * h * (shape.v_dim + 1) * b.a, n)

    # Output projection --------------------------------------------------------------------------------------------
    if m.is_mla:
        b.matmul(tag + ".v_absorb", T * h, m.kv_lora_rank, m.v_head_dim, n, w_count=h)
        b.matmul(tag + ".o", T, h * m.v_head_dim, d, n, bias=m.out_bias)
    else:
        b.matmul(tag + ".o", T, h * m.dim_head, d, n, bias=m.out_bias)
    if tp > 1:
        b.comm(tag + ".all_reduce", Comm.ALL_REDUCE, T * d * b.a, n)
    b.elementwise(tag + ".residual", T * d, 1, n, n_in=2)


def _mlp_block(b: _Builder, tag: str, p: Pass, n: int, moe: bool) -> None:
    m, tp, d, par = b.m, b.tp, b.m.d_model, b.par
    T = p.batch * p.q_len
    n_in = 2 if m.gated_mlp else 1
    act_flops = ACT_FLOPS[m.activation] + (1 if m.gated_mlp else 0)

    def dense(name: str, d_ff: float, tokens: Num, experts: Num = 1.0, micro: tuple | None = None,
              fmt: DType | None = None, split: int = tp) -> None:
        width = d_ff / split
        b.matmul(name + ".up", tokens, d, n_in * width, n, bias=m.mlp_bias, w_count=experts, micro=micro, fmt=fmt)
        b.elementwise(name + ".act", tokens * width, act_flops, n, n_in=n_in, variant=m.activation)
        b.matmul(name + ".down", tokens, width, d, n, bias=m.mlp_bias, w_count=experts, micro=micro, fmt=fmt)

    if moe and (par.ep > 1 or par.replicas > 1):
        _expert_parallel(b, tag, T, n, dense)
    elif moe:
        e, k = m.n_experts, m.experts_per_token
        b.matmul(tag + ".moe.router", T, d, e, n, bias=m.router_bias)
        micro = None
        if math.isfinite(b.prec.ubatch):  # each micro-batch routes its own tokens: experts touched per micro-batch
            mt = b.micro_rows(T)
            micro = (mt * k, expected_experts(mt, e, k), b.micro_passes(T))
        dense(tag + ".moe.experts", m.expert_d_ff, T * k, experts=expected_experts(T, e, k), micro=micro,
              fmt=b.prec.weights)
        if m.shared_d_ff:
            dense(tag + ".moe.shared", m.shared_d_ff, T)
    else:
        dense(tag + ".mlp", m.d_ff, T)
    if tp > 1:
        b.comm(tag + ".mlp.all_reduce", Comm.ALL_REDUCE, T * d * b.a, n)
    b.elementwise(tag + ".mlp.residual", T * d, 1, n, n_in=2)


def ranks_per_token(n_experts: int, k: int, ep: int) -> float:
    """Expert-parallel ranks a token is sent to when it picks k of n experts spread evenly over ep ranks (routing
    uniform): ep x (1 - C(n - n/ep, k) / C(n, k)); a token goes once to each rank holding any of its experts."""
    per = n_experts // ep
    miss = math.comb(n_experts - per, k) / math.comb(n_experts, k) if n_experts - per >= k else 0.0
    return ep * (1.0 - miss)


def _expert_parallel(b: _Builder, tag: str, T: Num, n: int, dense: Any) -> None:
    """An MoE layer with its experts spread over ep ranks (n_experts / ep each, split further over expert_tp ranks
    where the stage has more devices than ep). Every rank's experts see the tokens of the whole stage routed to them:
    global tokens x k / ep on average, x expert_imbalance on the busiest rank, which the layer waits for. With
    data-parallel attention replicas, each rank's own tokens go to the experts' ranks by an all-to-all (dispatch)
    and their outputs come back by another (combine): once per rank holding any of a token's experts
    (ranks_per_token), d_model activations each; with one replica (tensor-parallel attention over the stage) every
    rank already holds every token, and the all-reduce after the layer sums the experts' outputs."""
    m, par, d = b.m, b.par, b.m.d_model
    e, k, ep = m.n_experts, m.experts_per_token, par.ep
    G = b.global_tokens
    b.matmul(tag + ".moe.router", T, d, e, n, bias=m.router_bias)
    if par.replicas > 1:
        if ep > 1:
            sent = T * ranks_per_token(e, k, ep) * d * b.a
            b.comm(tag + ".moe.dispatch", Comm.ALL_TO_ALL, sent, n)
        else:  # experts tensor-parallel over the stage: gather every replica's tokens first
            b.comm(tag + ".moe.all_gather", Comm.ALL_GATHER, G * d * b.a, n)
    routed = G * k / ep * par.expert_imbalance
    dense(tag + ".moe.experts", m.expert_d_ff, routed, experts=expected_experts(G, e, k) / ep, fmt=b.prec.weights,
          split=par.expert_tp)
    if par.replicas > 1:
        if ep > 1:
            b.comm(tag + ".moe.combine", Comm.ALL_TO_ALL, T * ranks_per_token(e, k, ep) * d * b.a, n)
        else:
            b.comm(tag + ".moe.reduce_scatter", Comm.REDUCE_SCATTER, G * d * b.a, n)
    if m.shared_d_ff:
        dense(tag + ".moe.shared", m.shared_d_ff, T)


def totals(ops: tuple[Op, ...]) -> dict[str, Num]:
    """Sum of every numeric field over the graph, counts applied."""
    return {f: sum(getattr(o, f) * o.count for o in ops) for f in NUMERIC_FIELDS}
