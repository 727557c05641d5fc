"""Real engines on this CPU against perfmodel's prediction, on random-weight models (nothing downloaded).

    python benchmarks/local_engines.py hf [--dtypes fp32,bf16] [--attn eager,sdpa]
    python benchmarks/local_engines.py llamacpp --bin DIR [--formats f16,q8_0,q4_0] [--threads N]

1. `hf`: Hugging Face transformers' LlamaForCausalLM built from a config (the 156M-parameter Llama architecture of
   benchmarks/calibration_evidence.py: 8 layers, d_model 1024, 16 heads over 4 K/V heads, d_ff 2816, 32K vocabulary),
   random weights, with its eager and its SDPA attention; batch 1, prefill of 128/512/1024 tokens (the forward pass
   that fills the cache, logits of the last position as generate() asks for) and one decode step over a cache of 128
   and of 1024 tokens, fp32 and bf16. Timed as the calibration suite times kernels (rounds before and after the
   suite, each the median of a few calls, the fastest round kept) and predicted by perfmodel with the profile
   `perfmodel calibrate --backend torch --quick` fits here, and with the uncalibrated defaults.
2. `llamacpp`: the same architecture written as a GGUF file by the `gguf` package (F16, random weights, a synthetic
   32K SentencePiece-style vocabulary), quantised to Q8_0 and Q4_0 by llama.cpp's own llama-quantize, and measured
   by llama-bench (pp512 and tg128, its defaults: five repetitions, the mean); predicted with `--engine llamacpp`,
   the profile fitted on published llama.cpp tables (no calibration).

Needs torch and transformers for `hf`; gguf and a llama.cpp build for `llamacpp` (`--bin`: the folder holding
llama-bench and llama-quantize; docs/calibration.md says how the figures there were built).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import perfmodel as pm  # noqa: E402
from calibration_evidence import SPEC, EndToEnd  # noqa: E402

HF_PROMPTS = (128, 512, 1024)
HF_CONTEXTS = (128, 1024)


class HFEndToEnd(EndToEnd):
    """transformers' LlamaForCausalLM per precision and attention implementation; the cases and their report are
    calibration_evidence's (prefill: TTFT of the prompt; decode: TPOT over a cache of `n` tokens)."""

    def __init__(self, dtypes: list[str], attns: list[str]):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from perfmodel._local import detect_local

        self.torch = torch
        torch.set_num_threads(detect_local().processor.units)
        self.tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}
        cfg = dict(vocab_size=SPEC.vocab_size, hidden_size=SPEC.d_model, intermediate_size=SPEC.d_ff,
                   num_hidden_layers=SPEC.n_layers, num_attention_heads=SPEC.n_heads,
                   num_key_value_heads=SPEC.kv_heads, max_position_embeddings=4096, tie_word_embeddings=False)
        torch.manual_seed(0)
        self.models = {}
        for dt in dtypes:
            for attn in attns:
                m = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation=attn))
                self.models[(dt, attn)] = m.to(self.tdt[dt]).eval()
        self.cases = [((dt, attn), "prefill", 1, p) for dt in dtypes for attn in attns for p in HF_PROMPTS]
        self.cases += [((dt, attn), "decode", 1, c) for dt in dtypes for attn in attns for c in HF_CONTEXTS]
        self.best = {c: float("inf") for c in self.cases}

    def _run(self, key, phase, b, n) -> float:
        torch = self.torch
        from transformers import DynamicCache

        import inspect

        model = self.models[key]
        # the cache argument's name: `cache` from transformers 5.2x, `past_key_values` before
        kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        untimed = []  # work after each call, outside the timing
        with torch.inference_mode():
            if phase == "prefill":
                tok = torch.randint(0, SPEC.vocab_size, (b, n))

                def call():
                    model(input_ids=tok, use_cache=True, logits_to_keep=1, **{kw: DynamicCache()})
                reps = 2 if n >= 512 else 3
            else:
                cache = DynamicCache()
                model(input_ids=torch.randint(0, SPEC.vocab_size, (b, n)), use_cache=True, logits_to_keep=1,
                      **{kw: cache})
                tok = torch.randint(0, SPEC.vocab_size, (b, 1))

                def call():
                    model(input_ids=tok, use_cache=True, **{kw: cache})

                # drop the token the step appended: every step attends over n cached tokens and itself
                untimed.append(lambda: cache.crop(-1))
                reps = 5
            call()  # warm-up
            for f in untimed:
                f()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                call()
                ts.append(time.perf_counter() - t0)
                for f in untimed:
                    f()
        return statistics.median(ts)

    def report(self, profile: pm.Efficiency) -> pd.DataFrame:
        rows = []
        for (dt, attn), phase, b, n in self.cases:
            measured = self.best[((dt, attn), phase, b, n)]
            pred = {}
            for k, e in (("calibrated", profile), ("uncalibrated", pm.efficiency.default_for("cpu"))):
                est = pm.estimate(SPEC, "local", prompt_len=n, gen_len=1 if phase == "prefill" else 2, efficiency=e,
                                  batch=b, weights=dt, kv=dt, act=dt)
                pred[k] = est.ttft_s if phase == "prefill" else est.tpot_s
            rows.append({"dtype": dt, "attention": attn, "phase": phase, "tokens": n, "measured_s": measured,
                         "calibrated_s": pred["calibrated"], "uncalibrated_s": pred["uncalibrated"]})
            print(f"  {dt} {attn:<5} {phase:<7} n={n:<5} measured {measured * 1e3:9.2f} ms   calibrated "
                  f"{pred['calibrated'] * 1e3:9.2f} ms ({pred['calibrated'] / measured - 1:+.0%})   uncalibrated "
                  f"{pred['uncalibrated'] * 1e3:9.2f} ms ({pred['uncalibrated'] / measured - 1:+.0%})", flush=True)
        return pd.DataFrame(rows)


def run_hf(a) -> None:
    from perfmodel._local import detect_local
    from perfmodel.calibration import Calibrator, make_backend, profile_from, run_suite

    dev = detect_local()
    levels = [(lv.name, lv.capacity_bytes or float("inf")) for lv in dev.levels]
    e2e = HFEndToEnd(a.dtypes.split(","), a.attn.split(","))
    import transformers

    print(f"machine: {dev.name}, {dev.processor.units} cores; transformers {transformers.__version__}, torch "
          f"{e2e.torch.__version__}; model {SPEC.params_total() / 1e6:.0f}M parameters, random weights")
    e2e.measure(rounds=3)
    backend = make_backend("torch")
    df = run_suite(backend, "quick", llc_bytes=max(c for _, c in levels[:-1]), progress=False)
    e2e.measure(rounds=3)
    cal = Calibrator(levels).fit(df)
    profile = profile_from(cal, "local", "torch", backend.versions(), int(df.threads.iloc[0]), "quick")
    res = e2e.report(profile)
    for col in ("calibrated_s", "uncalibrated_s"):
        err = (res[col] / res.measured_s - 1).abs()
        print(f"  {col[:-2]:<13} median |error| {err.median():6.1%}, worst {err.max():6.1%}, "
              f"within 20 %: {(err <= 0.20).sum()}/{len(err)}")


# llama.cpp -----------------------------------------------------------------------------------------------------------

def write_gguf(path: Path, seed: int = 0) -> None:
    """SPEC's Llama architecture as an F16 GGUF file with random weights and a synthetic vocabulary."""
    import gguf

    rng = np.random.default_rng(seed)
    s, hd = SPEC, SPEC.dim_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(s.d_model)
    w.add_block_count(s.n_layers)
    w.add_feed_forward_length(s.d_ff)
    w.add_head_count(s.n_heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # <unk>, <s>, </s>, the 256 byte tokens, then plain pieces: what llama.cpp's SentencePiece loader expects
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581t{i}" for i in range(s.vocab_size - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (s.vocab_size - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(s.vocab_size)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(s.vocab_size, s.d_model))
    for i in range(s.n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(s.d_model, np.float32))
        w.add_tensor(p + "attn_q.weight", mat(s.n_heads * hd, s.d_model))
        w.add_tensor(p + "attn_k.weight", mat(s.kv_heads * hd, s.d_model))
        w.add_tensor(p + "attn_v.weight", mat(s.kv_heads * hd, s.d_model))
        w.add_tensor(p + "attn_output.weight", mat(s.d_model, s.n_heads * hd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(s.d_model, np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(s.d_ff, s.d_model))
        w.add_tensor(p + "ffn_up.weight", mat(s.d_ff, s.d_model))
        w.add_tensor(p + "ffn_down.weight", mat(s.d_model, s.d_ff))
    w.add_tensor("output_norm.weight", np.ones(s.d_model, np.float32))
    w.add_tensor("output.weight", mat(s.vocab_size, s.d_model))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


FORMATS = {"f16": ("F16", "fp16"), "q8_0": ("Q8_0", "q8_0"), "q4_0": ("Q4_0", "q4_0")}


def run_llamacpp(a) -> None:
    from perfmodel._local import detect_local

    bindir = Path(a.bin)
    dev = detect_local()
    threads = a.threads or dev.processor.units
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "model-f16.gguf"
        write_gguf(f16)
        for fmt in a.formats.split(","):
            ftype, weights = FORMATS[fmt]
            path = f16 if fmt == "f16" else Path(tmp) / f"model-{fmt}.gguf"
            if fmt != "f16":
                subprocess.run([str(bindir / "llama-quantize"), str(f16), str(path), ftype], check=True,
                               capture_output=True)
            out = subprocess.run([str(bindir / "llama-bench"), "-m", str(path), "-p", "512", "-n", "128", "-t",
                                  str(threads), "-o", "json"], check=True, capture_output=True, text=True)
            for r in json.loads(out.stdout):
                phase = "prefill" if r["n_prompt"] else "decode"
                # pp512: one 512-token prompt; tg128: 128 tokens after an empty prompt (validation's convention)
                # llama.cpp's own defaults: on a CPU FP32 arithmetic on dequantised blocks (the engine's compute
                # format when act is left open), an F16 KV cache
                est = pm.estimate(SPEC, "local", engine="llamacpp", weights=weights, kv="fp16", batch=1,
                                  backend="cpu", prompt_len=512 if phase == "prefill" else 1,
                                  gen_len=1 if phase == "prefill" else 129)
                pred = est.prefill_tokens_per_s if phase == "prefill" else est.decode_tokens_per_s
                rows.append({"format": fmt, "phase": phase, "measured_tok_s": r["avg_ts"], "predicted_tok_s": pred,
                             "build": f"{r.get('build_commit', '')} ({r.get('build_number', '')})",
                             "threads": r.get("n_threads")})
    res = pd.DataFrame(rows)
    print(f"machine: {dev.name}, {dev.processor.units} cores; llama.cpp {res.build.iloc[0]}, {threads} threads; "
          f"model {SPEC.params_total() / 1e6:.0f}M parameters, random weights")
    for r in res.itertuples():
        print(f"  {r.format:<5} {'pp512' if r.phase == 'prefill' else 'tg128':<6} measured {r.measured_tok_s:8.1f} "
              f"tok/s   predicted (--engine llamacpp) {r.predicted_tok_s:8.1f} tok/s "
              f"({r.predicted_tok_s / r.measured_tok_s - 1:+.0%})")
    err = (res.predicted_tok_s / res.measured_tok_s - 1).abs()
    print(f"  median |error| {err.median():.1%}, worst {err.max():.1%}, within 20 %: {(err <= 0.2).sum()}/{len(err)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="engine", required=True)
    hf = sub.add_parser("hf")
    hf.add_argument("--dtypes", default="fp32,bf16")
    hf.add_argument("--attn", default="eager,sdpa")
    ll = sub.add_parser("llamacpp")
    ll.add_argument("--bin", required=True, help="folder with llama-bench and llama-quantize")
    ll.add_argument("--formats", default="f16,q8_0,q4_0")
    ll.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    (run_hf if a.engine == "hf" else run_llamacpp)(a)


if __name__ == "__main__":
    main()
