"""Write the generated tables of docs/validation.md: held-out error and coverage per category, and the error bands'
leave-one-source-out coverage. The prose around them is hand-written; the tables sit between markers.

    python tools/validation_md.py
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perfmodel._io import atomic_write_text  # noqa: E402
from perfmodel.catalog import read_toml  # noqa: E402
from perfmodel.validation import (accuracy, coverage, in_catalog, load_loso, load_rows, loso_coverage,  # noqa: E402
                                  plot_categories, predict, residuals, summary, unpredicted)

DOC = ROOT / "docs" / "validation.md"
HISTORY = ROOT / "validation" / "notes" / "loso_history.toml"
MISSES = ROOT / "validation" / "notes" / "misses.toml"
README = ROOT / "README.md"
START, END = "<!-- tables:start (tools/validation_md.py) -->", "<!-- tables:end -->"
SUMMARY_START, SUMMARY_END = "<!-- summary:start (tools/validation_md.py) -->", "<!-- summary:end -->"


def render() -> tuple[str, str]:
    rows = load_rows()
    allrows = rows.copy()
    allrows["predicted"], allrows["skipped"] = predict(allrows)  # once; the held-out rows are a part of it
    test = allrows[allrows.split == "test"].reset_index(drop=True)
    test["baseline"], _ = predict(test, engine="ideal")
    cov = coverage(test).set_index("category")
    kall = in_catalog(allrows)
    cov_all = coverage(allrows).set_index("category")
    table = summary(test)
    bands = loso_coverage(residuals(rows))
    pred, why = load_loso(rows)
    if pred is None:
        raise SystemExit(why)
    loso = accuracy(allrows.assign(predicted=pred, skipped=unpredicted(allrows, pred))).set_index("category")
    prev = read_toml(HISTORY)["release"][-1] if HISTORY.exists() else {}
    head = [*textwrap.wrap(
        "Leave-one-source-out, the headline: each source's rows predicted by engine profiles fitted on every other "
        f"source ({rows.file.nunique()} sources; `python tools/fit_engines.py --loso`). Bias: median signed error of "
        "the metric as published. The fixed split (rows drawn one by one, so a source's table sits on both sides) "
        "is the last column.", 116), "",
            "| category | rows | median | mean | within 20 % | bias | coverage | fixed split median / mean | "
            f"since {prev.get('commit', 'the last release')} (median / mean) |",
            "|---|---|---|---|---|---|---|---|---|"]
    fixed = table[table.metric == "(all)"].set_index("category")
    for cat, r in loso.iterrows():
        if cat == "ALL":
            continue
        f = fixed.loc[cat] if cat in fixed.index else table[table.category == cat].iloc[0]
        head.append(f"| {cat} | {int(r.rows)} | {r.median_ape:.1f} % | {r.mean_ape:.1f} % | {r.within_20 * 100:.0f} % | "
                    f"{r.bias:+.1f} % | {r.coverage * 100:.1f} % | {f.median_ape:.1f} % / {f.mean_ape:.1f} % | "
                    f"{_trend(prev.get(cat), r)} |")
    out = [START, "", *head, "",
           f"{len(rows):,} rows from {rows.file.nunique()} sources; {int((rows.split == 'test').sum())} held "
           f"out (`test`). Coverage: rows predicted of those whose model and device are in the catalog.", "",
           "| category | metric | rows | median | mean | pure roofline median / mean | coverage (test) | coverage (all) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        c = cov.coverage.get(r.category) if r.metric == "(all)" else None
        ca = cov_all.coverage.get(r.category) if r.metric == "(all)" else None
        fmt = (lambda x: "" if x is None or not np.isfinite(x) else f"{x * 100:.1f} %")
        out.append(f"| {r.category} | {r.metric} | {r.rows} | {r.median_ape:.1f} % | {r.mean_ape:.1f} % | "
                   f"{r.baseline_median_ape:.1f} % / {r.baseline_mean_ape:.1f} % | {fmt(c)} | {fmt(ca)} |")
    reasons = kall[kall.skipped != ""].skipped.map(lambda s: "does not fit" if "does not fit" in s else s[:80])
    out += ["", f"Not predicted, of the {len(kall):,} rows whose model and device are in the catalog: "
            + ("; ".join(f"{n} {k}" for k, n in reasons.value_counts().items()) or "none") + ".", "",
            "Error bands, leave-one-source-out (each source's rows against bands fitted without it); width = high end "
            "/ low end of the band:", "",
            "| engine | category | rows | sources | coverage of the 80 % band | median width |", "|---|---|---|---|---|---|"]
    for r in bands.itertuples():
        out.append(f"| {r.engine} | {r.category} | {r.rows} | {r.sources} | {r.coverage * 100:.1f} % | "
                   f"{r.median_width:.2f}x |")
    own = bands[bands.engine == "own engine"].set_index("category")
    short = [SUMMARY_START, "", *head, "", "Held-out rows of the fixed split, each with its own engine profile "
             "(`perfmodel validate --bands`):", "",
             "| category | rows | median error | mean error | pure roofline mean | coverage | 80 % band covers |",
             "|---|---|---|---|---|---|---|"]
    one = table.groupby("category").metric.transform("size") == 1  # a single-metric category has no "(all)" row
    for r in table[((table.metric == "(all)") | one) & (table.category != "ALL")].itertuples():
        band = f"{own.coverage[r.category] * 100:.0f} %" if r.category in own.index else "-"
        short.append(f"| {r.category} | {r.rows} | {r.median_ape:.1f} % | {r.mean_ape:.1f} % | "
                     f"{r.baseline_mean_ape:.1f} % | {cov.coverage.get(r.category, float('nan')) * 100:.1f} % | "
                     f"{band} |")
    plot_categories(allrows.assign(loso=pred), DOC.parent / "validation-loso.png", col="loso")
    out += ["", "![Leave-one-source-out, predicted vs measured per category](validation-loso.png)", "",
            *textwrap.wrap("(`tools/validation_md.py`. Every metric as a rate. The shaded region is the category's "
                           "80 % band as shipped (workloads/bands.toml, fitted on the fixed split's held-out "
                           "residuals): leave-one-source-out predictions fall outside it more often than 20 % of the "
                           "time, which is what the band would have to widen by on sources it has not seen.)", 116),
            "", *by_source(allrows.assign(loso=pred))]
    return "\n".join(out + ["", END]), "\n".join(short + ["", SUMMARY_END])


def _trend(before: dict | None, now) -> str:
    """Change of the LOSO median and mean since the last release, in percentage points."""
    if not before:
        return "new"
    return f"{now.median_ape - before['median']:+.1f} / {now.mean_ape - before['mean']:+.1f} pp"


def miss_reason(reasons: list[dict], file: str, row: int) -> str:
    """Why a row is missed: the first entry of validation/notes/misses.toml naming its file (and its row, where the
    entry lists rows)."""
    for r in reasons:
        if r["file"] == file and row in r.get("rows", [row]):
            return r["reason"]
    return "not yet explained"


def by_source(rows) -> list[str]:
    """LOSO error per source, and the ten rows it misses most: where the systematic misses are."""
    d = rows[np.isfinite(rows.loso.astype(float))].copy()
    d["signed"] = (d.loso / d.value - 1.0) * 100.0
    lines = [*textwrap.wrap("Leave-one-source-out per source (bias: median signed error of the metric as "
                            "published; + predicts more than was measured):", 116), "",
             "| source | category | rows | median | mean | bias |",
             "|---|---|---|---|---|---|"]
    for (src, cat), g in d.groupby(["file", "category"]):
        e = g.signed.abs()
        lines.append(f"| {src} | {cat} | {len(g)} | {e.median():.1f} % | {e.mean():.1f} % | "
                     f"{g.signed.median():+.1f} % |")
    reasons = read_toml(MISSES).get("miss", []) if MISSES.exists() else []
    lines += ["", "The ten rows leave-one-source-out misses most, and why (validation/notes/misses.toml):", "",
              "| row | device | model | metric | measured | predicted | error | why |",
              "|---|---|---|---|---|---|---|---|"]
    for r in d.loc[d.signed.abs().sort_values(ascending=False).index[:10]].itertuples():
        lines.append(f"| {r.file}:{r.row} | {r.hardware} | {r.model if isinstance(r.model, str) else ''} | "
                     f"{r.metric} | {r.value:.4g} | {r.loso:.4g} | {r.signed:+.0f} % | "
                     f"{miss_reason(reasons, r.file, r.row)} |")
    return lines


def _splice(path: Path, start: str, end: str, block: str) -> None:
    text = path.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, head + block + tail)
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> int:
    tables, summary_table = render()
    _splice(DOC, START, END, tables)
    _splice(README, SUMMARY_START, SUMMARY_END, summary_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
