"""Sweeps past one machine: the same sweep, partition by partition, on a Dask cluster.

    perfmodel sweep scenarios.parquet -o results.parquet --dask              # a local cluster (2 workers)
    perfmodel sweep scenarios.csv -o results.csv --dask tcp://host:8786      # an existing scheduler

Input and output are CSV or Parquet (by suffix). Every partition is one call of perfmodel.scenarios.sweep, so a row
gets exactly what an in-process sweep gives it, error messages included. The output is written beside its final
name and renamed into place, so an existing file is never left half-written. Dask (`dask.distributed`, with pyarrow
for Parquet) is an optional extra: `pip install '.[dask]'`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import PerfmodelError
from .scenarios import check_columns, is_parquet, sweep, typed

PARTITION_ROWS = 250_000
LOCAL_WORKERS = 2


def _imports():
    try:
        import dask.dataframe as dd
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise PerfmodelError("--dask needs Dask: pip install 'perfmodel[dask]' (dask[distributed] and pyarrow)") from None
    return dd, Client, LocalCluster


def read_scenarios(path: str | Path, dd: Any, partition_rows: int = PARTITION_ROWS) -> tuple[Any, int]:
    """(a Dask DataFrame of the scenarios in a CSV or Parquet file, text cells as strings as the in-process CLI reads
    them, in partitions of about `partition_rows` rows; the number of rows)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise PerfmodelError(f"input file {str(path)!r} does not exist")
    try:
        if is_parquet(path):
            ddf = dd.read_parquet(str(path))
        else:
            ddf = dd.read_csv(str(path), dtype=str, keep_default_na=False, blocksize="16MB")
    except Exception as e:  # noqa: BLE001 - pyarrow / pandas parser errors have no common base
        raise PerfmodelError(f"{path}: not a readable {'Parquet' if is_parquet(path) else 'CSV'} file: {e}") from None
    check_columns(ddf.columns)  # before any partition runs
    if is_parquet(path):  # the row count from the files' metadata, without reading the data
        import pyarrow.dataset as ds

        n = int(ds.dataset(str(path), format="parquet").count_rows())
    else:
        n = int(ddf.map_partitions(len).sum().compute())
    # text cells as the in-process CLI reads them (blanks as missing); numeric columns of a Parquet file stay numbers
    # (the sweep reads either, and converting them to text and back cost more than the evaluation)
    text = [c for c in ddf.columns if not pd.api.types.is_numeric_dtype(ddf[c].dtype)]
    if text:
        ddf = ddf.astype({c: str for c in text}).replace({c: {"": None, "nan": None, "None": None} for c in text})
    return ddf.repartition(npartitions=max(1, -(-n // partition_rows))), n


def _run(part: Any, engine: str | None, efficiency: Any, ignore_capacity: bool) -> Any:
    """One partition through the in-process sweep, typed alike in every partition."""
    return typed(sweep(part.reset_index(drop=True), ignore_capacity=ignore_capacity, efficiency=efficiency,
                       engine=engine, progress=False))


def sweep_dask(src: str | Path, dst: str | Path, *, scheduler: str | None = None, engine: str | None = None,
               efficiency: Any = None, ignore_capacity: bool = False, partition_rows: int = PARTITION_ROWS,
               workers: int = LOCAL_WORKERS, progress: bool = True) -> dict[str, Any]:
    """Sweep every row of `src` on a Dask cluster (a local one of `workers` processes, or `scheduler`'s) and write
    `dst` (CSV or Parquet by suffix) atomically. Returns rows, rows with an error, partitions, workers."""
    from ._io import check_output_path

    import pandas as pd

    dd, Client, LocalCluster = _imports()
    dst = Path(dst)
    if is_parquet(dst) and dst.is_dir():  # a Parquet result is a folder of part files: it is replaced whole
        check_output_path(dst.parent / f".{dst.name}.probe")
    else:
        check_output_path(dst)
    cluster = None
    if scheduler in (None, "", "local"):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as e:
            raise PerfmodelError(f"--dask: no Dask scheduler answers at {scheduler!r}: {e}") from None
    try:
        ddf, n = read_scenarios(src, dd, partition_rows)
        # the result's columns and types, from a sweep of no rows (nothing of the input is read)
        meta = _run(pd.DataFrame({c: pd.Series([], dtype=object) for c in ddf.columns}), engine, efficiency,
                    ignore_capacity)
        out = ddf.map_partitions(_run, engine, efficiency, ignore_capacity, meta=meta)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        try:
            if is_parquet(dst):
                written = out.to_parquet(str(tmp / "data"), write_index=False, compute=False)
            else:
                written = out.to_csv(str(tmp / "data.csv"), single_file=True, index=False, compute=False)
            futures = client.compute(written)
            futures = futures if isinstance(futures, list) else [futures]
            if progress:
                from dask.distributed import progress as bar

                bar(futures)
                print(file=sys.stderr)
            client.gather(futures)
            new = tmp / ("data" if is_parquet(dst) else "data.csv")
            # rows with an error, read back from what was written (not a second sweep)
            col = (dd.read_parquet(str(new), columns=["error"]) if is_parquet(dst) else
                   dd.read_csv(str(new), usecols=["error"], dtype=str, keep_default_na=False))["error"]
            errors = int((col.fillna("") != "").sum().compute())
            _replace(new, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        n_workers = len(client.scheduler_info()["workers"])
        return {"rows": n, "errors": errors, "partitions": out.npartitions, "workers": n_workers}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _replace(new: Path, dst: Path) -> None:
    """Move `new` (a file, or a Parquet folder) to `dst`; an existing `dst` is replaced only once `new` is whole."""
    if dst.is_dir() and new.is_dir():
        old = dst.with_name(f".{dst.name}.old")
        os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dst)
