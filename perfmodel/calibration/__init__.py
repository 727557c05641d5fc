"""Calibration: measure NumPy/Torch kernels on this machine and fit the efficiencies the cost model uses.

    from perfmodel.calibration import run_suite, Calibrator, profile_from
    df = run_suite(backend="numpy", mode="quick")
    cal = Calibrator(levels).fit(df)
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from ..efficiency import Efficiency
from .fit import Calibrator, level_of
from .profile import auto_profile, default_profile_path, host_fingerprint, read_profile, write_profile
from .suite import FULL, QUICK, NumpyBackend, Progress, TorchBackend, _copies, kernels, time_kernels

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Calibrator", "auto_profile", "calibrate", "default_profile_path", "level_of", "make_backend",
           "profile_from", "read_profile", "run_suite", "write_profile"]


def make_backend(name: str, device: str = "cpu"):
    if name == "numpy":
        return NumpyBackend()
    if name == "torch":
        try:
            return TorchBackend(device)
        except ImportError:
            from ..errors import PerfmodelError

            raise PerfmodelError("backend 'torch' needs PyTorch: pip install 'perfmodel[calibration]' "
                                 "(or torch==2.13.0 for the CPU build)") from None
    from ..errors import unknown_name

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
    m = QUICK if mode == "quick" else FULL
    n = pin_threads(b, threads)
    ks = kernels(b, m)
    if kernels_filter is not None:
        ks = [k for k in ks if kernels_filter(k)]
    bar = Progress(len(ks) * m.rounds, enabled=progress)
    timed = time_kernels(b, ks, m, llc_bytes, step=bar.step)
    return pd.DataFrame([{"backend": b.name, "cls": k.cls, "name": k.name, "dtype": k.dtype, "flops": k.flops,
                          "bytes": k.bytes, "working_set": k.working_set,
                          "footprint": k.working_set * _copies(k, llc_bytes), "rows": k.rows, "time_s": t,
                          "repeats": reps, "threads": n} for k, (t, reps) in zip(ks, timed)])


def profile_from(cal: Calibrator, device_id: str, backend_name: str, versions: dict, threads: int,
                 mode: str) -> Efficiency:
    host = {**host_fingerprint(), "backend": backend_name, "threads": threads, "mode": mode,
            **{f"lib_{k}": v for k, v in versions.items()}}
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
    )


def calibrate(backend: str = "numpy", mode: str = "quick", threads: int | None = None, output=None,
              progress: bool = True) -> tuple[Efficiency, "pd.DataFrame", "os.PathLike"]:
    """Measure this machine, fit, and write the profile (default: the `local` profile estimates pick up)."""
    from .._local import detect_local

    dev = detect_local()
    levels = [(lv.name, lv.capacity_bytes or float("inf")) for lv in dev.levels]
    llc = max((c for n, c in levels[:-1]), default=32 * 2**20)
    b = make_backend(backend)
    df = run_suite(b, mode, threads, llc_bytes=llc, progress=progress)
    cal = Calibrator(levels).fit(df)
    eff = profile_from(cal, "local", backend, b.versions(), int(df.threads.iloc[0]), mode)
    buf = io.StringIO()
    df.assign(predicted_s=cal.predict(df)).to_csv(buf, index=False)
    path = write_profile(output or default_profile_path("local"), eff, buf.getvalue())
    return read_profile(path, device_id="local"), df, path
