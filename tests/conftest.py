from pathlib import Path

import pytest

import perfmodel as pm

FIXTURES = Path(__file__).parent / "fixtures"
HF = FIXTURES / "hf"


@pytest.fixture(scope="session")
def llama2():
    return pm.load_model("llama-2-7b")


@pytest.fixture(scope="session")
def a100():
    return pm.load_device("a100-80gb-sxm")


@pytest.fixture(autouse=True)
def _no_user_state(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's home or cache: calibration profiles live in a fresh folder per test,
    and HOME points there too."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("PERFMODEL_PROFILE_DIR", str(home / "profiles"))
    monkeypatch.setenv("HOME", str(home))
