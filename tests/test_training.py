"""Training and fine-tuning: memory by the ZeRO paper and Korthikanti et al., FLOPs, step time, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel.cli import main
from perfmodel.errors import PerfmodelError
from perfmodel.training import (TrainConfig, layer_activation_bytes, lora_params, model_flops_per_token,
                                state_bytes_per_param, train, zero_shard)


def test_zero_paper_worked_example():
    # ZeRO (Rajbhandari et al. 2020), fig. 1 / sec. 5: a 7.5 B model on 64 data-parallel GPUs with Adam in mixed
    # precision (K = 12): baseline (2 + 2 + 12) x 7.5e9 = 120 GB; P_os 2 + 2 + 12 / 64 -> 31.4 GB; P_os+g
    # 2 + 14 / 64 -> 16.6 GB; P_os+g+p 16 / 64 -> 1.88 GB
    states = state_bytes_per_param("bf16", "adamw")
    assert states == {"weights": 2.0, "gradients": 2.0, "optimizer": 12.0}
    got = [sum(zero_shard(states, 7.5e9, z, 64).values()) for z in range(4)]
    assert got == [120e9, 31.40625e9, 16.640625e9, 1.875e9]


GPT = pm.load_model("gpt-3-175b")  # h 12288, a 96: a GPT layer (MHA, 4h GELU MLP)


@pytest.mark.parametrize("s,b", [(2048, 1), (2048, 4), (4096, 1)])
def test_korthikanti_activation_formulas(s, b):
    # Korthikanti et al. 2022, sec. 4: bytes a layer keeps at 16 bits with dropout
    h, a, t = 12288, 96, 8
    full = s * b * h * (34 + 5 * a * s / h)  # eq. (1), no parallelism
    assert layer_activation_bytes(GPT, s, b, flash=False, dropout=True) == pytest.approx(full, rel=1e-12)
    tp_only = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))  # eq. (2), tensor parallel
    assert layer_activation_bytes(GPT, s, b, t, False, flash=False, dropout=True) == pytest.approx(tp_only, rel=1e-12)
    tp_sp = s * b * h / t * (34 + 5 * a * s / h)  # eq. (3), with sequence parallelism
    assert layer_activation_bytes(GPT, s, b, t, True, flash=False, dropout=True) == pytest.approx(tp_sp, rel=1e-12)
    selective = s * b * h * 34 / t  # eq. (4): the scores recomputed
    assert layer_activation_bytes(GPT, s, b, t, True, "selective", False, True) == pytest.approx(selective, rel=1e-12)
    assert layer_activation_bytes(GPT, s, b, t, True, "none", True, True) == pytest.approx(selective, rel=1e-12)
    assert layer_activation_bytes(GPT, s, b, t, True, "full") == pytest.approx(2 * s * b * h / t, rel=1e-12)


def test_model_flops_and_lora_params_by_hand():
    m = pm.load_model("llama-2-7b")
    # N = 6,738,415,616 - embedding 131,072,000 - norms 266,240 = 6,607,077,376 (the untied LM head stays);
    # 6 N = 39,642,464,256; attention 12 x 32 layers x 32 heads x 128 x 4096 = 6,442,450,944
    assert model_flops_per_token(m, 4096, causal=False) == 39_642_464_256 + 6_442_450_944
    assert model_flops_per_token(m, 4096) == 39_642_464_256 + 6_442_450_944 / 2  # the causal pairs only
    assert model_flops_per_token(m, 4096, weight_gradients=False) == 4 * 6_607_077_376 + 6_442_450_944 / 2
    # LoRA rank 8: a layer's q, k, v, o (4096 + 4096 each: 32,768) and gate, up, down (3 x (4096 + 11008) = 45,312),
    # x 8 x 32 layers = 19,988,480
    assert lora_params(m, 8) == 19_988_480


def test_pipeline_bubble_is_p_minus_1_slots():
    base = TrainConfig(2048, 64, tp=8, pp=4, dp=2)  # m = 64 / 2 = 32 micro-batches
    e = train("llama-3-70b", "h100-sxm", base)
    slot = e.breakdown["bubble"] / 3  # p - 1 = 3 slots of one micro-batch's forward + backward
    assert e.breakdown["compute"] == pytest.approx(32 * slot, rel=1e-6)  # 1F1B: (m + p - 1) slots in all
    inter = train("llama-3-70b", "h100-sxm", replace(base, interleave=2))
    assert inter.breakdown["bubble"] == pytest.approx(e.breakdown["bubble"] / 2, rel=1e-9)  # (p - 1) / v


_LAYOUTS = st.tuples(st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 8, 32]),
                     st.integers(0, 3), st.sampled_from(["none", "selective", "full"]), st.sampled_from([1, 2]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LAYOUTS, st.sampled_from(["llama-3-8b", "mixtral-8x7b", "gpt-3-175b", "llama-3.2-1b"]),
       st.sampled_from(["h100-sxm", "a100-80gb-sxm", "mi300x"]), st.sampled_from([512, 2048, 32768]))
def test_sharding_and_mfu_invariants(layout, model, hw, seq):
    tp, pp, dp, zero, rc, mb = layout
    cfg = TrainConfig(seq, dp * mb * 4, micro_batch=mb, tp=tp, pp=pp, dp=dp, zero=zero, recompute=rc)
    e = train(model, hw, cfg)
    m = e.model
    states = e.memory["weights"] + e.memory["gradients"] + e.memory["optimizer"]
    # every device's share together holds at least the whole of the model's states (replicas only add)
    assert states * cfg.devices >= 16.0 * m.params_total() * (1 - 1e-9)
    assert 0.0 < e.mfu <= e.hfu <= 1.0
    assert e.step_time_s == pytest.approx(sum(e.breakdown.values()), rel=1e-9)
    # more sharding never needs more memory a device
    if zero < 3 and dp > 1:
        assert train(model, hw, replace(cfg, zero=zero + 1)).memory["total"] <= e.memory["total"]


def test_bad_configs_refused():
    with pytest.raises(PerfmodelError, match="--zero must be"):
        TrainConfig(2048, 8, zero=4)
    with pytest.raises(PerfmodelError, match="multiple of dp x micro-batch"):
        TrainConfig(2048, 10, dp=4)
    with pytest.raises(PerfmodelError, match="Did you mean"):
        TrainConfig(2048, 8, recompute="selectve")
    with pytest.raises(PerfmodelError, match="give --lora"):
        TrainConfig(2048, 8, quantize_base="q4_0")
    with pytest.raises(PerfmodelError, match="decoder-only"):
        train("bert-base", "h100-sxm", TrainConfig(512, 8))
    with pytest.raises(PerfmodelError, match="no experts|has none"):
        train("llama-3-8b", "h100-sxm", TrainConfig(512, 8, ep=2))


def test_cli_full_finetune_does_not_fit_and_lora_does(capsys):
    args = ["train", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--devices", "1", "--seq", "4096",
            "--global-batch", "8", "--zero", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    # 8.03 B x 16 B = 128 GB of model states alone: more than the 80 GB
    assert "does not fit" in err and "Would fit: --lora 16" in err and "Traceback" not in err
    assert main(args + ["--lora", "16", "--json", "--tokens", "1e9"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("step_time_s", "tokens_per_s", "mfu", "hfu", "memory", "breakdown", "time_to_train_s"):
        assert key in out
    assert out["memory"]["fits"] and out["memory"]["total_bytes"] < 80e9
    assert out["time_to_train_s"] == pytest.approx(1e9 / out["tokens_per_s"])


@pytest.mark.parametrize("args,msg", [(["--seq", "-1"], "--seq"), (["--precision", "fp4"], "--precision"),
                                      (["--devices", "6", "--tp", "4"], "multiple of tp"),
                                      (["--sequence-parallel", "yes"], "on or off")])
def test_cli_train_bad_input(capsys, args, msg):
    assert main(["train", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--global-batch", "8", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


# Published runs (validation/train) ---------------------------------------------------------------------------------

def test_training_runs_load_and_are_predicted():
    from perfmodel.train_validation import load_train_rows, predict_train

    rows = load_train_rows()
    assert rows.file.nunique() >= 5 and (rows.url.str.startswith("http")).all()
    assert (rows["where"].str.len() > 5).all() and (rows.value > 0).all()
    # a run given as a step time and the TFLOP/s computed from it is scored once: llm-foundry's table gives
    # tokens/s a GPU, MFU and model TFLOP/s of each run, and only the tokens/s count
    foundry = rows[rows.file.str.startswith("llmfoundry")]
    assert set(foundry[foundry.scored].metric) == {"tokens_per_s_per_gpu"}
    assert set(foundry[~foundry.scored].derived_from) == {"tokens_per_s_per_gpu"}
    sample = rows[rows.scored].groupby("file").head(3)
    pred, why = predict_train(sample.reset_index(drop=True))
    assert np.isfinite(pred).all(), set(why)
    assert (pred > 0).all()


def test_training_rows_refused_with_the_field(tmp_path):
    from perfmodel.train_validation import load_train_rows

    good = ('[source]\ntitle = "t"\nurl = "https://x"\n[defaults]\nhardware = "h100-sxm"\nmodel = "llama-3-8b"\n'
            'seq_len = 2048\nn_devices = 8\n')
    (tmp_path / "a.toml").write_text(good + '[[rows]]\nmetric = "step_time_s"\nvalue = 1.0\nwhere = "x"\n'
                                            'micro_bach = 2\n')
    with pytest.raises(PerfmodelError, match=r"a.toml row 1: unknown field 'micro_bach'.*Did you mean 'micro_batch'"):
        load_train_rows([tmp_path / "a.toml"])
    (tmp_path / "b.toml").write_text(good + '[[rows]]\nmetric = "tflops"\nvalue = 1.0\nwhere = "x"\n')
    with pytest.raises(PerfmodelError, match="metric 'tflops' is not one of"):
        load_train_rows([tmp_path / "b.toml"])
    (tmp_path / "c.toml").write_text(good + '[[rows]]\nmetric = "mfu"\nvalue = 0.4\nwhere = "x"\nflops = "6n"\n')
    with pytest.raises(PerfmodelError, match="flops must be one of"):
        load_train_rows([tmp_path / "c.toml"])
    (tmp_path / "d.toml").write_text(good + '[[rows]]\nmetric = "step_time_s"\nvalue = 1.0\nwhere = "x"\n'
                                            '[[rows]]\nmetric = "tflops_per_gpu"\nvalue = 400.0\nwhere = "y"\n')
    rows = load_train_rows([tmp_path / "d.toml"])
    assert list(rows.scored) == [True, False] and rows.derived_from[1] == "step_time_s"


def test_megatron_flop_count_by_hand():
    # Narayanan et al. 2021, eq. 3, GPT 1.7B of Table 1 (h 2304, l 24, V 51200) at s 2048, B 512:
    # 96 x 512 x 2048 x 24 x 2304^2 x (1 + 2048 / 13824 + 51200 / 884736) = 1.28247e16 x 1.20602 = 1.54668e16
    from perfmodel.train_validation import row_model, source_flops

    m = row_model(dict(model_name="GPT 1.7B", layers=24, hidden=2304, heads=24, vocab=51200, seq_len=2048))
    cfg = TrainConfig(2048, 512, dp=64, micro_batch=8)
    f = source_flops(m, cfg, "megatron96")
    assert f == pytest.approx(96 * 512 * 2048 * 24 * 2304**2 * (1 + 2048 / 13824 + 51200 / 884736), rel=1e-12)
    assert f == pytest.approx(1.54668e16, rel=1e-4)
    assert source_flops(m, cfg, "megatron72") < f


# Expert parallelism and the layout search ---------------------------------------------------------------------------

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(1, 1), (1, 2), (1, 8), (2, 2), (2, 8), (8, 2), (8, 8)]), st.integers(0, 3),
       st.sampled_from(["none", "full"]), st.sampled_from(["mixtral-8x7b", "qwen3-30b-a3b"]))
def test_expert_parallel_invariants(tp_ep, zero, rc, model):
    tp, ep = tp_ep
    dp = 8 // tp
    cfg = TrainConfig(4096, dp * 4, tp=tp, ep=ep, dp=dp, zero=zero, recompute=rc)
    e = train(model, "h100-sxm", cfg)
    states = e.memory["weights"] + e.memory["gradients"] + e.memory["optimizer"]
    assert states * cfg.devices >= 16.0 * e.model.params_total() * (1 - 1e-9)
    assert 0.0 < e.mfu <= e.hfu <= 1.0
    # without tensor parallelism the experts' work a device does is its own micro-batch's, however the experts are
    # spread over the data-parallel ranks: not less than with every expert on every rank (ep 1; counting the
    # micro-batch alone against ep ranks' experts made it up to half), and the all-to-alls at most double it. (With
    # tp > 1, ep 1 splits each expert over the tp ranks, narrower GEMMs: ep may then be faster, rightly.)
    if tp == 1:
        plain = train(model, "h100-sxm", replace(cfg, ep=1))
        assert 0.85 * plain.breakdown["compute"] <= e.breakdown["compute"] <= 2.0 * plain.breakdown["compute"]


def test_all_to_alls_run_again_in_the_backward(monkeypatch):
    from perfmodel import training
    from perfmodel.training import _Job, _passes

    from perfmodel.engines import efficiency_for
    from perfmodel.evaluate import evaluate

    m, d = pm.load_model("mixtral-8x7b"), pm.load_device("h100-sxm")
    eff = efficiency_for(d, None)[0]
    job = _Job.of(m, d, TrainConfig(4096, 64))
    mb = np.array([1, 2])
    with_comm = _passes(m, d, eff, job, 1, 1, 8, mb)
    monkeypatch.setitem(training.BACKWARD, training.OpKind.COMM, 0.0)
    without = _passes(m, d, eff, job, 1, 1, 8, mb)
    # what the backward charges for collectives is the forward's dispatch and combine all-to-alls, once more
    wl = pm.Workload(batch=8, prompt_len=4096, gen_len=1, ep=8, logits="all", devices=None)
    ev = evaluate(m, d, wl, eff, mb * 8.0, np.full(2, 4096.0), np.ones(2), detail=False)
    t = np.asarray(ev.prefill.values["time_s"], dtype=float)
    comm = sum(t[i] for i, op in enumerate(ev.prefill.ops) if op.kind == training.OpKind.COMM)
    assert {op.name.split(".")[-1] for op in ev.prefill.ops if op.kind == training.OpKind.COMM} == {"dispatch",
                                                                                                     "combine"}
    assert with_comm["bwd"] - without["bwd"] == pytest.approx(comm, rel=1e-9)
    assert (comm > 0).all()


def test_training_plan_is_train_at_each_layout():
    from perfmodel.plan import plan_train

    res = plan_train("llama-3-8b", "h100-sxm", seq_len=2048, global_batch=64, devices=8)
    assert res["devices"] == 8 and res["fit"] > 10 and res["best"] == res["top"][0]
    assert res["best"]["memory_per_device_bytes"] <= 80e9
    assert [p["tokens_per_s"] for p in res["top"]] == sorted((p["tokens_per_s"] for p in res["top"]), reverse=True)
    # the front: less memory, then more speed, strictly
    mem = [p["memory_per_device_bytes"] for p in res["front"]]
    thr = [p["tokens_per_s"] for p in res["front"]]
    assert mem == sorted(mem) and thr == sorted(thr) and len(set(thr)) == len(thr)
    # the vectorised search costs each layout as train() does alone
    for p in res["top"][:3] + res["front"][:3]:
        cfg = TrainConfig(2048, 64, micro_batch=p["micro_batch"], tp=p["tp"], pp=p["pp"], cp=p["cp"], ep=p["ep"],
                          dp=p["dp"], zero=p["zero"], recompute=p["recompute"])
        e = train("llama-3-8b", "h100-sxm", cfg)
        assert e.tokens_per_s == pytest.approx(p["tokens_per_s"], rel=1e-12)
        assert e.memory["total"] == pytest.approx(p["memory_per_device_bytes"], rel=1e-12)
        assert e.mfu == pytest.approx(p["mfu"], rel=1e-12)


def test_cli_plan_train(capsys):
    args = ["plan", "--train", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--devices", "8", "--seq", "2048",
            "--global-batch", "64"]
    assert main(args + ["--json", "--tokens", "1e10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"devices", "layouts", "fit", "best", "front", "top"} <= set(out)
    assert out["best"]["time_to_train_s"] == pytest.approx(1e10 / out["best"]["tokens_per_s"])
    assert main(args) == 0
    assert "Fastest that fit:" in capsys.readouterr().out
    # 70 B with Adam on one 80 GB device: no layout fits (16 bytes a parameter alone is 1.1 TB)
    assert main(["plan", "--train", "--model", "llama-3-70b", "--hardware", "h100-sxm", "--devices", "1",
                 "--global-batch", "8"]) == 2
    err = capsys.readouterr().err
    assert "no training layout" in err and "Traceback" not in err
    assert main(["plan", "--train", "--model", "llama-3-8b", "--hardware", "h100-sxm"]) == 2
    assert "--global-batch" in capsys.readouterr().err


def test_report_gains_a_training_section(tmp_path, capsys):
    out = tmp_path / "r.html"
    args = ["report", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--train-batch", "64", "--train-devices", "8",
            "--train-seq", "2048"]
    assert main(args + ["-o", str(out)]) == 0
    text = out.read_text()
    best = __import__("perfmodel.plan", fromlist=["plan_train"]).plan_train(
        "llama-3-8b", "h100-sxm", seq_len=2048, global_batch=64, devices=8)["best"]
    # the section shows the search's best layout at its tokens/s
    assert "<h2>Training</h2>" in text and f"{best['tokens_per_s']:,.0f} tokens/s" in text
    assert f"dp {best['dp']}, ZeRO {best['zero']}" in text and 'alt="Training" src="data:image/png;base64,' in text
    md = tmp_path / "r.md"
    assert main(args + ["-o", str(md)]) == 0
    assert "## Training" in md.read_text() and (tmp_path / "r.training.png").read_bytes()[:4] == b"\x89PNG"
    # nothing fits: the section says so, the report is still written
    big = tmp_path / "big.md"
    assert main(["report", "--model", "llama-3-70b", "--hardware", "h100-sxm", "--weights", "fp8", "--train-batch", "8",
                 "--train-devices", "1", "-o", str(big)]) == 0
    assert "no training layout fits" in big.read_text() and not (tmp_path / "big.training.png").exists()


# Fine-tuning recipes (torchtune): pure 16-bit, optimizer in the backward, paged states, chunked loss -------------------

def test_torchtune_full_finetune_on_a_4090_by_hand():
    # Llama 3.1 8B (8,030,261,248 parameters), pure bf16, paged 8-bit AdamW run in the backward, full recomputation,
    # 2 sequences of 2,048 on a 24 GB RTX 4090:
    #   weights 2 x 8,030,261,248 = 16,060,522,496
    #   gradients: one tensor at a time, the largest: the 128,256 x 4,096 embedding x 2 = 1,050,673,152
    #   activations: each layer's input 2 s b h = 2 x 2,048 x 2 x 4,096 x (2 B / 2) = 33,554,432, x 32 = 1,073,741,824,
    #     and the FP32 logits 2,048 x 2 x 128,256 x 4 = 2,101,346,304
    #   the 8-bit states (2 x 8.03e9 = 16.1 GB) do not fit beside the 20.3 GB: paged out to the host
    cfg = TrainConfig(2048, 2, micro_batch=2, master_weights=False, optimizer="adam8bit", paged_optimizer=True,
                      optimizer_in_backward=True, recompute="full")
    e = train("llama-3.1-8b", "rtx-4090", cfg)
    assert e.memory["weights"] == 16_060_522_496 and e.memory["gradients"] == 1_050_673_152
    assert e.memory["activations"] == 1_073_741_824 + 2_101_346_304 and e.memory["optimizer"] == 0.0
    assert e.memory["total"] == pytest.approx(20.29e9, rel=1e-3)  # torchtune's README: 18.9 GiB = 20.29e9
    assert any("paged" in n for n in e.notes)
    # the states cross the host link each step: the optimizer's time is at least their bytes over PCIe 4.0 x16
    assert e.breakdown["optimizer"] >= 2 * 8_030_261_248 / 32e9
    # with room for them (an 80 GB H100) they stay on the device and no note is made
    h = train("llama-3.1-8b", "h100-sxm", cfg)
    assert h.memory["optimizer"] == 2 * 8_030_261_248 and not any("paged" in n for n in h.notes)


def test_pure_16_bit_states_and_the_chunked_loss():
    assert state_bytes_per_param("bf16", "adamw", master_weights=False) == {"weights": 2.0, "gradients": 2.0,
                                                                            "optimizer": 4.0}
    assert state_bytes_per_param("bf16", "adam8bit", master_weights=False)["optimizer"] == 2.0
    base = TrainConfig(4096, 2, micro_batch=2, master_weights=False)
    one, eight = train("llama-3.2-3b", "a100-80gb-sxm", base), train("llama-3.2-3b", "a100-80gb-sxm",
                                                                     replace(base, loss_chunks=8))
    logits = 4096 * 2 * 128256 * 4  # FP32 logits of the micro-batch
    assert one.memory["activations"] - eight.memory["activations"] == pytest.approx(logits * 7 / 8, rel=1e-12)
    with pytest.raises(PerfmodelError, match="cannot accumulate"):
        TrainConfig(4096, 8, micro_batch=2, optimizer_in_backward=True)
    with pytest.raises(PerfmodelError, match="pure 16-bit"):
        TrainConfig(4096, 2, precision="fp8", master_weights=False)


def test_cli_train_recipe_flags(capsys):
    args = ["train", "--model", "llama-3.1-8b", "--hardware", "rtx-4090", "--seq", "2048", "--global-batch", "2",
            "--micro-batch", "2", "--no-master-weights", "--optimizer", "adam8bit", "--paged-optimizer",
            "--optimizer-in-backward", "--recompute", "full", "--loss-chunks", "1", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory"]["fits"] and out["memory"]["optimizer_bytes"] == 0.0


def test_attention_kernels_at_their_published_speeds():
    from perfmodel.engines import efficiency_for
    from perfmodel.training import _Job, _passes

    m = pm.load_model("llama-3-8b")
    mb = np.array([1, 4])
    out = {}
    for hw in ("a100-80gb-sxm", "h100-sxm"):
        d = pm.load_device(hw)
        eff = efficiency_for(d, None)[0]
        for k in ("engine", "fa2", "triton"):
            job = _Job.of(m, d, TrainConfig(8192, 4, attention_kernel=k))
            out[hw, k] = _passes(m, d, eff, job, 1, 1, 1, mb)
    a100, h100 = "a100-80gb-sxm", "h100-sxm"
    # on an A100 (synchronous MMA is its native path) FlashAttention-2 is the engine's attention; FlashAttention in
    # Triton's forward is 1.4x its time (FA2 paper sec. 4.1: 1.3-1.5x) and its backward 2x: the backward's extra is
    # 2.5 x (2.0 - 1.0) x the FA2 forward attention time
    assert out[a100, "fa2"]["attn"] == pytest.approx(out[a100, "engine"]["attn"], rel=1e-12)
    assert out[a100, "triton"]["attn"] == pytest.approx(1.4 * out[a100, "fa2"]["attn"], rel=1e-12)
    extra_bwd = out[a100, "triton"]["bwd"] - out[a100, "fa2"]["bwd"]
    assert extra_bwd == pytest.approx(2.5 * (2.0 - 1.0) * out[a100, "fa2"]["attn"], rel=1e-9)
    # on an H100 a kernel of Ampere's MMA instructions runs slower than the engine's (FA3 paper: FA2 at 35 %)
    assert (out[h100, "fa2"]["attn"] > 1.2 * out[h100, "engine"]["attn"]).all()
    with pytest.raises(PerfmodelError, match="Did you mean 'triton'"):
        TrainConfig(2048, 8, attention_kernel="trition")


def test_unfused_attention_keeps_and_recomputes_the_scores():
    # standard attention (before FlashAttention) writes the scores out: with no recomputation a layer keeps the softmax
    # output, 2 a s^2 b bytes without dropout (Korthikanti et al.'s 5 a s^2 b with dropout's mask and output), which
    # selective recomputation drops by running the scores, softmax and context again
    s, b, t = 2048, 1, 8
    cfg = TrainConfig(s, 64, micro_batch=b, tp=t, pp=8, dp=1, attention_kernel="unfused")
    none = train("gpt-3-175b", "a100-80gb-sxm", cfg)
    sel = train("gpt-3-175b", "a100-80gb-sxm", replace(cfg, recompute="selective"))
    flash = train("gpt-3-175b", "a100-80gb-sxm", replace(cfg, attention_kernel="engine"))
    layers_first_stage, in_flight = 12, 8  # 96 layers / 8 stages; 1F1B holds p = 8 micro-batches
    scores = 2 * 96 * s * s * b / t * layers_first_stage * in_flight
    assert none.memory["activations"] - sel.memory["activations"] == pytest.approx(scores, rel=1e-12)
    assert sel.memory["activations"] == pytest.approx(flash.memory["activations"], rel=1e-12)
    assert sel.breakdown["compute"] > none.breakdown["compute"]  # the rerun attention costs time
    assert none.breakdown["compute"] > flash.breakdown["compute"]  # every query-key pair, the scores through memory


def test_fp8_casts_by_hand():
    # Transformer Engine casts and transposes every FP8 GEMM's input and weight (forward) and output gradient
    # (backward): 2 + 1 + 1 bytes an element moved, twice the 16-bit bytes. Llama 3.2 1B (d 2,048, 16 layers, 8 KV
    # heads of 64, d_ff 8,192, vocabulary 128,256), a micro-batch of 8 x 2,048 = T = 16,384 tokens; elements of
    # (input + output + weight) per layer: qkv T(2048 + 3072) + 2048 x 3072, o T(2048 + 2048) + 2048^2,
    # gate/up T(2048 + 16384) + 2048 x 16384, down T(8192 + 2048) + 8192 x 2048 = 37,888 T + 60,817,408; the LM
    # head T(2048 + 128,256) + 2048 x 128,256. In all 16 x (37,888 T + 60,817,408) + 130,304 T + 262,668,288
    # = 13,302,759,424 elements, x 2 bytes x 2 = 53,211,037,696 bytes (attention's own products are not cast)
    from perfmodel.engines import efficiency_for
    from perfmodel.training import _Job, _passes

    m, d = pm.load_model("llama-3.2-1b"), pm.load_device("h100-sxm")
    eff = efficiency_for(d, None)[0]
    fp8 = _passes(m, d, eff, _Job.of(m, d, TrainConfig(2048, 8, micro_batch=8, precision="fp8")), 1, 1, 1,
                  np.array([8]))
    assert fp8["cast_bytes"][0] == 53_211_037_696
    bf16 = _passes(m, d, eff, _Job.of(m, d, TrainConfig(2048, 8, micro_batch=8)), 1, 1, 1, np.array([8]))
    assert bf16["cast_bytes"][0] == 0.0
    # the casts' share shrinks as d grows: FP8's speed-up over BF16 rises with the model, never to the peak's 2x

    def speedup(model: str) -> float:  # one device (what fits does not matter here), no communication
        cfg = TrainConfig(2048, 8, micro_batch=8)
        return (train(model, "h100-sxm", cfg).step_time_s
                / train(model, "h100-sxm", replace(cfg, precision="fp8")).step_time_s)

    assert 1.0 < speedup("llama-3.2-1b") < speedup("llama-3-8b") < speedup("llama-3-70b") < 2.0


def test_loss_kernels_by_hand():
    # the loss's passes over the logits of a micro-batch: 2 x 2,048 positions x 50,304 logits = 206,045,184 logits;
    # Megatron-LM's vocab-parallel cross-entropy over output.float() moves 38 bytes a logit forward and 14 backward,
    # a fused pass 8 and 6, flash-attn's kernel 2 and 4, F.cross_entropy under autocast 14 and 22 (LOSS_KERNELS, each
    # pass counted in its comment)
    from perfmodel.cost import Machine
    from perfmodel.engines import efficiency_for
    from perfmodel.graph import Parallel
    from perfmodel.training import _Job, _passes

    m, d = pm.load_model("gpt-neox-20b"), pm.load_device("a100-80gb-sxm")
    eff = efficiency_for(d, None)[0]
    logits = 2 * 2048 * m.vocab_size
    out = {k: _passes(m, d, eff, _Job.of(m, d, TrainConfig(2048, 2, micro_batch=2, loss_kernel=k)), 1, 1, 1,
                      np.array([2])) for k in ("fused", "megatron", "xentropy", "torch")}
    bw = float(Machine(d, eff, Parallel()).bandwidth_for(1e12))  # main memory: every pass here is GBs
    assert out["megatron"]["fwd"] - out["fused"]["fwd"] == pytest.approx((38 - 8) * logits / bw, rel=1e-9)
    assert out["megatron"]["bwd"] - out["fused"]["bwd"] == pytest.approx((14 - 6) * logits / bw, rel=1e-9)
    assert out["fused"]["fwd"] - out["xentropy"]["fwd"] == pytest.approx((8 - 2) * logits / bw, rel=1e-9)
    assert out["torch"]["fwd"] - out["fused"]["fwd"] == pytest.approx((14 - 8) * logits / bw, rel=1e-9)
    assert out["torch"]["bwd"] - out["fused"]["bwd"] == pytest.approx((22 - 6) * logits / bw, rel=1e-9)
    with pytest.raises(PerfmodelError, match="--loss_kernel must be one of|--loss-kernel must be one of"):
        TrainConfig(2048, 2, loss_kernel="apex")


# Data-parallel collectives: NCCL's cost model on each group's share of the fabric ----------------------------------


def test_a_groups_share_of_the_fabric_by_placement():
    # an H100 node: 8 GPUs on NVSwitch (450 GB/s each), one 400 Gb/s NIC each (the node's network 8 x 50 = 400 GB/s)
    from perfmodel.collectives import fabric_of
    from perfmodel.training import _group_fabric

    fab = fabric_of(pm.load_device("h100-sxm"))
    assert (fab.devices_per_node, fab.intra_bytes_per_s, fab.net_bytes_per_s) == (8, 450e9, 400e9)
    whole = _group_fabric(fab, 64, 1)  # pure FSDP over 8 nodes: 8 ranks a node, all 8 NICs
    assert (whole.devices_per_node, whole.net_bytes_per_s) == (8, 400e9)
    alone = _group_fabric(fab, 64, 8)  # tensor-parallel 8 within the node: one rank of the group a node, its NIC
    assert (alone.devices_per_node, alone.net_bytes_per_s) == (1, 50e9)
    half = _group_fabric(fab, 64, 2)  # tp 2: 4 ranks a node, 4 NICs
    assert (half.devices_per_node, half.net_bytes_per_s) == (4, 200e9)
    assert _group_fabric(fab, 2, 1).devices_per_node == 2  # a group smaller than a node stays in it
    # on a mesh (8 MI300X, each with 7 links) a group of 4 in a node uses the 3 links among them: 3 / 7 of the bandwidth
    mesh = fabric_of(pm.load_device("mi300x"))
    assert mesh.kind == "mesh"
    four = _group_fabric(mesh, 64, 2)
    assert four.intra_bytes_per_s == pytest.approx(mesh.intra_bytes_per_s * 3 / 7)
    # GB200 and GB300 racks are NVL72 nodes; Blackwell Ultra has one 800 Gb/s ConnectX-8 a GPU
    assert fabric_of(pm.load_device("gb200")).devices_per_node == 72
    gb300 = fabric_of(pm.load_device("gb300"))
    assert (gb300.devices_per_node, gb300.net_bytes_per_s) == (72, 72 * 100e9)


def test_collectives_are_nccls_cheapest_and_buckets_add_up():
    from perfmodel.collectives import choose, fabric_of, nccl_candidates
    from perfmodel.engines import efficiency_for
    from perfmodel.graph import Comm
    from perfmodel.training import DDP_BUCKET_BYTES, _bucketed_s, _collective_s, _group_fabric

    d = pm.load_device("h100-sxm")
    eff = efficiency_for(d, None)[0]
    fab = fabric_of(d)
    for ranks, stride, nbytes in ((64, 1, 3e8), (64, 8, 3e8), (8, 1, 1e6), (1024, 8, 5e7)):
        want = choose(nccl_candidates(Comm.ALL_REDUCE, ranks, _group_fabric(fab, ranks, stride), eff.interconnect),
                      nbytes)[1]
        got = _collective_s(d, eff, Comm.ALL_REDUCE, np.array([ranks]), np.array([stride]), np.array([nbytes]))
        assert got[0] == pytest.approx(want, rel=1e-12)
    # one rank: nothing to do
    assert _collective_s(d, eff, Comm.ALL_GATHER, np.array([1]), np.array([1]), np.array([1e9]))[0] == 0.0
    # 2.5 buckets: two full buckets and a half one; the last bucket is the half one
    one = _collective_s(d, eff, Comm.ALL_REDUCE, np.array([64]), np.array([1]), np.array([DDP_BUCKET_BYTES]))[0]
    half = _collective_s(d, eff, Comm.ALL_REDUCE, np.array([64]), np.array([1]), np.array([DDP_BUCKET_BYTES / 2]))[0]
    total, last = _bucketed_s(d, eff, Comm.ALL_REDUCE, np.array([64]), np.array([1]),
                              np.array([2.5 * DDP_BUCKET_BYTES]), DDP_BUCKET_BYTES)
    assert total[0] == pytest.approx(2 * one + half, rel=1e-12) and last[0] == pytest.approx(half, rel=1e-12)
    # the same gradients over a group alone in its nodes (one NIC each) take longer than over one filling them
    fills, alone = (_collective_s(d, eff, Comm.ALL_REDUCE, np.array([64]), np.array([s]), np.array([1e9]))[0]
                    for s in (1, 8))
    assert alone > 4 * fills


def test_zero3_gathers_a_tensor_at_a_time_pay_more_latency():
    # a GPT layer's parameter tensors: QKV, output, MLP up and down (4 matrices), their 4 biases, two LayerNorms'
    # scales and shifts (4): 12; Llama's: 4 matrices (gate and up fused) and two RMSNorm scales: 6
    from perfmodel.training import layer_tensors

    assert layer_tensors(GPT) == 12
    assert layer_tensors(pm.load_model("llama-3-8b")) == 6
    # GPT-3 175B by ZeRO-3 alone over 1,536 A100s at micro-batch 1 (Narayanan et al.'s Table 2): gathering a tensor
    # at a time runs 12 x as many collectives, each paying NCCL's ring latency over 1,535 steps
    cfg = TrainConfig(2048, 1536, micro_batch=1, dp=1536, zero=3)
    layer = train(GPT, "a100-80gb-sxm", cfg)
    tensor = train(GPT, "a100-80gb-sxm", replace(cfg, gather_unit="tensor"))
    assert tensor.breakdown["communication"] > layer.breakdown["communication"] > 0
    with pytest.raises(PerfmodelError, match="--gather-unit must be one of"):
        TrainConfig(2048, 8, gather_unit="param")
