"""The flat evaluator: a model lowered once into coefficient tables (perfmodel.poly, perfmodel.table) gives every op
the quantities the numeric lowering gives, and rows on many devices cost what they cost one device at a time."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel.dtypes import DType
from perfmodel.evaluate import evaluate, evaluate_rows, machine
from perfmodel.graph import Parallel, Pass, Precision, causal_pairs, lower
from perfmodel.poly import FUNCTIONS, Poly, Program, call
from perfmodel.table import FIELDS, lowered

B, P = Poly.var("B"), Poly.var("P")


def test_poly_arithmetic():
    prod = (B + 1) * (B - 1)
    assert len(prod.terms) == 2 and not (prod - (B * B - 1)).terms  # (B + 1)(B - 1) = B^2 - 1
    assert not (B * P - P * B).terms  # monomials are sorted, so the products cancel
    assert list((2.0 * B / 4).terms.values()) == [0.5]


def test_poly_refuses_truth_tests_and_arrays():
    with pytest.raises(TypeError):
        bool(B)
    with pytest.raises(TypeError):
        B * np.ones(3)


def test_function_atoms_evaluate_as_their_numeric_form():
    # causal pairs of a 5-token prompt: 1 + 2 + 3 + 4 + 5 = 15; under a window of 2: 1 + 2 + 2 + 2 + 2 = 9
    full, windowed = causal_pairs(P, P), causal_pairs(P, P, 2.0)
    prog = Program(tuple(m for p in (full, windowed) for m in p.terms))
    vals = prog.run({"P": np.array([5.0, 1.0])}, 2)
    assert vals[:, 0].tolist() == [15.0, 9.0] and vals[:, 1].tolist() == [1.0, 1.0]
    assert call("expected_experts", 4.0, params=(8, 2)) == FUNCTIONS["expected_experts"](4.0, 8, 2)


MODELS = ["llama-3-8b", "mixtral-8x7b", "gemma-2-9b", "deepseek-v2-lite", "t5-base", "bert-base", "gpt-oss-20b",
          "gpt2", "falcon-7b"]
CONFIGS = st.tuples(
    st.sampled_from(MODELS),
    st.sampled_from([Precision(), Precision(DType.Q4_0, gemm=DType.INT8, dequant="fp16_copy"),
                     Precision(DType.MXFP4, DType.FP8), Precision(DType.INT4, act=DType.FP16)]),
    st.sampled_from([Parallel(), Parallel(2, 1), Parallel(1, 2), Parallel(4, 2)]),
    st.booleans(),
    st.lists(st.tuples(st.integers(1, 256), st.integers(1, 9000), st.integers(0, 700)), min_size=1, max_size=6),
    st.integers(1, 12000),
)


@settings(max_examples=60, deadline=None)
@given(CONFIGS)
def test_tables_equal_the_numeric_lowering(cfg):
    name, prec, par, fused, rows, context = cfg
    m = pm.load_model(name)
    if m.n_heads % par.tp or par.pp > m.n_layers:
        return
    b, p, g = (np.array(x, dtype=float) for x in zip(*rows))
    low = lowered(m, prec, par, fused)
    lg = np.where(g > 0, 1.0, p)
    got = low.prefill.quantities({"B": b, "P": p, "LG": lg}, len(b))
    passes = ({"decoder": [Pass("decoder", b, p, p, logits=lg)], "encoder": [Pass("encoder", b, p, p)]}
              .get(m.arch) or [Pass("encoder", b, p, p), Pass("decoder", b, 1.0, 1.0, cross_len=p, logits=1.0)])
    _same(got, [op for ps in passes for op in lower(m, ps, prec, par, fused)], len(b))
    if low.decode is not None:
        c = float(context)
        got = low.decode.quantities({"B": b, "C": c, "X": p}, len(b))
        cross = p if m.arch == "encoder_decoder" else 0.0
        _same(got, lower(m, Pass("decoder", b, 1.0, c, cross_len=cross, logits=1.0), prec, par, fused), len(b))


def _same(got, ops, n):
    assert len(ops) == len(next(iter(got.values())))
    for f in FIELDS:
        want = np.array([np.broadcast_to(np.asarray(getattr(op, f), dtype=float), (n,)) for op in ops])
        np.testing.assert_allclose(got[f], want, rtol=1e-12, atol=0, err_msg=f)


def test_totals_are_the_sum_of_the_ops():
    low = lowered(pm.load_model("mixtral-8x7b"), Precision(), Parallel(2, 1), True)
    env, n = {"B": np.array([1.0, 7.0]), "P": np.array([100.0, 3000.0]), "LG": np.array([1.0, 1.0])}, 2
    q = low.prefill.quantities(env, n)
    counts = np.array([op.count for op in low.prefill.shells], dtype=float)[:, None]
    tot = low.prefill.totals(env, n)
    for i, f in enumerate(FIELDS[:-2]):  # rows and keys are per op, not summed
        np.testing.assert_allclose(tot[i], (q[f] * counts).sum(axis=0), rtol=1e-12)


def test_rows_on_several_devices_cost_what_each_costs_alone():
    m = pm.load_model("llama-3-8b")
    wl = pm.Workload(weights="q4_0", gemm="int8")
    # three machines: datasheet defaults, a fitted engine profile, and a calibration-like profile with a GEMM rate
    # table and per-class rates (the one-row GEMV class among them)
    cal = pm.Efficiency(rate_flops_per_s={"gemm.int8": 2e14, "gemv.int8": 3e12, "elementwise.bf16": 1e12},
                        rate_by_rows={"gemm.int8": [(1.0, 1e12), (512.0, 2e14)]}, op_overhead_s=3e-6)
    devices = [pm.load_device("h100-sxm"), pm.load_device("rtx-4090"), pm.load_device("xeon-8480plus")]
    effs = [None, pm.efficiency_for(devices[1], "llamacpp")[0], cal]
    machines = tuple(machine(d, e, wl.parallel) for d, e in zip(devices, effs))
    rng = np.random.default_rng(3)
    n = 30
    mi = rng.integers(0, 3, n)
    b, p, g = rng.integers(1, 64, n), rng.integers(1, 8000, n), rng.integers(1, 600, n)
    together = evaluate_rows(m, wl, machines, mi, b, p, g)
    for j, (d, e) in enumerate(zip(devices, effs)):
        sel = mi == j
        alone = evaluate(m, d, wl, e, b[sel], p[sel], g[sel])
        for k, v in alone.metrics.items():
            np.testing.assert_allclose(together.metrics[k][sel], v, rtol=1e-12, err_msg=k)
        assert (together.decode.bound()[sel] == alone.decode.bound()).all()
        np.testing.assert_allclose(together.memory.total_bytes[sel], alone.memory.total_bytes, rtol=1e-12)


def test_sweep_keeps_other_devices_when_one_lacks_a_figure(tmp_path):
    bare = tmp_path / "bare.toml"  # no compute figure and no family: no rule supplies a peak
    bare.write_text('id = "bare"\nname = "bare"\nkind = "gpu"\nvendor = "v"\n[[memory]]\nname = "M"\n'
                    'capacity_gb = 80\nbandwidth_gb_per_s = 100\n')
    import pandas as pd

    rows = pd.DataFrame({"model": "gpt2", "hardware": [str(bare), "h100-sxm", str(bare), "a100-80gb-sxm"],
                         "batch": 1, "prompt": 64, "gen": 8})
    res = pm.sweep(rows, progress=False)
    assert res.error.tolist()[1] == res.error.tolist()[3] == ""
    assert "has no figure for" in res.error[0] and res.error[0] == res.error[2]
    assert res.tpot_s[1] > 0 and math.isnan(res.tpot_s[0])
