"""Published training runs (validation/train/*.toml) and their prediction by perfmodel.training.

One file per source, as validation/README.md describes the inference files; the row fields are TRAIN_FIELDS. A
model outside the catalog is given by its shape (`layers`, `hidden`, `heads`, `vocab`, `ffn`): a GPT-style decoder
(LayerNorm, GELU MLP of ffn = 4 x hidden unless stated, learned positions, biases, tied embeddings: Megatron's and
MPT's GPT models). A fine-tuning recipe's settings: `master_weights = false` (pure 16-bit), `optimizer_in_backward`,
`loss_chunks`, `attention_kernel`, `loss_kernel` and `gather_unit` (perfmodel.training.ATTENTION_KERNELS,
LOSS_KERNELS, GATHER_UNITS); an
optimizer named paged (bitsandbytes' paged_adamw8bit) keeps its states in unified memory.
Throughput a GPU is compared in the source's own FLOP count (`flops`):
- megatron96: 96 B s l h^2 (1 + s/(6h) + V/(16 l h)) an iteration (Narayanan et al. 2021, eq. 3, recomputation
  counted; Megatron-DeepSpeed's "TFLOPs" with activation checkpointing: BLOOM's logs);
- megatron72: 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) (Korthikanti et al. 2022, eq. 7: model FLOPs; Megatron-Core's
  counter for dense GPT models);
- palm: 6 N + 12 L H Q T a token (perfmodel.training.model_flops_per_token, causal=False: PaLM appendix B).
A run reported in several metrics (a step time and the TFLOP/s or MFU computed from it) is scored once, by the
first of SCORE_ORDER it gives; the others are derived from the same measurement and are listed, not scored.
Nothing here is fitted (the kernels' efficiencies are the inference profiles'), so the error is a plain held-out
error per source.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import data_files, load_device, load_model
from .errors import PerfmodelError, did_you_mean
from .validation import _n, _s, source_records

TRAIN_FIELDS = {
    "framework": str, "software": str, "hardware": str, "hardware_name": str, "model": str, "model_name": str,
    "layers": int, "hidden": int, "heads": int, "vocab": int, "ffn": int, "seq_len": int, "micro_batch": int,
    "global_batch": int, "n_devices": int, "tp": int, "pp": int, "dp": int, "cp": int, "ep": int, "interleave": int,
    "recompute": str, "sequence_parallel": bool, "zero": int, "fsdp": bool, "optimizer": str, "method": str,
    "lora_rank": int, "quantize_base": str, "precision": str, "flops": str, "metric": str, "value": float,
    "where": str, "note": str, "kept_out": str, "master_weights": bool, "optimizer_in_backward": bool,
    "loss_chunks": int, "attention_kernel": str, "loss_kernel": str, "gather_unit": str,
}
TRAIN_METRICS = ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu", "hfu",
                 "memory_bytes_per_gpu", "activation_bytes_per_layer")
# one run's metrics: the first given is scored, the rest derive from it
SCORE_ORDER = ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu", "hfu")
FLOPS = ("megatron96", "megatron72", "palm")
_RUN_KEYS = ("file", "framework", "hardware", "model", "model_name", "layers", "hidden", "seq_len", "micro_batch",
             "global_batch", "n_devices", "tp", "pp", "dp", "cp", "interleave", "recompute", "zero", "method",
             "lora_rank", "quantize_base", "precision", "optimizer", "sequence_parallel", "master_weights",
             "optimizer_in_backward", "loss_chunks", "attention_kernel", "loss_kernel", "gather_unit")


def train_files() -> list[Path]:
    return data_files("validation/train", recursive=False)


def load_train_rows(paths: list[Path] | None = None) -> "Any":
    """Every training measurement as one DataFrame row (defaults applied, source attached), checked; `scored` says
    whether the row counts in the error (not kept out, not derived from another row of the same run)."""
    import pandas as pd

    records = []
    for path in paths or train_files():
        for rec, where in source_records(path, TRAIN_FIELDS):
            for key in ("metric", "value", "where", "hardware", "seq_len", "n_devices"):
                if key not in rec:
                    raise PerfmodelError(f"{where}: missing {key!r}")
            if rec["metric"] not in TRAIN_METRICS:
                raise PerfmodelError(f"{where}: metric {rec['metric']!r} is not one of: {', '.join(TRAIN_METRICS)}."
                                     f"{did_you_mean(rec['metric'], list(TRAIN_METRICS))}")
            if rec.get("flops") is not None and rec["flops"] not in FLOPS:
                raise PerfmodelError(f"{where}: flops must be one of {', '.join(FLOPS)}; got {rec['flops']!r}")
            if not rec.get("model") and not all(k in rec for k in ("layers", "hidden", "heads", "vocab")):
                raise PerfmodelError(f"{where}: give a catalog `model` or the shape (layers, hidden, heads, vocab)")
            records.append(rec)
    df = pd.DataFrame.from_records(records)
    df["derived_from"] = ""
    runs: dict[tuple, list[int]] = {}
    for j, r in enumerate(df.to_dict("records")):
        if r["metric"] in SCORE_ORDER and not _s(r.get("kept_out")):
            runs.setdefault(tuple(_s(r.get(k)) for k in _RUN_KEYS), []).append(j)
    for members in runs.values():
        first = min(members, key=lambda j: SCORE_ORDER.index(df.at[j, "metric"]))
        for j in members:
            if j != first:
                df.at[j, "derived_from"] = df.at[first, "metric"]
    kept = df["kept_out"].fillna("") if "kept_out" in df else pd.Series("", index=df.index)
    df["scored"] = (kept == "") & (df.derived_from == "")
    return df


def row_model(r: dict[str, Any]):
    """The row's model: a catalog id, or a GPT-style decoder of the row's shape."""
    from .model import ModelSpec

    if _s(r.get("model")):
        return load_model(r["model"])
    h = int(r["hidden"])
    name = _s(r.get("model_name")) or f"GPT {int(r['layers'])} x {h}"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "gpt"
    seq = int(_n(r.get("seq_len"), 2048))
    return ModelSpec(id=slug, name=name, n_layers=int(r["layers"]), d_model=h, n_heads=int(r["heads"]),
                     d_ff=int(_n(r.get("ffn"), 4 * h)), vocab_size=int(r["vocab"]), max_seq_len=seq,
                     norm="layernorm", activation="gelu", gated_mlp=False, position="learned",
                     learned_positions=seq, qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True)


def row_config(r: dict[str, Any]):
    from .training import TrainConfig

    n = int(r["n_devices"])
    tp, pp, cp = (int(_n(r.get(k), 1)) for k in ("tp", "pp", "cp"))
    dp = int(_n(r.get("dp"), n // (tp * pp * cp)))
    zero = int(_n(r.get("zero"), 3 if r.get("fsdp") is True else 0))
    method = _s(r.get("method")) or "full"
    rank = int(_n(r.get("lora_rank"), 0)) if method in ("lora", "qlora") else 0
    if method in ("lora", "qlora") and not rank:
        raise PerfmodelError("a LoRA row needs lora_rank")
    mb = int(_n(r.get("micro_batch"), 1))
    gb = int(_n(r.get("global_batch"), dp * mb))
    sp = r.get("sequence_parallel")
    flag = {k: (r.get(k) if isinstance(r.get(k), bool) else d) for k, d in (("master_weights", True),
                                                                            ("optimizer_in_backward", False))}
    return TrainConfig(seq_len=int(r["seq_len"]), global_batch=gb, micro_batch=mb, tp=tp, pp=pp, cp=cp,
                       ep=int(_n(r.get("ep"), 1)), dp=dp, zero=zero, recompute=_s(r.get("recompute")) or "none",
                       sequence_parallel=None if _s(sp) == "" else bool(sp),
                       precision=_s(r.get("precision")) or "bf16", optimizer=_optimizer(r.get("optimizer")),
                       interleave=int(_n(r.get("interleave"), 1)), lora_rank=rank,
                       quantize_base=(_s(r.get("quantize_base")) or ("q4_0" if method == "qlora" else None))
                       if rank else None, paged_optimizer="paged" in _s(r.get("optimizer")).lower(),
                       loss_chunks=int(_n(r.get("loss_chunks"), 1)),
                       attention_kernel=_s(r.get("attention_kernel")) or "engine",
                       loss_kernel=_s(r.get("loss_kernel")) or "fused",
                       gather_unit=_s(r.get("gather_unit")) or "layer", **flag)


def _optimizer(v: Any) -> str:
    s = _s(v).lower().replace("-", "").replace("_", "")
    if "8bit" in s:
        return "adam8bit"
    for name in ("adafactor", "sgd", "adam"):
        if name in s:
            return "adamw" if name == "adam" else name
    return "adamw"


def source_flops(model, cfg, convention: str) -> float:
    """FLOPs an iteration as the source counts them (module docstring)."""
    from .training import model_flops_per_token

    b, s, l, h, v = cfg.global_batch, cfg.seq_len, model.n_layers, model.d_model, model.vocab_size
    if convention == "megatron96":
        return 96.0 * b * s * l * h * h * (1 + s / (6.0 * h) + v / (16.0 * l * h))
    if convention == "megatron72":
        return 72.0 * b * s * l * h * h * (1 + s / (6.0 * h) + v / (12.0 * l * h))
    return model_flops_per_token(model, s, weight_gradients=not cfg.lora_rank, causal=False) * b * s


def predict_train(df: "Any", engine: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted value, reason a row was not predicted) for every row."""
    from .training import train

    out = np.full(len(df), np.nan)
    skip = np.full(len(df), "", dtype=object)
    cache: dict[tuple, Any] = {}
    for i, r in enumerate(df.to_dict("records")):
        if _s(r.get("kept_out")):
            skip[i] = f"kept out: {r['kept_out']}"
            continue
        try:
            model, cfg = row_model(r), row_config(r)
            key = (model.id, model.n_layers, model.d_model, r["hardware"], cfg)
            if key not in cache:
                cache[key] = train(model, load_device(r["hardware"]), cfg, engine=engine)
            est = cache[key]
            metric, n = r["metric"], cfg.devices
            if metric == "step_time_s":
                out[i] = est.step_time_s
            elif metric == "tokens_per_s":
                out[i] = est.tokens_per_s
            elif metric == "tokens_per_s_per_gpu":
                out[i] = est.tokens_per_s / n
            elif metric == "memory_bytes_per_gpu":
                out[i] = est.memory["total"]
            elif metric == "hfu":
                out[i] = est.hfu
            elif metric in ("tflops_per_gpu", "mfu"):
                conv = _s(r.get("flops")) or "palm"
                per_gpu = source_flops(est.model, cfg, conv) / (est.step_time_s * n)
                out[i] = per_gpu / 1e12 if metric == "tflops_per_gpu" else per_gpu / est.peak_flops_per_s
            else:
                skip[i] = f"{metric} is not predicted yet"
        except PerfmodelError as e:
            skip[i] = str(e).splitlines()[0][:160]
    return out, skip


MEMORY_METRICS = ("memory_bytes_per_gpu", "activation_bytes_per_layer")


def train_accuracy(df: "Any", pred: np.ndarray, kind: str = "speed") -> "Any":
    """|error| per source and overall, on the scored rows of one kind: "speed" (step time, throughput, TFLOP/s, MFU:
    one per run) or "memory" (bytes a device, bytes a layer)."""
    import pandas as pd

    d = df.assign(predicted=pred)
    memory = d.metric.isin(MEMORY_METRICS)
    d = d[d.scored & np.isfinite(d.predicted) & (memory if kind == "memory" else ~memory)]
    d = d.assign(err=(d.predicted / d.value - 1.0) * 100.0)
    rows = [dict(source=f, rows=len(g), median_abs_err_pct=g.err.abs().median(), mean_abs_err_pct=g.err.abs().mean(),
                 bias_pct=g.err.median()) for f, g in d.groupby("file")]
    rows.append(dict(source="ALL", rows=len(d), median_abs_err_pct=d.err.abs().median(),
                     mean_abs_err_pct=d.err.abs().mean(), bias_pct=d.err.median()))
    return pd.DataFrame(rows)
