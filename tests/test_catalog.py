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


def test_readme_catalog_is_generated_from_the_data():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "catalog_md.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_coverage():
    hw = hardware_rows()
    assert sum(r["kind"] in ("gpu", "accelerator") for r in hw) >= 40
    years = [r["year"] for r in hw if r["kind"] == "cpu" and r["year"]]
    assert min(years) <= 2005 and max(years) >= 2024  # 25 years of CPUs for the trend studies
    assert len(model_rows()) >= 45


@pytest.mark.xfail(strict=True, reason="issue 3 open: 39 CPUs are sourced so far (Threadripper, AmpereOne and the "
                                       "desktop Core i7/i9 parts still need a sourced read)")
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
