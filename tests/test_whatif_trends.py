"""What-if devices, sensitivities, inverse solves, sweeps, and trend fits: each checked against arithmetic done by
hand, synthetic data with a known answer, or an invariant that must hold for any input."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel import trends, whatif
from perfmodel.scenarios import grid, sweep

# Trend fits on synthetic data -----------------------------------------------------------------------------------------


def test_growth_recovers_a_known_exponential():
    years = np.arange(2000, 2021)
    g = trends.growth(years, 5 * 1.3 ** (years - 2000), "x")
    assert g.per_year == pytest.approx(0.3)
    assert g.doubling_years == pytest.approx(math.log(2) / math.log(1.3))  # 2.64 years
    assert g.per_2y == pytest.approx(1.69)
    assert (g.first_year, g.last_year, g.n) == (2000, 2020, 21) and g.r2 == pytest.approx(1.0)
    assert g.at(2010) == pytest.approx(5 * 1.3 ** 10)
    assert g.year_reaching(5 * 1.3 ** 25) == pytest.approx(2025)


@settings(max_examples=25, deadline=None)
@given(rate=st.floats(0.05, 1.0), start=st.floats(1e-3, 1e6), noise=st.integers(0, 2**31 - 1))
def test_growth_is_unbiased_under_symmetric_noise(rate, start, noise):
    # multiplicative noise of +-5 %, mirrored so that it cancels in the log fit: the fit must return the rate
    years = np.repeat(np.arange(1990, 2020), 2)
    e = np.random.default_rng(noise).uniform(-0.05, 0.05, 30)
    values = start * (1 + rate) ** (years - 1990) * np.exp(np.repeat(e, 2) * np.tile([1, -1], 30))
    assert trends.growth(years, values).per_year == pytest.approx(rate, rel=1e-9)


def test_breakpoint_finds_the_end_of_a_trend():
    # x1.5 a year until 2005, flat after. The 2005 point lies on both lines, so either split beside it (2004.5 or
    # 2005.5) fits exactly
    years = np.arange(1990, 2021, dtype=float)
    values = np.where(years <= 2005, 1.5 ** (years - 1990), 1.5 ** 15)
    year, before, after = trends.breakpoint(years, values)
    assert year in (2004.5, 2005.5)
    assert before.per_year == pytest.approx(0.5) and after.per_year == pytest.approx(0.0, abs=1e-9)


def test_fits_refuse_too_little_data():
    with pytest.raises(pm.PerfmodelError, match="at least 3 points"):
        trends.growth([2000, 2001], [1, 2], "cores")


def test_the_clock_stopped_scaling_in_the_mid_2000s():
    # Karl Rupp's series: exponential clock growth until the break, flat after (CPU clocks stall ~2004-2006)
    year, before, after = trends.clock_break()
    assert 2002 <= year <= 2008 and before.per_2y > 1.4 and 0.9 < after.per_2y < 1.1


def test_cpu_table_derives_per_core_figures_and_balance():
    t = trends.cpu_table()
    assert len(t) >= 30 and t.year.notna().all()
    x = t.set_index("id").loc["xeon-8480plus"]
    # 56 cores x 2.0 GHz x 64 FLOP/cycle = 7.168 TFLOP/s; 8 x 4800 MT/s x 8 B = 307.2 GB/s; 23.3 FLOP/byte
    assert x.vector_fp32_flops_per_s == pytest.approx(7.168e12)
    assert x.memory_bandwidth_bytes_per_s == pytest.approx(307.2e9)
    assert x.balance_flops_per_byte == pytest.approx(7.168e12 / 307.2e9)
    assert x.vector_fp32_flops_per_s_per_core == pytest.approx(128e9)
    # per-year envelope: one row per year, the largest value
    e = trends.envelope(t, "memory_bandwidth_bytes_per_s")
    assert e.year.is_unique and (e.set_index("year").memory_bandwidth_bytes_per_s
                                 == t.groupby("year").memory_bandwidth_bytes_per_s.max()).all()


def test_decode_intensity_is_about_the_batch_and_prefill_is_high():
    li = trends.llm_intensity(batches=(1, 64), contexts=(512,)).set_index(["phase", "batch"])
    # bf16 weights: 2 FLOPs per 2-byte weight per sequence -> ~1 FLOP/byte at batch 1, ~64 at batch 64 (less, as
    # KV reads grow with the batch); prefill of 512 tokens is far above both
    assert 0.8 < li.loc[("decode", 1)].matmul_flops_per_byte < 1.1
    assert 40 < li.loc[("decode", 64)].matmul_flops_per_byte < 64.5
    assert li.loc[("prefill", 1)].intensity_flops_per_byte > 200


# What-if devices ------------------------------------------------------------------------------------------------------


def test_scaled_cpu_recomputes_derived_peaks_and_bandwidth():
    x = pm.load_device("xeon-8480plus")
    y = whatif.scaled(x, units=112)
    assert y.peak_flops_per_s("vector", "fp32") == pytest.approx(2 * 7.168e12)
    assert y.peak_flops_per_s("matrix", "bf16") == pytest.approx(2 * 56 * 2.0e9 * 1024)  # AMX follows the cores
    assert y.levels[0].capacity_bytes == pytest.approx(2 * x.levels[0].capacity_bytes)  # 48 KiB per core
    assert y.main_memory.bandwidth_bytes_per_s == pytest.approx(307.2e9)  # cores do not add channels
    w = whatif.scaled(x, simd_width_bits=1024)
    assert w.peak_flops_per_s("vector", "fp32") == pytest.approx(2 * 7.168e12)
    assert w.peak_flops_per_s("matrix", "bf16") == x.peak_flops_per_s("matrix", "bf16")
    assert whatif.scaled(x, clock_ghz=3.0).peak_flops_per_s("vector", "fp32") == pytest.approx(56 * 3e9 * 64)
    # 12 channels x 6400 MT/s x 8 B = 614.4 GB/s; HBM outright; a factor on either
    assert whatif.scaled(x, memory_channels=12, memory_mt_per_s=6400).main_memory.bandwidth_bytes_per_s == \
        pytest.approx(614.4e9)
    assert whatif.scaled(x, memory_gb_per_s=1000).main_memory.bandwidth_bytes_per_s == pytest.approx(1e12)
    assert whatif.scaled(x, memory_channels=12, memory_bandwidth=2).main_memory.bandwidth_bytes_per_s == \
        pytest.approx(2 * 460.8e9)
    assert whatif.scaled(x, cache=2).levels[2].capacity_bytes == pytest.approx(2 * 105 * 2**20)


def test_scaled_gpu_scales_quoted_peaks_with_units_and_a_cpu_gains_amx():
    h = whatif.scaled("h100-sxm", units=66)  # half the SMs: the quoted 989.4 TFLOPS halves
    assert h.peak_flops_per_s("matrix", "bf16") == pytest.approx(989.4e12 / 2)
    assert h.main_memory.bandwidth_bytes_per_s == pytest.approx(3.35e12)
    e = whatif.scaled("epyc-9654", matrix_engine="xeon-8480plus")  # AMX's 1024 bf16 FLOPs/cycle on 96 Zen 4 cores
    assert e.peak_flops_per_s("matrix", "bf16") == pytest.approx(96 * 3.55e9 * 1024)


def test_scaled_refuses_what_it_cannot_do():
    with pytest.raises(pm.PerfmodelError, match="Did you mean 'memory_bandwidth'"):
        whatif.scaled("h100-sxm", memory_bandwith=2)
    with pytest.raises(pm.PerfmodelError, match="memory_bandwidth must be a number > 0"):
        whatif.scaled("h100-sxm", memory_bandwidth=-1)
    with pytest.raises(pm.PerfmodelError, match="not given as channels"):
        whatif.scaled("h100-sxm", memory_channels=12)


# Sensitivity, inverse, Pareto -----------------------------------------------------------------------------------------

CASES = st.sampled_from([("llama-3-8b", "xeon-8480plus", "bf16"), ("llama-3-8b", "h100-sxm", "bf16"),
                         ("mistral-7b", "epyc-9654", "q4_0"), ("gpt2", "a100-80gb-sxm", "fp16")])


@settings(max_examples=12, deadline=None)
@given(case=CASES, batch=st.sampled_from([1, 8, 64]), prompt=st.sampled_from([128, 1024]))
def test_more_of_any_resource_never_costs_tokens_per_second(case, batch, prompt):
    model, dev, w = case
    s = whatif.sensitivity(model, dev, pm.Workload(batch=batch, prompt_len=prompt, gen_len=32, weights=w))
    vals = s[["prefill_tokens_per_s", "decode_tokens_per_s", "throughput_tokens_per_s"]].to_numpy(dtype=float)
    assert (vals[np.isfinite(vals)] >= -1e-6).all()
    assert (vals[np.isfinite(vals)] <= 1 + 1e-6).all()  # nor buys more than in proportion


def test_batch1_decode_tracks_bandwidth_and_prefill_tracks_compute():
    s = whatif.sensitivity("llama-3-8b", "xeon-8480plus", pm.Workload(batch=1, prompt_len=1024, gen_len=64))
    s = s.set_index("parameter")
    assert s.loc["memory_bandwidth", "decode_tokens_per_s"] == pytest.approx(1.0, abs=0.02)
    assert s.loc["compute", "decode_tokens_per_s"] == pytest.approx(0.0, abs=0.02)
    assert s.loc["compute", "prefill_tokens_per_s"] > 0.7


@pytest.mark.parametrize("target,metric,param", [(20.0, "decode_tokens_per_s", "memory_bandwidth"),
                                                 (500.0, "prefill_tokens_per_s", "compute"),
                                                 (3.0, "decode_tokens_per_s", "memory_bandwidth")])
def test_inverse_solve_hits_its_target_when_re_estimated(target, metric, param):
    wl = pm.Workload(batch=1, prompt_len=512, gen_len=64)
    r = whatif.solve("llama-3-8b", "xeon-e5-2699v4", wl, target, metric, param)
    again = getattr(pm.estimate("llama-3-8b", r["device"], wl), metric)
    assert again >= target and again == pytest.approx(target, rel=2e-3)
    smaller = whatif.vary(pm.load_device("xeon-e5-2699v4"), param, r["factor"] * 0.99)
    assert getattr(pm.estimate("llama-3-8b", smaller, wl), metric) < target  # and it is the smallest such factor


def test_inverse_solve_says_when_the_parameter_cannot_reach_the_target():
    with pytest.raises(pm.PerfmodelError, match="something else bounds it"):
        whatif.solve("llama-3-8b", "xeon-8480plus", pm.Workload(batch=1, prompt_len=512, gen_len=64), 500.0,
                     "decode_tokens_per_s", "compute")


def test_pareto_front_keeps_exactly_the_non_dominated_batches():
    t = whatif.batch_table("llama-3-8b", "h100-sxm", pm.Workload(prompt_len=1024, gen_len=128))
    p = whatif.pareto(t)
    ok = t[t.fits]
    for r in ok.itertuples():
        dominated = ((ok.tpot_s <= r.tpot_s) & (ok.decode_tokens_per_s > r.decode_tokens_per_s * 1.001)).any()
        assert (r.batch in set(p.batch)) != dominated
    assert p.fits.all() and len(p) >= 3


# Sweeps ---------------------------------------------------------------------------------------------------------------


def test_grid_sweeps_every_combination_and_reports_progress(capsys):
    g = grid(model=["llama-3-8b", "gpt2"], hardware=["h100-sxm", "xeon-8480plus"], batch=[1, 8, 64],
             prompt=[128, 512], gen=64)
    assert len(g) == 2 * 2 * 3 * 2 and (g.gen == 64).all()
    res = sweep(g, progress=True)
    assert (res.error == "").all() and res.decode_tokens_per_s.notna().all()
    err = capsys.readouterr().err
    assert "sweep [" in err and "24/24 rows" in err
    with pytest.raises(pm.PerfmodelError, match="unknown grid axis"):
        grid(modle=["gpt2"])


# CLI ------------------------------------------------------------------------------------------------------------------


def test_whatif_and_trends_cli(capsys, tmp_path):
    from perfmodel.cli import main

    base = ["--model", "llama-3-8b", "--hardware", "xeon-8480plus"]
    assert main(["whatif", *base, "--set", "memory_bandwidth=2", "--sensitivity", "--target", "80", "--pareto",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"]["decode_tokens_per_s"] == pytest.approx(2 * out["base"]["decode_tokens_per_s"], rel=0.01)
    assert out["solve"]["reached"] >= 80 and {r["parameter"] for r in out["sensitivity"]} >= {"memory_bandwidth"}
    assert main(["whatif", *base, "--set", "bandwidth"]) == 2
    assert "PARAM=VALUE" in capsys.readouterr().err
    assert main(["whatif", *base, "--set", "memory_bandwith=2"]) == 2
    assert "Did you mean 'memory_bandwidth'" in capsys.readouterr().err
    assert main(["trends", "--json", "-o", str(tmp_path / "t.png")]) == 0
    h = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in h["cpu_growth"]} >= {"vector_fp32_flops_per_s", "memory_bandwidth_bytes_per_s"}
    assert h["published"][0]["per_2y"] == 3.0 and 2002 <= h["clock_break"]["year"] <= 2008
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.DataFrame(h["projections"]).bandwidth_share.between(0, 1).all()
    # training demand: a reference run's FLOPs against the best socket's peak
    run = h["training_demand"][0]
    assert run["model"] == "llama-3-8b" and run["url"].startswith("https://")
    assert run["best"]["socket_years"] == pytest.approx(run["train_flops"] / run["best"]["peak_flops_per_s"]
                                                        / trends.YEAR_S)
    assert h["training_growth"]["per_2y"] == pytest.approx(4.6 ** 2)


def test_training_demand_by_hand():
    from perfmodel.training import model_flops_per_token

    t = trends.cpu_table()
    d = trends.training_demand(t)
    assert len(d) == len(t) * len(trends.TRAIN_REFERENCE)
    # Llama 3 8B on 15 T tokens of 8,192: (6 N + 6 L H Q T) x 15e12 = 7.72e23 FLOPs (model_flops_per_token's
    # golden values are in tests/test_training.py)
    flops = model_flops_per_token(pm.load_model("llama-3-8b"), 8192) * 15e12
    assert flops == pytest.approx(7.72e23, rel=1e-3)
    spr = d[(d.model == "llama-3-8b") & (d.hardware == "xeon-8480plus")].iloc[0]
    # Sapphire Rapids' AMX bf16 peak beats its fp32 vectors: the run's FLOPs over it, in years
    dev = pm.load_device("xeon-8480plus")
    assert spr.unit == "matrix bf16"
    assert spr.socket_years == pytest.approx(flops / dev.peak_flops_per_s("matrix", "bf16") / (365.25 * 86400))
    old = d[(d.model == "llama-3-8b") & (d.unit == "vector fp32")]
    assert len(old) and (old.socket_years > spr.socket_years).all()  # no socket without matrix units does better


def test_compute_scales_estimated_peaks_too():
    # the EPYC 9965's vector peak is estimated (FMA pipes x SIMD width, not in its file): a what-if x2 of compute
    # must still double it, and prefill then follows compute
    base, fast = whatif.scaled("epyc-9965"), whatif.scaled("epyc-9965", compute=2)
    assert fast.peak_flops_per_s("vector", "fp32") == pytest.approx(2 * base.peak_flops_per_s("vector", "fp32"))
    s = whatif.sensitivity("llama-3-8b", "epyc-9965", pm.Workload(batch=1, prompt_len=512, gen_len=128),
                           params=("compute",)).set_index("parameter")
    assert s.loc["compute", "prefill_tokens_per_s"] > 0.9
