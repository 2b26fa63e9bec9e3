"""data_prep.setup: what each dataset needs, the offline message, and set-up from a local mirror."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
from download_fixtures import start_server, stop_server

from data_prep import facts, setup
from data_prep.setup import (
    ArchiveOptions,
    MissingDataError,
    dataset_paths,
    describe_missing,
    ensure_dataset,
    ensure_model,
    find_missing,
)

FOX = "n02118333"
DET_URL = "https://github.com/zqs1022/detanimalpart/archive/refs/heads/master.zip"
CODE_URL = "https://github.com/zqs1022/interpretableCNN/archive/refs/heads/master.zip"


@pytest.fixture(scope="module")
def server():
    s = start_server()
    yield s
    stop_server(s)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _fake_code_archive(neg_count: int = 1000) -> bytes:
    top = "interpretableCNN-master/"
    members = {f"{top}data/neg/{i:05d}.JPEG": b"jpeg" for i in range(1, neg_count + 1)}
    truth = f"{top}code/data_input/data_input_DET-2015-subset-ILSVRC2013train/{FOX}/"
    members[truth + "truth_part01.mat"] = b"mat1"
    members[truth + "truth_part02.mat"] = b"mat2"
    members[f"{top}code/demo.m"] = b"% demo"
    return _zip_bytes(members)


def _fake_det_archive(count: int = 286) -> bytes:
    top = f"detanimalpart-master/{FOX}_obj/img/"
    members = {f"{top}img/{i:05d}.jpg": b"jpg" for i in range(1, count + 1)}
    members[top + "data.mat"] = b"mat"
    members["detanimalpart-master/README.md"] = b"# detanimalpart"
    return _zip_bytes(members)


# ------------------------------------------------------------------ what is missing, offline

def test_offline_message_names_every_missing_file_url_and_destination(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(MissingDataError) as info:
        ensure_dataset("ilsvrcanimalpart", root, offline=True, categories=FOX)
    msg = str(info.value)
    root_abs = root.absolute()
    for path in (root_abs / f"detanimalpart/{FOX}_obj/img/data.mat",
                 root_abs / f"data_input/data_input_DET-2015-subset-ILSVRC2013train/{FOX}/truth_part01.mat",
                 root_abs / f"data_input/data_input_DET-2015-subset-ILSVRC2013train/{FOX}/truth_part02.mat"):
        assert f"missing file {path}" in msg
    assert f"missing in {root_abs / f'detanimalpart/{FOX}_obj/img/img'}/: 286 of 286 files" in msg
    assert "00001.jpg ... 00286.jpg (286 files)" in msg
    assert f"missing in {root_abs / 'neg'}/: 1000 of 1000 files" in msg
    assert "00001.JPEG ... 01000.JPEG (1000 files)" in msg
    assert f"from {DET_URL}" in msg and f"from {CODE_URL}" in msg
    assert f"move detanimalpart-master/ to {root_abs / 'detanimalpart'}/" in msg
    assert f"move interpretableCNN-master/data/neg/ to {root_abs / 'neg'}/" in msg
    assert f"move interpretableCNN-master/code/data_input/ to {root_abs / 'data_input'}/" in msg
    assert "checked by its layout" in msg
    assert describe_missing("ilsvrcanimalpart", root, FOX) == msg          # same text, no exception
    assert len(info.value.missing) == 5 and not root.exists()            # offline writes nothing


def test_partial_folder_lists_exactly_the_missing_names(tmp_path):
    neg = tmp_path / "neg"
    neg.mkdir(parents=True)
    for i in range(1, 1001):
        if i not in (7, 500, 501, 502):
            (neg / f"{i:05d}.JPEG").write_bytes(b"x")
    missing = [m for m in find_missing("ilsvrcanimalpart", tmp_path, FOX) if m.path == neg]
    assert len(missing) == 1 and missing[0].names == ("00007.JPEG", "00500.JPEG", "00501.JPEG", "00502.JPEG")
    text = describe_missing("ilsvrcanimalpart", tmp_path, FOX)
    assert "4 of 1000 files" in text and "00007.JPEG, 00500.JPEG ... 00502.JPEG (3 files)" in text


def test_voc_and_cub_messages(tmp_path):
    text = describe_missing("vocpart", tmp_path, "cow")
    assert "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar" in text
    assert "MD5 da459979d0c395079b5c75ee67908abb" in text
    assert str((tmp_path / "data_input/data_input_VOC/truth_cow.mat").absolute()) in text
    assert str((tmp_path / "data_input/data_input_VOC/cow/truth_part03.mat").absolute()) in text
    assert "http://roozbehm.info/pascal-parts/trainval.tar.gz" in text and "(optional)" in text
    text = describe_missing("cub200", tmp_path)
    assert "https://data.caltech.edu/records/65de6-vjr79/files/CUB_200_2011.tgz" in text
    assert str((tmp_path / "CUB_200_2011/parts/part_locs.txt").absolute()) in text
    assert str((tmp_path / "data_input/data_input_CUB-200-2011/cub200/truth_part14.mat").absolute()) in text


def _voc_cow_without_pascal_part(tmp_path, monkeypatch):
    """Everything VOC needs for cow except the Pascal-Part annotations (a small image count keeps it fast)."""
    monkeypatch.setattr(setup, "VOC2010_TRAINVAL_IMAGES", 30)
    jpeg = tmp_path / facts.VOC_JPEG
    jpeg.mkdir(parents=True)
    for i in range(setup.VOC2010_TRAINVAL_IMAGES):
        (jpeg / f"{i}.jpg").touch()
    for rel in ["data_input/data_input_VOC/truth_cow.mat"] + \
               [f"data_input/data_input_VOC/cow/truth_part0{p}.mat" for p in (1, 2, 3)]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    (tmp_path / "neg").mkdir()
    for i in range(1, 1001):
        (tmp_path / "neg" / f"{i:05d}.JPEG").touch()
    return jpeg


def test_optional_pascal_part_only_warns(tmp_path, monkeypatch):
    jpeg = _voc_cow_without_pascal_part(tmp_path, monkeypatch)
    with pytest.warns(UserWarning, match="Annotations_Part"):
        paths = ensure_dataset("vocpart", tmp_path, offline=True, categories="cow")
    assert paths.image_dir == jpeg and paths.part_list == (1, 2, 3)
    assert paths.anno_dir == tmp_path / "VOC_part/Annotations_Part"


def test_pascal_part_download_failure_warns_then_success_places_it(server, tmp_path, monkeypatch):
    _voc_cow_without_pascal_part(tmp_path, monkeypatch)
    src = setup.SOURCES["pascalpart"]
    monkeypatch.setitem(setup.SOURCES, "pascalpart", setup.Source(
        src.key, (server.url("range", src.filename),), src.filename, src.what, None, 1000, src.installs))
    server.files.pop(src.filename, None)
    with pytest.warns(UserWarning, match="Downloads that failed:\n  pascalpart: DownloadError"):
        ensure_dataset("vocpart", tmp_path, categories="cow", progress=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:      # the annotations one level down
        for i in range(30):
            info = tarfile.TarInfo(f"trainval/Annotations_Part/2008_{i:06d}.mat")
            info.size = 3
            tf.addfile(info, io.BytesIO(b"mat"))
    server.files[src.filename] = buf.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ensure_dataset("vocpart", tmp_path, categories="cow", progress=False)
    assert (tmp_path / "VOC_part/Annotations_Part/2008_000029.mat").read_bytes() == b"mat"


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="ilsvrcanimalpart, vocpart, cub200, toy"):
        ensure_dataset("imagenet", tmp_path, offline=True)
    with pytest.raises(ValueError, match="bird, cat, cow, dog, horse, sheep"):
        ensure_dataset("vocpart", tmp_path, offline=True, categories=[FOX])
    with pytest.raises(ValueError, match="vgg-vd-16, alexnet, vgg-m, vgg-s"):
        ensure_model("resnet", tmp_path, offline=True)


def test_model_offline_message(tmp_path):
    with pytest.raises(MissingDataError) as info:
        ensure_model("alexnet", tmp_path / "nets", offline=True)
    msg = str(info.value)
    assert "https://www.vlfeat.org/matconvnet/models/imagenet-caffe-alex.mat" in msg
    assert str(tmp_path / "nets" / "imagenet-caffe-alex.mat") in msg
    assert "MD5 b5152a54bf61100a8ed61827c76e7d08" in msg


def test_model_table_matches_the_original_setup():
    files = {k: (s.filename, s.md5) for k, s in setup.MODEL_SOURCES.items()}
    assert files == {"vgg-vd-16": ("imagenet-vgg-verydeep-16.mat", "f72d927587ca4c97fbd165ec9cb9997f"),
                     "alexnet": ("imagenet-caffe-alex.mat", "b5152a54bf61100a8ed61827c76e7d08"),
                     "vgg-m": ("imagenet-vgg-m.mat", "29294d5f62578c96a3533859514235f2"),
                     "vgg-s": ("imagenet-vgg-s.mat", "dbe23da22e82078debda75842b16d5fa")}
    assert len(facts.ILSVRC_CATEGORIES) == 30 and set(facts.ILSVRC_IMAGE_COUNTS) == set(facts.ILSVRC_CATEGORIES)
    assert sum(facts.ILSVRC_IMAGE_COUNTS.values()) == 15067   # git ls-tree of zqs1022/detanimalpart


# ------------------------------------------------------------------ set-up from a mirror

def test_ensure_dataset_downloads_unpacks_and_places(server, tmp_path):
    server.files["interpretableCNN-master.zip"] = _fake_code_archive()
    server.files["detanimalpart-master.zip"] = _fake_det_archive()
    root = tmp_path / "data"
    paths = ensure_dataset("ilsvrcanimalpart", root, categories=FOX,
                           archives=ArchiveOptions(mirror=f"http://127.0.0.1:{server.port}/range"), progress=False)
    assert find_missing("ilsvrcanimalpart", root, FOX) == []
    assert (root / f"detanimalpart/{FOX}_obj/img/img/00286.jpg").read_bytes() == b"jpg"
    assert (root / "neg/01000.JPEG").read_bytes() == b"jpeg"
    assert paths.truth_file(FOX, 2).read_bytes() == b"mat2"
    assert paths.image_dir == root / "detanimalpart" and paths.neg_dir == root / "neg"
    assert list((root / "downloads").iterdir()) == []             # archives and staging removed
    assert (root / "detanimalpart/README.md").exists()
    # a second call finds everything and downloads nothing
    server.requests.clear()
    ensure_dataset("ilsvrcanimalpart", root, categories=FOX, offline=True)
    assert server.requests == []


def test_existing_files_are_not_overwritten_and_gaps_filled(server, tmp_path):
    server.files["interpretableCNN-master.zip"] = _fake_code_archive()
    server.files["detanimalpart-master.zip"] = _fake_det_archive()
    root = tmp_path / "data"
    (root / "neg").mkdir(parents=True)
    (root / "neg" / "00001.JPEG").write_bytes(b"mine")
    ensure_dataset("ilsvrcanimalpart", root, categories=FOX, progress=False,
                   archives=ArchiveOptions(mirror=f"http://127.0.0.1:{server.port}/range"))
    assert (root / "neg/00001.JPEG").read_bytes() == b"mine"
    assert (root / "neg/00002.JPEG").read_bytes() == b"jpeg"


def _local_sources(monkeypatch, server, route="range"):
    """Point the two GitHub archives at the local server only (no fallback to the internet)."""
    for key in ("interpretableCNN", "detanimalpart"):
        src = setup.SOURCES[key]
        monkeypatch.setitem(setup.SOURCES, key, setup.Source(
            src.key, (server.url(route, src.filename),), src.filename, src.what, src.md5, src.approx_bytes,
            src.installs, src.unpacked_factor))


def test_wrong_layout_is_reported_as_missing(server, tmp_path, monkeypatch):
    _local_sources(monkeypatch, server)
    server.files["interpretableCNN-master.zip"] = _fake_code_archive(neg_count=999)   # one negative short
    server.files["detanimalpart-master.zip"] = _fake_det_archive(count=285)           # one image short
    with pytest.raises(MissingDataError) as info:
        ensure_dataset("ilsvrcanimalpart", tmp_path, categories=FOX, progress=False)
    msg = str(info.value)
    assert "1 of 1000 files" in msg and ": 01000.JPEG" in msg
    assert "1 of 286 files" in msg and ": 00286.jpg" in msg


def test_failed_download_ends_in_missing_data_error_naming_the_failure(server, tmp_path, monkeypatch):
    _local_sources(monkeypatch, server)
    server.files.pop("interpretableCNN-master.zip", None)
    server.files["detanimalpart-master.zip"] = _fake_det_archive()
    with pytest.raises(MissingDataError) as info:
        ensure_dataset("ilsvrcanimalpart", tmp_path, categories=FOX, progress=False)
    msg = str(info.value)
    assert "Downloads that failed" in msg and "interpretableCNN" in msg and "404" in msg
    assert "detanimalpart:" not in msg.split("Downloads that failed")[1]         # that one worked
    assert (tmp_path / f"detanimalpart/{FOX}_obj/img/data.mat").exists()


def test_archive_with_escaping_member_is_refused(server, tmp_path, monkeypatch):
    _local_sources(monkeypatch, server)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("detanimalpart-master/README.md", b"x")
        zf.writestr("../../evil.txt", b"evil")
    server.files["detanimalpart-master.zip"] = buf.getvalue()
    server.files["interpretableCNN-master.zip"] = _fake_code_archive()
    root = tmp_path / "a" / "b" / "data"
    with pytest.raises(MissingDataError) as info:
        ensure_dataset("ilsvrcanimalpart", root, categories=FOX, progress=False)
    assert "UnsafeArchiveError" in str(info.value) and "'../../evil.txt'" in str(info.value)
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not (root / "detanimalpart").exists()


def test_ensure_model_downloads_verifies_and_reuses(server, tmp_path, monkeypatch):
    body = b"fake matconvnet model" * 100
    server.files["imagenet-vgg-s.mat"] = body
    fake = setup.Source("vgg-s", (server.url("range", "imagenet-vgg-s.mat"),), "imagenet-vgg-s.mat",
                        "fake model", md5=hashlib.md5(body).hexdigest(), approx_bytes=len(body))
    monkeypatch.setitem(setup.MODEL_SOURCES, "vgg-s", fake)
    path = ensure_model("vgg-s", tmp_path / "nets", progress=False)
    assert path == tmp_path / "nets" / "imagenet-vgg-s.mat" and path.read_bytes() == body
    server.requests.clear()
    assert ensure_model("imagenet-vgg-s.mat", tmp_path / "nets", offline=True) == path
    assert server.requests == []


def test_ensure_model_checksum_failure(server, tmp_path, monkeypatch):
    server.files["imagenet-vgg-m.mat"] = b"corrupt"
    fake = setup.Source("vgg-m", (server.url("range", "imagenet-vgg-m.mat"),), "imagenet-vgg-m.mat",
                        "fake model", md5="29294d5f62578c96a3533859514235f2", approx_bytes=7)
    monkeypatch.setitem(setup.MODEL_SOURCES, "vgg-m", fake)
    with pytest.raises(MissingDataError) as info:
        ensure_model("vgg-m", tmp_path, progress=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "29294d5f62578c96a3533859514235f2" in msg
    assert hashlib.md5(b"corrupt").hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ paths and conf

def test_paths_conf_and_goldfish_parts(tmp_path):
    p = dataset_paths("ilsvrcanimalpart", tmp_path, ["n01443537", FOX])
    assert p.parts_for("n01443537") == (1,) and p.parts_for(FOX) == (1, 2)
    assert p.truth_file(FOX, 2) == tmp_path / f"data_input/data_input_DET-2015-subset-ILSVRC2013train/{FOX}/truth_part02.mat"
    conf = p.conf()
    assert conf.data.imgdir == (tmp_path / "detanimalpart").as_posix() + "/"
    assert conf.data.minArea == 2500.0
    cub = dataset_paths("cub200", tmp_path)
    assert cub.part_list == (1, 6, 14) and cub.cate_dir == tmp_path / "CUB_200_2011"
    assert cub.image_dir == tmp_path / "CUB_200_2011/images"


def test_data_conf_for_the_readers(tmp_path):
    pytest.importorskip("data_prep.readers")
    dc = dataset_paths("vocpart", tmp_path, "cow").data_conf()
    assert dc.dataset == "vocpart" and dc.readcode == tmp_path / "data_input/data_input_VOC"
    assert dc.neg_dir == tmp_path / "neg" and dc.min_area == 2500


def test_default_roots_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ICNN_DATA_ROOT", raising=False)
    monkeypatch.delenv("ICNN_MODELS_ROOT", raising=False)
    assert setup.default_data_root() == Path("output/data")
    assert setup.default_models_root("out") == Path("out/nets")
    monkeypatch.setenv("ICNN_DATA_ROOT", str(tmp_path))
    assert setup.default_data_root() == tmp_path


# ------------------------------------------------------------------ the toy dataset through the set-up

def test_toy_is_generated_once_and_regenerated_when_options_change(tmp_path):
    opts = {"n_pos": 6, "n_neg": 4, "progress": False}
    paths = ensure_dataset("toy", tmp_path, categories="toy01", toy_options=opts)
    assert paths.image_dir == tmp_path / "toy/detanimalpart" and paths.neg_dir == tmp_path / "toy/neg"
    assert paths.truth_dir == tmp_path / "toy/data_input" and paths.input_size == 64
    assert sorted(os.listdir(paths.image_dir / "toy01_obj/img/img")) == [f"{i:05d}.jpg" for i in range(1, 7)]
    stamp = (tmp_path / "toy/toy.json").stat().st_mtime_ns
    ensure_dataset("toy", tmp_path, offline=True, categories="toy01", toy_options=opts)
    assert (tmp_path / "toy/toy.json").stat().st_mtime_ns == stamp
    ensure_dataset("toy", tmp_path, categories="toy01", toy_options={**opts, "n_pos": 7})
    assert len(os.listdir(paths.image_dir / "toy01_obj/img/img")) == 7
    assert find_missing("toy", tmp_path, "toy01") == [] and describe_missing("toy", tmp_path, "toy01") == ""
    assert len(find_missing("toy", tmp_path, ["toy01", "toy02"])) == 1       # toy02 was not generated
    assert "generate_toy_dataset" in describe_missing("toy", tmp_path / "elsewhere")
