"""Validation against published measurements: load the cited rows of validation/, predict each, report the error.

    from perfmodel.validation import load_rows, predict, summary
    rows = load_rows()                       # one row per published number, with its source
    rows["predicted"], rows["skip"] = predict(rows)            # each row with its own engine's profile
    rows["baseline"], _ = predict(rows, engine="ideal")        # pure roofline: datasheet peaks, no overheads
    print(summary(rows[rows.split == "test"]))

The file format is documented in validation/README.md. Rows are split once and for all into a fitting part
(`train`) and a held-out part (`test`) by a hash of what the row measured (see `split_of`); engine profiles are
fitted on `train` only (tools/fit_engines.py) and the README reports `test`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bands import BAND_CATEGORIES, Band, fit_table, lookup, rate_ratio
from .catalog import data_files, data_roots, load_device, load_model, read_toml
from .engines import (EngineProfile, checkpoint_formats, default_act, device_class, engine_files,  # noqa: F401
                      engine_ids, load_engine)  # (engine_files, engine_ids re-exported)
from .efficiency import BACKENDS
from .errors import CapacityError, PerfmodelError, did_you_mean
from .dtypes import DType

if TYPE_CHECKING:
    import pandas as pd

CATEGORY = {
    "decode_tokens_per_s": "decode", "tpot_s": "decode",
    "prefill_tokens_per_s": "prefill", "ttft_s": "prefill",
    "latency_s": "serving", "throughput_tokens_per_s": "serving", "total_throughput_tokens_per_s": "serving",
    "gemm_tflops": "kernel", "attention_tflops": "kernel", "bandwidth_gb_per_s": "kernel",
    "bus_bandwidth_gb_per_s": "kernel", "collective_time_s": "kernel",
}
ENGINES = ("llamacpp", "vllm", "trtllm", "sglang", "hf", "mlperf", "kernel", "fa2", "mlx", "exllamav2", "ctranslate2",
           "onnxruntime", "openvino", "ipex-llm", "lmdeploy")
ROW_FIELDS = {
    "hardware": str, "hardware_name": str, "model": str, "model_name": str, "engine": str, "software": str,
    "backend": str, "matrix_units": bool, "graphs": bool, "kept_out": str, "batching": str,
    "weights": str, "kv": str, "act": str, "gemm": str, "dequant": str, "attention": str, "logits": str, "ubatch": int,
    "batch": int,
    "prompt_len": int, "gen_len": int, "tp": int, "pp": int,
    "n_devices": int, "metric": str, "value": float, "where": str, "note": str,
    "m": int, "n": int, "k": int, "dtype": str, "seq_len": int, "heads": int, "head_dim": int, "causal": bool,
    "kernel": str, "groups": int, "quant_input": bool,
    "collective": str, "message_bytes": int, "nodes": int, "library": str, "algorithm": str, "ep": int,
    "dp_attention": bool, "gpu_layers": int, "host": str, "offload_experts": bool, "draft_model": str,
    "draft_tokens": int, "accept_length": float, "requests": int, "lengths": str,
}
# collectives of the kernel rows, and the libraries that run them (nccl: NCCL's or RCCL's algorithms only; the
# others are a serving engine's own peer-to-peer kernels, costed with NCCL's beside them)
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
LIBRARIES = ("nccl", "custom", "custom_one_shot", "custom_two_shot", "symm_mem_multimem", "symm_mem_two_shot")
REQUIRED = ("engine", "metric", "value", "where")
SOURCE_REQUIRED = ("title", "url")


def validation_files() -> list[Path]:
    return data_files("validation", recursive=False)


def source_records(path: Path, fields: dict[str, type]):
    """(the row with the file's defaults, 'FILE row N') for each row of one source file: its [source] and every
    field checked against `fields` (name: type), the value > 0; the row carries its file, row number, source title
    and url."""
    data = read_toml(path)
    src = data.get("source", {})
    missing = [k for k in SOURCE_REQUIRED if not src.get(k)]
    if missing:
        raise PerfmodelError(f"{path}: [source] needs {', '.join(missing)}")
    defaults = data.get("defaults", {})
    rows = data.get("rows", [])
    if not rows:
        raise PerfmodelError(f"{path}: no [[rows]]")
    for i, row in enumerate(rows, 1):
        rec = {**defaults, **row}
        where = f"{path.name} row {i}"
        for key, value in rec.items():
            if key not in fields:
                raise PerfmodelError(f"{where}: unknown field {key!r}.{did_you_mean(key, list(fields))} "
                                     f"Fields: {', '.join(fields)}")
            want = fields[key]
            ok = isinstance(value, want) or (want is float and isinstance(value, int)) and not isinstance(
                value, bool)
            if not ok:
                raise PerfmodelError(f"{where}: {key} = {value!r} should be a {want.__name__}")
        if "value" in rec and not rec["value"] > 0:  # a missing value is the caller's to name
            raise PerfmodelError(f"{where}: value must be > 0, got {rec['value']!r}")
        rec.update(file=path.name, row=i, source=src["title"], url=src["url"])
        yield rec, where


def load_rows(paths: list[Path] | None = None) -> "pd.DataFrame":
    """Every measurement of the validation files as one DataFrame row (defaults applied, source attached)."""
    import pandas as pd

    records = []
    for path in paths or validation_files():
        for rec, where in source_records(path, ROW_FIELDS):
            for key in REQUIRED:
                if key not in rec:
                    raise PerfmodelError(f"{where}: missing {key!r}")
            if rec["metric"] not in CATEGORY:
                raise PerfmodelError(f"{where}: metric {rec['metric']!r} is not one of: {', '.join(CATEGORY)}."
                                     f"{did_you_mean(rec['metric'], list(CATEGORY))}")
            if rec["engine"] not in ENGINES:
                raise PerfmodelError(f"{where}: engine {rec['engine']!r} is not one of: {', '.join(ENGINES)}")
            if rec.get("batching") is not None and rec["batching"] not in ("static", "continuous"):
                raise PerfmodelError(f"{where}: batching must be 'static' or 'continuous'; got {rec['batching']!r}")
            if rec.get("lengths") is not None and rec["lengths"] not in ("fixed", "uniform"):
                raise PerfmodelError(f"{where}: lengths must be 'fixed' or 'uniform'; got {rec['lengths']!r}")
            if rec.get("requests") is not None and not rec["requests"] >= 1:
                raise PerfmodelError(f"{where}: requests must be >= 1; got {rec['requests']!r}")
            if rec.get("backend") is not None and rec["backend"] not in BACKENDS:
                raise PerfmodelError(f"{where}: backend {rec['backend']!r} is not one of: {', '.join(BACKENDS)}."
                                     f"{did_you_mean(rec['backend'], list(BACKENDS))}")
            if rec.get("collective") is not None and rec["collective"] not in COLLECTIVES:
                raise PerfmodelError(f"{where}: collective {rec['collective']!r} is not one of: "
                                     f"{', '.join(COLLECTIVES)}")
            if rec.get("library") is not None and rec["library"] not in LIBRARIES:
                raise PerfmodelError(f"{where}: library {rec['library']!r} is not one of: {', '.join(LIBRARIES)}")
            if rec["metric"] in ("bus_bandwidth_gb_per_s", "collective_time_s") and not rec.get("message_bytes"):
                raise PerfmodelError(f"{where}: {rec['metric']} needs message_bytes (the collective's size)")
            records.append(rec)
    df = pd.DataFrame.from_records(records)
    df["category"] = df.metric.map(CATEGORY)
    # TTFT and TPOT measured under concurrent load (queueing, prefills interleaved with decodes) are serving
    # figures, not a single prefill or decode step
    if "batch" in df:
        loaded = df.metric.isin(["ttft_s", "tpot_s"]) & (df.batch.fillna(1) > 1)
        df.loc[loaded, "category"] = "serving"
    df["split"] = [split_of(r) for r in df.to_dict("records")]
    return df


def split_of(row: dict[str, Any]) -> str:
    """`test` for about one row in three, `train` otherwise: a fixed function of what the row measured (its file,
    device, model, format, metric, shape and where it sits in the source), so the split never changes when rows are
    added elsewhere and no fitting can choose it."""
    keys = ("file", "hardware", "hardware_name", "model", "model_name", "weights", "metric", "batch", "prompt_len",
            "gen_len", "tp", "m", "n", "k", "seq_len", "head_dim", "where")
    text = "|".join(f"{k}={_s(row.get(k))}" for k in keys)
    return "test" if hashlib.sha256(text.encode()).digest()[0] % 3 == 0 else "train"


# Stacks costed with another's profile: SGLang's kernels are vLLM's. An MLPerf submission runs its submitter's stack,
# which its `software` names: TensorRT-LLM (NVIDIA's harness), vLLM (AMD's, Red Hat's), else the literature defaults.
PROFILE_OF = {"sglang": "vllm"}


def profile_of(engine: str, software: Any = None) -> str:
    """The engine profile a row's stack is costed with."""
    if engine == "mlperf":
        text = _s(software).lower()
        return "vllm" if "vllm" in text else "trtllm" if "tensorrt" in text or not text else "default"
    return PROFILE_OF.get(engine, engine)


def profiles_of(rows: "pd.DataFrame") -> list[str]:
    """profile_of for every row of a table."""
    soft = rows["software"] if "software" in rows else [None] * len(rows)
    return [profile_of(e, s) for e, s in zip(rows.engine, soft)]


# Prediction -------------------------------------------------------------------------------------------------------

def predict(df: "pd.DataFrame", engine: str | None = None, profiles: dict[str, EngineProfile] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted value, reason a row was not predicted) for every row; each row costed with its own engine's
    profile unless `engine` names one for all (e.g. "ideal" for the pure-roofline baseline). `profiles` overrides
    loaded profiles by id (used when fitting). Rows sharing a model, device, formats, parallelism and profile are
    one vectorised evaluation, or, for the serving rows, one tabulation of the simulator's iteration cost."""
    from .evaluate import Workload

    devices: dict[str, Any] = {}
    models: dict[str, Any] = {}

    def dev_of(hw: str):  # each device and model loaded once per call
        if hw not in devices:
            devices[hw] = load_device(hw)
        return devices[hw]

    def model_of(name: str):
        if name not in models:
            models[name] = load_model(name)
        return models[name]

    out = np.full(len(df), np.nan)
    skip = np.full(len(df), "", dtype=object)
    cache: dict[str, EngineProfile] = dict(profiles or {})
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for i, r in enumerate(df.to_dict("records")):
        name = engine or profile_of(r["engine"], r.get("software"))
        if _s(r.get("kept_out")):  # a known mismatch between what was measured and what a row can say
            skip[i] = f"kept out: {r['kept_out']}"
            continue
        try:
            hw = _s(r.get("hardware"))
            if not hw:
                skip[i] = "hardware not in the catalog"
                continue
            if r["category"] == "kernel":  # single kernels: what a tuned library reaches (`kernel`, `fa2`, ...)
                kname = name
                if kname not in cache:
                    cache[kname] = load_engine(kname)
                device = dev_of(hw)
                out[i] = _predict_kernel(r, device, cache[kname].efficiency(device))
                continue
            mdl = _s(r.get("model"))
            if not mdl:
                skip[i] = "model not in the catalog"
                continue
            if name not in cache:
                cache[name] = load_engine(name)
            if _n(r.get("gpu_layers"), -1) >= 0 or r.get("offload_experts") is True:  # part on the host CPU
                out[i] = _predict_offload(r, model_of(mdl), dev_of(hw), cache[name], name)
                continue
            if _s(r.get("draft_model")):  # speculative decoding
                out[i] = _predict_speculative(r, model_of(mdl), dev_of(hw), cache[name])
                continue
            weights = _s(r.get("weights")) or "bf16"
            cfg = (name, hw, mdl, weights, _s(r.get("kv")) or Workload.model_fields["kv"].default.value,
                   _s(r.get("act")) or default_act(r["engine"], weights, dev_of(hw)), _s(r.get("gemm")) or None,
                   _s(r.get("dequant")) or "fused", _s(r.get("attention")) or "flash", int(_n(r.get("tp"), 1)),
                   int(_n(r.get("pp"), 1)), _s(r.get("backend")) or None, r.get("matrix_units") is not False,
                   _s(r.get("logits")) or "last", int(_n(r.get("ubatch"), UBATCH.get(r["engine"], 0))) or None,
                   profile_of(r["engine"], r.get("software")),  # whose checkpoint: engines.checkpoint_formats
                   r.get("graphs") is not False, int(_n(r.get("ep"), 1)), r.get("dp_attention") is True)
            groups.setdefault(cfg, []).append((i, r))
        except PerfmodelError as e:
            skip[i] = str(e).splitlines()[0][:160]
    for (name, hw, mdl, weights, kv, act, gemm, dequant, attention, tp, pp, backend, mx, logits, ubatch, stack,
         graphs, ep, dp_att), members in groups.items():
        try:
            model, device = model_of(mdl), dev_of(hw)
            wl = checkpoint_formats(Workload(weights=weights, kv=kv, act=act, gemm=gemm, dequant=dequant,
                                             attention=attention, tp=tp, pp=pp, backend=backend, matrix_units=mx,
                                             logits=logits, ubatch=ubatch, graphs=graphs, ep=ep,
                                             dp_attention=dp_att), model, stack)
            _predict_group(model, device, cache[name].efficiency(device), wl, members, out, skip)
        except PerfmodelError as e:
            for i, _ in members:
                skip[i] = str(e).splitlines()[0][:160]
    return out, skip


# Tokens per micro-batch where a row does not say: llama.cpp runs a prompt in micro-batches of n_ubatch = 512 tokens
# (llama-bench's `-ub` default since n_ubatch was split from n_batch, ggml-org/llama.cpp#6017, March 2024; before it
# n_batch = 512 played that part)
UBATCH = {"llamacpp": 512}


def _s(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _n(v: Any, default: float) -> float:
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _point(r: dict[str, Any]) -> tuple[float, float, float]:
    """The (batch, prompt, gen) point a decode or prefill row is costed at (serving rows: _bench)."""
    prompt, gen, metric = _n(r.get("prompt_len"), 0), _n(r.get("gen_len"), 0), r["metric"]
    b = _n(r.get("batch"), 1)
    if metric in ("decode_tokens_per_s", "tpot_s"):  # gen tokens one by one after the prompt (llama-bench tg: none)
        return b, max(prompt, 1), max(gen, 1) + 1
    return b, prompt, 1  # prefill_tokens_per_s, ttft_s


# Most sequences an engine runs at once where a serving table leaves it to the engine ("max throughput": vLLM V1's
# max_num_seqs on H100-class GPUs is 1024; the KV cache usually holds fewer), and the tokens an iteration
# (max_num_batched_tokens; TensorRT-LLM's max_num_tokens default): the simulated engine's limits.
MAX_SERVING_BATCH = 1024
MAX_BATCHED_TOKENS = 8192


def _bench(r: dict[str, Any]):
    """The benchmark a serving row ran, for the simulator (perfmodel.serving.Bench): requests of the row's lengths
    (or, `lengths = "uniform"`, drawn uniformly around them as a random dataset draws them) sent at time 0, `requests`
    of them where the row says how many.
    - `batching = "static"`: one static batch of `batch` requests (padded, prefilled together);
    - latency_s: one batch of `batch` requests sent at once (vLLM's benchmark_latency), continuous batching;
    - ttft_s / tpot_s at a batch > 1: `batch` clients in a closed loop (a serving benchmark's --max-concurrency),
      3 x batch requests unless the row says;
    - throughput: at most `batch` sequences at once (the engine's max_num_seqs or the client's concurrency, which
      keep the same number in flight), or MAX_SERVING_BATCH with no batch given, over 3 waves of what the engine
      holds at once (the KV cache may hold fewer) unless the row says how many requests.
    The KV cache is sized by the row's engine's rule (serving.kv_memory_rule: TensorRT-LLM's share of free memory)."""
    from .serving import Bench, Scheduler, kv_memory_rule

    p, g = max(round(_n(r.get("prompt_len"), 0)), 1), max(round(_n(r.get("gen_len"), 1)), 1)
    b = round(_n(r.get("batch"), 0))
    n = round(_n(r.get("requests"), 0)) or None
    lengths = _s(r.get("lengths")) or "fixed"
    kv = kv_memory_rule(profile_of(r["engine"], r.get("software")))
    if r.get("batching") == "static":
        return Bench(p, g, Scheduler(policy="static", max_num_seqs=max(b, 1), kv_memory=kv), requests=max(b, 1),
                     lengths=lengths)
    seqs = b if b > 0 else MAX_SERVING_BATCH
    sch = Scheduler(max_num_seqs=seqs, max_batched_tokens=max(MAX_BATCHED_TOKENS, seqs), kv_memory=kv)
    if r["metric"] == "latency_s":
        return Bench(p, g, sch, requests=max(b, 1), lengths=lengths)
    if r["metric"] in ("ttft_s", "tpot_s"):
        return Bench(p, g, sch, clients=seqs, requests=n or max(3 * seqs, 24), lengths=lengths)
    return Bench(p, g, sch, requests=n, lengths=lengths)


def _predict_group(model, device, eff, wl, members, out, skip) -> None:
    serving = [(i, r) for i, r in members if r["category"] == "serving"]
    if serving:
        _predict_serving(model, device, eff, wl, serving, out, skip)
    members = [(i, r) for i, r in members if r["category"] != "serving"]
    if not members:
        return
    from .evaluate import evaluate, row_errors

    batch, prompt, gen = (np.array(x, dtype=float) for x in zip(*(_point(r) for _, r in members)))
    errs = row_errors(model, prompt, gen)
    ok = errs == ""
    if not ok.any():
        for j, (i, _) in enumerate(members):
            skip[i] = str(errs[j])[:160]
        return
    ev = evaluate(model, device, wl, eff, batch[ok], prompt[ok], gen[ok])
    met = {k: np.full(len(members), np.nan) for k in ev.metrics}
    for k, v in ev.metrics.items():
        met[k][ok] = np.broadcast_to(v, ok.sum())
    fits = np.zeros(len(members), dtype=bool)
    fits[ok] = True if ev.memory.fits is None else np.broadcast_to(ev.memory.fits, ok.sum())
    for j, (i, r) in enumerate(members):
        if not ok[j] or not fits[j]:
            skip[i] = str(errs[j])[:160] if not ok[j] else f"does not fit in {device.id}'s memory"
            continue
        out[i] = float({"decode_tokens_per_s": batch[j] / met["tpot_s"][j], "tpot_s": met["tpot_s"][j],
                        "prefill_tokens_per_s": met["prefill_tokens_per_s"][j],
                        "ttft_s": met["ttft_s"][j]}[r["metric"]])


# serving predictions made in this process, by (model, device, formats, efficiencies, benchmark, metric, devices):
# the folds of a leave-one-source-out fit walk mostly the same trials, and every trial costs the same rows again
_SERVED: dict[tuple, float | str] = {}


def _predict_serving(model, device, eff, wl, members, out, skip) -> None:
    """Serving rows: each row's benchmark (_bench) run by the request-level simulator (perfmodel.serving.benchmarks:
    continuous batching with chunked prefill, paged KV cache, preemption), the mean of the row's latency metric or
    the run's throughput; a throughput over `n_devices` counts the independent copies of the model side by side."""
    from .serving import benchmarks

    tp, pp = wl.parallel.group, wl.pp  # devices of a stage: max(tp, ep)
    base = (model.id, device.id, wl, None if eff is None else eff.model_dump_json())
    keys = [(base, _bench(r), r["metric"], _n(r.get("n_devices"), tp * pp)) for _, r in members]
    todo = [j for j, k in enumerate(keys) if k not in _SERVED]
    if todo:
        if len(_SERVED) > 500_000:
            _SERVED.clear()
        try:
            results = benchmarks(model, device, wl, eff, [keys[j][1] for j in todo])
        except PerfmodelError as e:
            results = [e] * len(todo)
        for j, res in zip(todo, results):
            _, bench, metric, n_dev = keys[j]
            if isinstance(res, CapacityError):
                _SERVED[keys[j]] = f"does not fit in {device.id}'s memory"
            elif isinstance(res, PerfmodelError):  # e.g. not a decoder-only model (the simulator's own check)
                _SERVED[keys[j]] = str(res).splitlines()[0][:160]
            elif metric in ("throughput_tokens_per_s", "total_throughput_tokens_per_s"):
                copies = n_dev / (tp * pp)  # independent copies of the model, side by side
                tokens = (bench.prompt + bench.gen) / bench.gen if metric.startswith("total") else 1.0
                _SERVED[keys[j]] = float(res.produced.sum()) / res.span_s * copies * tokens
            else:
                _SERVED[keys[j]] = float(np.mean({"ttft_s": res.ttft_s, "tpot_s": res.tpot_s,
                                                  "latency_s": res.e2e_latency_s}[metric]))
    for (i, _), k in zip(members, keys):
        v = _SERVED[k]
        if isinstance(v, str):
            skip[i] = v
        else:
            out[i] = v


def _row_workload(r: dict[str, Any], model, device, **fields: Any):
    """The workload a model row states (formats, batch, lengths; `fields` besides), in the row's engine's checkpoint
    formats: for the rows predicted one by one (offload, speculative decoding)."""
    from .evaluate import Workload

    weights = _s(r.get("weights")) or "bf16"
    return checkpoint_formats(Workload(weights=weights, kv=_s(r.get("kv")) or "bf16",
                                       act=_s(r.get("act")) or default_act(r["engine"], weights, device),
                                       batch=int(_n(r.get("batch"), 1)), prompt_len=int(_n(r.get("prompt_len"), 512)),
                                       gen_len=int(_n(r.get("gen_len"), 128)), **fields),
                              model, profile_of(r["engine"], r.get("software")))


def _predict_offload(r: dict[str, Any], model, device, profile: EngineProfile, name: str) -> float:
    """A partial-offload row (llama.cpp -ngl, --cpu-moe): perfmodel.offload with the engine's efficiency on both the
    GPU and the host CPU."""
    from .offload import estimate_offload

    host = load_device(_s(r.get("host"))) if _s(r.get("host")) else None
    wl = _row_workload(r, model, device, ubatch=int(_n(r.get("ubatch"), UBATCH.get(r["engine"], 0))) or None)
    layers = _n(r.get("gpu_layers"), -1)
    est = estimate_offload(model, device, wl, profile.efficiency(device), int(layers) if layers >= 0 else None,
                           r.get("offload_experts") is True, host, name,
                           host_efficiency=profile.efficiency(host) if host is not None else None)
    m = est.metrics
    return float({"decode_tokens_per_s": m["decode_tokens_per_s"], "tpot_s": m["tpot_s"],
                  "prefill_tokens_per_s": m["prefill_tokens_per_s"], "ttft_s": m["ttft_s"]}[r["metric"]])


def _predict_speculative(r: dict[str, Any], model, device, profile: EngineProfile) -> float:
    """A speculative-decoding row: perfmodel.speculative with the drafter, draft tokens and the acceptance length
    the source measured (decode_tokens_per_s or tpot_s)."""
    from .speculative import speculative

    wl = _row_workload(r, model, device, tp=int(_n(r.get("tp"), 1)))
    length = _n(r.get("accept_length"), math.nan)
    sp = speculative(model, device, wl, profile.efficiency(device), _s(r.get("draft_model")),
                     int(_n(r.get("draft_tokens"), 4)), accept_length=None if math.isnan(length) else length)
    return {"decode_tokens_per_s": sp.decode_tokens_per_s * wl.batch, "tpot_s": sp.tpot_s}[r["metric"]]


def _predict_collective(r: dict[str, Any], device, eff) -> float:
    """A collective of `message_bytes` over n_devices ranks on `nodes` nodes: its time by the library's choice
    (perfmodel.collectives), as collective_time_s, or as nccl-tests' bus bandwidth (bytes / time x 2 (n - 1) / n for
    an all-reduce, (n - 1) / n for an all-gather, reduce-scatter or all-to-all, 1 for a send), in GB/s."""
    from dataclasses import replace

    from .collectives import choose, engine_candidates, fabric_of, nccl_candidates
    from .graph import Comm

    n = int(_n(r.get("n_devices"), 1))
    nodes = int(_n(r.get("nodes"), 1))
    nbytes = float(r["message_bytes"])
    comm = Comm(_s(r.get("collective")) or "all_reduce") if _s(r.get("collective")) != "send_recv" else Comm.P2P
    fab = fabric_of(device)
    per_node = -(-n // nodes)
    if per_node != fab.devices_per_node:  # the ranks as the row ran them: n / nodes a node
        fab = replace(fab, devices_per_node=per_node)
    lib = _s(r.get("library")) or "nccl"
    cands = nccl_candidates(comm, n if comm != Comm.P2P else 2, fab, eff.interconnect, eff.interconnect_latency_s)
    if lib != "nccl":
        kernels = engine_candidates(comm, n, fab, eff.interconnect)
        want = {"custom_one_shot": ("one_shot",), "custom_two_shot": ("two_shot",), "symm_mem_multimem": ("multimem",),
                "symm_mem_two_shot": ("two_shot",)}.get(lib, ("one_shot", "two_shot"))
        cands = [c for c in kernels if c.algorithm in want] or cands
    forced = _s(r.get("algorithm")).lower()  # NCCL_ALGO set for the run
    if forced:
        cands = [c for c in cands if c.algorithm == forced] or cands
    _, t = choose(cands, nbytes)
    if r["metric"] == "collective_time_s":
        return t
    factor = {Comm.ALL_REDUCE: 2 * (n - 1) / n, Comm.P2P: 1.0}.get(comm, (n - 1) / n)
    return nbytes / t * factor / 1e9


def _predict_kernel(r: dict[str, Any], device, eff) -> float:
    from .cost import Machine, ops_time_s
    from .graph import Op, OpKind, Parallel, block_scale_work, tiled_causal_pairs

    metric = r["metric"]
    if metric in ("bus_bandwidth_gb_per_s", "collective_time_s"):
        return _predict_collective(r, device, eff)
    mach = Machine(device, eff, Parallel())
    if metric == "bandwidth_gb_per_s":
        # main memory: a 2 GB working set (beyond every cache, within every device's own memory: HBM on a GH200,
        # not its CPU's LPDDR); n_devices sockets/dies measured together
        return float(mach.bandwidth_for(2e9)) / 1e9 * _n(r.get("n_devices"), 1)
    dt = DType.parse(_s(r.get("dtype")) or "bf16")
    it = dt.bytes
    before = []  # kernels the timed call runs ahead of the measured one
    if metric == "gemm_tflops":
        m, n, k = (int(r[x]) for x in ("m", "n", "k"))
        g = int(_n(r.get("groups"), 1))  # grouped GEMM (e.g. MoE experts): g independent m x k x n products
        flops = 2.0 * m * n * k * g
        scale, variant = block_scale_work(dt, dt, flops)
        op = Op("gemm", OpKind.MATMUL, dt, flops=flops, weight_bytes=k * n * it * g,
                act_in_bytes=m * k * it * g, act_out_bytes=m * n * it * g, rows=m, scale_flops=scale, variant=variant)
        if r.get("quant_input") is True:
            # the timed call first quantises a BF16 input to `dtype` in its own kernel (vLLM's
            # W8A8BlockFp8LinearOp.apply): it reads m x k BF16 and writes m x k at `dtype` plus an FP32 scale per
            # 128-wide group, with an abs-max, a divide and a convert per element
            before.append(Op("quant_input", OpKind.ELEMENTWISE, DType.BF16, flops=3.0 * m * k * g,
                             act_in_bytes=2.0 * m * k * g, act_out_bytes=m * k * g * (it + 4.0 / 128)))
    else:  # attention_tflops: FLOPs 4 x s^2 x d x heads x batch, halved when causal (the FlashAttention papers')
        s, h, d, b = (int(_n(r.get(x), 1)) for x in ("seq_len", "heads", "head_dim", "batch"))
        causal = bool(r.get("causal", False))
        flops = 4.0 * s * s * d * h * b / (2 if causal else 1)
        # pairs per sequence and head the kernel computes: causal ones plus the masked rest of each diagonal tile
        pairs = float(tiled_causal_pairs(float(s), float(s))) if causal else float(s * s)
        op = Op("attention", OpKind.ATTENTION, dt, flops=4.0 * pairs * d * h * b, act_in_bytes=3 * b * h * s * d * it,
                act_out_bytes=b * h * s * d * it, rows=s, exp_ops=pairs * h * b,  # one exp per pair and head
                keys=pairs / s)
    t = float(ops_time_s((*before, op), mach))
    return flops / t / 1e12  # the row's FLOP convention, not the work the kernel does (attention's masked tiles)


# Error bands: held-out residuals and their coverage -----------------------------------------------------------------

def residuals(rows: "Any") -> "Any":
    """Held-out residuals of the validation rows: each row's own engine on the test split (the fitted profiles never
    saw it), and `default` and `ideal` on every row (nothing of theirs is fitted). Columns: file, engine,
    device_class, category, metric, split, ratio (measured/predicted as a rate)."""
    import pandas as pd

    rows = rows[rows.category.isin(BAND_CATEGORIES)].reset_index(drop=True)
    classes = {hw: device_class(load_device(hw)) for hw in rows.hardware.dropna().unique() if hw}
    engine_of = pd.Series(profiles_of(rows), index=rows.index)
    frames = []
    for name in (None, "default", "ideal"):
        pred, _ = predict(rows, engine=name)
        f = pd.DataFrame({"file": rows.file, "row": rows.row, "engine": engine_of if name is None else name,
                          "device_class": rows.hardware.map(classes), "category": rows.category,
                          "metric": rows.metric, "split": rows.split,
                          "ratio": rate_ratio(rows.value, pred, rows.metric)})
        frames.append(f[f.split == "test"] if name is None else f)
    out = pd.concat(frames, ignore_index=True)
    return out[np.isfinite(out.ratio) & (out.ratio > 0) & out.device_class.notna()].reset_index(drop=True)


def loso_coverage(resid: "Any") -> "Any":
    """Leave-one-source-out: each source's rows get the band fitted on every other source's rows; per (engine,
    category): rows, the fraction whose measured value lies inside its band, and the median band width
    (r90 / r10: 2 means the high end is twice the low end)."""
    import pandas as pd

    inside = np.full(len(resid), np.nan)
    width = np.full(len(resid), np.nan)
    for src, idx in resid.groupby("file").indices.items():
        table = fit_table(resid[resid.file != src])
        sub = resid.iloc[idx]
        cache: dict[tuple, Band | None] = {}
        for j, r in zip(idx, sub.itertuples()):
            key = (r.device_class, r.engine, r.category)
            if key not in cache:
                cache[key] = lookup(table, *key)
            b = cache[key]
            if b is not None:
                inside[j] = float(b.low_ratio <= r.ratio <= b.high_ratio)
                width[j] = b.high_ratio / b.low_ratio
    d = resid.assign(inside=inside, width=width)
    d = d[np.isfinite(d.inside)]
    out = []
    for keys, g in [(("ALL", "all"), d)] + list(d.groupby(["engine", "category"])):
        out.append({"engine": keys[0], "category": keys[1], "rows": len(g), "sources": g.file.nunique(),
                    "coverage": float(g.inside.mean()), "median_width": float(g.width.median())})
    for cat, g in d[~d.engine.isin(["default", "ideal"])].groupby("category"):
        out.append({"engine": "own engine", "category": cat, "rows": len(g), "sources": g.file.nunique(),
                    "coverage": float(g.inside.mean()), "median_width": float(g.width.median())})
    return pd.DataFrame(out)


# Leave-one-source-out ---------------------------------------------------------------------------------------------

LOSO_FILE = "loso.csv"  # in validation/: each row's prediction by profiles fitted without its source


def leave_one_source_out(rows: "pd.DataFrame", fit: Any, predict_rows: Any, sources: Any = None) -> np.ndarray:
    """Each source's rows predicted by what was fitted on every other source's rows: `fit(train_rows) -> fitted`,
    `predict_rows(fitted, rows) -> values`. A source is a validation file (one document or table); `sources`: only
    these (e.g. one worker's share). Returns the predictions aligned with `rows` (NaN where a row got none)."""
    out = np.full(len(rows), np.nan)
    for src, idx in rows.groupby("file", sort=True).indices.items():
        if sources is not None and src not in sources:
            continue
        fitted = fit(rows[rows.file != src].reset_index(drop=True))
        out[idx] = np.asarray(predict_rows(fitted, rows.iloc[idx].reset_index(drop=True)), dtype=float)
    return out


def rows_digest(rows: "pd.DataFrame") -> str:
    """A checksum of what the validation rows measured (file, row, metric, value, engine, hardware, model): a stored
    LOSO table is used only for the rows it was computed on."""
    cols = [c for c in ("file", "row", "metric", "value", "engine", "hardware", "model") if c in rows]
    text = "\n".join("|".join(_s(v) for v in r) for r in rows[cols].itertuples(index=False))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_loso(rows: "pd.DataFrame", path: Path | None = None) -> tuple[np.ndarray | None, str]:
    """(the stored LOSO prediction of every row, or None; why not). Written by tools/fit_engines.py --loso."""
    import pandas as pd

    path = path or next((root / "validation" / LOSO_FILE for root in data_roots()
                         if (root / "validation" / LOSO_FILE).is_file()), None)
    if path is None:
        return None, "no LOSO table (python tools/fit_engines.py --loso writes validation/loso.csv)"
    table = pd.read_csv(path, dtype={"file": str})
    if table.empty or str(table.digest.iloc[0]) != rows_digest(rows):
        return None, f"{path.name} was computed on other validation rows: rerun python tools/fit_engines.py --loso"
    pred = rows[["file", "row"]].merge(table[["file", "row", "predicted"]], on=["file", "row"], how="left")
    return pred.predicted.to_numpy(dtype=float), ""


def unpredicted(rows: "pd.DataFrame", pred: np.ndarray) -> np.ndarray:
    """Why a row has no prediction ('' where it has one), in predict()'s words for rows whose device or model is not
    in the catalog (no catalog id), so that in_catalog() and coverage count only the others."""
    hw = rows.hardware.fillna("").astype(str).to_numpy()
    model = (rows.model.fillna("").astype(str).to_numpy() if "model" in rows else np.full(len(rows), ""))
    needs_model = (rows.category != "kernel").to_numpy()
    kept = (rows.kept_out.fillna("").astype(str).to_numpy() if "kept_out" in rows else np.full(len(rows), ""))
    return np.where(np.isfinite(pred), "", np.where(kept != "", "kept out", np.where(
        hw == "", "hardware not in the catalog", np.where((model == "") & needs_model, "model not in the catalog",
                                                          "not predicted"))))


def accuracy(df: "pd.DataFrame", col: str = "predicted") -> "pd.DataFrame":
    """Per category: rows predicted, median and mean |error| %, the fraction within 20 %, the median signed error
    (bias, %: + over-predicts a rate) and coverage (rows predicted / rows whose model and device exist)."""
    import pandas as pd

    known = in_catalog(df.assign(predicted=df[col]))
    out = []
    for cat, g in [("ALL", known)] + list(known.groupby("category")):
        pred = g[col].to_numpy(dtype=float)
        ok = np.isfinite(pred)
        signed = (pred[ok] / g.value.to_numpy(dtype=float)[ok] - 1.0) * 100.0
        out.append({"category": cat, "rows": int(ok.sum()), "known": len(g),
                    "median_ape": float(np.median(np.abs(signed))) if ok.any() else np.nan,
                    "mean_ape": float(np.mean(np.abs(signed))) if ok.any() else np.nan,
                    "within_20": float(np.mean(np.abs(signed) <= 20.0)) if ok.any() else np.nan,
                    "bias": float(np.median(signed)) if ok.any() else np.nan,
                    "coverage": float(ok.sum() / max(len(g), 1))})
    return pd.DataFrame(out)


# Report -----------------------------------------------------------------------------------------------------------

def errors(df: "pd.DataFrame", col: str) -> np.ndarray:
    """Absolute percentage error of `col` against the measured value."""
    return np.abs(df[col].to_numpy(dtype=float) / df["value"].to_numpy(dtype=float) - 1.0) * 100.0


def in_catalog(df: "pd.DataFrame") -> "pd.DataFrame":
    """The rows (columns `predicted`, `skipped`) whose model and device are in the catalog, less those kept out for a
    known mismatch (`kept_out`): what coverage is counted on."""
    out = df.skipped.str.contains("not in the catalog") | df.skipped.str.startswith("kept out")
    return df[(df.skipped == "") | ~out]


def coverage(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per category, of the rows whose model and device are in the catalog (`known`): how many got a prediction,
    and the fraction."""
    import pandas as pd

    df = in_catalog(df)
    ok = np.isfinite(df.predicted.astype(float))
    out = [{"category": "ALL", "known": len(df), "predicted": int(ok.sum())}]
    for cat, g in df.groupby("category"):
        out.append({"category": cat, "known": len(g), "predicted": int(np.isfinite(g.predicted.astype(float)).sum())})
    res = pd.DataFrame(out)
    res["coverage"] = res.predicted / res.known.clip(lower=1)
    return res


def summary(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per category and metric: rows, median and mean absolute % error of ours and of the pure-roofline baseline,
    and the worst row of ours."""
    import pandas as pd

    d = df[np.isfinite(df.predicted.astype(float))].copy()
    d["ape"], d["ape_base"] = errors(d, "predicted"), errors(d, "baseline")
    out = []
    groups = [(("ALL", ""), d)] + [((c, ""), g) for c, g in d.groupby("category")] + list(
        d.groupby(["category", "metric"]))
    for (cat, metric), g in groups:
        if metric == "" and cat != "ALL" and g.metric.nunique() == 1:
            continue
        worst = g.loc[g.ape.idxmax()]
        out.append({"category": cat, "metric": metric or "(all)", "rows": len(g),
                    "median_ape": g.ape.median(), "mean_ape": g.ape.mean(),
                    "baseline_median_ape": g.ape_base.median(), "baseline_mean_ape": g.ape_base.mean(),
                    "worst_ape": worst.ape,
                    "worst_row": f"{worst.file}:{worst.row} {_s(worst.get('hardware'))} {_s(worst.get('model'))}"})
    return pd.DataFrame(out)


def plot_categories(df: "pd.DataFrame", path: str | Path, col: str = "predicted") -> Path:
    """Predicted (`col`, e.g. leave-one-source-out) vs measured, log-log, one panel per category. Every metric is
    drawn as a rate (times inverted: 1 / seconds), so a category's metrics share axes and its fitted 80 % band
    (workloads/bands.toml, the stack-wide band of the category) is one shaded region: measured / predicted between
    the band's ends. Written atomically."""
    from matplotlib.figure import Figure

    from ._io import atomic_write_bytes
    from .bands import TIME_METRICS, band_for
    from .plots import to_bytes

    d = df[np.isfinite(df[col].astype(float))]
    cats = [c for c in ("decode", "prefill", "serving", "kernel") if (d.category == c).any()]
    fig = Figure(figsize=(4.0 * max(len(cats), 1), 4.2))
    axes = fig.subplots(1, max(len(cats), 1), squeeze=False)[0]
    for ax, cat in zip(axes, cats):
        g = d[d.category == cat]
        time = g.metric.isin(list(TIME_METRICS)).to_numpy()
        meas = np.where(time, 1.0 / g.value.to_numpy(dtype=float), g.value.to_numpy(dtype=float))
        pred = np.where(time, 1.0 / g[col].to_numpy(dtype=float), g[col].to_numpy(dtype=float))
        lo, hi = min(meas.min(), pred.min()) / 1.5, max(meas.max(), pred.max()) * 1.5
        x = np.geomspace(lo, hi, 50)
        band = band_for("", "", cat)  # no class, no engine: the stack-wide band of the category
        if band is not None:
            ax.fill_between(x, x * band.low_ratio, x * band.high_ratio, color="0.85",
                            label=f"80 % band ({band.low_ratio:.2f}-{band.high_ratio:.2f}x)")
        ax.plot(x, x, color="0.4", lw=0.8)
        ax.scatter(pred, meas, s=10, alpha=0.6, label=f"rows ({len(g)})")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), title=cat,
               xlabel="predicted (as a rate)", ylabel="measured (as a rate)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return atomic_write_bytes(Path(path), to_bytes(fig, "png", dpi=110))


def plot(df: "pd.DataFrame", path: str | Path) -> Path:
    """Predicted vs measured, log-log, one panel per metric, with the +-20 % band; written atomically."""
    from matplotlib.figure import Figure

    from ._io import atomic_write_bytes
    from .plots import to_bytes

    d = df[np.isfinite(df.predicted.astype(float))]
    metrics = [m for m in CATEGORY if (d.metric == m).sum() >= 3]  # one panel per metric: units differ
    cols = min(len(metrics), 4) or 1
    nrow = -(-len(metrics) // cols) or 1
    fig = Figure(figsize=(4.0 * cols, 4.0 * nrow))  # object API: no pyplot state, no backend switch
    axes = fig.subplots(nrow, cols, squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        g = d[d.metric == metric]
        lo, hi = min(g.value.min(), g.predicted.min()) / 1.5, max(g.value.max(), g.predicted.max()) * 1.5
        x = np.geomspace(lo, hi, 50)
        ax.fill_between(x, x / 1.2, x * 1.2, color="0.85", label="±20 %")
        ax.plot(x, x, color="0.4", lw=0.8)
        for split, marker in (("train", "o"), ("test", "s")):
            s = g[g.split == split]
            ax.scatter(s.value, s.predicted, s=14, marker=marker, alpha=0.75, label=f"{split} ({len(s)})")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), title=f"{CATEGORY[metric]}: {metric}",
               xlabel="measured", ylabel="predicted")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return atomic_write_bytes(Path(path), to_bytes(fig, "png", dpi=110))
