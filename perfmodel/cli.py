"""Command line: `perfmodel estimate | list | show | sweep`. User errors print one paragraph and exit 2."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .errors import PerfmodelError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perfmodel", description="Analytical LLM inference performance on GPUs and CPUs.")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("estimate", help="TTFT, TPOT, tokens/s and memory of one workload")
    _workload_args(e)
    e.add_argument("--ops", action="store_true", help="also print the per-op table")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    _technique_flags(e)
    e.add_argument("--prefix-hit", default=None, help="share of each prompt already in a prefix cache (0-1): its TTFT "
                                                      "beside the plain one")

    rp = sub.add_parser("report", help="a shareable report of one workload: self-contained HTML, or Markdown + PNGs")
    _workload_args(rp)
    rp.add_argument("-o", "--output", required=True, help="report.html (one self-contained file) or report.md")
    rp.add_argument("--title", default=None, help="report title (default: model on hardware)")
    rp.add_argument("--serve-rate", default=None, help="add a 'Serving under load' section: the same engine serving "
                                                       "requests of --prompt / --gen tokens at this rate (requests/s, "
                                                       "Poisson; perfmodel serve's defaults)")
    rp.add_argument("--serve-requests", default="1000", help="requests the serving section simulates (default 1000)")
    rp.add_argument("--train-batch", default=None, help="add a 'Training' section: the fastest layout that fits for "
                                                        "training the model with this global batch (sequences a "
                                                        "step; perfmodel plan --train)")
    rp.add_argument("--train-seq", default="4096", help="tokens a training sequence (default 4096)")
    rp.add_argument("--train-devices", default=None, help="devices the training section uses (default: the "
                                                          "workload's --devices, else its tp x pp x cp)")

    pl = sub.add_parser("plot", help="one figure of a workload: roofline, breakdown, memory or batch")
    pl.add_argument("figure", help="roofline | breakdown | memory | batch")
    _workload_args(pl)
    pl.add_argument("-o", "--output", required=True, help="FILE.png or FILE.svg (written atomically)")
    pl.add_argument("--compare", action="append", default=[], help="roofline: overlay this device's ceilings "
                                                                    "(repeatable)")

    wi = sub.add_parser("whatif", help="a device with changed parameters, sensitivities, the change needed for a "
                                       "target, and the latency-throughput Pareto front")
    _workload_args(wi)
    wi.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                    help="change the device: memory_bandwidth=2 (factors: memory_bandwidth compute matrix vector "
                         "cache capacity interconnect) or units=112, clock_ghz=3, simd_width_bits=1024, fma_units=4, "
                         "memory_channels=12, memory_mt_per_s=6400, memory_gb_per_s=1000, matrix_engine=DEVICE")
    wi.add_argument("--sensitivity", action="store_true", help="elasticity of tokens/s to each parameter")
    wi.add_argument("--target", type=float, default=None, help="tokens/s to reach (with --metric, --param)")
    wi.add_argument("--metric", default="decode_tokens_per_s",
                    help="decode_tokens_per_s (default), prefill_tokens_per_s or throughput_tokens_per_s")
    wi.add_argument("--param", default="memory_bandwidth", help="what to scale to reach --target (default "
                                                                "memory_bandwidth)")
    wi.add_argument("--pareto", action="store_true", help="TPOT against tokens/s over batches 1-1024, the "
                                                          "non-dominated ones")
    wi.add_argument("--json", action="store_true")

    pn = sub.add_parser("plan", help="the layouts (tp x pp x ep, data-parallel attention, replicas) and batches of a "
                                     "model on a system's devices: the Pareto front of throughput per device against "
                                     "time per output token, and the best under latency targets")
    pn.add_argument("--model", required=True, help="catalog id, .toml spec, or HF config.json")
    pn.add_argument("--hardware", required=True, help="a system id (dgx-h100, mi300x-platform, ...) or a device")
    pn.add_argument("--devices", default=None, help="devices per node (default: the system's, else 8)")
    pn.add_argument("--nodes", default=None, help="nodes (default 1)")
    pn.add_argument("--prompt", default=1024, help="prompt tokens per request (default 1024)")
    pn.add_argument("--gen", default=256, help="generated tokens per request (default 256)")
    pn.add_argument("--weights", default="bf16", help="weight format (default bf16)")
    pn.add_argument("--kv", default="bf16", help="KV-cache format (default bf16)")
    pn.add_argument("--slo-ttft", type=float, default=None, help="time to first token to meet, seconds")
    pn.add_argument("--slo-tpot", type=float, default=None, help="time per output token to meet, seconds")
    pn.add_argument("--engine", default=None, help="software-stack profile (vllm, trtllm, sglang, ...)")
    pn.add_argument("--train", action="store_true", help="search training layouts instead (tp x pp x cp x ep x dp, "
                                                         "ZeRO stage, recomputation, micro-batch) for --seq and "
                                                         "--global-batch: the fastest that fit")
    pn.add_argument("--seq", default="4096", help="with --train: tokens a sequence (default 4096)")
    pn.add_argument("--global-batch", default=None, help="with --train: sequences a step (required)")
    pn.add_argument("--precision", default="bf16", help="with --train: bf16 (default), fp16, fp8, fp32")
    pn.add_argument("--optimizer", default="adamw", help="with --train: adamw (default), adam, sgd, adafactor, "
                                                         "adam8bit")
    pn.add_argument("--lora", default="0", help="with --train: LoRA rank (default 0: full training)")
    pn.add_argument("--quantize-base", default=None, help="with --train --lora: the frozen base's format (q4_0)")
    pn.add_argument("--tokens", default=None, help="with --train: tokens to train on (adds the time to train them)")
    pn.add_argument("--attention-kernel", default="engine", help="with --train: engine (default), unfused, fa2, fa1, "
                                                                      "triton")
    pn.add_argument("--json", action="store_true")

    sv = sub.add_parser("serve", help="simulate a server under load: requests arriving at a rate (or from a trace), "
                                      "continuous batching, paged KV cache; throughput and latency percentiles, or "
                                      "the highest rate meeting latency SLOs (--find-rate)")
    _workload_args(sv, skip=("batch",))
    g = sv.add_argument_group("requests")
    g.add_argument("--rate", default=None, help="requests per second, Poisson arrivals (inf: all at once); with "
                                                "--find-rate not needed")
    g.add_argument("--concurrency", default=None, help="at most this many requests in flight (a benchmark client's "
                                                       "--max-concurrency); --rate defaults to inf with it")
    g.add_argument("--arrival", default="poisson", help="poisson (default) or gamma (gaps of CV --cv)")
    g.add_argument("--cv", default="1", help="coefficient of variation of gamma gaps (default 1)")
    g.add_argument("--prompt-dist", default=None, help="prompt lengths: N, fixed:N, uniform:LO:HI, normal:MEAN:STD, "
                                                       "lognormal:MEDIAN:SIGMA (default: fixed at --prompt)")
    g.add_argument("--gen-dist", default=None, help="output lengths, as --prompt-dist (default: fixed at --gen)")
    g.add_argument("--trace", default=None, help="CSV or Parquet: arrival_s, prompt_tokens, output_tokens "
                                                 "[, prefix_tokens]; replaces --rate and the distributions")
    g.add_argument("--requests", default=None, help="requests to simulate (default 1000, or rate x --duration)")
    g.add_argument("--duration", default=None, help="seconds of arrivals to simulate (requests = rate x duration)")
    g.add_argument("--prefix-hit", default="0", help="share of each prompt found in the prefix cache, 0-1 (default 0)")
    g.add_argument("--seed", default="0", help="random seed of arrivals and lengths (default 0)")
    h = sv.add_argument_group("engine")
    h.add_argument("--scheduler", default="vllm", help="vllm (continuous batching, chunked prefill; default), "
                                                       "prefill-first, static, disaggregated")
    h.add_argument("--max-num-seqs", default="256", help="sequences an iteration at most (default 256, vLLM's)")
    h.add_argument("--max-batched-tokens", default="8192", help="tokens an iteration at most (default 8192)")
    h.add_argument("--block-size", default="16", help="KV-cache block, tokens (default 16)")
    h.add_argument("--memory-utilization", default="0.9", help="share of device memory the engine uses (default 0.9)")
    h.add_argument("--kv-memory", default=None, help="what --memory-utilization is a share of: total (all device "
                                                     "memory, weights and activations included: vLLM, SGLang; the "
                                                     "default) or free (what the weights and activations leave, all "
                                                     "for the KV cache: TensorRT-LLM, the default with --engine "
                                                     "trtllm)")
    h.add_argument("--preemption", default="recompute", help="recompute (default) or swap, when the KV cache is full")
    _technique_flags(h)
    h.add_argument("--replicas", default="1", help="identical engines the requests are dealt to (default 1)")
    h.add_argument("--prefill-instances", default="1", help="disaggregated: prefill engines (default 1)")
    h.add_argument("--decode-instances", default="1", help="disaggregated: decode engines (default 1)")
    f = sv.add_argument_group("latency targets")
    f.add_argument("--find-rate", action="store_true", help="bisect the highest rate meeting --slo-ttft/--slo-tpot")
    f.add_argument("--slo-ttft", default=None, help="time to first token, seconds, at --percentile")
    f.add_argument("--slo-tpot", default=None, help="time per output token, seconds, at --percentile")
    f.add_argument("--percentile", default="90", help="percentile the SLOs apply to (default 90)")
    sv.add_argument("--plot", default=None, help="write the serving figure (latency CDFs, batch and KV use over time, "
                                                 "and with --find-rate throughput against latency) to this .png/.svg")
    sv.add_argument("--json", action="store_true")

    tn = sub.add_parser("train", help="training or fine-tuning: step time, tokens/s, MFU / HFU and memory per device, "
                                      "and what would fit when it does not")
    tn.add_argument("--model", required=True, help="catalog model id")
    tn.add_argument("--hardware", required=True, help="catalog device id")
    tn.add_argument("--devices", default=None, help="devices in all (default tp x pp x cp x dp; sets dp when not given)")
    tn.add_argument("--seq", default="4096", help="tokens a sequence (default 4096)")
    tn.add_argument("--global-batch", required=True, help="sequences a step, over all data-parallel ranks")
    tn.add_argument("--micro-batch", default="1", help="sequences a device runs at once (default 1; the rest by "
                                                       "gradient accumulation)")
    for flag, what in (("--tp", "tensor-parallel"), ("--pp", "pipeline-parallel"), ("--cp", "context-parallel"),
                       ("--ep", "expert-parallel (MoE)"), ("--dp", "data-parallel")):
        tn.add_argument(flag, default=None, help=f"{what} degree (default 1{'; devices / (tp pp cp)' if flag == '--dp' else ''})")
    tn.add_argument("--zero", default="0", help="ZeRO stage 0-3 (FSDP's full sharding is 3; default 0)")
    tn.add_argument("--recompute", default="none", help="activation recomputation: none (default), selective, full")
    tn.add_argument("--sequence-parallel", default=None, help="on or off (default: on with --tp > 1)")
    tn.add_argument("--interleave", default="1", help="model chunks a device, interleaved 1F1B (default 1)")
    tn.add_argument("--precision", default="bf16", help="bf16 (default), fp16, fp8 (FP8 GEMMs), fp32")
    tn.add_argument("--optimizer", default="adamw", help="adamw (default), adam, sgd, adafactor, adam8bit")
    tn.add_argument("--lora", default="0", help="LoRA rank: adapters on every projection, the base frozen (default 0: "
                                                "full training)")
    tn.add_argument("--quantize-base", default=None, help="the frozen base's format under --lora (QLoRA: q4_0)")
    tn.add_argument("--dropout", action="store_true", help="keep dropout masks for the backward (GPT-style runs)")
    tn.add_argument("--no-master-weights", action="store_true", help="pure 16-bit training: no FP32 master copy, "
                                                                     "the optimizer's states in the weights' format "
                                                                     "(torchtune's bf16 recipes)")
    tn.add_argument("--optimizer-in-backward", action="store_true", help="step each parameter as its gradient "
                                                                         "arrives and free the gradient (no "
                                                                         "gradient accumulation)")
    tn.add_argument("--loss-chunks", default="1", help="the loss over this many chunks of positions (torchtune's "
                                                       "chunked cross-entropy: 8): the FP32 logits held / chunks")
    tn.add_argument("--attention-kernel", default="engine", help="engine (default: the profile's fused attention), "
                                                                 "unfused (scores written out), fa2, fa1 "
                                                                 "(FlashAttention v1) or triton (FlashAttention in "
                                                                 "Triton): their published speeds")
    tn.add_argument("--loss-kernel", default="fused", help="fused (default: one pass over the FP32 logits each way), "
                                                          "megatron (Megatron-LM's and GPT-NeoX's unfused "
                                                          "vocab-parallel cross-entropy), xentropy (flash-attn's "
                                                          "fused kernel) or torch (F.cross_entropy under autocast)")
    tn.add_argument("--gather-unit", default="layer", help="what ZeRO-3 / FSDP gathers at a time: layer (default: "
                                                           "one collective a layer, FSDP) or tensor (one a parameter "
                                                           "tensor, DeepSpeed's ZeRO-3 of 2021)")
    tn.add_argument("--paged-optimizer", action="store_true", help="optimizer states in unified memory "
                                                                   "(bitsandbytes' paged optimizers): on the host, "
                                                                   "paged in each step, when they do not fit")
    tn.add_argument("--tokens", default=None, help="tokens to train on: adds the time to train them")
    tn.add_argument("--engine", default=None, help="efficiency profile of the kernels (default: the device's default)")
    tn.add_argument("--ignore-capacity", action="store_true", help="estimate even if it does not fit in memory")
    tn.add_argument("--json", action="store_true", help="print one JSON object")

    tr = sub.add_parser("trends", help="CPU and GPU design trends from the catalog, and LLM demands against them")
    tr.add_argument("--target", type=float, default=20.0, help="decode tokens/s to project (default 20)")
    tr.add_argument("-o", "--output", default=None, help="the four-panel figure, .png or .svg")
    tr.add_argument("--json", action="store_true")

    ls = sub.add_parser("list", help="list catalog models or hardware")
    ls.add_argument("what", choices=["models", "hardware"])
    ls.add_argument("--kind", help="hardware kind: gpu, cpu, accelerator")
    ls.add_argument("--vendor", help="hardware vendor, e.g. nvidia")
    ls.add_argument("--year", help="launch year, or a range: 2020 or 2015-2020")
    ls.add_argument("--arch", help="model architecture: decoder, encoder, encoder_decoder")
    ls.add_argument("--json", action="store_true")

    sh = sub.add_parser("show", help="every figure of a catalog entry, with its sources")
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--raw", action="store_true", help="print the data file itself, with its per-figure comments")

    ca = sub.add_parser("calibrate", help="measure this machine's kernels and fit an efficiency profile")
    speed = ca.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="the short suite (default; under 2 minutes here)")
    speed.add_argument("--full", action="store_true", help="the full suite (under 10 minutes here)")
    ca.add_argument("--device", default="cpu", help="cpu (this machine's CPU, default), cuda or cuda:N (a GPU, "
                                                     "with the Torch backend)")
    ca.add_argument("--hardware", default=None, help="with --device cuda: the catalog id of the GPU, where its "
                                                     "reported name does not match one")
    ca.add_argument("--backend", default=None, help="numpy (default on the CPU) or torch (default on a GPU)")
    ca.add_argument("--threads", default=None, help="threads to pin (default: all)")
    ca.add_argument("-o", "--output", default=None, help="profile path (default: the profile estimates on that "
                                                         "device use: --hardware local, or the GPU's catalog id)")
    ca.add_argument("--no-progress", action="store_true")

    va = sub.add_parser("validate", help="predict every published measurement of validation/ and report the error")
    va.add_argument("--engine", default=None, help="cost every row with this profile (default: each row's own "
                                                   "engine); ideal is the pure roofline")
    va.add_argument("--split", default="test", choices=["test", "train", "all"],
                    help="rows to report (default test: the held-out rows no profile was fitted on)")
    va.add_argument("-o", "--output", default=None, help="CSV of every row with its prediction (atomic)")
    va.add_argument("--plot", default=None, help="predicted-vs-measured PNG, log-log with the ±20 %% band")
    va.add_argument("--bands", action="store_true", help="also the error bands' leave-one-source-out coverage: how "
                                                         "often a band fitted without a row's source contains it")
    va.add_argument("--json", action="store_true", help="print the summary as JSON")

    sw = sub.add_parser("sweep", help="estimate every row of a CSV of scenarios")
    sw.add_argument("input", help="CSV with columns model, hardware[, batch, prompt, gen, weights, kv, act, gemm, tp, "
                                  "pp, attention, engine]")
    sw.add_argument("-o", "--output", required=True, help="output CSV (written atomically)")
    sw.add_argument("--profile", default=None, help="efficiency profile .toml (from calibration) for every row")
    sw.add_argument("--engine", default=None, help="software-stack profile for rows whose `engine` cell is empty "
                                                   "(each row's profile is applied to its own device)")
    sw.add_argument("--ignore-capacity", action="store_true")
    sw.add_argument("--dask", nargs="?", const="local", default=None, metavar="SCHEDULER",
                    help="run the sweep on Dask: a local cluster of 2 workers, or the scheduler at this address "
                         "(pip install 'perfmodel[dask]'); input and output may be .csv or .parquet")
    return p


def _technique_flags(p: Any) -> None:
    """The engine techniques estimate and serve share: partial offload to the host CPU, speculative decoding."""
    p.add_argument("--gpu-layers", default=None, help="partial offload (llama.cpp -ngl): this many of the model's "
                                                      "layers on the GPU, the rest and their KV cache on the host CPU "
                                                      "(n_layers + 1 also puts the output layer on the GPU)")
    p.add_argument("--offload-experts", action="store_true", help="an MoE model's routed experts on the host CPU "
                                                                  "(llama.cpp --cpu-moe), the rest on the GPU")
    p.add_argument("--host", default=None, help="the host CPU (catalog id) for --gpu-layers / --offload-experts "
                                                "(default: a desktop or server CPU, stated in the result)")
    p.add_argument("--draft-model", default=None, help="speculative decoding: the drafter, a catalog model sharing "
                                                       "the tokenizer, eagle (EAGLE's one-layer draft head) or medusa "
                                                       "(--draft-tokens Medusa heads, all run in one pass a step)")
    p.add_argument("--draft-tokens", default=None, help="tokens drafted a step (default 4)")
    p.add_argument("--acceptance", default=None, help="probability a drafted token is accepted (default 0.7, "
                                                      "assumed)")


def _techniques(a: argparse.Namespace) -> dict[str, Any]:
    """_technique_flags' values, checked, as estimate() and simulate() take them."""
    return dict(gpu_layers=(int(_flag_number(a.gpu_layers, "--gpu-layers", integer=True, above=False))
                            if a.gpu_layers is not None else None),
                offload_experts=a.offload_experts, host=a.host, draft=a.draft_model,
                draft_tokens=(int(_flag_number(a.draft_tokens, "--draft-tokens", integer=True))
                              if a.draft_tokens is not None else None),
                acceptance=(_flag_number(a.acceptance, "--acceptance", above=False)
                            if a.acceptance is not None else None))


def _workload_args(e: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The options that say what is estimated (estimate, report, plot and serve share them; `skip`: fields not
    asked)."""
    e.add_argument("--model", required=True, help="catalog id, spec .toml, or Hugging Face config.json / folder")
    e.add_argument("--hardware", required=True, help="catalog id, device .toml, or 'local'")
    from .workload import Workload  # the flags are its fields: one name, default and help per quantity

    for field, name, default, text in Workload.options():
        if field in skip:
            continue
        shown = f" (default {default})" if default is not None and "default" not in text else ""
        if field == "act":  # left open, an engine's own format applies (llama.cpp on a CPU: fp32)
            shown, default = f" (default {default}, or with --engine that engine's: fp32 for llama.cpp on a CPU)", None
        extra = {"nargs": "?", "const": "true"} if isinstance(default, bool) else {}  # `--dp-attention` alone: on
        e.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default, help=text + shown, **extra)
    e.add_argument("--profile", default=None, help="efficiency profile .toml (from calibration)")
    e.add_argument("--engine", default=None, help="software-stack profile: ideal, default, llamacpp, vllm, trtllm, hf, "
                                                  "mlx, exllamav2, onnxruntime, lmdeploy, ... (efficiencies fitted on "
                                                  "published measurements; see README)")
    e.add_argument("--ignore-capacity", action="store_true", help="estimate even if it does not fit in memory")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from ._io import check_output_path

        for attr, flag in (("output", "-o/--output"), ("plot", "--plot")):
            if getattr(args, attr, None) is not None:  # refused before any work is done
                check_output_path(getattr(args, attr), flag)
        return {"estimate": _estimate, "list": _list, "show": _show, "sweep": _sweep, "calibrate": _calibrate,
                "validate": _validate, "report": _report, "plot": _plot, "whatif": _whatif,
                "trends": _trends, "plan": _plan, "serve": _serve, "train": _train}[args.command](args)
    except PerfmodelError as e:
        print(f"perfmodel: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # pydantic ValidationError from user input
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            from .scenarios import _message

            print(f"perfmodel: error: {_message(e)}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


def _make_estimate(a: argparse.Namespace):
    from .api import estimate
    from .workload import Workload

    wl = Workload(**{field: getattr(a, name) for field, name, _, _ in Workload.options()
                     if not (field == "act" and getattr(a, name) is None)})
    if a.engine and a.profile:
        raise PerfmodelError("give --profile (a calibration of a machine) or --engine (a software stack), not both")
    extra: dict[str, Any] = {}
    if a.command == "estimate":  # report and plot draw one device's plain estimate
        extra = _techniques(a)
        offload = extra["gpu_layers"] is not None or extra["offload_experts"]
        if a.host and not offload:
            raise PerfmodelError("--host names the CPU of a partial offload: give --gpu-layers N or --offload-experts")
        if offload and a.ops:
            raise PerfmodelError("--ops lists one device's ops; a partial offload prints its GPU / CPU split instead")
        if a.prefix_hit is not None:
            extra["prefix_hit"] = _flag_number(a.prefix_hit, "--prefix-hit", above=False)
    return estimate(a.model, a.hardware, wl, efficiency=a.profile, engine=a.engine,
                    ignore_capacity=a.ignore_capacity, **extra)


def _estimate(a: argparse.Namespace) -> int:
    est = _make_estimate(a)
    if a.json:
        print(json.dumps(_clean(est.to_dict()), indent=2))
    else:
        print(est.summary())
        if a.ops:
            import pandas as pd

            cols = ["phase", "name", "count", "flops", "bytes", "intensity_flops_per_byte", "time_s", "bound"]
            with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 80):
                print()
                print(est.ops[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
                comm = est.communication()
                if not comm.empty:  # each collective: algorithm and protocol, link, bytes, time
                    print()
                    print(comm[["phase", "name", "algorithm", "link", "comm_bytes", "time_s"]].to_string(
                        index=False, float_format=lambda x: f"{x:.3g}"))
    return 0


def _report(a: argparse.Namespace) -> int:
    from .report import write_report

    est = _make_estimate(a)
    serving = curve = None
    if a.serve_rate is not None:
        from .serving import rate_curve, simulate, synthetic

        rate = _flag_number(a.serve_rate, "--serve-rate")
        n = int(_flag_number(a.serve_requests, "--serve-requests", integer=True))
        wl = est.workload
        req = synthetic(n, rate, wl.prompt_len, max(wl.gen_len, 1))
        kw = dict(engine=a.engine, efficiency=a.profile)
        serving = simulate(est.model, est.device, wl, requests=req, record=True, **kw)
        curve = rate_curve(est.model, est.device, wl, requests=req.scaled(1.0 / rate), **kw)
    run = search = None
    if a.train_batch is not None:
        from .plan import plan_train
        from .training import TrainConfig, train

        wl = est.workload
        devices = (_whole(a.train_devices, "--train-devices") if a.train_devices is not None
                   else wl.devices or wl.tp * wl.pp * wl.cp)
        search = plan_train(est.model, est.device, seq_len=_whole(a.train_seq, "--train-seq"),
                            global_batch=_whole(a.train_batch, "--train-batch"), devices=devices, nodes=wl.nodes,
                            engine=a.engine)
        if search["best"] is not None:
            p = search["best"]
            run = train(est.model, est.device, TrainConfig(
                seq_len=_whole(a.train_seq, "--train-seq"), global_batch=_whole(a.train_batch, "--train-batch"),
                micro_batch=p["micro_batch"], tp=p["tp"], pp=p["pp"], cp=p["cp"], ep=p["ep"], dp=p["dp"],
                zero=p["zero"], recompute=p["recompute"]), engine=a.engine)
    path = write_report(est, a.output, title=a.title, serving=serving, serving_curve=curve, training=run,
                        training_search=search)
    print(f"wrote {path}")
    return 0


def _plot(a: argparse.Namespace) -> int:
    from . import plots

    if a.compare and a.figure != "roofline":
        raise PerfmodelError("--compare applies to the roofline only")
    est = _make_estimate(a)
    fig = plots.figure(a.figure, est, **({"compare": a.compare} if a.compare else {}))
    print(f"wrote {plots.save(fig, a.output)}")
    return 0


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PerfmodelError(f"--set takes PARAM=VALUE, e.g. memory_bandwidth=2; got {item!r}")
        key, value = key.strip(), value.strip()
        if key == "matrix_engine":
            out[key] = value
            continue
        try:
            out[key] = float(value)
        except ValueError:
            raise PerfmodelError(f"--set {key} needs a number; got {value!r}") from None
        _positive_number(out[key], f"--set {key}")
    return out


def _positive_number(x: float, what: str) -> float:
    if not (math.isfinite(x) and x > 0):
        raise PerfmodelError(f"{what} must be a finite number > 0; got {x!r}")
    return x


def _plan(a: argparse.Namespace) -> int:
    from .plan import plan

    if a.train:
        return _plan_train(a)
    res = plan(a.model, a.hardware, devices=a.devices, nodes=a.nodes, prompt_len=a.prompt, gen_len=a.gen,
               slo_ttft_s=a.slo_ttft, slo_tpot_s=a.slo_tpot, engine=a.engine, weights=a.weights, kv=a.kv)
    if a.json:
        print(json.dumps(_clean(res), indent=2))
        return 0
    print(f"{a.model} on {a.hardware}: {res['devices']} devices, {res['layouts']} layouts x batches "
          f"({res['evaluated']} costed)")

    def line(p: dict) -> str:
        lay = f"tp {p['tp']} pp {p['pp']}" + (f" ep {p['ep']}" if p["ep"] > 1 else "") + (
            f" cp {p['cp']}" if p["cp"] > 1 else "") + (
            " dp-attn" if p["dp_attention"] else "") + f" x{p['replicas']}"
        return (f"  {lay:<28} batch {p['batch']:>5}  TTFT {p['ttft_s'] * 1e3:>9,.1f} ms"
                f"  TPOT {p['tpot_s'] * 1e3:>7,.2f} ms"
                f"  {p['throughput_per_device_tokens_per_s']:>9,.1f} tok/s per device")

    print("Pareto front (shortest TPOT first; each point has more throughput per device than every faster one):")
    for p in res["front"]:
        print(line(p))
    slo = [f"TTFT <= {a.slo_ttft * 1e3:g} ms" if a.slo_ttft else "", f"TPOT <= {a.slo_tpot * 1e3:g} ms" if a.slo_tpot
           else ""]
    what = " and ".join(x for x in slo if x) or "no latency target"
    if res["best"] is None:
        print(f"No layout meets {what}" + (" (none fits in memory)" if not res["front"] else ""))
    else:
        print(f"Best with {what}:")
        print(line(res["best"]))
    return 0


def _whole(text: Any, flag: str, lo: float = 1.0) -> int:
    """A whole-number flag of at least `lo` (one clear error otherwise)."""
    return int(_flag_number(text, flag, lo=lo, integer=True, above=False))


def _plan_train(a: argparse.Namespace) -> int:
    from .errors import CapacityError
    from .plan import plan_train

    if a.global_batch is None:
        raise PerfmodelError("plan --train needs --global-batch (sequences a step, over all data-parallel ranks)")
    tokens = _flag_number(a.tokens, "--tokens") if a.tokens is not None else None
    res = plan_train(a.model, a.hardware, seq_len=_whole(a.seq, "--seq"),
                     global_batch=_whole(a.global_batch, "--global-batch"), devices=a.devices, nodes=a.nodes,
                     precision=a.precision, optimizer=a.optimizer, lora_rank=_whole(a.lora, "--lora", lo=0),
                     quantize_base=a.quantize_base, engine=a.engine, tokens=tokens,
                     attention_kernel=a.attention_kernel)
    def layout(p: dict) -> str:
        return (f"tp {p['tp']} pp {p['pp']}" + (f" cp {p['cp']}" if p["cp"] > 1 else "")
                + (f" ep {p['ep']}" if p["ep"] > 1 else "") + f" dp {p['dp']} ZeRO {p['zero']}")

    if res["best"] is None:
        small = res.get("smallest_memory")
        more = (f"; the least memory a layout needs is {small['memory_per_device_bytes'] / 1e9:.1f} GB a device "
                f"({layout(small)}, micro-batch {small['micro_batch']}, recompute {small['recompute']})"
                if small else f" ({res['layouts']} layouts use all {res['devices']} devices and divide the batch)")
        raise CapacityError(f"no training layout of {a.model} fits on {res['devices']} x {a.hardware}{more}: use "
                            f"more devices (--nodes), LoRA (--lora 16), a shorter --seq or a smaller --global-batch")
    if a.json:
        print(json.dumps(_clean(res), indent=2))
        return 0
    print(f"{a.model} training on {a.hardware}: {res['devices']} devices, seq {a.seq}, global batch "
          f"{a.global_batch}; {res['layouts']:,} layouts costed, {res['fit']:,} fit")

    def line(p: dict) -> str:
        ttt = f"  {p['time_to_train_s'] / 86400:,.1f} days" if "time_to_train_s" in p else ""
        return (f"  {layout(p):<34} mb {p['micro_batch']:>3} rc {p['recompute']:<9} {p['tokens_per_s']:>12,.0f} "
                f"tok/s  MFU {p['mfu']:5.1%}  {p['memory_per_device_bytes'] / 1e9:6.1f} GB{ttt}")

    print("Fastest that fit:")
    for p in res["top"]:
        print(line(p))
    print("Least memory for the speed (each has more tokens/s than every layout needing less memory):")
    for p in res["front"]:
        print(line(p))
    return 0


def _whatif(a: argparse.Namespace) -> int:
    from . import whatif

    changes = _parse_set(a.set)
    if a.target is not None:
        _positive_number(a.target, "--target")
    base = _make_estimate(a)
    out: dict[str, Any] = {"base": base.to_dict()}
    dev = whatif.scaled(base.device, **changes) if changes else base.device
    if changes:
        a2 = argparse.Namespace(**{**vars(a), "hardware": dev})
        est = _make_estimate(a2)
        out["changed"] = {"set": changes, **est.to_dict()}
    else:
        est = base
    eff = est.ev.mach.eff
    if a.sensitivity:
        out["sensitivity"] = whatif.sensitivity(est.model, dev, est.workload, eff).to_dict("records")
    if a.target is not None:
        r = whatif.solve(est.model, dev, est.workload, a.target, a.metric, a.param, eff)
        out["solve"] = {k: v for k, v in r.items() if k != "device"}
    if a.pareto:
        out["pareto"] = whatif.pareto(whatif.batch_table(est.model, dev, est.workload, eff)).to_dict("records")
    if a.json:
        print(json.dumps(_clean(out), indent=2, default=str))
        return 0
    if changes:
        keys = ("ttft_s", "tpot_s", "decode_tokens_per_s", "prefill_tokens_per_s", "throughput_tokens_per_s")
        print(f"{base.model.name}: {base.device.name} -> what-if {', '.join(f'{k}={v}' for k, v in changes.items())}")
        for k in keys:
            b, c = out["base"][k], out["changed"][k]
            ratio = f"x{c / b:.3f}" if b and c else "-"
            print(f"  {k:<26}{_g(b):>14} -> {_g(c):>14}   {ratio}")
    else:
        print(base.summary())
    if a.sensitivity:
        print("\nelasticity of tokens/s (d ln tokens/s / d ln parameter):")
        print(f"  {'parameter':<18}{'prefill':>9}{'decode':>9}{'e2e':>9}")
        for r in out["sensitivity"]:
            vals = [r.get(k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "throughput_tokens_per_s")]
            cells = "".join(f"{v:9.2f}" if isinstance(v, float) and v == v else f"{'-':>9}" for v in vals)
            print(f"  {r['parameter']:<18}{cells}  {r.get('note') or ''}")
    if a.target is not None:
        s = out["solve"]
        print(f"\n{s['metric']} {s['now']:,.2f} -> {s['target']:g}: {s['parameter']} x{s['factor']:.3f} "
              f"(re-estimated: {s['reached']:,.2f})")
    if a.pareto:
        print("\nPareto front (batch: TPOT ms, decode tokens/s of the batch):")
        for r in out["pareto"]:
            print(f"  {r['batch']:>5}: {r['tpot_s'] * 1e3:9.2f} ms {r['decode_tokens_per_s']:>12,.1f} tok/s  "
                  f"(GEMMs {r['gemm_bound']}-bound)")
    return 0


def _g(x: Any) -> str:
    return "-" if x is None else f"{x:,.4g}"


def _trends(a: argparse.Namespace) -> int:
    from . import trends

    _positive_number(a.target, "--target")
    table = trends.cpu_table()
    tokens = trends.cpu_tokens(table=table)
    h = trends.headline(a.target, table, tokens)
    if a.output:
        from .plots import save

        save(trends.figure(a.target, table, tokens), a.output)
    if a.json:
        print(json.dumps(_clean(h), indent=2, default=str))
        return 0
    print(f"CPU trends over {h['cpus']} catalog CPUs (one socket each; fitted to the best part of each launch year)")
    print(f"  {'metric':<44}{'per year':>10}{'per 2 yrs':>11}{'doubling':>10}  years")
    for r in h["cpu_growth"]:
        print(f"  {r['label']:<44}{r['per_year'] * 100:>9.1f}%{r['per_2y']:>10.2f}x{r['doubling_years']:>9.1f}y"
              f"  {r['first_year']:.0f}-{r['last_year']:.0f} (n={r['n']}, r2={r['r2']:.2f})")
    print(f"GPU trends over {h['gpus']} catalog GPUs (best of each year):")
    for r in h["gpu_growth"]:
        print(f"  {r['label']:<44}{r['per_year'] * 100:>9.1f}%{r['per_2y']:>10.2f}x{r['doubling_years']:>9.1f}y"
              f"  {r['first_year']:.0f}-{r['last_year']:.0f} (n={r['n']}, r2={r['r2']:.2f})")
    print("Published, for comparison:")
    for r in h["published"]:
        print(f"  {r['metric']:<44}{r['per_2y']:>21.1f}x  {r['years']}; {r['source']}")
    c = h["clock_break"]
    print(f"End of clock scaling: {c['year']:.0f} (clock x{c['before']['per_2y']:.2f} per 2 years before, "
          f"x{c['after']['per_2y']:.2f} after; {trends.RUPP})")
    for p in h["projections"]:
        best = p["best"]
        print(f"{p['model']} {p['weights']}, batch 1 decode: best socket {best['hardware']} ({best['year']}) "
              f"{best['value']:.1f} tok/s; trend x{p['growth']['per_2y']:.2f} per 2 years reaches {p['target']:g} "
              f"tok/s in {p['year']:.0f}. Of that trend bandwidth explains {p['bandwidth_share'] * 100:.0f} %, "
              f"compute {p['compute_share'] * 100:.0f} % (of prefill's: bandwidth "
              f"{p['prefill']['bandwidth_share'] * 100:.0f} %, compute {p['prefill']['compute_share'] * 100:.0f} %)")
    tg = h["training_growth"]
    print(f"Training demand (a socket's peak against the FLOPs of a run; {tg['metric']} x{tg['per_2y']:.1f} per 2 "
          f"years, {tg['years']}: {tg['source'].split(',')[0]}):")
    for r in h["training_demand"]:
        b, g = r["best"], r["peak_growth"]
        print(f"  {r['model']} on {r['tokens']:.3g} tokens: {r['train_flops']:.2e} FLOPs; the best socket, "
              f"{b['hardware']} ({b['year']}, {b['unit']} {b['peak_flops_per_s'] / 1e12:.1f} TFLOP/s), would take "
              f"{b['socket_years']:,.0f} years at peak; socket peaks grow x{g['per_2y']:.2f} per 2 years, so one "
              f"socket trains it in a year around {r['year_one_socket_year']:.0f}")
    return 0


def _clean(x: Any) -> Any:
    """JSON has no NaN or infinity: write null."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _list(a: argparse.Namespace) -> int:
    from .catalog import hardware_rows, model_rows

    if a.what == "hardware":
        years = _year_range(a.year)
        rows = [r for r in hardware_rows()
                if (not a.kind or r["kind"] == a.kind.lower()) and (not a.vendor or r["vendor"] == a.vendor.lower())
                and (years is None or (r["year"] is not None and years[0] <= r["year"] <= years[1]))]
    else:
        rows = [r for r in model_rows() if not a.arch or r["arch"] == a.arch]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("(none)")
        return 0
    keys = [k for k in rows[0] if not k.endswith("_rung") and k != "variant_of"]
    mark = {"derived": " d", "estimated": " e"}
    rung_of = {"bandwidth_gb_per_s": "bandwidth_rung", "bf16_tflops": "bf16_rung", "fp32_vector_tflops": "fp32_rung"}
    table = [[_fmt(r[k]) + mark.get(r.get(rung_of.get(k, "")), "") for k in keys] for r in rows]
    widths = [max(len(k), *(len(t[i]) for t in table)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    note = "; d: derived from sourced parts, e: estimated (perfmodel show ID says how)" if a.what == "hardware" else ""
    print(f"({len(rows)} {'devices' if a.what == 'hardware' else 'models'}{note})")
    if a.what == "hardware" and not (a.kind or a.vendor or a.year):
        from .catalog import load_system, system_files

        print("\nsystems (--hardware SYSTEM; docs/multidevice.md):")
        for f in system_files():
            sy = load_system(f)
            net = f"; {sy.network.name}" if sy.network else ""
            print(f"  {sy.id:<18} {sy.devices_per_node} x {sy.device} a node, {sy.fabric.name}{net}")
    return 0


def _year_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        lo, _, hi = text.partition("-")
        return int(lo), int(hi or lo)
    except ValueError:
        raise PerfmodelError(f"--year must be a year or a range like 2015-2020; got {text!r}") from None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int) and v > 10**6:
        return f"{v / 1e9:.2f}B"
    return str(v)


def _show(a: argparse.Namespace) -> int:
    from .catalog import find, load_device, load_model
    from .device import COMPUTE_DTYPES

    if a.raw:
        for kind in ("hardware", "models"):
            try:
                print(find(kind, a.id).read_text(), end="")
                return 0
            except PerfmodelError:
                continue
    try:
        spec: Any = load_device(a.id)  # a catalog id or alias, a file, or `local`
        extra = {
            "memory_levels": [{"name": lv.name,
                               "capacity_gb": None if lv.capacity_bytes is None else lv.capacity_bytes / 1e9,
                               "bandwidth_gb_per_s": None if (f := spec.figure(f"memory.{lv.name}.bandwidth")) is None
                               else f.value / 1e9} for lv in spec.levels],  # caches: derived or estimated (rule 8)
            "peak_tflops": {f"{u}.{p}": spec.peak_flops_per_s(u, p) / 1e12 for u in ("matrix", "vector")
                            for p in COMPUTE_DTYPES if spec.peak_flops_per_s(u, p)},
        }
        figures: dict[str, Any] | None = {k: {"rung": f.rung, "value": f.value, "note": f.note}
                                          for k, f in spec.figures.items()}
    except PerfmodelError:
        try:
            spec = load_model(find("models", a.id))
        except PerfmodelError:
            from .catalog import _index
            from .errors import unknown_name

            raise unknown_name("id", a.id, list(_index("hardware")) + list(_index("models"))) from None
        extra = {"params_total": spec.params_total(), "params_active": spec.params_active(),
                 "param_breakdown": spec.param_breakdown(), "kv_elements_per_token": spec.kv_elements_per_token()}
        figures = None
    data = spec.model_dump(mode="json", exclude_none=True)
    data["derived"] = extra
    if figures is not None:
        data["figures"] = figures
    if a.json:
        print(json.dumps(data, indent=2))
    else:
        _print_tree({k: v for k, v in data.items() if k != "figures"})
        if figures:
            _print_figures(figures)
    return 0


_FIGURE_UNITS = {"compute": (1e12, "TFLOPS"), "memory.bandwidth": (1e9, "GB/s"), "memory.capacity": (1e9, "GB"),
                 "interconnect": (1e9, "GB/s"), "processor": (1e9, "GHz")}


def _print_figures(figures: dict[str, dict[str, Any]]) -> None:
    """The provenance ladder: each figure with its rung and its source or derivation."""
    print("figures (sourced: as the sources give it; derived: computed from sourced parts; estimated: a stated "
          "rule from siblings or the family):")
    width = max(len(k) for k in figures)
    for key, f in figures.items():
        kind = key.split(".")[0] if not key.startswith("memory.") else "memory." + key.rsplit(".", 1)[1]
        scale, unit = _FIGURE_UNITS.get(kind, (1.0, ""))
        if kind == "memory.capacity" and f["value"] < 1e9:
            scale, unit = 2**20, "MiB"
        print(f"  {key:<{width}}  {f['value'] / scale:>10.4g} {unit:<6} {f['rung']:<9}  {f['note']}")


def _print_tree(d: Any, indent: int = 0) -> None:
    pad = "  " * indent
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, (dict, list)) and v:
                print(f"{pad}{k}:")
                _print_tree(v, indent + 1)
            elif v not in ({}, [], "", None):
                print(f"{pad}{k}: {f'{v:.6g}' if isinstance(v, float) else v}")
    elif isinstance(d, list):
        for item in d:
            if isinstance(item, dict):
                print(f"{pad}-")
                _print_tree(item, indent + 1)
            else:
                print(f"{pad}- {item}")


def _sweep(a: argparse.Namespace) -> int:
    from .scenarios import INPUT_COLUMNS, OUTPUT_COLUMNS, read_table, sweep, write_table

    if a.engine:
        from .engines import load_engine

        load_engine(a.engine)  # a wrong name fails before any work
    efficiency = a.profile and _profile(a.profile)
    if a.dask:
        from .distributed import sweep_dask

        r = sweep_dask(a.input, a.output, scheduler=a.dask, engine=a.engine, efficiency=efficiency,
                       ignore_capacity=a.ignore_capacity)
        print(f"{r['rows'] - r['errors']:,} of {r['rows']:,} rows estimated on {r['workers']} Dask workers in "
              f"{r['partitions']} partitions; the reason of each failed row is in its `error` cell; wrote {a.output}",
              file=sys.stderr)
        return EXIT_USER_ERROR if r["errors"] else 0
    df = read_table(a.input)
    df = df[[col for col in df.columns if col in INPUT_COLUMNS or col not in OUTPUT_COLUMNS]]  # a result read back
    res = sweep(df, ignore_capacity=a.ignore_capacity, efficiency=efficiency, engine=a.engine)
    write_table(res, a.output)
    bad = res.index[res["error"] != ""]
    for i in bad:
        print(f"perfmodel: row {i + 1}: {res.at[i, 'error']}", file=sys.stderr)
    print(f"{len(res) - len(bad)} of {len(res)} rows estimated; wrote {a.output}", file=sys.stderr)
    return EXIT_USER_ERROR if len(bad) else 0


def _calibrate(a: argparse.Namespace) -> int:
    from .calibration import calibrate, summary_lines

    threads = None
    if a.threads is not None:
        from .workload import _int_at_least

        threads = _int_at_least(a.threads, 1, "--threads")
    c = calibrate(backend=a.backend, mode="full" if a.full else "quick", threads=threads, output=a.output,
                  progress=not a.no_progress, device=a.device, hardware=a.hardware)
    df = c.measurements
    print(f"profile written to {c.path} (raw measurements: {c.path.with_suffix('.csv')})")
    what = c.device.id if c.device.id != "local" else "this machine's CPU (local)"
    print(f"  {what}: {len(df)} kernels in {c.noise['suite_s']:.0f} s, backend {c.efficiency.host.get('backend')}, "
          f"{int(df.threads.iloc[0])} threads; {c.noise['noisy_share']:.0%} of kernels noisy, median spread "
          f"{c.noise['median_spread']:.1%}")
    for line in summary_lines(c):
        print(line)
    for w in c.warnings:
        print(f"perfmodel: warning: {w}", file=sys.stderr)
    return 0


def _profile(path: str):
    from .engines import load_profile

    return load_profile(path)



def _short_reason(msg: str) -> str:
    for key, short in (("not in the catalog", None), ("no rule derives", "no rule gives a device figure"),
                       ("does not fit", "does not fit")):
        if key in msg:
            return short or msg
    return msg[:60]


def _validate(a: argparse.Namespace) -> int:
    import numpy as np

    from .engines import load_engine
    from .validation import coverage, load_rows, plot, predict, summary

    if a.engine:
        load_engine(a.engine)  # a wrong name fails before any work
    every = load_rows()
    rows = every if a.split == "all" else every[every.split == a.split].reset_index(drop=True)
    rows["predicted"], rows["skipped"] = predict(rows, engine=a.engine)
    rows["baseline"], _ = predict(rows, engine="ideal")
    rows["error_pct"] = (rows.predicted / rows.value - 1) * 100
    table = summary(rows)
    done = int(np.isfinite(rows.predicted.astype(float)).sum())
    cov = coverage(rows)
    loso, loso_why = None, "LOSO is of each row's own engine profile; not with --engine"
    if not a.engine:  # the headline: each source predicted by profiles fitted without it
        from .validation import accuracy, load_loso, unpredicted

        pred, loso_why = load_loso(every)
        if pred is not None:
            loso = accuracy(every.assign(predicted=pred, skipped=unpredicted(every, pred)))
    bands = None
    if a.bands:
        from .validation import loso_coverage, residuals

        bands = loso_coverage(residuals(every))
    if a.output:
        from .scenarios import write_csv_atomic

        write_csv_atomic(rows, a.output)
    if a.plot:
        plot(rows, a.plot)
    if a.json:
        print(json.dumps({"split": a.split, "engine": a.engine or "per row", "rows": len(rows), "predicted": done,
                          "coverage": cov.to_dict("records"), "summary": table.to_dict("records"),
                          "bands": None if bands is None else bands.to_dict("records"),
                          "loso": None if loso is None else loso.to_dict("records"), "loso_note": loso_why},
                         indent=2, default=float))
        return 0
    if loso is not None:
        print(f"leave-one-source-out, all {every.file.nunique()} sources (each predicted by engine profiles fitted "
              f"without it; tools/fit_engines.py --loso):")
        print(f"  {'category':<9} {'rows':>5} {'median %':>9} {'mean %':>8} {'within 20 %':>12} {'bias %':>7} "
              f"{'coverage':>9}")
        for r in loso.itertuples():
            print(f"  {r.category:<9} {r.rows:5d} {r.median_ape:9.1f} {r.mean_ape:8.1f} {r.within_20 * 100:11.0f}% "
                  f"{r.bias:+7.1f} {r.coverage * 100:8.1f}%")
    else:
        print(f"leave-one-source-out: {loso_why}")
    print(f"fixed split: {len(rows)} published measurements ({a.split} split), {done} predicted; engine profile: "
          f"{a.engine or 'each row its own'}; baseline: pure roofline (ideal)")
    print(f"{'category':<9} {'metric':<30} {'rows':>5} {'median %':>9} {'mean %':>8}   {'baseline median/mean %':>22}"
          f"   worst")
    for r in table.itertuples():
        print(f"{r.category:<9} {r.metric:<30} {r.rows:5d} {r.median_ape:9.1f} {r.mean_ape:8.1f}   "
              f"{r.baseline_median_ape:10.1f} / {r.baseline_mean_ape:9.1f}   {r.worst_ape:.0f}% {r.worst_row}")
    print("coverage: rows predicted of those whose model and device are in the catalog")
    for r in cov.itertuples():
        print(f"  {r.category:<9} {r.predicted:5d} of {r.known:5d}  ({r.coverage * 100:.1f} %)")
    if bands is not None:
        print("error bands (nominal 80 %), leave-one-source-out over held-out rows (width: high end / low end):")
        print(f"  {'engine':<11} {'category':<9} {'rows':>5} {'sources':>8} {'coverage':>9} {'median width':>13}")
        for r in bands.itertuples():
            print(f"  {r.engine:<11} {r.category:<9} {r.rows:5d} {r.sources:8d} {r.coverage * 100:8.1f}% "
                  f"{r.median_width:12.2f}x")
    skipped = rows[rows.skipped != ""]
    if len(skipped):
        reasons = skipped.skipped.map(_short_reason).value_counts()
        print(f"not predicted: {len(skipped)} rows (" + "; ".join(f"{n} {k}" for k, n in reasons.items()) + "; "
              "the reason of each row is in the -o CSV)")
    return 0


def _flag_number(text: Any, flag: str, lo: float = 0.0, integer: bool = False, inf: bool = False,
                 above: bool = True) -> float:
    """A numeric flag, checked: finite (or inf where `inf`), > lo (>= lo unless `above`), whole where `integer`."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise PerfmodelError(f"{flag} must be a number; got {text!r}") from None
    ok = (math.isfinite(x) or (inf and x == math.inf)) and (x > lo if above else x >= lo)
    if integer and ok and math.isfinite(x):
        ok = x == int(x)
    if not ok:
        what = "a whole number" if integer else "a finite number" if not inf else "a number (or inf)"
        raise PerfmodelError(f"{flag} must be {what} {'>' if above else '>='} {lo:g}; got {text!r}")
    return x


def _serve(a: argparse.Namespace) -> int:
    from .serving import Scheduler, find_rate, kv_memory_rule, read_trace, simulate, synthetic
    from .workload import Workload

    wl = Workload(**{field: getattr(a, name) for field, name, _, _ in Workload.options()
                     if field != "batch" and not (field == "act" and getattr(a, name) is None)})
    if a.engine and a.profile:
        raise PerfmodelError("give --profile (a calibration of a machine) or --engine (a software stack), not both")
    sch = Scheduler(policy=a.scheduler, max_num_seqs=int(_flag_number(a.max_num_seqs, "--max-num-seqs", integer=True)),
                    max_batched_tokens=int(_flag_number(a.max_batched_tokens, "--max-batched-tokens", integer=True)),
                    block_size=int(_flag_number(a.block_size, "--block-size", integer=True)),
                    memory_utilization=_flag_number(a.memory_utilization, "--memory-utilization"),
                    preemption=a.preemption, kv_memory=a.kv_memory or kv_memory_rule(a.engine))
    seed = int(_flag_number(a.seed, "--seed", integer=True, above=False))
    slo_ttft = _flag_number(a.slo_ttft, "--slo-ttft") if a.slo_ttft is not None else None
    slo_tpot = _flag_number(a.slo_tpot, "--slo-tpot") if a.slo_tpot is not None else None
    pct = _flag_number(a.percentile, "--percentile")
    if not pct < 100:
        raise PerfmodelError(f"--percentile must be in (0, 100); got {a.percentile!r}")
    req_rate = 1.0
    if a.trace:
        if a.rate is not None or a.prompt_dist or a.gen_dist:
            raise PerfmodelError("--trace gives arrivals and lengths: leave out --rate, --prompt-dist and --gen-dist")
        req = read_trace(a.trace)
    else:
        rate = 1.0 if a.find_rate else (_flag_number(a.rate, "--rate", inf=True) if a.rate is not None else None)
        if rate is None and a.concurrency is not None:
            rate = math.inf
        req_rate = rate if rate is not None else 1.0
        if rate is None:
            raise PerfmodelError("perfmodel serve needs --rate R (requests/s), --trace FILE, or --find-rate with SLOs")
        if a.requests is not None and a.duration is not None:
            raise PerfmodelError("give --requests N or --duration S (requests = rate x duration), not both")
        if a.requests is not None:
            n = int(_flag_number(a.requests, "--requests", integer=True))
        elif a.duration is not None:
            duration = _flag_number(a.duration, "--duration")
            if not math.isfinite(rate):
                raise PerfmodelError("--duration needs a finite --rate (requests = rate x duration); give --requests")
            n = max(1, int(round(rate * duration)))
        else:
            n = 1000
        gen = a.gen if a.gen is not None else 128
        req = synthetic(n, rate, a.prompt_dist or a.prompt, a.gen_dist or gen, seed=seed, arrival=a.arrival,
                        cv=_flag_number(a.cv, "--cv"), prefix_hit=_flag_number(a.prefix_hit, "--prefix-hit",
                                                                                above=False))
    kw = dict(scheduler=sch, engine=a.engine, efficiency=a.profile,
              replicas=int(_flag_number(a.replicas, "--replicas", integer=True)),
              prefill_instances=int(_flag_number(a.prefill_instances, "--prefill-instances", integer=True)),
              decode_instances=int(_flag_number(a.decode_instances, "--decode-instances", integer=True)),
              concurrency=(int(_flag_number(a.concurrency, "--concurrency", integer=True))
                           if a.concurrency is not None else None), **_techniques(a))
    if a.find_rate:
        if a.trace is None and a.rate is not None:
            raise PerfmodelError("--find-rate searches the rate: leave out --rate")
        found = find_rate(a.model, a.hardware, wl, requests=req, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot,
                          percentile=pct, record=a.plot is not None, **kw)
        res = found.result
        out = {**(res.metrics() if res is not None else {}), **found.to_dict()}
    else:
        res = simulate(a.model, a.hardware, wl, requests=req, record=a.plot is not None, **kw)
        out = res.metrics()
        if slo_ttft is not None or slo_tpot is not None:
            out.update(res.slo_figures(slo_ttft, slo_tpot))
    if a.plot is not None and res is not None:
        from .serving.figures import serving_figure
        from .plots import save

        curve = None
        if not a.find_rate:  # the throughput-latency curve: the same requests at shares of the saturated rate
            from .serving import rate_curve

            if a.trace:  # the trace's own mean rate taken as unit
                span = float(req.arrival_s[-1])
                req_rate = (len(req) - 1) / span if span > 0 else math.inf
            base = req.scaled(1.0 / req_rate) if math.isfinite(req_rate) else None
            if base is not None:
                curve = rate_curve(a.model, a.hardware, wl, requests=base, percentile=pct, **kw)
        fig = serving_figure(res, found if a.find_rate else None, curve)
        out["plot"] = str(save(fig, a.plot))
    if a.json:
        print(json.dumps(_clean(out), indent=2))
    else:
        from .serving.report import summary

        print(summary(a.model, a.hardware, out, res))
    return 0


def _train(a: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    par = {k: _whole(getattr(a, k), f"--{k}") if getattr(a, k) is not None else None
           for k in ("tp", "pp", "cp", "ep", "dp")}
    tp, pp, cp = par["tp"] or 1, par["pp"] or 1, par["cp"] or 1
    devices = _whole(a.devices, "--devices") if a.devices is not None else None
    dp = par["dp"]
    if dp is None:
        if devices is not None and devices % (tp * pp * cp):
            raise PerfmodelError(f"--devices ({devices}) must be a multiple of tp x pp x cp ({tp * pp * cp})")
        dp = devices // (tp * pp * cp) if devices is not None else 1
    elif devices is not None and devices != tp * pp * cp * dp:
        raise PerfmodelError(f"--devices ({devices}) must equal tp x pp x cp x dp ({tp * pp * cp * dp})")
    sp = None
    if a.sequence_parallel is not None:
        if a.sequence_parallel not in ("on", "off"):
            raise PerfmodelError(f"--sequence-parallel must be on or off; got {a.sequence_parallel!r}")
        sp = a.sequence_parallel == "on"
    cfg = TrainConfig(seq_len=_whole(a.seq, "--seq"), global_batch=_whole(a.global_batch, "--global-batch"),
                      micro_batch=_whole(a.micro_batch, "--micro-batch"), tp=tp, pp=pp, cp=cp, ep=par["ep"] or 1,
                      dp=dp, zero=_whole(a.zero, "--zero", lo=0), recompute=a.recompute, sequence_parallel=sp,
                      precision=a.precision, optimizer=a.optimizer, interleave=_whole(a.interleave, "--interleave"),
                      lora_rank=_whole(a.lora, "--lora", lo=0), quantize_base=a.quantize_base, dropout=a.dropout,
                      master_weights=not a.no_master_weights, optimizer_in_backward=a.optimizer_in_backward,
                      paged_optimizer=a.paged_optimizer, loss_chunks=_whole(a.loss_chunks, "--loss-chunks"),
                      attention_kernel=a.attention_kernel, loss_kernel=a.loss_kernel, gather_unit=a.gather_unit)
    tokens = _flag_number(a.tokens, "--tokens") if a.tokens is not None else None
    est = train(a.model, a.hardware, cfg, engine=a.engine, tokens=tokens)
    if not est.fits and not a.ignore_capacity:
        from .errors import CapacityError

        raise CapacityError(est.capacity_message())
    if a.json:
        print(json.dumps(_clean(est.to_dict()), indent=2))
        return 0
    print(est.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
