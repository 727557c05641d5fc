"""A battery of bad inputs through the command line: each gives one paragraph naming what is wrong and exit 2, never a
traceback, and leaves an existing output file exactly as it was."""

import json

import pytest

from perfmodel.cli import main

SENTINEL = b"an existing output file, which a failed command must leave as it is\n"
BINARY = bytes(range(256)) * 4


@pytest.fixture
def files(tmp_path):
    """Inputs the cases refer to, and an existing output file (`out`) whose bytes must survive every failure."""
    f = {"dir": tmp_path / "folder", "out": tmp_path / "existing.csv", "out_html": tmp_path / "existing.html",
         "out_png": tmp_path / "existing.png", "bin": tmp_path / "binary.json", "bin_toml": tmp_path / "binary.toml",
         "bin_csv": tmp_path / "binary.csv", "model_typo": tmp_path / "model.toml", "dev_typo": tmp_path / "dev.toml",
         "csv_unknown": tmp_path / "unknown.csv", "csv_no_hw": tmp_path / "nohw.csv", "empty_dir": tmp_path / "empty",
         "profile": tmp_path / "edited.toml", "json_list": tmp_path / "list.json", "empty_csv": tmp_path / "empty.csv"}
    f["dir"].mkdir()
    f["empty_dir"].mkdir()
    for k in ("out", "out_html", "out_png"):
        f[k].write_bytes(SENTINEL)
    for k in ("bin", "bin_toml", "bin_csv"):
        f[k].write_bytes(BINARY)
    f["model_typo"].write_text('id = "m"\nn_layers = 2\nd_model = 64\nn_heads = 4\nd_ff = 128\nvocab_size = 100\n'
                               'n_kv_head = 4\n')
    f["dev_typo"].write_text('id = "d"\nname = "D"\nkind = "gpu"\nvendor = "v"\n[[memory]]\nname = "M"\n'
                             'bandwith_gb_per_s = 100\n')
    f["csv_unknown"].write_text("model,hardware,bacth\ngpt2,h100,1\n")
    f["csv_no_hw"].write_text("model,batch\ngpt2,1\n")
    f["json_list"].write_text(json.dumps([1, 2, 3]))
    f["empty_csv"].write_text("")
    # a calibrated profile whose values were edited by hand after it was written
    from perfmodel.calibration.profile import write_profile
    from perfmodel.efficiency import Efficiency

    write_profile(f["profile"], Efficiency(matrix=0.5, rate_flops_per_s={"gemm.fp32": 1e11}, device_id="h100-sxm"),
                  "name,time_s\ngemm,1\n")
    text = f["profile"].read_text().replace("matrix = 0.5", "matrix = 0.9")
    f["profile"].write_text(text)
    return f


E = ["estimate", "--model", "gpt2", "--hardware", "h100"]
CASES = [
    (["estimate", "--model", "llama-2-7", "--hardware", "h100"], "Did you mean"),
    (["estimate", "--model", "gpt2", "--hardware", "h10"], "--hardware must be one of"),
    (E + ["--batch", "-1"], "batch must be an integer"),
    (E + ["--batch", "0"], "batch must be an integer"),
    (E + ["--batch", "inf"], "batch must be an integer"),
    (E + ["--batch", "nan"], "batch must be an integer"),
    (E + ["--batch", "1e30"], "batch must be an integer from 1 to"),
    (E + ["--prompt", "abc"], "prompt_len must be an integer"),
    (E + ["--gen", "-5"], "gen_len must be an integer"),
    (E + ["--weights", "fp5"], "weights must be one of"),
    (E + ["--weights", "fp4"], "use mxfp4"),
    (E + ["--act", "q4_0"], "act must be one of"),
    (E + ["--gemm", "q4_0"], "gemm must be one of"),
    (E + ["--tp", "5"], "tp must divide n_heads"),
    (E + ["--tp", "0"], "tp must be an integer"),
    (E + ["--pp", "1000"], "pp must be at most n_layers"),
    (E + ["--attention", "fast"], "attention must be 'flash' or 'unfused'"),
    (E + ["--dequant", "copy"], "dequant must be 'fused', 'fp16_copy' or 'fp16_scratch'"),
    (["estimate", "--model", "bert-base", "--hardware", "h100", "--gen", "5"], "encoder-only"),
    (["estimate", "--model", "mixtral-8x7b", "--hardware", "a100-80gb-sxm"], "Would fit"),
    (["estimate", "--model", "{bin}", "--hardware", "h100"], "not text"),
    (["estimate", "--model", "{json_list}", "--hardware", "h100"], "must hold a JSON object"),
    (["estimate", "--model", "{empty_dir}", "--hardware", "h100"], "does not exist"),
    (["estimate", "--model", "{model_typo}", "--hardware", "h100"], "n_kv_head"),
    (["estimate", "--model", "gpt2", "--hardware", "{dev_typo}"], "bandwith_gb_per_s"),
    (["estimate", "--model", "gpt2", "--hardware", "{bin_toml}"], "not valid TOML"),
    (E + ["--profile", "/nonexistent/profile.toml"], "does not exist"),
    (E + ["--profile", "{profile}"], "do not match the checksum"),
    (E + ["--profile", "{profile}", "--engine", "vllm"], "not both"),
    (E + ["--engine", "nosuch"], "engine must be one of"),
    (["sweep", "/nonexistent.csv", "-o", "{out}"], "does not exist"),
    (["sweep", "{bin_csv}", "-o", "{out}"], "not a readable CSV"),
    (["sweep", "{empty_csv}", "-o", "{out}"], "not a readable CSV"),
    (["sweep", "{csv_unknown}", "-o", "{out}"], "unknown sweep column"),
    (["sweep", "{csv_no_hw}", "-o", "{out}"], "needs a `hardware` column"),
    (["sweep", "{csv_unknown}", "-o", "{dir}"], "is a directory"),
    (["sweep", "{csv_unknown}", "-o", "/proc/version/out.csv"], "is a file, not a folder"),
    (["sweep", "{csv_no_hw}", "-o", "{out}", "--engine", "nosuch"], "engine must be one of"),
    (["report", "--model", "gpt2", "--hardware", "h100", "-o", "/proc/version/r.html"], "is a file, not a folder"),
    (["report", "--model", "gpt2", "--hardware", "h100", "-o", "{dir}"], "is a directory"),
    (["report", "--model", "nosuch", "--hardware", "h100", "-o", "{out_html}"], "--model must be one of"),
    (["plot", "nosuch", "--model", "gpt2", "--hardware", "h100", "-o", "{out_png}"], "roofline"),
    (["plot", "memory", "--model", "gpt2", "--hardware", "h100", "--compare", "a100", "-o", "{out_png}"],
     "--compare applies to the roofline only"),
    (["whatif", "--model", "gpt2", "--hardware", "h100", "--set", "memory_bandwidth=-2"], "> 0"),
    (["whatif", "--model", "gpt2", "--hardware", "h100", "--set", "memory_bandwidth=inf"], "> 0"),
    (["whatif", "--model", "gpt2", "--hardware", "h100", "--set", "memory_bandwidth"], "PARAM=VALUE"),
    (["whatif", "--model", "gpt2", "--hardware", "h100", "--set", "warp_drive=2"], "warp_drive"),
    (["whatif", "--model", "gpt2", "--hardware", "h100", "--target", "0"], "--target must be"),
    (["trends", "--target", "-1"], "--target must be"),
    (["trends", "--target", "nan"], "--target must be"),
    (["trends", "-o", "{dir}"], "is a directory"),
    (["show", "nosuch-device"], "id must be one of"),
    (["validate", "--engine", "nosuch"], "engine must be one of"),
    (["validate", "-o", "{dir}"], "is a directory"),
    (["validate", "--plot", "/proc/version/v.png"], "is a file, not a folder"),
    (["calibrate", "--backend", "jax", "-o", "{out}"], "--backend must be one of"),
    (["calibrate", "--threads", "0", "-o", "{out}"], "--threads must be an integer"),
    (["list", "hardware", "--year", "abc"], "--year must be"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a[:4]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_exits_2_with_one_paragraph_and_no_traceback(files, capsys, argv, needle):
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    before = {k: files[k].read_bytes() for k in ("out", "out_html", "out_png")}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("perfmodel: error: "), err
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1, err  # one paragraph
    assert {k: files[k].read_bytes() for k in before} == before  # an existing output file is never touched


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


def test_a_sweep_with_bad_rows_names_each_and_computes_the_rest(files, capsys, tmp_path):
    src = tmp_path / "rows.csv"
    src.write_text("model,hardware,batch,prompt,gen\ngpt2,h100,inf,512,8\n,h100,1,512,8\ngpt2,,1,512,8\n"
                   "gpt2,h100,1,1e12,8\ngpt2,h100,1,100,8\n")
    out = tmp_path / "rows_out.csv"
    assert main(["sweep", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 1: batch must be an integer from 1 to" in err and "row 2: model is empty" in err
    assert "row 3: hardware is empty" in err and "row 4: prompt must be an integer from 1 to" in err
    assert "1 of 5 rows estimated" in err and "Traceback" not in err
    import pandas as pd

    res = pd.read_csv(out)
    assert res.tpot_s.notna().tolist() == [False, False, False, False, True]
