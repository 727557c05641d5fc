"""Calibration: measure NumPy/Torch kernels on this machine and fit the efficiencies the cost model uses.

    from perfmodel.calibration import run_suite, Calibrator, profile_from
    df = run_suite(backend="numpy", mode="quick")
    cal = Calibrator(levels).fit(df)
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..efficiency import Efficiency
from ..errors import PerfmodelError, unknown_name
from .fit import RATE_SLACK, Calibrator, footprint, level_of
from .profile import auto_profile, default_profile_path, host_fingerprint, read_profile, write_profile
from .suite import (FULL, GPU_FULL, GPU_QUICK, NOISY_SPREAD, QUICK, NumpyBackend, Progress, TorchBackend, _copies,
                    kernels, time_kernels)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Calibration", "Calibrator", "auto_profile", "calibrate", "default_profile_path", "level_of", "make_backend",
           "profile_from", "read_profile", "run_suite", "write_profile"]


def make_backend(name: str, device: str = "cpu"):
    if name == "numpy":
        if device != "cpu":
            raise PerfmodelError(f"--backend numpy measures the CPU only; --device {device} needs --backend torch "
                                 f"(the default there)")
        return NumpyBackend()
    if name == "torch":
        try:
            return TorchBackend(device)
        except ImportError:
            raise PerfmodelError("backend 'torch' needs PyTorch: pip install 'perfmodel[calibration]' "
                                 "(or torch==2.13.0 for the CPU build)") from None
    raise unknown_name("--backend", name, ["numpy", "torch"])


def pin_threads(backend, threads: int | None) -> int:
    """Pin BLAS/OpenMP (and Torch) threads; returns the count used."""
    n = threads or os.cpu_count() or 1
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    if getattr(backend, "torch", None) is not None:
        backend.torch.set_num_threads(n)
    backend.threads = n
    return n


def run_suite(backend="numpy", mode: str = "quick", threads: int | None = None, llc_bytes: float = 32 * 2**20,
              progress: bool = True, device: str = "cpu", kernels_filter=None) -> "pd.DataFrame":
    """Time every kernel of the suite; one row per kernel (class, shape, dtype, FLOPs, bytes, working set, time).
    `backend`: "numpy", "torch", or a backend object from make_backend."""
    import pandas as pd

    b = make_backend(backend, device) if isinstance(backend, str) else backend
    m = mode_of(b, mode)
    n = pin_threads(b, threads)
    ks = kernels(b, m)
    if b.memory_bytes:  # a GPU: no kernel may hold more than half its memory (the rotated buffer sets included)
        ks = [k for k in ks if k.working_set * _copies(k, llc_bytes) <= 0.5 * b.memory_bytes]
    if kernels_filter is not None:
        ks = [k for k in ks if kernels_filter(k)]
    bar = Progress(len(ks) * m.rounds, enabled=progress)
    timed = time_kernels(b, ks, m, llc_bytes, step=bar.step)
    return pd.DataFrame([{"backend": b.name, "cls": k.cls, "name": k.name, "dtype": k.dtype, "flops": k.flops,
                          "bytes": k.bytes, "working_set": k.working_set,
                          "footprint": k.working_set * _copies(k, llc_bytes), "rows": k.rows, "time_s": t,
                          "repeats": reps, "spread": spread, "rounds": rounds, "threads": n}
                         for k, (t, reps, spread, rounds) in zip(ks, timed)])


def mode_of(backend, mode: str):
    """The suite's sizes for this backend: CPU or GPU, quick or full."""
    if getattr(backend, "is_gpu", False):
        return GPU_QUICK if mode == "quick" else GPU_FULL
    return QUICK if mode == "quick" else FULL


def fit_allreduce(rows: "pd.DataFrame", n: int, link_bytes_per_s: float | None) -> dict[str, float]:
    """All-reduce timings over n GPUs fitted as NCCL's ring costs them (perfmodel.collectives.nccl_candidates): time =
    latency + 2 (n - 1) / n x bytes / bus bandwidth, by least squares on relative error. Returns the bus bandwidth,
    the fixed latency, and what the cost model takes: the fraction of the stated link bandwidth and the latency per
    ring step beyond NCCL's base latency."""
    from ..collectives import BASE_LAT_US

    t = rows.time_s.to_numpy(dtype=float)
    x = 2 * (n - 1) / n * rows.bytes.to_numpy(dtype=float)
    coef, *_ = np.linalg.lstsq(np.column_stack([1 / t, x / t]), np.ones(len(t)), rcond=None)
    latency = max(float(coef[0]), 0.0)
    bus = 1.0 / float(coef[1]) if coef[1] > 0 else float(np.max(x / t))
    out = {"bus_bytes_per_s": bus, "latency_s": latency,
           "hop_s": max(latency - BASE_LAT_US["ring"][2] * 1e-6, 0.0) / (2 * (n - 1))}
    if link_bytes_per_s:
        out["fraction"] = bus / link_bytes_per_s
    return out


def profile_from(cal: Calibrator, device_id: str, backend_name: str, versions: dict, threads: int,
                 mode: str, device_info: dict | None = None, link: dict[str, float] | None = None) -> Efficiency:
    host = {**host_fingerprint(), "backend": backend_name, "threads": threads, "mode": mode,
            **{f"lib_{k}": v for k, v in versions.items()}, **(device_info or {})}
    return Efficiency(
        source=f"perfmodel calibrate --backend {backend_name} ({mode})",
        level_bandwidth_bytes_per_s=cal.bandwidth_,
        rate_flops_per_s=cal.rate_,
        memory_fraction=cal.mem_eff_,
        overhead_by_class_s=cal.overhead_,
        rows_half=cal.rows_half_,
        rate_by_rows=cal.rate_by_rows_,
        device_id=device_id,
        host=host,
        **({"interconnect": min(link["fraction"], 1.0), "interconnect_latency_s": link["hop_s"]}
           if link and "fraction" in link else {}),
    )


@dataclass
class Calibration:
    """What `calibrate` measured and wrote: the profile (as read back), the measurements, where it was written, the
    fit, the device it describes, how quiet the run was, and the warnings to show."""

    efficiency: Efficiency
    measurements: "pd.DataFrame"
    path: Path
    calibrator: Calibrator
    device: Any
    noise: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    link: dict[str, float] | None = None  # the all-reduce fit (fit_allreduce), with more than one GPU

    def __iter__(self):
        """`eff, measurements, path = calibrate(...)`, as before this class existed."""
        return iter((self.efficiency, self.measurements, self.path))


def other_work(window_s: float = 0.5) -> float:
    """The share of all CPUs' time that was busy over `window_s` (read before the suite: other work), from
    /proc/stat; elsewhere the 1-minute load average per CPU, capped at 1; NaN where neither can be read."""
    def stat() -> tuple[float, float]:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        return v[3] + (v[4] if len(v) > 4 else 0.0), sum(v)  # idle + iowait, total

    try:
        idle0, total0 = stat()
        time.sleep(window_s)
        idle1, total1 = stat()
        return 1.0 - (idle1 - idle0) / max(total1 - total0, 1e-9)
    except (OSError, ValueError, IndexError):
        try:
            return min(os.getloadavg()[0] / (os.cpu_count() or 1), 1.0)
        except (OSError, AttributeError):
            return float("nan")


def _clock_mhz() -> float:
    """Mean current clock of the CPUs in MHz, as /proc/cpuinfo reports it; NaN where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.lower().startswith("cpu mhz")]
        return sum(mhz) / len(mhz) if mhz else float("nan")
    except (OSError, ValueError):
        return float("nan")


def device_peaks(dev) -> dict[str, float]:
    """The device's stated (or derived) peak FLOP/s per precision, the faster unit's: bounds on fitted rates."""
    out = {}
    for p in ("fp64", "fp32", "bf16", "fp16", "fp8"):
        vals = [v for v in (dev.peak_flops_per_s(u, p) for u in ("matrix", "vector")) if v]
        if vals:
            out[p] = max(vals)
    return out


def target_device(b, hardware: str | None):
    """(catalog-or-local Device, profile id) the backend's device is: the local CPU, or the catalog GPU named by
    `hardware` or matched by the GPU's reported name and memory."""
    from ..catalog import load_device, match_gpu

    if not b.is_gpu:
        from .._local import detect_local

        if hardware:
            raise PerfmodelError(f"--hardware {hardware}: a CPU calibration describes this machine ('local'); "
                                 f"--hardware names the catalog GPU a --device cuda calibration describes")
        return detect_local(), "local"
    if hardware:
        dev = load_device(hardware)
        return dev, dev.id
    info = b.device_info()
    name = str(info.get("gpu_name", ""))
    dev_id = match_gpu(name, float(info.get("gpu_memory_bytes") or 0) or None)
    if dev_id is None:
        raise PerfmodelError(f"the GPU reports itself as {name!r}, which no catalog device matches; name the catalog "
                             f"device it is with --hardware ID (perfmodel list hardware), or add it to "
                             f"hardware_specs/gpu/")
    return load_device(dev_id), dev_id


class CalibrationRefused(PerfmodelError):
    """A fit that broke physical bounds; the message says which and what to do."""


NOISY_SHARE = 0.05  # more noisy kernels than this after their repeats (1-2 % on quiet runs here): disturbed
BUSY_SHARE = 0.25  # other work's share of the CPUs' time just before the suite above which the run is flagged


def calibrate(backend: str | None = None, mode: str = "quick", threads: int | None = None, output=None,
              progress: bool = True, device: str = "cpu", hardware: str | None = None) -> Calibration:
    """Measure this machine's CPU (`device` "cpu") or a GPU ("cuda", "cuda:N"; Torch backend), fit, check the fit
    against physical bounds and write the profile (default: the profile estimates on that device pick up). Refuses
    (PerfmodelError, no profile written, the raw measurements kept beside it as .rejected.csv) when a fitted value
    breaks a bound; warns when the run was noisy but the fit holds."""
    device = parse_device(device)
    if backend is None or isinstance(backend, str):  # a GPU takes Torch, the CPU NumPy, unless named
        b = make_backend(backend or ("numpy" if device == "cpu" else "torch"), device)
    else:
        b = backend
    dev, dev_id = target_device(b, hardware)
    levels = [(lv.name, lv.capacity_bytes or float("inf")) for lv in dev.levels]
    llc = max((c for n, c in levels[:-1]), default=32 * 2**20)
    limits = {} if dev_id == "local" else {lv.name: lv.bandwidth_bytes_per_s for lv in dev.levels
                                          if lv.bandwidth_bytes_per_s}
    load_before, mhz_before, t_start = other_work(), _clock_mhz(), time.perf_counter()
    df = run_suite(b, mode, threads, llc_bytes=llc, progress=progress)
    elapsed = time.perf_counter() - t_start
    noise = {"other_work_before": load_before, "clock_mhz_before": mhz_before,
             "clock_mhz_after": _clock_mhz(), "noisy_share": float((df.spread > NOISY_SPREAD).mean()),
             "median_spread": float(df.spread.median()), "suite_s": elapsed}
    cal = Calibrator(levels, peaks=device_peaks(dev), level_limits=limits).fit(df)
    path = Path(output or default_profile_path(dev_id))
    predicted = cal.predict(df)
    broken = cal.violations()
    link = None
    ar = (df.cls == "allreduce").to_numpy()
    if ar.sum() >= 2:
        fig = dev.figure("interconnect.bandwidth")
        n = int(b.gpu_count)
        link = fit_allreduce(df[ar], n, fig.value if fig else None)
        predicted[ar] = link["latency_s"] + 2 * (n - 1) / n * df.bytes[ar].to_numpy() / link["bus_bytes_per_s"]
        if link.get("fraction", 0.0) > RATE_SLACK:
            broken.append(f"the all-reduce reached {link['bus_bytes_per_s'] / 1e9:.1f} GB/s of bus bandwidth, "
                          f"{link['fraction']:.0%} of the stated link")
    buf = io.StringIO()
    df.assign(predicted_s=predicted).to_csv(buf, index=False)
    run = (f"this run: other work kept {load_before:.0%} of the CPU time busy just before it, "
           f"{noise['noisy_share']:.0%} of kernels noisy after repeats (their two fastest rounds over "
           f"{NOISY_SPREAD:.0%} apart)")
    if broken:
        from .._io import atomic_write_text

        kept = path.with_name(path.stem + ".rejected.csv")
        atomic_write_text(kept, buf.getvalue())
        raise CalibrationRefused(
            f"calibration refused, no profile written: {len(broken)} fitted value(s) break physical bounds, which a "
            f"disturbed run produces: " + "; ".join(broken) + f". {run[0].upper() + run[1:]}. What to do: close other "
            f"work (top shows what runs) and calibrate again; --full times more rounds; --threads N with N below "
            f"the cores other work leaves free. The raw measurements are in {kept}.")
    warnings = []
    if load_before > BUSY_SHARE or noise["noisy_share"] > NOISY_SHARE:
        warnings.append(f"the profile holds within physical bounds, but {run}; figures may be low. Calibrate again "
                        f"on a quiet machine to be sure.")
    extra = {f"noise_{k}": round(v, 4) for k, v in noise.items() if v == v}
    eff = profile_from(cal, dev_id, b.name, b.versions(), int(df.threads.iloc[0]), mode,
                       device_info={**b.device_info(), **extra}, link=link)
    written = write_profile(path, eff, buf.getvalue())
    return Calibration(read_profile(written, device_id=dev_id), df, written, cal, dev, noise, warnings, link)


def parse_device(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N' (N a GPU index), else a clear error."""
    d = str(device).strip().lower()
    if d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise PerfmodelError(f"--device {device!r}: give cpu (this machine's CPU, the default), cuda (the first GPU) "
                         f"or cuda:N (GPU number N, from 0)")


def summary_lines(c: Calibration) -> list[str]:
    """The fitted profile in units a reader knows: GB/s per memory level, and per kernel class its attained
    GFLOP/s (% of the device's peak), the bandwidth it streams at (% of the level that served it) and its fixed time
    per call; a side that never bound in the measurements is said to, not given a number."""
    cal, df = c.calibrator, c.measurements
    stated = {lv.name: lv.bandwidth_bytes_per_s for lv in c.device.levels} if c.device.id != "local" else {}
    out = []
    for name, bw in cal.bandwidth_.items():
        extra = f", {bw / stated[name]:.0%} of the stated {stated[name] / 1e9:,.0f}" if stated.get(name) else ""
        out.append(f"  {name:<8} {bw / 1e9:9,.1f} GB/s{extra}")
    peaks = cal.peaks
    for key in sorted(cal.rate_):
        cls, dt = key.rsplit(".", 1)
        rows = df[(df.cls == cls) & (df.dtype == dt)]
        compute, memory = cal.binds_.get(key, (True, True))
        if key in cal.rate_by_rows_:
            rate, how = max(r for _, r in cal.rate_by_rows_[key]), "up to "
        else:
            rate, how = cal.rate_[key], ""
        peak = peaks.get(dt)
        if compute and rate:
            comp = f"{how}{rate / 1e9:,.1f} GFLOP/s" + (f" ({rate / peak:.0%} of peak)" if peak else "")
        else:
            comp = "compute never bound"
        if memory or cls.startswith("stream."):
            level = level_of(np.array([footprint(rows).max()]), cal.levels)[0]  # the level of its largest calls
            mem = (f"{cal.mem_eff_[key] * cal.bandwidth_[level] / 1e9:,.1f} GB/s "
                   f"({cal.mem_eff_[key]:.0%} of {level})")
        else:
            mem = "memory never bound"
        out.append(f"  {key:<22} {comp:<34} {mem:<28} {cal.overhead_[key] * 1e6:7.1f} us per call")
    if c.link:
        frac = f" ({c.link['fraction']:.0%} of the stated link)" if "fraction" in c.link else ""
        out.append(f"  all-reduce            {c.link['bus_bytes_per_s'] / 1e9:,.1f} GB/s bus bandwidth{frac}, "
                   f"{c.link['latency_s'] * 1e6:.1f} us fixed")
    return out
