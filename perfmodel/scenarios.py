"""Sweeps: many scenarios at once. Rows sharing a model, device and configuration are evaluated together as NumPy
arrays, so 10,000 rows cost a few vectorised evaluations, not 10,000 Python loops."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import atomic_write_text
from .bands import METRIC_CATEGORY, intervals
from .catalog import load_device, load_model
from .engines import device_class, efficiency_for
from .errors import PerfmodelError
from .evaluate import Workload, capacity_messages, default_gen, evaluate, row_errors, row_warnings
from .memory import Memory
from .provenance import widening_log
from .workload import LIMITS

if TYPE_CHECKING:
    import pandas as pd

# The columns are the workload's fields by their outside names (Workload.options), with its defaults.
_OPTIONS = Workload.options()
INPUT_COLUMNS = ("model", "hardware", *(name for _, name, _, _ in _OPTIONS), "engine")
DEFAULTS = {**{name: (np.nan if field == "gen_len" else "" if default is None else default)
               for field, name, default, _ in _OPTIONS}, "engine": ""}
METRICS = ("ttft_s", "tpot_s", "decode_tokens_per_s", "prefill_tokens_per_s", "throughput_tokens_per_s",
           "e2e_latency_s", "mfu", "mbu")
MEMORY = ("weights_bytes", "kv_cache_bytes", "activation_bytes", "total_bytes", "capacity_bytes", "fits")
_ROW = ("batch", "prompt", "gen")  # evaluated as arrays within a group
_GROUP = ("model", "hardware", *(name for _, name, _, _ in _OPTIONS if name not in _ROW), "engine")
PROGRESS_ROWS = 50_000  # sweeps at least this long report progress on stderr by default
CHUNK_ROWS = 32_768  # rows of one group evaluated at once: bounds the per-op arrays held (about 1 kB per row)


def sweep(scenarios: "pd.DataFrame", *, ignore_capacity: bool = False, efficiency=None, engine: str | None = None,
          progress: bool | None = None) -> "pd.DataFrame":
    """Estimate every row of `scenarios` (columns as in INPUT_COLUMNS; model and hardware required).

    Returns the input with metric columns, their 80 % bands (`<metric>_low`, `<metric>_high`, see perfmodel.bands),
    memory columns, the bound of each phase, a `warning` and an `error` column; a bad row gets its message there
    (row numbers count data rows from 1) and the other rows are still computed. `engine` (or an `engine` column,
    which takes precedence row by row): each row's software-stack profile applied to its own device, as
    `estimate --engine` does. `progress`: a progress line on stderr (default: for sweeps of PROGRESS_ROWS rows or
    more).
    """
    import pandas as pd

    df = scenarios.copy().reset_index(drop=True)
    check_columns(df.columns)
    if engine and efficiency is not None:
        raise PerfmodelError("give an efficiency profile or an engine for a sweep, not both")
    for col, default in {**DEFAULTS, "engine": engine or ""}.items():
        if col not in df.columns:
            df[col] = default
        df[col] = df[col].where(df[col].notna() & (df[col].astype(str).str.strip() != ""), default)
    for col in ("gemm", "engine"):
        if col in scenarios.columns:
            df[col] = df[col].where(df[col].astype(str).str.strip() != "nan", "")
    if engine:
        df["engine"] = df["engine"].where(df["engine"].astype(str).str.strip() != "", engine)
    n = len(df)
    band_cols = tuple(f"{m}_{end}" for m in METRIC_CATEGORY for end in ("low", "high"))
    out = {c: np.full(n, np.nan) for c in METRICS + MEMORY + band_cols}
    warnings = np.full(n, "", dtype=object)
    bounds = {"prefill_bound": np.full(n, "", dtype=object), "decode_bound": np.full(n, "", dtype=object)}
    errors = np.full(n, "", dtype=object)

    nums = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) for c in ("batch", "prompt", "gen")}
    for c, lo, hi in (("batch", 1, LIMITS["batch"]), ("prompt", 1, LIMITS["prompt_len"]), ("gen", 0, LIMITS["gen_len"])):
        v = nums[c]
        with np.errstate(invalid="ignore"):
            good = np.isfinite(v) & (v == np.round(v)) & (v >= lo) & (v <= hi)
        bad = ~good & ~(np.isnan(v) & (c == "gen") & df[c].isna().to_numpy())
        for i in np.flatnonzero(bad & (errors == "")):
            errors[i] = f"{c} must be an integer from {lo} to {hi:,}; got {df.at[i, c]!r}"
    for c in ("model", "hardware"):
        blank = scenarios[c].isna().to_numpy() | (scenarios[c].astype(str).str.strip() == "").to_numpy()
        for i in np.flatnonzero(blank & (errors == "")):
            errors[i] = f"{c} is empty: every row needs a catalog id, alias or file path"

    gen_filled = np.full(n, None, dtype=object)
    keys = df[list(_GROUP)].astype(str)
    models, devices = {}, {}
    groups = keys.groupby(list(_GROUP), sort=False).indices
    bar = _Progress(n, len(groups)) if (progress if progress is not None else n >= PROGRESS_ROWS) else None
    for key, idx in groups.items():
        if bar:
            bar.step(len(idx))
        idx = idx[errors[idx] == ""]
        if not len(idx):
            continue
        cfg = dict(zip(_GROUP, key))
        try:
            if cfg["model"] not in models:
                models[cfg["model"]] = load_model(cfg["model"])
            if cfg["hardware"] not in devices:
                devices[cfg["hardware"]] = load_device(cfg["hardware"])
            m, d = models[cfg["model"]], devices[cfg["hardware"]]
            eng = cfg["engine"] or None
            eff, band_engine = efficiency_for(d, eng, efficiency)
            wl = Workload(**{field: cfg[name] or None if field == "gemm" else cfg[name]
                             for field, name, _, _ in _OPTIONS if name not in _ROW}, gen_len=0)
        except (PerfmodelError, ValueError) as e:
            errors[idx] = _message(e)
            continue
        gen = np.where(np.isnan(nums["gen"][idx]), default_gen(m), nums["gen"][idx])
        batch, prompt = nums["batch"][idx], nums["prompt"][idx]
        errs = row_errors(m, prompt, gen)
        ok = errs == ""
        errors[idx[~ok]] = errs[~ok]
        warnings[idx] = row_warnings(m, prompt, gen)
        idx, batch, prompt, gen = idx[ok], batch[ok], prompt[ok], gen[ok]
        gen_filled[idx] = gen
        for lo in range(0, len(idx), CHUNK_ROWS):  # chunks bound the memory a large group holds at once
            part = slice(lo, lo + CHUNK_ROWS)
            _evaluate_rows(m, d, wl, eff, band_engine, ignore_capacity, idx[part], batch[part], prompt[part],
                           gen[part], out, bounds, errors)
    if bar:
        bar.done()
    df["gen"] = np.where(gen_filled != None, gen_filled, df["gen"].astype(object))  # noqa: E711 (defaults filled)
    res = df.assign(**out, **bounds, warning=warnings, error=errors)
    res["fits"] = res["fits"].map({1.0: True, 0.0: False})
    return res


def _evaluate_rows(m, d, wl, eff, band_engine: str, ignore_capacity: bool, idx: np.ndarray, batch: np.ndarray,
                   prompt: np.ndarray, gen: np.ndarray, out: dict, bounds: dict, errors: np.ndarray) -> None:
    """Evaluate rows of one group and write their metrics, bands, memory, bounds or errors into the output arrays."""
    try:
        ev = evaluate(m, d, wl, eff, batch, prompt, gen)
    except PerfmodelError as e:
        errors[idx] = _message(e)
        return
    mem = ev.memory
    fits = mem.fits if mem.fits is not None else np.ones(len(idx), dtype=bool)
    keep = np.ones(len(idx), dtype=bool) if ignore_capacity else np.asarray(fits, dtype=bool)
    refused = np.flatnonzero(~keep)
    if len(refused):  # one vectorised pass for the messages of every refused row of the group
        sub = Memory(*(np.broadcast_to(np.asarray(x, dtype=float), len(idx))[refused] for x in (
            mem.weights_bytes, mem.kv_cache_bytes, mem.activation_bytes)), mem.capacity_bytes)
        errors[idx[refused]] = capacity_messages(m, d, wl, sub, batch[refused], prompt[refused], gen[refused])
    for c, v in ev.metrics.items():
        out[c][idx[keep]] = np.asarray(v)[keep]
    for metric, iv in intervals(ev, device_class(d), band_engine, widening_log(ev)).items():
        out[f"{metric}_low"][idx[keep]] = np.broadcast_to(iv.low, len(idx))[keep]
        out[f"{metric}_high"][idx[keep]] = np.broadcast_to(iv.high, len(idx))[keep]
    for c in MEMORY:
        v = {"total_bytes": mem.total_bytes, "capacity_bytes": mem.capacity_bytes, "fits": fits}.get(
            c, getattr(mem, c, None))
        out[c][idx] = np.broadcast_to(np.asarray(v if v is not None else np.nan, dtype=float), len(idx))
    bounds["prefill_bound"][idx[keep]] = ev.prefill.bound()[keep]
    bounds["decode_bound"][idx[keep]] = np.where(ev.decode.steps > 0, ev.decode.bound(), "-")[keep]


class _Progress:
    """A one-line progress report on stderr, redrawn at most every half second."""

    def __init__(self, rows: int, groups: int):
        import time

        self.rows, self.groups, self.done_rows, self.done_groups = rows, groups, 0, 0
        self.t0 = self.last = time.perf_counter()

    def step(self, rows: int) -> None:
        import time

        self.done_rows += rows
        self.done_groups += 1
        now = time.perf_counter()
        if now - self.last >= 0.5:
            self.last = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        import sys

        frac = self.done_rows / max(self.rows, 1)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\rsweep [{bar:<30}] {self.done_rows:,}/{self.rows:,} rows, {self.done_groups}/"
                         f"{self.groups} configurations, {now - self.t0:.1f} s{end}")
        sys.stderr.flush()

    def done(self) -> None:
        import time

        self._draw(time.perf_counter(), end="\n")


def grid(**axes) -> "pd.DataFrame":
    """Every combination of the given axes as sweep rows: grid(model=[...], hardware=[...], batch=[1, 8, 64], ...).
    Scalars are held fixed. Columns as in INPUT_COLUMNS."""
    import itertools

    import pandas as pd

    unknown = [k for k in axes if k not in INPUT_COLUMNS]
    if unknown:
        raise PerfmodelError(f"unknown grid axis {', '.join(unknown)}; allowed: {', '.join(INPUT_COLUMNS)}")
    lists = {k: list(v) if isinstance(v, (list, tuple, range, np.ndarray)) else [v] for k, v in axes.items()}
    return pd.DataFrame(list(itertools.product(*lists.values())), columns=list(lists))


def _message(e: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return "; ".join(str(x.get("ctx", {}).get("error", x["msg"])) for x in e.errors())
    return str(e)


def write_csv_atomic(df: "pd.DataFrame", path: str | Path) -> None:
    """Write the CSV atomically: an existing file is never left half-written."""
    atomic_write_text(path, df.to_csv(index=False))


NUMERIC_INPUTS = ("batch", "prompt", "gen", "tp", "pp")
# what a sweep adds to its input (a result fed back in as input is swept again from its input columns)
OUTPUT_COLUMNS = frozenset((*METRICS, *MEMORY, *(f"{m}_{e}" for m in ("ttft_s", "tpot_s", "decode_tokens_per_s",
                            "prefill_tokens_per_s", "throughput_tokens_per_s", "e2e_latency_s") for e in ("low", "high")),
                            "prefill_bound", "decode_bound", "warning", "error"))


def typed(res: "pd.DataFrame") -> "pd.DataFrame":
    """Sweep results with one type per column, whatever the rows held (a Parquet file, and Dask's partitions, need
    one schema): sizes as numbers (a bad cell becomes empty; its row's `error` says why), other inputs and the text
    columns as text, `fits` as a nullable boolean."""
    import pandas as pd

    res = res.copy()
    for c in res.columns:
        if c in NUMERIC_INPUTS:
            res[c] = pd.to_numeric(res[c], errors="coerce").astype("float64")
        elif c in INPUT_COLUMNS or c in ("prefill_bound", "decode_bound", "warning", "error"):
            res[c] = res[c].where(res[c].notna(), "").astype(str)
    res["fits"] = res["fits"].astype("boolean")
    return res


def check_columns(columns: Any) -> None:
    """A sweep's columns: the INPUT_COLUMNS only, `model` and `hardware` among them."""
    unknown = [c for c in columns if c not in INPUT_COLUMNS]
    if unknown:
        raise PerfmodelError(f"unknown sweep column(s) {', '.join(unknown)}; allowed: {', '.join(INPUT_COLUMNS)}")
    for col in ("model", "hardware"):
        if col not in columns:
            raise PerfmodelError(f"a sweep needs a `{col}` column; columns allowed: {', '.join(INPUT_COLUMNS)}")


def is_parquet(path: str | Path) -> bool:
    """Sweep files are Parquet by the suffix .parquet or .pq, CSV otherwise."""
    return Path(path).suffix.lower() in (".parquet", ".pq")


def read_table(path: str | Path) -> "pd.DataFrame":
    """Sweep rows from a CSV or Parquet file (by suffix), every cell as text, empty cells as missing."""
    import pandas as pd

    path = Path(path)
    parquet = is_parquet(path)
    try:
        if parquet:
            df = pd.read_parquet(path).astype(str).replace({"None": "", "nan": "", "<NA>": ""})
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PerfmodelError(f"input file {str(path)!r} does not exist") from None
    except ImportError:
        raise PerfmodelError("reading Parquet needs pyarrow: pip install 'perfmodel[dask]'") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as e:
        raise PerfmodelError(f"{path}: not a readable {'Parquet file' if parquet else 'CSV'}: {e}") from None
    return df.replace("", float("nan"))


def write_table(df: "pd.DataFrame", path: str | Path) -> None:
    """Write sweep results as CSV or Parquet (by suffix), atomically."""
    import io

    path = Path(path)
    if is_parquet(path):
        from ._io import atomic_write_bytes

        buf = io.BytesIO()
        try:
            typed(df).to_parquet(buf, index=False)
        except ImportError:
            raise PerfmodelError("writing Parquet needs pyarrow: pip install 'perfmodel[dask]'") from None
        atomic_write_bytes(path, buf.getvalue())
    else:
        write_csv_atomic(df, path)
