"""The provenance ladder: a sourced, a derived and an estimated figure of each kind, binned variants, and the
warnings an estimate gives instead of refusing."""

import json
import math

import numpy as np
import pytest

import perfmodel as pm
from perfmodel import catalog, provenance
from perfmodel.device import Device
from perfmodel.pcie import pcie_bytes_per_s

GPU = """id = "{id}"
name = "{id}"
kind = "gpu"
vendor = "test"
family = "test-family"
year = 2021
{extra}
[[memory]]
name = "GDDR"
capacity_gb = 24
bandwidth_gb_per_s = 1000
[[sources]]
title = "Test datasheet"
url = "https://example.org/{id}"
covers = "memory bandwidth, peaks"
"""


def _clear_caches():
    catalog._index.cache_clear()
    catalog._catalog_devices.cache_clear()
    catalog._family_devices.cache_clear()
    provenance._family_members.cache_clear()
    provenance._kind_ratios.cache_clear()


@pytest.fixture
def family_catalog(tmp_path, monkeypatch):
    """A catalog root with a two-member family: `sib-a` gives its parts, `sib-b` only its memory and a clock."""
    gpu = tmp_path / "hardware_specs" / "gpu"
    gpu.mkdir(parents=True)
    # sib-a: 100 SMs x 2 GHz x 1024 FLOPs/cycle = 204.8 TFLOPS bf16; fp8 quoted 409.6 (ratio 2); vector fp32 40
    (gpu / "sib-a.toml").write_text(GPU.format(id="sib-a", extra=(
        "[processor]\nunits = 100\nclock_ghz = 2.0\n[compute.matrix.flops_per_cycle_per_unit]\nbf16 = 1024\n"
        "[compute.matrix.dense_tflops]\nfp8 = 409.6\n[compute.vector.dense_tflops]\nfp32 = 40\n")))
    # sib-b: units only (no clock, no compute): the family fills clock and rates
    (gpu / "sib-b.toml").write_text(GPU.format(id="sib-b", extra="[processor]\nunits = 50\n"))
    # sib-c: only an fp8 figure: bf16 from the family ratio
    (gpu / "sib-c.toml").write_text(GPU.format(id="sib-c", extra="[compute.matrix.dense_tflops]\nfp8 = 100\n"))
    monkeypatch.setenv("PERFMODEL_PATH", str(tmp_path))
    _clear_caches()
    yield gpu
    monkeypatch.delenv("PERFMODEL_PATH")
    _clear_caches()


def test_sourced_figure_names_its_source():
    f = pm.load_device("h100-sxm").figure("compute.matrix.bf16")
    assert (f.rung, f.value) == ("sourced", 989.4e12)
    assert "H100 Tensor Core GPU Architecture whitepaper" in f.note


def test_derived_figures_state_their_formula():
    d = pm.load_device("xeon-8480plus")
    f = d.figure("compute.matrix.bf16")
    # 56 cores x 2.0 GHz x 1024 AMX FLOPs/cycle = 114.7 TFLOPS
    assert (f.rung, f.value) == ("derived", pytest.approx(56 * 2.0e9 * 1024))
    assert "56 cores x 2 GHz x 1024 FLOPs/cycle" in f.note
    bw = d.figure("memory.DDR5.bandwidth")
    assert (bw.rung, bw.value) == ("derived", pytest.approx(8 * 4800e6 * 8))  # 8 ch x 4800 MT/s x 8 B = 307.2 GB/s


def test_pcie_bandwidth_is_derived_from_generation_and_lanes():
    # PCIe 4.0 x16: 16 lanes x 16 GT/s x 128/130 / 8 = 31.508 GB/s per direction
    assert pcie_bytes_per_s(4, 16) == pytest.approx(16 * 16e9 * 128 / 130 / 8)
    # PCIe 3.0 x8: 8 x 8 GT/s x 128/130 / 8 = 7.877 GB/s
    assert pcie_bytes_per_s(3, 8) == pytest.approx(7.8769e9, rel=1e-4)
    d = Device(id="x", name="x", kind="gpu", vendor="v", memory=[{"name": "M", "bandwidth_gb_per_s": 100}],
               interconnect={"name": "PCIe 4.0 x16"})
    f = d.figure("interconnect.bandwidth")
    assert (f.rung, f.value) == ("derived", pytest.approx(31.508e9, rel=1e-4))


def test_no_interconnect_is_estimated_from_the_launch_year():
    d = Device(id="x", name="x", kind="gpu", vendor="v", year=2020, memory=[{"name": "M", "bandwidth_gb_per_s": 1}])
    f = d.figure("interconnect.bandwidth")
    # 2020: PCIe 4.0 (first products 2019), x16 = 31.5 GB/s
    assert (f.rung, f.value) == ("estimated", pytest.approx(pcie_bytes_per_s(4, 16)))


def test_cpu_vector_peak_without_fma_count_is_estimated_and_with_it_derived():
    base = dict(id="c", name="c", kind="cpu", vendor="v", memory=[{"name": "DDR", "bandwidth_gb_per_s": 50}])
    d = Device(**base, processor={"units": 8, "base_clock_ghz": 3.0, "simd": "AVX2"})
    f = d.figure("compute.vector.fp32")
    # 8 cores x 3 GHz x 2 FMA pipes (assumed) x 8 fp32 lanes (256-bit) x 2 FLOPs = 768 GFLOP/s
    assert (f.rung, f.value) == ("estimated", pytest.approx(768e9))
    d = Device(**base, processor={"units": 8, "base_clock_ghz": 3.0, "simd_width_bits": 512, "fma_units_per_core": 1})
    f = d.figure("compute.vector.fp32")
    assert (f.rung, f.value) == ("derived", pytest.approx(8 * 3e9 * 1 * 16 * 2))  # 768 GFLOP/s again, one 512-bit pipe


def test_max_turbo_only_is_an_estimated_clock():
    d = Device(id="c", name="c", kind="cpu", vendor="v", processor={"units": 4, "max_clock_ghz": 5.0,
                                                                     "simd_width_bits": 256, "fma_units_per_core": 2},
               memory=[{"name": "DDR", "bandwidth_gb_per_s": 50}])
    assert d.figure("processor.clock").rung == "estimated"
    f = d.figure("compute.vector.fp32")
    assert (f.rung, f.value) == ("estimated", pytest.approx(4 * 5e9 * 2 * 8 * 2))  # estimated clock taints it


def test_matrix_units_without_a_figure_run_at_the_vector_rate_said_as_such():
    d = Device(id="g", name="g", kind="gpu", vendor="v", compute={"vector": {"dense_tflops": {"fp32": 12.7}}},
               memory=[{"name": "M", "bandwidth_gb_per_s": 360}])
    f = d.figure("compute.matrix.bf16")
    assert (f.rung, f.value) == ("estimated", pytest.approx(12.7e12))
    assert "lower bound" in f.note


def test_family_rules(family_catalog):
    b = pm.load_device("sib-b")
    clock = b.figure("processor.clock")
    assert (clock.rung, clock.value) == ("estimated", 2.0e9)  # sib-a's clock, the only sourced one
    f = b.figure("compute.matrix.bf16")
    # sib-a's 1024 FLOPs/cycle/SM x 50 SMs x 2.0 GHz (estimated clock) = 102.4 TFLOPS
    assert (f.rung, f.value) == ("estimated", pytest.approx(102.4e12))
    assert "sib" not in f.note or "test-family" in f.note
    c = pm.load_device("sib-c")
    f = c.figure("compute.matrix.bf16")
    # sib-c's fp8 100 TFLOPS x (sib-a bf16 204.8 / fp8 409.6 = 0.5) = 50 TFLOPS
    assert (f.rung, f.value) == ("estimated", pytest.approx(50e12))
    assert "ratio" in f.note


def test_special_function_rate_comes_from_the_family_per_unit_per_clock(family_catalog):
    (family_catalog / "sib-a.toml").write_text(GPU.format(id="sib-a", extra=(
        "[processor]\nunits = 100\nclock_ghz = 2.0\n[compute]\nspecial_function_tflops = 3.2\n"
        "[compute.matrix.flops_per_cycle_per_unit]\nbf16 = 1024\n")))
    _clear_caches()
    a = pm.load_device("sib-a").figure("compute.special_function")
    assert (a.rung, a.value) == ("sourced", pytest.approx(3.2e12))
    b = pm.load_device("sib-b").figure("compute.special_function")
    # sib-a: 3.2e12 / (100 SMs x 2.0 GHz) = 16 per SM per cycle; sib-b: 16 x 50 SMs x 2.0 GHz (the family's clock)
    assert (b.rung, b.value) == ("estimated", pytest.approx(1.6e12))
    assert b.rule == "family-clock"  # it rests on an estimated clock: the looser rule's uncertainty
    assert pm.load_device("sib-c").figure("compute.special_function") is None  # no units, no clock: no rule


def test_catalog_hopper_parts_get_the_h100s_exponential_rate_per_sm():
    h100 = pm.load_device("h100-sxm").figure("compute.special_function")
    assert (h100.rung, h100.value) == ("sourced", 3.9e12) and "FlashAttention-3" in h100.note
    # H200: the same GH100 at 132 SMs and 1.98 GHz (both measured) -> the H100's 3.9e12 exactly
    h200 = pm.load_device("h200").figure("compute.special_function")
    assert (h200.rung, h200.value) == ("estimated", pytest.approx(3.9e12))
    # H100 PCIe: 3.9e12 / (132 x 1.98e9) x 114 x 1.755e9 = 2.985e12
    pcie = pm.load_device("h100-pcie").figure("compute.special_function")
    assert pcie.value == pytest.approx(3.9e12 / (132 * 1.98e9) * 114 * 1.755e9)


def test_estimated_figure_is_reported_and_widens_the_band(family_catalog):
    est = pm.estimate("llama-3.2-1b", "sib-b", weights="q4_0", batch=1, prompt_len=512, gen_len=128)
    d = est.to_dict()
    prov = d["provenance"]
    assert prov["compute.matrix.bf16"]["rung"] == "estimated"
    assert prov["memory.GDDR.bandwidth"]["rung"] == "sourced"
    assert prov["compute.matrix.bf16"]["bounds"]["prefill"] > 0.5  # prefill of 512 tokens is compute-bound
    assert any(w.startswith("compute.matrix.bf16 is estimated") for w in d["warnings"])
    iv = d["intervals"]["prefill_tokens_per_s"]
    assert iv["widened"] > 1.0 and iv["low"] < d["prefill_tokens_per_s"] < iv["high"]
    assert "estimated: compute.matrix.bf16" in est.summary()
    json.dumps(d)  # serialisable


def test_band_widening_is_the_estimated_figures_share_of_the_time(family_catalog):
    """Evaluation.widening_log (vectorised over rows and devices) = sum over the estimated figures that
    provenance.used_figures reports of share x ln(1 + u)."""
    import math

    est = pm.estimate("llama-3.2-1b", "sib-b", batch=4, prompt_len=300, gen_len=50)
    got = est.ev.widening_log()
    want = {"prefill": 0.0, "decode": 0.0}
    for key, phases in provenance.used_figures(est.ev).items():
        fig = est.device.figure(key)
        if fig is not None and fig.rung == "estimated":
            for ph, share in phases.items():
                want[ph] += float(share[0]) * math.log1p(fig.uncertainty)
    assert want["prefill"] > 0  # prefill is compute-bound on the estimated matrix rate; decode on sourced memory
    for ph in want:
        assert float(got[ph][0]) == pytest.approx(want[ph], rel=1e-9)


VARIANT_FILE = """id = "chip-full"
name = "Chip (full)"
kind = "gpu"
vendor = "test"
year = 2024
[processor]
units = 80
clock_ghz = 2.5
[compute.matrix.dense_tflops]
bf16 = 200.0
[compute.matrix.half_accumulate_dense_tflops]
bf16 = 400.0
[[memory]]
name = "L2"
capacity_mib = 64
[[memory]]
name = "GDDR7"
capacity_gb = 32
bandwidth_gb_per_s = 1000
[[sources]]
title = "Full chip datasheet"
url = "https://example.org/full"

[[variants]]
id = "chip-cut"
name = "Chip (cut)"
aliases = ["cut"]
processor = {{ units = 60, clock_ghz = 2.0 }}
memory = [{{ name = "GDDR7", capacity_gb = 16, bandwidth_gb_per_s = 640 }}]
{extra}
"""


def test_variant_merges_and_derives_peaks_from_the_parent(tmp_path):
    f = tmp_path / "chip.toml"
    f.write_text(VARIANT_FILE.format(extra=""))
    root = tmp_path / "hardware_specs" / "gpu"
    root.mkdir(parents=True)
    (root / "chip-full.toml").write_text(f.read_text())
    full, cut = pm.device_from_file(f), pm.device_from_file(f, "chip-cut")
    assert (cut.id, cut.variant_of, cut.processor.units) == ("chip-cut", "chip-full", 60)
    assert cut.levels[-1].capacity_bytes == 16e9 and cut.levels[-1].bandwidth_bytes_per_s == 640e9
    assert cut.levels[0].capacity_bytes == 64 * 2**20  # the L2 is the parent's
    assert [s.title for s in cut.sources] == ["Full chip datasheet"]
    peak = cut.figure("compute.matrix.bf16")
    # parent: 200 TFLOPS / (80 x 2.5 GHz) = 1000 FLOPs/cycle/unit; bin: 60 x 2.0 GHz x 1000 = 120 TFLOPS
    assert (peak.rung, peak.value) == ("derived", pytest.approx(120e12))
    assert "parent chip-full" in peak.note
    # the FP16-accumulate rate scales the same way: 400 x (60 x 2.0) / (80 x 2.5) = 240
    assert cut.peak_flops_per_s("matrix", "bf16", half_accumulate=True) == pytest.approx(240e12)
    assert full.figure("compute.matrix.bf16").rung == "sourced"


def test_variant_with_its_own_peak_keeps_it(tmp_path):
    f = tmp_path / "chip.toml"
    f.write_text(VARIANT_FILE.format(extra="compute = { matrix = { dense_tflops = { bf16 = 130.0 } } }"))
    cut = pm.device_from_file(f, "chip-cut")
    assert cut.figure("compute.matrix.bf16").value == pytest.approx(130e12)
    assert cut.figure("compute.matrix.bf16").rung == "sourced"


def test_variant_with_an_unknown_key_is_named(tmp_path):
    f = tmp_path / "chip.toml"
    f.write_text(VARIANT_FILE.format(extra="colour = 'red'"))
    with pytest.raises(pm.PerfmodelError, match="unknown key.*colour"):
        pm.device_from_file(f, "chip-cut")


def test_a_family_read_alone_is_the_catalogs_family():
    """catalog_devices(family) parses only the files that name the family: it must find what filtering the whole
    catalog finds (bins included), for every family."""
    _clear_caches()
    everything = catalog.catalog_devices()
    families = sorted({d.family for d in everything if d.family})
    assert len(families) > 20
    alone = {}
    for fam in families:
        _clear_caches()  # each family read alone, not filtered from a catalog already parsed
        alone[fam] = [d.id for d in catalog.catalog_devices(fam)]
    for fam in families:
        assert alone[fam] == [d.id for d in everything if d.family == fam], fam
    assert any(d.variant_of and d.id in alone[d.family] for d in everything if d.family)
    _clear_caches()


def test_catalog_variants_resolve_by_id_and_alias(tmp_path, monkeypatch):
    root = tmp_path / "hardware_specs" / "gpu"
    root.mkdir(parents=True)
    (root / "chip-full.toml").write_text(VARIANT_FILE.format(extra=""))
    monkeypatch.setenv("PERFMODEL_PATH", str(tmp_path))
    _clear_caches()
    try:
        assert pm.load_device("cut").id == "chip-cut"
        assert "chip-cut" in {d.id for d in catalog.catalog_devices()}
    finally:
        monkeypatch.delenv("PERFMODEL_PATH")
        _clear_caches()


def test_context_beyond_the_model_is_a_warning_not_an_error():
    est = pm.estimate("gpt2", "h100-sxm", prompt_len=2000, gen_len=128)
    assert est.tpot_s > 0
    assert any("exceeds the context length of gpt2 (1024 tokens" in w for w in est.warnings)


def test_tensor_parallel_without_a_stated_link_is_costed_with_a_warning():
    # the L4 file states no interconnect: PCIe 4.0 x16 for its 2023 launch? its file says what it says; either way
    # the estimate runs and the link figure is named when it is not sourced
    est = pm.estimate("llama-3-8b", "l4", tp=2, prompt_len=512, gen_len=32)
    link = est.provenance["interconnect.bandwidth"]
    assert link["bounds"]["decode"] > 0
    if link["rung"] == "estimated":
        assert any(w.startswith("interconnect.bandwidth is estimated") for w in est.warnings)


def test_encoder_asked_to_generate_is_still_an_error():
    with pytest.raises(pm.PerfmodelError, match="encoder-only"):
        pm.estimate("bert-base", "h100-sxm", gen_len=5)


def test_a_figure_no_rule_gives_stops_with_what_to_supply():
    d = Device(id="bare", name="bare", kind="gpu", vendor="v", memory=[{"name": "M", "bandwidth_gb_per_s": 100}])
    with pytest.raises(pm.PerfmodelError, match=r"compute\.vector\.dense_tflops\.bf16.*flops_per_cycle_per_unit"):
        pm.estimate("gpt2", d, gen_len=8)


def test_estimate_json_keys(capsys):
    from perfmodel.cli import main

    assert main(["estimate", "--model", "llama-3-8b", "--hardware", "rtx-4090", "--weights", "q4_0", "--engine",
                 "llamacpp", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("ttft_s", "tpot_s", "decode_tokens_per_s", "memory", "phases", "config"):
        assert key in d  # the existing contract
    iv = d["intervals"]["decode_tokens_per_s"]
    assert iv["low"] < d["decode_tokens_per_s"] < iv["high"] or iv["low"] <= d["decode_tokens_per_s"] <= iv["high"]
    assert iv["coverage"] == 0.8 and iv["rows"] >= 12
    assert d["provenance"]["memory.GDDR6X.bandwidth"]["rung"] in ("sourced", "derived")
    assert isinstance(d["warnings"], list)


@pytest.mark.parametrize("entry", catalog.device_entries(), ids=lambda e: e[0])
def test_every_catalog_device_gives_an_estimate(entry):
    """No refusal but capacity: the smallest fitting of two small models, batch 1, prompt 512, gen 128."""
    _, path, variant = entry
    d = pm.device_from_file(path, variant)
    for model, weights in (("llama-3.2-1b", "q4_0"), ("qwen2.5-0.5b", "q4_0")):
        try:
            est = pm.estimate(model, d, weights=weights, batch=1, prompt_len=512, gen_len=128)
        except pm.CapacityError:
            continue
        assert np.isfinite(est.decode_tokens_per_s) and est.decode_tokens_per_s > 0
        assert np.isfinite(est.ttft_s) and est.ttft_s > 0
        return
    pytest.fail(f"{d.id}: neither small model fits")


def test_cpu_cache_bandwidth_is_derived_from_bytes_per_cycle_and_else_estimated_by_rule_8():
    # EPYC 9684X (Zen 4): L2 32 B/cycle/core (AMD SOG 2.6.3) x 96 cores x 3.42 GHz all-core = 10,506.24 GB/s
    d = pm.load_device("epyc-9684x")
    f = d.figure("memory.L2.bandwidth")
    assert (f.rung, f.value) == ("derived", pytest.approx(32 * 96 * 3.42e9))
    # its L3 has no stated rate: 0.75 x 64-byte (AVX-512) registers = 48 B/cycle/core by rule 8, more than the L2
    # above it, so held to the L2's 10,506 GB/s
    f = d.figure("memory.L3.bandwidth")
    assert (f.rung, f.rule, f.value) == ("estimated", "cpu-cache", pytest.approx(32 * 96 * 3.42e9))
    assert "held to the L2 figure" in f.note
    # a CPU of no family: 8 cores x 3 GHz, AVX2 (32-byte registers): L1 2 x 32 = 64 B/cycle -> 1,536 GB/s; L2 32 B
    # -> 768 GB/s; L3 0.75 x 32 = 24 B -> 576 GB/s
    d = Device(id="c", name="c", kind="cpu", vendor="v", processor={"units": 8, "base_clock_ghz": 3.0, "simd": "AVX2"},
               memory=[{"name": "L1d", "capacity_kib_per_unit": 32}, {"name": "L2", "capacity_mib_per_unit": 1},
                       {"name": "L3", "capacity_mib": 32}, {"name": "DDR", "bandwidth_gb_per_s": 50}])
    got = {n: d.figure(f"memory.{n}.bandwidth").value for n in ("L1d", "L2", "L3")}
    assert got == {"L1d": pytest.approx(1536e9), "L2": pytest.approx(768e9), "L3": pytest.approx(576e9)}


def test_a_cpu_cache_level_takes_its_familys_bytes_per_cycle():
    # Ryzen AI Max+ 395 (Zen 5) states no L1d rate; its Zen 5 siblings (EPYC 9755, Ryzen 9 9950X) state 128 B/cycle
    d = pm.load_device("ryzen-ai-max-395-cpu")
    f = d.figure("memory.L1d.bandwidth")
    clock = d.figure("processor.clock").value
    assert (f.rung, f.rule) == ("estimated", "family-rate")
    assert f.value == pytest.approx(128 * d.processor.units * clock)


def test_a_model_whose_weights_fit_in_l3_decodes_faster_than_dram_allows():
    # EPYC 9684X: 1,152 MB of L3, 460.8 GB/s of DDR5. Qwen2.5-0.5B at int8 (0.63 GB with its KV) lives in the L3:
    # decode beats even the DRAM's full bandwidth over the weights; Llama-3-8B at bf16 (16 GB) cannot
    d = pm.load_device("epyc-9684x")
    dram = d.main_memory.bandwidth_bytes_per_s
    small = pm.estimate("qwen2.5-0.5b", d, batch=1, prompt_len=128, gen_len=32, weights="int8")
    assert small.memory["weights_bytes"] < 1152 * 2**20
    assert small.decode_tokens_per_s > dram / small.memory["weights_bytes"]
    big = pm.estimate("llama-3-8b", d, batch=1, prompt_len=128, gen_len=32, weights="bf16")
    assert big.decode_tokens_per_s < dram / big.memory["weights_bytes"]


def test_the_roofline_shows_each_cache_level_of_a_cpu():
    from perfmodel.plots import ceilings

    labels = [c.label for c in ceilings(pm.load_device("xeon-8480plus")) if c.kind == "memory"]
    # L1d 128 B, L2 64 B, L3 16 B per cycle per core x 56 cores x 2.0 GHz (the clock this file derives at)
    assert [lab.split()[0] for lab in labels] == ["L1d", "L2", "L3", "DDR5"]
    assert labels[2] == f"L3 {16 * 56 * pm.load_device('xeon-8480plus').processor.peak_clock_hz / 1e9:,.0f} GB/s"


def test_a_cache_of_unknown_size_is_the_familys_per_core_or_holds_nothing():
    # the EPYC 9845 bin states no L3 (its file unsets the 9965's): rule 9 gives the family's 384 MiB / 192 cores
    # = 2 MiB a core x 160 cores = 320 MiB, estimated; its 16 GB of weights then stream from DDR5 as the 9965's do
    d = pm.load_device("epyc-9845")
    fig = d.figure("memory.L3.capacity")
    assert fig.rung == "estimated" and fig.rule == "family-cache-size" and fig.value == 320 * 2**20
    a = pm.estimate("llama-3-8b", "epyc-9845").tpot_s
    b = pm.estimate("llama-3-8b", "epyc-9965").tpot_s
    assert a == pytest.approx(b, rel=0.02)
    # with no sibling to ask, the level holds nothing: main memory serves the weights
    from perfmodel.cost import Machine
    from perfmodel.graph import Parallel

    lone = Device(**{**d.model_dump(exclude_none=True), "family": None})
    assert lone.figure("memory.L3.capacity") is None
    caps = {name: cap for cap, _, name in Machine(lone, pm.Efficiency(), Parallel()).levels}
    assert caps["L3"] == 0.0 and caps[lone.levels[-1].name] == math.inf
