"""The golden parity runner's library; its command is `python -m reproduce.golden PATH...
[--data-root DIR]` (this module, run as a command, only says so: it imports nothing above it).

Each golden case (../shared/golden/README.md) is one call of an original
MATLAB function: `case_fn`, its `inputs` and its `outputs`, in MATLAB layout.
The runner loads a case, hands its inputs to the port's adapter for that
`case_fn`, and compares every output leaf the golden file holds with what the
adapter returned:

    max|port - golden| <= rtol * max|golden| + 1e-6      (per array)

with rtol 1e-4 (1e-3 for training runs), NaN where the golden has NaN, equal
shapes (trailing singleton dimensions beyond the second ignored, as MATLAB
ignores them), equal strings. A case whose `case_fn` has no adapter, an
adapter that raises, or a missing output is a FAIL, never a skip.

Adapters live in `reproduce.golden` (legacy_compat imports nothing above it; importing
`reproduce.golden` registers them all): each module calls `register(case_fn)` on a
function `(inputs, ctx) -> outputs`
where `inputs` is the case's `inputs` struct as `legacy_compat.loadmat` reads
it and `outputs` is a dict (nested dicts / lists / arrays) in MATLAB layout,
keyed like the golden `outputs`.
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import scipy.sparse

from .cli import DEVICE_HELP, UserError, add_debug, add_device, choose_device, run_cli
from .matio import loadmat
from .mattypes import MatStruct, StructArray

DEFAULT_RTOL = 1e-4
TRAINING_RTOL = 1e-3
ATOL = 1e-6
DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass
class CaseContext:
    """What an adapter may need beside the inputs: where the case and the data are, and the
    device ('cpu', 'cuda', 'cuda:N') the port runs on (a torch device name; adapters of
    pure-numpy ports ignore it)."""

    path: Path
    case_fn: str
    data_root: Path
    note: str = ""
    device: str = "cpu"


@dataclass
class Adapter:
    fn: Callable[[MatStruct, CaseContext], dict]
    rtol: float = DEFAULT_RTOL
    # glob on the output path ("layers/3/weight_std") -> a comparison
    # function (port, golden) -> (ok, worst_error_description) replacing the default
    overrides: dict[str, Callable[[Any, Any], tuple[bool, float]]] = field(default_factory=dict)


_REGISTRY: dict[str, Adapter] = {}


def register(case_fn: str, rtol: float = DEFAULT_RTOL,
             overrides: dict[str, Callable[[Any, Any], tuple[bool, float]]] | None = None):
    """Decorator: make `fn(inputs, ctx) -> outputs` the port of `case_fn`."""
    def wrap(fn):
        _REGISTRY[case_fn] = Adapter(fn, rtol, dict(overrides or {}))
        return fn
    return wrap


# ---------------------------------------------------------------- comparison
@dataclass
class Comparison:
    ok: bool = True
    worst_path: str = ""
    worst_err: float = 0.0
    problems: list[str] = field(default_factory=list)
    compared: int = 0           # golden leaves looked at (a case that looks at none checks nothing)

    def fail(self, path: str, why: str) -> None:
        self.ok = False
        self.compared += 1
        self.problems.append(f"{path}: {why}")

    def measure(self, path: str, rel: float, passed: bool) -> None:
        self.compared += 1
        if not passed:
            self.ok = False
            self.problems.append(f"{path}: relative error {rel:.3g}")
        if rel > self.worst_err or not self.worst_path:
            self.worst_err, self.worst_path = rel, path


def matlab_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape as MATLAB sees it: at least 2-D, trailing singletons beyond the second dropped."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    while len(shape) < 2:
        shape = shape + (1,)
    return shape


def compare_arrays(port: Any, golden: np.ndarray, rtol: float) -> tuple[bool, float, str]:
    """(passed, relative error, problem) for one numeric leaf under the golden criterion."""
    g = np.asarray(golden.toarray() if scipy.sparse.issparse(golden) else golden)
    try:
        if hasattr(port, "detach"):
            port = port.detach().cpu().numpy()
        p = np.asarray(port.toarray() if scipy.sparse.issparse(port) else port)
    except Exception as exc:  # noqa: BLE001
        return False, math.inf, f"not an array ({type(port).__name__}: {exc})"
    if p.dtype == object or g.dtype == object:
        return False, math.inf, f"not numeric (port {p.dtype}, golden {g.dtype})"
    if matlab_shape(p.shape) != matlab_shape(g.shape):
        if p.size == g.size == 1:
            p = p.reshape(g.shape)
        else:
            return False, math.inf, f"shape {matlab_shape(p.shape)} != golden {matlab_shape(g.shape)}"
    p = p.reshape(g.shape).astype(np.float64) if g.size else p.reshape(g.shape)
    g = g.astype(np.float64)
    if g.size == 0:
        return True, 0.0, ""
    gnan, pnan = np.isnan(g), np.isnan(p)
    if not np.array_equal(gnan, pnan):
        return False, math.inf, f"NaN at {int((gnan != pnan).sum())} places where the other has none"
    ginf, pinf = np.isinf(g), np.isinf(p)
    if not np.array_equal(g[ginf], p[ginf]) or not np.array_equal(ginf, pinf):
        return False, math.inf, "Inf values differ"
    finite = ~(gnan | ginf)
    if not finite.any():
        return True, 0.0, ""
    scale = float(np.max(np.abs(g[finite])))
    diff = float(np.max(np.abs(p[finite] - g[finite])))
    rel = diff / scale if scale > 0 else diff
    return diff <= rtol * scale + ATOL, rel, ""


def _children(value: Any) -> list[tuple[str, Any]] | None:
    """Named children of a container value (struct, struct array, cell), or None for a leaf."""
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, StructArray) or (isinstance(value, np.ndarray) and value.dtype == object):
        flat = list(np.asarray(value).reshape(-1, order="F"))
        return [(str(i), v) for i, v in enumerate(flat)]
    if isinstance(value, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(value)]
    return None


def _child_shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, np.ndarray):
        return matlab_shape(value.shape)
    if isinstance(value, (list, tuple)):
        return None
    return None


def compare(port: Any, golden: Any, adapter: Adapter, path: str = "", result: Comparison | None = None) -> Comparison:
    """Walk the golden value; compare every leaf with the port's value at the same path."""
    result = result if result is not None else Comparison()
    for pattern, fn in adapter.overrides.items():
        if path and fnmatch.fnmatch(path, pattern):
            ok, err = fn(port, golden)
            result.measure(path, err, ok)
            return result
    gkids = _children(golden)
    if gkids is not None:
        pkids = _children(port)
        if pkids is None:
            result.fail(path or "/", f"port gave a {type(port).__name__}, golden has a container")
            return result
        if isinstance(golden, dict):
            pmap = dict(pkids)
            for name, gval in gkids:
                if name not in pmap:
                    result.fail(f"{path}/{name}", "missing from the port's outputs")
                    continue
                compare(pmap[name], gval, adapter, f"{path}/{name}", result)
        else:
            gshape, pshape = _child_shape(golden), _child_shape(port)
            if len(gkids) != len(pkids) or (pshape is not None and gshape != pshape and len(gkids) > 0):
                result.fail(path, f"{len(pkids)} elements (shape {pshape}) != golden {len(gkids)} (shape {gshape})")
                return result
            for (name, gval), (_, pval) in zip(gkids, pkids):
                compare(pval, gval, adapter, f"{path}/{name}", result)
        return result
    if isinstance(golden, str):
        if port != golden:
            result.fail(path, f"{port!r} != golden {golden!r}")
        else:
            result.compared += 1
        return result
    ok, rel, problem = compare_arrays(port, golden, adapter.rtol)
    if problem:
        result.fail(path, problem)
        result.worst_err, result.worst_path = math.inf, path
    else:
        result.measure(path, rel, ok)
    return result


# ---------------------------------------------------------------- running cases
@dataclass
class CaseResult:
    path: Path
    case_fn: str
    passed: bool
    worst_path: str = ""
    worst_err: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        where = f"worst {self.worst_path or '-'} rel err {self.worst_err:.3g}"
        extra = "" if self.passed else "  | " + "; ".join(self.problems[:3])
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"{status} {self.path} [{self.case_fn}] {where}{extra}{more}"


def run_case(path: os.PathLike | str, data_root: os.PathLike | str = DEFAULT_DATA_ROOT,
             verbose: bool = False, device: str = "cpu") -> CaseResult:
    """Load one golden case, run its adapter on `device`, compare; never raises. A case FAILs when
    its file cannot be read as a case (not a MAT file, no `case_fn`, `inputs` or `outputs`), when
    an expected output is missing from the port's, and when it compares nothing (empty `outputs`)."""
    path = Path(path)
    try:
        case = loadmat(path)
    except Exception as exc:  # noqa: BLE001
        return CaseResult(path, "?", False, problems=[f"cannot load the case: {exc}"])
    missing = [name for name in ("case_fn", "inputs", "outputs") if name not in case]
    case_fn = str(case["case_fn"]) if "case_fn" in case else "?"
    if missing:
        return CaseResult(path, case_fn, False, problems=[
            f"not a golden case: no {' or '.join(repr(m) for m in missing)} variable (it holds: "
            f"{', '.join(case) or 'nothing'})"])
    adapter = _REGISTRY.get(case_fn)
    if adapter is None:
        return CaseResult(path, case_fn, False, problems=[f"no port registered for case_fn {case_fn!r}"])
    ctx = CaseContext(path=path, case_fn=case_fn, data_root=Path(data_root), note=str(case.get("note", "")),
                      device=str(device))
    try:
        outputs = adapter.fn(case["inputs"], ctx)
    except Exception as exc:  # noqa: BLE001
        tb = traceback.format_exc() if verbose else ""
        return CaseResult(path, case_fn, False, problems=[f"the port raised {type(exc).__name__}: {exc}{tb}"])
    try:
        cmp = compare(outputs, case["outputs"], adapter)
    except Exception as exc:  # noqa: BLE001 - one case's problem never stops the others
        return CaseResult(path, case_fn, False, problems=[f"comparing the outputs raised {type(exc).__name__}: {exc}"])
    if cmp.compared == 0:
        return CaseResult(path, case_fn, False, problems=["compares nothing: the golden 'outputs' hold no value"])
    return CaseResult(path, case_fn, cmp.ok, cmp.worst_path, cmp.worst_err, cmp.problems)


def find_cases(paths: Iterable[os.PathLike | str]) -> list[Path]:
    """Golden case files named on the command line: files, or every *.mat in a folder."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(p.glob("*.mat")))
        elif p.exists():
            found.append(p)
        else:
            raise UserError(f"no such golden case file or folder: {p}")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.golden",
        description="Run golden cases (MATLAB inputs and outputs of the original ICNN code) "
                    "through the Python port and compare every output.")
    parser.add_argument("paths", nargs="+", help="golden case .mat files or folders of them")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT),
                        help="folder the cases' original files (images, truth files) are relative to "
                             "(default: ../shared/data beside the project)")
    add_device(parser, help=DEVICE_HELP + "; the golden numbers and tolerances are the same on every device")
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks and every problem")
    add_debug(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the cases with the adapters registered so far (`python -m reproduce.golden` registers
    the port's, then calls this)."""
    args = build_parser().parse_args(argv)
    return run_cli("legacy_compat.parity", lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    device = choose_device(args.device)
    cases = find_cases(args.paths)
    passed = failed = 0
    for path in cases:
        res = run_case(path, args.data_root, verbose=args.verbose, device=device)
        print(res.line(), flush=True)
        if args.verbose and not res.passed:
            for prob in res.problems:
                print(f"    {prob}")
        passed += res.passed
        failed += not res.passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    # The runner's command is `python -m reproduce.golden`: the adapters sit above legacy_compat and
    # register themselves there; this library module imports nothing above it (no import circle).
    sys.exit("legacy_compat.parity is the runner's library; run the golden cases with: python -m reproduce.golden PATH...")
