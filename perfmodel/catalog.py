"""The built-in catalogs: device files under hardware_specs/, model files under workloads/models/.

Installed wheels carry them as perfmodel/_data/; a source checkout reads them from the repository root. Directories
named in the PERFMODEL_PATH environment variable (os.pathsep-separated) are searched too, so users can keep their own
files outside the package.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import provenance
from .device import Device
from .errors import PerfmodelError, unknown_name
from .hf import load_hf_config
from .model import ModelSpec

_PKG = Path(__file__).resolve().parent


def data_roots() -> list[Path]:
    roots = [p for p in (_PKG / "_data", _PKG.parent) if (p / "hardware_specs").is_dir()]
    extra = [Path(p) for p in os.environ.get("PERFMODEL_PATH", "").split(os.pathsep) if p]
    return roots[:1] + extra


def data_files(sub: str, recursive: bool = True) -> list[Path]:
    """The .toml files under `sub` of every data root (the package's, then PERFMODEL_PATH's), sorted per root;
    `recursive` False: that folder's own files only."""
    out: list[Path] = []
    for root in data_roots():
        base = root / sub
        if base.is_dir():
            out += sorted(base.rglob("*.toml") if recursive else base.glob("*.toml"))
    return out



def device_files() -> list[Path]:
    return [f for f in data_files("hardware_specs") if f.parent.name != "systems"]


def system_files() -> list[Path]:
    return data_files("hardware_specs/systems")


def model_files() -> list[Path]:
    return data_files("workloads/models")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PerfmodelError(f"file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PerfmodelError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise PerfmodelError(f"file {str(path)!r} cannot be read: {e.strerror or e}") from None


def validation_message(path: Path | str, err: ValidationError) -> str:
    """One paragraph: every field that failed, its value and what is allowed."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key `{loc}` (a typo? see README for the allowed keys)")
        elif e["type"] == "missing":
            parts.append(f"missing key `{loc}`")
        else:
            got = e.get("input")
            shown = f"; got {got!r}" if not isinstance(got, (dict, list)) else ""
            parts.append(f"`{loc}`: {e['msg']}{shown}")
    return f"{path}: " + "; ".join(parts)


# Binned variants ------------------------------------------------------------------------------------------------
# One file describes one chip; the bins of that chip (GPU-core counts, memory sizes, cut-down SKUs) are its
# [[variants]] entries, each stating only what differs. A variant is the file's data with its entry merged in:
# tables key by key, memory levels by name, sources appended.

_VARIANT_KEYS = {"id", "name", "aliases", "year", "notes", "processor", "compute", "memory", "interconnect",
                 "sources", "op_overhead_us", "unset"}


def device_data(path: Path, variant: str | None = None) -> dict[str, Any]:
    """The data of a device file, or of one of its [[variants]] merged into it (validated by the caller)."""
    data = read_toml(path)
    data.setdefault("id", path.stem)
    variants = data.pop("variants", [])
    if not isinstance(variants, list):
        raise PerfmodelError(f"{path}: `variants` must be a list of tables ([[variants]])")
    if variant is None or variant == data["id"]:
        return data
    for i, v in enumerate(variants, 1):
        if not isinstance(v, dict) or "id" not in v:
            raise PerfmodelError(f"{path}: [[variants]] entry {i} needs an `id`")
        if v["id"] != variant:
            continue
        unknown = sorted(set(v) - _VARIANT_KEYS)
        if unknown:
            raise PerfmodelError(f"{path}: [[variants]] entry {v['id']!r}: unknown key(s) {', '.join(unknown)}; "
                                 f"allowed: {', '.join(sorted(_VARIANT_KEYS))}")
        return _merge_variant(data, v)
    raise PerfmodelError(f"{path}: no [[variants]] entry with id {variant!r}")


def _merge_variant(base: dict[str, Any], v: dict[str, Any]) -> dict[str, Any]:
    out = {k: _copy(val) for k, val in base.items()}
    out["variant_of"] = base["id"]
    out["aliases"] = list(v.get("aliases", []))
    for key in ("id", "name", "year", "op_overhead_us"):
        if key in v:
            out[key] = v[key]
    out["notes"] = v.get("notes", "") or (f"A bin of {base['id']} ({base.get('name', '')}); what is not stated here "
                                           f"is the parent's.")
    for key in ("processor", "compute", "interconnect"):
        if key in v:
            out[key] = _deep_merge(base.get(key) or {}, v[key])
    if "memory" in v:
        levels = [dict(m) for m in base.get("memory", [])]
        names = [m.get("name") for m in levels]
        for m in v["memory"]:
            if m.get("name") in names:
                i = names.index(m["name"])
                merged = {k: val for k, val in levels[i].items()
                          if not (k.startswith("capacity_") and any(n.startswith("capacity_") for n in m))}
                if any(k in m for k in ("bandwidth_gb_per_s", "channels", "transfer_rate_mt_per_s",
                                        "bytes_per_cycle_per_unit")):
                    merged = {k: val for k, val in merged.items() if k not in (
                        "bandwidth_gb_per_s", "channels", "transfer_rate_mt_per_s", "bytes_per_cycle_per_unit")}
                levels[i] = {**merged, **m}
            else:
                raise PerfmodelError(f"[[variants]] {v['id']!r}: memory level {m.get('name')!r} is not one of the "
                                     f"parent's ({', '.join(map(str, names))})")
        out["memory"] = levels
    out["sources"] = list(base.get("sources", [])) + list(v.get("sources", []))
    _inherit_peaks(base, v, out)
    for path in v.get("unset", []):
        _unset(out, str(path), v["id"])
    return out


def _unset(data: dict[str, Any], path: str, variant: str) -> None:
    """Drop a figure a bin does not share with its parent and no source gives for the bin: `processor.max_clock_ghz`,
    `interconnect`, `compute.matrix.dense_tflops.fp64`, `memory.L3` (a whole level) or `memory.L3.capacity_mib`."""
    parts = path.split(".")
    if parts[0] == "memory" and len(parts) >= 2:
        levels = data.get("memory", [])
        names = [m.get("name") for m in levels]
        if parts[1] not in names:
            raise PerfmodelError(f"[[variants]] {variant!r}: unset {path!r}: no memory level {parts[1]!r} (levels: "
                                 f"{', '.join(map(str, names))})")
        i = names.index(parts[1])
        if len(parts) == 2:
            data["memory"] = levels[:i] + levels[i + 1:]
        else:
            levels[i] = {k: val for k, val in levels[i].items() if k != parts[2]}
        return
    node = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise PerfmodelError(f"[[variants]] {variant!r}: unset {path!r}: the parent has no {part!r}")
    if not isinstance(node, dict) or parts[-1] not in node:
        raise PerfmodelError(f"[[variants]] {variant!r}: unset {path!r}: the parent gives no such figure")
    node.pop(parts[-1])


def _inherit_peaks(base: dict[str, Any], v: dict[str, Any], out: dict[str, Any]) -> None:
    """A bin with other units or clock keeps the parent's per-unit, per-cycle rate: the parent's quoted peaks become
    FLOPs per cycle per unit (peak / (units x clock)), so the bin's peak is derived at its own units and clock."""
    bp, op = base.get("processor") or {}, out.get("processor") or {}

    def clock(p: dict[str, Any]) -> float | None:
        return p.get("clock_ghz") or p.get("all_core_clock_ghz") or p.get("base_clock_ghz")

    if not bp or (bp.get("units") == op.get("units") and clock(bp) == clock(op)):
        return
    units, ghz = bp.get("units"), clock(bp)
    if not units or not ghz:
        return
    restated = (v.get("compute") or {})
    inherited = {}
    compute = {k: dict(val) if isinstance(val, dict) else val for k, val in (out.get("compute") or {}).items()}
    for unit in ("matrix", "vector"):
        c = {k: dict(val) if isinstance(val, dict) else val for k, val in (compute.get(unit) or {}).items()}
        own = (restated.get(unit) or {}).get("dense_tflops", {})
        per_cycle = dict(c.get("flops_per_cycle_per_unit", {}))
        for p, tflops in dict(c.get("dense_tflops", {})).items():
            if p in own:
                continue
            c["dense_tflops"].pop(p)  # the parent's quoted peak is not this bin's
            if p in per_cycle:
                inherited[f"compute.{unit}.{p}"] = (
                    f"parent {base['id']}'s {per_cycle[p]:g} FLOPs/cycle/unit at this bin's units x clock")
                continue
            per_cycle[p] = tflops * 1e12 / (units * ghz * 1e9)
            inherited[f"compute.{unit}.{p}"] = (
                f"parent {base['id']}: {tflops:g} TFLOPS at {units} units x {ghz:g} GHz = {per_cycle[p]:.4g} FLOPs/"
                f"cycle/unit, at this bin's units x clock")
        for p in list((c.get("sparse_tflops") or {})):
            if p not in ((restated.get(unit) or {}).get("sparse_tflops") or {}):
                c["sparse_tflops"].pop(p)  # recorded per SKU only; never used
        for p in (c.get("half_accumulate_dense_tflops") or {}).copy():
            if p not in ((restated.get(unit) or {}).get("half_accumulate_dense_tflops") or {}):
                scale = (op.get("units") or units) * (clock(op) or ghz) / (units * ghz)
                c["half_accumulate_dense_tflops"][p] = c["half_accumulate_dense_tflops"][p] * scale
        if per_cycle:
            c["flops_per_cycle_per_unit"] = per_cycle
        compute[unit] = c
    out["compute"] = compute
    out["inherited"] = inherited


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


def device_entries() -> list[tuple[str, Path, str | None]]:
    """(id, file, variant id or None) for every catalog device, variants included."""
    out = []
    for f in device_files():
        data = read_toml(f)
        base = str(data.get("id", f.stem))
        out.append((base, f, None))
        for v in data.get("variants", []) if isinstance(data.get("variants"), list) else []:
            if isinstance(v, dict) and "id" in v:
                out.append((str(v["id"]), f, str(v["id"])))
    return out


def catalog_devices(family: str | None = None) -> list[Any]:
    """Every catalog device, variants included, validated (cached per process); with `family`, that family's only,
    parsing only the files that name it (a device's family is a string in its file, which its variants inherit: a file
    whose text never holds the name holds none of the family). Parsing the whole catalog takes about a second; a
    family, milliseconds: an estimate whose figures need the family rules starts that much sooner."""
    if family is None:
        return list(_catalog_devices())
    if _catalog_devices.cache_info().currsize:  # parsed already
        return [d for d in _catalog_devices() if d.family == family]
    return list(_family_devices(family, tuple(str(r) for r in data_roots())))


@lru_cache(maxsize=1)
def _catalog_devices() -> tuple[Any, ...]:
    return tuple(device_from_file(f, v) for _, f, v in device_entries())


@lru_cache(maxsize=64)
def _family_devices(family: str, roots: tuple[str, ...]) -> tuple[Any, ...]:
    out = []
    for f in device_files():
        try:
            if family not in f.read_text(encoding="utf-8", errors="replace"):
                continue
        except OSError:
            pass  # read_toml names the problem
        data = read_toml(f)
        ids = [None] + [str(v["id"]) for v in data.get("variants", []) if isinstance(v, dict) and "id" in v] \
            if isinstance(data.get("variants"), list) else [None]
        out += [d for d in (device_from_file(f, v) for v in ids) if d.family == family]
    return tuple(out)


# the ladder's family and kind rules estimate a device's missing figures from the catalog's devices
provenance.set_catalog(catalog_devices)


# Matching the name a GPU reports (torch.cuda.get_device_name, nvidia-smi) to a catalog device. Vendor and brand words
# say nothing of the model; form factors are matched when the name gives one (an SXM part reports "H100 80GB HBM3",
# its PCIe sibling "H100 PCIe"), and the memory size decides between siblings.
_GPU_NOISE = {"nvidia", "geforce", "amd", "radeon", "instinct", "tesla", "intel", "generation", "gpu",
              "graphics", "hbm3", "hbm3e", "hbm2", "hbm2e", "gddr6", "gddr6x", "gddr7", "the"}
_GPU_FORMS = ("sxm", "pcie", "nvl")
_GPU_VARIANTS = {"ti", "super", "max", "nvl", "ultra", "mini", "mobile", "laptop", "ada", "pro", "xt", "xtx"}


def _gpu_tokens(name: str) -> set[str]:
    import re

    name = re.sub(r"\(.*?\)", " ", name.lower())
    return {t for t in re.split(r"[\s\-_/,]+", name) if t and t not in _GPU_NOISE}


def match_gpu(name: str, memory_bytes: float | None = None) -> str | None:
    """The catalog id of the GPU that reports itself as `name` (with `memory_bytes` of memory, if known), or None
    when no device or more than one matches equally well."""
    import math
    import re

    seen = _gpu_tokens(name)
    seen_forms = {f for t in seen for f in _GPU_FORMS if t.startswith(f)}
    seen_sizes = {t for t in seen if re.fullmatch(r"\d+gb", t)}
    best: list[tuple[float, str]] = []
    for d in _catalog_devices():
        if d.kind != "gpu":
            continue
        toks = _gpu_tokens(d.name)
        forms = {f for t in toks for f in _GPU_FORMS if t.startswith(f)}
        sizes = {t for t in toks if re.fullmatch(r"\d+gb", t)}
        # the model number (tokens with a digit) and its variant words must all be in the reported name
        core = {t for t in toks - sizes if any(c.isdigit() for c in t) and not any(t.startswith(f) for f in _GPU_FORMS)}
        core |= toks & _GPU_VARIANTS
        if not core or not core <= seen:
            continue
        if (seen & _GPU_VARIANTS) - toks:  # a Ti, SUPER, NVL... the catalog entry is not
            continue
        if seen_forms and not seen_forms <= forms:
            continue
        score = float(len(core)) + 0.1 * len((toks - core) & seen)
        if seen_sizes and sizes:
            score += 1.0 if seen_sizes & sizes else -1.0
        if not seen_forms:  # datacenter parts name their PCIe form and not their SXM one
            score += 0.5 if "sxm" in forms else (-0.5 if forms else 0.0)
        cap = d.main_memory.capacity_bytes
        if memory_bytes and cap:
            # the reported memory is the usable part (ECC, reservations): within 15 % counts as the same size
            score -= 2.0 * max(0.0, abs(math.log(cap / memory_bytes)) - 0.15)
        best.append((score, d.id))
    if not best:
        return None
    best.sort(reverse=True)
    if len(best) > 1 and best[0][0] - best[1][0] < 0.05:
        return None
    return best[0][1]


def hardware_rows() -> list[dict[str, Any]]:
    """One summary row per catalog device (what `perfmodel list hardware` prints)."""
    rows = []
    for d in catalog_devices():
        mm = d.main_memory
        bf16 = d.figure("compute.matrix.bf16") or d.figure("compute.vector.bf16")
        fp32 = d.figure("compute.vector.fp32")
        bw = d.figure(f"memory.{mm.name}.bandwidth")
        rows.append({"id": d.id, "name": d.name, "kind": d.kind, "vendor": d.vendor, "year": d.year,
                     "family": d.family, "variant_of": d.variant_of,
                     "memory_gb": None if mm.capacity_bytes is None else mm.capacity_bytes / 1e9,
                     "bandwidth_gb_per_s": mm.bandwidth_bytes_per_s / 1e9,
                     "bandwidth_rung": bw.rung if bw else None,
                     "bf16_tflops": bf16.value / 1e12 if bf16 else None, "bf16_rung": bf16.rung if bf16 else None,
                     "fp32_vector_tflops": fp32.value / 1e12 if fp32 else None,
                     "fp32_rung": fp32.rung if fp32 else None})
    return sorted(rows, key=lambda r: (r["kind"], r["vendor"], r["year"] or 0, r["id"]))


def model_rows() -> list[dict[str, Any]]:
    """One summary row per catalog model (what `perfmodel list models` prints)."""
    rows = []
    for f in model_files():
        m = load_model(f)
        rows.append({"id": m.id, "name": m.name, "arch": m.arch, "params_total": m.params_total(),
                     "params_active": m.params_active()})
    return sorted(rows, key=lambda r: r["id"])


@lru_cache(maxsize=4)
def _index(kind: str) -> dict[str, tuple[Path, str | None]]:
    """Map ids and aliases (lowercase) to (file, variant id or None). File stems are ids; aliases and variants need
    the file parsed."""
    files = device_files() if kind == "hardware" else model_files()
    index: dict[str, tuple[Path, str | None]] = {}
    for f in files:
        data = read_toml(f)
        for name in [data.get("id", f.stem), *data.get("aliases", ())]:
            index.setdefault(str(name).lower(), (f, None))
        for v in data.get("variants", []) if kind == "hardware" and isinstance(data.get("variants"), list) else []:
            if isinstance(v, dict) and "id" in v:
                for name in [v["id"], *v.get("aliases", ())]:
                    index.setdefault(str(name).lower(), (f, str(v["id"])))
    return index


def find(kind: str, name: str) -> Path:
    """Path of the catalog file for an id or alias; a clear error with suggestions otherwise."""
    return find_entry(kind, name)[0]


def find_entry(kind: str, name: str) -> tuple[Path, str | None]:
    """(file, variant id or None) of the catalog entry for an id or alias; a clear error with suggestions."""
    key = name.strip().lower()
    sub = "hardware_specs" if kind == "hardware" else "workloads/models"
    for root in data_roots():  # fast path: the id is the file name
        hits = [h for h in (root / sub).rglob(f"{key}.toml") if "families" not in h.parts
                and "systems" not in h.parts] if (
            root / sub).is_dir() else []
        if hits:
            return hits[0], None
    index = _index(kind)
    if key in index:
        return index[key]
    flag = "--hardware" if kind == "hardware" else "--model"
    names = {**index, **_system_index()} if kind == "hardware" else index
    raise unknown_name(
        flag, name, names,
        what=f"See `perfmodel list {kind if kind == 'hardware' else 'models'}`, or pass a file path."
    )


def _system_index() -> dict[str, Path]:
    """Map system ids and aliases (lowercase) to their files (for the data roots in force)."""
    return _system_index_of(tuple(str(r) for r in data_roots()))


@lru_cache(maxsize=4)
def _system_index_of(roots: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in system_files():
        data = read_toml(f)
        for name in [data.get("id", f.stem), *data.get("aliases", ())]:
            out.setdefault(str(name).lower(), f)
    return out


def load_system(name: str | Path) -> Any:
    """A system (perfmodel.system.System) by catalog id or alias, or from a file."""
    from .system import System

    path = Path(name)
    if path.suffix != ".toml":
        key = str(name).strip().lower()
        if key not in _system_index():
            raise unknown_name("--hardware", str(name), _system_index(), what="See `perfmodel list hardware`.")
        path = _system_index()[key]
    return _kept(path, "system", lambda: _from_toml(path, System))


def is_system(name: str) -> bool:
    return isinstance(name, str) and name.strip().lower() in _system_index()


# Loaders -----------------------------------------------------------------------------------------------------

def load_model(name: str | Path | ModelSpec) -> ModelSpec:
    """A catalog id or alias (`llama-3-8b`), a spec file (`.toml`), or a Hugging Face `config.json` (file or folder).

    >>> load_model("llama-2-7b").params_total()
    6738415616
    """
    if isinstance(name, ModelSpec):
        return name
    path = Path(name)
    if path.suffix == ".json" or path.is_dir():
        return load_hf_config(path)
    path = path if path.suffix == ".toml" else find("models", str(name))
    return _kept(path, None, lambda: _from_toml(path, ModelSpec))


def load_device(name: str | Path | Device) -> Device:
    """A catalog id or alias (`h100-sxm`), a spec file (`.toml`), or `local` for this machine's CPU."""
    if isinstance(name, Device):
        return name
    if str(name).lower() == "local":
        from ._local import detect  # this machine: read from the OS, measured; not a catalog file

        return detect()
    path = Path(name)
    if path.suffix != ".toml" and is_system(str(name)):  # a system: its device, carrying the system's fabric
        system = load_system(str(name))
        return _kept(_system_index()[str(name).strip().lower()], "system device",
                     lambda: load_device(system.device).model_copy(update={"system": system}))
    path, variant = (path, None) if path.suffix == ".toml" else find_entry("hardware", str(name))
    return _kept(path, variant, lambda: device_from_file(path, variant))


_KEPT: dict[tuple, Any] = {}


def _kept(path: Path, variant: str | None, make: Any) -> Any:
    """A loaded spec, kept while its file is unchanged (same size and modification time), so that what is derived
    from it (lowered tables, attainable rates) is derived once per process. Specs are frozen: sharing is safe."""
    try:
        st = Path(path).stat()
    except OSError:
        return make()  # the loader names the problem
    key = (str(path), variant, st.st_mtime_ns, st.st_size)
    if key not in _KEPT:
        if len(_KEPT) >= 4096:
            _KEPT.clear()
        _KEPT[key] = make()
    return _KEPT[key]


def device_from_file(path: Path, variant: str | None = None) -> Device:
    """A device file, or one of its [[variants]] (catalog.device_data merges it), validated."""
    data = device_data(Path(path), variant)
    try:
        return Device(**data)
    except ValidationError as e:
        where = f"{path} [[variants]] {variant!r}" if variant else path
        raise PerfmodelError(validation_message(where, e)) from None


def _from_toml(path: Path, cls: type) -> Any:
    """Validate a spec file into `cls`; the file name is the id unless the file says otherwise."""
    data = read_toml(path)
    data.setdefault("id", path.stem)
    try:
        return cls(**data)
    except ValidationError as e:
        raise PerfmodelError(validation_message(path, e)) from None
