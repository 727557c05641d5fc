"""Which efficiency an estimate uses: a software stack's engine profile, a calibration profile of a machine, or the
literature defaults, decided in one place (`efficiency_for`).

Engine profiles (workloads/engines/<id>.toml) hold a few efficiencies per device class (gpu, apple, cpu,
accelerator), each a term of the cost model with a physical reading (perfmodel/efficiency.py), fitted on the train
split of validation/ by tools/fit_engines.py. `ideal` is the pure roofline (datasheet peaks, no overheads) and
`default` the literature efficiencies of perfmodel.efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from .calibration.profile import auto_profile, read_profile
from .catalog import data_files, read_toml, validation_message
from .device import Device
from .dtypes import DType
from .efficiency import Efficiency, default_for
from .errors import PerfmodelError, did_you_mean

if TYPE_CHECKING:
    from .model import ModelSpec
    from .workload import Workload


@dataclass(frozen=True)
class EngineProfile:
    """What a software stack reaches on a class of device: a few efficiencies per device class (gpu, apple, cpu,
    accelerator), documented and fitted on the train split. `ideal` is the pure roofline (datasheet peaks)."""

    id: str
    name: str
    description: str
    fitted: str
    classes: dict[str, dict[str, float]]

    def efficiency(self, device: Device) -> Efficiency:
        base = default_for(device.kind)
        if self.id == "default":
            return base
        if self.id == "ideal":
            return Efficiency(matrix=1, vector=1, memory=1, interconnect=1, op_overhead_s=0.0,
                              source="ideal: datasheet peaks, no overheads")
        values = self.classes.get(device_class(device), {})
        try:  # built anew, so a typo'd key or an out-of-range value in a profile file is an error, not ignored
            return Efficiency(**{**base.model_dump(), **values,
                                 "source": f"engine profile {self.id} ({device_class(device)})"})
        except ValidationError as e:
            raise PerfmodelError(validation_message(f"engine profile {self.id} [{device_class(device)}]", e)) from None


def device_class(device: Device) -> str:
    """gpu, apple (unified-memory GPUs), cpu or accelerator: engine profiles differ per class, not per device."""
    if device.kind == "gpu" and device.vendor == "apple":
        return "apple"
    return device.kind


def engine_files() -> list[Path]:
    return data_files("workloads/engines", recursive=False)


def load_engine(name: str) -> EngineProfile:
    if name == "ideal":
        return EngineProfile("ideal", "Pure roofline", "Datasheet peaks, efficiency 1, no per-op overhead (what "
                             "LLM-Viewer computes).", "nothing fitted", {})
    if name == "default":
        return EngineProfile("default", "Literature efficiencies", "The defaults of perfmodel.efficiency (published "
                             "achieved fractions), what an estimate without --engine or --profile uses.",
                             "nothing fitted", {})
    files = {p.stem: p for p in engine_files()}
    if name not in files:
        allowed = ["ideal", "default", *files]
        raise PerfmodelError(f"engine must be one of: {', '.join(allowed)}; got {name!r}."
                             f"{did_you_mean(name, allowed)}")
    data = read_toml(files[name])
    classes = {k: v for k, v in data.items() if isinstance(v, dict)}
    return EngineProfile(name, data.get("name", name), data.get("description", ""), data.get("fitted", ""), classes)


def engine_ids() -> list[str]:
    return ["ideal", "default", *(p.stem for p in engine_files())]


def efficiency_for(device: Device, engine: str | None = None, profile: "Efficiency | str | Path | None" = None
                   ) -> tuple[Efficiency, str]:
    """(the efficiency an estimate on `device` uses, the name its error band is looked up under).

    An engine profile (`engine`), or a calibration profile (`profile`: a file, checked for edits and for the machine
    it was measured on, or an Efficiency), not both; with neither, this machine's own calibration for `local` when
    one was made here (or for a catalog GPU, one calibrated on such a GPU), else the literature defaults
    (`default`)."""
    if engine and profile is not None:
        raise PerfmodelError("give an efficiency profile (a calibration of a machine) or an engine (a software "
                             "stack), not both")
    if engine:
        return _engine_efficiency(engine, device), engine
    if isinstance(profile, (str, Path)):
        return read_profile(profile, device_id=device.id), "calibrated"
    if isinstance(profile, Efficiency):
        return profile, "calibrated"
    # this machine's calibration (`local`), or a GPU's from `perfmodel calibrate --device cuda` (written under the
    # catalog id its name matched)
    mine = auto_profile(device.id)
    if mine is not None:
        return mine, "calibrated"
    return default_for(device.kind), "default"


# Which tensors a quantised checkpoint leaves out of its format (docs/model.md, "Checkpoint formats"). Facts about the
# tools that write the checkpoints each engine loads, not fitted:
# - The LM head and the token-embedding table stay at 16 bits in the checkpoints made for TensorRT-LLM (its
#   examples/quantization/quantize.py: `--quantize_lm_head` default False; `--dtype` is "the data type for the model
#   weights and activations of the non-quantized part, e.g., embedding and lm_head", NVIDIA/TensorRT-LLM at 059c97c),
#   for vLLM and SGLang (llm-compressor recipes `targets: [Linear]`, `ignore: [lm_head]`, e.g. neuralmagic/
#   Llama-3.2-1B-FP8 recipe.yaml; AWQ and GPTQ quantise the decoder layers' linear modules), and for transformers
#   and LMDeploy (the same AWQ/GPTQ/bitsandbytes checkpoints). No engine named: the same rule, the common case.
# - GGUF files quantise them with the rest (the mixes' bits per weight include them, perfmodel.dtypes
#   GGUF_MIX_BITS); mlx-lm quantises every module that can be (nn.quantize with `hasattr(m, "to_quantized")`:
#   Linear and Embedding); ExLlamaV2, ONNX Runtime, CTranslate2, OpenVINO and IPEX-LLM have their own converters and
#   keep the format as given.
HEAD_16BIT_ENGINES = ("trtllm", "vllm", "sglang", "hf", "lmdeploy", None)  # MLPerf rows: their stack's (profile_of)
# - Formats a checkpoint applies to an MoE model's routed experts only. MXFP4: gpt-oss is "post-trained with
#   quantization of the mixture-of-experts (MoE) weights to MXFP4 format ... The MoE weights are responsible for 90+%
#   of the total parameter count" (OpenAI gpt-oss model card); "it uses the standard bfloat16 for attention and other
#   layers" (vLLM blog, GPT-OSS, 2025-08-05). llama.cpp's GGUF holds the other tensors, embedding and LM head
#   included, as Q8_0: llama-quant.cpp, llama_tensor_get_type, for LLAMA_FTYPE_MOSTLY_MXFP4_MOE "MoE tensors ->
#   MXFP4, other tensors -> Q8_0" and the output tensor Q8_0; llama-bench's sizes agree, 11.27 GiB for gpt-oss-20b
#   (19.12 B expert parameters x 4.25 bits + 1.80 B others x 8.5 bits = 11.24 GiB; BF16 others would make 12.81,
#   MXFP4 10.35) and 59.02 GiB for gpt-oss-120b (58.86; 60.71, 57.80), validation/llamacpp-dgx-spark.toml.
EXPERT_ONLY_FORMATS = {DType.MXFP4: {"llamacpp": DType.Q8_0, "other": DType.BF16}}


def checkpoint_formats(wl: "Workload", model: "ModelSpec", engine: str | None) -> "Workload":
    """`wl` with the formats of the tensors a quantised checkpoint for `engine` keeps apart filled in where it leaves
    them open (Workload.dense_weights, head_weights): an MoE model's non-expert matrices under an experts-only format
    (EXPERT_ONLY_FORMATS), and the LM head and embedding table at 16 bits (the activation format, else BF16) where
    the engine's checkpoints keep them so (HEAD_16BIT_ENGINES)."""
    w, update = wl.weights, {}
    rule = EXPERT_ONLY_FORMATS.get(w)
    if wl.dense_weights is None and rule and model.is_moe:
        update["dense_weights"] = rule.get(engine or "", rule["other"])
    dense = update.get("dense_weights", wl.dense_weights) or w
    quantised = dense.bits < 16 and not dense.is_gguf
    if wl.head_weights is None and quantised and engine in HEAD_16BIT_ENGINES:
        update["head_weights"] = wl.act if wl.act in (DType.BF16, DType.FP16) else DType.BF16
    return wl.model_copy(update=update) if update else wl


def default_act(engine: str | None, weights: "str | DType", device: Device) -> str:
    """The compute format an engine uses when the workload does not say: serving stacks quantise activations along
    with FP8/FP4/INT8 weights (W8A8, W4A4 GEMMs) where the device's matrix units multiply in that format, and otherwise
    dequantise the weights and multiply at 16 bits (weight-only: MXFP4 gpt-oss on an H100 runs W4A16 kernels, there
    being no FP4 tensor cores); llama.cpp dequantises GGUF blocks and computes in fp16 on GPUs, fp32 on CPUs."""
    weights = weights.value if isinstance(weights, DType) else str(weights)
    if engine in ("trtllm", "vllm", "sglang", "mlperf") and weights in ("fp8", "fp8_b128", "nvfp4", "mxfp4", "int8"):
        act = "fp8" if weights == "fp8_b128" else weights
        if device.peak_flops_per_s("matrix", DType.parse(act).compute) is not None:
            return act
    return "fp32" if device.kind == "cpu" else "fp16"


def open_act(engine: str | None, weights: "str | DType", device: Device) -> DType:
    """The compute format where a workload leaves it open: a software stack's own (default_act), and with no stack
    (nor `ideal` or `default`, which are none) the workload's default."""
    if engine and engine not in ("ideal", "default"):
        return DType.parse(default_act(engine, weights, device))
    from .workload import Workload

    return Workload.model_fields["act"].default


_ENGINE_EFFICIENCY: dict[tuple, Efficiency] = {}


def _engine_efficiency(engine: str, device: Device) -> Efficiency:
    """An engine profile's efficiency for a device, one object per (profile file as it stands, device class): the
    machines built on it share their derived rates (perfmodel.evaluate.machine)."""
    files = {p.stem: p for p in engine_files()} if engine not in ("ideal", "default") else {}
    stat = files[engine].stat() if engine in files else None
    key = (engine, str(files.get(engine)), stat and stat.st_mtime_ns, stat and stat.st_size, device_class(device),
           device.kind)
    if key not in _ENGINE_EFFICIENCY:
        _ENGINE_EFFICIENCY[key] = load_engine(engine).efficiency(device)
    return _ENGINE_EFFICIENCY[key]


def load_profile(path: str | Path) -> Efficiency:
    """Load an efficiency profile from a TOML file (keys as in Efficiency); calibrated profiles are checked for
    edits and for having been measured on this machine (perfmodel.calibration.profile.read_profile)."""
    return read_profile(path)
