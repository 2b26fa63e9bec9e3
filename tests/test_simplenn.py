"""SimpleNN interop (legacy_compat.simplenn): exact round trips, groups, model files, meta."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from legacy_compat import MatFileError, loadmat
from legacy_compat.matio import savemat
from legacy_compat.mattypes import MatStruct, StructArray, cell, cell_items
from legacy_compat.simplenn import (
    MATLAB_FORM,
    LayerSpec,
    ModelMeta,
    filters_to_matlab,
    infer_groups,
    layer_to_matlab,
    layers_from_matlab,
    layers_to_matlab,
    load_matconvnet_model,
    meta_from_matlab,
    meta_to_matlab,
    net_to_matlab,
)

MODELS = ("alexnet_6", "vggm_1", "vggs_6", "vggvd16_1")


# ----------------------------------------------------------------- deep equality of MATLAB values
def matlab_diff(a, b, where="value"):
    """Differences between two MATLAB values (class, shape, values, field order); [] when equal."""
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return [f"{where}: {type(a).__name__} vs {type(b).__name__}"]
        out = [] if list(a) == list(b) else [f"{where}: fields {list(a)} vs {list(b)}"]
        for k in a:
            if k in b:
                out += matlab_diff(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, str) or isinstance(b, str):
        return [] if a == b else [f"{where}: {a!r} vs {b!r}"]
    if isinstance(a, StructArray) != isinstance(b, StructArray):
        return [f"{where}: struct array vs not"]
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.dtype != y.dtype:
        return [f"{where}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"]
    if x.dtype == object:
        out = []
        for idx in np.ndindex(x.shape):
            out += matlab_diff(x[idx], y[idx], f"{where}{list(idx)}")
        return out
    return [] if np.array_equal(x, y, equal_nan=x.dtype.kind in "fc") else [f"{where}: values differ"]


# ----------------------------------------------------------------- stand-ins of the beta24 models
def standin_layers(desc, rng=None):
    """Layers as the beta24 ImageNet files hold them (import-caffe.py + vl_simplenn_tidy), from the
    golden network_init `pretrained_layers` description (weight_sizes in MATLAB's dropped-singleton form)."""
    layers = []
    for d in cell_items(desc):
        t = d["type"]
        s = MatStruct(name=d["name"], type=t)
        if t == "conv":
            sizes = [tuple(int(v) for v in np.asarray(z).reshape(-1)) for z in cell_items(d["weight_sizes"])]
            make = (lambda sh: rng.standard_normal(sh).astype(np.float32)) if rng is not None else \
                (lambda sh: np.zeros(sh, np.float32))
            s["weights"] = cell([make(sh) for sh in sizes])
            s["pad"], s["stride"] = d["pad"], d["stride"]
            s["dilate"], s["opts"] = np.ones((1, 1)), np.empty((0, 0), dtype=object)
        elif t == "pool":
            s["method"], s["pool"], s["stride"], s["pad"] = d["method"], d["pool"], d["stride"], d["pad"]
            s["opts"] = np.empty((0, 0), dtype=object)
        elif t == "relu":
            s["leak"] = d["leak"]
        elif t == "lrn":
            s["param"] = d["param"]
        if t != "conv":
            s["weights"] = np.empty((0, 0), dtype=object)
        s["precious"] = np.array([[False]])
        layers.append(s)
    return cell(layers)


@pytest.fixture
def standins(golden_dir):
    """The layer lists of the four beta24 models, as the golden network_init cases describe them."""
    return {m: loadmat(golden_dir / f"network_init_{m}.mat")["inputs"]["pretrained_layers"] for m in MODELS}


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", ["single", "multi", "softmax"])
def test_checkpoint_layers_round_trip_exactly(checkpoints_dir, name):
    layers = loadmat(checkpoints_dir / f"checkpoint_{name}_epoch3.mat")["net"]["layers"]
    specs = layers_from_matlab(layers)
    assert matlab_diff(layers, layers_to_matlab(specs)) == []
    # the conversions themselves
    conv_mask = next(s for s in specs if s.type == "conv_mask")
    raw = next(l for l in cell_items(layers) if l["type"] == "conv_mask")
    assert conv_mask.fields["pad"] == (1, 1, 1, 1) and conv_mask.fields["stride"] == (1, 1)
    w = cell_items(raw["weights"])
    assert tuple(conv_mask.weights[0].shape) == (w[0].shape[3], w[0].shape[2], w[0].shape[0], w[0].shape[1])
    np.testing.assert_array_equal(filters_to_matlab(conv_mask.weights[0]), w[0])
    np.testing.assert_array_equal(conv_mask.weights[2].numpy(), w[2].reshape(-1))
    np.testing.assert_array_equal(conv_mask.fields["filter"], raw["filter"].reshape(-1))
    px = cell_items(raw["posTemp"])[0]
    np.testing.assert_array_equal(conv_mask.fields["posTemp"][0], px.transpose(2, 0, 1))
    assert conv_mask.fields["learningRate"] == (1.0, 2.0, 0.05)
    # fc9: 1 x 1 x 12 (x 1 dropped) -> 1 x 12 x 1 x 1; bias 1 x 1 -> (1,)
    fc9 = specs[-2]
    n_out = 1 if name == "single" else 3
    assert tuple(fc9.weights[0].shape) == (n_out, 12, 1, 1) and tuple(fc9.weights[1].shape) == (n_out,)
    assert "mu_x" not in conv_mask.fields and "class" not in specs[-1].fields   # per-batch scratch
    # the record of the MATLAB form is plain data (dicts, tuples, MATLAB values) and survives copies
    form = conv_mask.fields[MATLAB_FORM]
    assert type(form) is dict and form["order"][:3] == ("type", "name", "weights") and "mu_x" in form["scratch"]
    assert matlab_diff(layers, layers_to_matlab(copy.deepcopy(specs))) == []


@pytest.mark.parametrize("case", ["simplenn_multi_slicemag", "simplenn_single_texture", "cnn_train_multi"])
def test_golden_nets_round_trip_exactly(golden_dir, case):
    layers = loadmat(golden_dir / f"{case}.mat")["inputs"]["net"]["layers"]
    specs = layers_from_matlab(layers)
    assert matlab_diff(layers, layers_to_matlab(specs)) == []


def test_changed_fields_are_written_in_the_form_read(checkpoints_dir):
    layers = loadmat(checkpoints_dir / "checkpoint_multi_epoch3.mat")["net"]["layers"]
    specs = layers_from_matlab(layers)
    conv1 = specs[0]
    conv1.fields["pad"] = (0, 1, 0, 1)            # was the scalar 1
    conv1.fields["stride"] = (2, 2)               # was the scalar 1: stays scalar
    mask = next(s for s in specs if s.type == "conv_mask")
    mask.fields["sliceMag"] = mask.fields["sliceMag"] * 2     # read as double: stays double
    mask.fields["lossWeight"] = 0.5
    mask.weights[2] = mask.weights[2] + 1
    out = layers_to_matlab(specs)
    l0 = cell_items(out)[0]
    np.testing.assert_array_equal(l0["pad"], [[0, 1, 0, 1]])
    assert l0["stride"].shape == (1, 1) and l0["stride"][0, 0] == 2
    lm = next(l for l in cell_items(out) if l["type"] == "conv_mask")
    raw = next(l for l in cell_items(layers) if l["type"] == "conv_mask")
    assert lm["sliceMag"].dtype == raw["sliceMag"].dtype and lm["sliceMag"].shape == raw["sliceMag"].shape
    np.testing.assert_allclose(lm["sliceMag"], raw["sliceMag"].astype(np.float32) * 2)
    assert lm["lossWeight"].shape == (1, 1) and lm["lossWeight"][0, 0] == 0.5
    beta = cell_items(lm["weights"])[2]
    assert beta.shape == (6, 1) and beta.dtype == np.float32
    np.testing.assert_array_equal(beta, cell_items(raw["weights"])[2] + 1)
    # the scratch fields are written back as read, unchanged fields too
    assert list(lm) == list(raw)
    assert matlab_diff(lm["posTemp"], raw["posTemp"]) == []


def test_a_layer_built_in_python_gets_matconvnet_defaults():
    w = torch.randn(4, 3, 3, 3)
    spec = LayerSpec("conv_mask", "conv6", [w, torch.zeros(4), torch.full((3,), 2.0)],
                     {"pad": (1, 1, 1, 1), "stride": (1, 1), "learningRate": (1.0, 2.0, 0.05),
                      "weightDecay": (1.0, 0.0, 0.0), "filter": np.array([1, 1, 0]), "mag": 0.1,
                      "lossWeight": 0.02, "sliceMag": None, "groups": 1,
                      "posTemp": (np.zeros((3, 5, 5), np.float32), np.ones((3, 5, 5), np.float32))})
    s = layer_to_matlab(spec)
    assert s["type"] == "conv_mask" and s["name"] == "conv6"
    np.testing.assert_array_equal(s["pad"], [[1]])                       # scalar when all equal
    assert s["filter"].shape == (3, 1) and s["filter"].dtype == np.float64
    assert s["sliceMag"].shape == (0, 0) and s["mu_x"].shape == (0, 0) and "groups" not in s
    px = cell_items(s["posTemp"])[0]
    assert px.shape == (5, 5, 3) and px.dtype == np.float32
    ws = cell_items(s["weights"])
    assert [a.shape for a in ws] == [(3, 3, 3, 4), (4, 1), (3, 1)]
    relu = layer_to_matlab(LayerSpec("relu", "relu1"))
    assert relu["leak"][0, 0] == 0 and relu["weights"].shape == (0, 0) and relu["learningRate"].shape == (1, 0)
    # and back: the same spec
    again = layers_from_matlab(cell([s]))[0]
    for j, t in enumerate(spec.weights):
        assert torch.equal(again.weights[j], t)
    for k, v in spec.fields.items():
        got = again.fields[k]
        if k == "posTemp":
            assert all(np.array_equal(a, b) for a, b in zip(got, v))
        elif v is None:
            assert got is None
        else:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(v), err_msg=k)
    with pytest.raises(ValueError, match="field name"):
        layer_to_matlab(LayerSpec("relu", "r", fields={"bad key": 1}))


# ----------------------------------------------------------------- the four ImageNet models
@pytest.mark.parametrize("model", MODELS)
def test_standin_models_restore_shapes_and_groups(standins, model):
    layers = standin_layers(standins[model])
    specs = layers_from_matlab(layers)
    assert matlab_diff(layers, layers_to_matlab(specs)) == []
    convs = [s for s in specs if s.type == "conv"]
    groups = [s.fields["groups"] for s in convs]
    names = [s.name for s in convs]
    if model.startswith("alexnet"):
        assert dict(zip(names, groups)) == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2,
                                            "fc6": 1, "fc7": 1, "fc8": 1}
    else:
        assert set(groups) == {1}
    for s in convs:
        assert s.weights[0].dim() == 4 and s.weights[1].dim() == 1
        assert s.weights[1].shape[0] == s.weights[0].shape[0]
    fc6 = next(s for s in specs if s.name == "fc6")     # stand-in 1 x 1 x 256|512 (x 1 dropped)
    assert tuple(fc6.weights[0].shape) in ((1, 256, 1, 1), (1, 512, 1, 1))
    fc7 = next(s for s in specs if s.name == "fc7")     # stand-in 1 x 1 (x 1 x 1 dropped)
    assert tuple(fc7.weights[0].shape) == (1, 1, 1, 1)
    pools = [s for s in specs if s.type == "pool"]
    assert all(len(p.fields["pad"]) == 4 for p in pools)
    if model.startswith("alexnet"):
        assert pools[0].fields["pad"] == (0, 1, 0, 1) and specs[0].fields["stride"] == (4, 4)
        assert next(s for s in specs if s.type == "lrn").fields["param"] == (5.0, 1.0, 2e-05, 0.75)


def test_groups_errors_name_the_layer():
    specs = [LayerSpec("conv", "conv1", [torch.zeros(8, 3, 3, 3), torch.zeros(8)]),
             LayerSpec("relu", "relu1"),
             LayerSpec("conv", "conv2", [torch.zeros(6, 3, 3, 3), torch.zeros(6)])]
    with pytest.raises(ValueError, match="conv2.*3 input channels.*8 channels"):
        infer_groups(specs)                       # 8 channels reach conv2; 3 does not divide 8
    specs[2].weights[0] = torch.zeros(6, 5, 3, 3)
    with pytest.raises(ValueError, match="conv2"):
        infer_groups(specs)
    specs[2].weights[0] = torch.zeros(6, 2, 3, 3)     # 4 groups of 2 channels, but 6 filters
    with pytest.raises(ValueError, match="conv2.*6 filters"):
        infer_groups(specs)
    specs[2].weights[0] = torch.zeros(8, 2, 3, 3)
    infer_groups(specs)
    assert specs[0].fields["groups"] == 1 and specs[2].fields["groups"] == 4


def test_groups_errors_name_the_layer_from_matlab():
    bad = cell([MatStruct(type="conv", name="convX", weights=cell([np.zeros((3, 3, 2, 4), np.float32),
                                                                    np.zeros((4, 1), np.float32)]))])
    with pytest.raises(ValueError, match="convX"):
        layers_from_matlab(bad)
    assert layers_from_matlab(bad, in_channels=4)[0].fields["groups"] == 2


def _beta24_meta(average):
    return MatStruct(
        inputs=StructArray.from_structs([MatStruct(name="data", size=np.array([[227.0, 227, 3, 10]]))]),
        normalization=MatStruct(imageSize=np.array([[227.0, 227, 3, 10]]), averageImage=average,
                                interpolation="bilinear", keepAspect=np.array([[True]]),
                                border=np.array([[29.0, 29.0]]), cropSize=np.array([[0.8867, 0.8867]])),
        classes=MatStruct(name=cell(["n01440764", "n01443537", "n01484850"]),
                          description=cell(["tench, Tinca tinca", "goldfish", "great white shark"])))


def test_load_matconvnet_model_file_v5(tmp_path, standins):
    rng = np.random.default_rng(0)
    layers = standin_layers(standins["alexnet_6"], rng)
    avg = (rng.random((227, 227, 3)) * 255).astype(np.float32)
    path = tmp_path / "imagenet-caffe-alex.mat"
    savemat(path, {"layers": layers, "meta": _beta24_meta(avg)}, version="5")
    specs, meta = load_matconvnet_model(path)
    assert [s.name for s in specs][:4] == ["conv1", "relu1", "norm1", "pool1"] and specs[-1].type == "softmax"
    assert specs[4].fields["groups"] == 2
    np.testing.assert_array_equal(filters_to_matlab(specs[4].weights[0]), cell_items(cell_items(layers)[4]["weights"])[0])
    assert meta.image_size == (227, 227, 3, 10)
    assert meta.average_image.shape == (3, 227, 227)
    np.testing.assert_array_equal(meta.average_image, avg.transpose(2, 0, 1))
    assert meta.class_names == ["n01440764", "n01443537", "n01484850"] and meta.class_descriptions[1] == "goldfish"
    assert matlab_diff(meta_to_matlab(meta), loadmat(path)["meta"]) == []
    # a per-channel mean (the VGG files: 1 x 1 x 3)
    m = meta_from_matlab(_beta24_meta(np.array([123.68, 116.779, 103.939], np.float32).reshape(1, 1, 3)))
    np.testing.assert_allclose(m.average_image, [123.68, 116.779, 103.939], rtol=1e-6)
    assert m.average_image.shape == (3,)
    m.average_image = m.average_image - 1
    back = meta_to_matlab(m)["normalization"]["averageImage"]
    assert back.shape == (1, 1, 3) and back.dtype == np.float32
    np.testing.assert_allclose(back.reshape(-1), np.array([122.68, 115.779, 102.939]), rtol=1e-6)


def test_load_older_model_file_with_filters_and_biases(tmp_path):
    """vl_simplenn_tidy's upgrade: filters/biases -> weights, top-level classes/normalization -> meta."""
    rng = np.random.default_rng(1)
    f1, b1 = rng.standard_normal((5, 5, 3, 4)).astype(np.float32), rng.standard_normal((1, 4)).astype(np.float32)
    f2, b2 = rng.standard_normal((1, 1, 4)).astype(np.float32), rng.standard_normal((1, 1)).astype(np.float32)
    layers = cell([MatStruct(type="conv", name="conv1", filters=f1, biases=b1, pad=np.array([[2.0]]),
                             stride=np.array([[1.0]])),
                   MatStruct(type="normalize", name="norm1", param=np.array([[5, 1, 2e-5, 0.75]])),
                   MatStruct(type="conv", name="fc", filters=f2, biases=b2, pad=np.zeros((1, 1)),
                             stride=np.ones((1, 1)))])
    path = tmp_path / "old.mat"
    savemat(path, {"layers": layers, "classes": MatStruct(name=cell(["a"]), description=cell(["A"])),
                   "normalization": MatStruct(averageImage=np.array([[1.0, 2.0, 3.0]], np.float32),
                                              imageSize=np.array([[32.0, 32, 3]]))}, version="5")
    specs, meta = load_matconvnet_model(path)
    np.testing.assert_array_equal(filters_to_matlab(specs[0].weights[0]), f1)
    np.testing.assert_array_equal(specs[0].weights[1].numpy(), b1.reshape(-1))
    assert tuple(specs[2].weights[0].shape) == (1, 4, 1, 1) and specs[2].fields["groups"] == 1
    assert specs[1].fields["param"] == (5.0, 1.0, 2e-05, 0.75)
    assert meta.class_names == ["a"] and meta.image_size == (32, 32, 3)
    np.testing.assert_array_equal(meta.average_image, [1, 2, 3])
    # written back in today's form: weights cell, bias orientation kept
    out = cell_items(layers_to_matlab(specs))
    assert "weights" in out[0] and "filters" not in out[0] and "biases" not in out[0]
    assert cell_items(out[0]["weights"])[1].shape == (1, 4)


def test_load_matconvnet_model_bad_files(tmp_path):
    path = tmp_path / "nolayers.mat"
    savemat(path, {"x": np.zeros((2, 2))}, version="5")
    with pytest.raises(MatFileError, match="nolayers.mat.*layers"):
        load_matconvnet_model(path)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(MatFileError, match="junk.mat"):
        load_matconvnet_model(junk)
    badgroups = tmp_path / "badgroups.mat"
    savemat(badgroups, {"layers": cell([MatStruct(type="conv", name="c1", weights=cell(
        [np.zeros((3, 3, 2, 4), np.float32), np.zeros((4, 1), np.float32)]))])}, version="5")
    with pytest.raises(MatFileError, match="badgroups.mat.*c1"):
        load_matconvnet_model(badgroups)


def test_net_to_matlab_and_model_meta_defaults(checkpoints_dir):
    net = loadmat(checkpoints_dir / "checkpoint_single_epoch3.mat")["net"]
    specs = layers_from_matlab(net["layers"])
    assert matlab_diff(net_to_matlab(specs, net["meta"]), net) == []
    meta = meta_from_matlab(net["meta"])
    assert meta.image_size == (16, 16, 3) and meta.class_names == ["pos"] and meta.average_image is None
    assert matlab_diff(net_to_matlab(specs, meta), net) == []
    assert meta_to_matlab(None) == MatStruct()
    fresh = meta_to_matlab(ModelMeta(image_size=(224, 224, 3), class_names=["pos"]))
    np.testing.assert_array_equal(fresh["normalization"]["imageSize"], [[224, 224, 3]])
    assert cell_items(fresh["classes"]["name"]) == ["pos"]
