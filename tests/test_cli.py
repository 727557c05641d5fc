import json
import subprocess
import sys

import pandas as pd
import pytest

import perfmodel as pm
from perfmodel.cli import main

from .conftest import HF

JSON_KEYS = {"model", "hardware", "batch", "prompt_len", "gen_len", "ttft_s", "tpot_s", "decode_tokens_per_s",
             "prefill_tokens_per_s", "throughput_tokens_per_s", "e2e_latency_s", "mfu", "mbu", "params", "memory"}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_contract(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "llama-2-7b", "--hardware", "a100-80gb-sxm", "--batch", "4",
                       "--prompt", "1024", "--gen", "64", "--json")
    assert code == 0
    d = json.loads(out)
    assert JSON_KEYS <= d.keys()
    assert set(d["params"]) >= {"total", "active"}
    assert set(d["memory"]) >= {"weights_bytes", "kv_cache_bytes", "activation_bytes", "total_bytes",
                                "capacity_bytes", "fits"}
    assert d["batch"] == 4 and d["prompt_len"] == 1024 and d["gen_len"] == 64
    # throughput: batch x gen / e2e; per-sequence decode rate: 1 / TPOT
    assert d["throughput_tokens_per_s"] == pytest.approx(4 * 64 / d["e2e_latency_s"])
    assert d["decode_tokens_per_s"] == pytest.approx(1 / d["tpot_s"])
    assert d["e2e_latency_s"] == pytest.approx(d["ttft_s"] + 63 * d["tpot_s"])
    assert d["prefill_tokens_per_s"] == pytest.approx(4 * 1024 / d["ttft_s"])


def test_estimate_human_output(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "gpt2", "--hardware", "h100-sxm", "--ops")
    assert code == 0 and "TPOT" in out and "layers.attn.qkv" in out


def test_estimate_from_hf_config_path(capsys):
    code, out, _ = run(capsys, "estimate", "--model", str(HF / "qwen3-8b.json"), "--hardware", "h100", "--json")
    assert code == 0 and json.loads(out)["params"]["total"] == 8_190_735_360


def test_gen_one_has_no_tpot(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "gpt2", "--hardware", "h100", "--gen", "1", "--json")
    assert code == 0 and json.loads(out)["tpot_s"] is None


def test_encoder_defaults_to_no_generation(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "bert-base", "--hardware", "l4", "--prompt", "128", "--json")
    d = json.loads(out)
    assert code == 0 and d["gen_len"] == 0 and d["ttft_s"] > 0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "llama-2-7", "--hardware", "h100"], "Did you mean 'llama-2-7b'"),
        (["--model", "gpt2", "--hardware", "h10"], "--hardware must be one of"),
        (["--model", "gpt2", "--hardware", "h100", "--batch", "-1"], "batch must be an integer from 1 to 16,777,216; got '-1'"),
        (["--model", "gpt2", "--hardware", "h100", "--prompt", "0"], "prompt_len must be an integer from 1 to"),
        (["--model", "gpt2", "--hardware", "h100", "--weights", "fp5"], "weights must be one of"),
        (["--model", "gpt2", "--hardware", "h100", "--weights", "fp4"], "use mxfp4"),
        (["--model", "gpt2", "--hardware", "h100", "--tp", "5"], "tp must divide n_heads (12)"),
        (["--model", "bert-base", "--hardware", "h100", "--gen", "5"], "encoder-only"),
        (["--model", "mixtral-8x7b", "--hardware", "a100-80gb-sxm"], "does not fit"),
        (["--model", "gpt2", "--hardware", "h100", "--attention", "fast"], "attention must be 'flash' or 'unfused'"),
        (["--model", "gpt2", "--hardware", "h100", "--gemm", "q4_0"], "gemm must be one of"),
        (["--model", "gpt2", "--hardware", "h100", "--dequant", "copy"],
         "dequant must be 'fused', 'fp16_copy' or 'fp16_scratch'"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, argv, needle):
    code, out, err = run(capsys, "estimate", *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_bad_spec_files(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    code, _, err = run(capsys, "estimate", "--model", str(cfg), "--hardware", "h100")
    assert code == 2 and "model_type 'mamba' is not supported" in err
    dev = tmp_path / "dev.toml"
    dev.write_text('id = "dev"\nname = "D"\nkind = "gpu"\nvendor = "x"\n[[memory]]\nname = "HBM"\ncapacity_gb = 8\n')
    code, _, err = run(capsys, "estimate", "--model", "gpt2", "--hardware", str(dev))
    assert code == 2 and "needs a bandwidth" in err


def test_list_json(capsys):
    code, out, _ = run(capsys, "list", "hardware", "--json")
    rows = json.loads(out)
    assert code == 0 and {"id", "name"} <= rows[0].keys() and any(r["id"] == "h100-sxm" for r in rows)
    code, out, _ = run(capsys, "list", "models", "--json")
    assert any(r["id"] == "llama-3-8b" for r in json.loads(out))
    code, out, _ = run(capsys, "list", "hardware", "--kind", "cpu", "--json")
    assert {r["kind"] for r in json.loads(out)} == {"cpu"}


def test_show(capsys):
    code, out, _ = run(capsys, "show", "h100-sxm")
    assert code == 0 and "sources:" in out and "bandwidth_gb_per_s: 3350" in out and "bf16: 989.4" in out
    code, out, _ = run(capsys, "show", "llama-3-8b", "--json")
    assert json.loads(out)["derived"]["params_total"] == 8_030_261_248
    code, out, _ = run(capsys, "show", "h100", "--raw")
    assert code == 0 and out.startswith("#") or 'id = "h100-sxm"' in out
    code, _, err = run(capsys, "show", "llama-3-8c")
    assert code == 2 and "Did you mean 'llama-3-8b'" in err


def test_sweep_reports_bad_rows_and_computes_the_rest(capsys, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(
        "model,hardware,batch,prompt,gen,weights\n"
        "llama-2-7b,a100-80gb-sxm,1,512,128,bf16\n"
        "llama-2-7b,a100-80gb-sxm,-3,512,128,bf16\n"
        "nosuchmodel,a100-80gb-sxm,1,512,128,bf16\n"
        "llama-2-7b,a100-80gb-sxm,8,2048,256,int4\n"
        "llama-2-7b,a100-80gb-sxm,1,512,128,fp3\n"
    )
    out = tmp_path / "out.csv"
    code, _, err = run(capsys, "sweep", str(src), "-o", str(out))
    assert code == 2
    assert "row 2: batch must be an integer from 1 to" in err and "row 3: --model must be one of" in err
    assert "row 5: weights must be one of" in err
    res = pd.read_csv(out, keep_default_na=False)
    assert list(res["error"] == "") == [True, False, False, True, False]
    single = pm.estimate("llama-2-7b", "a100-80gb-sxm", batch=8, prompt_len=2048, gen_len=256, weights="int4")
    assert float(res.loc[3, "tpot_s"]) == pytest.approx(single.tpot_s)
    assert float(res.loc[3, "ttft_s"]) == pytest.approx(single.ttft_s)


def test_sweep_output_replaced_atomically(capsys, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    code, _, err = run(capsys, "sweep", str(tmp_path / "missing.csv"), "-o", str(out))
    assert code == 2 and "does not exist" in err
    assert out.read_text() == "precious\n"


def test_console_script_no_traceback():
    r = subprocess.run([sys.executable, "-m", "perfmodel.cli", "estimate", "--model", "nope", "--hardware", "h100"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--model must be one of" in r.stderr
