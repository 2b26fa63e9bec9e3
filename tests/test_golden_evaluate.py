"""The golden evaluation / drawing cases through the parity runner.

getDistSqrtVar (real fox truth files), computeStability (the 286 real fox
images through a small ICNN), step_computeStability_multiClass (fox and
lizard), and step_drawRF's maskX, getRegion, imagewrite. Each must pass the
parity criterion (max|d| <= 1e-4 * max|golden| + 1e-6 per output).
"""
from __future__ import annotations

import pytest

from legacy_compat import parity
from reproduce import golden  # noqa: F401 - importing it registers the port's adapters

CASES = ["getDistSqrtVar", "computeStability", "computeStability_multiClass", "maskX", "getRegion",
         "imagewrite"]


@pytest.fixture(scope="module")
def adapters():
    """The registered adapters (importing reproduce.golden, above, registers them all)."""
    return parity._REGISTRY


@pytest.mark.parametrize("name", CASES)
def test_golden_evaluation_case_passes(adapters, golden_dir, shared_data, name):
    result = parity.run_case(golden_dir / f"{name}.mat", data_root=shared_data, verbose=True)
    assert result.passed, "\n".join(result.problems[:10])
    assert result.worst_err <= parity.DEFAULT_RTOL


def test_every_evaluation_case_fn_has_an_adapter(adapters):
    for case_fn in ("getDistSqrtVar", "computeStability", "step_computeStability_multiClass", "maskX",
                    "getRegion", "imagewrite"):
        assert case_fn in adapters
