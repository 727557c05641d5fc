"""Detection of the local CPU (Linux /proc and /sys; portable fallbacks elsewhere)."""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from pathlib import Path

from .device import Device

FMA_PIPES_ASSUMED = 2


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def _physical_cores(info: dict[str, str]) -> int:
    try:
        pairs = set()
        block: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if not line.strip():
                if "core id" in block:
                    pairs.add((block.get("physical id", "0"), block["core id"]))
                block = {}
            elif ":" in line:
                k, v = line.split(":", 1)
                block[k.strip()] = v.strip()
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def _clock_ghz(info: dict[str, str]) -> float:
    try:
        khz = float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(info["cpu MHz"]) / 1e3
    except (KeyError, ValueError):
        return 2.0  # unknown: a nominal clock so that peaks exist; the device notes say so


def _caches() -> list[dict]:
    levels = []
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(root.glob("index*")):
        try:
            kind = (idx / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = int((idx / "level").read_text())
            size = (idx / "size").read_text().strip()
            kib = float(size.rstrip("K")) if size.endswith("K") else float(size.rstrip("M")) * 1024
            shared = (idx / "shared_cpu_list").read_text().strip()
            levels.append({"level": level, "kib": kib, "shared": shared})
        except (OSError, ValueError):
            continue
    return levels


def _shared_count(spec: str) -> int:
    n = 0
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            n += int(b) - int(a) + 1
        elif part:
            n += 1
    return n


def _mem_total_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9


@lru_cache(maxsize=1)
def measure_read_bandwidth(size_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Median bytes/s of reading a 256 MiB NumPy array (random data, beyond the caches) on every core at once, each
    summing its share: how fast weights stream from main memory, which is what decode does. (A one-thread copy
    reaches less: 27 GB/s on this 2-core machine where two threads read 33.)"""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    n = max(os.cpu_count() or 1, 1)
    src = np.random.default_rng(0).random(size_bytes // 8)
    parts = np.array_split(src, n)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(np.sum, parts))  # warm-up: first touch
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            times.append(time.perf_counter() - t0)
    return src.nbytes / float(np.median(times))


def detect_local() -> Device:
    """Describe this machine's CPU from what the OS reports: cores, clock, ISA flags, caches, memory size.

    FLOPs per cycle follow from the SIMD width with two FMA pipes per core (true of x86 cores since Haswell and of
    recent Arm cores; some AVX-512 parts have one 512-bit pipe, so treat the vector peak as an upper bound). Main-memory
    bandwidth cannot be read from the OS: it is measured here with a NumPy copy (median of 5), see
    `measure_read_bandwidth` (an attained rate: no efficiency fraction applies to it).
    """
    return detect()


@lru_cache(maxsize=1)
def detect() -> Device:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cores = _physical_cores(info)
    threads = os.cpu_count() or cores
    ghz = _clock_ghz(info)
    if "avx512f" in flags:
        width, simd = 512, "AVX-512"
    elif "avx2" in flags:
        width, simd = 256, "AVX2"
    elif "asimd" in flags or platform.machine() in ("arm64", "aarch64"):
        width, simd = 128, "NEON"
    else:
        width, simd = 128, "SSE"
    fp32 = FMA_PIPES_ASSUMED * (width // 32) * 2  # pipes x lanes x 2 FLOPs per FMA
    vector = {"fp64": fp32 / 2, "fp32": fp32}
    if "avx512_bf16" in flags:
        vector["bf16"] = 2 * fp32  # VDPBF16PS: two bf16 products per fp32 lane
    matrix = {}
    if "amx_bf16" in flags:
        matrix["bf16"] = 1024  # Intel AMX: 1024 BF16 / 2048 INT8 ops per cycle per core
    if "amx_int8" in flags:
        matrix["int8"] = 2048
    memory = []
    for c in _caches():
        per_unit = _shared_count(c["shared"]) <= max(1, threads // cores)
        name = f"L{c['level']}" if c["level"] > 1 else "L1d"
        key = "capacity_kib_per_unit" if per_unit else "capacity_kib"
        memory.append({"name": name, key: c["kib"]})
    bw = measure_read_bandwidth()
    memory.append({"name": "DRAM", "capacity_gb": _mem_total_bytes() / 1e9, "bandwidth_gb_per_s": bw / 1e9,
                   "measured": True, "note": "bandwidth measured at load: every core reading, median of 5"})
    model = info.get("model name") or platform.processor() or platform.machine()
    return Device(
        id="local",
        name=f"This machine: {model}",
        kind="cpu",
        vendor=(info.get("vendor_id") or platform.machine()).lower(),
        processor={"units": cores, "unit_name": "core", "threads": threads, "clock_ghz": ghz, "simd": simd,
                   "simd_width_bits": width, "fma_units_per_core": FMA_PIPES_ASSUMED},
        compute={"matrix": {"flops_per_cycle_per_unit": matrix}, "vector": {"flops_per_cycle_per_unit": vector}},
        memory=memory,
        sources=[{"title": "detected from /proc/cpuinfo, /sys/devices/system/cpu and /proc/meminfo",
                  "note": f"{FMA_PIPES_ASSUMED} FMA pipes per core assumed; DRAM bandwidth measured"}],
    )
