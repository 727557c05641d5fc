import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm


@given(st.lists(st.tuples(st.sampled_from(["llama-2-7b", "mistral-7b", "gpt-oss-20b", "t5-base"]),
                          st.sampled_from(["h100-sxm", "mi300x", "xeon-8480plus"]),
                          st.integers(1, 32), st.integers(1, 900), st.integers(1, 100),
                          st.sampled_from(["bf16", "fp8", "q4_k_m"])), min_size=1, max_size=6))
@settings(max_examples=15, deadline=None)
def test_sweep_equals_single_estimates(rows):
    df = pd.DataFrame(rows, columns=["model", "hardware", "batch", "prompt", "gen", "weights"])
    res = pm.sweep(df, ignore_capacity=True)
    for i, (m, h, b, p, g, w) in enumerate(rows):
        est = pm.estimate(m, h, batch=b, prompt_len=p, gen_len=g, weights=w, ignore_capacity=True)
        for key in ("ttft_s", "e2e_latency_s", "throughput_tokens_per_s", "mfu", "mbu"):
            assert res.loc[i, key] == pytest.approx(getattr(est, key), rel=1e-9), key
        if g > 1:
            assert res.loc[i, "tpot_s"] == pytest.approx(est.tpot_s, rel=1e-9)
        assert res.loc[i, "total_bytes"] == pytest.approx(est.memory["total_bytes"])


def test_sweep_unknown_column():
    with pytest.raises(pm.PerfmodelError, match="unknown sweep column"):
        pm.sweep(pd.DataFrame({"model": ["gpt2"], "hardware": ["h100"], "bacth": [1]}))


def test_sweep_capacity_rows_flagged():
    df = pd.DataFrame({"model": ["mixtral-8x7b", "llama-2-7b"], "hardware": ["a100-80gb-sxm"] * 2})
    res = pm.sweep(df)
    assert "does not fit" in res.loc[0, "error"] and np.isnan(res.loc[0, "tpot_s"])
    assert res.loc[1, "error"] == "" and res.loc[1, "tpot_s"] > 0
