"""perfmodel: analytical LLM inference performance on GPUs and multicore CPUs.

    import perfmodel as pm
    model, dev = pm.load_model("llama-3-8b"), pm.load_device("h100-sxm")
    est = pm.estimate(model, dev, pm.Workload(batch=8, prompt_len=2048, gen_len=256))
    print(est.summary()); est.ops  # DataFrame: one row per op with flops, bytes, time, bound

Pipeline: ModelSpec + Workload --lower--> operator graph --cost on a Device--> metrics, per-op table.
"""

from .api import Estimate, Metrics, device_from_file, estimate, load_device, load_model
from ._local import detect_local
from .device import Device
from .dtypes import DType
from .efficiency import Efficiency
from .engines import efficiency_for, load_engine, load_profile
from .errors import CapacityError, PerfmodelError
from .estimate import Workload
from .graph import Op, OpKind, Pass, lower
from .hf import load_hf_config
from .model import ModelSpec
from .scenarios import sweep


__all__ = ["CapacityError", "DType", "Device", "Efficiency", "Estimate", "Metrics", "ModelSpec", "Op", "OpKind", "Pass",
           "PerfmodelError", "Workload", "detect_local", "device_from_file", "efficiency_for", "estimate", "load_device", "load_engine", "load_hf_config", "load_model",
           "load_profile", "lower", "sweep"]
__version__ = "0.1.0"
