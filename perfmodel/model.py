"""Model specification: one schema for every family, and parameter counts computed from it.

Families differ by fields, never by code: GPT-2 style (LayerNorm, GELU, learned positions, biases), LLaMA style
(RMSNorm, SwiGLU, RoPE), GQA/MQA (`n_kv_heads`), sliding windows, Mixture-of-Experts, DeepSeek MLA, encoder-only
(BERT) and encoder-decoder (T5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, NonNegativeInt, model_validator


class Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    title: str
    url: str = ""
    covers: str = ""
    note: str = ""


def parse_count(v: "float | int | str") -> tuple[float, float]:
    """(value, half a unit of its last published digit): "7.3B" -> (7.3e9, 0.05e9); 6738415616 -> (6738415616, 0.5)."""
    if isinstance(v, (int, float)):
        return float(v), 0.5
    m = re.fullmatch(r"\s*([0-9][0-9_,]*)(?:\.([0-9]+))?\s*([KMBT]?)\s*", str(v), flags=re.I)
    if not m:
        raise ValueError(f"a parameter count must be a number or like '7.3B', '110M'; got {v!r}")
    whole, frac, unit = m.group(1).replace(",", "").replace("_", ""), m.group(2) or "", m.group(3).upper()
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[unit]
    return float(f"{whole}.{frac or 0}") * scale, 0.5 * 10 ** -len(frac) * scale


class PublishedParams(BaseModel):
    """Parameter counts as published (model card, paper), to check the computed counts against. Write them as
    published: an exact integer, or a rounded figure such as "7.24B" (its rounding is part of the check)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    total: float | str
    active: float | str | None = None
    active_includes_embedding: bool = Field(
        True, description="False where the publisher counts active parameters without the input embedding table "
                          "(DeepSeek, OpenAI gpt-oss)")
    nominal: bool = Field(
        False, description="the publisher gives only a size class (e.g. Falcon '40B'), not a count: checked to 5 %")
    discrepancy: str = Field(
        "", description="a known disagreement between the published figure and the released weights, explained")
    source: str = ""

    def matches(self, spec: "ModelSpec", rel: float) -> list[str]:
        """Mismatches (empty when the computed counts agree with the published ones within `rel`)."""
        out = []
        rel = max(rel, 0.05) if self.nominal else rel
        active = spec.params_active() - (0 if self.active_includes_embedding else spec.vocab_size * spec.d_model)
        for what, computed, published in (("total", spec.params_total(), self.total), ("active", active, self.active)):
            if published is None:
                continue
            value, half_unit = parse_count(published)
            # a figure published to d digits may be rounded (+- half a unit) or truncated (true count up to a unit above)
            low, high = value - max(rel * value, half_unit), value + max(rel * value, 2 * half_unit)
            if not low <= computed < high:
                out.append(f"{what} {computed:,} vs published {published!r}")
        return out


class ModelSpec(BaseModel):
    """A transformer, described by its dimensions. See README "Adding a model" for every field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str = ""
    aliases: tuple[str, ...] = ()
    arch: Literal["decoder", "encoder", "encoder_decoder"] = "decoder"
    n_layers: PositiveInt = Field(description="decoder layers; encoder layers for an encoder-only model")
    n_encoder_layers: NonNegativeInt = 0
    d_model: PositiveInt
    n_heads: PositiveInt
    n_kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    d_ff: PositiveInt
    vocab_size: PositiveInt
    max_seq_len: PositiveInt | None = None

    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norms_per_layer: PositiveInt = 2
    final_norm: bool = Field(True, description="a norm after the last layer (pre-LN models); BERT has none")
    qk_norm: bool = False
    activation: Literal["gelu", "gelu_tanh", "silu", "relu"] = "silu"
    gated_mlp: bool = True
    position: Literal["rope", "learned", "alibi", "relative", "none"] = "rope"
    learned_positions: NonNegativeInt = 0
    rope_fraction: float = Field(1.0, gt=0, le=1)
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    token_types: NonNegativeInt = 0
    embedding_norm: bool = False
    pooler: bool = False
    relative_attention_buckets: NonNegativeInt = 0
    attention_sinks: bool = False

    sliding_window: PositiveInt | None = None
    sliding_window_pattern: PositiveInt = Field(
        1, description="period p: every p-th layer is global, the others use the window; 1 = all layers windowed"
    )

    n_experts: NonNegativeInt = 0
    experts_per_token: NonNegativeInt = 0
    d_ff_expert: PositiveInt | None = None
    n_shared_experts: NonNegativeInt = 0
    d_ff_shared: NonNegativeInt | None = None
    shared_expert_gate: bool = False
    router_bias: bool = False
    n_dense_layers: NonNegativeInt = 0

    q_lora_rank: PositiveInt | None = None
    kv_lora_rank: PositiveInt | None = None
    qk_nope_head_dim: PositiveInt | None = None
    qk_rope_head_dim: PositiveInt | None = None
    v_head_dim: PositiveInt | None = None

    published_params: PublishedParams | None = None
    sources: tuple[Source, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        kv = self.kv_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")
        if self.n_experts:
            if not 1 <= self.experts_per_token <= self.n_experts:
                raise ValueError(
                    f"experts_per_token must be between 1 and n_experts ({self.n_experts}); got {self.experts_per_token}"
                )
            if self.n_dense_layers > self.n_layers:
                raise ValueError(f"n_dense_layers ({self.n_dense_layers}) exceeds n_layers ({self.n_layers})")
        elif self.experts_per_token or self.n_shared_experts:
            raise ValueError("experts_per_token and n_shared_experts need n_experts > 0")
        mla = (self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim)
        if any(x is not None for x in mla) and any(x is None for x in mla):
            raise ValueError("MLA needs all of kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim and v_head_dim")
        if self.arch == "encoder_decoder" and not self.n_encoder_layers:
            raise ValueError("an encoder_decoder model needs n_encoder_layers > 0")
        if self.arch != "encoder_decoder" and self.n_encoder_layers:
            raise ValueError(f"n_encoder_layers is only for arch 'encoder_decoder', not {self.arch!r}")
        if self.position == "learned" and not self.learned_positions:
            raise ValueError("position 'learned' needs learned_positions (rows of the position table)")
        return self

    # Derived dimensions -------------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def expert_d_ff(self) -> int:
        return self.d_ff_expert or self.d_ff

    @property
    def shared_d_ff(self) -> int:
        if self.d_ff_shared is not None:
            return self.d_ff_shared
        return self.n_shared_experts * self.expert_d_ff

    def layer_kinds(self) -> dict[tuple[bool, bool], int]:
        """Count decoder layers by (uses sliding window, has MoE MLP)."""
        counts: dict[tuple[bool, bool], int] = {}
        p = self.sliding_window_pattern
        for i in range(self.n_layers):
            sliding = self.sliding_window is not None and (p == 1 or (i + 1) % p != 0)
            moe = self.is_moe and i >= self.n_dense_layers
            counts[(sliding, moe)] = counts.get((sliding, moe), 0) + 1
        return counts

    def attention_shape(self) -> "AttentionShape":
        """Per-layer attention geometry. MLA is the weight-absorbed form (DeepSeek-V3 inference/model.py,
        attn_impl="absorb"): scores against the cached latent of kv_lora_rank + qk_rope_head_dim elements, values of
        kv_lora_rank elements, one latent shared by all heads."""
        if self.is_mla:
            latent = self.kv_lora_rank + self.qk_rope_head_dim
            return AttentionShape(self.n_heads, 1, latent, self.kv_lora_rank, latent, shared_kv=True)
        hd = self.dim_head
        return AttentionShape(self.n_heads, self.kv_heads, hd, hd, 2 * self.kv_heads * hd, shared_kv=False)

    def kv_elements_per_token(self) -> int:
        """KV-cache elements per token over all decoder layers (self-attention only)."""
        return self.n_layers * self.attention_shape().kv_elems

    # Parameter counts ---------------------------------------------------------------------------------------------
    def param_breakdown(self) -> dict[str, int]:
        """Parameters by component (all experts counted). MTP modules (DeepSeek-V3) are not part of the spec."""
        d, nrm = self.d_model, (2 if self.norm == "layernorm" else 1) * self.d_model
        out: dict[str, int] = {}
        out["embedding"] = self.vocab_size * d + self.learned_positions * d + self.token_types * d
        out["embedding"] += nrm if self.embedding_norm else 0
        attn = self._attention_params()
        counts = self.layer_kinds()
        n_moe = sum(n for (_, moe), n in counts.items() if moe)
        n_dense = self.n_layers - n_moe
        out["attention"] = self.n_layers * attn
        out["norms"] = self.n_layers * self.norms_per_layer * nrm + (nrm if self.final_norm else 0)
        out["mlp"] = n_dense * self._mlp_params(self.d_ff)
        if n_moe:
            router = d * self.n_experts + (self.n_experts if self.router_bias else 0)
            shared = self._mlp_params(self.shared_d_ff) if self.shared_d_ff else 0
            shared += d if self.shared_expert_gate else 0
            out["router"] = n_moe * router
            out["shared_experts"] = n_moe * shared
            out["experts"] = n_moe * self.n_experts * self._mlp_params(self.expert_d_ff)
        if self.arch == "encoder_decoder":
            # Encoder layers: self-attention + MLP + 2 norms; decoder layers also hold cross-attention (counted above
            # through norms_per_layer = 3 and the extra attention block here), plus the encoder's final norm.
            out["encoder"] = self.n_encoder_layers * (attn + self._mlp_params(self.d_ff) + 2 * nrm) + nrm
            out["cross_attention"] = self.n_layers * attn
        out["relative_position"] = self.relative_attention_buckets * self.n_heads * (
            2 if self.arch == "encoder_decoder" else 1
        )
        out["lm_head"] = 0 if (self.tie_embeddings or self.arch == "encoder") else self.vocab_size * d
        out["pooler"] = d * d + d if self.pooler else 0
        return {k: v for k, v in out.items() if v}

    def params_total(self) -> int:
        return sum(self.param_breakdown().values())

    def params_active(self) -> int:
        """Parameters used per token: routed experts count only experts_per_token of n_experts."""
        b = self.param_breakdown()
        if "experts" not in b:
            return self.params_total()
        unused = b["experts"] * (self.n_experts - self.experts_per_token) // self.n_experts
        return self.params_total() - unused

    def _attention_params(self) -> int:
        d, h = self.d_model, self.n_heads
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * h * qk  # q_a, q_a_norm, q_b
            else:
                q = d * h * qk
            kv = d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank  # kv_a (+ rope key), kv_a_norm
            kv += self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)  # kv_b
            o = h * self.v_head_dim * d
            return q + kv + o + (d if self.out_bias else 0)
        hd, kvh = self.dim_head, self.kv_heads
        q_out, kv_out = h * hd, kvh * hd
        p = d * (q_out + 2 * kv_out) + q_out * d
        p += (q_out + 2 * kv_out) if self.qkv_bias else 0
        p += d if self.out_bias else 0
        p += 2 * hd if self.qk_norm else 0
        p += h if self.attention_sinks else 0
        return p

    def _mlp_params(self, d_ff: int) -> int:
        d = self.d_model
        n_in = 2 if self.gated_mlp else 1
        p = n_in * d * d_ff + d_ff * d
        return p + ((n_in * d_ff + d) if self.mlp_bias else 0)


@dataclass(frozen=True, slots=True)
class AttentionShape:
    n_q_heads: int
    n_kv_heads: int
    qk_dim: int  # dot-product length per head
    v_dim: int  # value length per head
    kv_elems: int  # cached elements per token per layer (K and V, or the MLA latent)
    shared_kv: bool  # MLA: keys and values are views of one cached latent
