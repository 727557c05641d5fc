"""perfmodel: analytical LLM inference performance on GPUs and multicore CPUs.

    import perfmodel as pm
    model, dev = pm.load_model("llama-3-8b"), pm.load_device("h100-sxm")
    est = pm.estimate(model, dev, pm.Workload(batch=8, prompt_len=2048, gen_len=256))
    print(est.summary()); est.ops  # DataFrame: one row per op with flops, bytes, time, bound

Pipeline: ModelSpec + Workload --lower--> operator graph --cost on a Device--> metrics, per-op table.

The names below are loaded when first used (PEP 562), so `import perfmodel` and the command line start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Estimate": "api", "Metrics": "api", "estimate": "api",
    "device_from_file": "catalog", "load_device": "catalog", "load_model": "catalog",
    "detect_local": "_local", "Device": "device", "DType": "dtypes", "Efficiency": "efficiency",
    "efficiency_for": "engines", "load_engine": "engines", "load_profile": "engines",
    "CapacityError": "errors", "PerfmodelError": "errors", "Workload": "workload",
    "Op": "graph", "OpKind": "graph", "Pass": "graph", "lower": "graph", "load_hf_config": "hf",
    "ModelSpec": "model", "sweep": "scenarios",
}
__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'perfmodel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
