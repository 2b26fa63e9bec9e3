"""The golden cases of the core (getMu, getMask, our_vl_nnloss, our_vl_simplenn, network_init)
through the parity runner, one test per case file."""
from __future__ import annotations

from pathlib import Path

import pytest

from legacy_compat import parity
from reproduce import golden  # noqa: F401 - importing it registers the port's adapters

GOLDEN = Path(__file__).resolve().parent.parent.parent / "shared" / "golden"
PATTERNS = ("getMu.mat", "getMask.mat", "our_vl_nnloss.mat", "simplenn_*.mat", "network_init_*.mat")
CASES = sorted({p for pat in PATTERNS for p in GOLDEN.glob(pat)}) if GOLDEN.exists() else []


@pytest.fixture(scope="module")
def adapters():
    """The registered adapters (importing reproduce.golden, above, registers them all)."""
    return parity._REGISTRY


@pytest.mark.parametrize("case", CASES or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"golden cases not found at {GOLDEN} (the ../shared folder is absent)"))],
    ids=lambda p: p.name if p is not None else "none")
def test_golden_case(case, adapters):
    res = parity.run_case(case, verbose=True)
    assert res.passed, f"{res.line()}\n" + "\n".join(res.problems)
