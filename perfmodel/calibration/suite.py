"""The kernel suite: what `perfmodel calibrate` runs and how it times it.

Classes (what the cost model's ops map to, perfmodel.cost.op_class): `stream.copy|read|add` (per memory level),
`gemm` (square, prefill and decode/GEMV shapes), `attention` (fused SDPA, Torch only), `elementwise` (add, mul),
`activation` (SiLU, GELU), `softmax`, `norm` (RMSNorm, LayerNorm). FLOPs use the cost model's conventions (perfmodel.graph), so fitted rates plug straight in.

Method: random non-zero data; warm-up; repeat until both a minimum count and a minimum time are reached; median.
Working sets larger than the last-level cache rotate among several buffer sets so that DRAM, not the cache, is measured.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


# LLM-shaped GEMMs (m tokens x k -> n): prefill-like and decode/GEMV-like (m = batch rows)
PREFILL_SHAPES = ((64, 1024, 1024), (128, 4096, 1024), (256, 1024, 4096), (512, 2048, 2048), (1024, 1024, 2816))
QUICK = Mode("quick", 5, 0.03, 40, 0.05, 3, (128, 256, 512), PREFILL_SHAPES[:3],
             (16, 64, 256, 1024, 4096, 16384, 65536, 262144), (2**14, 2**17, 2**20, 2**22), (128, 512))
FULL = Mode("full", 7, 0.15, 200, 0.5, 5, (64, 128, 256, 512, 768, 1024, 1536, 2048), PREFILL_SHAPES,
            (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144),
            (2**12, 2**14, 2**16, 2**18, 2**20, 2**21, 2**22, 2**23), (64, 128, 256, 512, 1024, 2048))
DECODE_SHAPES = ((1, 2048, 2048), (1, 4096, 4096), (4, 2048, 8192), (16, 4096, 4096), (64, 2048, 2048),
                 (1, 1024, 2816), (8, 2816, 1024), (4, 1024, 4096), (16, 2816, 1024), (2, 2048, 2048),
                 (32, 1024, 1024))

_ITEMSIZE = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2}
PARALLEL_STREAM_BYTES = 8 * 2**20


def _rng_fill(shape, dtype) -> np.ndarray:
    # uniform in [0.5, 1.5): non-zero, no denormals
    return (np.random.default_rng(len(shape) + int(np.prod(shape)) % 9973).random(shape) + 0.5).astype(dtype)


class Backend:
    name = "?"
    dtypes: tuple[str, ...] = ()

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
        self.dtypes = ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32", "bf16")
        self._t = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

    def versions(self) -> dict[str, str]:
        t = self.torch
        out = {"torch": t.__version__, "numpy": np.__version__}
        if self.device == "cuda":
            out["cuda"] = str(t.version.cuda)
            out["gpu"] = t.cuda.get_device_name(0)
        else:
            out["mkldnn"] = str(t.backends.mkldnn.is_available())
        return out

    def array(self, shape, dtype):
        return self.torch.from_numpy(_rng_fill(shape, np.float32)).to(self.device, self._t[dtype])

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

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

    def mul(self, a, b, out):
        return lambda: a * b

    def matmul(self, a, b, out):
        # as model layers run it: F.linear against an (n, k) weight (bf16 `a @ b` took a ~20x slower path on CPU)
        w, f = b.t().contiguous(), self.torch.nn.functional.linear
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
        return lambda: f(q, k, v, is_causal=causal)


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

    def add(cls, name, dtype, flops, nbytes, ws, make, rows=0.0):
        out.append(Kernel(cls, name, dtype, float(flops), float(nbytes), float(ws),
                          lambda copies, make=make: _cycling(B, make, copies), float(rows)))

    # Memory streams over working sets from L1 to DRAM, fp32 elements.
    for kib in mode.stream_kib:
        n = kib * 1024 // 4 // 2  # two arrays per working set
        add("stream.copy", f"copy {kib} KiB", "fp32", 0, 2 * n * 4, 2 * n * 4,
            lambda n=n: B.copy(B.array((n,), "fp32"), B.array((n,), "fp32")))
        add("stream.read", f"read {kib} KiB", "fp32", n, n * 4, n * 4,
            lambda n=n: B.read(B.array((n,), "fp32"), None))
        n3 = kib * 1024 // 4 // 3
        add("stream.add", f"add {kib} KiB", "fp32", n3, 3 * n3 * 4, 3 * n3 * 4,
            lambda n=n3: B.add_stream(B.array((n,), "fp32"), B.array((n,), "fp32"), B.array((n,), "fp32")))

    for dt in B.dtypes:
        it = _ITEMSIZE[dt]
        shapes = [(s, s, s) for s in mode.gemm_sizes] + list(mode.prefill_shapes) + list(DECODE_SHAPES)
        for m, k, n in shapes:
            nbytes = (m * k + k * n + m * n) * it
            add("gemv" if m == 1 else "gemm", f"gemm {m}x{k}x{n}", dt, 2 * m * k * n, nbytes, nbytes,
                lambda m=m, k=k, n=n, dt=dt: B.matmul(B.array((m, k), dt), B.array((k, n), dt),
                                                      B.array((m, n), dt)), rows=m)
        for n in mode.elem_sizes:
            add("elementwise", f"add {n}", dt, n, 3 * n * it, 3 * n * it,
                lambda n=n, dt=dt: B.add(B.array((n,), dt), B.array((n,), dt), B.array((n,), dt)))
            add("elementwise", f"mul {n}", dt, n, 3 * n * it, 3 * n * it,
                lambda n=n, dt=dt: B.mul(B.array((n,), dt), B.array((n,), dt), B.array((n,), dt)))
            add("activation", f"silu {n}", dt, ACT_FLOPS["silu"] * n, 2 * n * it, 2 * n * it,
                lambda n=n, dt=dt: B.silu(B.array((n,), dt), B.array((n,), dt)))
            add("activation", f"gelu {n}", dt, ACT_FLOPS["gelu_tanh"] * n, 2 * n * it, 2 * n * it,
                lambda n=n, dt=dt: B.gelu(B.array((n,), dt), B.array((n,), dt)))
            for d in (1024, 4096):
                rows = max(n // d, 1)
                add("softmax", f"softmax {rows}x{d}", dt, SOFTMAX_FLOPS * rows * d, 2 * rows * d * it,
                    2 * rows * d * it, lambda r=rows, d=d, dt=dt: B.softmax(B.array((r, d), dt), B.array((r, d), dt)))
                add("norm", f"rmsnorm {rows}x{d}", dt, NORM_FLOPS["rmsnorm"] * rows * d, (2 * rows + 1) * d * it,
                    (2 * rows + 1) * d * it,
                    lambda r=rows, d=d, dt=dt: B.rmsnorm(B.array((r, d), dt), B.array((d,), dt), B.array((r, d), dt)))
                add("norm", f"layernorm {rows}x{d}", dt, NORM_FLOPS["layernorm"] * rows * d,
                    (2 * rows + 1) * d * it, (2 * rows + 1) * d * it,
                    lambda r=rows, d=d, dt=dt: B.layernorm(B.array((r, d), dt), B.array((d,), dt),
                                                           B.array((r, d), dt)))
        if B.attention is not None:
            h, hd = 8, 64
            for s in mode.seq_lens:
                pairs = s * (s + 1) / 2  # causal, as the fused kernel computes it
                nbytes = 4 * h * s * hd * it  # q, k, v read, o written
                add("attention", f"sdpa h{h} s{s} d{hd}", dt, 2 * pairs * h * 2 * hd, nbytes, nbytes,
                    lambda s=s, dt=dt: B.attention(B.array((1, h, s, hd), dt), B.array((1, h, s, hd), dt),
                                                   B.array((1, h, s, hd), dt)))
                for b in (1, 8):  # decode: one new query per sequence over s cached keys and values
                    nbytes = b * h * (2 * s + 2) * hd * it
                    add("attention", f"sdpa decode b{b} h{h} kv{s} d{hd}", dt, 2 * b * s * h * 2 * hd, nbytes,
                        nbytes, lambda s=s, b=b, dt=dt: B.attention(B.array((b, h, 1, hd), dt),
                                                                    B.array((b, h, s, hd), dt),
                                                                    B.array((b, h, s, hd), dt)))
    return out


def time_kernel(backend: Backend, k: Kernel, mode: Mode, llc_bytes: float) -> tuple[float, int]:
    """Median seconds per call and the number of timed calls."""
    copies = 1 if k.working_set < llc_bytes / 2 else int(math.ceil(3 * llc_bytes / k.working_set)) + 1
    run = k.build(copies)
    t0 = time.perf_counter()
    run()  # warm-up, and a probe of how slow a call is
    backend.sync()
    slow = time.perf_counter() - t0 > mode.slow_call_s
    for _ in range(0 if slow else max(1, copies - 1)):  # first touch of every buffer set
        run()
    backend.sync()
    times: list[float] = []
    total = 0.0
    want = mode.slow_repeats if slow else mode.min_repeats
    while len(times) < mode.max_repeats and (len(times) < want or (not slow and total < mode.min_time_s)):
        t0 = time.perf_counter()
        run()
        backend.sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return float(np.median(times)), len(times)


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
