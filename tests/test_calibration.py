"""Calibration: the fit recovers what synthetic data was generated with; profiles round-trip and refuse corruption."""

import numpy as np
import pandas as pd
import pytest

import perfmodel as pm
from perfmodel.calibration import Calibrator, level_of, read_profile, run_suite, write_profile
from perfmodel.calibration.profile import host_fingerprint, to_toml
from perfmodel.cost import Machine
from perfmodel.graph import OpKind, Parallel

LEVELS = [("L2", 1 * 2**20), ("L3", 32 * 2**20), ("DRAM", 64e9)]
TRUE_BW = {"L2": 80e9, "L3": 40e9, "DRAM": 15e9}
TRUE = {"gemm.fp32": (8e-6, 120e9, 0.9), "norm.fp32": (20e-6, 3e9, 0.5), "elementwise.fp32": (2e-6, 50e9, 0.8)}


def synthetic(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Measurements generated from known level bandwidths and (t0, R, e) per class."""
    rng = np.random.default_rng(seed)
    rows = []
    for ws in np.geomspace(64e3, 1e9, 14):  # add streams: 3 arrays, bytes = working set
        t = 1e-6 + ws / TRUE_BW[level_of(np.array([ws]), LEVELS)[0]]
        rows.append(("stream.add", f"add {ws:.0f}", "fp32", ws / 12, ws, ws, t))
    for key, (t0, rate, eff) in TRUE.items():
        cls = key.split(".")[0]
        for f, b in zip(np.geomspace(1e5, 1e11, 12), np.geomspace(1e4, 5e8, 12)[::-1]):  # mix of both bounds
            bw = TRUE_BW[level_of(np.array([b]), LEVELS)[0]]
            t = t0 + max(f / rate, b / (eff * bw))
            rows.append((cls, f"{cls} {f:.0f}", "fp32", f, b, b, t))
    df = pd.DataFrame(rows, columns=["cls", "name", "dtype", "flops", "bytes", "working_set", "time_s"])
    df["time_s"] *= np.exp(noise * rng.standard_normal(len(df)))
    return df


def test_fit_recovers_the_generating_parameters():
    cal = Calibrator(LEVELS).fit(synthetic())
    for level, bw in TRUE_BW.items():
        assert cal.bandwidth_[level] == pytest.approx(bw, rel=0.02)
    for key, (t0, rate, eff) in TRUE.items():
        assert cal.rate_[key] == pytest.approx(rate, rel=0.02), key
        assert cal.mem_eff_[key] == pytest.approx(eff, rel=0.02), key
        assert cal.overhead_[key] == pytest.approx(t0, rel=0.1, abs=2e-7), key


def test_fit_with_noise_predicts_within_the_noise():
    df = synthetic(noise=0.05, seed=1)
    cal = Calibrator(LEVELS).fit(df)
    err = np.abs(cal.predict(df) / df.time_s - 1)
    assert np.median(err) < 0.06


def test_profile_round_trip_and_refusals(tmp_path):
    cal = Calibrator(LEVELS).fit(synthetic())
    eff = pm.Efficiency(level_bandwidth_bytes_per_s=cal.bandwidth_, rate_flops_per_s=cal.rate_,
                        memory_fraction=cal.mem_eff_, overhead_by_class_s=cal.overhead_, device_id="local",
                        host=host_fingerprint())
    path = write_profile(tmp_path / "p.toml", eff, "a,b\n1,2\n")
    back = read_profile(path, device_id="local")
    assert back.rate_flops_per_s == pytest.approx(eff.rate_flops_per_s)
    assert back.level_bandwidth_bytes_per_s == pytest.approx(eff.level_bandwidth_bytes_per_s)
    assert back.raw_sha256 and back.created
    assert (tmp_path / "p.csv").read_text() == "a,b\n1,2\n"
    with pytest.raises(pm.PerfmodelError, match="measured for 'local', not 'h100-sxm'"):
        read_profile(path, device_id="h100-sxm")
    (tmp_path / "p.csv").write_text("a,b\n1,3\n")  # edited raw data
    with pytest.raises(pm.PerfmodelError, match="do not match the checksum"):
        read_profile(path)
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    foreign = eff.model_copy(update={"host": {**host_fingerprint(), "cpu_model": "Some Other CPU"}})
    write_profile(tmp_path / "f.toml", foreign, "x\n")
    with pytest.raises(pm.PerfmodelError, match="measured on another machine"):
        read_profile(tmp_path / "f.toml")
    (tmp_path / "c.toml").write_text(to_toml(eff)[:-40])  # truncated
    with pytest.raises(pm.PerfmodelError, match="corrupt"):
        read_profile(tmp_path / "c.toml")


def test_writing_a_profile_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "p.toml"
    path.write_text("precious = 1\n")
    import perfmodel._io as io

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(pm.PerfmodelError, match="disk full; the old file, if any, is unchanged"):
        write_profile(path, pm.Efficiency(), "x\n")
    assert path.read_text() == "precious = 1\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cost_model_uses_calibrated_rates():
    d = pm.load_device("xeon-8480plus")
    eff = pm.Efficiency(rate_flops_per_s={"gemm.fp32": 1e12}, memory_fraction={"gemm.fp32": 0.5},
                        overhead_by_class_s={"gemm.fp32": 7e-6}, level_bandwidth_bytes_per_s={"DDR5": 200e9})
    mach = Machine(d, eff, Parallel())
    assert mach.peak(OpKind.MATMUL, pm.DType.BF16)[:2] == (1e12, "calibrated")  # bf16 falls back to fp32's class
    assert mach.memory_fraction(OpKind.MATMUL, pm.DType.FP32) == 0.5
    assert mach.overhead_for(OpKind.MATMUL, pm.DType.FP32) == 7e-6
    assert float(mach.bandwidth_for(1e12)) == 200e9  # measured main memory, no further efficiency
    # llama-2-7b fp32 decode step: (6,738,415,616 - 131,072,000 embedding - 266,240 norm) x 4 bytes = 26.43 GB of
    # matrices at 0.5 x 200 GB/s = 0.26428 s, plus 7 us for each of 4 x 32 + 1 matmul calls = 0.9 ms; the rest
    # (norms, KV, activations: uncalibrated classes) is small
    est = pm.estimate("llama-2-7b", d, batch=1, prompt_len=64, gen_len=2, weights="fp32", act="fp32", kv="fp32",
                      efficiency=eff)
    assert est.tpot_s == pytest.approx(26_428_309_504 / 100e9 + 129 * 7e-6, rel=0.005)
    assert 0 <= est.mfu <= 1 and 0 <= est.mbu <= 1


def test_run_suite_small():
    df = run_suite("numpy", "quick", progress=False,
                   kernels_filter=lambda k: k.name in ("add 64 KiB", "gemm 128x128x128", "add 16384"))
    assert set(df.name) == {"add 64 KiB", "gemm 128x128x128", "add 16384"}
    assert (df.time_s > 0).all() and (df.repeats >= 5).all()


def test_calibrate_cli_errors(capsys):
    from perfmodel.cli import main

    assert main(["calibrate", "--backend", "jax"]) == 2
    assert "--backend must be one of: numpy, torch" in capsys.readouterr().err
    assert main(["estimate", "--model", "gpt2", "--hardware", "h100", "--profile", "/nonexistent.toml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_suite_small_torch():
    pytest.importorskip("torch")
    names = {"gemm 128x128x128", "sdpa h16/4 s128 d64", "sdpa decode b1 h16/4 kv128 d64"}
    df = run_suite("torch", "quick", progress=False, kernels_filter=lambda k: k.name in names and k.dtype == "fp32")
    assert set(df.name) == names and (df.time_s > 0).all()
    assert set(df.cls) == {"gemm", "attention", "decode_attention"}


def test_gemm_rate_by_rows_is_recovered_and_non_decreasing():
    # GEMMs whose rate steps with rows (a BLAS switching kernels): 10, 50, 40 (a dip), 120 GFLOP/s at m = 2, 8, 16,
    # 64, each with two compute-bound shapes (K = N = 1024, fp32, in L2-free DRAM terms: bytes / 15 GB/s is far
    # below the compute time). Time = 5 us + FLOPs / rate(m).
    rate = {2: 10e9, 8: 50e9, 16: 40e9, 64: 120e9}
    rows = [("stream.add", f"add {ws:.0f}", "fp32", ws / 12, ws, ws, 0, 1e-6 + ws / TRUE_BW[level_of(
        np.array([ws]), LEVELS)[0]]) for ws in np.geomspace(64e3, 1e9, 14)]
    for m, r in rate.items():
        for k in (1024, 2048):
            f, b = 2.0 * m * k * k, 4.0 * (m * k + k * k + m * k)
            rows.append(("gemm", f"gemm {m}x{k}x{k}", "fp32", f, b, b, m, 5e-6 + f / r))
    df = pd.DataFrame(rows, columns=["cls", "name", "dtype", "flops", "bytes", "working_set", "rows", "time_s"])
    cal = Calibrator(LEVELS).fit(df)
    table = dict(cal.rate_by_rows_["gemm.fp32"])
    # the dip at 16 rows is pooled with 8 rows: the geometric mean of 50 and 40 GFLOP/s (equal weights)
    pooled = np.sqrt(50e9 * 40e9)
    assert table[2] == pytest.approx(10e9, rel=0.05) and table[64] == pytest.approx(120e9, rel=0.05)
    assert table[8] == pytest.approx(pooled, rel=0.05) and table[16] == pytest.approx(pooled, rel=0.05)
    assert list(table.values()) == sorted(table.values())
    # the cost model interpolates in log(rows): 32 rows sits halfway between 16 and 64 in log space
    d = pm.load_device("xeon-8480plus")
    eff = pm.Efficiency(rate_flops_per_s=cal.rate_, rate_by_rows=cal.rate_by_rows_,
                        level_bandwidth_bytes_per_s={"DDR5": 200e9})
    from perfmodel.cost import op_cost
    from perfmodel.graph import Op

    op = Op("x", OpKind.MATMUL, pm.DType.FP32, flops=1e9, rows=32)
    t = op_cost(op, Machine(d, eff, Parallel()), 200e9, 200e9)
    assert float(t["compute_s"]) == pytest.approx(1e9 / np.interp(np.log(32), np.log([16, 64]), [table[16], table[64]]))


def test_profile_round_trip_keeps_the_rows_table(tmp_path):
    eff = pm.Efficiency(rate_flops_per_s={"gemm.fp32": 1e11}, rate_by_rows={"gemm.fp32": [(1.0, 1e10), (64.0, 1e11)]},
                        device_id="local", host=host_fingerprint())
    back = read_profile(write_profile(tmp_path / "p.toml", eff, "x\n"), device_id="local")
    assert back.rate_by_rows == {"gemm.fp32": [(1.0, 1e10), (64.0, 1e11)]}


def test_ops_pick_their_own_kernel_class():
    from perfmodel.cost import op_class, op_cost
    from perfmodel.graph import Op

    d = pm.load_device("xeon-8480plus")
    fp32 = pm.DType.FP32
    # RMSNorm and LayerNorm, SiLU and GELU are calibrated apart; a profile without them falls back to norm/activation
    assert op_class(Op("layers.norm", OpKind.NORM, fp32, variant="rmsnorm")) == "rmsnorm"
    assert op_class(Op("layers.mlp.act", OpKind.ELEMENTWISE, fp32, variant="gelu_tanh")) == "gelu"
    assert op_class(Op("layers.attn.residual", OpKind.ELEMENTWISE, fp32, variant="")) == "elementwise"
    old = Machine(d, pm.Efficiency(rate_flops_per_s={"norm.fp32": 1e9}), Parallel())
    assert old.calibrated_key(OpKind.NORM, fp32, "rmsnorm") == "norm.fp32"
    # one query per sequence runs the decode-attention class, a prompt the attention class (2 GFLOP/s vs 50)
    eff = pm.Efficiency(rate_flops_per_s={"attention.fp32": 50e9, "decode_attention.fp32": 2e9},
                        level_bandwidth_bytes_per_s={"DDR5": 200e9})
    mach = Machine(d, eff, Parallel())
    for q, rate in ((1, 2e9), (128, 50e9)):
        op = Op("a", OpKind.ATTENTION, fp32, flops=1e9, rows=q)
        assert float(op_cost(op, mach, 200e9, 200e9)["compute_s"]) == pytest.approx(1e9 / rate)
    # the lowered graph marks them: decode attention has one query row, the norm and activation their variants
    from perfmodel.graph import Pass, Precision, lower

    spec = pm.load_model("llama-3.1-8b")
    ops = {o.name: o for o in lower(spec, Pass("decoder", 2, 1, 100), Precision(fp32, fp32, fp32), Parallel())}
    assert ops["layers.attn.attention"].rows == 1
    assert ops["layers.norm"].variant == "rmsnorm" and ops["layers.mlp.act"].variant == "silu"


def test_an_edited_profile_is_refused_and_a_written_one_reads_back(tmp_path):
    path = tmp_path / "p.toml"
    eff = pm.Efficiency(matrix=0.5, rate_flops_per_s={"gemm.fp32": 1.25e11}, rate_by_rows={"gemm.fp32": [(1, 1e9),
                        (64, 1e11)]}, device_id="h100-sxm")
    write_profile(path, eff, "name,time_s\ngemm,1\n")
    back = read_profile(path, device_id="h100-sxm")  # written values read back to the same checksum
    assert back.values_sha256 and back.matrix == 0.5
    path.write_text(path.read_text().replace("matrix = 0.5", "matrix = 0.9"))
    with pytest.raises(pm.PerfmodelError, match="values do not match the checksum"):
        read_profile(path, device_id="h100-sxm")
    # a calibrated profile without the checksum (an older version, or the line deleted) is refused too
    write_profile(path, eff, "name,time_s\ngemm,1\n")
    path.write_text("\n".join(x for x in path.read_text().splitlines() if not x.startswith("values_sha256")))
    with pytest.raises(pm.PerfmodelError, match="records no checksum of its values"):
        read_profile(path, device_id="h100-sxm")
    # a hand-written efficiency file (no calibration fields) is the user's own and is taken as it is
    own = tmp_path / "own.toml"
    own.write_text("matrix = 0.6\nmemory = 0.7\n")
    assert read_profile(own).matrix == 0.6
