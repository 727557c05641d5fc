"""Profile files: a calibrated Efficiency as readable TOML, the raw measurements as CSV beside it.

Both are written atomically (temporary file, then rename). Reading checks the TOML against the schema, the CSV against
the checksum recorded in the profile, and the measuring host against this machine for `local` profiles: a corrupt or
foreign-machine profile is refused with a message that says why.
"""

from __future__ import annotations

import hashlib
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._io import atomic_write_text
from ..efficiency import Efficiency
from ..errors import PerfmodelError

FINGERPRINT_KEYS = ("cpu_model", "physical_cores", "logical_cpus", "machine")


def default_profile_path(device_id: str = "local") -> Path:
    """Where `perfmodel calibrate` writes, and where estimates on `local` look: $PERFMODEL_PROFILE_DIR, else
    ~/.cache/perfmodel."""
    base = os.environ.get("PERFMODEL_PROFILE_DIR") or Path.home() / ".cache" / "perfmodel"
    return Path(base) / f"{device_id}.toml"


def host_fingerprint() -> dict[str, Any]:
    from .._local import _cpuinfo, _physical_cores

    info = _cpuinfo()
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "physical_cores": _physical_cores(info),
        "logical_cpus": os.cpu_count() or 1,
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _toml_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def to_toml(eff: Efficiency) -> str:
    data = eff.model_dump(exclude_none=True)
    lines = ["# perfmodel calibration profile (perfmodel calibrate). Rates in FLOP/s, bandwidths in bytes/s, times in s.",
             "# Keys of the per-class tables are <class>.<precision>; see perfmodel/efficiency.py."]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for k, v in data.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        lines += ["", f"[{k}]"]
        lines += [f'"{kk}" = {_toml_value(vv)}' for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def values_digest(eff: Efficiency) -> str:
    """SHA-256 of every value of a profile but the checksum itself and `source` (set when read), in a canonical
    JSON form: floats as TOML writes and reads them back, tuples as lists."""
    import json

    data = eff.model_dump(exclude={"values_sha256", "source"})
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()


def write_profile(path: str | Path, eff: Efficiency, raw_csv: str) -> Path:
    """Write the profile and its raw measurements (same name, .csv) atomically; returns the profile path."""
    path = Path(path)
    digest = hashlib.sha256(raw_csv.encode()).hexdigest()
    eff = Efficiency(**{**eff.model_dump(), "raw_sha256": digest,
                        "created": eff.created or datetime.now(timezone.utc).isoformat(timespec="seconds")})
    eff = Efficiency(**{**eff.model_dump(), "values_sha256": values_digest(eff)})
    atomic_write_text(path.with_suffix(".csv"), raw_csv)
    atomic_write_text(path, to_toml(eff))
    return path


def read_profile(path: str | Path, device_id: str | None = None, check_host: bool = True) -> Efficiency:
    """Load a profile (or a hand-written efficiency file) and refuse it if corrupt or measured elsewhere."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PerfmodelError(f"profile {str(path)!r} does not exist; run `perfmodel calibrate` to make one") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PerfmodelError(f"profile {path} is corrupt (not valid TOML: {e}); delete it and calibrate again") from None
    except OSError as e:
        raise PerfmodelError(f"profile {str(path)!r} cannot be read: {e.strerror or e}") from None
    data.setdefault("source", str(path))
    try:
        eff = Efficiency(**data)
    except ValidationError as e:
        from ..catalog import validation_message

        raise PerfmodelError(f"profile is corrupt or from another version: {validation_message(path, e)}") from None
    calibrated = bool(eff.raw_sha256 or eff.created or eff.host)
    if calibrated and not eff.values_sha256:
        raise PerfmodelError(f"profile {path} records no checksum of its values (written by an older version, or "
                             f"edited); calibrate again")
    if eff.values_sha256 and values_digest(eff) != eff.values_sha256:
        raise PerfmodelError(f"profile {path}: its values do not match the checksum it records (edited by hand?); "
                             f"calibrate again, or copy the values without `values_sha256` into an efficiency file "
                             f"of your own")
    raw = path.with_suffix(".csv")
    if eff.raw_sha256 and raw.exists() and hashlib.sha256(raw.read_bytes()).hexdigest() != eff.raw_sha256:
        raise PerfmodelError(f"profile {path}: its raw measurements {raw.name} do not match the checksum it records "
                             f"(edited or truncated); calibrate again")
    if device_id is not None and eff.device_id is not None and eff.device_id != device_id:
        raise PerfmodelError(f"profile {path} was measured for {eff.device_id!r}, not {device_id!r}")
    if check_host and eff.device_id == "local" and eff.host:
        here = host_fingerprint()
        diff = [k for k in FINGERPRINT_KEYS if k in eff.host and str(eff.host[k]) != str(here[k])]
        if diff:
            detail = ", ".join(f"{k} {eff.host[k]!r} there vs {here[k]!r} here" for k in diff)
            raise PerfmodelError(f"profile {path} was measured on another machine ({detail}); calibrate on this one")
    return eff


def auto_profile(device_id: str) -> Efficiency | None:
    """The default profile for a device if one exists and applies to this machine, else None."""
    path = default_profile_path(device_id)
    if not path.exists():
        return None
    try:
        return read_profile(path, device_id=device_id)
    except PerfmodelError:
        return None
