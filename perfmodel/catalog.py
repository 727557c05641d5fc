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

from .errors import PerfmodelError, unknown_name

_PKG = Path(__file__).resolve().parent


def data_roots() -> list[Path]:
    roots = [p for p in (_PKG / "_data", _PKG.parent) if (p / "hardware_specs").is_dir()]
    extra = [Path(p) for p in os.environ.get("PERFMODEL_PATH", "").split(os.pathsep) if p]
    return roots[:1] + extra


def _files(sub: str) -> list[Path]:
    out: list[Path] = []
    for root in data_roots():
        base = root / sub
        if base.is_dir():
            out += sorted(base.rglob("*.toml"))
    return out


def device_files() -> list[Path]:
    return _files("hardware_specs")


def model_files() -> list[Path]:
    return _files("workloads/models")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PerfmodelError(f"file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise PerfmodelError(f"{path}: not valid TOML: {e}") from None


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


def hardware_rows() -> list[dict[str, Any]]:
    """One summary row per catalog device (what `perfmodel list hardware` prints)."""
    from .api import load_device

    rows = []
    for f in device_files():
        d = load_device(f)
        mm = d.main_memory
        peak = d.peak_flops_per_s("matrix", "bf16") or d.peak_flops_per_s("vector", "bf16")
        fp32 = d.peak_flops_per_s("vector", "fp32")
        rows.append({"id": d.id, "name": d.name, "kind": d.kind, "vendor": d.vendor, "year": d.year,
                     "memory_gb": None if mm.capacity_bytes is None else mm.capacity_bytes / 1e9,
                     "bandwidth_gb_per_s": mm.bandwidth_bytes_per_s / 1e9,
                     "bf16_tflops": peak / 1e12 if peak else None,
                     "fp32_vector_tflops": fp32 / 1e12 if fp32 else None})
    return sorted(rows, key=lambda r: (r["kind"], r["vendor"], r["year"] or 0, r["id"]))


def model_rows() -> list[dict[str, Any]]:
    """One summary row per catalog model (what `perfmodel list models` prints)."""
    from .api import load_model

    rows = []
    for f in model_files():
        m = load_model(f)
        rows.append({"id": m.id, "name": m.name, "arch": m.arch, "params_total": m.params_total(),
                     "params_active": m.params_active()})
    return sorted(rows, key=lambda r: r["id"])


@lru_cache(maxsize=4)
def _index(kind: str) -> dict[str, Path]:
    """Map ids and aliases (lowercase) to files. File stems are ids; aliases need the file parsed."""
    files = device_files() if kind == "hardware" else model_files()
    index: dict[str, Path] = {}
    for f in files:
        data = read_toml(f)
        for name in [data.get("id", f.stem), *data.get("aliases", ())]:
            index.setdefault(str(name).lower(), f)
    return index


def find(kind: str, name: str) -> Path:
    """Path of the catalog file for an id or alias; a clear error with suggestions otherwise."""
    key = name.strip().lower()
    sub = "hardware_specs" if kind == "hardware" else "workloads/models"
    for root in data_roots():  # fast path: the id is the file name
        hits = list((root / sub).rglob(f"{key}.toml")) if (root / sub).is_dir() else []
        if hits:
            return hits[0]
    index = _index(kind)
    if key in index:
        return index[key]
    flag = "--hardware" if kind == "hardware" else "--model"
    raise unknown_name(
        flag, name, index, what=f"See `perfmodel list {kind if kind == 'hardware' else 'models'}`, or pass a file path."
    )
