"""The MatConvNet model files (reproduce.models.pretrained_files): their facts on the model rows, the
offline message, downloading with the MD5 check from a local server, and the models root."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from download_fixtures import start_server, stop_server

from data_prep import setup
from data_prep.setup import MissingDataError
from reproduce.models import pretrained_files
from reproduce.models.pretrained_files import default_models_root, ensure_model, pretrained_file
from reproduce.models.registry import MODELS


@pytest.fixture(scope="module")
def server():
    s = start_server()
    yield s
    stop_server(s)


def _serve(monkeypatch, server, model: str, body: bytes, md5: str) -> None:
    """The row of `model` with its file at the local server (same name, the given MD5)."""
    row = MODELS[model]
    file = replace(row.pretrained, url=server.url("range", row.pretrained.filename), md5=md5, approx_bytes=len(body))
    server.files[file.filename] = body
    monkeypatch.setitem(MODELS, model, replace(row, pretrained=file))


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="vgg-vd-16, alexnet, vgg-m, vgg-s"):
        ensure_model("resnet", tmp_path, offline=True)
    with pytest.raises(ValueError, match="imagenet-vgg-verydeep-16.mat"):
        pretrained_file("tiny")                       # a row without a file to download


def test_model_offline_message(tmp_path):
    with pytest.raises(MissingDataError) as info:
        ensure_model("alexnet", tmp_path / "nets", offline=True)
    msg = str(info.value)
    assert "https://www.vlfeat.org/matconvnet/models/imagenet-caffe-alex.mat" in msg
    assert str(tmp_path / "nets" / "imagenet-caffe-alex.mat") in msg
    assert "MD5 b5152a54bf61100a8ed61827c76e7d08" in msg


def test_model_table_matches_the_original_setup():
    files = {k: (row.pretrained.filename, row.pretrained.md5) for k, row in MODELS.items() if row.pretrained}
    assert files == {"vgg-vd-16": ("imagenet-vgg-verydeep-16.mat", "f72d927587ca4c97fbd165ec9cb9997f"),
                     "alexnet": ("imagenet-caffe-alex.mat", "b5152a54bf61100a8ed61827c76e7d08"),
                     "vgg-m": ("imagenet-vgg-m.mat", "29294d5f62578c96a3533859514235f2"),
                     "vgg-s": ("imagenet-vgg-s.mat", "dbe23da22e82078debda75842b16d5fa")}
    assert MODELS["vgg-m"].pretrained.url == "https://www.vlfeat.org/matconvnet/models/imagenet-vgg-m.mat"
    assert MODELS["vgg-m"].pretrained_file == "imagenet-vgg-m.mat" and MODELS["tiny"].pretrained_file == ""
    assert pretrained_file("imagenet-vgg-s") == pretrained_file("vgg-s") == ("vgg-s", MODELS["vgg-s"].pretrained)


def test_ensure_model_downloads_verifies_and_reuses(server, tmp_path, monkeypatch):
    body = b"fake matconvnet model" * 100
    _serve(monkeypatch, server, "vgg-s", body, hashlib.md5(body).hexdigest())
    path = ensure_model("vgg-s", tmp_path / "nets", progress=False)
    assert path == tmp_path / "nets" / "imagenet-vgg-s.mat" and path.read_bytes() == body
    server.requests.clear()
    assert ensure_model("imagenet-vgg-s.mat", tmp_path / "nets", offline=True) == path
    assert server.requests == []


def test_ensure_model_checksum_failure(server, tmp_path, monkeypatch):
    _serve(monkeypatch, server, "vgg-m", b"corrupt", "29294d5f62578c96a3533859514235f2")
    with pytest.raises(MissingDataError) as info:
        ensure_model("vgg-m", tmp_path, progress=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "29294d5f62578c96a3533859514235f2" in msg
    assert hashlib.md5(b"corrupt").hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


def test_default_models_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ICNN_MODELS_ROOT", raising=False)
    assert default_models_root("out") == Path("out/nets")
    monkeypatch.setenv("ICNN_MODELS_ROOT", str(tmp_path))
    assert default_models_root() == tmp_path
    assert pretrained_files.ENV_MODELS_ROOT == "ICNN_MODELS_ROOT"


def test_data_prep_setup_says_where_the_model_files_went():
    with pytest.raises(AttributeError, match="reproduce.models.pretrained_files"):
        setup.ensure_model  # noqa: B018 - the attribute access is the test
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        setup.nothing_here  # noqa: B018
