"""The kernel suite: what `perfmodel calibrate` runs and how it times it.

Classes (what the cost model's ops map to, perfmodel.cost.op_class): `stream.copy|read|add` (per memory level),
`gemm` (square and prefill shapes, and decode shapes of 2-64 rows), `gemv` (one row), `attention` and
`decode_attention` (fused SDPA over a prompt, and one query per sequence over a cache; Torch only), `elementwise`
(add, mul), `silu`, `gelu`, `softmax`, `rmsnorm`, `layernorm`. FLOPs use the cost model's conventions
(perfmodel.graph), so fitted rates plug straight in.

Method: random non-zero data; warm-up; kernels of one class are timed in turn over several rounds, each round
repeating a kernel until a minimum count and time are reached; the figure is the fastest of the round medians.
Working sets larger than the last-level cache rotate among several buffer sets so that DRAM, not the cache, is measured.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import PerfmodelError
from ..graph import ACT_FLOPS, NORM_FLOPS, SOFTMAX_FLOPS

Runner = Callable[[], object]


@dataclass(frozen=True)
class Kernel:
    cls: str  # stream.copy, gemm, attention, elementwise, norm
    name: str
    dtype: str  # precision class: fp64, fp32, bf16, fp16
    flops: float
    bytes: float  # bytes a kernel must move at least (inputs read once, outputs written once)
    working_set: float  # bytes touched per call (decides which memory level serves it)
    build: Callable[[int], Runner]  # build(copies) -> runner cycling over `copies` independent buffer sets
    rows: float = 0.0  # GEMM M dimension
    cold: bool = False  # always rotate buffers beyond the caches: decode GEMMs stream weights from DRAM in a model


@dataclass(frozen=True)
class Mode:
    name: str
    min_repeats: int
    min_time_s: float
    max_repeats: int
    slow_call_s: float  # a call slower than this is timed only `slow_repeats` times (bf16 on CPUs without bf16 units)
    slow_repeats: int
    gemm_sizes: tuple[int, ...]
    prefill_shapes: tuple[tuple[int, int, int], ...]
    stream_kib: tuple[int, ...]
    elem_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    rounds: int = 3  # timing rounds per kernel, spread over time (see _Timed.result)
    retry_rounds: int = 2  # extra rounds at most for a kernel whose two best rounds disagree by over NOISY_SPREAD


# LLM-shaped GEMMs (m tokens x k -> n): prefill-like and decode/GEMV-like (m = batch rows)
PREFILL_SHAPES = ((64, 1024, 1024), (128, 4096, 1024), (256, 1024, 4096), (512, 2048, 2048), (1024, 1024, 2816))
QUICK = Mode("quick", 5, 0.03, 40, 0.05, 3, (128, 256, 512), PREFILL_SHAPES[:3],
             (16, 64, 256, 1024, 4096, 16384, 65536, 262144), (2**14, 2**17, 2**20, 2**22), (128, 512))
FULL = Mode("full", 7, 0.15, 200, 0.5, 5, (64, 128, 256, 512, 768, 1024, 1536, 2048), PREFILL_SHAPES,
            (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144),
            (2**12, 2**14, 2**16, 2**18, 2**20, 2**21, 2**22, 2**23), (64, 128, 256, 512, 1024, 2048), retry_rounds=4)
# GPUs: Llama-3-8B/70B-sized projections (4096 -> 4096/14336, 8192 -> 28672) as prefill, decode (1-128 rows),
# MoE experts (few tokens per expert: Mixtral's 4096 -> 14336, DeepSeek-V3's 7168 -> 2048) and the vocabulary head
GPU_PREFILL_SHAPES = ((2048, 4096, 4096), (2048, 4096, 14336), (2048, 14336, 4096), (4096, 8192, 8192),
                      (8192, 8192, 28672))
GPU_DECODE_SHAPES = ((1, 4096, 4096), (1, 4096, 14336), (1, 14336, 4096), (1, 8192, 28672), (8, 4096, 14336),
                     (32, 4096, 4096), (32, 14336, 4096), (128, 8192, 8192), (16, 4096, 14336), (64, 4096, 14336),
                     (256, 4096, 14336), (64, 7168, 2048), (256, 2048, 7168), (1, 4096, 128256), (32, 4096, 128256))
GPU_QUICK = Mode("gpu-quick", 10, 0.02, 400, 0.05, 3, (1024, 2048, 4096, 8192), GPU_PREFILL_SHAPES[:3],
                 (256, 1024, 4096, 16384, 65536, 262144, 1048576), (2**20, 2**22, 2**24, 2**26), (512, 2048, 8192))
GPU_FULL = Mode("gpu-full", 20, 0.1, 2000, 0.5, 5, (512, 1024, 2048, 4096, 6144, 8192, 16384), GPU_PREFILL_SHAPES,
                (64, 256, 1024, 4096, 16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152),
                (2**16, 2**18, 2**20, 2**22, 2**24, 2**26, 2**27), (256, 512, 1024, 2048, 4096, 8192, 16384),
                retry_rounds=4)
ALLREDUCE_BYTES = tuple(2**e for e in range(13, 31, 3))  # 8 KiB to 1 GiB per GPU: latency- to bandwidth-bound
DECODE_SHAPES = ((1, 2048, 2048), (1, 4096, 4096), (4, 2048, 8192), (16, 4096, 4096), (64, 2048, 2048),
                 (1, 1024, 2816), (8, 2816, 1024), (4, 1024, 4096), (16, 2816, 1024), (2, 2048, 2048),
                 (32, 1024, 1024), (16, 1024, 32000), (4, 1024, 32000))  # last two: a vocabulary projection

_ITEMSIZE = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
PARALLEL_STREAM_BYTES = 8 * 2**20
REREAD_BYTES = 256 * 2**20  # bytes one re-read call reads: ~1-2 ms from L1 here, long beside a call's overhead
# A kernel is noisy when its two fastest round medians differ by more than this: on a quiet machine they agree within
# a few per cent (the figures in docs/calibration.md); contention comes in bursts, so a noisy kernel is timed again.
NOISY_SPREAD = 0.10


def _rng_fill(shape, dtype) -> np.ndarray:
    # uniform in [0.5, 1.5): non-zero, no denormals
    return (np.random.default_rng(len(shape) + int(np.prod(shape)) % 9973).random(shape) + 0.5).astype(dtype)


class Backend:
    name = "?"
    dtypes: tuple[str, ...] = ()
    device = "cpu"
    gpu_count = 0  # GPUs the suite can use together (all-reduce), 0 on a CPU
    memory_bytes: float | None = None  # device memory that bounds the suite's buffers (GPUs), None: no bound

    @property
    def is_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def clock(self) -> float:
        """Seconds, for timing (a simulated backend runs on its own clock)."""
        return time.perf_counter()

    def device_info(self) -> dict[str, str | int | float]:
        """What a profile records of the measured device (name, driver, memory) beyond the host."""
        return {}

    def versions(self) -> dict[str, str]:
        raise NotImplementedError

    def array(self, shape, dtype: str):
        raise NotImplementedError

    def sync(self) -> None:
        pass


class NumpyBackend(Backend):
    """NumPy: GEMMs through its BLAS (multi-threaded); elementwise ops single-threaded, as NumPy runs them. Memory
    streams of DRAM size are split over the pinned threads (NumPy releases the GIL while copying), so main-memory
    bandwidth is what all cores together reach, as the cost model assumes; a thread pool costs ~0.1 ms per call here,
    too much for cache-sized streams, which are therefore measured on one core."""

    name = "numpy"
    dtypes = ("fp64", "fp32")
    _np = {"fp64": np.float64, "fp32": np.float32}
    threads = 1

    def _parallel(self, fn, *arrays):
        n = self.threads
        if n <= 1 or arrays[0].nbytes < PARALLEL_STREAM_BYTES:
            return lambda: fn(*arrays)
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(n)
        parts = [tuple(np.array_split(a, n)[i] for a in arrays) for i in range(n)]
        return lambda: list(pool.map(lambda p: fn(*p), parts))

    def versions(self) -> dict[str, str]:
        out = {"numpy": np.__version__}
        try:
            from threadpoolctl import threadpool_info

            for lib in threadpool_info():
                if lib.get("user_api") == "blas":
                    out["blas"] = f"{lib['internal_api']} {lib.get('version')} ({lib.get('architecture')})"
        except ImportError:
            pass
        return out

    def array(self, shape, dtype):
        return _rng_fill(shape, self._np[dtype])

    # kernels ------------------------------------------------------------------------------------------------------
    def copy(self, a, b):
        return self._parallel(lambda x, y: np.copyto(y, x), a, b)

    def read(self, a, b):
        return self._parallel(lambda x: x.sum(), a)

    def add_stream(self, a, b, out):
        return self._parallel(lambda x, y, z: np.add(x, y, out=z), a, b, out)

    def add(self, a, b, out):
        return lambda: np.add(a, b, out=out)

    def mul(self, a, b, out):
        return lambda: np.multiply(a, b, out=out)

    def matmul(self, a, b, out):
        return lambda: np.matmul(a, b, out=out)

    def silu(self, x, out):
        def f():
            np.negative(x, out=out)
            np.exp(out, out=out)
            np.add(out, 1, out=out)
            np.divide(x, out, out=out)
        return f

    def gelu(self, x, out):
        c = math.sqrt(2 / math.pi)

        def f():  # 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
            np.multiply(x, x, out=out)
            np.multiply(out, 0.044715 * c, out=out)
            np.add(out, c, out=out)
            np.multiply(out, x, out=out)
            np.tanh(out, out=out)
            np.add(out, 1, out=out)
            np.multiply(out, x, out=out)
            np.multiply(out, 0.5, out=out)
        return f

    def softmax(self, x, out):
        def f():
            np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
            np.exp(out, out=out)
            np.divide(out, out.sum(axis=-1, keepdims=True), out=out)
        return f

    def rmsnorm(self, x, g, out):
        def f():
            r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)
            np.multiply(x, r, out=out)
            np.multiply(out, g, out=out)
        return f

    def layernorm(self, x, g, out):
        def f():
            mu = x.mean(axis=-1, keepdims=True)
            np.subtract(x, mu, out=out)
            r = 1.0 / np.sqrt(np.mean(out * out, axis=-1, keepdims=True) + 1e-5)
            np.multiply(out, r, out=out)
            np.multiply(out, g, out=out)
            np.add(out, g, out=out)
        return f

    attention = None


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch, self.device = torch, device
        self._t = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if not self.is_gpu:
            self.dtypes = ("fp32", "bf16")
            return
        if not torch.cuda.is_available():
            raise PerfmodelError(f"--device {device}: this PyTorch ({torch.__version__}, CUDA "
                                 f"{torch.version.cuda or 'none: a CPU build'}) sees no CUDA GPU; install a CUDA build "
                                 f"of PyTorch and check the driver (nvidia-smi), or calibrate the CPU (--device cpu)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise PerfmodelError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                                 f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); check CUDA_VISIBLE_DEVICES")
        self.device = f"cuda:{index}"
        self.index = index
        props = torch.cuda.get_device_properties(index)
        self.memory_bytes = float(props.total_memory)
        # FP8 matrix products (torch._scaled_mm) need Ada or Hopper (compute capability 8.9) or later
        fp8 = (props.major, props.minor) >= (8, 9) and hasattr(torch, "float8_e4m3fn")
        if fp8:
            self._t["fp8"] = torch.float8_e4m3fn
        self.dtypes = ("fp32", "bf16", "fp16") + (("fp8",) if fp8 else ())
        self.gpu_count = torch.cuda.device_count()

    def versions(self) -> dict[str, str]:
        t = self.torch
        out = {"torch": t.__version__, "numpy": np.__version__}
        if self.is_gpu:
            out["cuda"] = str(t.version.cuda)
            out["gpu"] = t.cuda.get_device_name(self.index)
        else:
            out["mkldnn"] = str(t.backends.mkldnn.is_available())
        return out

    def device_info(self) -> dict[str, str | int | float]:
        if not self.is_gpu:
            return {}
        t = self.torch
        props = t.cuda.get_device_properties(self.index)
        return {"gpu_name": t.cuda.get_device_name(self.index), "gpu_memory_bytes": float(props.total_memory),
                "gpu_sm_count": int(props.multi_processor_count),
                "gpu_capability": f"{props.major}.{props.minor}", "gpu_driver": _nvidia_driver(),
                "cuda_runtime": str(t.version.cuda), "gpus_visible": int(t.cuda.device_count())}

    def array(self, shape, dtype):
        if dtype == "fp8":
            return self.torch.from_numpy(_rng_fill(shape, np.float32)).to(self.device).to(self._t["fp8"])
        return self.torch.from_numpy(_rng_fill(shape, np.float32)).to(self.device, self._t[dtype])

    def sync(self):
        if self.is_gpu:
            self.torch.cuda.synchronize(self.device)

    def allreduce(self, nbytes: int):
        """A sum over every visible GPU of a bf16 message of `nbytes` per GPU, as NCCL runs it (one process)."""
        t = self.torch
        n = max(int(nbytes) // 2, 1)
        bufs = [t.ones(n, dtype=t.bfloat16, device=f"cuda:{i}") for i in range(self.gpu_count)]
        from torch.cuda import nccl

        def run():
            nccl.all_reduce(bufs)
            for i in range(self.gpu_count):
                t.cuda.synchronize(i)
        return run

    # Allocating ops, as frameworks call them: Torch's `out=` variants can take slower paths (bf16 matmul with
    # out= ran ~30x slower than nn.Linear on an AVX2 CPU).
    def copy(self, a, b):
        return lambda: b.copy_(a)

    def read(self, a, b):
        return lambda: a.sum()

    def add(self, a, b, out):
        return lambda: a + b

    def add_stream(self, a, b, out):
        # in place: a fresh DRAM-sized result page-faults on every call (6-12 GB/s here instead of ~28), and the
        # streams are there to measure the memory levels, not the allocator
        return lambda: self.torch.add(a, b, out=out)

    def reread(self, a, times: int):
        """Read `a` `times` times in one call: a sum over rows of `a` expanded (stride 0) to `times` rows. Torch
        reduces it with every thread and no per-pass call, so a buffer that fits a cache is read at that cache's
        rate: the way to measure L1 and L2, whose single passes take less than a call's overhead."""
        v = a.expand(times, a.shape[0])
        return lambda: v.sum(dim=1)

    def mul(self, a, b, out):
        return lambda: a * b

    def matmul(self, a, b, out):
        # as model layers run it: F.linear against an (n, k) weight (bf16 `a @ b` took a ~20x slower path on CPU)
        w, f = b.t().contiguous(), self.torch.nn.functional.linear
        if a.dtype == self._t.get("fp8"):
            # FP8 x FP8 with per-tensor scales and a BF16 result, as FP8 checkpoints run (torch._scaled_mm takes
            # the weight column-major: the transpose of a row-major (n, k) matrix)
            one = self.torch.ones((), dtype=self.torch.float32, device=self.device)
            mm = self.torch._scaled_mm
            return lambda: mm(a, w.t(), scale_a=one, scale_b=one, out_dtype=self.torch.bfloat16)
        return lambda: f(a, w)

    def silu(self, x, out):
        f = self.torch.nn.functional.silu
        return lambda: f(x)

    def gelu(self, x, out):
        f = self.torch.nn.functional.gelu
        return lambda: f(x, approximate="tanh")

    def softmax(self, x, out):
        return lambda: self.torch.softmax(x, dim=-1)

    def rmsnorm(self, x, g, out):
        f = self.torch.nn.functional.rms_norm
        return lambda: f(x, (x.shape[-1],), g, 1e-6)

    def layernorm(self, x, g, out):
        f = self.torch.nn.functional.layer_norm
        return lambda: f(x, (x.shape[-1],), g, g, 1e-5)

    def attention(self, q, k, v):
        f = self.torch.nn.functional.scaled_dot_product_attention
        causal = q.shape[-2] > 1  # prefill: causal over the prompt; decode: one query over the whole cache
        gqa = q.shape[1] != k.shape[1]  # grouped-query attention: several query heads share a K/V head
        return lambda: f(q, k, v, is_causal=causal, enable_gqa=gqa)


def _nvidia_driver() -> str:
    """The NVIDIA driver version, from the kernel module's report or nvidia-smi; '' when neither answers."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            for word in f.read().split():
                if word.count(".") in (1, 2) and word.replace(".", "").isdigit():
                    return word
    except OSError:
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
        except (OSError, subprocess.SubprocessError):
            return ""
    return ""


def _cycling(backend: Backend, make: Callable[[], Runner], copies: int) -> Runner:
    runners = [make() for _ in range(copies)]
    state = {"i": 0}

    def run():
        r = runners[state["i"] % len(runners)]
        state["i"] += 1
        return r()

    return run


def kernels(backend: Backend, mode: Mode) -> list[Kernel]:
    """The suite for one backend and mode."""
    out: list[Kernel] = []
    B = backend

    def add(cls, name, dtype, flops, nbytes, ws, make, rows=0.0, cold=False):
        out.append(Kernel(cls, name, dtype, float(flops), float(nbytes), float(ws),
                          lambda copies, make=make: _cycling(B, make, copies), float(rows), cold))

    # Memory streams over working sets from L1 to DRAM, fp32 elements.
    if getattr(B, "reread", None) is not None and not B.is_gpu:
        # cache levels without a call per pass: each working set read REREAD_BYTES / working set times in one call
        for kib in mode.stream_kib:
            if kib * 1024 > REREAD_BYTES // 4:
                continue
            n, times = kib * 1024 // 4, REREAD_BYTES // (kib * 1024)
            add("stream.reread", f"reread {kib} KiB x{times}", "fp32", n * times, n * 4 * times, n * 4,
                lambda n=n, times=times: B.reread(B.array((n,), "fp32"), times))
    for kib in mode.stream_kib:
        n = kib * 1024 // 4 // 2  # two arrays per working set
        add("stream.copy", f"copy {kib} KiB", "fp32", 0, 2 * n * 4, 2 * n * 4,
            lambda n=n: B.copy(B.array((n,), "fp32"), B.array((n,), "fp32")))
        add("stream.read", f"read {kib} KiB", "fp32", n, n * 4, n * 4,
            lambda n=n: B.read(B.array((n,), "fp32"), None))
        n3 = kib * 1024 // 4 // 3
        add("stream.add", f"add {kib} KiB", "fp32", n3, 3 * n3 * 4, 3 * n3 * 4,
            lambda n=n3: B.add_stream(B.array((n,), "fp32"), B.array((n,), "fp32"), B.array((n,), "fp32")))

    decode_shapes = GPU_DECODE_SHAPES if B.is_gpu else DECODE_SHAPES
    for dt in B.dtypes:
        it = _ITEMSIZE[dt]
        shapes = [(s, s, s) for s in mode.gemm_sizes] + list(mode.prefill_shapes)
        for (m, k, n), cold in [(sh, False) for sh in shapes] + [(sh, True) for sh in decode_shapes]:
            if dt == "fp8" and (m % 16 or k % 16 or n % 16):
                continue  # torch._scaled_mm takes dimensions in multiples of 16 (FP8 serving pads decode rows so)
            nbytes = (m * k + k * n + m * n) * it
            add("gemv" if m == 1 else "gemm", f"gemm {m}x{k}x{n}", dt, 2 * m * k * n, nbytes, nbytes,
                lambda m=m, k=k, n=n, dt=dt: B.matmul(B.array((m, k), dt), B.array((k, n), dt),
                                                      B.array((m, n), dt)), rows=m, cold=cold)
        if dt == "fp8":  # FP8 is a matrix format: the vector ops and attention run at 16 bits
            continue
        for n in mode.elem_sizes:
            add("elementwise", f"add {n}", dt, n, 3 * n * it, 3 * n * it,
                lambda n=n, dt=dt: B.add(B.array((n,), dt), B.array((n,), dt), B.array((n,), dt)))
            add("elementwise", f"mul {n}", dt, n, 3 * n * it, 3 * n * it,
                lambda n=n, dt=dt: B.mul(B.array((n,), dt), B.array((n,), dt), B.array((n,), dt)))
            add("silu", f"silu {n}", dt, ACT_FLOPS["silu"] * n, 2 * n * it, 2 * n * it,
                lambda n=n, dt=dt: B.silu(B.array((n,), dt), B.array((n,), dt)))
            add("gelu", f"gelu {n}", dt, ACT_FLOPS["gelu_tanh"] * n, 2 * n * it, 2 * n * it,
                lambda n=n, dt=dt: B.gelu(B.array((n,), dt), B.array((n,), dt)))
            for d in (1024, 4096):
                rows = max(n // d, 1)
                add("softmax", f"softmax {rows}x{d}", dt, SOFTMAX_FLOPS * rows * d, 2 * rows * d * it,
                    2 * rows * d * it, lambda r=rows, d=d, dt=dt: B.softmax(B.array((r, d), dt), B.array((r, d), dt)))
                add("rmsnorm", f"rmsnorm {rows}x{d}", dt, NORM_FLOPS["rmsnorm"] * rows * d, (2 * rows + 1) * d * it,
                    (2 * rows + 1) * d * it,
                    lambda r=rows, d=d, dt=dt: B.rmsnorm(B.array((r, d), dt), B.array((d,), dt), B.array((r, d), dt)))
                add("layernorm", f"layernorm {rows}x{d}", dt, NORM_FLOPS["layernorm"] * rows * d,
                    (2 * rows + 1) * d * it, (2 * rows + 1) * d * it,
                    lambda r=rows, d=d, dt=dt: B.layernorm(B.array((r, d), dt), B.array((d,), dt),
                                                           B.array((r, d), dt)))
        if B.attention is not None:
            # grouped-query attention as current LLMs run it (16 query heads over 4 K/V heads, head dim 64);
            # FLOPs and bytes by the cost model's conventions (K and V read once per K/V head)
            h, kvh, hd = (32, 8, 128) if B.is_gpu else (16, 4, 64)  # GPUs: Llama-3-8B's attention
            for s in mode.seq_lens:
                pairs = s * (s + 1) / 2  # causal, as the fused kernel computes it
                nbytes = 2 * (h + kvh) * s * hd * it  # q, k, v read, o written
                add("attention", f"sdpa h{h}/{kvh} s{s} d{hd}", dt, 2 * pairs * h * 2 * hd, nbytes, nbytes,
                    lambda s=s, dt=dt: B.attention(B.array((1, h, s, hd), dt), B.array((1, kvh, s, hd), dt),
                                                   B.array((1, kvh, s, hd), dt)))
                # decode: one new query per sequence over s cached keys and values; with 16 and with 4 K/V heads,
                # so that FLOPs per byte differ 4x and the fit can tell a compute-bound kernel from a memory-bound one
                many = 16 if B.is_gpu else 8
                for b, kv in ((1, kvh), (many, kvh), (1, h), (many, h)):
                    nbytes = b * (2 * kv * s + 2 * h) * hd * it
                    add("decode_attention", f"sdpa decode b{b} h{h}/{kv} kv{s} d{hd}", dt, 2 * b * s * h * 2 * hd,
                        nbytes, nbytes, lambda s=s, b=b, kv=kv, dt=dt: B.attention(B.array((b, h, 1, hd), dt),
                                                                                   B.array((b, kv, s, hd), dt),
                                                                                   B.array((b, kv, s, hd), dt)))
    if B.gpu_count > 1:
        # all-reduce of a message of each size over every visible GPU (bytes: the message per GPU)
        for size in ALLREDUCE_BYTES:
            add("allreduce", f"allreduce {size} B x{B.gpu_count}", "bf16", 0, size, size,
                lambda size=size: B.allreduce(size))
    return out


def _copies(k: Kernel, llc_bytes: float) -> int:
    """Buffer sets to rotate among: one for cache-sized working sets, else enough to span 3x the last-level cache
    (always for `cold` kernels: a decode step reads every weight matrix once, from DRAM unless the whole model fits
    in the caches)."""
    if (k.working_set < llc_bytes / 2 and not k.cold) or k.cls == "stream.reread":  # a re-read is its own reuse
        return 1
    return int(math.ceil(3 * llc_bytes / k.working_set)) + 1


class _Timed:
    """One kernel being timed: its runner (buffers allocated, first touch done) and the samples of each round."""

    def __init__(self, backend: Backend, k: Kernel, mode: Mode, llc_bytes: float):
        self.backend, self.kernel, self.mode = backend, k, mode
        copies = _copies(k, llc_bytes)
        self.run = k.build(copies)
        clock = backend.clock
        t0 = clock()
        self.run()  # warm-up, and a probe of how slow a call is
        backend.sync()
        self.slow = clock() - t0 > mode.slow_call_s
        for _ in range(0 if self.slow else max(1, copies - 1)):  # first touch of every buffer set
            self.run()
        backend.sync()
        self.rounds: list[list[float]] = []

    def sample_round(self, rounds: int) -> None:
        """Time this round's share of the calls (the mode's repeat and time targets split over the rounds)."""
        m = self.mode
        want = max(1, -(-(m.slow_repeats if self.slow else m.min_repeats) // rounds))
        min_time = 0.0 if self.slow else m.min_time_s / rounds
        cap = max(want, m.max_repeats // rounds)
        times: list[float] = []
        total = 0.0
        clock = self.backend.clock
        while len(times) < cap and (len(times) < want or total < min_time):
            t0 = clock()
            self.run()
            self.backend.sync()
            dt = clock() - t0
            times.append(dt)
            total += dt
        self.rounds.append(times)

    def spread(self) -> float:
        """How far the two fastest round medians disagree (0.05: the second is 5 % slower); 0 with one round."""
        meds = sorted(float(np.median(r)) for r in self.rounds)
        return meds[1] / meds[0] - 1.0 if len(meds) > 1 and meds[0] > 0 else 0.0

    def result(self) -> tuple[float, int, float, int]:
        """(seconds per call, timed calls, spread, rounds): the median of each round, and the fastest of those
        medians. On a shared machine contention only ever adds time, and it comes in bursts of seconds; rounds
        spread over time let one burst spoil a round, not the figure, and two rounds that agree show it was not
        spoilt (the spread)."""
        return (min(float(np.median(r)) for r in self.rounds), sum(len(r) for r in self.rounds), self.spread(),
                len(self.rounds))


def time_kernels(backend: Backend, ks: list[Kernel], mode: Mode, llc_bytes: float,
                 step: Callable[[str], None] | None = None) -> list[tuple[float, int, float, int]]:
    """Time kernels in blocks of the same class and precision: build the block's buffers, then `mode.rounds` rounds
    that each time every kernel of the block in turn, then up to `mode.retry_rounds` more rounds of the kernels whose
    two fastest rounds still disagree by over NOISY_SPREAD. Returns (seconds per call, timed calls, spread, rounds)
    per kernel; `step` is called after every kernel's regular round (len(ks) x mode.rounds calls)."""
    out: list[tuple[float, int, float, int]] = []
    i = 0
    while i < len(ks):
        j, held = i, 0.0
        while j < len(ks) and _block(ks[j]) == _block(ks[i]) and (j == i or held < BLOCK_BYTES):
            held += ks[j].working_set * _copies(ks[j], llc_bytes)
            j += 1
        block = [_Timed(backend, k, mode, llc_bytes) for k in ks[i:j]]
        for r in range(mode.rounds):
            for t in block:
                t.sample_round(mode.rounds)
                if step:
                    step(f"{t.kernel.name} ({r + 1}/{mode.rounds})")
        for _ in range(mode.retry_rounds):
            noisy = [t for t in block if t.spread() > NOISY_SPREAD]
            if not noisy:
                break
            for t in noisy:
                t.sample_round(mode.rounds)
        out.extend(t.result() for t in block)
        del block
        i = j
    return out


BLOCK_BYTES = 2**30  # buffers held at once while a block is timed
_BLOCK_OF = {"gemv": "gemm", "attention": "attention", "decode_attention": "attention", "gemm": "gemm",
             "allreduce": "allreduce"}


def _block(k: Kernel) -> tuple[str, str]:
    """Kernels timed together: memory streams; GEMMs; attention; the vector ops (elementwise, norms...)."""
    return ("stream" if k.cls.startswith("stream.") else _BLOCK_OF.get(k.cls, "vector")), k.dtype


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled, self.t0 = total, 0, enabled and total > 0, time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.t0
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{elapsed:5.1f}s  {label[:40]:<40}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
