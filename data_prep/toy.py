"""The toy dataset: the embedded default the demo trains on offline.

No original MATLAB counterpart: it stands in for the ILSVRC animal-part
dataset (setup_ilsvrcanimalpart.m + the shipped truth files) so that the
same readers, getI, imdb, training and location-stability code run on it in
minutes on a CPU. It is written in the ILSVRC layout::

    <root>/detanimalpart/<wnid>_obj/img/data.mat        samples(i).obj.bndbox.{ymin,ymax,xmin,xmax}, samples(i).class
    <root>/detanimalpart/<wnid>_obj/img/img/00001.jpg   the images (nothing else in this folder:
                                                        readAnnotation.m counts its entries)
    <root>/detanimalpart/<wnid>_obj/mask/00001.png      per-part label map (0 background, k = part k)
    <root>/detanimalpart/<wnid>_obj/annotations.json    boxes, landmarks in image coordinates, pose
    <root>/data_input/<wnid>/truth_partNN.mat           truth(i).pHW_center / pHW_scale / obj (MAT v5)
    <root>/neg/00001.JPEG ... 01000.JPEG                its own negatives
    <root>/toy.json                                     the manifest (parameters; written last)

so a conf pointing at ``<root>/detanimalpart`` (imgdir), ``<root>/data_input``
(the truth files) and ``<root>/neg`` reads it exactly as the real data.

Categories (wnid-like ids) and their landmark parts (truth_part01.mat ...):

* ``toy01`` four-legged animal: 1 head, 2 front legs, 3 tail (absent in ~15%)
* ``toy02`` bird: 1 head (with beak), 2 legs and feet, 3 tail
* ``toy03`` fish: 1 head, 2 tail fin, 3 dorsal fin (absent in ~15%)

Mask labels 1..3 are those parts; 4 is the body, 5 the other limbs (toy01:
hind legs; toy02: wing). ``partList`` [1 2] evaluates head and part 2 as
for ILSVRC.

Landmark convention (the one the original truth files use, checked against
computeStability.m / getDistSqrtVar.m / x2p_.m): ``pHW_center`` is a 2 x 1
``[h; w]`` in 1-based pixel coordinates of the object-box crop resized to
the network input (224 x 224 in the original; here ``input_size``, default
``image_size``), i.e. the coordinates x2p_ maps feature-map peaks to. A
point at 1-based image coordinate y in a box rows ymin..ymax maps to
``h = (y - ymin + 0.5) * input_size / (ymax - ymin + 1) + 0.5`` (MATLAB
imresize's pixel-centre mapping), likewise w. ``pHW_scale`` is the part's
box height and width in the same crop units. The landmark is the centre of
the part's box (its visible extent in the label map, as an annotator's part
box); for a tail or fin that is absent the truth element is empty (``[]``,
as in the real files).

Images vary in object position, size, aspect, facing direction, small
rotation, articulation (head, legs, tail), colour, background gradient,
noise and clutter; negatives have the background, clutter and stray parts of
a single kind (lone heads, or lone legs, ... never an arrangement of several
kinds). Everything is drawn with numpy + PIL from ``numpy.random.default_rng``
streams seeded per image ``[seed, category, index]``: the same seed gives
byte-identical files (images, masks, and MAT files, whose header date is
fixed), and the first images do not change when ``n_pos`` grows.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from legacy_compat.atomic import atomic_write, remove_orphans, writer_tag
from legacy_compat.matio import savemat
from legacy_compat.mattypes import MatStruct, StructArray

from .facts import NUM_NEGATIVES, TOY_CATEGORIES

__all__ = ["generate_toy_dataset", "ToyOptions", "ToyPaths", "TOY_CATEGORIES", "TOY_POSITIVES", "TOY_PART_NAMES", "TOY_MASK_LABELS",
           "MANIFEST_NAME", "read_manifest", "manifest_matches", "toy_min_area", "crop_coordinates",
           "render_positive", "render_negative"]

GENERATOR_VERSION = 1
TOY_POSITIVES = 1500            # generate_toy_dataset's positives per category by default (n_pos)
MANIFEST_NAME = "toy.json"
SUPERSAMPLE = 4                 # drawn at 4x, box-filtered down: smooth edges
JPEG_QUALITY = 92


TOY_DESCRIPTIONS = {"toy01": "four-legged animal", "toy02": "bird", "toy03": "fish"}
#: Landmark parts per category: truth_partNN.mat for NN in the keys.
TOY_PART_NAMES: dict[str, dict[int, str]] = {
    "toy01": {1: "head", 2: "front legs", 3: "tail"},
    "toy02": {1: "head", 2: "legs", 3: "tail"},
    "toy03": {1: "head", 2: "tail fin", 3: "dorsal fin"},
}
#: Mask label -> part name (labels 1..3 are the landmark parts).
TOY_MASK_LABELS: dict[str, dict[int, str]] = {
    "toy01": {1: "head", 2: "front legs", 3: "tail", 4: "body", 5: "hind legs"},
    "toy02": {1: "head", 2: "legs", 3: "tail", 4: "body", 5: "wing"},
    "toy03": {1: "head", 2: "tail fin", 3: "dorsal fin", 4: "body"},
}
#: What kind of stray shape a mask label is, for distractors (negatives use one kind per image).
_KIND = {("toy01", 1): "head", ("toy01", 2): "legs", ("toy01", 3): "tail", ("toy01", 4): "body",
         ("toy01", 5): "legs", ("toy02", 1): "head", ("toy02", 2): "legs", ("toy02", 3): "tail",
         ("toy02", 4): "body", ("toy02", 5): "wing", ("toy03", 1): "head", ("toy03", 2): "tail",
         ("toy03", 3): "fin", ("toy03", 4): "body"}
DISTRACTOR_KINDS = ("head", "legs", "tail", "body", "wing", "fin")
_OPTIONAL_PART = {"toy01": 3, "toy02": None, "toy03": 3}   # label that is sometimes absent
_ASPECT = {"toy01": (0.62, 0.85), "toy02": (1.0, 1.25), "toy03": (0.5, 0.65)}   # box height / width


def toy_min_area(image_size: int | None = 64) -> int:
    """The toy's minArea: the original's 50^2 is for ~500-pixel photos; 16^2 per 64 pixels here."""
    s = 64 if image_size is None else int(image_size)
    return int(round((16 * s / 64) ** 2))


# ----------------------------------------------------------------------------------------------
# Geometry: parts as polygons in the object's canonical frame (u right/forward, v down, [0,1]^2)

@dataclass
class _Shape:
    label: int                          # mask label (part)
    points: np.ndarray                  # (K, 2) canonical (u, v); a polyline when width > 0
    width: float = 0.0                  # line width in box-width units (0: filled polygon)
    shade: float = 1.0                  # brightness factor of the object colour
    detail: str | None = None           # 'eye' / 'dark': drawn in a contrasting colour


def _ellipse(cx, cy, rx, ry, angle=0.0, n=28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _quad_limb(top, bottom, width) -> np.ndarray:
    (x0, y0), (x1, y1) = top, bottom
    d = np.array([y1 - y0, -(x1 - x0)], dtype=float)
    d = d / (np.linalg.norm(d) + 1e-9) * width / 2
    return np.array([[x0 + d[0], y0 + d[1]], [x1 + d[0], y1 + d[1]],
                     [x1 - d[0], y1 - d[1]], [x0 - d[0], y0 - d[1]]])


def _j(rng, s=0.02) -> float:
    return float(rng.normal(0.0, s))


def _quadruped(rng, present: bool) -> list[_Shape]:
    shapes = []
    if present:
        base = np.array([0.22, 0.36])
        up = rng.uniform(-0.12, 0.12)
        pts = np.array([base, [0.10, 0.30 + up / 2 + _j(rng)], [0.02, 0.14 + up + _j(rng)]])
        shapes.append(_Shape(3, pts, width=0.065, shade=0.9))
    body_cy, body_ry = 0.42 + _j(rng), 0.15 + _j(rng, 0.01)
    for x, lbl, shade in ((0.26, 5, 0.75), (0.35, 5, 0.85), (0.64, 2, 0.75), (0.73, 2, 0.85)):
        swing = rng.uniform(-0.05, 0.05)
        top = (x + _j(rng, 0.01), body_cy + 0.05)
        bottom = (x + swing, 0.985)
        shapes.append(_Shape(lbl, _quad_limb(top, bottom, 0.075), shade=shade))
    shapes.append(_Shape(4, _ellipse(0.49 + _j(rng), body_cy, 0.30 + _j(rng, 0.01), body_ry), shade=1.0))
    hx, hy = 0.84 + _j(rng, 0.015), 0.22 + rng.uniform(-0.06, 0.06)
    shapes.append(_Shape(4, np.array([[0.68, body_cy - 0.10], [hx - 0.04, hy], [hx, hy + 0.08],
                                      [0.76, body_cy + 0.02]]), shade=1.0))        # neck
    shapes.append(_Shape(1, np.array([[hx - 0.08, hy - 0.06], [hx - 0.05, hy - 0.22], [hx - 0.01, hy - 0.07]]),
                         shade=0.8))                                                  # ear
    shapes.append(_Shape(1, np.array([[hx + 0.06, hy - 0.05], [hx + 0.17, hy + 0.03], [hx + 0.06, hy + 0.08]]),
                         shade=1.15))                                                 # snout
    shapes.append(_Shape(1, _ellipse(hx, hy, 0.11, 0.12), shade=1.15))
    shapes.append(_Shape(1, _ellipse(hx + 0.04, hy - 0.02, 0.025, 0.03, n=12), detail="eye"))
    return shapes


def _bird(rng, present: bool) -> list[_Shape]:
    shapes = []
    tilt = -0.45 + _j(rng, 0.08)
    shapes.append(_Shape(3, np.array([[0.36, 0.62], [0.04 + _j(rng), 0.80 + _j(rng, 0.04)],
                                      [0.12 + _j(rng), 0.95]]), shade=0.8))
    for x in (0.44, 0.56):
        swing = rng.uniform(-0.04, 0.04)
        top, bottom = (x, 0.70), (x + swing, 0.95)
        shapes.append(_Shape(2, _quad_limb(top, bottom, 0.045), shade=0.6))
        shapes.append(_Shape(2, np.array([[x + swing - 0.02, 0.95], [x + swing + 0.09, 0.95]]), width=0.04,
                             shade=0.6))                                              # foot
    shapes.append(_Shape(4, _ellipse(0.48 + _j(rng), 0.55 + _j(rng), 0.25, 0.21, tilt), shade=1.0))
    shapes.append(_Shape(5, _ellipse(0.44 + _j(rng), 0.52 + _j(rng), 0.17, 0.085, tilt + _j(rng, 0.1)),
                         shade=0.65))
    hx, hy = 0.70 + _j(rng, 0.015), 0.22 + rng.uniform(-0.04, 0.04)
    open_ = rng.uniform(0.0, 0.04)
    shapes.append(_Shape(1, np.array([[hx + 0.08, hy - 0.05], [hx + 0.28, hy + 0.01 - open_],
                                      [hx + 0.08, hy + 0.07]]), detail="dark"))      # beak
    shapes.append(_Shape(1, _ellipse(hx, hy, 0.13, 0.13), shade=1.2))
    shapes.append(_Shape(1, _ellipse(hx + 0.04, hy - 0.03, 0.03, 0.03, n=12), detail="eye"))
    return shapes


def _fish(rng, present: bool) -> list[_Shape]:
    shapes = []
    flap = rng.uniform(-0.08, 0.08)
    shapes.append(_Shape(2, np.array([[0.24, 0.54], [0.01, 0.12 + flap], [0.10, 0.54 + flap / 2],
                                      [0.01, 0.92 + flap]]), shade=0.75))
    if present:
        x = 0.50 + _j(rng, 0.03)
        shapes.append(_Shape(3, np.array([[x - 0.14, 0.28], [x + 0.10, 0.26], [x - 0.10 + _j(rng), 0.0]]),
                             shade=0.7))
    shapes.append(_Shape(4, _ellipse(0.55, 0.54 + _j(rng), 0.36, 0.32 + _j(rng, 0.01)), shade=1.0))
    shapes.append(_Shape(1, _ellipse(0.80 + _j(rng, 0.01), 0.54, 0.15, 0.26), shade=1.25))
    shapes.append(_Shape(1, _ellipse(0.84, 0.45 + _j(rng), 0.035, 0.06, n=12), detail="eye"))
    shapes.append(_Shape(1, np.array([[0.88, 0.62], [0.95, 0.64]]), width=0.03, detail="dark"))  # mouth
    return shapes


_BUILDERS = {"toy01": _quadruped, "toy02": _bird, "toy03": _fish}


@dataclass
class _Placement:
    """Canonical frame -> 0-based continuous pixel coordinates (pixel i spans [i, i+1))."""
    x0: float
    y0: float
    bw: float
    bh: float
    flip: bool
    angle: float

    def apply(self, pts: np.ndarray) -> np.ndarray:
        u = 1.0 - pts[:, 0] if self.flip else pts[:, 0]
        x = self.x0 + u * self.bw
        y = self.y0 + pts[:, 1] * self.bh
        cx, cy = self.x0 + self.bw / 2, self.y0 + self.bh / 2
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.stack([cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy)], axis=1)


def _outline_points(shape: _Shape, place: _Placement) -> np.ndarray:
    """The shape's outline in pixel coordinates (a thick line as its outline polygon)."""
    pts = place.apply(shape.points)
    if shape.width <= 0:
        return pts
    half = shape.width * place.bw / 2
    out_l, out_r = [], []
    for i in range(len(pts)):
        a, b = pts[max(i - 1, 0)], pts[min(i + 1, len(pts) - 1)]
        d = b - a
        n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * half
        out_l.append(pts[i] + n)
        out_r.append(pts[i] - n)
    return np.array(out_l + out_r[::-1])


# ----------------------------------------------------------------------------------------------
# Drawing

def _colour(rng, dark_background: bool) -> np.ndarray:
    h = rng.uniform(0, 1)
    s = rng.uniform(0.35, 0.9)
    v = rng.uniform(0.6, 0.95) if dark_background else rng.uniform(0.18, 0.5)
    return np.array(_hsv_to_rgb(h, s, v)) * 255.0


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _rgb(c) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _canvas_xy(pts: np.ndarray) -> list[tuple[float, float]]:
    # pixel-edge coordinate e -> PIL canvas coordinate (PIL puts pixel k's centre at k)
    q = pts * SUPERSAMPLE - 0.5
    return [(float(x), float(y)) for x, y in q]


def _background(rng, size: int) -> tuple[Image.Image, float]:
    """A gradient between two random colours at a random angle; returns the canvas and its mean luminance."""
    big = size * SUPERSAMPLE
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = rng.uniform(0, 2 * np.pi)
    t = (np.cos(a) * np.linspace(-1, 1, size)[None, :] + np.sin(a) * np.linspace(-1, 1, size)[:, None])
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    arr = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    lum = float(np.mean(arr @ np.array([0.299, 0.587, 0.114])))
    small = Image.fromarray(np.round(arr).astype(np.uint8), "RGB")
    return small.resize((big, big), Image.BILINEAR), lum


def _clutter(draw: ImageDraw.ImageDraw, rng, size: int, count: int) -> None:
    """Random blobs, boxes, triangles and strokes of random colours."""
    for _ in range(count):
        kind = rng.integers(0, 4)
        col = _rgb(rng.uniform(0, 255, 3))
        cx, cy = rng.uniform(-2, size + 2, 2)
        r = rng.uniform(1.5, size / 7)
        if kind == 0:
            pts = _ellipse(cx, cy, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi), n=20)
        elif kind == 1:
            pts = _ellipse(cx, cy, r, r * rng.uniform(0.3, 1.0), rng.uniform(0, np.pi), n=4)
        elif kind == 2:
            pts = np.stack([cx + r * rng.uniform(-1, 1, 3), cy + r * rng.uniform(-1, 1, 3)], axis=1)
        else:
            p = np.array([[cx, cy], [cx + r * rng.uniform(-2, 2), cy + r * rng.uniform(-2, 2)]])
            draw.line(_canvas_xy(p), fill=col, width=int(SUPERSAMPLE * rng.uniform(0.7, 2.0)))
            continue
        draw.polygon(_canvas_xy(pts), fill=col)


def _draw_shapes(draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw | None, shapes: Sequence[_Shape],
                 place: _Placement, colour: np.ndarray, contrast: np.ndarray) -> None:
    edge = _rgb(colour * 0.45)
    for sh in shapes:
        xy = _canvas_xy(_outline_points(sh, place))
        if sh.detail == "eye":
            fill = _rgb(contrast)
        elif sh.detail == "dark":
            fill = _rgb(colour * 0.35)
        else:
            fill = _rgb(colour * sh.shade)
        draw.polygon(xy, fill=fill, outline=edge if sh.detail is None else None,
                     width=SUPERSAMPLE if sh.detail is None else 1)
        if mask is not None:
            mask.polygon(xy, fill=sh.label, outline=sh.label, width=SUPERSAMPLE if sh.detail is None else 1)


def _finish(canvas: Image.Image, rng, size: int) -> Image.Image:
    """Box-filter down to size x size and add sensor noise."""
    small = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float64)
    small = small + rng.normal(0.0, 5.0, small.shape)
    return Image.fromarray(np.clip(np.round(small), 0, 255).astype(np.uint8), "RGB")


def _labels_down(mask: Image.Image) -> np.ndarray:
    """The label canvas sampled at each output pixel's centre."""
    arr = np.asarray(mask, dtype=np.uint8)
    h = SUPERSAMPLE // 2
    return arr[h::SUPERSAMPLE, h::SUPERSAMPLE].copy()


def _random_placement(rng, category: str, size: int) -> _Placement:
    bw = rng.uniform(0.52, 0.86) * size
    bh = min(bw * rng.uniform(*_ASPECT[category]), 0.9 * size)
    margin = 0.06 * size
    x0 = rng.uniform(margin, size - margin - bw) if size - 2 * margin > bw else (size - bw) / 2
    y0 = rng.uniform(margin, size - margin - bh) if size - 2 * margin > bh else (size - bh) / 2
    return _Placement(x0, y0, bw, bh, bool(rng.integers(0, 2)), math.radians(rng.uniform(-10, 10)))


def _distractors(draw: ImageDraw.ImageDraw, rng, size: int, kind: str, count: int,
                 dark_background: bool) -> list[dict]:
    """Lone parts of one kind at random places and sizes (never an arrangement)."""
    out = []
    options = [(c, lbl) for (c, lbl), k in _KIND.items() if k == kind]
    for _ in range(count):
        cat, lbl = options[int(rng.integers(0, len(options)))]
        shapes = [s for s in _BUILDERS[cat](rng, True) if s.label == lbl]
        place = _random_placement(rng, cat, size)
        pts = np.concatenate([_outline_points(s, place) for s in shapes])
        centre = (pts.min(0) + pts.max(0)) / 2
        target = rng.uniform(0, size, 2)
        place.x0 += float(target[0] - centre[0])
        place.y0 += float(target[1] - centre[1])
        if kind == "legs":             # one limb, not a pair
            shapes = shapes[:1] if cat != "toy02" else shapes[:2]
        _draw_shapes(draw, None, shapes, place, _colour(rng, dark_background), rng.uniform(0, 255, 3))
        out.append({"kind": kind, "from": cat, "centre_xy": [round(float(v), 3) for v in target]})
    return out


@dataclass
class ToyPositive:
    """One rendered positive: the image, its label map and its annotation (image coordinates)."""
    image: Image.Image
    mask: np.ndarray                                      # (H, W) uint8 labels
    bndbox: tuple[int, int, int, int]                     # xmin, ymin, xmax, ymax, 1-based inclusive
    landmarks: dict[int, tuple[float, float] | None]      # part -> (y, x) 1-based image coords or None
    part_boxes: dict[int, tuple[float, float, float, float] | None]   # part -> (y0, x0, y1, x1) pixel edges
    facing: str
    info: dict = field(default_factory=dict)


def render_positive(category: str, seed: int, index: int, image_size: int = 64) -> ToyPositive:
    """Draw positive ``index`` (1-based) of ``category`` for ``seed``."""
    cat_id = TOY_CATEGORIES.index(category) + 1
    rng = np.random.default_rng([int(seed), cat_id, int(index)])
    canvas, lum = _background(rng, image_size)
    dark = lum < 128
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, image_size, int(rng.integers(5, 13)))
    distractors = []
    if rng.uniform() < 0.3:
        kind = DISTRACTOR_KINDS[int(rng.integers(0, len(DISTRACTOR_KINDS)))]
        distractors = _distractors(draw, rng, image_size, kind, 1, dark)
    optional = _OPTIONAL_PART[category]
    present = not (optional is not None and rng.uniform() < 0.15)
    shapes = _BUILDERS[category](rng, present)
    place = _random_placement(rng, category, image_size)
    colour = _colour(rng, dark)
    contrast = np.array([250.0, 250.0, 250.0]) if colour.mean() < 110 else np.array([15.0, 15.0, 15.0])
    mask_canvas = Image.new("L", canvas.size, 0)
    _draw_shapes(draw, ImageDraw.Draw(mask_canvas), shapes, place, colour, contrast)
    image = _finish(canvas, rng, image_size)
    mask = _labels_down(mask_canvas)
    bndbox = _object_box(mask, rng, image_size)
    labels_big = np.asarray(mask_canvas, dtype=np.uint8)
    part_boxes, landmarks = {}, {}
    for part in TOY_PART_NAMES[category]:
        box = _visible_box(labels_big, part)
        part_boxes[part] = box
        if box is None:
            landmarks[part] = None
            continue
        y0, x0, y1, x1 = box
        landmarks[part] = ((y0 + y1) / 2 + 0.5, (x0 + x1) / 2 + 0.5)   # pixel edges -> 1-based centres
    return ToyPositive(image, mask, bndbox, landmarks, part_boxes, "left" if place.flip else "right",
                       {"distractors": distractors, "angle_deg": round(math.degrees(place.angle), 3)})


def _visible_box(labels_big: np.ndarray, part: int) -> tuple[float, float, float, float] | None:
    """The visible extent of one part (pixel-edge coordinates y0, x0, y1, x1) from the 4x label canvas."""
    hit = labels_big == part
    rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
    if rows.size == 0:
        return None
    f = float(SUPERSAMPLE)
    return rows[0] / f, cols[0] / f, (rows[-1] + 1) / f, (cols[-1] + 1) / f


def _object_box(mask: np.ndarray, rng, size: int) -> tuple[int, int, int, int]:
    """Tight box of the object's pixels plus 0-2 pixels, 1-based inclusive, inside the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    pad = rng.integers(0, 3, 4)
    xmin = max(1, int(cols[0]) + 1 - int(pad[0]))
    ymin = max(1, int(rows[0]) + 1 - int(pad[1]))
    xmax = min(size, int(cols[-1]) + 1 + int(pad[2]))
    ymax = min(size, int(rows[-1]) + 1 + int(pad[3]))
    return xmin, ymin, xmax, ymax


def render_negative(seed: int, index: int, image_size: int = 64) -> tuple[Image.Image, dict]:
    """Draw negative ``index`` (1-based): background, clutter and stray parts of a single kind."""
    rng = np.random.default_rng([int(seed), 0, int(index)])
    canvas, lum = _background(rng, image_size)
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, image_size, int(rng.integers(6, 15)))
    kind = DISTRACTOR_KINDS[int(rng.integers(0, len(DISTRACTOR_KINDS)))]
    stray = _distractors(draw, rng, image_size, kind, int(rng.integers(1, 4)), lum < 128)
    return _finish(canvas, rng, image_size), {"distractors": stray}


# ----------------------------------------------------------------------------------------------
# Coordinates

def crop_coordinates(point_hw: tuple[float, float], bndbox: tuple[int, int, int, int],
                     input_size: int) -> tuple[float, float]:
    """1-based image (y, x) -> 1-based (h, w) in the box crop resized to input_size x input_size.

    The pixel-centre mapping of MATLAB's imresize, which getI uses:
    ``h = (y - ymin + 0.5) * input_size / (ymax - ymin + 1) + 0.5``.
    """
    xmin, ymin, xmax, ymax = bndbox
    h = (point_hw[0] - ymin + 0.5) * input_size / (ymax - ymin + 1) + 0.5
    w = (point_hw[1] - xmin + 0.5) * input_size / (xmax - xmin + 1) + 0.5
    return h, w


def _part_scale(box: tuple[float, float, float, float], bndbox, input_size: int) -> tuple[float, float]:
    xmin, ymin, xmax, ymax = bndbox
    y0, x0, y1, x1 = box
    return (y1 - y0) * input_size / (ymax - ymin + 1), (x1 - x0) * input_size / (xmax - xmin + 1)


# ----------------------------------------------------------------------------------------------
# Writing

@dataclass(frozen=True)
class ToyPaths:
    """Where `generate_toy_dataset` wrote things (the ILSVRC layout)."""
    root: Path
    image_dir: Path                     # conf.data.imgdir: <root>/detanimalpart
    truth_dir: Path                     # <root>/data_input (<wnid>/truth_partNN.mat)
    neg_dir: Path                       # <root>/neg
    manifest: Path                      # <root>/toy.json
    categories: tuple[str, ...]
    input_size: int
    min_area: int

    def data_mat(self, category: str) -> Path:
        return self.image_dir / f"{category}_obj" / "img" / "data.mat"

    def images(self, category: str) -> Path:
        return self.image_dir / f"{category}_obj" / "img" / "img"

    def masks(self, category: str) -> Path:
        return self.image_dir / f"{category}_obj" / "mask"

    def annotations(self, category: str) -> Path:
        return self.image_dir / f"{category}_obj" / "annotations.json"

    def truth_file(self, category: str, part: int) -> Path:
        return self.truth_dir / category / f"truth_part{int(part):02d}.mat"


def _paths(root: Path, categories: tuple[str, ...], input_size: int, image_size: int) -> ToyPaths:
    return ToyPaths(root, root / "detanimalpart", root / "data_input", root / "neg", root / MANIFEST_NAME,
                    categories, input_size, toy_min_area(image_size))


#: The creation date written into the toy's MAT-file headers, so that the files are byte-identical.
FIXED_MAT_DATE = b"Created on: Thu Jan  1 00:00:00 1970"


def _savemat(path: Path, variables: dict, version: str = "7.3") -> None:
    """Write a MAT file through legacy_compat.savemat, with a fixed creation date in its text header.

    MATLAB (and legacy_compat.savemat) put the current time into the
    116-byte text that starts a MAT file (v5 header, v7.3 HDF5 userblock);
    nothing reads it, but it would make two runs with the same seed differ.
    The file is written under a temporary name, its header date replaced,
    then renamed into place.
    """

    def write(tmp: Path) -> None:
        savemat(tmp, variables, version=version)
        _fix_header_date(tmp)

    atomic_write(path, write)


def _fix_header_date(path: Path) -> None:
    """Overwrite the asctime() date (always 24 characters) after 'Created on: ' in the header text."""
    with open(path, "r+b") as f:
        head = f.read(116)
        start = head.find(b"Created on: ")
        if not head.startswith(b"MATLAB ") or start < 0 or start + len(FIXED_MAT_DATE) > 116:
            return
        f.seek(start)
        f.write(FIXED_MAT_DATE)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def _png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _data_mat_samples(boxes: Sequence[tuple[int, int, int, int]]):
    """data.mat's ``samples``: 1 x N struct (obj, class), obj.bndbox fields ymin, ymax, xmin, xmax (double)."""
    structs = []
    for xmin, ymin, xmax, ymax in boxes:
        bb = MatStruct(ymin=np.array([[float(ymin)]]), ymax=np.array([[float(ymax)]]),
                       xmin=np.array([[float(xmin)]]), xmax=np.array([[float(xmax)]]))
        structs.append(MatStruct(obj=MatStruct(bndbox=bb), **{"class": np.array([[1.0]])}))
    return StructArray.from_structs(structs, (1, len(structs)))


def _truth(category: str, part: int, items: Sequence[ToyPositive], input_size: int):
    """truth_partNN.mat's ``truth``: 1 x N struct (pHW_center, pHW_scale, obj); [] where the part is absent."""
    empty = np.zeros((0, 0))
    structs = []
    for i, item in enumerate(items, start=1):
        lm = item.landmarks[part]
        if lm is None:
            structs.append(MatStruct(pHW_center=empty, pHW_scale=empty, obj=empty))
            continue
        h, w = crop_coordinates(lm, item.bndbox, input_size)
        sh, sw = _part_scale(item.part_boxes[part], item.bndbox, input_size)
        xmin, ymin, xmax, ymax = item.bndbox
        obj = MatStruct(folder=category, filename=f"{category}_{i:05d}", name=category,
                        bndbox=MatStruct(xmin=str(xmin), xmax=str(xmax), ymin=str(ymin), ymax=str(ymax)),
                        ID=np.array([[float(i)]]))
        structs.append(MatStruct(pHW_center=np.array([[h], [w]]), pHW_scale=np.array([[sh], [sw]]), obj=obj))
    return StructArray.from_structs(structs, (1, len(structs)))


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _write_category(tmp: Path, category: str, seed: int, n_pos: int, image_size: int, input_size: int,
                    truth_version: str, bar) -> dict:
    paths = _paths(tmp, (category,), input_size, image_size)
    img_dir, mask_dir = paths.images(category), paths.masks(category)
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    items = []
    for i in range(1, n_pos + 1):
        item = render_positive(category, seed, i, image_size)
        _write(img_dir / f"{i:05d}.jpg", _jpeg_bytes(item.image))
        _write(mask_dir / f"{i:05d}.png", _png_bytes(item.mask))
        items.append(item)
        bar.update(1)
    _savemat(paths.data_mat(category), {"samples": _data_mat_samples([it.bndbox for it in items])})
    truth_dir = paths.truth_dir / category
    truth_dir.mkdir(parents=True)
    for part in TOY_PART_NAMES[category]:
        _savemat(paths.truth_file(category, part), {"truth": _truth(category, part, items, input_size)},
                 truth_version)
    ann = [{"index": i, "bndbox_xyxy": list(it.bndbox), "facing": it.facing,
            "landmarks_yx": {str(p): (None if v is None else [round(v[0], 4), round(v[1], 4)])
                             for p, v in it.landmarks.items()}, **it.info}
           for i, it in enumerate(items, start=1)]
    text = json.dumps({"category": category, "description": TOY_DESCRIPTIONS[category],
                       "parts": TOY_PART_NAMES[category], "mask_labels": TOY_MASK_LABELS[category],
                       "coordinates": "landmarks_yx: 1-based (row, column) pixel centres of the image",
                       "objects": ann}, indent=1, sort_keys=True)
    _write(paths.annotations(category), text.encode())
    return {"n_pos": n_pos, "absent": {str(p): sum(it.landmarks[p] is None for it in items)
                                        for p in TOY_PART_NAMES[category]}}


@dataclass(frozen=True)
class ToyOptions:
    """What a toy dataset is made of: the random `seed`, ``n_pos`` positives per category, ``n_neg``
    shared negatives (1000, as getNegObjSet.m's MaxObjNum, by default), the `categories`,
    ``image_size`` x ``image_size`` JPEGs, ``input_size`` (None: ``image_size``) the crop size the
    ``pHW_center`` landmarks are expressed in (the network's input size), ``truth_version`` the
    truth files' MAT version ('5' or '7.3')."""

    seed: int = 0
    n_pos: int = TOY_POSITIVES
    n_neg: int = NUM_NEGATIVES
    categories: Iterable[str] = TOY_CATEGORIES
    image_size: int = 64
    input_size: int | None = None
    truth_version: str = "5"

    @property
    def crop_size(self) -> int:
        """The landmarks' crop size: input_size, else image_size."""
        return int(self.image_size if self.input_size is None else self.input_size)

    def manifest_fields(self) -> dict:
        """The options as the manifest records them."""
        return {"seed": int(self.seed), "n_pos": int(self.n_pos), "n_neg": int(self.n_neg),
                "categories": list(self.categories), "image_size": int(self.image_size),
                "input_size": self.crop_size, "truth_version": str(self.truth_version)}


def _check_options(n_pos: int, n_neg: int, categories: Sequence[str], image_size: int, input_size: int,
                   truth_version: str) -> None:
    if truth_version not in ("5", "7.3"):
        raise ValueError(f"truth_version must be '5' or '7.3', got {truth_version!r}")
    bad = [c for c in categories if c not in TOY_CATEGORIES]
    if bad or not categories:
        raise ValueError(f"unknown toy categories {bad or '(none given)'}; valid: {', '.join(TOY_CATEGORIES)}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories repeat: {list(categories)}")
    if n_pos < 1 or n_neg < 0:
        raise ValueError(f"n_pos must be >= 1 and n_neg >= 0, got n_pos={n_pos}, n_neg={n_neg}")
    if not 32 <= image_size <= 512:
        raise ValueError(f"image_size must be in 32..512, got {image_size}")
    if input_size < 8:
        raise ValueError(f"input_size must be >= 8, got {input_size}")


def generate_toy_dataset(root: os.PathLike | str, options: ToyOptions = ToyOptions(), *, overwrite: bool = False,
                         progress: bool = True) -> ToyPaths:
    """Write the toy dataset under ``root`` (ILSVRC layout, see the module docstring); return its paths.

    `options`: the seed, the counts, categories and sizes (`ToyOptions`).
    ``data.mat`` is MAT v7.3 like the real detanimalpart files; the truth
    files are MAT v5 by default (like the original's VOC truth files; about
    six times faster to write than v7.3, which ``truth_version="7.3"`` gives,
    as the original's ILSVRC truth files are); `legacy_compat.loadmat` reads
    both to the same values. Deterministic: the same arguments give byte-identical image and mask
    files. Everything is written into a temporary folder beside ``root`` and
    renamed into place at the end (``overwrite`` replaces an existing root).
    """
    root = Path(root)
    seed, n_pos, n_neg, image_size = options.seed, options.n_pos, options.n_neg, options.image_size
    categories = tuple(options.categories)
    input_size = options.crop_size
    truth_version = str(options.truth_version)
    _check_options(n_pos, n_neg, categories, image_size, input_size, truth_version)
    if root.exists() and not overwrite and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; pass overwrite=True to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(root.parent, (f".{root.name}.toy", f".{root.name}.old"))   # what a killed generation left
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.toy{writer_tag()}", dir=root.parent))
    try:
        total = n_pos * len(categories) + n_neg
        with tqdm(total=total, desc="toy dataset", unit="img", disable=not progress, leave=False) as bar:
            stats = {c: _write_category(tmp, c, seed, n_pos, image_size, input_size, truth_version, bar)
                     for c in categories}
            neg_info = _write_negatives(tmp / "neg", seed, n_neg, image_size, bar)
        manifest = {"generator": "data_prep.toy", "version": GENERATOR_VERSION,
                    **options.manifest_fields(),
                    "min_area": toy_min_area(image_size), "part_list": [1, 2],
                    "parts": {c: TOY_PART_NAMES[c] for c in categories},
                    "mask_labels": {c: TOY_MASK_LABELS[c] for c in categories},
                    "descriptions": {c: TOY_DESCRIPTIONS[c] for c in categories},
                    "stats": stats, "negatives": neg_info,
                    "layout": {"image_dir": "detanimalpart", "truth_dir": "data_input", "neg_dir": "neg"}}
        _write(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _paths(root, categories, input_size, image_size)


def _write_negatives(neg_dir: Path, seed: int, n_neg: int, image_size: int, bar) -> list[dict]:
    neg_dir.mkdir(parents=True)
    info = []
    for i in range(1, n_neg + 1):
        image, meta = render_negative(seed, i, image_size)
        _write(neg_dir / f"{i:05d}.JPEG", _jpeg_bytes(image))
        info.append(meta["distractors"][0]["kind"] if meta["distractors"] else None)
        bar.update(1)
    return info


def _replace_dir(tmp: Path, root: Path) -> None:
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old{writer_tag()}", dir=root.parent))
        os.replace(root, old / root.name)
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, root)


def read_manifest(root: os.PathLike | str) -> dict | None:
    """The manifest of a finished toy dataset under ``root``, or None (absent or unreadable)."""
    path = Path(root) / MANIFEST_NAME
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode())
    except (OSError, ValueError):
        return None
    return data if data.get("generator") == "data_prep.toy" else None


def manifest_matches(root: os.PathLike | str, options: ToyOptions = ToyOptions()) -> bool:
    """True when ``root`` holds a finished toy dataset generated with these options.

    A dataset generated with more categories than asked for also matches.
    """
    m = read_manifest(root)
    if m is None or m.get("version") != GENERATOR_VERSION:
        return False
    want = options.manifest_fields()
    same = all(m.get(k) == want[k] for k in ("seed", "n_pos", "n_neg", "image_size", "input_size",
                                             "truth_version"))
    return same and set(want["categories"]) <= set(m.get("categories", []))
