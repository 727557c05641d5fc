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
