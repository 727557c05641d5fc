import pytest

import perfmodel as pm
from perfmodel.catalog import device_files


@pytest.mark.parametrize("path", device_files(), ids=lambda p: p.stem)
def test_catalog_devices_load_with_sources(path):
    d = pm.load_device(path)
    assert d.sources and all(s.title and s.url for s in d.sources), f"{path.name} lacks sourced titles/urls"
    assert d.main_memory.bandwidth_bytes_per_s > 0
    assert d.id == path.stem


@pytest.mark.parametrize("path", device_files(), ids=lambda p: p.stem)
def test_derived_peaks_match_quoted_within_2_percent(path):
    for what, quoted, derived in pm.load_device(path).quoted_vs_derived():
        assert derived == pytest.approx(quoted, rel=0.02), what


def test_cpu_peak_is_derived_from_parts():
    d = pm.load_device("xeon-8480plus")
    # 56 cores x 2.0 GHz (base; no all-core figure sourced) x 64 FP32 FLOPs/cycle (2 AVX-512 FMA x 16 lanes x 2)
    assert d.peak_flops_per_s("vector", "fp32") == pytest.approx(56 * 2.0e9 * 64)
    # AMX: 1024 BF16 FLOPs/cycle/core
    assert d.peak_flops_per_s("matrix", "bf16") == pytest.approx(56 * 2.0e9 * 1024)
    # DDR5: 8 channels x 4800 MT/s x 8 bytes = 307.2 GB/s
    assert d.main_memory.bandwidth_bytes_per_s == pytest.approx(307.2e9)


def test_epyc_uses_all_core_clock():
    d = pm.load_device("epyc-9654")
    assert d.peak_flops_per_s("vector", "fp32") == pytest.approx(96 * 3.55e9 * 32)
    assert d.main_memory.bandwidth_bytes_per_s == pytest.approx(12 * 4800e6 * 8)  # 460.8 GB/s


def test_aliases_resolve():
    assert pm.load_device("h100").id == "h100-sxm"


def test_unknown_device_suggests():
    with pytest.raises(pm.PerfmodelError, match=r"Did you mean 'h100-sxm'"):
        pm.load_device("h100-sxn")


def test_device_file_typo_is_named(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('id = "x"\nname = "X"\nkind = "gpu"\nvendor = "v"\n[[memory]]\nname = "HBM"\ncapacity_gb = 1\n'
                 'bandwith_gb_per_s = 100\n')
    with pytest.raises(pm.PerfmodelError, match=r"unknown key `memory.0.bandwith_gb_per_s`"):
        pm.load_device(f)


def test_device_file_bad_precision_key(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('id = "x"\nname = "X"\nkind = "gpu"\nvendor = "v"\n[compute.matrix.dense_tflops]\nbf61 = 10\n'
                 '[[memory]]\nname = "HBM"\ncapacity_gb = 1\nbandwidth_gb_per_s = 100\n')
    with pytest.raises(pm.PerfmodelError, match="unknown precision 'bf61'"):
        pm.load_device(f)


def test_malformed_toml(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("id = \n")
    with pytest.raises(pm.PerfmodelError, match="not valid TOML"):
        pm.load_device(f)


def test_local_detection(monkeypatch):
    from perfmodel import _local

    monkeypatch.setattr(_local, "measure_read_bandwidth", lambda: 12.5e9)
    _local.detect.cache_clear()
    d = pm.load_device("local")
    _local.detect.cache_clear()
    assert d.kind == "cpu" and d.processor.units >= 1
    assert d.main_memory.bandwidth_bytes_per_s == pytest.approx(12.5e9)
    assert d.peak_flops_per_s("vector", "fp32") > 0
