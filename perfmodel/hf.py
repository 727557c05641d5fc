"""Offline loader for Hugging Face `config.json` files.

Each supported `model_type` maps its field names onto ModelSpec's canonical ones; family facts that a config does not
state (e.g. Qwen2's Q/K/V biases, GPT-2's learned positions) are written here once, with the transformers modelling file
that implies them. An architecture not listed is an error, never a guess.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import PerfmodelError, did_you_mean
from .model import ModelSpec

Config = dict[str, Any]


def load_hf_config(path: str | Path, model_id: str | None = None) -> ModelSpec:
    """Load a Hugging Face config.json (a file, or a folder that holds one) into a ModelSpec."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PerfmodelError(f"model config file {str(p)!r} does not exist") from None
    except UnicodeDecodeError:
        raise PerfmodelError(f"model config file {str(p)!r} is not text (not UTF-8): a Hugging Face config.json is "
                             f"a JSON text file") from None
    except json.JSONDecodeError as e:
        raise PerfmodelError(f"model config file {str(p)!r} is not valid JSON: {e}") from None
    except OSError as e:
        raise PerfmodelError(f"model config file {str(p)!r} cannot be read: {e.strerror or e}") from None
    if not isinstance(cfg, dict):
        raise PerfmodelError(f"model config file {str(p)!r} must hold a JSON object")
    default_id = p.parent.name if p.name == "config.json" else p.stem
    return from_hf_dict(cfg, model_id or default_id, origin=str(p))


def from_hf_dict(cfg: Config, model_id: str, origin: str = "config") -> ModelSpec:
    model_type = cfg.get("model_type")
    if model_type is None:
        raise PerfmodelError(
            f"{origin}: `model_type` is missing; a Hugging Face config.json names its architecture there "
            f"(supported: {', '.join(sorted(_FAMILIES))})"
        )
    if model_type in ("gemma3",) and "text_config" in cfg:  # multimodal wrapper: the language model is nested
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    family = _FAMILIES.get(model_type)
    if family is None:
        raise PerfmodelError(
            f"{origin}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(_FAMILIES))}."
            f"{did_you_mean(model_type, _FAMILIES)} Describe the model in a spec file instead (README: Adding a model)."
        )
    try:
        fields = family(cfg)
    except KeyError as e:
        raise PerfmodelError(f"{origin}: {model_type} config lacks the field {e.args[0]!r}") from None
    fields = {k: v for k, v in fields.items() if v is not None}
    name = cfg.get("_name_or_path") or model_id
    try:
        return ModelSpec(id=model_id, name=str(name), **fields)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise PerfmodelError(f"{origin}: {loc}: {err['msg']}") from None


def _get(cfg: Config, *names: str, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def _act(name: str | None) -> str:
    name = (name or "silu").lower()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_tanh"):
        return "gelu_tanh"
    if name.startswith("gelu"):
        return "gelu"
    if name in ("silu", "swish", "swiglu"):
        return "silu"
    if name == "relu":
        return "relu"
    raise PerfmodelError(f"hidden_act {name!r} is not supported; supported: gelu, gelu_new, silu, relu")


def _sliding_pattern(cfg: Config) -> int:
    """Period p such that layer i is global iff (i + 1) % p == 0, from `layer_types` or the config's own pattern."""
    types = cfg.get("layer_types")
    if types:
        n = len(types)
        for p in range(1, n + 1):
            want = ["full_attention" if (p > 1 and (i + 1) % p == 0) else "sliding_attention" for i in range(n)]
            if types == want:
                return p
        if all(t == "full_attention" for t in types):
            return 0  # no windowed layers
        raise PerfmodelError(f"layer_types {types!r} is not a periodic sliding/full pattern this tool can model")
    return int(_get(cfg, "sliding_window_pattern", default=1))


def _core(cfg: Config) -> Config:
    """The dimensions most families name the standard way (LlamaConfig and its descendants, BERT, NeoX, DeepSeek)."""
    return dict(
        n_layers=cfg["num_hidden_layers"],
        d_model=cfg["hidden_size"],
        n_heads=cfg["num_attention_heads"],
        d_ff=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg.get("max_position_embeddings"),
    )


def _llama(cfg: Config) -> Config:
    """LLaMA 1/2/3.x, Mistral, Mixtral, Qwen2/3 (dense and MoE), Phi-3/4: RMSNorm, gated SiLU MLP, RoPE."""
    heads = cfg["num_attention_heads"]
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:
        window = None  # Qwen2/3 carry a window size but leave it off by default
    pattern = 1
    if window is not None and cfg.get("layer_types"):
        pattern = _sliding_pattern(cfg)
        window = window if pattern else None
    return dict(
        **_core(cfg),
        n_kv_heads=_get(cfg, "num_key_value_heads", default=heads),
        head_dim=cfg.get("head_dim"),
        activation=_act(cfg.get("hidden_act")),
        qkv_bias=bool(cfg.get("attention_bias", False)),
        out_bias=bool(cfg.get("attention_bias", False)) and cfg.get("model_type") == "llama",
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        sliding_window=window,
        sliding_window_pattern=max(pattern, 1),
        rope_fraction=float(cfg.get("partial_rotary_factor", 1.0)),
    )


def _qwen2(cfg: Config) -> Config:
    # Qwen2/2.5 hard-code bias on q/k/v (modeling_qwen2.py: nn.Linear(..., bias=True)) and none on o_proj.
    return {**_llama(cfg), "qkv_bias": True}


def _qwen3(cfg: Config) -> Config:
    # Qwen3 adds per-head RMSNorm on q and k (modeling_qwen3.py: q_norm, k_norm of head_dim).
    return {**_llama(cfg), "qk_norm": True}


def _mixtral(cfg: Config) -> Config:
    return {**_llama(cfg), "n_experts": cfg["num_local_experts"], "experts_per_token": cfg["num_experts_per_tok"]}


def _qwen_moe(cfg: Config, qk_norm: bool) -> Config:
    base = _qwen3(cfg) if qk_norm else _qwen2(cfg)
    shared = cfg.get("shared_expert_intermediate_size") or 0
    if cfg.get("mlp_only_layers"):
        raise PerfmodelError("mlp_only_layers (dense layers between MoE layers) is not supported")
    if int(cfg.get("decoder_sparse_step", 1)) != 1:
        raise PerfmodelError("decoder_sparse_step other than 1 is not supported")
    return {
        **base,
        "n_experts": cfg["num_experts"],
        "experts_per_token": cfg["num_experts_per_tok"],
        "d_ff_expert": cfg["moe_intermediate_size"],
        "n_shared_experts": 1 if shared else 0,
        "d_ff_shared": shared or None,
        "shared_expert_gate": bool(shared),  # Qwen2-MoE: a sigmoid gate (hidden -> 1) on the shared expert
    }


def _gemma2(cfg: Config) -> Config:
    # Gemma 2/3: pre- and post-norms around attention and MLP (4 RMSNorms per layer), tied embeddings, gated GELU.
    out = {**_llama(cfg), "norms_per_layer": 4, "tie_embeddings": bool(cfg.get("tie_word_embeddings", True))}
    out["activation"] = _act(_get(cfg, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"))
    window = cfg.get("sliding_window")
    if cfg.get("layer_types"):
        pattern = _sliding_pattern(cfg)
    else:  # Gemma 2 alternates local/global starting with local (modeling_gemma2.py: is_sliding = not layer_idx % 2)
        pattern = int(cfg.get("sliding_window_pattern", 2))
    out.update(sliding_window=window if pattern else None, sliding_window_pattern=max(pattern, 1))
    return out


def _gemma3(cfg: Config) -> Config:
    return {**_gemma2({**cfg, "sliding_window_pattern": cfg.get("sliding_window_pattern", 6)}), "qk_norm": True}


def _phi3(cfg: Config) -> Config:
    return _llama(cfg)  # fused qkv/gate_up in the checkpoint; same shapes and counts as LLaMA


def _gpt2(cfg: Config) -> Config:
    d = cfg["n_embd"]
    return dict(
        n_layers=cfg["n_layer"],
        d_model=d,
        n_heads=cfg["n_head"],
        d_ff=cfg.get("n_inner") or 4 * d,
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg.get("n_positions"),
        norm="layernorm",
        activation=_act(cfg.get("activation_function", "gelu_new")),
        gated_mlp=False,
        position="learned",
        learned_positions=cfg["n_positions"],
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def _gpt_neox(cfg: Config) -> Config:
    # GPT-NeoX/Pythia: LayerNorm with bias, biased linears, two norms per layer (parallel residual), untied embed_out.
    return dict(
        **_core(cfg),
        norm="layernorm",
        activation=_act(cfg.get("hidden_act", "gelu")),
        gated_mlp=False,
        rope_fraction=float(cfg.get("rotary_pct", 1.0)),
        qkv_bias=bool(cfg.get("attention_bias", True)),
        out_bias=bool(cfg.get("attention_bias", True)),
        mlp_bias=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _falcon(cfg: Config) -> Config:
    heads = _get(cfg, "num_attention_heads", "n_head")
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    if new_arch:
        kv = _get(cfg, "num_kv_heads", "n_head_kv", default=heads)
    elif cfg.get("multi_query", True):
        kv = 1
    else:
        kv = heads
    d = cfg["hidden_size"]
    # modeling_falcon.py: the new architecture has ln_attn and ln_mlp (2 norms); the old parallel_attn block has one.
    norms = 2 if (new_arch or not cfg.get("parallel_attn", True)) else 1
    if cfg.get("alibi"):
        position = "alibi"
    else:
        position = "rope"
    bias = bool(cfg.get("bias", False))
    return dict(
        n_layers=_get(cfg, "num_hidden_layers", "n_layer"),
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv,
        d_ff=cfg.get("ffn_hidden_size") or 4 * d,
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg.get("max_position_embeddings"),
        norm="layernorm",
        norms_per_layer=norms,
        activation=_act(cfg.get("activation", "gelu")),
        gated_mlp=False,
        position=position,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def _opt(cfg: Config) -> Config:
    d = cfg["hidden_size"]
    if cfg.get("word_embed_proj_dim", d) != d:
        raise PerfmodelError("OPT with word_embed_proj_dim != hidden_size (opt-350m) is not supported")
    # modeling_opt.py: OPTLearnedPositionalEmbedding keeps an offset of 2 rows.
    positions = cfg["max_position_embeddings"] + 2
    bias = bool(cfg.get("enable_bias", True))
    return dict(
        n_layers=cfg["num_hidden_layers"],
        d_model=d,
        n_heads=cfg["num_attention_heads"],
        d_ff=cfg["ffn_dim"],
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg["max_position_embeddings"],
        norm="layernorm",
        activation=_act(cfg.get("activation_function", "relu")),
        gated_mlp=False,
        position="learned",
        learned_positions=positions,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def _deepseek(cfg: Config) -> Config:
    """DeepSeek-V2/V3: MLA attention, shared + routed experts, leading dense layers. MTP layers are not counted."""
    return dict(
        **_core(cfg),
        activation=_act(cfg.get("hidden_act")),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        n_experts=cfg["n_routed_experts"],
        experts_per_token=cfg["num_experts_per_tok"],
        d_ff_expert=cfg["moe_intermediate_size"],
        n_shared_experts=cfg.get("n_shared_experts") or 0,
        n_dense_layers=cfg.get("first_k_dense_replace", 0),
        q_lora_rank=cfg.get("q_lora_rank"),
        kv_lora_rank=cfg["kv_lora_rank"],
        qk_nope_head_dim=cfg["qk_nope_head_dim"],
        qk_rope_head_dim=cfg["qk_rope_head_dim"],
        v_head_dim=cfg["v_head_dim"],
    )


def _gpt_oss(cfg: Config) -> Config:
    # modeling_gpt_oss.py: biased q/k/v/o (attention_bias), a learned sink logit per head, router with bias,
    # experts with biased gate_up and down projections.
    return {
        **_llama(cfg),
        "out_bias": bool(cfg.get("attention_bias", True)),
        "attention_sinks": True,
        "mlp_bias": True,
        "router_bias": True,
        "n_experts": cfg["num_local_experts"],
        "experts_per_token": _get(cfg, "num_experts_per_tok", "experts_per_token"),
    }


def _bert(cfg: Config) -> Config:
    # BertModel: word + position + token-type embeddings, embedding LayerNorm, post-LN blocks, pooler.
    return dict(
        **_core(cfg),
        arch="encoder",
        norm="layernorm",
        norms_per_layer=2,
        activation=_act(cfg.get("hidden_act", "gelu")),
        gated_mlp=False,
        position="learned",
        learned_positions=cfg["max_position_embeddings"],
        token_types=cfg.get("type_vocab_size", 2),
        embedding_norm=True,
        final_norm=False,  # post-LN: each block ends in its own LayerNorm
        pooler=True,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    )


def _t5(cfg: Config) -> Config:
    # T5: RMS-style LayerNorm without bias, no linear biases, relative position buckets in the first layer of each
    # stack, decoder blocks with self-attention, cross-attention and MLP (3 norms). inner_dim = num_heads * d_kv.
    gated = bool(cfg.get("is_gated_act", str(cfg.get("feed_forward_proj", "relu")).startswith("gated")))
    act = str(cfg.get("feed_forward_proj", "relu")).removeprefix("gated-")
    return dict(
        arch="encoder_decoder",
        n_layers=_get(cfg, "num_decoder_layers", "num_layers"),
        n_encoder_layers=cfg["num_layers"],
        d_model=cfg["d_model"],
        n_heads=cfg["num_heads"],
        head_dim=cfg["d_kv"],
        d_ff=cfg["d_ff"],
        vocab_size=cfg["vocab_size"],
        norm="rmsnorm",
        norms_per_layer=3,
        activation=_act(act),
        gated_mlp=gated,
        position="relative",
        relative_attention_buckets=cfg.get("relative_attention_num_buckets", 32),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


_FAMILIES: dict[str, Callable[[Config], Config]] = {
    "llama": _llama,
    "mistral": _llama,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": lambda c: _qwen_moe(c, qk_norm=False),
    "qwen3": _qwen3,
    "qwen3_moe": lambda c: _qwen_moe(c, qk_norm=True),
    "gemma2": _gemma2,
    "gemma3_text": _gemma3,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "RefinedWebModel": _falcon,
    "RefinedWeb": _falcon,
    "opt": _opt,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "gpt_oss": _gpt_oss,
    "bert": _bert,
    "t5": _t5,
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))
