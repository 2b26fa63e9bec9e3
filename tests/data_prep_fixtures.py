"""Small synthetic datasets in the original layouts, for the data_prep tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.facts import CELEBA_ATTRIBUTES
from data_prep.readers import DataConf
from legacy_compat import MatStruct, StructArray
from legacy_compat.matio import savemat


def _box(xmin, ymin, xmax, ymax) -> MatStruct:
    return MatStruct(xmin=np.array([[float(xmin)]]), ymin=np.array([[float(ymin)]]),
                     xmax=np.array([[float(xmax)]]), ymax=np.array([[float(ymax)]]))


def write_ilsvrc_category(imgdir: Path, name: str, boxes: list[tuple[int, int, int, int]],
                          sizes: list[tuple[int, int]], seed: int = 0, version: str = "7.3") -> list[np.ndarray]:
    """<imgdir>/<name>_obj/img/data.mat (samples(i).obj.bndbox) and img/img/%05d.jpg; returns the images.

    The images are saved as PNG bytes under the .jpg names (PIL reads by
    content), so their pixels are known exactly.
    """
    rng = np.random.default_rng(seed)
    folder = imgdir / f"{name}_obj" / "img" / "img"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (h, w) in enumerate(sizes, start=1):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.jpg", format="PNG")
        images.append(arr)
    samples = StructArray.from_structs([MatStruct(obj=MatStruct(bndbox=_box(*b))) for b in boxes])
    savemat(imgdir / f"{name}_obj" / "img" / "data.mat", {"samples": samples}, version=version)
    return images


def write_negatives(neg_dir: Path, sizes: list[tuple[int, int]], seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    neg_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (h, w) in enumerate(sizes, start=1):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(neg_dir / f"{i:05d}.JPEG", format="PNG")
        images.append(arr)
    return images


def small_ilsvrc(root: Path, n_pos: int = 6, n_neg: int = 5, min_area: float = 100) -> tuple[DataConf, dict]:
    """A category 'nTEST' with n_pos images (the 3rd box under min_area) and n_neg negatives."""
    rng = np.random.default_rng(3)
    sizes = [(int(rng.integers(30, 60)), int(rng.integers(30, 60))) for _ in range(n_pos)]
    boxes = []
    for i, (h, w) in enumerate(sizes):
        if i == 2:
            boxes.append((3, 3, 7, 7))                       # 5 x 5 = 25 < min_area
        else:
            x0, y0 = int(rng.integers(1, w // 3)), int(rng.integers(1, h // 3))
            boxes.append((x0, y0, int(rng.integers(w // 2, w + 5)), int(rng.integers(h // 2, h + 5))))
    pos = write_ilsvrc_category(root / "detanimalpart", "nTEST", boxes, sizes)
    negs = write_negatives(root / "neg", [(int(rng.integers(20, 50)), int(rng.integers(20, 50))) for _ in range(n_neg)])
    conf = DataConf(dataset="ilsvrcanimalpart", imgdir=root / "detanimalpart", neg_dir=root / "neg",
                    readcode=root / "data_input", min_area=min_area, num_neg=n_neg)
    return conf, {"pos": pos, "neg": negs, "boxes": boxes}


def write_cub(root: Path, with_images: bool = False) -> Path:
    """A CUB_200_2011 folder with 6 images of 2 classes (image 4's box under 50^2);
    with_images writes 420 x 340 noise images under images/."""
    cub = root / "CUB_200_2011"
    (cub / "parts").mkdir(parents=True, exist_ok=True)
    names = ["001.Black_footed_Albatross/a1.jpg", "001.Black_footed_Albatross/a2.jpg",
             "001.Black_footed_Albatross/a3.jpg", "002.Laysan_Albatross/b1.jpg",
             "002.Laysan_Albatross/b2.jpg", "002.Laysan_Albatross/b3.jpg"]
    (cub / "images.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names, start=1)))
    (cub / "image_class_labels.txt").write_text("1 1\n2 1\n3 1\n4 2\n5 2\n6 2\n")
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 0\n5 1\n6 0\n")
    (cub / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (cub / "bounding_boxes.txt").write_text(
        "1 60.0 27.0 325.0 304.0\n2 139.0 30.0 153.0 264.0\n3 14.0 112.0 388.0 186.0\n"
        "4 10.0 10.0 40.0 40.0\n5 20.0 30.0 100.0 80.0\n6 5.0 5.0 90.0 60.0\n")
    locs = []
    for img in range(1, 7):
        for part in range(1, 16):
            visible = 0 if (img == 6 and part == 1) else 1
            x, y = (100.0 + img + part, 120.0 + img) if visible else (0.0, 0.0)
            locs.append(f"{img} {part} {x} {y} {visible}\n")
    (cub / "parts" / "part_locs.txt").write_text("".join(locs))
    if with_images:
        rng = np.random.default_rng(5)
        for n in names:
            (cub / "images" / n).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(340, 420, 3), dtype=np.uint8)).save(cub / "images" / n,
                                                                                          format="PNG")
    return cub


# ------------------------------------------------------------------ the face datasets and voc2010_crop
def write_jpg(path, w, h, value):
    """A random w x h JPEG (seeded by value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)


def write_celeba(root, flat=False, n_train=3, n_val=2, n_test=1):
    """A CelebA copy in its layout (official or flat): aligned 178 x 218 images, attribute k of image i
    +1 when (i + k) % 3 == 0, the same five landmarks for every image; (names, attributes by name)."""
    parts = [0] * n_train + [1] * n_val + [2] * n_test
    names = [f"{i:06d}.jpg" for i in range(1, len(parts) + 1)]
    img_dir = root / ("img_align_celeba" if flat else "Img/img_align_celeba")
    for k, n in enumerate(names):
        write_jpg(img_dir / n, 178, 218, k)
    attrs = {n: [1 if (k + a) % 3 == 0 else -1 for a in range(40)] for k, n in enumerate(names)}
    anno = root if flat else root / "Anno"
    anno.mkdir(parents=True, exist_ok=True)
    rows = [f"{n} " + " ".join(f"{v:2d}" for v in attrs[n]) for n in reversed(names)]   # not the partition order
    (anno / "list_attr_celeba.txt").write_text(f"{len(names)}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    marks = [f"{n} 69 109 106 113 77 142 73 152 108 154" for n in names]
    (anno / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y\n" + "\n".join(marks) + "\n")
    ev = root if flat else root / "Eval"
    ev.mkdir(parents=True, exist_ok=True)
    (ev / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts)))
    return names, attrs


def write_helen(root):
    """Two Helen faces in its layout (helen_1/, helen_2/, annotation/1.txt, 2.txt, trainnames.txt)."""
    faces = {"100032540_1": (160, 120), "1002681492_1": (140, 150)}
    for k, (name, (w, h)) in enumerate(faces.items(), start=1):
        write_jpg(root / f"helen_{k}" / f"{name}.jpg", w, h, k)
        rng = np.random.default_rng(k)
        pts = np.column_stack([rng.uniform(30, w - 30, 194), rng.uniform(40, h - 20, 194)])
        pts[41:58] = (70.0 + k, 80.0)                            # the nose points of face k
        (root / "annotation").mkdir(parents=True, exist_ok=True)
        (root / "annotation" / f"{k}.txt").write_text(name + "\n" + "".join(f"{x:.3f} , {y:.3f}\n" for x, y in pts))
    (root / "trainnames.txt").write_text("100032540_1\n")
    return faces


def write_voc2010_crop(root, category="bird"):
    """<root>/<category>_info.txt and its crops in the other port's layout (all_crop/...): 4 training and
    2 validation lines, positives and negatives; returns the lines (index, path, is_negative, is_train)."""
    lines = [(0, f"all_crop/{category}1_2008_000095.jpg", 0, 1), (1, f"all_crop/{category}2_2008_000097.jpg", 0, 1),
             (2, "all_crop/person5_2010_003875.jpg", 1, 1), (3, f"all_crop/{category}3_2008_000103.jpg", 0, 0),
             (4, "all_crop/chair7_2009_004289.jpg", 1, 0), (5, f"all_crop/{category}4_2008_000131.jpg", 0, 1)]
    for k, (_, path, _, _) in enumerate(lines):
        write_jpg(root / path, 40 + 7 * k, 60 - 5 * k, k)
    (root / f"{category}_info.txt").write_text("".join(f"{i},{p},{n},{t}\n" for i, p, n, t in lines))
    return lines


def ilsvrc_category_from(src: Path, dst: Path, n_images: int) -> None:
    """An ILSVRC category folder `dst` (<wnid>_obj) with n_images images: `src`'s images and boxes in
    turn (the images symlinked), for categories whose images the test data do not hold."""
    from legacy_compat import loadmat  # noqa: PLC0415 - only this helper reads MAT files

    boxes = [m.obj.bndbox for m in np.asarray(loadmat(src / "img" / "data.mat")["samples"], dtype=object).reshape(-1)]
    n_src = len(boxes)
    folder = dst / "img" / "img"
    folder.mkdir(parents=True)
    for i in range(n_images):
        (folder / f"{i + 1:05d}.jpg").symlink_to((src / "img" / "img" / f"{i % n_src + 1:05d}.jpg").resolve())
    samples = StructArray.from_structs([MatStruct(obj=MatStruct(bndbox=MatStruct(
        **{k: np.array([[float(np.asarray(getattr(boxes[i % n_src], k)).reshape(-1)[0])]])
           for k in ("xmin", "ymin", "xmax", "ymax")}))) for i in range(n_images)])
    savemat(dst / "img" / "data.mat", {"samples": samples}, version="7.3")
