"""Fit the error bands (workloads/bands.toml) from held-out validation residuals, and print their
leave-one-source-out coverage.

    python tools/fit_bands.py            # writes workloads/bands.toml, prints the coverage table

Run it after tools/fit_engines.py (the residuals depend on the fitted profiles). See perfmodel/bands.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perfmodel.bands import COVERAGE, MIN_ROWS, QUANTILES, fit_table, write_table  # noqa: E402
from perfmodel.validation import load_rows, loso_coverage, residuals  # noqa: E402

HEADER = f"""Error bands: the {QUANTILES[0]:.0%}-{QUANTILES[1]:.0%} percentiles of measured/predicted (as a rate) over held-out
validation rows, per (device_class, engine, category), (engine, category) and (category) with at least {MIN_ROWS} rows.
Written by tools/fit_bands.py from validation/ (perfmodel/bands.py explains the rule); do not edit by hand.
Held-out: the test split for fitted engines; every row for `default` and `ideal` (nothing of theirs is fitted).
Nominal coverage {COVERAGE:.0%}; the leave-one-source-out coverage is reported by `perfmodel validate --bands`."""


def main() -> None:
    resid = residuals(load_rows())
    table = fit_table(resid)
    path = write_table(table, ROOT / "workloads" / "bands.toml", HEADER)
    print(f"{len(resid)} held-out residuals, {len(table)} band groups -> {path.relative_to(ROOT)}")
    cov = loso_coverage(resid)
    print(cov.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
