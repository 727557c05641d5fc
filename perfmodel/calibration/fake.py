"""A simulated machine for the calibration suite: every kernel costs a roofline of known parameters on a virtual clock,
with contention injected on demand. Tests use it to check that the fit recovers what the machine was built with, that
a noisy run is refused or flagged, and that the GPU path (`--device cuda`) works end to end without a GPU.

    from perfmodel.calibration.fake import SimulatedBackend
    b = SimulatedBackend(device="cuda:0", gpu_name="NVIDIA H100 80GB HBM3", gpu_count=2)
    df = run_suite(b, "quick")
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..graph import ACT_FLOPS, NORM_FLOPS, SOFTMAX_FLOPS
from .suite import _ITEMSIZE, Backend


@dataclass(frozen=True)
class _Buf:
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * _ITEMSIZE[self.dtype]


class SimulatedBackend(Backend):
    """Kernels cost `overhead_s + max(flops / rate[dtype], bytes / bandwidth(level))`, the level being the first
    whose capacity holds the bytes the kernel cycles through (its bytes times the buffer sets the suite rotates).
    `noise`: log-normal jitter per call; `hog`: contention, each call slowed by a factor drawn from [1, 1 + hog]
    while a burst is on, bursts switching on and off at random (`hog_switch`: the chance per call)."""

    name = "simulated"

    def __init__(self, device: str = "cpu", dtypes: tuple[str, ...] = ("fp32", "bf16"),
                 levels: tuple[tuple[str, float, float], ...] = (("L2", 2 * 2**20, 200e9), ("DRAM", math.inf, 40e9)),
                 rate_flops_per_s: dict[str, float] | None = None, overhead_s: float = 3e-6, noise: float = 0.0,
                 hog: float = 0.0, hog_switch: float = 0.02, seed: int = 0, gpu_name: str = "",
                 gpu_count: int = 0, memory_bytes: float | None = None, link_bytes_per_s: float = 300e9,
                 link_latency_s: float = 10e-6):
        self.device, self.dtypes, self.levels = device, tuple(dtypes), tuple(levels)
        self.rate = rate_flops_per_s or {"fp64": 50e9, "fp32": 100e9, "bf16": 200e9, "fp16": 200e9, "fp8": 400e9}
        self.overhead_s, self.noise, self.hog, self.hog_switch = overhead_s, noise, hog, hog_switch
        self.rng = np.random.default_rng(seed)
        self.gpu_name, self.gpu_count, self.memory_bytes = gpu_name, gpu_count, memory_bytes
        self.link_bytes_per_s, self.link_latency_s = link_bytes_per_s, link_latency_s
        self.now = 0.0
        self._burst = False
        self._made: Counter = Counter()

    # the clock and the device ------------------------------------------------------------------------------------
    def clock(self) -> float:
        return self.now

    def versions(self) -> dict[str, str]:
        return {"simulated": "1"}

    def device_info(self) -> dict[str, str | int | float]:
        if not self.is_gpu:
            return {}
        return {"gpu_name": self.gpu_name, "gpu_memory_bytes": float(self.memory_bytes or 0.0),
                "gpu_driver": "simulated", "gpus_visible": self.gpu_count}

    def array(self, shape, dtype):
        return _Buf(tuple(int(x) for x in shape), dtype)

    def bandwidth(self, footprint: float) -> float:
        return next(bw for _, cap, bw in self.levels if footprint <= cap or cap == self.levels[-1][1])

    def _slowdown(self) -> float:
        f = math.exp(self.noise * float(self.rng.standard_normal())) if self.noise else 1.0
        if self.hog:
            if self.rng.random() < self.hog_switch:
                self._burst = not self._burst
            if self._burst:
                f *= 1.0 + self.hog * float(self.rng.random())
        return f

    def _kernel(self, key: tuple, flops: float, nbytes: float, dtype: str):
        """A runner that advances the clock by the kernel's cost; the buffer sets made with the same key are the
        copies the suite rotates among (what decides the level serving it)."""
        self._made[key] += 1

        def run():
            footprint = nbytes * self._made[key]
            t = self.overhead_s + max(flops / self.rate[dtype], nbytes / self.bandwidth(footprint))
            self.now += t * self._slowdown()
        return run

    # kernels, with the suite's FLOP and byte conventions ------------------------------------------------------------
    def copy(self, a, b):
        return self._kernel(("copy", a.shape), 0.0, a.nbytes + b.nbytes, a.dtype)

    def read(self, a, b):
        return self._kernel(("read", a.shape), a.size, a.nbytes, a.dtype)

    def add_stream(self, a, b, out):
        return self._kernel(("add_stream", a.shape), a.size, 3 * a.nbytes, a.dtype)

    def add(self, a, b, out):
        return self._kernel(("add", a.shape, a.dtype), a.size, 3 * a.nbytes, a.dtype)

    def mul(self, a, b, out):
        return self._kernel(("mul", a.shape, a.dtype), a.size, 3 * a.nbytes, a.dtype)

    def matmul(self, a, b, out):
        (m, k), n = a.shape, b.shape[1]
        it = _ITEMSIZE[a.dtype]
        return self._kernel(("matmul", m, k, n, a.dtype), 2.0 * m * k * n, (m * k + k * n + m * n) * it, a.dtype)

    def silu(self, x, out):
        return self._kernel(("silu", x.shape, x.dtype), ACT_FLOPS["silu"] * x.size, 2 * x.nbytes, x.dtype)

    def gelu(self, x, out):
        return self._kernel(("gelu", x.shape, x.dtype), ACT_FLOPS["gelu_tanh"] * x.size, 2 * x.nbytes, x.dtype)

    def softmax(self, x, out):
        return self._kernel(("softmax", x.shape, x.dtype), SOFTMAX_FLOPS * x.size, 2 * x.nbytes, x.dtype)

    def rmsnorm(self, x, g, out):
        return self._kernel(("rmsnorm", x.shape, x.dtype), NORM_FLOPS["rmsnorm"] * x.size, 2 * x.nbytes + g.nbytes,
                            x.dtype)

    def layernorm(self, x, g, out):
        return self._kernel(("layernorm", x.shape, x.dtype), NORM_FLOPS["layernorm"] * x.size,
                            2 * x.nbytes + g.nbytes, x.dtype)

    def attention(self, q, k, v):
        b, h, s, d = q.shape
        keys = k.shape[2]
        pairs = s * (s + 1) / 2 if s > 1 else keys
        flops = 2.0 * pairs * h * 2 * d * b
        nbytes = q.nbytes * 2 + k.nbytes + v.nbytes  # q read, o written, K and V read once
        return self._kernel(("attention", q.shape, k.shape, q.dtype), flops, nbytes, q.dtype)

    def allreduce(self, nbytes: int):
        n = max(self.gpu_count, 1)

        def run():
            t = self.link_latency_s + 2 * (n - 1) / n * nbytes / self.link_bytes_per_s
            self.now += t * self._slowdown()
        return run
