"""Measure a CUDA GPU for perfmodel's validation set: device facts, kernels, and transformers generate().

    python3 benchmarks/gpu_measure.py --out DIR [--budget-s 330] [--device cuda|cpu] [--tiny] [--only SECTIONS]
                                      [--hf-set 1|2]

Needs only torch and transformers (not perfmodel, not pydantic), so it runs on a bare GPU machine. Writes
DIR/env.json (device query, nvidia-smi, versions) and DIR/measurements.jsonl (one JSON object per measurement,
flushed as it goes, so a run stopped at its time limit keeps what it measured). `--device cpu --tiny` runs every code
path on small shapes to check the script itself; its figures mean nothing.

What is measured, and how (every figure is the median of timed repeats after warm-up calls, on random data):
- launch: the host cost of one eager PyTorch op (wall time over 5,000 `add_` calls on one element) and the GPU cost of
  one such kernel inside a CUDA graph (graph replay timed with CUDA events).
- stream: `copy_` (2 x bytes moved) and triad `add(b, c, alpha=s, out=a)` (3 x bytes) on fp32 arrays from 4 MB to
  2 GB each, n calls captured in a CUDA graph and timed with events.
- gemm: `F.linear(x, W)` (x: m x k, W: n x k, the layout of a transformer's linear layers) in bf16 for m = 1 ... 8192
  on LLaMA-3-8B's projection shapes; fp8 `torch._scaled_mm` on two of them. Enough copies of W cycle through the graph
  that the weights come from HBM, not L2 (copies x weight bytes >= 4 x L2).
- attention: `scaled_dot_product_attention` in bf16 with the flash backend, 16k tokens per call (batch = 16384 /
  seq_len, 16 heads of 128, as FlashAttention-3's paper benchmarks), causal and not; FLOPs = 4 s^2 d h b (/2 causal).
- hf: transformers `generate()` (greedy, KV cache, SDPA attention, eager PyTorch) of catalog models built from their
  verbatim config.json (tests/fixtures/hf) with random bf16 weights (no download): TTFT = `generate(max_new_tokens=1)`
  wall time; decode tokens/s = batch x (gen - 1) / (wall(gen) - TTFT); and, under the profiler, the CUDA kernels one
  decode step launches and their summed GPU time.
- hfstep (only when asked, `--only hfstep`): a bare decode step (the model's forward over its cache, argmax on the
  device) against a `generate()` step of the same model: what generate()'s loop adds per step. Not yet run on a GPU.
- train, train_moe (only when asked, `--only train,train_moe`): eager PyTorch training steps of GPT models of MPT's and Megatron's widths
  (TRAIN_CASES: 4 layers of LayerNorm, biased linears, exact GELU, learned positions, an LM head tied to the
  embedding; attention by scaled_dot_product_attention, causal, flash backend): FP32 master weights under bf16
  autocast, F.cross_entropy on the logits, backward, fused AdamW, zero_grad; step time the median of 5 timed steps
  after 3 warm-up steps (wall time between synchronisations), peak memory allocated, and under the profiler one
  step's CUDA kernels: their count and summed GPU time by class (GEMM, attention, the rest). The question it answers:
  how much of a small model's training step the cost model misses (validation/train's llm-foundry MPT-125M to 1B
  and Pythia rows run 12 to 37 % faster in perfmodel than published), and whether the gap is GPU work or the host's
  launches. tools/measured_rows.py turns the records into validation/train rows. Then MoE layers (TRAIN_MOE_CASES)
  as Megatron-Core's SequentialMLP runs them: a router, top-k, the tokens sorted by expert, one loop over the local
  experts (a SwiGLU MLP each), the outputs weighted back; `dropless`: the experts' token counts read on the host
  (`.tolist()`, a synchronisation every layer) to split the sorted tokens, as dropless routing must; `padded`: every
  expert takes a fixed capacity (no synchronisation). Fwd + bwd of 4 such layers, wall time against the kernels' GPU
  time: how much of a fine-grained MoE layer is the host's, and what the synchronisation adds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.fh = open(out / "measurements.jsonl", "a")

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def put(self, **row) -> None:
        row["t_s"] = round(time.monotonic() - self.t0, 2)
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        print(json.dumps(row), flush=True)


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: str, reps: int = 7, warm: int = 2, graph_calls: int = 1) -> float:
    """Median seconds of one call of fn. On CUDA, graph_calls > 1 captures that many calls in a CUDA graph (no launch
    gaps between them) and divides; on CPU, wall time."""
    for _ in range(warm):
        fn()
    sync(dev)
    if dev != "cuda":
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(graph_calls):
                fn()
            ts.append((time.perf_counter() - t) / graph_calls)
        return statistics.median(ts)
    run = fn
    if graph_calls > 1:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            for _ in range(graph_calls):
                fn()
        run = g.replay
        run()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / graph_calls)
    return statistics.median(ts)


def env(rec: Recorder, dev: str) -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sm_count=p.multi_processor_count, total_memory_bytes=p.total_memory,
                    l2_cache_bytes=getattr(p, "L2_cache_size", None), capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda)
        q = ("name,driver_version,clocks.max.sm,clocks.max.memory,clocks.sm,clocks.mem,power.limit,memory.total,"
             "pcie.link.gen.max,pcie.link.width.max")
        try:
            info["nvidia_smi_query"] = q
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv"],
                                                capture_output=True, text=True, timeout=30).stdout
            info["nvidia_smi_clocks"] = subprocess.run(["nvidia-smi", "-q", "-d", "CLOCK"], capture_output=True,
                                                       text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"failed: {e}"
    (rec.out / "env.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1), flush=True)
    return info


def launch(rec: Recorder, dev: str) -> None:
    x = torch.randn(1, device=dev)
    n = 5000
    for _ in range(200):
        x.add_(1.0)
    sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        x.add_(1.0)
    host_s = (time.perf_counter() - t) / n
    sync(dev)
    rec.put(kind="launch", what="eager add_ on one element: wall per call while launching", calls=n,
            per_call_s=host_s)
    w = torch.randn(4096, 4096, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, 4096, device=dev, dtype=torch.bfloat16)
    for _ in range(20):
        F.linear(v, w)
    sync(dev)
    t = time.perf_counter()
    for _ in range(1000):
        F.linear(v, w)
    sync(dev)
    rec.put(kind="launch", what="eager F.linear 1x4096 @ 4096x4096 bf16: wall per call, synchronised at the end",
            calls=1000, per_call_s=(time.perf_counter() - t) / 1000)
    if dev == "cuda":
        per = timed(lambda: x.add_(1.0), dev, graph_calls=1000)
        rec.put(kind="launch", what="add_ on one element inside a CUDA graph: GPU time per kernel", calls=1000,
                per_call_s=per)


def stream(rec: Recorder, dev: str, tiny: bool) -> None:
    sizes = [2**20] if tiny else [2**22, 2**24, 2**26, 2**28, 2**30, 2**31]
    for nbytes in sizes:
        if rec.left_s() < 0.75 * rec.budget_s:
            break
        n = nbytes // 4
        a, b, c = (torch.randn(n, device=dev) for _ in range(3))
        calls = max(2, min(200, int(2**33 // nbytes)))
        t = timed(lambda: c.copy_(a), dev, graph_calls=calls, reps=5)
        rec.put(kind="stream", kernel="copy", array_bytes=nbytes, bytes_moved=2 * nbytes, seconds=t,
                gb_per_s=2 * nbytes / t / 1e9, graph_calls=calls)
        t = timed(lambda: torch.add(b, c, alpha=0.4, out=a), dev, graph_calls=calls, reps=5)
        rec.put(kind="stream", kernel="triad", array_bytes=nbytes, bytes_moved=3 * nbytes, seconds=t,
                gb_per_s=3 * nbytes / t / 1e9, graph_calls=calls)
        a = b = c = None


def _gemm_sweep(rec: Recorder, dev: str, name: str, n: int, k: int, ms: list[int], elem_bytes: int, make, product,
                l2_bytes: int, rate_guess: float, **extra) -> None:
    """Time product(x, W) for each m: W (n x k) cycled through enough copies to stream from HBM, x (m x k)."""
    wbytes = n * k * elem_bytes
    copies = max(1, min(16, math.ceil(4 * l2_bytes / wbytes)))
    ws = [make(n, k) for _ in range(copies)]
    for m in ms:
        if rec.left_s() < 0.6 * rec.budget_s:
            return
        x = make(m, k)
        i = [0]

        def call():
            product(x, ws[i[0] % copies])
            i[0] += 1
        flops = 2 * m * n * k
        est_s = max(5e-6, flops / rate_guess, wbytes / 3e12)
        calls = max(copies, min(400, int(0.02 / est_s) // copies * copies or copies))
        t = timed(call, dev, graph_calls=calls, reps=5)
        rec.put(kind="gemm", dtype=name, m=m, n=n, k=k, seconds=t, tflops=flops / t / 1e12,
                weight_gb_per_s=wbytes / t / 1e9, weight_copies=copies, graph_calls=calls, **extra)


def gemm(rec: Recorder, dev: str, tiny: bool, l2_bytes: int) -> None:
    dt = torch.bfloat16
    shapes = [(64, 64)] if tiny else [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]
    ms = [1, 8] if tiny else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    for n, k in shapes:
        _gemm_sweep(rec, dev, "bf16", n, k, ms, 2, lambda r, c: torch.randn(r, c, device=dev, dtype=dt), F.linear,
                    l2_bytes, 5e14)
    if dev != "cuda" or not hasattr(torch, "_scaled_mm"):
        return
    one = torch.tensor(1.0, device=dev)
    for n, k in [(4096, 4096), (28672, 4096)]:
        try:
            _gemm_sweep(rec, dev, "fp8", n, k, [16, 64, 256, 1024, 4096, 8192], 1,
                        lambda r, c: torch.randn(r, c, device=dev).to(torch.float8_e4m3fn),
                        lambda x, w: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one, out_dtype=dt),
                        l2_bytes, 1e15, call="torch._scaled_mm, per-tensor scales, e4m3 x e4m3 -> bf16")
        except Exception as e:  # noqa: BLE001 - a missing fp8 path must not stop the run
            rec.put(kind="gemm", dtype="fp8", error=repr(e)[:300])
            return


def attention(rec: Recorder, dev: str, tiny: bool) -> None:
    heads, d = 16, 128
    seqs = [128] if tiny else [512, 1024, 2048, 4096, 8192, 16384]
    tokens = 256 if tiny else 16384
    for s in seqs:
        if rec.left_s() < 0.55 * rec.budget_s:
            return
        b = tokens // s
        q, k, v = (torch.randn(b, heads, s, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            def call():
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            try:
                if dev == "cuda":
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        t = timed(call, dev, graph_calls=10, reps=5)
                else:
                    t = timed(call, dev, reps=3)
            except Exception as e:  # noqa: BLE001
                rec.put(kind="attention", seq_len=s, causal=causal, error=repr(e)[:300])
                continue
            flops = 4 * s * s * d * heads * b / (2 if causal else 1)
            rec.put(kind="attention", backend="flash (torch SDPA)", dtype="bf16", batch=b, heads=heads, head_dim=d,
                    seq_len=s, causal=causal, seconds=t, tflops=flops / t / 1e12)
        q = k = v = None


# (hidden, heads, seq_len, micro_batch): head size 64 below 2048 wide, 128 from it (as MPT's yamls); 16,384 tokens a
# step but at seq 8192
TRAIN_CASES = [(768, 12, 2048, 8), (1024, 16, 2048, 8), (2048, 16, 2048, 8), (4096, 32, 2048, 4),
               (768, 12, 512, 32), (768, 12, 8192, 2), (2048, 16, 512, 32), (2048, 16, 8192, 2)]
TRAIN_LAYERS, TRAIN_VOCAB = 4, 50304


def gpt(h: int, heads: int, seq: int, layers: int, vocab: int):
    """A GPT decoder as eager PyTorch builds it (GPT-2 / MPT style): pre-LayerNorm blocks with biased linears,
    exact GELU, learned positions, an LM head tied to the token embedding."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
            self.qkv, self.o = nn.Linear(h, 3 * h), nn.Linear(h, h)
            self.up, self.down = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, heads, h // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, h))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, h), nn.Embedding(seq, h)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(h)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for blk in self.blocks:
                x = blk(x)
            return F.linear(self.ln_f(x), self.wte.weight)

    return GPT()


def _kernel_class(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n or "attention" in n:
        return "attention"
    if any(k in n for k in ("gemm", "cutlass", "xmma", "cublas", "sm80_", "sm90_", "sm100_", "ampere_", "hopper_")):
        return "gemm"
    return "other"


def _step_s(step, dev: str, warm: int = 3, reps: int = 5) -> tuple[float, int]:
    """(median seconds, steps timed) of a training step: `warm` steps first, then the peak-memory counters reset (on
    CUDA) and `reps` steps timed each by wall time between synchronisations."""
    for _ in range(warm):
        step()
    sync(dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    walls = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        sync(dev)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls), reps


def _profiled_step(step, dev: str) -> tuple[float, dict[str, list[float]]]:
    """One step under the torch profiler: its wall time and its CUDA kernels' GPU seconds by class (_kernel_class)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        step()
        sync(dev)
        wall = time.perf_counter() - t
    by: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            by.setdefault(_kernel_class(e.name), []).append(e.device_time / 1e6)
    return wall, by


def train(rec: Recorder, dev: str, tiny: bool) -> None:
    cases = [(64, 2, 32, 2)] if tiny else TRAIN_CASES
    layers, vocab = (2, 512) if tiny else (TRAIN_LAYERS, TRAIN_VOCAB)
    for h, heads, seq, mb in cases:
        if rec.left_s() < 15:
            rec.put(kind="train", hidden=h, seq_len=seq, skipped=f"{rec.left_s():.0f} s left")
            continue
        case = dict(kind="train", hidden=h, heads=heads, layers=layers, vocab=vocab, seq_len=seq, micro_batch=mb)
        try:
            torch.manual_seed(0)
            model = gpt(h, heads, seq, layers, vocab).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
            ids = torch.randint(0, vocab, (mb, seq), device=dev)
            tgt = torch.randint(0, vocab, (mb, seq), device=dev)

            def step():
                with torch.autocast(dev, dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(ids).view(-1, vocab), tgt.view(-1))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step_s, timed = _step_s(step, dev)
            row = dict(case, params=sum(p.numel() for p in model.parameters()), step_s=step_s,
                       tokens_per_s=mb * seq / step_s, steps_timed=timed,
                       attention="scaled_dot_product_attention, flash backend" if dev == "cuda" else "sdpa (cpu)")
            if dev == "cuda":
                row.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                           peak_reserved_bytes=torch.cuda.max_memory_reserved())
                row["profiled_step_s"], by = _profiled_step(step, dev)
                row.update(kernels=sum(len(v) for v in by.values()),
                           gpu_busy_s={k: sum(v) for k, v in by.items()},
                           kernels_by_class={k: len(v) for k, v in by.items()})
            rec.put(**row)
        except Exception as e:  # noqa: BLE001 - one case out of memory must not stop the others
            rec.put(**case, error=repr(e)[:300])
        model = opt = None
        if dev == "cuda":
            torch.cuda.empty_cache()


# (hidden, experts on the GPU, top-k, expert ffn, tokens): Qwen3-30B-A3B's expert shape with the 16 experts of one
# rank of EP 8 and with all 128; Mixtral's 8 large experts
TRAIN_MOE_CASES = [(2048, 16, 8, 768, 4096), (2048, 16, 8, 768, 16384), (2048, 128, 8, 768, 4096),
                   (4096, 8, 2, 14336, 8192)]


def moe_layer(h: int, experts: int, k: int, ffn: int, dropless: bool):
    """An MoE MLP as Megatron-Core's SequentialMLP runs it (see the module docstring)."""
    from torch import nn

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(h, experts, bias=False)
            self.w1 = nn.ParameterList(nn.Parameter(torch.randn(2 * ffn, h) * h ** -0.5) for _ in range(experts))
            self.w2 = nn.ParameterList(nn.Parameter(torch.randn(h, ffn) * ffn ** -0.5) for _ in range(experts))

        def forward(self, x):
            t = x.shape[0]
            p, idx = torch.topk(torch.softmax(self.router(x).float(), dim=-1), k, dim=-1)
            order = idx.flatten().argsort()
            xs = x[order // k]
            if dropless:
                counts = torch.bincount(idx.flatten(), minlength=experts).tolist()  # the host waits here
            else:
                counts = [t * k // experts] * experts
                counts[-1] += t * k - sum(counts)
            outs = []
            for e, part in enumerate(torch.split(xs, counts)):
                g, u = F.linear(part, self.w1[e]).chunk(2, dim=-1)
                outs.append(F.linear(F.silu(g) * u, self.w2[e]))
            y = torch.empty_like(xs)
            y[order] = torch.cat(outs) * p.flatten()[order].unsqueeze(-1).to(xs.dtype)
            return x + y.view(t, k, h).sum(dim=1)

    return MoE()


def train_moe(rec: Recorder, dev: str, tiny: bool) -> None:
    cases = [(64, 4, 2, 32, 64)] if tiny else TRAIN_MOE_CASES
    for h, experts, k, ffn, tokens in cases:
        for dropless in (True, False):
            if rec.left_s() < 10:
                rec.put(kind="train_moe", hidden=h, experts=experts, skipped=f"{rec.left_s():.0f} s left")
                return
            case = dict(kind="train_moe", hidden=h, experts=experts, top_k=k, expert_ffn=ffn, tokens=tokens,
                        layers=4, dropless=dropless)
            try:
                torch.manual_seed(0)
                layers = [moe_layer(h, experts, k, ffn, dropless).to(dev) for _ in range(4)]
                x0 = torch.randn(tokens, h, device=dev, requires_grad=True)

                def step():
                    with torch.autocast(dev, dtype=torch.bfloat16):
                        x = x0
                        for m in layers:
                            x = m(x)
                    x.float().square().mean().backward()

                row = dict(case, step_s=_step_s(step, dev)[0])
                if dev == "cuda":
                    by = _profiled_step(step, dev)[1]
                    row.update(kernels=sum(len(v) for v in by.values()),
                               gpu_busy_s=sum(sum(v) for v in by.values()))
                rec.put(**row)
            except Exception as e:  # noqa: BLE001
                rec.put(**case, error=repr(e)[:300])
            layers = x0 = None
            if dev == "cuda":
                torch.cuda.empty_cache()


HF_CASES = [  # model, [(batch, prompt, gen)], rough seconds needed
    ("llama-3-8b", [(1, 512, 128), (8, 512, 128), (32, 512, 128), (1, 2048, 1), (8, 2048, 1)], 40),
    ("llama-3.2-1b", [(1, 512, 128), (16, 512, 128)], 20),
    ("qwen3-30b-a3b", [(1, 512, 64), (8, 512, 32)], 45),
    ("mixtral-8x7b", [(1, 512, 64), (8, 512, 64)], 45),
    ("qwen3-8b", [(1, 512, 128)], 20),
]
HF_CASES_2 = [  # the second run: batches and prompts large enough to leave the launch-bound regime, more architectures
    ("llama-3-8b", [(64, 512, 32), (256, 512, 32), (512, 256, 16), (1, 4096, 1), (1, 8192, 1), (4, 4096, 1)], 60),
    ("llama-2-7b", [(1, 512, 128), (16, 512, 64)], 25),
    ("mistral-7b", [(1, 512, 64)], 15),
    ("qwen2.5-7b", [(1, 512, 64)], 15),
    ("phi-3-mini", [(1, 512, 64)], 15),
    ("gemma-2-9b", [(1, 512, 64)], 15),
]


def hf_config(model_id: str, tiny: bool):
    """The transformers config of a catalog model from its verbatim config.json (tests/fixtures/hf); `tiny`: two
    small layers, to check the code paths on a CPU."""
    from transformers import AutoConfig

    d = json.loads((ROOT / "tests" / "fixtures" / "hf" / f"{model_id}.json").read_text())
    d = {k: v for k, v in d.items() if not k.startswith("_")}
    mt = d.pop("model_type")
    if tiny:
        d.update(num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, vocab_size=1024, moe_intermediate_size=128,
                 num_local_experts=min(d.get("num_local_experts", 4), 4), num_experts=min(d.get("num_experts", 4), 4),
                 num_experts_per_tok=2)
    return AutoConfig.for_model(mt, **d)


def hf(rec: Recorder, dev: str, tiny: bool, which: int) -> None:
    from transformers import AutoModelForCausalLM

    for model_id, cases, need_s in (HF_CASES if which == 1 else HF_CASES_2):
        if rec.left_s() < need_s:
            rec.put(kind="hf", model=model_id, skipped=f"{rec.left_s():.0f} s left, needs about {need_s} s")
            continue
        if tiny:
            cases = [(1, 16, 4), (2, 16, 4)]
        cfg = hf_config(model_id, tiny)
        t = time.perf_counter()
        try:
            with torch.device(dev):
                model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        except Exception as e:  # noqa: BLE001
            rec.put(kind="hf", model=model_id, error=f"build: {e!r}"[:400])
            continue
        model.eval()
        rec.put(kind="hf_build", model=model_id, seconds=time.perf_counter() - t,
                params=sum(p.numel() for p in model.parameters()),
                experts_implementation=str(getattr(model.config, "_experts_implementation", None)))
        vocab = cfg.vocab_size
        gc = dict(do_sample=False, pad_token_id=0, use_cache=True)
        for b, p, g in cases:
            if rec.left_s() < 8:
                rec.put(kind="hf", model=model_id, batch=b, prompt=p, gen=g, skipped="out of time")
                break
            try:
                ids = torch.randint(10, vocab - 10, (b, p), device=dev)
                mask = torch.ones_like(ids)

                def gen(n):
                    sync(dev)
                    t = time.perf_counter()
                    with torch.inference_mode():
                        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                             min_new_tokens=n, **gc)
                    sync(dev)
                    return time.perf_counter() - t, out.shape[1] - p
                gen(2)
                ttft = statistics.median(gen(1)[0] for _ in range(3))
                row = dict(kind="hf", model=model_id, batch=b, prompt=p, gen=g, ttft_s=ttft,
                           prefill_tokens_per_s=b * p / ttft)
                if g > 1:
                    walls, made = zip(*(gen(g) for _ in range(2)))
                    wall = statistics.median(walls)
                    row.update(wall_s=wall, generated=min(made), decode_tokens_per_s=b * (g - 1) / (wall - ttft),
                               tpot_s=(wall - ttft) / (g - 1))
                rec.put(**row)
            except Exception as e:  # noqa: BLE001
                rec.put(kind="hf", model=model_id, batch=b, prompt=p, gen=g, error=repr(e)[:300])
        if cases and cases[0][0] == 1 and rec.left_s() > 10:
            try:
                kernel_count(rec, dev, model, model_id, vocab, p=cases[0][1])
            except Exception as e:  # noqa: BLE001
                rec.put(kind="hf_kernels", model=model_id, error=repr(e)[:300])
        model = None
        if dev == "cuda":
            torch.cuda.empty_cache()


def kernel_count(rec: Recorder, dev: str, model, model_id: str, vocab: int, p: int) -> None:
    """Kernels per decode step and their GPU time: profile generate(9) and generate(1); the difference is 8 steps."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(10, vocab - 10, (1, p), device=dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    res = {}
    for n in (1, 9):
        with torch.inference_mode(), profile(activities=acts) as prof:
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
            sync(dev)
        ev = [e for e in prof.events() if e.device_type.name == "CUDA"] if dev == "cuda" else []
        res[n] = (len(ev), sum(e.device_time for e in ev) / 1e6)
    rec.put(kind="hf_kernels", model=model_id, batch=1, prompt=p,
            kernels_per_decode_step=(res[9][0] - res[1][0]) / 8,
            gpu_busy_s_per_decode_step=(res[9][1] - res[1][1]) / 8)


def hf_step(rec: Recorder, dev: str, tiny: bool) -> None:
    """Host time of a bare decode step (the model's forward with its KV cache, greedy argmax on the device, no
    generate() loop) against generate()'s: what generate() adds per step."""
    from transformers import AutoModelForCausalLM

    for model_id in ("llama-3-8b", "llama-3.2-1b"):
        if rec.left_s() < 20:
            return
        cfg = hf_config(model_id, tiny)
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        model.eval()
        p, steps = (16, 4) if tiny else (512, 64)
        ids = torch.randint(10, cfg.vocab_size - 10, (1, p), device=dev)
        with torch.inference_mode():
            for rep in range(3):
                sync(dev)
                t0 = time.perf_counter()
                out = model(input_ids=ids, use_cache=True)
                sync(dev)
                t1 = time.perf_counter()
                cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                for _ in range(steps):
                    out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                sync(dev)
                t2 = time.perf_counter()
                gc = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
                model.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, **gc)
                sync(dev)
                t3 = time.perf_counter()
                model.generate(input_ids=ids, max_new_tokens=steps + 1, min_new_tokens=steps + 1, **gc)
                sync(dev)
                t4 = time.perf_counter()
                if rep:  # the first round warms up
                    rec.put(kind="hf_step", model=model_id, batch=1, prompt=p, steps=steps, forward_prefill_s=t1 - t0,
                            forward_step_s=(t2 - t1) / steps, generate_first_s=t3 - t2,
                            generate_step_s=(t4 - t3 - (t3 - t2)) / steps)
        model = None
        if dev == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--only", default="launch,stream,gemm,attention,hf", help="sections, comma-separated; also hfstep, train, train_moe")
    ap.add_argument("--hf-set", type=int, choices=(1, 2), default=1, help="which list of transformers cases to run")
    a = ap.parse_args()
    rec = Recorder(a.out, a.budget_s)
    info = env(rec, a.device)
    l2 = info.get("l2_cache_bytes") or 64 * 2**20
    steps = {"launch": lambda: launch(rec, a.device), "stream": lambda: stream(rec, a.device, a.tiny),
             "gemm": lambda: gemm(rec, a.device, a.tiny, l2), "attention": lambda: attention(rec, a.device, a.tiny),
             "hf": lambda: hf(rec, a.device, a.tiny, a.hf_set), "hfstep": lambda: hf_step(rec, a.device, a.tiny),
             "train": lambda: train(rec, a.device, a.tiny), "train_moe": lambda: train_moe(rec, a.device, a.tiny)}
    for name in a.only.split(","):
        try:
            steps[name]()
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            rec.put(kind=name, error=repr(e)[:500])
        if a.device == "cuda":
            torch.cuda.empty_cache()
    rec.put(kind="done", seconds=time.monotonic() - rec.t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
