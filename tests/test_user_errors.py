"""Issue 18's probes of bad input: each error names its file and says what to do, without a
traceback; nothing wrong is ever reported as a result."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN
from data_prep_fixtures import write_ilsvrc_category

import demo
from data_prep.ilsvrc import read_annotation_ilsvrc
from data_prep.readers import DataConf, DatasetError
from legacy_compat import MatStruct, StructArray, loadmat
from legacy_compat.matio import MatFileError, savemat
from legacy_compat.simplenn import layers_from_matlab
from reproduce.evaluation.net_evaluation import load_net_for_evaluation
from reproduce.evaluation.net_features import net_input_size
from reproduce.experiments import grid, paper
from reproduce.experiments import train_command as train_cli
from reproduce.golden.training_cases import golden_imdb
from reproduce.layers.simplenn import SimpleNN
from reproduce.training import checkpoints as ckpt
from reproduce.training import cnn_train as tr


def test_a_nan_box_names_its_file(tmp_path):
    imgdir = tmp_path / "det"
    write_ilsvrc_category(imgdir, "nNAN", [(1, 1, 60, 60)] * 2, [(64, 64)] * 2, version="5")
    box = MatStruct(xmin=np.array([[1.0]]), ymin=np.array([[np.nan]]), xmax=np.array([[60.0]]),
                    ymax=np.array([[60.0]]))
    samples = StructArray.from_structs([MatStruct(obj=MatStruct(bndbox=box))] * 2)
    data_mat = imgdir / "nNAN_obj" / "img" / "data.mat"
    savemat(data_mat, {"samples": samples}, version="5")
    conf = DataConf(dataset="ilsvrcanimalpart", imgdir=imgdir, neg_dir=tmp_path / "neg")
    with pytest.raises(DatasetError) as info:
        read_annotation_ilsvrc("nNAN", conf)
    assert str(data_mat) in str(info.value) and "samples(1)" in str(info.value) and "ymin" in str(info.value)


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_a_missing_variable_lists_what_the_file_holds(tmp_path, version):
    path = tmp_path / "x.mat"
    savemat(path, {"alpha": np.ones((2, 2)), "beta": "hi"}, version=version)
    with pytest.raises(MatFileError, match=r"has no variable 'gamma' \(it holds: alpha, beta\)"):
        loadmat(path, ["gamma"])


# ------------------------------------------------------------------ demo.py --net with bad files
@pytest.fixture(scope="module")
def bad_nets(tmp_path_factory):
    """A real net-epoch-1.pt (the golden tiny ICNN, one epoch) and the bad files made from it."""

    if not (GOLDEN / "cnn_train_single.mat").is_file():
        pytest.skip("golden cases missing")
    case = loadmat(GOLDEN / "cnn_train_single.mat")
    folder = tmp_path_factory.mktemp("nets")
    net = SimpleNN.from_specs(layers_from_matlab(case.inputs.net.layers))
    opts = {"learning_rate": [1e-3], "num_epochs": 1, "batch_size": 4, "weight_decay": 5e-4, "momentum": 0.9}
    tr.train(net, golden_imdb(case.inputs.imdb), opts, folder, progress=False, plot=False,
             meta={"image_size": (16, 16, 3)})
    good = ckpt.checkpoint_path(folder, 1)
    data = good.read_bytes()
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    files = {"truncated.pt": data[: len(data) // 2], "empty.pt": b"", "empty.mat": b"", "png.mat": png,
             "png.pt": png}
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    ckpt.save_mat_checkpoint(folder / "good.mat", ckpt.load_checkpoint(good), version="5")

    def variant(name, change):
        m = loadmat(folder / "good.mat")
        change(m)
        savemat(folder / name, dict(m), version="5")

    def without_postemp(m):
        for layer in np.asarray(m["net"]["layers"]).reshape(-1):
            if str(layer["type"]) == "conv_mask":
                del layer["posTemp"]

    def text_weights(m):
        np.asarray(m["net"]["layers"]).reshape(-1)[0]["weights"] = "hello"

    def number_layers(m):
        m["net"]["layers"] = np.array([[3.0]])

    def no_stats(m):
        del m["stats"]
    variant("no_postemp.mat", without_postemp)
    variant("text_weights.mat", text_weights)
    variant("number_layers.mat", number_layers)
    variant("no_stats.mat", no_stats)
    return folder


@pytest.mark.parametrize("name", ["truncated.pt", "empty.pt", "empty.mat", "png.mat", "png.pt", "no_postemp.mat",
                                  "text_weights.mat", "number_layers.mat", "no_stats.mat"])
def test_a_bad_net_file_is_named_without_a_traceback_or_advice_to_delete_it(bad_nets, name, tmp_path, capsys):
    path = bad_nets / name
    before = path.read_bytes()
    rc = demo.main(["--quick", "--net", str(path), "--out", str(tmp_path / "out"), "--data-root",
                    str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"--net: {path}" in err and err.count("\n") == 1
    assert "Traceback" not in err and "delete" not in err.lower()
    assert path.read_bytes() == before and not (tmp_path / "data").exists()     # the input untouched, no work


def test_a_net_saved_to_matlab_by_this_package_is_read_back(bad_nets):
    """meta.image_size, a tuple, becomes a cell of scalars in the .mat: the input size still reads."""
    net, _, _ = load_net_for_evaluation(bad_nets / "good.mat")
    assert net_input_size(net) == net_input_size(load_net_for_evaluation(bad_nets / "net-epoch-1.pt")[0]) == (16, 16)


# ------------------------------------------------------------------ where the data goes
def test_the_data_root_is_under_the_output_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("ICNN_DATA_ROOT", raising=False)
    args = demo.build_parser().parse_args(["--quick", "--out", str(tmp_path / "o")])
    assert demo.experiment(demo.resolve_settings(args), args).data_root == tmp_path / "o" / "data"
    runs = grid.plan_grid(paper.build_parser().parse_args(["--dataset", "toy", "--models", "tiny",
                                                            "--out", str(tmp_path / "p")]))
    assert {e.data_root for e in runs} == {tmp_path / "p" / "data"}
    assert "OUT/data" in train_cli.build_parser().format_help()


def test_an_unwritable_data_root_is_said_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data folder should be")
    rc = demo.main(["--quick", "--out", str(tmp_path / "out"), "--data-root", str(blocker / "data")])
    err = capsys.readouterr().err
    assert rc == 2 and f"the data folder {blocker / 'data'} is not writable" in err and "--data-root" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "mat").exists()
