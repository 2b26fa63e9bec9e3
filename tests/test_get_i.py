"""getI (data_prep.get_i): crop, clip, colour modes, resize, mirror, bad images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_prep.get_i import (
    BoxError,
    ImageReadError,
    crop_box,
    gather_patches,
    get_i,
    get_patch,
    read_image,
    resize_patch,
)
from data_prep.readers import BndBox, ObjRecord
from legacy_compat import loadmat
from legacy_compat.imresize import imresize


def _obj(filename: str, box: tuple[int, int, int, int], folder: str = "") -> ObjRecord:
    return ObjRecord(folder=folder, filename=filename, name="x", bndbox=BndBox(*box), ID=1)


@pytest.fixture
def rgb_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")            # lossless: known pixels
    return tmp_path, arr


def test_golden_case_exact(golden_dir, shared_data):
    case = loadmat(golden_dir / "getI.mat")
    inp, out = case["inputs"], case["outputs"]
    root = shared_data / inp["image_root"]
    for k, f in enumerate(inp["files"].reshape(-1)):
        box = tuple(int(v) for v in inp["bndbox"][k])
        patch, image = get_i(_obj(f, box), root, tuple(int(v) for v in inp["tarSize"][k]), bool(inp["IsFlip"][0, k]))
        np.testing.assert_array_equal(image, out["I"][0, k])
        np.testing.assert_allclose(patch, out["I_patch"][0, k], rtol=0, atol=1e-4)


def test_crop_is_inclusive_one_based(rgb_jpeg):
    folder, arr = rgb_jpeg
    crop = crop_box(read_image(folder / "a.png"), BndBox(xmin=3, ymin=5, xmax=10, ymax=7))
    np.testing.assert_array_equal(crop, arr[4:7, 2:10])


def test_box_past_the_image_is_clipped_as_matlab(rgb_jpeg):
    folder, arr = rgb_jpeg
    inside = get_i(_obj("a.png", (1, 20, 60, 40)), folder, 16)[0]
    past = get_i(_obj("a.png", (-5, 20, 90, 77)), folder, 16)[0]
    np.testing.assert_array_equal(past, inside)
    assert past.shape == (16, 16, 3) and past.dtype == np.float32


def test_box_outside_the_image_names_the_file(rgb_jpeg):
    folder, _ = rgb_jpeg
    with pytest.raises(BoxError, match="a.png.*does not overlap the 60 x 40 image"):
        get_i(_obj("a.png", (70, 1, 90, 10)), folder, 16)


def test_resize_and_mirror(rgb_jpeg):
    folder, arr = rgb_jpeg
    patch, image = get_i(_obj("a.png", (1, 1, 60, 40)), folder, (24, 30))
    np.testing.assert_array_equal(patch, imresize(arr.astype(np.float32), [24, 30], "bilinear"))
    fpatch, fimage = get_i(_obj("a.png", (1, 1, 60, 40)), folder, (24, 30), is_flip=True)
    np.testing.assert_array_equal(fpatch, patch[:, ::-1])
    np.testing.assert_array_equal(fimage, arr[:, ::-1])
    assert 0 <= patch.min() and patch.max() <= 255


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path):
    g = (np.arange(30 * 20).reshape(30, 20) % 256).astype(np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.jpg", quality=95)
    img = read_image(tmp_path / "g.jpg")
    assert img.shape == (30, 20, 3)
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 0], np.asarray(Image.open(tmp_path / "g.jpg")))


def test_cmyk_jpeg_and_palette_become_rgb(tmp_path):
    rgb = Image.new("RGB", (20, 10), (200, 30, 60))
    rgb.convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    img = read_image(tmp_path / "c.jpg")
    assert img.shape == (10, 20, 3) and img.dtype == np.uint8
    assert abs(int(img[5, 10, 0]) - 200) < 8 and abs(int(img[5, 10, 1]) - 30) < 8
    rgb.quantize(colors=4).save(tmp_path / "p.png")   # adaptive palette: holds the exact colour
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[0, 0], [200, 30, 60])


def test_missing_truncated_and_unreadable_images_are_named(tmp_path, rgb_jpeg):
    folder, arr = rgb_jpeg
    with pytest.raises(ImageReadError, match="nope.jpg.*no such file"):
        read_image(tmp_path / "nope.jpg")
    Image.fromarray(arr).save(tmp_path / "t.jpg", quality=90)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        get_i(_obj("junk.jpg", (1, 1, 5, 5)), tmp_path, 8)


def test_gather_patches_matches_get_patch_in_order(rgb_jpeg):
    folder, arr = rgb_jpeg
    objs = [_obj("a.png", (1 + k, 1, 30 + k, 20 + k)) for k in range(7)]
    blocks = list(gather_patches(objs, folder, (12, 10), batch_size=3, workers=2))
    assert [s for s, _ in blocks] == [0, 3, 6]
    allp = np.concatenate([b for _, b in blocks])
    assert allp.shape == (7, 3, 12, 10)
    for k, o in enumerate(objs):
        np.testing.assert_array_equal(allp[k], get_patch(o, folder, (12, 10)))
        np.testing.assert_array_equal(allp[k].transpose(1, 2, 0), resize_patch(arr[0:20 + k, k:30 + k], (12, 10)))


def test_negative_folder_absolute(tmp_path, rgb_jpeg):
    folder, arr = rgb_jpeg
    obj = ObjRecord(folder=str(folder), filename="a.png", name="n", bndbox=BndBox(1, 1, 60, 40), ID=1)
    np.testing.assert_array_equal(get_i(obj, tmp_path / "elsewhere", 8)[1], arr)
