"""The validation set: every published row loads with its source, the split is fixed, predictions are the cost
model's, and the held-out error stays within the issue's targets (a regression fails here)."""

import json
from pathlib import Path

import numpy as np
import pytest

import perfmodel as pm
from perfmodel.validation import (CATEGORY, in_catalog, load_engine, load_rows, predict, split_of, summary,
                                  unpredicted, validation_files)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    df = load_rows()
    df["predicted"], df["skipped"] = predict(df)
    df["baseline"], _ = predict(df, engine="ideal")
    return df


def test_every_file_loads_with_its_source_and_at_least_200_rows(rows):
    assert len(validation_files()) >= 5
    assert len(rows) >= 200
    # a published source has a URL; this project's own measurements name the folder of their raw records
    own = rows.url.str.startswith("validation/measured/")
    assert (rows.url.str.startswith("http") | own).all() and (rows.source.str.len() > 10).all()
    assert all((ROOT / u).is_dir() for u in set(rows.url[own]))
    assert (rows["where"].str.len() > 5).all() and (rows.value > 0).all()
    assert set(rows.category) == {"decode", "prefill", "serving", "kernel"}
    assert set(rows.metric) <= set(CATEGORY)


def test_the_split_is_a_fixed_function_of_the_row(rows):
    again = [split_of(r) for r in rows.to_dict("records")]
    assert again == list(rows.split)
    share = (rows.split == "test").mean()
    assert 0.25 < share < 0.42  # about one row in three is held out
    r = rows.iloc[0].to_dict()
    assert split_of({**r, "value": r["value"] * 2}) == r["split"]  # the measured value plays no part


def test_bad_rows_are_refused_with_the_field_and_row(tmp_path):
    good = '[source]\ntitle = "t"\nurl = "https://x"\n[defaults]\nengine = "llamacpp"\n'
    (tmp_path / "a.toml").write_text(good + '[[rows]]\nmetric = "decode_tokens_per_s"\nvalue = 1.0\nwhere = "x"\n'
                                            'batchsize = 2\n')
    with pytest.raises(pm.PerfmodelError, match=r"a.toml row 1: unknown field 'batchsize'.*Did you mean 'batch'"):
        load_rows([tmp_path / "a.toml"])
    (tmp_path / "b.toml").write_text(good + '[[rows]]\nmetric = "decode_tokens"\nvalue = 1.0\nwhere = "x"\n')
    with pytest.raises(pm.PerfmodelError, match="metric 'decode_tokens' is not one of"):
        load_rows([tmp_path / "b.toml"])
    (tmp_path / "c.toml").write_text(good + '[[rows]]\nmetric = "tpot_s"\nvalue = -1.0\nwhere = "x"\n')
    with pytest.raises(pm.PerfmodelError, match="value must be > 0"):
        load_rows([tmp_path / "c.toml"])
    (tmp_path / "e.toml").write_text(good + '[[rows]]\nmetric = "tpot_s"\nvalue = 1.0\nwhere = "x"\n'
                                            'backend = "vulcan"\n')
    with pytest.raises(pm.PerfmodelError, match=r"e.toml row 1: backend 'vulcan' is not one of.*Did you mean 'vulkan'"):
        load_rows([tmp_path / "e.toml"])
    (tmp_path / "f.toml").write_text(good + '[[rows]]\nmetric = "ttft_s"\nvalue = 1.0\nwhere = "x"\n'
                                            'batching = "dynamic"\n')
    with pytest.raises(pm.PerfmodelError, match="batching must be 'static' or 'continuous'"):
        load_rows([tmp_path / "f.toml"])
    (tmp_path / "g.toml").write_text(good + '[[rows]]\nmetric = "ttft_s"\nvalue = 1.0\nwhere = "x"\n'
                                            'lengths = "normal"\n')
    with pytest.raises(pm.PerfmodelError, match="g.toml row 1: lengths must be 'fixed' or 'uniform'"):
        load_rows([tmp_path / "g.toml"])
    (tmp_path / "d.toml").write_text('[source]\ntitle = "t"\n[[rows]]\nengine = "hf"\n')
    with pytest.raises(pm.PerfmodelError, match=r"\[source\] needs url"):
        load_rows([tmp_path / "d.toml"])


def test_a_serving_row_is_the_benchmark_it_ran():
    from perfmodel.validation import _bench

    row = dict(engine="sglang", metric="ttft_s", batch=16, prompt_len=496, gen_len=509)
    b = _bench(row)  # 16 clients in a closed loop, 3 x 16 requests of the row's lengths, vLLM's memory rule
    assert (b.clients, b.requests, b.lengths, b.scheduler.kv_memory) == (16, 48, "fixed", "total")
    b = _bench({**row, "requests": 80, "lengths": "uniform"})  # the run's --num-prompts and random dataset
    assert (b.clients, b.requests, b.lengths) == (16, 80, "uniform")
    b = _bench({**row, "engine": "trtllm", "metric": "throughput_tokens_per_s", "requests": 500})
    assert (b.requests, b.scheduler.max_num_seqs, b.scheduler.kv_memory) == (500, 16, "free")
    b = _bench({**row, "engine": "mlperf", "software": "TensorRT-LLM 0.12", "batch": None,
                "metric": "throughput_tokens_per_s"})  # costed as TensorRT-LLM: its memory rule too
    assert (b.requests, b.scheduler.kv_memory) == (None, "free")


def test_ideal_decode_is_the_bandwidth_roofline():
    # llama-2-7b fp16 at batch 1 on an H100 SXM, ideal profile (datasheet 3.35 TB/s, no overheads): each step reads
    # every weight but the embedding table once, (6,738,415,616 - 32,000 x 4,096) x 2 B = 13.21 GB, plus the KV
    # cache (2 x 32 layers x 4,096 x 2 B = 524,288 B per position, ~65 positions on average) -> ~3.955 ms per token.
    import pandas as pd

    df = pd.DataFrame([{"engine": "llamacpp", "hardware": "h100-sxm", "model": "llama-2-7b", "weights": "fp16",
                        "metric": "decode_tokens_per_s", "batch": 1, "gen_len": 128, "value": 1.0,
                        "category": "decode"}])
    pred, skip = predict(df, engine="ideal")
    weights = (6_738_415_616 - 32_000 * 4_096) * 2
    kv = 524_288 * (2 + 129) / 2  # contexts 2..129 over the 128 steps, on average
    assert skip[0] == ""
    assert pred[0] == pytest.approx(3.35e12 / (weights + kv), rel=0.01)


def test_held_out_error_does_not_regress(rows):
    # a regression guard at what the cost model reaches today (README, "Validation"); the issue's own targets are
    # test_issue_targets below
    got = _held_out(rows)
    assert {k: round(v, 1) for k, v in got.items() if v > REACHED[k]} == {}
    # and better than the pure roofline on the same rows, in every category
    test = rows[(rows.split == "test") & np.isfinite(rows.predicted.astype(float))]
    t = summary(test)
    worse = t[(t.metric == "(all)") & (t.mean_ape >= t.baseline_mean_ape)]
    assert list(worse.category) == []


# held-out figures of docs/validation.md plus a small margin. Issue 12 made 123 more held-out rows predictable
# (devices that were refused or missing): decode and prefill improved (5.6 / 8.5 %, 18.0 %); serving rose to 29.6 %
# with TensorRT-LLM's pipeline-parallel RTX PRO 6000 rows (throughput that grows with pp: micro-batches in flight,
# which the cost model does not overlap yet) and kernel to 21.9 % with DeepGEMM's FP8 rows on the H800.
# held-out rows of the fixed split as of issue 14 (5,970 rows from 110 sources; the 1,455 rows of 28 sources before
# gave 5.6 / 8.5 / 18.0 / 29.6 / 21.9: the sources added since are harder, so these are on other rows, not a regression)
# Fits weighed by source (engine_fit.SOURCE_POWER) traded the fixed split for leave-one-source-out: decode median
# 17.2 -> 18.6 % and kernel mean 30.9 -> 34.0 % here, while LOSO decode fell 46.9 -> 36.0 % and prefill 49.6 -> 40.5 %.
# The Raspberry Pi keep-out's refit of llama.cpp's GPU numbers moved the fixed split's decode median 16.3 -> 20.1 %
# (its 127 rows) while leave-one-source-out decode fell 20.1 / 28.3 -> 19.3 / 27.7 % on the same rows.
# Cited class defaults (Metal's per-kernel cost, FlashAttention-2's mma.sync on Hopper) and ONNX Runtime's FP16
# scratch copy: fixed split decode 20.1 / 23.6 -> 16.0 / 22.4 %, kernel mean 30.2 -> 27.8 %.
# Metal's per-query-head KV re-read and the llama.cpp refit it brought: fixed split decode 16.0 / 22.4 -> 16.7 / 22.7 %
# while leave-one-source-out decode fell 17.9 / 25.3 -> 17.4 / 24.8 %.
# llama.cpp's MMQ at a measured rate per SM per clock, and the fits' descent visiting a ceiling before the fraction it
# caps: fixed split decode 16.7 / 22.7 -> 14.8 / 23.1 %, prefill 19.1 / 33.0 -> 15.3 / 33.0 %; a GEMM's rate growing
# with its rows per call (gemm_rows_half): prefill 15.3 / 33.0 -> 13.3 / 28.8 %.
# The project's own H200 measurements (100 rows), the exponentials costed on the H200 (the H100's rate per SM) and
# the B200/GB200 (sourced), and causal attention's diagonal tiles: kernel mean 27.8 -> 24.9 %, while the train-split
# refit of TensorRT-LLM and vLLM with the H200's exponentials moved serving's mean 22.5 -> 23.9 % (leave-one-source-out
# serving 22.0 -> 22.3 % on the same rows).
# llama.cpp's 16-bit GEMMs at cuBLAS's fraction (blas_matrix): fixed split prefill 14.2 / 28.7 -> 11.3 / 26.7 %.
# Checkpoint formats (16-bit LM heads, MXFP4 experts only) and the refit they led to: decode 14.8 / 21.9 -> 12.0 / 20.6.
# CUDA graph replay (llama.cpp): decode 12.0 / 20.6 -> 13.2 / 19.6, prefill 11.2 / 26.7 -> 11.5 / 26.6.
# Vulkan's command buffers and the refit they led to (host launches 8 -> 16 us): decode 13.2 / 19.6 -> 11.6 / 17.1,
# prefill 11.5 / 26.6 -> 13.3 / 26.8 (with 30 new Vulkan prompt rows).
# Sources weighed by the square root of their rows in the fits (SOURCE_POWER 0.5, from 1) and the refit: decode
# tokens/s 11.0 / 16.3 -> 9.5 / 17.1 (its mean worse), prefill mean (all metrics) 26.7 -> 26.8, serving mean
# 23.8 -> 22.8, kernel mean 24.9 -> 24.7.
# The six re-read sources and the refit: decode tokens/s 9.5 / 17.1 -> 9.5 / 15.9, prefill mean (all metrics)
# 26.8 -> 26.0, serving mean 22.8 -> 22.2 (the TensorRT-LLM v0.11 misprint kept out) -> 22.4.
# AITER PR #1092's plain CK column back (one of its rows is in the test split, missed by ~770 %): kernel mean
# 24.7 -> 29.4; TensorRT-LLM v0.10's LLaMA 3 rows out: serving 22.4 -> 22.3.
# Issue 16 (collectives by NCCL's tuning model and the engines' kernels, EP with data-parallel attention, pipeline
# micro-batches) and the refit: serving mean 22.3 -> 20.2; 423 collective kernel rows added (nccl-tests bus
# bandwidth, all-reduce latency): kernel mean 29.4 -> 37.9 on other rows (the rows scored before: unchanged)
REACHED = {"decode median": 10.0, "decode mean": 17.5, "prefill mean": 27.5, "serving mean": 23.5,
           "kernel mean": 38.5}
TARGETS = {"decode median": 10.0, "decode mean": 15.0, "prefill mean": 25.0, "serving mean": 25.0,
           "kernel mean": 15.0}  # issue 5


def _held_out(rows):
    test = rows[(rows.split == "test") & np.isfinite(rows.predicted.astype(float))]
    t = summary(test).set_index(["category", "metric"])
    return {"decode median": t.loc[("decode", "decode_tokens_per_s")].median_ape,
            "decode mean": t.loc[("decode", "decode_tokens_per_s")].mean_ape,
            "prefill mean": t.loc[("prefill", "(all)")].mean_ape, "serving mean": t.loc[("serving", "(all)")].mean_ape,
            "kernel mean": t.loc[("kernel", "(all)")].mean_ape}


@pytest.mark.xfail(strict=True, reason="issues 5 and 14: every held-out category is above its target on the 110-source "
                                       "set; docs/validation.md says where and why")
def test_issue_targets(rows):
    got = _held_out(rows)
    assert {k: round(v, 1) for k, v in got.items() if v > TARGETS[k]} == {}


def test_validate_cli(tmp_path, capsys):
    from perfmodel.cli import main

    out = tmp_path / "rows.csv"
    png = tmp_path / "plot.png"
    assert main(["validate", "--json", "-o", str(out), "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["rows"] > 50 and report["predicted"] > 50
    assert {r["category"] for r in report["summary"]} >= {"ALL", "decode", "serving"}
    # the headline: leave-one-source-out per category, from validation/loso.csv
    assert {r["category"] for r in report["loso"]} == {"ALL", "decode", "prefill", "serving", "kernel"}
    assert out.read_text().startswith("engine,") or "predicted" in out.read_text().splitlines()[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["validate", "--engine", "vlm"]) == 2
    assert "Did you mean 'vllm'" in capsys.readouterr().err


def test_engine_profiles_in_estimates(capsys):
    from perfmodel.cli import main

    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "rtx-4090", "--weights", "q4_0", "--engine",
                 "llamacpp", "--json"]) == 0
    tps = json.loads(capsys.readouterr().out)["decode_tokens_per_s"]
    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "rtx-4090", "--weights", "q4_0", "--engine",
                 "ideal", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decode_tokens_per_s"] > tps  # the roofline is an upper bound
    assert main(["estimate", "--model", "gpt2", "--hardware", "h100", "--engine", "ideal", "--profile", "x.toml"]) == 2
    assert "not both" in capsys.readouterr().err
    assert load_engine("ideal").efficiency(pm.load_device("h100-sxm")).matrix == 1


def test_attention_pays_for_its_exponentials_where_the_device_gives_the_rate():
    # FlashAttention-3's own arithmetic: fp16 forward, head dim 128, seq 4096, 16 heads, non-causal, on an H100 SXM
    # (989.4 TFLOPS matrix, 3.9 TFLOPS special functions), ideal efficiency:
    # FLOPs 4 x 4096^2 x 128 x 16 = 1.374e14 -> 0.1389 ms; exponentials 4096^2 x 16 = 2.68e8 -> 0.0688 ms;
    # 1.374e14 / 0.2077 ms = 661.7 TFLOP/s
    import pandas as pd

    row = {"engine": "kernel", "hardware": "h100-sxm", "metric": "attention_tflops", "seq_len": 4096, "heads": 16,
           "head_dim": 128, "batch": 1, "causal": False, "dtype": "fp16", "value": 1.0, "category": "kernel"}
    pred, _ = predict(pd.DataFrame([row]), engine="ideal")
    flops, exps = 4 * 4096**2 * 128 * 16, 4096**2 * 16
    assert pred[0] == pytest.approx(flops / (flops / 989.4e12 + exps / 3.9e12) / 1e12, rel=1e-3)
    # a device without the figure: matrix rate only (A100 SXM: 312 TFLOPS fp16, bandwidth far from binding)
    pred, _ = predict(pd.DataFrame([{**row, "hardware": "a100-80gb-sxm"}]), engine="ideal")
    assert pred[0] == pytest.approx(312, rel=0.01)


def test_ttft_under_load_is_the_simulators_closed_loop():
    # a TTFT row at concurrency 16 is 16 clients in a closed loop (48 requests of 1000 + 200 tokens, all sent at 0):
    # the simulator's mean TTFT. The first 16 prompts (16,000 tokens) share 8,192-token iterations, so requests wait
    # for the prefills ahead of them: the mean lies between one prompt's prefill and the whole wave's
    import pandas as pd

    from perfmodel.serving import Requests, Scheduler, simulate

    row = {"engine": "trtllm", "hardware": "h100-sxm", "model": "llama-3.1-8b", "weights": "fp8", "metric": "ttft_s",
           "batch": 16, "prompt_len": 1000, "gen_len": 200, "value": 1.0, "category": "serving"}
    pred, skip = predict(pd.DataFrame([row]))
    eff = load_engine("trtllm").efficiency(pm.load_device("h100-sxm"))
    wl = pm.Workload(weights="fp8", kv="fp16", act="fp8")
    req = Requests(np.zeros(48), np.full(48, 1000.0), np.full(48, 200.0), np.zeros(48))
    ref = simulate("llama-3.1-8b", "h100-sxm", wl, requests=req, efficiency=eff, concurrency=16,
                   scheduler=Scheduler(max_num_seqs=16, max_batched_tokens=8192))
    assert skip[0] == "" and pred[0] == pytest.approx(ref.ttft_s.mean(), rel=5e-3)
    one = pm.estimate("llama-3.1-8b", "h100-sxm", batch=1, prompt_len=1000, gen_len=1, efficiency=eff,
                      weights="fp8", kv="fp16", act="fp8").ttft_s
    assert 1.5 * one < pred[0] < 16 * one


def test_leave_one_source_out_predicts_each_source_from_the_others():
    import pandas as pd

    from perfmodel.validation import leave_one_source_out

    # three sources measure value = k x; the "fit" is the mean ratio value / x of the rows it is given
    rows = pd.DataFrame({"file": ["a", "a", "b", "c", "c", "c"], "x": [1.0, 2.0, 1.0, 1.0, 1.0, 2.0],
                         "value": [2.0, 4.0, 3.0, 4.0, 4.0, 8.0]})
    seen = []

    def fit(train):
        seen.append(sorted(set(train.file)))
        return float((train.value / train.x).mean())

    pred = leave_one_source_out(rows, fit, lambda k, part: k * part.x.to_numpy())
    # without a: ratios 3, 4, 4, 4 -> 3.75; without b: 2, 2, 4, 4, 4 -> 3.2; without c: 2, 2, 3 -> 7/3
    np.testing.assert_allclose(pred, [3.75, 7.5, 3.2, 7 / 3, 7 / 3, 14 / 3])
    assert seen == [["b", "c"], ["a", "c"], ["a", "b"]]  # no fit ever saw the source it predicts
    # one worker's share: only its sources are predicted, and by the same folds
    share = leave_one_source_out(rows, fit, lambda k, part: k * part.x.to_numpy(), sources=["b"])
    assert np.isnan(share[[0, 1, 3, 4, 5]]).all() and share[2] == pytest.approx(3.2)


def test_accuracy_per_category():
    import pandas as pd

    from perfmodel.validation import accuracy

    df = pd.DataFrame({"category": ["decode"] * 4, "value": [100.0] * 4, "predicted": [110.0, 90.0, 150.0, np.nan],
                       "skipped": ["", "", "", "too long"]})
    d = accuracy(df).set_index("category").loc["decode"]
    # signed errors +10, -10, +50 %: median |e| 10, mean |e| 70 / 3, two of three within 20 %, bias (median) +10;
    # three of the four rows whose model and device exist were predicted
    assert (d.rows, d.known) == (3, 4)
    assert d.median_ape == pytest.approx(10) and d.mean_ape == pytest.approx(70 / 3)
    assert d.within_20 == pytest.approx(2 / 3) and d.bias == pytest.approx(10) and d.coverage == pytest.approx(0.75)


def test_stored_loso_table_is_used_only_for_its_rows(tmp_path):
    import pandas as pd

    from perfmodel.validation import load_loso, rows_digest

    rows = pd.DataFrame({"file": ["a", "b"], "row": [1, 1], "metric": ["tpot_s", "tpot_s"], "value": [1.0, 2.0],
                         "engine": ["vllm", "vllm"], "hardware": ["h100-sxm", "h100-sxm"], "model": ["gpt2", None]})
    path = tmp_path / "loso.csv"
    pd.DataFrame({"file": ["b", "a"], "row": [1, 1], "predicted": [2.5, 1.5], "digest": rows_digest(rows)}).to_csv(
        path, index=False)
    pred, why = load_loso(rows, path)
    assert why == "" and pred.tolist() == [1.5, 2.5]  # aligned by (file, row)
    changed = rows.assign(value=[1.0, 2.1])  # a measurement edited since the table was computed
    pred, why = load_loso(changed, path)
    assert pred is None and "rerun python tools/fit_engines.py --loso" in why


def test_shipped_loso_table_is_current(rows):
    """validation/loso.csv was computed on the rows as they stand (rerun python tools/fit_engines.py --loso after
    editing validation/)."""
    from perfmodel.validation import load_loso

    pred, why = load_loso(rows)
    # 6,260 of 6,886 rows predicted (90.9 %): the rest are kept out, not in the catalog or do not fit (with each
    # engine's own KV-cache rule: TensorRT-LLM's 90 % of the memory left free keeps its 70B rows on one H100 in FP8)
    assert why == "" and np.isfinite(pred).mean() > 0.9


# leave-one-source-out as shipped with issue 14 (median / mean |error| %, docs/validation.md): a guard against a
# refit or a mechanism that makes unseen sources worse; issue 14's targets are far below (decode 10 / 15, ...)
# The descent's new order (a ceiling before the fraction it caps) raised decode's mean 24.8 -> 28.0: the fold without
# one 3-row source now fits transformers' GPU numbers at a lower objective with a per-SM ceiling instead of 192 us per
# op, and that source's bitsandbytes LLM.int8() row (3.76 t/s on a 2080 Ti) is predicted at 48 t/s, not 19
# The H200 measurements and exponentials (above): decode's mean 27.9 -> 25.0 (transformers' fit now holds rows of a
# current stack, and the llama2-webui fold no longer needs 192 us per op), kernel 19.8 / 31.3 -> 17.3 / 28.7, while
# prefill's median rose 15.6 -> 16.1 (24 new rows of transformers' launch-bound prefill at -17 % bias) and serving's
# 14.9 -> 15.6 (the vLLM and TensorRT-LLM folds refitted with the H200's exponentials: vLLM's CI latency rows 2 -> 9 %)
# llama.cpp's FP16 GEMMs and FP16 weight copies at cuBLAS's own fraction (blas_matrix): prefill 16.1 / 35.3 -> 15.1 /
# 34.7, the XiongjieDai GPU table's prefill 35.1 -> 28.0
# Micro-batches (ubatch, llama-bench's 512 unless the source says): prefill 15.1 / 34.7 -> 14.5 / 34.1
# Checkpoint formats (engines.checkpoint_formats): serving 15.6 / 22.3 -> 14.8 / 22.2, decode median 17.4 -> 17.2
# CUDA graph replay for llama.cpp's one-sequence decode steps (graph_op_overhead_s 2 us, host launches refitted to
# 8 us): decode 17.2 / 25.0 -> 16.0 / 24.5, while prefill rose 14.3 / 34.1 -> 16.1 / 34.6 (the launches of the
# prompt passes of the non-CUDA backends and of the folds that refit without a CUDA table: docs/validation.md)
# Vulkan's command buffers (its decode kernels at the graph-replay cost on every vendor; host launches refitted 8 ->
# 16 us) and 45 rows of three llama.cpp Vulkan PR tables: decode 16.0 / 24.5 -> 14.4 / 22.7; prefill 16.1 / 34.6 ->
# 17.2 / 34.4, its median raised by the 30 new prompt rows (21.9 / 30.0 at -20 % bias: NVIDIA's DP4A rows on the FP32
# rate, no int8 vector figure); on the 362 rows scored before, 15.2 / 34.8
# Sources weighed by the square root of their rows (SOURCE_POWER 0.5): decode 14.4 / 22.8 -> 13.7 / 22.8, prefill
# 17.3 / 34.5 -> 17.3 / 34.9, serving 14.8 / 22.2 -> 14.9 / 21.8, kernel 17.3 / 28.7 -> 15.2 / 27.5
# Six sources corrected after re-reading them (Optimum's GPTQ generation rows are static-batch throughput, 15 rows out
# of decode; block-scaled FP8 checkpoints; superseded llama2-webui figures; ...): decode 13.7 / 22.8 -> 13.9 / 24.9,
# prefill 17.3 / 34.9 -> 16.3 / 34.9. Decode's mean rose because the fold without this project's H200 transformers
# rows now fits 2022-23 stacks that want 48-64 us per op where transformers 5.17 wants 96 (those rows 28.9 -> 80.3 %)
# A second re-reading: TensorRT-LLM v0.10's LLaMA 3 rows out (its build configs swap 8B's and 70B's MLP widths),
# AITER PR #1092's plain CK column back (an op test's output, not a tuner's rejected candidates): kernel
# 15.1 / 27.5 -> 16.0 / 40.8 (those 9 rows missed by up to 1,200 %), serving 15.0 / 21.6 -> 14.9 / 21.5
# Issue 16: serving 14.9 / 21.5 -> 14.9 / 20.6 (EP rows 41.4 / 38.6 -> 20.1 / 26.2, pipeline rows 57.5 / 55.5 ->
# 23.9 / 26.9), prefill 16.3 / 35.0 -> 15.7 / 35.2; kernel 16.0 / 40.8 -> 21.0 / 41.0 with 423 collective rows
# added (23.2 / 40.4 on their own; the other kernel rows 18.3 / 41.7)
# Issue 17: 7 llama.cpp -ngl offload rows and 4 vLLM EAGLE rows, decode 13.8 / 24.9 -> 13.8 / 24.9; kernel 20.0 /
# 40.6 (c02ebfc's refit)
LOSO_REACHED = {"decode": (14.0, 25.5), "prefill": (17.5, 35.5), "serving": (15.5, 21.5), "kernel": (20.5, 41.0)}


def test_leave_one_source_out_error_does_not_regress(rows):
    from perfmodel.validation import accuracy, load_loso, unpredicted

    pred, _ = load_loso(rows)
    got = accuracy(rows.assign(predicted=pred, skipped=unpredicted(rows, pred))).set_index("category")
    worse = {cat: (round(got.median_ape[cat], 1), round(got.mean_ape[cat], 1)) for cat, (med, mean) in
             LOSO_REACHED.items() if got.median_ape[cat] > med or got.mean_ape[cat] > mean}
    assert worse == {}
    assert (got.coverage >= 0.95).all()  # the issue's coverage target holds in every category


def test_plot_per_category_draws_times_as_rates(tmp_path):
    import pandas as pd

    from perfmodel.validation import plot_categories

    df = pd.DataFrame({"category": ["decode", "decode", "prefill"], "metric": ["tpot_s", "decode_tokens_per_s",
                       "prefill_tokens_per_s"], "value": [0.01, 100.0, 5000.0], "loso": [0.02, 90.0, np.nan]})
    path = plot_categories(df, tmp_path / "loso.png", col="loso")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_static_batching_ttft_is_the_whole_batch_prefill_and_kept_out_rows_are_not_scored():
    import pandas as pd

    from perfmodel.evaluate import Workload, evaluate

    base = {"engine": "trtllm", "hardware": "h100-sxm", "model": "gpt-j-6b", "weights": "fp16", "metric": "ttft_s",
            "batch": 64, "prompt_len": 128, "gen_len": 128, "value": 0.1, "category": "serving"}
    df = pd.DataFrame([{**base, "batching": "static"}, base, {**base, "kept_out": "mixed lengths"}])
    pred, skip = predict(df, engine="ideal")
    # static: the 64 prompts of 128 tokens prefilled in one pass, the ideal machine's TTFT at batch 64;
    # continuous, 64 clients of identical requests sent at once: the 64 prompts (8,192 tokens, the iteration budget)
    # go in one iteration too, and the clients' next requests come all together, so the loop stays in step: the
    # same TTFT
    m, d = pm.load_model("gpt-j-6b"), pm.load_device("h100-sxm")
    ideal = load_engine("ideal").efficiency(d)
    whole = evaluate(m, d, Workload(weights="fp16"), ideal, np.array([64.0]), np.array([128.0]), np.array([1.0]))
    assert pred[0] == pytest.approx(float(whole.metrics["ttft_s"][0]))
    assert pred[1] == pytest.approx(pred[0], rel=1e-3)
    assert np.isnan(pred[2]) and skip[2] == "kept out: mixed lengths"
    rows = df.assign(predicted=pred, skipped=unpredicted(df, pred))
    assert len(in_catalog(rows)) == 2  # a kept-out row counts neither as predicted nor as missed


def test_every_row_states_its_engine_and_every_llamacpp_row_its_backend(rows):
    assert rows.engine.notna().all()
    llama = rows[rows.engine == "llamacpp"]
    assert len(llama) > 100 and llama.backend.notna().all(), sorted(set(llama[llama.backend.isna()].file))


def test_serving_stacks_multiply_in_the_weight_format_only_where_the_matrix_units_have_it():
    # W4A4 / W8A8 where the tensor cores take the format, else the weights are dequantised and multiplied at 16 bits:
    # MXFP4 gpt-oss on an H100 (no FP4 rate) runs W4A16, on a B200 (FP4 9,000 TFLOP/s dense) W4A4; FP8 on an A100
    # (no FP8 rate) is weight-only; block-scaled FP8 computes in FP8 on an H100; llama.cpp keeps fp16 on GPUs
    from perfmodel.engines import default_act as _default_act

    h100, b200, a100 = (pm.load_device(d) for d in ("h100-sxm", "b200", "a100-80gb-sxm"))
    assert _default_act("vllm", "mxfp4", h100) == "fp16"
    assert _default_act("vllm", "mxfp4", b200) == "mxfp4"
    assert _default_act("trtllm", "fp8", a100) == "fp16"
    assert _default_act("sglang", "fp8_b128", h100) == "fp8"
    assert _default_act("llamacpp", "fp8", h100) == "fp16"


def test_own_measurements_are_the_raw_records_rounded(tmp_path):
    """The files of this project's GPU measurements are what tools/measured_rows.py writes from the raw records:
    regenerate them and compare, so a hand edit or a raw file out of step fails here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("measured_rows", ROOT / "tools" / "measured_rows.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(ROOT / "validation" / "measured" / "h200-2026-12-04"), "--out", str(tmp_path)]) == 0
    for name in (tool.KERNEL_FILE, tool.HF_FILE):
        assert (tmp_path / name).read_text() == (ROOT / "validation" / name).read_text()
    raw = [json.loads(x) for x in (ROOT / "validation/measured/h200-2026-12-04/run1.jsonl").read_text().splitlines()]
    gemm = next(r for r in raw if r.get("kind") == "gemm" and (r["m"], r["n"], r["dtype"]) == (1, 4096, "bf16"))
    # 2 x 1 x 4096 x 4096 FLOPs / seconds, in TFLOP/s, four significant figures as the file holds it
    row = load_rows().query("file == @tool.KERNEL_FILE and m == 1 and n == 4096 and dtype == 'bf16'")
    assert row.value.iloc[0] == float(f"{2 * 4096 * 4096 / gemm['seconds'] / 1e12:.4g}")



def test_own_training_steps_become_training_rows(tmp_path):
    """`gpu_measure.py --only train` records (one made up here, in the script's own fields) become validation/train
    rows that the training validation reads and predicts: the value is the record's tokens/s rounded, the memory row
    its peak allocated bytes, the model the record's GPT shape."""
    import importlib.util
    import shutil

    from perfmodel.train_validation import load_train_rows, predict_train

    spec = importlib.util.spec_from_file_location("measured_rows", ROOT / "tools" / "measured_rows.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(ROOT / "validation" / "measured" / "h200-2026-12-04" / "env.json", raw / "env.json")
    rec = dict(kind="train", hidden=768, heads=12, layers=4, vocab=50304, seq_len=2048, micro_batch=8,
               params=68_000_000, step_s=0.1234567, tokens_per_s=16384 / 0.1234567, steps_timed=5,
               peak_allocated_bytes=9_876_543_210, kernels=700, profiled_step_s=0.13,
               gpu_busy_s={"gemm": 0.08, "attention": 0.01, "other": 0.02})
    (raw / "run1.jsonl").write_text(json.dumps(rec) + "\n")
    assert tool.main([str(raw), "--out", str(tmp_path), "--train-hardware", "h200"]) == 0
    path = tmp_path / "train" / "perfmodel-h200-train-measured.toml"
    rows = load_train_rows([path])
    assert sorted(rows.metric) == ["memory_bytes_per_gpu", "tokens_per_s"]
    speed = rows[rows.metric == "tokens_per_s"].iloc[0]
    assert speed.value == float(f"{16384 / 0.1234567:.4g}") and speed.hidden == 768 and speed.loss_kernel == "torch"
    assert rows[rows.metric == "memory_bytes_per_gpu"].value.iloc[0] == 9_876_543_210
    pred, why = predict_train(rows)
    assert np.isfinite(pred).all(), why
    assert tool.main([str(ROOT / "validation" / "measured" / "h200-2026-12-04"), "--out", str(tmp_path),
                      "--train-hardware", "h200"]) == 2  # no training records there
