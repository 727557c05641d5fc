"""The pipeline runs one way: no import cycles, and no module imports one of a later stage (imports inside
functions count too; see tools/import_graph.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)

# Stages, lowest first: facts, schemas and polynomials; the device figure ladder; loaders; the operator graph, its
# coefficient tables, memory and band tables; cost and calibration; which efficiency applies; evaluation; the serving
# simulator's core; engine techniques (offload, speculative decoding); the public API and sweeps; studies; faces.
STAGES = [
    {"errors", "pcie", "model", "efficiency", "_io", "poly"},
    {"dtypes", "provenance"},
    {"device", "hf", "system"},
    {"_local", "catalog"},
    {"graph", "table", "memory", "bands", "workload"},
    {"collectives", "cost", "calibration", "calibration.fit", "calibration.suite", "calibration.profile",
     "calibration.fake"},
    {"engines"},
    {"evaluate"},
    {"offload"},
    {"iteration"},
    {"speculative", "prefix", "training"},
    {"api", "scenarios"},
    {"validation", "train_validation", "whatif", "plots", "distributed", "plan", "serving", "serving.requests",
     "serving.sim"},
    {"engine_fit"},
    {"trends", "report", "serving.figures", "serving.report"},
    {"cli"},
]
RANK = {f"perfmodel.{m}": i for i, stage in enumerate(STAGES) for m in stage}


def test_every_module_has_a_stage():
    g = import_graph.graph()
    assert sorted(m for m in g if m not in RANK and m != "perfmodel") == []


def test_no_import_cycles():
    assert import_graph.cycles(import_graph.graph()) == []


def test_no_module_imports_a_later_stage():
    g = import_graph.graph()
    upward = sorted(f"{m} -> {t}" for m, ts in g.items() if m in RANK for t in ts
                    if t in RANK and RANK[t] > RANK[m])
    assert upward == []
