"""Atomic file writes: a temporary file beside the target, then a rename. An existing file is never left
half-written or lost."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def check_output_path(path: str | Path, what: str = "output file") -> Path:
    """Refuse, before any work, an output path that cannot be written: a directory, a parent that is a file or
    cannot be created, a folder without write permission. One clear message (PerfmodelError), never a traceback."""
    from .errors import PerfmodelError

    path = Path(path)
    if str(path).strip() == "":
        raise PerfmodelError(f"{what} must be a file path; got an empty string")
    if path.is_dir():
        raise PerfmodelError(f"{what} {str(path)!r} is a directory; give a file path inside it")
    parent = path.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise PerfmodelError(f"{what} {str(path)!r} cannot be written: {str(probe)!r} is a file, not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise PerfmodelError(f"{what} {str(path)!r} cannot be written: no write permission on it")
    try:  # the one sure test that a folder takes a new file (permissions, read-only file systems): make one
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise PerfmodelError(f"{what} {str(path)!r} cannot be written: {e.strerror or e} in {str(probe)!r}") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    from .errors import PerfmodelError

    path = check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise PerfmodelError(f"output file {str(path)!r} cannot be written: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp makes the file private (0600); give it the mode a plain open() would: the old file's, or the umask's
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise PerfmodelError(f"output file {str(path)!r} cannot be written: {e.strerror or e}; the old file, if "
                             f"any, is unchanged") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
