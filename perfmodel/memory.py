"""Memory per device: weights, KV cache, peak activations, against the device's main-memory capacity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .graph import Num, Parallel, Precision
from .model import ModelSpec

_LAYER_PARTS = ("attention", "norms", "mlp", "router", "shared_experts", "experts", "encoder", "cross_attention")


@dataclass(frozen=True)
class Memory:
    weights_bytes: Num
    kv_cache_bytes: Num
    activation_bytes: Num
    capacity_bytes: float | np.ndarray | None  # per row (nan: none stated) when rows run on several devices

    @property
    def total_bytes(self) -> Num:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes

    def at(self, i: int) -> "Memory":
        """Scenario i of a vectorised result, as scalars."""
        pick = lambda x: float(np.asarray(x).reshape(-1)[i])  # noqa: E731
        return Memory(pick(self.weights_bytes), pick(self.kv_cache_bytes), pick(self.activation_bytes),
                      self.capacity_bytes)

    @property
    def fits(self) -> Num | None:
        """Whether the total fits the capacity (per row; True where a row's device states no capacity), None when
        the one device states none."""
        if self.capacity_bytes is None:
            return None
        cap = np.asarray(self.capacity_bytes, dtype=float)
        return np.where(np.isnan(cap), True, self.total_bytes <= cap) if cap.ndim else self.total_bytes <= cap


def weight_bytes(model: ModelSpec, prec: Precision, par: Parallel) -> float:
    """Weights on the busiest device: layers split over pp stages (the first stage also holds the embedding, the last
    the LM head), every matrix split over the attention's tp ranks (whole with data-parallel attention), routed
    experts over the stage's max(tp, ep) devices (Parallel.group: ep ranks, each expert split over expert_tp). Routed
    experts in Precision.weights, the other layer matrices in
    its dense_format, embedding and LM head in its head_format; norm weights at the activation precision."""
    parts = model.param_breakdown()
    norms, experts = parts.get("norms", 0), parts.get("experts", 0)
    layer = sum(v for k, v in parts.items() if k in _LAYER_PARTS) - norms - experts
    n_layers = model.n_layers + model.n_encoder_layers
    share = math.ceil(n_layers / par.pp) / n_layers
    ends = [parts.get("embedding", 0), parts.get("lm_head", 0) + parts.get("pooler", 0)]
    edge = sum(ends) if par.pp == 1 else max(ends)
    rel = parts.get("relative_position", 0) * prec.dense_format.bytes
    matrices = ((layer * prec.dense_format.bytes * share + rel + edge * prec.head_format.bytes) / par.att_tp
                + experts * prec.weights.bytes * share / par.group)
    return matrices + norms * share * prec.act.bytes


def kv_bytes(model: ModelSpec, prec: Precision, par: Parallel, batch: Num, prompt: Num, gen: Num) -> Num:
    """KV cache on the busiest device at the end of generation (prompt + gen tokens; windowed layers keep at most
    the window; encoder-decoder models cache generated tokens for self-attention and the prompt for cross-attention)."""
    if model.arch == "encoder":
        return np.zeros_like(np.asarray(batch, dtype=float))
    shape = model.attention_shape()
    elems = shape.kv_elems if shape.shared_kv else 2 * math.ceil(shape.n_kv_heads / par.att_tp) * model.dim_head
    if par.replicas > 1:  # data-parallel attention: the busiest replica's sequences
        batch = np.ceil(np.asarray(batch, dtype=float) / par.replicas)
    share = math.ceil(model.n_layers / par.pp) / model.n_layers
    if model.arch == "encoder_decoder":
        per_layer_tokens = model.n_layers * (gen + prompt)
    else:
        per_layer_tokens = 0.0
        for (sliding, _), n in model.layer_kinds().items():
            tokens = prompt + gen
            per_layer_tokens = per_layer_tokens + n * (np.minimum(tokens, model.sliding_window) if sliding else tokens)
    return batch * per_layer_tokens * share * elems * prec.kv.bytes / par.cp  # context parallel: 1 / cp a rank
