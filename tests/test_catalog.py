"""The catalogs as a whole: coverage, naming, and the README's generated listing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import perfmodel as pm
from perfmodel.catalog import device_files, hardware_rows, model_files, model_rows, read_toml

ROOT = Path(__file__).resolve().parents[1]
ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def test_catalog_doc_is_generated_from_the_data():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "catalog_md.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_coverage():
    hw = hardware_rows()
    assert sum(r["kind"] in ("gpu", "accelerator") for r in hw) >= 40
    years = [r["year"] for r in hw if r["kind"] == "cpu" and r["year"]]
    assert min(years) <= 2005 and max(years) >= 2024  # 25 years of CPUs for the trend studies
    assert len(model_rows()) >= 45


# Every entry the catalog issue names, by id: a renamed or deleted file fails here, not in a user's script.
NAMED_DEVICES = """
v100-sxm2-16gb v100-sxm2-32gb v100-pcie a100-40gb-sxm a100-80gb-sxm a100-40gb-pcie a100-80gb-pcie a10 a10g a30 l4 l40
l40s h100-sxm h100-pcie h100-nvl h200 gh200 b200 gb200 gb10 rtx-3060 rtx-3080 rtx-3090 rtx-4070 rtx-4080 rtx-4090
rtx-5080 rtx-5090 rtx-a6000 rtx-6000-ada mi100 mi210 mi250x mi300x mi325x rx-7900-xtx ryzen-ai-max-395 m1-8c
m1-pro-16c m1-max-32c m1-ultra-64c m2-10c m2-pro-19c m2-max-38c m2-ultra-76c m3-10c m3-pro-18c m3-max-40c m4-10c
m4-pro-20c m4-max-40c gaudi2 gaudi3 arc-a770 arc-b580 tpu-v4 tpu-v5e tpu-v5p tpu-v6e
pentium-4-670 xeon-5160 xeon-x5355 xeon-x5570 core-i7-920 xeon-e5-2680 xeon-e5-2697v2 xeon-e5-2699v3 xeon-e5-2699v4
xeon-8180 xeon-8280 xeon-8380 xeon-8480plus xeon-max-9480 xeon-8592plus xeon-6980p epyc-7601 epyc-7742 epyc-7763
epyc-7773x epyc-9654 epyc-9684x epyc-9754 epyc-9755 graviton2 graviton3 graviton4 grace ampere-altra-q80-30
ampereone-a192-32x apple-m1-cpu apple-m2-cpu apple-m3-cpu apple-m4-cpu core-i9-13900k core-i9-14900k core-ultra-9-285k
ryzen-9-7950x ryzen-9-9950x threadripper-pro-5995wx raspberry-pi-5
""".split() + """
rtx-2060 rtx-2070 rtx-2080 rtx-2080-ti rtx-3050 rtx-3060-ti rtx-3070 rtx-3070-ti rtx-3080-ti rtx-3090-ti rtx-4060
rtx-4060-ti rtx-4070-super rtx-4070-ti rtx-4070-ti-super rtx-4080-super rtx-5060 rtx-5060-ti rtx-5070 rtx-5070-ti
rtx-pro-6000-blackwell rtx-a4000 rtx-a5000 rtx-4000-ada rtx-5000-ada a40 a800-80gb-sxm h800-sxm h20 b100 b300 gb300
jetson-agx-orin jetson-orin-nano rx-6800-xt rx-6900-xt rx-7900-xt rx-7800-xt rx-7600 rx-9070 rx-9070-xt
radeon-ai-pro-r9700 radeon-pro-w7900 mi50 mi60 arc-a310 arc-a380 arc-a750 arc-b570 max-1550 m3-ultra-80c m3-max-30c
m4-max-32c snapdragon-x-elite-gpu inferentia2 trainium snapdragon-x-elite-cpu apple-m2-max-cpu apple-m1-max-cpu
apple-m3-max-cpu apple-m4-max-cpu ryzen-ai-max-395-cpu core-i3-1315u core-ultra-7-155h ryzen-7-7840u ryzen-7-8845hs
pentium-iii-1000 pentium-iii-s-1400 pentium-4-2000-willamette pentium-4-3060-ht athlon-xp-3000 athlon-64-3200
opteron-244 pentium-m-1600 core-2-duo-e6600 xeon-6787p epyc-9655 epyc-9965 grace-gb200 gb10-cpu
""".split()  # the coverage issue's devices (binned variants are ids of their own)
NAMED_MODELS = """
gpt2 gpt2-medium gpt2-large gpt2-xl gpt-3-175b gpt-j-6b opt-6.7b opt-13b opt-30b opt-66b bloom-176b falcon-7b falcon-40b
falcon-180b llama-7b llama-13b llama-33b llama-65b llama-2-7b llama-2-13b llama-2-70b llama-3-8b llama-3-70b
llama-3.1-8b llama-3.1-70b llama-3.1-405b llama-3.2-1b llama-3.2-3b llama-3.3-70b mistral-7b mixtral-8x7b mixtral-8x22b
qwen2.5-0.5b qwen2.5-1.5b qwen2.5-3b qwen2.5-7b qwen2.5-14b qwen2.5-32b qwen2.5-72b qwen3-8b qwen3-32b qwen3-30b-a3b
qwen3-235b-a22b gemma-2-2b gemma-2-9b gemma-2-27b gemma-3-1b gemma-3-4b gemma-3-12b gemma-3-27b phi-3-mini phi-3-medium
phi-4 deepseek-v2-lite deepseek-v3 gpt-oss-20b gpt-oss-120b bert-base bert-large t5-base t5-large
""".split()


def test_every_named_entry_is_in_the_catalog():
    hw = {r["id"] for r in hardware_rows()}
    models = {r["id"] for r in model_rows()}
    assert [d for d in NAMED_DEVICES if d not in hw] == []
    assert [m for m in NAMED_MODELS if m not in models] == []


def test_forty_cpus():
    assert sum(r["kind"] == "cpu" for r in hardware_rows()) >= 40


def test_ids_and_aliases_are_unique_and_predictable():
    seen: dict[str, Path] = {}
    for f in device_files() + model_files():
        data = read_toml(f)
        assert data["id"] == f.stem and ID.match(f.stem), f
        for name in [data["id"], *data.get("aliases", ())]:
            assert name == name.lower(), f"{f.name}: alias {name!r} must be lowercase"
            assert seen.get(name, f) == f, f"{name!r} names both {seen.get(name)} and {f}"
            seen[name] = f


@pytest.mark.parametrize("path", device_files(), ids=lambda p: p.stem)
def test_every_device_has_a_year_and_sources_with_coverage(path):
    d = pm.load_device(path)
    if d.year is None:  # never guessed: a missing launch year must be declared unknown in the file
        assert re.search(r"#\s*unknown:.*year", path.read_text(), flags=re.I), f"{path.name}: year missing, unsaid"
    else:
        assert 1995 <= d.year <= 2026
    assert all(s.covers for s in d.sources), f"{path.name}: say what each source covers"


def test_few_devices_lack_a_year():
    assert sum(r["year"] is None for r in hardware_rows()) <= 10


def test_list_filters(capsys):
    from perfmodel.cli import main

    assert main(["list", "hardware", "--kind", "gpu", "--vendor", "nvidia", "--year", "2020-2022", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["vendor"] == "nvidia" and 2020 <= r["year"] <= 2022 and r["kind"] == "gpu" for r in rows)
    assert main(["list", "hardware", "--year", "20x0"]) == 2
    assert "--year must be a year" in capsys.readouterr().err
