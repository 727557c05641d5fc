"""Sweeps on Dask: a local cluster of 2 worker processes gives, row for row, what the in-process sweep gives, from CSV
or Parquet to CSV or Parquet, bad rows included."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

import perfmodel as pm  # noqa: E402
from perfmodel.cli import main  # noqa: E402
from perfmodel.distributed import sweep_dask  # noqa: E402
from perfmodel.scenarios import read_table  # noqa: E402


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    rng = np.random.default_rng(7)
    n = 600
    df = pd.DataFrame({
        "model": rng.choice(["llama-3-8b", "qwen2.5-7b", "gpt-oss-20b", "bert-base"], n),
        "hardware": rng.choice(["h100-sxm", "rtx-4090", "m3-max-30c", "epyc-9654"], n),
        "batch": rng.integers(1, 64, n).astype(str), "prompt": rng.integers(16, 4096, n).astype(str),
        "gen": rng.integers(0, 512, n).astype(str), "weights": rng.choice(["bf16", "q4_0", "fp8"], n),
        "engine": rng.choice(["", "llamacpp", "vllm"], n)})
    df.loc[3, "batch"] = "inf"  # a bad row: its own error, the others computed
    df.loc[11, "hardware"] = "h100-sxn"
    d = tmp_path_factory.mktemp("dask")
    df.to_csv(d / "in.csv", index=False)
    df.to_parquet(d / "in.parquet", index=False)
    return d, read_table(d / "in.csv")


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want)
    for c in ("ttft_s", "tpot_s", "decode_tokens_per_s", "throughput_tokens_per_s", "total_bytes",
              "decode_tokens_per_s_low", "e2e_latency_s_high"):
        np.testing.assert_allclose(pd.to_numeric(got[c], errors="coerce"), want[c].astype(float), rtol=1e-12,
                                   equal_nan=True, err_msg=c)
    assert got["error"].fillna("").tolist() == want["error"].tolist()
    assert got["decode_bound"].fillna("").tolist() == want["decode_bound"].fillna("").tolist()


def test_local_cluster_matches_the_in_process_sweep_row_for_row(rows):
    d, src = rows
    want = pm.sweep(src)
    r = sweep_dask(d / "in.csv", d / "out.csv", workers=2, partition_rows=200, progress=False)
    assert r == {"rows": 600, "errors": int((want.error != "").sum()), "partitions": 3, "workers": 2}
    _same(pd.read_csv(d / "out.csv", keep_default_na=False), want)
    assert "batch must be an integer" in want.error[3] and "Did you mean 'h100-sxm'" in want.error[11]
    r = sweep_dask(d / "in.parquet", d / "out.parquet", workers=2, partition_rows=250, progress=False)
    assert r["partitions"] == 3
    _same(pd.read_parquet(d / "out.parquet"), want)


def test_cli_dask_flag_and_a_bad_address(rows, capsys):
    d, src = rows
    failed = int((pm.sweep(src).error != "").sum())  # the two bad cells, encoders asked to generate, misfits
    assert main(["sweep", str(d / "in.csv"), "-o", str(d / "cli.csv"), "--dask"]) == 2
    err = capsys.readouterr().err
    assert f"{600 - failed} of 600 rows estimated on 2 Dask workers" in err
    assert main(["sweep", str(d / "in.csv"), "-o", str(d / "cli.csv"), "--dask", "tcp://127.0.0.1:9"]) == 2
    assert "no Dask scheduler answers at 'tcp://127.0.0.1:9'" in capsys.readouterr().err
