"""Sweeps: many scenarios at once. Rows sharing a model and configuration are evaluated together, whatever device
each runs on: the model is lowered once (perfmodel.table) and every op of every row is costed in one NumPy pass per
phase, so 10,000 rows over 1,000 devices cost a few vectorised evaluations, not 1,000 Python loops."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import atomic_write_text
from .bands import METRIC_CATEGORY, intervals
from .catalog import load_device, load_model
from .engines import checkpoint_formats, device_class, efficiency_for, open_act
from .errors import PerfmodelError
from .cost import Machine
from .evaluate import (BOUNDS, Workload, capacity_messages, check, default_gen, evaluate_rows, machine_errors,
                       row_errors, row_warnings, workload_machine)
from .memory import Memory
from .workload import LIMITS

if TYPE_CHECKING:
    import pandas as pd

# The columns are the workload's fields by their outside names (Workload.options), with its defaults.
_OPTIONS = Workload.options()
INPUT_COLUMNS = ("model", "hardware", *(name for _, name, _, _ in _OPTIONS), "engine")
DEFAULTS = {**{name: (np.nan if field == "gen_len" else "" if default is None or field == "act" else default)
               for field, name, default, _ in _OPTIONS}, "engine": ""}  # act left blank: the engine's, else bf16
METRICS = ("ttft_s", "tpot_s", "decode_tokens_per_s", "prefill_tokens_per_s", "throughput_tokens_per_s",
           "e2e_latency_s", "mfu", "mbu")
MEMORY = ("weights_bytes", "kv_cache_bytes", "activation_bytes", "total_bytes", "capacity_bytes", "fits")
_ROW = ("batch", "prompt", "gen")  # evaluated as arrays within a group
_GROUP = ("model", "hardware", *(name for _, name, _, _ in _OPTIONS if name not in _ROW), "engine")
PROGRESS_ROWS = 50_000  # sweeps at least this long report progress on stderr by default
CHUNK_ROWS = 8_192  # rows evaluated at once: bounds the per-op arrays held (a few kB per row)


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

    df = scenarios.reset_index(drop=True)
    check_columns(df.columns)
    if engine and efficiency is not None:
        raise PerfmodelError("give an efficiency profile or an engine for a sweep, not both")
    n = len(df)
    # Each configuration column as codes into its distinct values, blanks filled with the default: the groups are
    # found on integer codes, and no column is copied as text.
    codes, values, filled = {}, {}, {}
    for col in _GROUP:
        default = engine or "" if col == "engine" else DEFAULTS.get(col, "")
        if col not in df.columns:
            codes[col], values[col] = np.broadcast_to(np.int64(0), n), np.array([default], dtype=object)
            if col in DEFAULTS or col == "engine":
                filled[col] = pd.Series(default, index=pd.RangeIndex(n))
            continue
        c, uniq = pd.factorize(df[col], use_na_sentinel=True)
        vals = [_filled(v, col, default) for v in uniq] + [default]
        c = np.where(c < 0, len(uniq), c)
        codes[col], values[col] = c, np.array(vals, dtype=object)
        if any(a is not b for a, b in zip(vals, uniq)) or (c == len(uniq)).any():
            filled[col] = values[col][c]
    for col, default in DEFAULTS.items():
        if col not in _GROUP:
            filled[col] = df[col].where(df[col].notna() & (df[col].astype(str).str.strip() != ""), default) if (
                col in df.columns) else pd.Series(default, index=pd.RangeIndex(n))
    band_cols = tuple(f"{m}_{end}" for m in METRIC_CATEGORY for end in ("low", "high"))
    out = {c: np.full(n, np.nan) for c in METRICS + MEMORY + band_cols}
    warnings = _blank(n)
    bounds = {"prefill_bound": _blank(n), "decode_bound": _blank(n)}
    errors = _blank(n)

    nums = {c: np.asarray(pd.to_numeric(pd.Series(filled[c]), errors="coerce"), dtype=float)
            for c in ("batch", "prompt", "gen")}
    for c, lo, hi in (("batch", 1, LIMITS["batch"]), ("prompt", 1, LIMITS["prompt_len"]), ("gen", 0, LIMITS["gen_len"])):
        v = nums[c]
        with np.errstate(invalid="ignore"):
            good = np.isfinite(v) & (v == np.round(v)) & (v >= lo) & (v <= hi)
        bad = ~good & ~(np.isnan(v) & (c == "gen") & pd.isna(filled[c]))
        for i in np.flatnonzero(bad & (errors == "")):
            errors[i] = f"{c} must be an integer from {lo} to {hi:,}; got {pd.Series(filled[c]).iloc[i]!r}"
    for c in ("model", "hardware"):
        blank = np.array([v == "" for v in values[c]])[codes[c]]
        for i in np.flatnonzero(blank & (errors == "")):
            errors[i] = f"{c} is empty: every row needs a catalog id, alias or file path"

    gen_out = nums["gen"].copy()
    act_col = np.array(values["act"], dtype=object)[codes["act"]]  # blanks resolved per group below
    models, devices, effs, workloads = {}, {}, {}, {}
    groups = _groups([codes[c] for c in _GROUP], [len(values[c]) for c in _GROUP])
    batches: dict[tuple, _Batch] = {}  # rows of one model and configuration, on any number of machines
    for idx in groups:
        cfg = {c: str(values[c][codes[c][idx[0]]]) for c in _GROUP}
        idx = idx[errors[idx] == ""]
        if not len(idx):
            continue
        try:
            if cfg["model"] not in models:
                models[cfg["model"]] = load_model(cfg["model"])
            if cfg["hardware"] not in devices:
                devices[cfg["hardware"]] = load_device(cfg["hardware"])
            m, d = models[cfg["model"]], devices[cfg["hardware"]]
            if (cfg["hardware"], cfg["engine"]) not in effs:
                effs[cfg["hardware"], cfg["engine"]] = efficiency_for(d, cfg["engine"] or None, efficiency)
            eff, band_engine = effs[cfg["hardware"], cfg["engine"]]
            if cfg["act"] == "":  # as estimate does: the engine's own compute format (llama.cpp on a CPU: fp32)
                cfg["act"] = act_col[idx] = open_act(cfg["engine"], cfg["weights"], d).value
            config = tuple(cfg[name] for _, name, _, _ in _OPTIONS if name not in _ROW)
            if config not in workloads:
                workloads[config] = Workload(**{field: cfg[name] or None if field == "gemm" else cfg[name]
                                                for field, name, _, _ in _OPTIONS if name not in _ROW}, gen_len=0)
            wl = checkpoint_formats(workloads[config], m, cfg["engine"] or None)
            check(m, wl)
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
        gen_out[idx] = gen
        batches.setdefault((id(m), wl), _Batch(m, wl)).add(workload_machine(d, eff, wl), band_engine, idx, batch,
                                                            prompt, gen)
    bar = _Progress(n, len(groups)) if (progress if progress is not None else n >= PROGRESS_ROWS) else None
    del groups, codes  # what the evaluation no longer needs is freed before the result is built
    while batches:
        b = batches.pop(next(iter(batches)))
        idx, mi, batch, prompt, gen = b.rows()
        b.parts.clear()
        for lo in range(0, len(idx), CHUNK_ROWS):  # chunks bound the memory held at once
            part = slice(lo, lo + CHUNK_ROWS)
            _evaluate_rows(b, ignore_capacity, idx[part], mi[part], batch[part], prompt[part], gen[part], out, bounds,
                           errors)
            if bar:
                bar.step(len(idx[part]), b.groups if lo + CHUNK_ROWS >= len(idx) else 0)
    if bar:
        bar.done()
    filled["act"] = act_col
    cols = {c: filled[c] if c in filled else df[c] for c in df.columns}
    cols.update({c: v for c, v in filled.items() if c not in cols})
    text = df["gen"].notna().to_numpy() & np.isnan(nums["gen"]) if "gen" in df.columns else np.zeros(n, dtype=bool)
    # gen with its defaults filled; a cell that is not a number is kept as written (its row's error says why)
    cols["gen"] = np.where(text, df["gen"].to_numpy(dtype=object), gen_out) if text.any() else gen_out
    out["fits"] = np.where(np.isnan(out["fits"]), None, out["fits"] == 1.0)
    columns = {**cols, **out, **bounds, "warning": warnings, "error": errors}
    # text columns stay object arrays of shared strings: no copy into another string type
    res = pd.DataFrame({c: pd.Series(v, dtype=object, copy=False) if isinstance(v, np.ndarray) and v.dtype == object
                        else v for c, v in columns.items()}, copy=False)
    return res


_BOUNDS = np.array(BOUNDS, dtype=object)  # shared label objects, indexed by PhaseCost.bound_index


def _blank(n: int) -> np.ndarray:
    """n empty strings as an object array (np.full fills object arrays far more slowly than take)."""
    return np.array([""], dtype=object).take(np.zeros(n, dtype=np.intp))


def _filled(value: Any, col: str, default: Any) -> Any:
    """A configuration cell with blanks (and the text "nan" where the default is blank) as the default."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return default
    text = str(value).strip()
    return default if text == "" or (text == "nan" and col in ("gemm", "engine", "backend")) else value


def _groups(codes: list[np.ndarray], sizes: list[int]) -> list[np.ndarray]:
    """Row indices of each distinct combination of the code columns, in order of first appearance."""
    n = len(codes[0]) if codes else 0
    key, bound = np.zeros(n, dtype=np.int64), 1
    for c, k in zip(codes, sizes):
        if bound * k >= 2 ** 62:  # renumber the combinations so far before the key could overflow
            _, key = np.unique(key, return_inverse=True)
            bound = int(key.max()) + 1 if n else 1
        key, bound = key * k + c, bound * k
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    parts = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    return [parts[g] for g in np.argsort(first)]


class _Batch:
    """The rows of one model and configuration, gathered from every group (device, engine) that runs it."""

    def __init__(self, model: Any, wl: Workload):
        self.model, self.wl = model, wl
        self.machines: list[Machine] = []
        self.band_engines: list[str] = []
        self.parts: list[tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.groups = 0

    def add(self, mach: Machine, band_engine: str, idx: np.ndarray, batch: np.ndarray, prompt: np.ndarray,
            gen: np.ndarray) -> None:
        self.groups += 1
        for i, (m, e) in enumerate(zip(self.machines, self.band_engines)):
            if m is mach and e == band_engine:
                break
        else:
            i = len(self.machines)
            self.machines.append(mach)
            self.band_engines.append(band_engine)
        self.parts.append((idx, i, batch, prompt, gen))

    def rows(self) -> tuple[np.ndarray, ...]:
        """(row index, machine index, batch, prompt, gen) of every row."""
        return (np.concatenate([p[0] for p in self.parts]),
                np.concatenate([np.full(len(p[0]), p[1]) for p in self.parts]),
                *(np.concatenate([p[k] for p in self.parts]) for k in (2, 3, 4)))


def _evaluate_rows(b: _Batch, ignore_capacity: bool, idx: np.ndarray, mi: np.ndarray, batch: np.ndarray,
                   prompt: np.ndarray, gen: np.ndarray, out: dict, bounds: dict, errors: np.ndarray) -> None:
    """Evaluate rows of one model and configuration, on their machines, and write their metrics, bands, memory,
    bounds or errors into the output arrays."""
    machines = tuple(b.machines)
    bad = machine_errors(b.model, b.wl, machines)  # a figure no rule supplies: that device's rows get the message
    for j, msg in enumerate(bad):
        errors[idx[mi == j]] = msg
    engines = list(b.band_engines)
    if any(bad):
        good = np.array([not msg for msg in bad])
        if not good.any():
            return
        renumber = np.cumsum(good) - 1
        rows = good[mi]
        idx, mi, batch, prompt, gen = idx[rows], renumber[mi[rows]], batch[rows], prompt[rows], gen[rows]
        machines = tuple(m for m, ok in zip(machines, good) if ok)
        engines = [e for e, ok in zip(engines, good) if ok]
        if not len(idx):
            return
    ev = evaluate_rows(b.model, b.wl, machines, mi, batch, prompt, gen)
    mem = ev.memory
    fits = mem.fits if mem.fits is not None else np.ones(len(idx), dtype=bool)
    keep = np.ones(len(idx), dtype=bool) if ignore_capacity else np.asarray(fits, dtype=bool)
    for j in np.unique(mi[~keep]):  # one vectorised pass per device for the messages of its refused rows
        refused = np.flatnonzero(~keep & (mi == j))
        dev = machines[j].device
        sub = Memory(*(np.broadcast_to(np.asarray(x, dtype=float), len(idx))[refused] for x in (
            mem.weights_bytes, mem.kv_cache_bytes, mem.activation_bytes)), dev.main_memory.capacity_bytes)
        errors[idx[refused]] = capacity_messages(b.model, dev, b.wl, sub, batch[refused], prompt[refused],
                                                 gen[refused])
    metrics = ev.metrics
    kept = idx if keep.all() else idx[keep]
    for c, v in metrics.items():
        out[c][kept] = v if keep.all() else np.asarray(v)[keep]
    widen = ev.widening_log()
    kinds = [(device_class(m.device), e) for m, e in zip(machines, engines)]
    for kind in dict.fromkeys(kinds):  # the band of each (device class, engine) among the rows
        sel = keep & np.isin(mi, [j for j, k in enumerate(kinds) if k == kind])
        if not sel.any():
            continue
        view = SimpleNamespace(metrics={k: np.asarray(v)[sel] for k, v in metrics.items()}, batch=batch[sel],
                               gen=gen[sel], decode=SimpleNamespace(steps=ev.decode.steps[sel]))
        for metric, iv in intervals(view, kind[0], kind[1], {ph: w[sel] for ph, w in widen.items()}).items():
            out[f"{metric}_low"][idx[sel]] = np.broadcast_to(iv.low, sel.sum())
            out[f"{metric}_high"][idx[sel]] = np.broadcast_to(iv.high, sel.sum())
    cap = mem.capacity_bytes
    for c in MEMORY:
        v = {"total_bytes": mem.total_bytes, "capacity_bytes": cap, "fits": fits}.get(c, getattr(mem, c, None))
        out[c][idx] = np.broadcast_to(np.asarray(v if v is not None else np.nan, dtype=float), len(idx))
    bounds["prefill_bound"][kept] = _BOUNDS[ev.prefill.bound_index()[keep]]
    bounds["decode_bound"][kept] = _BOUNDS[np.where(ev.decode.steps > 0, ev.decode.bound_index(), -1)[keep]]


class _Progress:
    """A one-line progress report on stderr, redrawn at most every half second."""

    def __init__(self, rows: int, groups: int):
        import time

        self.rows, self.groups, self.done_rows, self.done_groups = rows, groups, 0, 0
        self.t0 = self.last = time.perf_counter()

    def step(self, rows: int, groups: int) -> None:
        import time

        self.done_rows += rows
        self.done_groups += groups
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


NUMERIC_INPUTS = ("batch", "prompt", "gen", "tp", "pp", "ep", "cp", "expert_imbalance", "devices", "nodes")
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
