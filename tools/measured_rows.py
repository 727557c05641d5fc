"""Write the validation files of this project's own GPU measurements from their raw records.

    python tools/measured_rows.py validation/measured/h200-2026-12-04 [--out DIR]

Reads DIR/env.json and DIR/run*.jsonl (written by benchmarks/gpu_measure.py on the device machine) and writes
validation/kernel3-perfmodel-h200-measured.toml (GEMM, STREAM and attention kernels) and
validation/stacks3-perfmodel-h200-transformers.toml (transformers generate()); with --train-hardware ID, the
training steps of `gpu_measure.py --only train` as validation/train/perfmodel-ID-train-measured.toml. Values are the
raw medians rounded to four significant figures; nothing else is changed. Which raw records become rows, and why the
rest do not, is written into each file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from perfmodel._io import atomic_write_text  # noqa: E402

KERNEL_FILE = "kernel3-perfmodel-h200-measured.toml"
HF_FILE = "stacks3-perfmodel-h200-transformers.toml"
GEMM_ROWS = (1, 16, 64, 256, 1024, 8192)   # of the bf16 sweep's 14 row counts: a spread, not the whole sweep
STREAM = {("copy", 2**28), ("triad", 2**28), ("triad", 2**31)}


def sig(x: float) -> float:
    return float(f"{x:.4g}")


def q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def load(d: Path) -> tuple[dict, list[tuple[str, dict]]]:
    env = json.loads((d / "env.json").read_text())
    recs = []
    for f in sorted(d.glob("run*.jsonl")):
        recs += [(f.name, json.loads(line)) for line in f.read_text().splitlines() if line.strip()]
    return env, recs


def header(env: dict, d: Path, title: str, setup: str, metrics: str, measured: str = "2026-12-04") -> list[str]:
    rel = d.relative_to(ROOT).as_posix() if d.is_relative_to(ROOT) else d.as_posix()
    return [
        "# Written by tools/measured_rows.py from the raw records in " + rel + "; do not edit by hand.",
        "", "[source]", f"title = {q(title)}", f"url = {q(rel + '/')}",
        f"published = {q(measured + ' (measured by this project)')}",
        f"setup = {q(setup)}", f"metrics = {q(metrics)}", ""]


def machine(env: dict) -> str:
    # nvidia-smi's CSV: the field names of the query (env.json's nvidia_smi_query) over one line of values
    values = (env.get("nvidia_smi", "").splitlines() + ["", ""])[1].split(",")
    smi = dict(zip(env.get("nvidia_smi_query", "").split(","), (v.strip() for v in values)))
    watts = float(smi["power.limit"].split()[0])
    return (f"one {env['gpu']} ({env['sm_count']} SMs, {env['l2_cache_bytes'] / 2**20:.0f} MiB L2, "
            f"{env['total_memory_bytes'] / 2**30:.1f} GiB visible, max SM clock {smi['clocks.max.sm']} by nvidia-smi, "
            f"power limit {watts:.0f} W), driver {smi['driver_version']}, CUDA {env['cuda']}, torch {env['torch']}, on "
            f"a {env['cpu_count']}-vCPU '{env['cpu_model']}' virtual machine (the project's device tool)")


def kernel_file(env: dict, recs: list, d: Path) -> str:
    out = header(env, d, "perfmodel's own kernel measurements on an NVIDIA H200 SXM (benchmarks/gpu_measure.py)",
                 machine(env) + ". Every figure is the median of 5 timed CUDA-graph replays after warm-up (CUDA "
                 "events), each replay n back-to-back calls, on random data; GEMM weights cycle through enough copies "
                 "that they stream from HBM, not L2 (copies x weight bytes >= 4 x L2).",
                 "gemm_tflops = 2 m n k / time of torch.nn.functional.linear(x [m x k], W [n x k]) in bf16, or of "
                 "torch._scaled_mm (e4m3 x e4m3, per-tensor scales, bf16 output) for fp8; bandwidth_gb_per_s = bytes "
                 "read + written / time (copy 2, triad 3 arrays of fp32); attention_tflops = 4 s^2 d h b (halved "
                 "when causal) / time of scaled_dot_product_attention with the flash backend.")
    out += ["[defaults]", 'engine = "kernel"', 'hardware = "h200"',
            f"software = {q('PyTorch ' + env['torch'] + ' (cuBLAS/cuBLASLt of CUDA ' + env['cuda'] + ')')}", ""]
    left = []
    for f, r in recs:
        if r.get("kind") == "gemm" and "tflops" in r:
            if r["dtype"] == "bf16" and r["m"] not in GEMM_ROWS:
                left.append(r)
                continue
            out += ["[[rows]]", 'metric = "gemm_tflops"', f'dtype = "{r["dtype"]}"',
                    f"m = {r['m']}", f"n = {r['n']}", f"k = {r['k']}", f"value = {sig(r['tflops'])}",
                    "where = " + q(f"{f}: gemm {r['dtype']} m={r['m']} n={r['n']} k={r['k']}"),
                    "note = " + q(f"median {r['seconds'] * 1e6:.2f} us per call; {r['weight_copies']} weight copies "
                                  "cycled"),
                    ""]
        elif r.get("kind") == "stream" and (r["kernel"], r["array_bytes"]) in STREAM:
            out += ["[[rows]]", 'metric = "bandwidth_gb_per_s"', f'kernel = "{r["kernel"]}"',
                    f"value = {sig(r['gb_per_s'])}",
                    "where = " + q(f"{f}: stream {r['kernel']}, arrays of {r['array_bytes'] // 2**20} MiB"),
                    ""]
        elif r.get("kind") == "attention" and "tflops" in r:
            out += ["[[rows]]", 'engine = "fa2"', 'metric = "attention_tflops"',
                    f"software = {q('PyTorch ' + env['torch'] + ' scaled_dot_product_attention, flash backend (FlashAttention-2 kernels)')}",
                    f"seq_len = {r['seq_len']}", f"heads = {r['heads']}", f"head_dim = {r['head_dim']}",
                    f"batch = {r['batch']}", f"causal = {str(r['causal']).lower()}", 'dtype = "bf16"',
                    f"value = {sig(r['tflops'])}",
                    "where = " + q(f"{f}: attention seq_len={r['seq_len']} causal={r['causal']}"),
                    ""]
    ms = sorted({r["m"] for r in left})
    out += ["[[excluded]]", f"what = {q('bf16 GEMMs at m = ' + ', '.join(map(str, ms)) + f' ({len(left)} records)')}",
            "reason = \"kept in the raw records only, so that one device's sweep does not outweigh the other kernel "
            "sources; the rows above keep m = " + ", ".join(map(str, GEMM_ROWS)) + " of every shape\"", "",
            "[[excluded]]", 'what = "STREAM copy at 4 MiB to 1 GiB arrays except 256 MiB, triad except 256 MiB and 2 GiB"',
            "reason = \"arrays of 4-16 MiB sit in the 60 MiB L2; copy_ of 1 GiB and more, captured in a CUDA graph, "
            "becomes a memcpy node that ran at 2.7 TB/s against 4.2 TB/s for 256 MiB (a copy engine, not the "
            "kernel a program runs)\"", "",
            "[[excluded]]", 'what = "launch records (per-call host and GPU time of one-element kernels)"',
            "reason = \"no metric of the validation set; they are the evidence for the per-op costs in "
            "docs/validation.md\"", ""]
    return "\n".join(out)


def hf_file(env: dict, recs: list, d: Path) -> str:
    builds = {r["model"]: r for _, r in recs if r.get("kind") == "hf_build"}
    kern = {r["model"]: r for _, r in recs if r.get("kind") == "hf_kernels" and "kernels_per_decode_step" in r}
    out = header(env, d, "perfmodel's own measurements of transformers generate() on an NVIDIA H200 SXM "
                 "(benchmarks/gpu_measure.py)",
                 machine(env) + f". transformers {env['transformers']}, eager PyTorch, SDPA attention, default "
                 "DynamicCache, greedy decoding with min_new_tokens = max_new_tokens, bf16 weights initialised at "
                 "random from each model's verbatim config.json (tests/fixtures/hf; no download, the compute and "
                 "bytes of the real weights); prompts of random token ids, no padding. MoE experts run "
                 "transformers' grouped_mm experts implementation (its default).",
                 "TTFT = wall time of generate(max_new_tokens=1), median of 3 after a warm-up call; recorded as "
                 "prefill_tokens_per_s = batch x prompt / TTFT. decode_tokens_per_s = batch x (gen - 1) / "
                 "(wall(generate(gen)) - TTFT), wall the median of 2.")
    out += ["[defaults]", 'engine = "hf"', 'hardware = "h200"', 'weights = "bf16"', 'batching = "static"',
            f"software = {q('transformers ' + env['transformers'] + ', torch ' + env['torch'] + ', eager, SDPA')}",
            ""]
    for f, r in recs:
        if r.get("kind") != "hf" or "ttft_s" not in r:
            continue
        k = kern.get(r["model"])
        extra = ""
        if k and r["batch"] == 1:
            extra = (f"; at batch 1 one decode step launched {k['kernels_per_decode_step']:.0f} CUDA kernels "
                     f"summing {k['gpu_busy_s_per_decode_step'] * 1e3:.2f} ms of GPU time (torch profiler)")
        base = [f'model = "{r["model"]}"', f"batch = {r['batch']}", f"prompt_len = {r['prompt']}"]
        where = f"{r['model']} batch {r['batch']} prompt {r['prompt']} gen {r['gen']}"
        out += ["[[rows]]", *base, 'metric = "prefill_tokens_per_s"', "gen_len = 1",
                f"value = {sig(r['prefill_tokens_per_s'])}", f"where = {q(f + ': ' + where + ', ttft_s')}",
                "note = " + q(f"TTFT {r['ttft_s']:.4f} s"), ""]
        if r["gen"] > 1:
            out += ["[[rows]]", *base, 'metric = "decode_tokens_per_s"', f"gen_len = {r['gen']}",
                    f"value = {sig(r['decode_tokens_per_s'])}",
                    f"where = {q(f + ': ' + where + ', decode_tokens_per_s')}",
                    "note = " + q(f"TPOT {r['tpot_s'] * 1e3:.2f} ms" + extra),
                    ""]
    out += ["# models built: " + ", ".join(f"{m} ({b['params'] / 1e9:.2f}B params)" for m, b in builds.items())]
    return "\n".join(out) + "\n"


def train_file(env: dict, recs: list, d: Path, hardware: str, measured: str) -> str | None:
    """validation/train rows of `gpu_measure.py --only train`: tokens/s and peak memory of each GPT case, one GPU."""
    runs = [(f, r) for f, r in recs if r.get("kind") == "train" and "step_s" in r]
    if not runs:
        return None
    out = header(env, d, f"perfmodel's own eager PyTorch training steps on an {env.get('gpu', hardware)} "
                 "(benchmarks/gpu_measure.py --only train)",
                 machine(env) + ". GPT models of 4 layers (pre-LayerNorm, biased linears, exact GELU, learned "
                 "positions, LM head tied to the embedding, vocabulary 50,304) built in eager PyTorch: FP32 weights "
                 "under bf16 autocast, scaled_dot_product_attention (causal, flash backend: FlashAttention-2's "
                 "kernels), F.cross_entropy on the logits (autocast runs it in FP32), fused AdamW; random token ids.",
                 "tokens_per_s = micro-batch x sequence / step time, the median of 5 timed steps after 3 warm-up "
                 "steps (wall time between CUDA synchronisations: forward, loss, backward, optimizer step, zero_grad); "
                 "memory_bytes_per_gpu = torch.cuda.max_memory_allocated over the timed steps (FP32 weights, FP32 "
                 "gradients, Adam's two FP32 moments: 16 bytes a parameter, plus activations and autocast's bf16 "
                 "weight copies; the allocator's cache and the CUDA context excluded)", measured)
    out += ["[defaults]", 'framework = "pytorch-eager"', f"hardware = {q(hardware)}", 'precision = "bf16"',
            'optimizer = "adamw"', 'method = "full"', "n_devices = 1", "zero = 0", 'recompute = "none"',
            'attention_kernel = "fa2"', 'loss_kernel = "torch"',
            f"software = {q('PyTorch ' + env['torch'] + ', CUDA ' + str(env.get('cuda')))}", ""]
    for f, r in runs:
        h, seq, mb = r["hidden"], r["seq_len"], r["micro_batch"]
        name = f"GPT {r['layers']} x {h}"
        shape = [f"model_name = {q(name)}",
                 f"layers = {r['layers']}", f"hidden = {h}", f"heads = {r['heads']}", f"vocab = {r['vocab']}",
                 f"seq_len = {seq}", f"micro_batch = {mb}", f"global_batch = {mb}"]
        note = f"{r['params'] / 1e6:.1f} M parameters; step {r['step_s'] * 1e3:.2f} ms"
        if "kernels" in r:
            busy = r["gpu_busy_s"]
            note += (f"; one profiled step launched {r['kernels']} CUDA kernels, GPU busy "
                     + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(busy.items()))
                     + f" (profiled step {r['profiled_step_s'] * 1e3:.2f} ms wall)")
        where = f"{f}: train hidden={h} seq_len={seq} micro_batch={mb}"
        out += ["[[rows]]", *shape, 'metric = "tokens_per_s"', f"value = {sig(r['tokens_per_s'])}",
                f"where = {q(where + ', tokens_per_s')}", f"note = {q(note)}", ""]
        if "peak_allocated_bytes" in r:
            out += ["[[rows]]", *shape, 'metric = "memory_bytes_per_gpu"', f"value = {r['peak_allocated_bytes']}",
                    f"where = {q(where + ', peak_allocated_bytes')}", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw", type=Path, help="folder of env.json and run*.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "validation", help="where to write the two files")
    ap.add_argument("--train-hardware", help="catalog id of the GPU that ran `--only train`: write its training rows")
    ap.add_argument("--measured", default="2026-12-04", help="date of the measurement (training rows)")
    a = ap.parse_args(argv)
    d = a.raw.resolve()
    env, recs = load(d)
    if a.train_hardware:
        text = train_file(env, recs, d, a.train_hardware, a.measured)
        if text is None:
            print(f"no training records in {d}", file=sys.stderr)
            return 2
        atomic_write_text(a.out / "train" / f"perfmodel-{a.train_hardware}-train-measured.toml", text)
        return 0
    atomic_write_text(a.out / KERNEL_FILE, kernel_file(env, recs, d))
    atomic_write_text(a.out / HF_FILE, hf_file(env, recs, d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
