"""Fitting the engine profiles (perfmodel.engine_fit): the pull toward the cited defaults, the bounds, the rows a fit
uses, and a fit that must find a number it was given; and the shipped profiles: every number inside its grid, any
at a bound explained."""

import math

import numpy as np
import pytest

from perfmodel import engine_fit as ef
from perfmodel.catalog import read_toml
from perfmodel.engines import EngineProfile, engine_files, load_engine
from perfmodel.validation import load_rows, predict, profile_of


def test_prior_cost_by_hand():
    # 4 rows, matrix 0.35 where the default is 0.7: 2 pseudo-rows / 4 x |ln(0.35 / 0.7)| = 0.5 x 0.6931 = 0.3466;
    # op_overhead 6 us (default 4 us, softened by 2 us): 0.5 x ln(8 / 6) = 0.1438
    assert ef.prior_cost({**ef.START, "matrix": 0.35}, 4) == pytest.approx(0.5 * math.log(2))
    assert ef.prior_cost({**ef.START, "op_overhead_s": 6e-6}, 4) == pytest.approx(0.5 * math.log(8 / 6))
    # the defaults cost nothing, and 400 rows pay a hundredth of what 4 rows pay for the same move
    assert ef.prior_cost(dict(ef.START), 4) == 0
    assert ef.prior_cost({**ef.START, "matrix": 0.35}, 400) == pytest.approx(0.005 * math.log(2))
    # a concurrency ceiling where the default has none counts one e-fold
    assert ef.prior_cost({**ef.START, "unit_bytes_per_s": 6e9}, 2) == pytest.approx(1.0)


def test_class_defaults_are_where_a_fit_starts_and_what_it_is_pulled_toward():
    # llama.cpp on Metal starts from 10 us per kernel (Metal's dispatch cost, CLASS_START): 4 rows fitted at 4 us
    # pay 0.5 x ln((10 + 2) / (4 + 2)) = 0.5 x ln 2 toward it, 10 us pays nothing; elsewhere 4 us is the default
    apple = ef.start("llamacpp", "apple")
    assert apple["op_overhead_s"] == 10e-6 and ef.start("llamacpp", "gpu")["op_overhead_s"] == ef.START["op_overhead_s"]
    assert ef.prior_cost({**apple, "op_overhead_s": 4e-6}, 4, apple) == pytest.approx(0.5 * math.log(2))
    assert ef.prior_cost(apple, 4, apple) == 0
    # FlashAttention-2's mma.sync on Hopper: 0.7 of what wgmma reaches; a leave-one-source-out fold with too few rows
    # to fit starts every class from these defaults, facts kept
    fa2 = ef.neutral(load_engine("fa2"))["gpu"]
    assert fa2["sync_mma_fraction"] == 0.7 and fa2["matrix"] == ef.START["matrix"]
    # a number sitting at its class default is not "at a bound" even where that default is a grid end
    assert ef.at_bounds({**apple, "op_overhead_s": 10e-6}, apple) == []


def test_at_bounds_names_the_numbers_at_a_grid_end_but_not_a_neutral_default():
    assert ef.at_bounds({**ef.START, "memory": 1.0, "matrix": 0.15}) == ["matrix", "memory"]
    assert ef.at_bounds({**ef.START, "sync_mma_fraction": 1.0, "matrix": 0.5}) == []  # 1.0 is its neutral start
    assert ef.at_bounds({**ef.START, "step_overhead_s": 8e-3}) == ["step_overhead_s"]


def test_every_fitted_number_has_a_unit_and_a_cited_default_and_starts_inside_its_grid():
    assert set(ef.PARAMS) == set(ef.GRIDS) == set(ef.START)
    for key, (meaning, unit, default) in ef.PARAMS.items():
        assert meaning and unit and default
        grid = [g for g in ef.GRIDS[key] if g is not None]
        assert ef.START[key] is None or min(grid) <= ef.START[key] <= max(grid), key


def test_fit_sample_keeps_at_most_the_cap_per_source_in_a_fixed_order(monkeypatch):
    rows = ef.prepared(load_rows())
    first = ef.fit_sample(rows)
    assert first.groupby("file").size().max() <= ef.FIT_ROWS_PER_SOURCE
    # blind to the measured values: the same rows with other values give the same sample
    shuffled = rows.assign(value=rows.value[::-1].to_numpy())
    assert ef.fit_sample(shuffled)[["file", "row"]].equals(first[["file", "row"]])
    monkeypatch.setattr(ef, "FIT_ROWS_PER_SOURCE", 5)
    assert ef.fit_sample(rows).groupby("file").size().max() == 5


def test_fit_finds_the_matrix_fraction_that_made_the_rows():
    # the prefill rows of one llama.cpp source (Vulkan: FP16 GEMMs on cooperative matrices, which the matrix fraction
    # governs; CUDA's int8 MMQ rows run at a measured per-SM rate instead), their values replaced by what a profile
    # with matrix 0.5 predicts: the fit must return 0.5 (the pull toward 0.7 costs 2/8 x ln(0.7/0.5) = 0.084, while
    # 0.55 misses every row by up to ln(1.1) = 0.095 and still pays 2/8 x ln(0.7/0.55) = 0.060)
    rows = ef.prepared(load_rows())
    sub = rows[(rows.file == "llamacpp-vulkan.toml") & (rows.category == "prefill") & (rows.cls == "gpu")]
    sub = sub.reset_index(drop=True)
    base = load_engine("llamacpp")
    made = {**ef.START, "half_accumulate": True, "matrix": 0.5}
    truth = EngineProfile(base.id, base.name, base.description, base.fitted, {"gpu": made})
    value, _ = predict(sub, profiles={"llamacpp": truth})
    sub, value = sub[np.isfinite(value)].reset_index(drop=True), value[np.isfinite(value)]
    assert len(sub) >= 8
    params, err, n = ef.fit(sub.assign(value=value), "llamacpp", "gpu")
    assert params["matrix"] == 0.5 and err < 0.02 and n == len(sub)


def test_mlperf_rows_are_costed_with_their_submitters_stack():
    assert profile_of("mlperf", "TensorRT 10.11, CUDA 12.9; NVIDIA MLPerf harness (TensorRT-LLM)") == "trtllm"
    assert profile_of("mlperf", "vLLM 0.6.5.dev964+mlperf50, ROCm 6.3.1") == "vllm"
    assert profile_of("mlperf", "PyTorch 2.8.0+cpu") == "default"
    assert profile_of("mlperf", None) == "trtllm"  # the v4.1 NVIDIA rows say only the harness
    assert profile_of("sglang") == "vllm" and profile_of("llamacpp") == "llamacpp"


def test_shipped_profiles_stay_inside_their_grids_and_explain_any_bound():
    for path in engine_files():
        data = read_toml(path)
        note = data.get("at_bound", "")
        for cls, vals in data.items():
            if not isinstance(vals, dict):
                continue
            for key, v in vals.items():
                if key in ef.GRIDS and not isinstance(v, bool):
                    grid = [g for g in ef.GRIDS[key] if g is not None]
                    assert min(grid) <= v <= max(grid), f"{path.name} [{cls}] {key} = {v}"
            for key in ef.at_bounds({k: v for k, v in vals.items() if k in ef.GRIDS}):
                assert f"[{cls}] {key} = " in note, f"{path.name} [{cls}] {key} sits at a bound with no note"


def test_source_mean_weighs_each_source_the_same_at_power_one():
    from perfmodel.engine_fit import source_mean

    err = np.array([0.1, 0.1, 0.1, 0.5])
    src = np.array(["a", "a", "a", "b"])
    # power 1: (mean of a = 0.1 + mean of b = 0.5) / 2 = 0.3; power 0: the row mean, 0.8 / 4 = 0.2; power 0.5: rows
    # of a weigh 1/sqrt(3) each, b's 1: (3 x 0.1 / sqrt(3) + 0.5) / (3 / sqrt(3) + 1) = 0.6732 / 2.7321 = 0.2464
    assert source_mean(err, src, 1.0) == pytest.approx(0.3)
    assert source_mean(err, src, 0.0) == pytest.approx(0.2)
    assert source_mean(err, src, 0.5) == pytest.approx((0.3 / 3 ** 0.5 + 0.5) / (3 ** 0.5 + 1))
