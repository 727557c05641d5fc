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

from pydantic import ValidationError

from .calibration.profile import auto_profile, read_profile
from .catalog import data_roots, read_toml, validation_message
from .device import Device
from .efficiency import Efficiency, default_for
from .errors import PerfmodelError, did_you_mean


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
    out: list[Path] = []
    for root in data_roots():
        base = root / "workloads" / "engines"
        if base.is_dir():
            out += sorted(base.glob("*.toml"))
    return out


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
    one was made here, else the literature defaults (`default`)."""
    if engine and profile is not None:
        raise PerfmodelError("give an efficiency profile (a calibration of a machine) or an engine (a software "
                             "stack), not both")
    if engine:
        return _engine_efficiency(engine, device), engine
    if isinstance(profile, (str, Path)):
        return read_profile(profile, device_id=device.id), "calibrated"
    if isinstance(profile, Efficiency):
        return profile, "calibrated"
    if device.id == "local":
        mine = auto_profile("local")
        if mine is not None:
            return mine, "calibrated"
    return default_for(device.kind), "default"


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
