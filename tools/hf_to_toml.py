"""Write a catalog model file (workloads/models/<id>.toml) from a Hugging Face config.json.

    python tools/hf_to_toml.py CONFIG.json ID "Display name" --source-title T --source-url U [--published-total N ...]

The canonical fields are what perfmodel's loader reads from the config; review the output before committing it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perfmodel.hf import load_hf_config  # noqa: E402
from perfmodel.model import ModelSpec  # noqa: E402


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, int):
        return f"{v:_}" if abs(v) >= 100_000 else str(v)
    return repr(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("id")
    ap.add_argument("name")
    ap.add_argument("--alias", action="append", default=[])
    ap.add_argument("--source-title", required=True)
    ap.add_argument("--source-url", required=True)
    ap.add_argument("--source-note", default="")
    ap.add_argument("--published-total", type=float)
    ap.add_argument("--published-active", type=float)
    ap.add_argument("--published-source", default="")
    a = ap.parse_args()
    spec = load_hf_config(a.config, model_id=a.id)
    defaults = ModelSpec(id="x", n_layers=1, d_model=1, n_heads=1, d_ff=1, vocab_size=1)
    lines = [f"id = {_toml(a.id)}", f"name = {_toml(a.name)}"]
    if a.alias:
        lines.append(f"aliases = {_toml(a.alias)}")
    for field in ModelSpec.model_fields:
        if field in ("id", "name", "aliases", "sources", "published_params"):
            continue
        v = getattr(spec, field)
        if v is not None and v != getattr(defaults, field) or field in ("n_layers", "d_model", "n_heads", "d_ff",
                                                                         "vocab_size"):
            lines.append(f"{field} = {_toml(v)}")
    if a.published_total:
        lines += ["", "[published_params]", f"total = {_toml(int(a.published_total))}"]
        if a.published_active:
            lines.append(f"active = {_toml(int(a.published_active))}")
        lines.append(f"source = {_toml(a.published_source)}")
    lines += ["", "[[sources]]", f"title = {_toml(a.source_title)}", f"url = {_toml(a.source_url)}",
              'covers = "architecture"']
    if a.source_note:
        lines.append(f"note = {_toml(a.source_note)}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
