"""Error bands: the interval arithmetic, the fitted table and its fallback, and leave-one-source-out coverage on
synthetic residuals whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from perfmodel import bands
from perfmodel.bands import Band, fit_table, lookup, rate_ratio, widening
from perfmodel.validation import loso_coverage


def test_band_applies_to_rates_and_times():
    b = Band(0.8, 1.25, 40, "gpu/x/decode")
    # a rate of 100 tok/s: measured/predicted between 0.8 and 1.25 -> 80 to 125
    assert b.apply(100.0, "decode_tokens_per_s") == (pytest.approx(80.0), pytest.approx(125.0))
    # a time of 10 ms: a faster system (ratio 1.25) takes 10 / 1.25 = 8 ms; a slower one 10 / 0.8 = 12.5 ms
    assert b.apply(0.010, "tpot_s") == (pytest.approx(0.008), pytest.approx(0.0125))
    # widened by 1.1: 0.8 / 1.1 and 1.25 x 1.1
    lo, hi = b.apply(100.0, "decode_tokens_per_s", 1.1)
    assert (lo, hi) == (pytest.approx(80 / 1.1), pytest.approx(137.5))


def test_rate_ratio_orients_times():
    r = rate_ratio([120.0, 0.012], [100.0, 0.010], ["decode_tokens_per_s", "tpot_s"])
    assert r.tolist() == pytest.approx([1.2, 0.010 / 0.012])


def test_widening_rule():
    # exp(share x ln(1 + u)) = (1 + u) ** share: u = 0.25 bounding all of a phase widens both ends by 25 %, half of
    # it by 11.8 %
    assert widening(1.0 * np.log(1.25)) == pytest.approx(1.25)
    assert widening(0.5 * np.log(1.25)) == pytest.approx(1.25 ** 0.5)
    assert widening(0.0) == 1.0


def _resid(n_per_source, sources, engine="llamacpp", category="decode", cls="gpu", seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(sources):
        for r in np.exp(rng.normal(0.0, 0.2, n_per_source)):
            rows.append({"file": f"src{s}", "engine": engine, "device_class": cls, "category": category, "ratio": r})
    return pd.DataFrame(rows)


def test_fit_table_quantiles_and_fallback():
    apple = _resid(5, 1, cls="apple", seed=1).assign(file="apple-src")
    cpu = _resid(20, 1, cls="cpu", seed=2).assign(file="cpu-src")
    d = pd.concat([_resid(20, 3), apple, cpu], ignore_index=True)
    table = fit_table(d)
    gpu = lookup(table, "gpu", "llamacpp", "decode")
    lo, hi = np.quantile(d[d.device_class == "gpu"].ratio, bands.QUANTILES)
    assert (gpu.low_ratio, gpu.high_ratio, gpu.rows) == (pytest.approx(lo), pytest.approx(hi), 60)
    # apple has 5 rows, under MIN_ROWS; cpu 20 rows but from one source, under MIN_SOURCES: both fall back to the
    # engine's band over all 85 rows
    for cls in ("apple", "cpu"):
        b = lookup(table, cls, "llamacpp", "decode")
        assert b.rows == 85 and b.basis == "llamacpp/decode"
    # an engine with no rows of its own: the pooled band of the fitted engines
    other = lookup(table, "gpu", "vllm", "decode")
    assert other.rows == 85 and other.basis == "fitted/decode"
    assert lookup(table, "gpu", "default", "decode") is None  # default rows are never pooled with fitted ones


def test_loso_coverage_is_near_nominal_when_sources_agree_and_low_when_one_is_shifted():
    same = _resid(60, 6)
    cov = loso_coverage(same).set_index(["engine", "category"]).coverage
    # lognormal residuals of one distribution: a 7.5-92.5 % band covers ~85 % of new rows
    assert 0.75 <= cov[("llamacpp", "decode")] <= 0.93
    shifted = same.copy()
    shifted.loc[shifted.file == "src0", "ratio"] *= 3.0  # one source measured 3x faster than the rest
    cov2 = loso_coverage(shifted).set_index(["engine", "category"]).coverage
    # its 60 of 360 rows fall outside bands fitted on the others (the others gain a little from wider bands)
    assert cov2[("llamacpp", "decode")] < cov[("llamacpp", "decode")] - 0.05


def test_shipped_table_has_the_large_categories():
    for cls, engine, cat in (("gpu", "llamacpp", "decode"), ("gpu", "default", "prefill"), ("gpu", "trtllm",
                                                                                              "serving")):
        b = bands.band_for(cls, engine, cat)
        assert b is not None and b.rows >= bands.MIN_ROWS and b.low_ratio < 1 < b.high_ratio * 1.5


def test_whole_request_band_is_composed_from_the_phase_bands_for_a_phase_only_engine():
    import perfmodel as pm

    est = pm.estimate("llama-3-8b", "rtx-4090", weights="q4_0", engine="llamacpp", prompt_len=512, gen_len=128)
    iv = est.intervals
    # llama.cpp's sources measure phases, not requests: e2e = TTFT + 127 decode steps (+ host time per step, which
    # llama.cpp's GPU profile sets), so its ends are TTFT's ends + 127 x TPOT's ends plus that host time
    rest = est.e2e_latency_s - est.ttft_s - 127 * est.tpot_s
    assert iv["e2e_latency_s"]["low"] == pytest.approx(rest + iv["ttft_s"]["low"] + 127 * iv["tpot_s"]["low"])
    assert iv["e2e_latency_s"]["high"] == pytest.approx(rest + iv["ttft_s"]["high"] + 127 * iv["tpot_s"]["high"])
    # throughput = batch x gen / e2e, so its ends swap
    assert iv["throughput_tokens_per_s"]["low"] == pytest.approx(128 / iv["e2e_latency_s"]["high"])
    assert "+" in iv["e2e_latency_s"]["basis"]
    # an engine with serving rows of its own keeps its serving band
    trt = pm.estimate("llama-3-8b", "h100-sxm", batch=64, prompt_len=512, gen_len=128, engine="trtllm")
    assert trt.intervals["throughput_tokens_per_s"]["basis"].startswith("gpu/trtllm/serving")
