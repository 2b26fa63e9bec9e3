"""Part interpretability (reproduce.interpretability) on constructed cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from reproduce.interpretability import (
    InterpretabilityError,
    PartRegions,
    filter_thresholds,
    interpretability_from_ious,
    part_interpretability,
    region_part_ious,
    upsample_matrix,
)

IDENT = np.eye(8)          # maps at image resolution: stride 1, centre 1 -> the identity


def _regions(n=100, size=8):
    """Image i: part 1 a single pixel (0.5 % of ... see below), part 2 the left half."""
    labels = np.zeros((n, size, size), dtype=np.uint8)
    rng = np.random.default_rng(0)
    spots = rng.integers(0, size, size=(n, 2))
    labels[:, :, : size // 2] = 2
    labels[np.arange(n), spots[:, 0], spots[:, 1]] = 1
    return PartRegions(labels, (1, 2), {1: "spot", 2: "left half"}), spots


def test_upsample_matrix_identity_and_anchoring():
    assert np.array_equal(upsample_matrix(8, 8, 1.0, 1.0), IDENT)
    a = upsample_matrix(8, 2, 2.5, 4.0)          # cells centred at pixels 2.5 and 6.5
    assert np.allclose(a.sum(axis=1), 1.0)
    assert np.allclose(a[:2], [[1, 0], [1, 0]])   # before the first centre: the border cell
    assert np.allclose(a[3], [0.625, 0.375])      # pixel 4: (4 - 2.5) / 4 = 0.375 of the way
    assert np.allclose(a[6:], [[0, 1], [0, 1]])
    with pytest.raises(InterpretabilityError):
        upsample_matrix(8, 2, 1.0, 0.0)


def test_filter_that_fires_exactly_on_a_part_has_interpretability_one():
    regions, _ = _regions()
    maps = (regions.labels == 1).astype(np.float32)[:, None]       # 1 on the spot, 0 elsewhere
    # the spot is 1/64 of each image, more than 0.5 %: the quantile over the dataset lies at 1,
    # so the filter's top 0.5 % must be graded: make the spot's value rise with the image index
    maps = maps * np.arange(1, 101, dtype=np.float32)[:, None, None, None]
    res = part_interpretability(maps, regions, IDENT, IDENT, top=0.5)   # top half: every positive cell
    assert res.thresholds[0] == 0.0
    assert res.per_filter_part[0, 0] == 1.0 and res.per_filter_part[0, 1] == 0.0
    assert res.value == 1.0


def test_exact_part_filter_at_the_papers_quantile():
    """A part of 1 pixel in 400 per image (0.25 %, under 0.5 %): the top 0.5 % threshold is 0,
    the region is exactly the part, every image counts: P_f = 1."""
    n, size = 50, 20
    labels = np.zeros((n, size, size), dtype=np.uint8)
    labels[:, 3, 7] = 1
    labels[:, 10:, :] = 2                                           # half the image
    regions = PartRegions(labels, (1, 2), {})
    maps = (labels == 1).astype(np.float32)[:, None]
    eye = np.eye(size)
    res = part_interpretability(maps, regions, eye, eye)
    assert res.thresholds[0] == 0.0
    assert res.per_filter_part[0].tolist() == [1.0, 0.0]
    assert res.value == 1.0


def test_filter_that_fires_everywhere():
    """Uniform map on each image, level = image index: the top 0.5 % of 64 x 200 cells is the last
    image's 64 cells (64 / 12800 = 0.5 %; numpy's quantile lies just under 200), its region is the
    whole image: IoU with the left half 0.5 (> 0.2), with the spot 1/64. P = 1/200 for the half."""
    n = 200
    regions, _ = _regions(n)
    maps = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None], (n, 1, 8, 8)).copy()
    t = filter_thresholds(maps)
    assert 199.0 < t[0] < 200.0
    res = part_interpretability(maps, regions, IDENT, IDENT)
    assert res.per_filter_part[0, 0] == 0.0
    assert res.per_filter_part[0, 1] == pytest.approx(1.0 / n)
    assert res.value == pytest.approx(1.0 / n)


def test_filter_that_never_fires_has_interpretability_zero():
    regions, _ = _regions()
    maps = np.zeros((100, 3, 8, 8), dtype=np.float32)
    res = part_interpretability(maps, regions, IDENT, IDENT)
    assert res.thresholds.tolist() == [0.0, 0.0, 0.0]
    assert res.per_filter.tolist() == [0.0, 0.0, 0.0]
    assert res.value == 0.0


def test_iou_values_and_empty_union():
    maps = np.zeros((1, 2, 4, 4))
    maps[0, 0, :2, :2] = 1.0                                       # region: top-left 2 x 2
    parts = np.zeros((1, 2, 4, 4), dtype=bool)
    parts[0, 0, :2, :] = True                                      # top half: IoU 4 / 8
    eye = np.eye(4)
    iou = region_part_ious(maps, np.array([0.5, 0.5]), parts, eye, eye)
    assert iou[0, 0].tolist() == [0.5, 0.0]                        # part 2 absent, region not: 0
    assert iou[0, 1].tolist() == [0.0, 0.0]                        # empty region, empty part: 0


def test_parts_absent_from_every_image_are_left_out():
    ious = np.array([[[0.5, 0.0]], [[0.1, 0.0]]])                  # 2 images, 1 filter, 2 parts
    present = np.array([[True, False], [True, False]])
    p_fk, p_f = interpretability_from_ious(ious, present)
    assert p_fk[0, 0] == 0.5 and np.isnan(p_fk[0, 1])
    assert p_f.tolist() == [0.5]
    _, p_none = interpretability_from_ious(ious, np.zeros((2, 2), dtype=bool))
    assert np.isnan(p_none).all()


def test_bad_input_is_named():
    regions, _ = _regions()
    with pytest.raises(InterpretabilityError, match="feature maps for"):
        part_interpretability(np.zeros((3, 1, 8, 8)), regions, IDENT, IDENT)
    with pytest.raises(InterpretabilityError, match="NaN"):
        filter_thresholds(np.full((2, 1, 2, 2), np.nan))
    with pytest.raises(InterpretabilityError, match="I x H x W"):
        PartRegions(np.zeros((4, 4)), (1,), {})
