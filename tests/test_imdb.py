"""The imdb (data_prep.imdb): getImdb / getImdb_cub200 / produceIMDB, the cache, memory, the real fox."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from data_prep_fixtures import small_ilsvrc, write_cub, write_ilsvrc_category

from data_prep.annotations import read_annotation
from data_prep.cub200 import cub200_conf
from data_prep.get_i import get_i
from data_prep.ilsvrc import ilsvrc_conf, read_annotation_ilsvrc
from data_prep.imdb import (
    FORMAT_VERSION,
    Imdb,
    assemble_imdb,
    assemble_imdb_cub200,
    get_imdb,
    get_imdb_cub200,
    get_imdb_cub200_layout,
    get_imdb_layout,
    legacy_randperm,
    load_cached_imdb,
    load_or_build_imdb,
    order_from_perm,
    produce_imdb,
    produce_imdb_from_objects,
    save_imdb_mat,
)
from data_prep.negatives import get_neg_objset
from data_prep.readers import DatasetError, count_objects
from legacy_compat import loadmat
from reproduce.golden.data_cases import octave_single_mean

PROJECT = Path(__file__).resolve().parent.parent


def _round_half_up(q: Fraction) -> int:
    return math.floor(q + Fraction(1, 2))


def _linspace_rounded(a: int, b: int, n: int) -> list[int]:
    """round(linspace(a, b, n)) in exact arithmetic (an independent check of the port's linspace)."""
    if n == 1:
        return [b]
    return [_round_half_up(a + Fraction(k * (b - a), n - 1)) for k in range(n)]


def _expected_train_count(num_pos: int, num_neg: int) -> tuple[int, int]:
    tar_n = 3 * num_neg
    objs = _linspace_rounded(1, num_pos, _round_half_up(Fraction(num_pos * 9, 10)))
    pos = {2 * l - 1 + r * 2 * num_pos for l in objs for r in range(tar_n // (2 * num_pos) + 1)}
    pos |= {2 * l + r * 2 * num_pos for l in objs for r in range(tar_n // (2 * num_pos) + 1)}
    negs = _linspace_rounded(1, num_neg, _round_half_up(Fraction(num_neg * 9, 10)))
    return sum(p <= tar_n for p in pos), len(set(negs))


def _patches(n: int, size=(5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, 3) + size).astype(np.float32)


# ----------------------------------------------------------------- getImdb arithmetic
def test_layout_counts_and_split():
    lay = get_imdb_layout(3, 10)                      # tarN = 30: the 6 patches x 5
    assert lay.n == 40 and lay.labels[:30].min() == 1 and lay.labels[30:].max() == -1
    np.testing.assert_array_equal(lay.source[:8], [0, 0, 1, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(lay.flip[:6], [False, True] * 3)
    # all positives train (round(linspace(1,3,3))); negatives round(linspace(1,10,9)) skips the 5th
    np.testing.assert_array_equal(np.flatnonzero(lay.set == 2), [34])
    for num_pos, num_neg in [(286, 1000), (7, 13), (50, 20), (99, 40)]:
        lay = get_imdb_layout(num_pos, num_neg)
        tp, tn = _expected_train_count(num_pos, num_neg)
        assert (lay.set[:3 * num_neg] == 1).sum() == tp and (lay.set[3 * num_neg:] == 1).sum() == tn


def test_layout_more_positives_than_tarn():
    lay = get_imdb_layout(10, 3)                      # tarN = 9 < 20: objects 5..10 never used
    assert lay.n == 12 and lay.source[:9].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    with pytest.raises(DatasetError, match="no positive"):
        get_imdb_layout(0, 3)


def test_cub_layout():
    lay = get_imdb_cub200_layout(3, 2, [1, 3])        # negatives used 4 times each, in a row
    np.testing.assert_array_equal(lay.source, [0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(np.flatnonzero(lay.set == 1) + 1, [1, 3, 4, 5, 6, 7])
    with pytest.raises(DatasetError, match="trainList holds 12 but the imdb has 11"):
        get_imdb_cub200_layout(3, 2, [1, 12])


def test_permutations():
    p = legacy_randperm(50)
    assert sorted(p.tolist()) == list(range(1, 51)) and np.array_equal(p, legacy_randperm(50))
    np.testing.assert_array_equal(p, np.argsort(np.random.RandomState(5489).random_sample(50), kind="stable") + 1)
    order = order_from_perm(p)
    np.testing.assert_array_equal(p[order - 1], np.arange(1, 51))


# ----------------------------------------------------------------- assembling
def test_assemble_invariants():
    pos, neg = _patches(4), _patches(3, seed=1)
    perm = legacy_randperm(3 * 3 + 3, seed=7)             # tarN = 9 positives, 3 negatives
    im = assemble_imdb(pos, neg, ["c"], perms=[perm])
    raw = np.asarray(im.data) + im.data_mean                 # back to 0-255
    unshuf = raw[im.order - 1]
    lay = get_imdb_layout(4, 3)
    for k in range(lay.n):
        src = pos[lay.source[k]] if lay.source[k] < 4 else neg[lay.source[k] - 4]
        np.testing.assert_allclose(unshuf[k], src[..., ::-1] if lay.flip[k] else src, atol=1e-4)
    np.testing.assert_array_equal(im.labels[im.order - 1], lay.labels)
    np.testing.assert_array_equal(im.set[im.order - 1], lay.set)
    np.testing.assert_allclose(im.data_mean, unshuf[lay.set == 1].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(im.data)[im.train_indices()].mean(axis=0), 0, atol=1e-4)
    assert im.data.dtype == np.float32 and im.labels.shape == (12, 1) and im.set.dtype == np.uint8


def test_not_shuffled_and_the_mean_function():
    pos, neg = _patches(4), _patches(3, seed=1)
    a = assemble_imdb(pos, neg, is_train=False)
    assert a.order is None and a.labels[:9].min() == 1 and a.classes == ["cate"]
    b = assemble_imdb(pos, neg, is_train=False, mean=octave_single_mean)      # the golden cases' running sum
    np.testing.assert_allclose(a.data_mean, b.data_mean, rtol=1e-6)
    seen = []
    c = assemble_imdb(pos, neg, is_train=False, mean=lambda chunks, n: seen.append(n) or np.full_like(a.data_mean, 7.0))
    assert seen == [int((a.set == 1).sum())] and np.all(c.data_mean == 7)
    np.testing.assert_allclose(c.data + 7, a.data + a.data_mean, rtol=1e-6, atol=1e-4)
    with pytest.raises(ValueError, match="permutation of 1..12"):
        assemble_imdb(pos, neg, perms=[np.arange(1, 12)])


def test_disk_build_equals_memory_build(tmp_path):
    pos, neg = _patches(5, (8, 6)), _patches(4, (8, 6), seed=2)
    mem = assemble_imdb(pos, neg, perms=None, seed=3)
    disk = assemble_imdb(pos, neg, seed=3, out=tmp_path / "d.npy")
    assert isinstance(disk.data, np.memmap) and not disk.data.flags.writeable
    np.testing.assert_array_equal(np.asarray(disk.data), mem.data)
    np.testing.assert_array_equal(disk.order, mem.order)
    np.testing.assert_array_equal(disk.data_mean, mem.data_mean)


def test_matlab_round_trip(tmp_path):
    im = assemble_imdb(_patches(3), _patches(2, seed=1), ["fox"])
    m = im.to_matlab()
    assert m["images"]["data"].shape == (5, 4, 3, im.num_images) and m["images"]["labels"].shape == (1, 8)
    assert m["meta"]["dataMean"].shape == (5, 4, 3) and m["images"]["set"].shape == (1, 8)
    back = Imdb.from_matlab(m)
    np.testing.assert_array_equal(back.data, im.data)
    np.testing.assert_array_equal(back.order, im.order)
    assert back.classes == ["fox"]
    save_imdb_mat(im, tmp_path / "imdb.mat", version="5")
    again = Imdb.from_matlab(loadmat(tmp_path / "imdb.mat"))
    np.testing.assert_array_equal(again.data, im.data)
    np.testing.assert_array_equal(again.set, im.set)
    np.testing.assert_array_equal(im.val_indices(), np.flatnonzero(im.set == 2))


def test_cub_assemble():
    pos, neg = _patches(3), _patches(2, seed=1)
    im = assemble_imdb_cub200(pos, neg, [1, 3], is_train=False)
    assert im.classes == ["cub200"] and im.num_images == 11
    raw = im.data + im.data_mean
    for k in range(3, 7):
        np.testing.assert_allclose(raw[k], neg[0], atol=1e-4)


def test_cub_builder_from_the_text_files(tmp_path):
    neg_conf, info = small_ilsvrc(tmp_path / "data", n_neg=3)
    conf = cub200_conf(tmp_path, catedir=write_cub(tmp_path, with_images=True), neg_dir=neg_conf.neg_dir)
    conf.num_neg = 3
    im = get_imdb_cub200("cub200", conf, (8, 8), is_train=False, progress=False)
    assert im.num_images == 5 + 4 * 3 and im.labels[:5].min() == 1 and im.labels[5:].max() == -1
    # trainList [1 3 5] taken as positions (faithful), then the first round(12 / 2) negatives
    np.testing.assert_array_equal(im.train_indices() + 1, [1, 3, 5, 6, 7, 8, 9, 10, 11])
    fixed = get_imdb_cub200("cub200", conf, (8, 8), is_train=False, progress=False, train_list_by_image_id=True)
    # objects are images 1 2 3 5 6; the training images are 1, 3, 5 -> objects 1, 3, 4
    np.testing.assert_array_equal(fixed.train_indices()[:3] + 1, [1, 3, 4])


# ----------------------------------------------------------------- produceIMDB
def test_produce_imdb_counts_and_labels():
    cats = [assemble_imdb(_patches(n, (3, 3), seed=n), _patches(4, (3, 3), seed=9), [f"c{n}"], seed=n)
            for n in (2, 3)]
    out = produce_imdb(cats, ["c2", "c3"], [2, 3])
    assert out.num_images == 3000 and out.classes == ["c2", "c3"]          # each padded to minSampleNum 1500
    np.testing.assert_array_equal(out.labels[:1500], [[1, -1]] * 1500)
    np.testing.assert_array_equal(out.labels[1500:], [[-1, 1]] * 1500)
    np.testing.assert_array_equal(out.order, np.arange(1, 3001))
    assert (out.set == 1).sum() == 2700
    # category c2: its 4 unique positives (2 objects x mirror), cycled
    c2 = cats[0]
    un = (c2.data + c2.data_mean)[c2.order - 1]
    raw = out.data + out.data_mean
    for k in (0, 1, 2, 3, 4, 1499):
        np.testing.assert_allclose(raw[k], un[k % 4], atol=1e-3)
    with pytest.raises(DatasetError, match="fewer than 2 x 9 objects"):
        produce_imdb(cats, ["c2", "c3"], [2, 9])


def test_produce_imdb_many_classes_caps():
    cats = [assemble_imdb(_patches(60, (2, 2), seed=n), _patches(100, (2, 2), seed=50 + n), seed=n) for n in range(11)]
    out = produce_imdb(cats, [f"k{n}" for n in range(11)], [60] * 11)
    assert out.num_images == 11 * 120 and out.labels.shape == (1320, 11)   # 120 >= minSampleNum 100, <= 400


# ----------------------------------------------------------------- the cache
def test_cache_builds_once_and_reuses(tmp_path):
    conf, _ = small_ilsvrc(tmp_path / "data")
    calls = []

    def build(out):
        calls.append(out)
        return get_imdb("nTEST", conf, (16, 16), out=out, progress=False)
    cache = tmp_path / "cache"
    a = load_or_build_imdb(cache, build, {"cat": "nTEST", "size": 16})
    b = load_or_build_imdb(cache, build, {"cat": "nTEST", "size": 16})
    assert len(calls) == 1 and isinstance(b.data, np.memmap) and not b.data.flags.writeable
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    assert a.num_images == 20 and a.labels.sum() == 15 - 5                 # tarN 15 positives, 5 negatives
    assert sorted(p.name for p in cache.iterdir()) == ["data.npy", "imdb.complete.json", "imdb_meta.npz"]
    marker = json.loads((cache / "imdb.complete.json").read_text())
    assert marker["format_version"] == FORMAT_VERSION and marker["shape"] == [20, 3, 16, 16]
    load_or_build_imdb(cache, build, {"cat": "nTEST", "size": 17})         # other settings: rebuilt
    assert len(calls) == 2


def test_half_built_cache_is_never_taken(tmp_path):
    conf, _ = small_ilsvrc(tmp_path / "data")
    cache = tmp_path / "cache"
    good = lambda out: get_imdb("nTEST", conf, (16, 16), out=out, progress=False)  # noqa: E731
    load_or_build_imdb(cache, good, {"v": 1})

    def crash(out):
        get_imdb("nTEST", conf, (16, 16), out=out, progress=False)
        raise KeyboardInterrupt("stopped half-way")
    with pytest.raises(KeyboardInterrupt):
        load_or_build_imdb(cache, crash, {"v": 1}, rebuild=True)
    assert not (cache / "imdb.complete.json").exists()
    assert load_cached_imdb(cache, {"v": 1}) is None
    assert not [p for p in cache.iterdir() if "partial" in p.name]
    (cache / "imdb.complete.json").write_text("{ not json")
    assert load_cached_imdb(cache, {"v": 1}) is None
    assert load_or_build_imdb(cache, good, {"v": 1}).num_images == 20


def test_bad_image_in_a_build_names_it(tmp_path):
    conf, _ = small_ilsvrc(tmp_path / "data")
    (conf.imgdir / "nTEST_obj" / "img" / "img" / "00004.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(OSError, match="00004.jpg"):
        load_or_build_imdb(tmp_path / "c", lambda out: get_imdb("nTEST", conf, (16, 16), out=out, progress=False))
    assert not (tmp_path / "c" / "imdb.complete.json").exists()


def test_missing_image_is_named_and_stale_partials_go(tmp_path):
    conf, _ = small_ilsvrc(tmp_path / "data")
    (conf.imgdir / "nTEST_obj" / "img" / "img" / "00005.jpg").unlink()   # 5 entries left: 00001..00005 are read
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / ".data.npy.partial-999999999").write_bytes(b"x")            # from a killed build (no such pid)
    with pytest.raises(OSError, match="00005.jpg.*no such file"):
        load_or_build_imdb(cache, lambda out: get_imdb("nTEST", conf, (16, 16), out=out, progress=False))
    assert sorted(p.name for p in cache.iterdir()) == []


def test_peak_python_memory_of_a_build(tmp_path):
    """tracemalloc counts numpy's buffers (not the file pages the OS caches for data.npy,
    which a disk build writes with pwrite and never maps): an in-memory build peaks at the
    imdb plus a few chunks, a disk build at a few chunks."""
    pos, neg = _patches(60, (32, 32)), _patches(100, (32, 32), seed=1)
    nbytes = (300 + 100) * 3 * 32 * 32 * 4
    for out, bound in ((None, 1.5), (tmp_path / "d.npy", 0.5)):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        im = assemble_imdb(pos, neg, out=out)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert im.data.nbytes == nbytes
        assert peak < bound * nbytes, f"peak {peak / 2**20:.1f} MB for a {nbytes / 2**20:.1f} MB imdb (out={out})"
        del im


# ----------------------------------------------------------------- the real fox, end to end
_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    def rss(key):
        for line in open('/proc/self/status'):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    from data_prep.ilsvrc import ilsvrc_conf
    from data_prep.imdb import get_imdb, load_or_build_imdb
    conf = ilsvrc_conf(sys.argv[1])
    base = rss('VmRSS')
    t = time.time()
    im = load_or_build_imdb(sys.argv[2], lambda out: get_imdb('n02118333', conf, (64, 64), out=out, progress=False,
                                                              workers=2), {'test': 'fox64'})
    print(json.dumps({'seconds': time.time() - t, 'peak_rss_growth': rss('VmHWM') - base, 'nbytes': im.data.nbytes}))
""")


@pytest.fixture(scope="module")
def fox64(tmp_path_factory):
    if not (SHARED_DATA / "detanimalpart" / "n02118333_obj").exists():
        pytest.skip(f"the fox data is not at {SHARED_DATA}")
    cache = tmp_path_factory.mktemp("fox64")
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    res = subprocess.run([sys.executable, "-c", _CHILD, str(SHARED_DATA), str(cache)], capture_output=True,
                         text=True, env=env, cwd=PROJECT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    imdb = load_cached_imdb(cache, {"test": "fox64"})
    assert imdb is not None
    return imdb, stats, ilsvrc_conf(SHARED_DATA)


@pytest.mark.slow
def test_fox_counts_and_split(fox64):
    imdb, _, _ = fox64
    assert imdb.num_images == 4000 and imdb.image_size == (64, 64) and imdb.classes == ["n02118333"]
    unshuf_labels = imdb.labels[imdb.order - 1, 0]
    assert (unshuf_labels[:3000] == 1).all() and (unshuf_labels[3000:] == -1).all()    # tarN = 3 x 1000
    tp, tn = _expected_train_count(286, 1000)
    unshuf_set = imdb.set[imdb.order - 1]
    assert (unshuf_set[:3000] == 1).sum() == tp and (unshuf_set[3000:] == 1).sum() == tn == 900
    assert len(imdb.train_indices()) == tp + tn and len(imdb.val_indices()) == 4000 - tp - tn
    assert sorted(imdb.order.tolist()) == list(range(1, 4001))


@pytest.mark.slow
def test_fox_pixels_mirrors_repetition_and_mean(fox64):
    imdb, _, conf = fox64
    raw = lambda k: np.asarray(imdb.data[imdb.order[k] - 1]) + imdb.data_mean   # noqa: E731  unshuffled image k
    objset = read_annotation_ilsvrc("n02118333", conf)
    patch, image = get_i(objset[0], conf.imgdir, (64, 64))
    np.testing.assert_allclose(raw(0), patch.transpose(2, 0, 1), atol=1e-4)         # object 1
    np.testing.assert_allclose(raw(1), patch.transpose(2, 0, 1)[..., ::-1], atol=1e-4)   # its mirror
    np.testing.assert_allclose(raw(572), raw(0), atol=1e-4)                          # second repetition
    np.testing.assert_allclose(raw(2 * 285), get_i(objset[285], conf.imgdir, (64, 64))[0].transpose(2, 0, 1), atol=1e-4)
    # the crop is the box: its quadrants' mean colours match the box's in the image
    b = objset[0].bndbox
    crop = image[b.ymin - 1:b.ymax, b.xmin - 1:b.xmax].astype(np.float64)
    h, w = crop.shape[:2]
    for (ys, xs), (py, px) in zip([(slice(0, h // 2), slice(0, w // 2)), (slice(h // 2, h), slice(w // 2, w))],
                                  [(slice(0, 32), slice(0, 32)), (slice(32, 64), slice(32, 64))]):
        np.testing.assert_allclose(patch[py, px].mean(axis=(0, 1)), crop[ys, xs].mean(axis=(0, 1)), atol=3)
    neg1 = get_i(ObjRecordFull(conf), conf.imgdir, (64, 64))[0]
    np.testing.assert_allclose(raw(3000), neg1.transpose(2, 0, 1), atol=1e-4)        # negative 00001, whole image
    train = np.asarray(imdb.data[np.sort(imdb.train_indices())], dtype=np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-3)                     # the training mean is removed
    assert 60 < imdb.data_mean.mean() < 160


def ObjRecordFull(conf):
    return get_neg_objset(conf, "n02118333", count=1)[0]


@pytest.mark.slow
def test_fox_build_peak_memory(fox64):
    """Peak resident memory the build added (VmHWM - VmRSS before it, in a fresh process) stays
    under 1.5 x the finished imdb. Most of it is decoding working memory, not the imdb: the data
    goes to data.npy by pwrite and is never mapped while building."""
    _, stats, _ = fox64
    assert stats["nbytes"] == 4000 * 3 * 64 * 64 * 4
    assert stats["peak_rss_growth"] < 1.5 * stats["nbytes"], stats


def test_produce_imdb_from_objects_equals_produce_imdb_of_the_getimdb_imdbs(tmp_path):
    """The pretraining imdb built from the objects directly (no per-category getImdb imdbs, each of
    which holds the 1,000 negatives) has produceIMDB's rows: the same data, labels, split and mean."""
    conf, _ = small_ilsvrc(tmp_path / "data")
    rng = np.random.default_rng(5)
    sizes = [(int(rng.integers(30, 60)), int(rng.integers(30, 60))) for _ in range(4)]
    write_ilsvrc_category(conf.imgdir, "nTWO", [(2, 2, w - 3, h - 2) for h, w in sizes], sizes, seed=7)
    names = ["nTEST", "nTWO"]
    singles = [get_imdb(n, conf, (16, 16), progress=False) for n in names]
    objsets = [read_annotation(n, conf) for n in names]
    want = produce_imdb(singles, names, [count_objects(o) for o in objsets])
    got = produce_imdb_from_objects(objsets, names, conf.imgdir, (16, 16), out=tmp_path / "d.npy", progress=False)
    assert got.num_images == want.num_images == 3000            # each category padded to minSampleNum 1500
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.set, want.set)
    np.testing.assert_array_equal(got.order, want.order)
    np.testing.assert_allclose(got.data_mean, want.data_mean, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got.data), np.asarray(want.data), rtol=0, atol=1e-3)
    assert isinstance(got.data, np.memmap)
