"""The shape of the package (issue 26, docs/ARCHITECTURE.md): stages that import only downwards,
few flat modules, short functions, short parameter lists, and dataset facts asked of the registry
rather than branched on by name. Read from the source (ast); tests/test_imports.py checks cycles,
private names and the layers between the three packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_imports import MODULES, import_graph

from data_prep.facts import DATASETS

ROOT = Path(__file__).resolve().parent.parent
# reproduce's stages, lowest first: a stage imports only from itself and the stages before it.
STAGES = ("runtime", "layers", "models", "training", "evaluation", "experiments")
# Above every stage: they test or time the stages, and nothing in the library imports them.
OUTSIDE = ("bench", "golden")
MAX_FLAT_MODULES = 8
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 8
MAX_FUNCTIONS_WITH_MANY_PARAMETERS = 10
MAX_DATASET_NAME_COMPARISONS = 2


def _source_files() -> list[Path]:
    return sorted(MODULES.values()) + [ROOT / "demo.py"]


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameters(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]
    return len([n for n in names if n.arg not in ("self", "cls")])


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "reproduce" and len(parts) > 1 and parts[1] in (*STAGES, *OUTSIDE) else None


def _dataset_name_comparisons(source: str, label: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, label)):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            if any(isinstance(v, ast.Constant) and v.value in DATASETS for v in values):
                found.append(f"{label}:{node.lineno}: {ast.unparse(node)}")
                break
    return found


def test_every_reproduce_module_is_in_a_stage_or_flat():
    stray = [m for m in MODULES if m.startswith("reproduce.") and _stage(m) not in (*STAGES, *OUTSIDE)
             and m.count(".") > 1]
    assert stray == []


def test_stages_import_only_downwards():
    edges, _ = import_graph()
    wrong = []
    for module, targets in edges.items():
        stage = _stage(module)
        if stage not in STAGES:
            continue
        for target in targets:
            other = _stage(target)
            if target.startswith("reproduce") and (other not in STAGES or STAGES.index(other) > STAGES.index(stage)):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_nothing_in_the_library_imports_the_command_shims_bench_or_golden():
    edges, _ = import_graph()
    flat = {m for m in MODULES if m.startswith("reproduce.") and m.count(".") == 1 and _stage(m) is None
            and m.split(".")[1] not in OUTSIDE}
    wrong = [f"{m} -> {t}" for m, targets in edges.items() for t in targets
             if (t in flat or _stage(t) in OUTSIDE) and _stage(m) in STAGES]
    assert wrong == []


def test_few_flat_modules():
    flat = sorted(p.name for p in (ROOT / "reproduce").glob("*.py") if p.name != "__init__.py")
    assert len(flat) <= MAX_FLAT_MODULES, flat


def test_no_long_function():
    long = [f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for p in _source_files() for fn in _functions(p) if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_few_long_parameter_lists():
    many = sorted(f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name} ({_parameters(fn)})"
                  for p in _source_files() for fn in _functions(p) if _parameters(fn) > MAX_PARAMETERS)
    assert len(many) <= MAX_FUNCTIONS_WITH_MANY_PARAMETERS, "\n".join(many)


def test_dataset_facts_come_from_the_registry_not_name_branches():
    files = sorted((ROOT / "reproduce").rglob("*.py")) + [ROOT / "demo.py"]
    found = [c for p in files for c in _dataset_name_comparisons(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert len(found) <= MAX_DATASET_NAME_COMPARISONS, "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("x = a == 'toy'", 1), ("x = a in ('celeba', 'helen')", 1), ("x = a == 'other'", 0), ("x = 'toy'", 0)])
def test_the_comparison_finder(source, expected):
    assert len(_dataset_name_comparisons(source, "probe.py")) == expected
