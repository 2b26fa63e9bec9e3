"""legacy_compat.matio: loadmat / savemat on MAT v5 and v7.3 (HDF5), real files and round trips.

The real files are the original project's (../shared/data, ../shared/checkpoints); the expected
values were read off the files (and, for the fox, agree with issue 2's numbers).
"""
from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from legacy_compat import MatFileError, MatStruct, StructArray, cell, loadmat, matio, savemat

FOX = "original/data_input_DET-2015-subset-ILSVRC2013train/n02118333"
VERSIONS = ["5", "7.3"]


# ---------------------------------------------------------------- deep equality
def differences(a, b, path="", ordered=True, out=None):
    """Every place where two loaded values differ in type, shape, dtype, field order or value (NaN == NaN)."""
    out = [] if out is None else out
    if type(a) is not type(b):
        out.append(f"{path}: {type(a).__name__} != {type(b).__name__}")
    elif isinstance(a, StructArray):
        if a.shape != b.shape or a.fieldnames != b.fieldnames:
            out.append(f"{path}: struct array {a.shape} {a.fieldnames} != {b.shape} {b.fieldnames}")
        else:
            for k, idx in enumerate(np.ndindex(a.shape)):
                differences(a[idx], b[idx], f"{path}({k + 1})", True, out)
    elif isinstance(a, dict):
        keys_a, keys_b = (list(a), list(b)) if ordered else (sorted(a), sorted(b))
        if keys_a != keys_b:
            out.append(f"{path}: fields {list(a)} != {list(b)}")
        else:
            for k in a:
                differences(a[k], b[k], f"{path}.{k}", True, out)
    elif isinstance(a, str):
        if a != b:
            out.append(f"{path}: {a!r} != {b!r}")
    elif sp.issparse(a):
        if a.format != b.format or a.shape != b.shape or a.dtype != b.dtype or (a != b).nnz:
            out.append(f"{path}: sparse {a.format} {a.shape} {a.dtype} != {b.format} {b.shape} {b.dtype}")
    elif isinstance(a, np.ndarray):
        if a.shape != b.shape or a.dtype != b.dtype:
            out.append(f"{path}: {a.shape} {a.dtype} != {b.shape} {b.dtype}")
        elif a.dtype == object:
            for idx in np.ndindex(a.shape):
                differences(a[idx], b[idx], f"{path}{{{idx}}}", True, out)
        elif not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
            out.append(f"{path}: values differ")
    elif a != b:
        out.append(f"{path}: {a!r} != {b!r}")
    return out


def assert_same(a, b, ordered=True):
    diffs = differences(a, b, ordered=ordered)
    assert not diffs, "\n".join(diffs[:20])


def test_differences_sees_every_kind_of_difference():
    base = MatStruct(a=np.zeros((2, 1)), b="x", c=cell([np.array([[np.nan]])]))
    assert differences(base, MatStruct(a=np.zeros((2, 1)), b="x", c=cell([np.array([[np.nan]])]))) == []
    assert differences(base, MatStruct(a=np.zeros((1, 2)), b="x", c=base.c))
    assert differences(base, MatStruct(a=np.zeros((2, 1), np.float32), b="x", c=base.c))
    assert differences(base, MatStruct(b="x", a=np.zeros((2, 1)), c=base.c))
    assert differences(base, MatStruct(a=np.zeros((2, 1)), b="y", c=base.c))
    assert differences(base, MatStruct(a=np.zeros((2, 1)), b="x", c=cell([np.array([[1.0]])])))
    assert differences(StructArray((1, 2), ["a"]), StructArray((1, 2), ["b"]))


# ---------------------------------------------------------------- the original project's files
def test_fox_truth_part01_v73(shared_data):
    truth = loadmat(shared_data / FOX / "truth_part01.mat").truth
    assert isinstance(truth, StructArray) and truth.shape == (1, 286)
    assert truth.fieldnames == ["pHW_center", "pHW_scale", "obj"]
    first = truth[0, 0]
    assert first.pHW_center.dtype == np.float64
    np.testing.assert_allclose(first.pHW_center, [[52.5], [190.0]], rtol=1e-15)  # 190.00000000000003 in the file
    np.testing.assert_allclose(first.pHW_scale, [[91.0], [70.0]], rtol=1e-15)
    assert first.obj.folder == "n02118333" and first.obj.filename == "n02118333_10009"
    # in the truth files the box corners are char (from the XML); data.mat holds them as numbers
    assert first.obj.bndbox == {"xmin": "35", "xmax": "216", "ymin": "129", "ymax": "271"}
    assert list(first.obj.bndbox) == ["xmin", "xmax", "ymin", "ymax"]
    np.testing.assert_array_equal(first.obj.ID, [[1.0]])
    shapes = [v.shape for v in truth.field("pHW_center").reshape(-1)]
    assert shapes.count((2, 1)) == 211 and shapes.count((0, 0)) == 75


def test_fox_truth_part02_v73_empties(shared_data):
    truth = loadmat(shared_data / FOX / "truth_part02.mat").truth
    centers = list(truth.field("pHW_center").reshape(-1))
    assert len(centers) == 286
    assert sum(c.shape == (0, 0) and c.dtype == np.float64 for c in centers) == 143
    assert sum(c.shape == (2, 1) for c in centers) == 143
    np.testing.assert_allclose(truth[0, 3].pHW_center, [[173.5], [110.0]], rtol=1e-15)


def test_fox_data_mat_v73(shared_data):
    samples = loadmat(shared_data / "detanimalpart/n02118333_obj/img/data.mat").samples
    assert isinstance(samples, StructArray) and samples.shape == (1, 286)
    assert samples.fieldnames == ["obj", "class"]
    box = samples[0, 0].obj.bndbox
    assert list(box) == ["ymin", "ymax", "xmin", "xmax"]  # MATLAB_fields order
    for name, value in {"xmin": 35.0, "ymin": 129.0, "xmax": 216.0, "ymax": 271.0}.items():
        assert box[name].dtype == np.float64 and box[name].shape == (1, 1) and box[name][0, 0] == value
    last = samples[0, 285].obj.bndbox
    assert (last.xmin[0, 0], last.ymin[0, 0], last.xmax[0, 0], last.ymax[0, 0]) == (71, 41, 488, 329)
    np.testing.assert_array_equal(samples[0, 0]["class"], [[1.0]])


def test_voc_bird_truth_v5(shared_data):
    truth = loadmat(shared_data / "original/data_input_VOC/bird/truth_part01.mat").truth
    assert isinstance(truth, StructArray) and truth.shape == (1, 388)
    assert truth.fieldnames == ["pHW_center", "pHW_scale", "obj"]
    first = truth[0, 0]
    np.testing.assert_allclose(first.pHW_center, [[11.2], [172.8395061728395]], rtol=1e-15)
    np.testing.assert_allclose(first.pHW_scale, [[22.4], [35.95061728395061]], rtol=1e-15)
    assert first.obj.filename == "2008_000054.jpg" and first.obj.folder == "./" and first.obj.name == "bird"
    assert first.obj.bndbox == {"xmin": "114", "xmax": "195", "ymin": "148", "ymax": "208"}
    # MATLAB stored this double compactly as uint8 on disk: it must still read as double
    assert first.obj.ID.dtype == np.float64 and first.obj.ID[0, 0] == 2.0


def test_voc_truth_cow_v73(shared_data):
    truth = loadmat(shared_data / "original/data_input_VOC/truth_cow.mat").truth
    assert isinstance(truth, StructArray) and truth.shape == (1, 217)
    assert truth.fieldnames == ["partbox", "partname", "obj"]
    first = truth[0, 0]
    assert first.partname == "head"
    assert isinstance(first.partbox, StructArray) and first.partbox.shape == (1, 4)
    assert first.partbox.fieldnames == ["Wmin", "Wmax", "Hmin", "Hmax"]
    np.testing.assert_array_equal(first.partbox[0, 0].Wmin, [[219.0]])
    obj = first.obj
    assert (obj.folder, obj.filename, obj.name) == ("./", "2008_000009.jpg", "cow")
    assert [obj.bndbox[k][0, 0] for k in ("Wmin", "Wmax", "Hmin", "Hmax")] == [219, 292, 162, 220]
    np.testing.assert_array_equal(obj.classID, [[10.0]])
    assert truth[0, 1].partbox[0, 0].Wmin.shape == (0, 0)
    np.testing.assert_array_equal(truth[0, 1].partbox[0, 2].Hmax, [[195.0]])
    assert truth[0, 216].obj.filename == "2010_005993.jpg"


def test_cub_sampling_v73(shared_data):
    valid = loadmat(shared_data / "original/data_input_CUB-200-2011/sampling.mat").validObj
    assert valid.dtype == np.float64 and valid.shape == (1, 2000)
    np.testing.assert_array_equal(valid[0, :5], [2, 6, 8, 9, 16])
    np.testing.assert_array_equal(valid[0, -3:], [5786, 5787, 5793])
    assert valid.sum() == 5692005


def test_checkpoint_v5_and_v73_rewrite_load_equal(checkpoints_dir):
    v5 = loadmat(checkpoints_dir / "checkpoint_single_epoch3.mat")
    v73 = loadmat(checkpoints_dir / "checkpoint_single_epoch3_v73.mat")
    # The one known difference is in the files, not in the readers: Octave saved each layer's
    # `precious` as logical, and the independent rewrite (hdf5storage) stored it with
    # MATLAB_class 'uint8'. Same values; bool vs uint8.
    relabelled = 0
    for a, b in zip(v5.net.layers.reshape(-1), v73.net.layers.reshape(-1)):
        if "precious" in a and a.precious.dtype == bool:
            assert b.precious.dtype == np.uint8
            np.testing.assert_array_equal(a.precious, b.precious)
            b.precious = b.precious.astype(bool)
            relabelled += 1
    assert relabelled == 15
    assert_same(v5, v73, ordered=False)
    layers = v5.net.layers
    assert layers.shape == (1, 16) and layers[0, 0].type == "conv"
    weights = layers[0, 0].weights
    assert weights.shape == (1, 2) and weights[0, 0].dtype == np.float32 and weights[0, 0].shape == (3, 3, 3, 6)
    assert isinstance(v5.stats.train, StructArray) and v5.stats.train.shape == (1, 3)


def test_variable_names_subset_and_missing(shared_data, checkpoints_dir):
    ck = checkpoints_dir / "checkpoint_single_epoch3.mat"
    assert list(loadmat(ck, ["stats"])) == ["stats"]
    assert list(loadmat(ck, variable_names="net")) == ["net"]
    assert list(loadmat(checkpoints_dir / "checkpoint_single_epoch3_v73.mat", ["state", "net"])) == ["state", "net"]
    for path in (ck, shared_data / FOX / "truth_part01.mat"):
        with pytest.raises(MatFileError) as err:
            loadmat(path, ["net", "nope"] if path == ck else ["nope"])
        assert err.value.path == str(path) and "'nope'" in err.value.reason and str(path) in str(err.value)


# ---------------------------------------------------------------- v5 classes scipy alone gets wrong
def test_v5_logical_complex_sparse_logical_classes(tmp_path):
    path = tmp_path / "classes.mat"
    scipy.io.savemat(path, {
        "l": np.array([[True, False, True]]),
        "c": np.array([[1 + 2j, -3j]]),
        "c32": np.array([[1 - 1j]], np.complex64),
        "sl": sp.csc_matrix(np.array([[True, False], [False, True]])),
        "i8": np.array([[-3, 4]], np.int8),
        "cellmix": _two_cell(np.array([[True]]), np.array([[2j]])),
    })
    got = loadmat(path)
    assert got.l.dtype == bool and got.l.tolist() == [[True, False, True]]
    assert got.c.dtype == np.complex128 and got.c.tolist() == [[1 + 2j, -3j]]
    assert got.c32.dtype == np.complex64 and got.c32[0, 0] == 1 - 1j
    assert isinstance(got.sl, sp.csc_matrix) and got.sl.dtype == bool
    assert got.sl.toarray().tolist() == [[True, False], [False, True]]
    assert got.i8.dtype == np.int8
    assert got.cellmix[0, 0].dtype == bool and got.cellmix[0, 1].dtype == np.complex128


def _two_cell(a, b):
    out = np.empty((1, 2), dtype=object)
    out[0, 0], out[0, 1] = a, b
    return out


def _v5_uncompressed(path, variables):
    scipy.io.savemat(path, variables, do_compression=False)
    return bytearray(Path(path).read_bytes())


def test_v5_function_handle_is_refused_naming_the_variable(tmp_path):
    # scipy cannot write a function handle; make one by turning a struct's class byte into
    # mxFUNCTION_CLASS (16), inside a cell so that the error must name the path to it
    path = tmp_path / "fh.mat"
    data = _v5_uncompressed(path, {"c": _two_cell(np.array([[1.0]]), {"fn": np.array([[1.0]])})})
    flags = data.index(struct.pack("<II", 6, 8) + bytes([2]))  # array flags of the struct (class 2)
    data[flags + 8] = 16
    path.write_bytes(data)
    with pytest.raises(MatFileError) as err:
        loadmat(path)
    assert "'c{2}'" in err.value.reason and "function handle" in err.value.reason


def test_v5_object_is_refused_naming_the_class(tmp_path):
    path = tmp_path / "obj.mat"
    obj = scipy.io.matlab.MatlabObject(np.array([[(np.array([[1.0]]),)]], dtype=[("a", object)]), "myclass")
    scipy.io.savemat(path, {"x": np.array([[1.0]]), "o": obj})
    with pytest.raises(MatFileError) as err:
        loadmat(path)
    assert "'o'" in err.value.reason and "myclass" in err.value.reason
    np.testing.assert_array_equal(loadmat(path, ["x"]).x, [[1.0]])  # the rest of the file still reads


def test_v5_bogus_sizes_fail_fast(tmp_path):
    path = tmp_path / "v.mat"
    scipy.io.savemat(path, {"v": np.arange(1000.0)}, do_compression=True)
    good = bytearray(path.read_bytes())
    # the compressed element claims more bytes than the file has
    bad = bytearray(good)
    bad[132:136] = struct.pack("<I", 0x7FFFFFFF)
    path.write_bytes(bad)
    with pytest.raises(MatFileError, match="truncated"):
        loadmat(path)
    # the inflated array claims 2 GB: refused before inflating anything
    inner = bytearray(zlib.decompress(bytes(good[136:])))
    inner[4:8] = struct.pack("<I", 0x7FFFFFF0)
    comp = zlib.compress(bytes(inner))
    path.write_bytes(bytes(good[:128]) + struct.pack("<II", 15, len(comp)) + comp)
    with pytest.raises(MatFileError, match="declares"):
        loadmat(path)


# ---------------------------------------------------------------- v7.3 classes that cannot be held, foreign HDF5
def _h5_with_header(path):
    return h5py.File(path, "w", userblock_size=512)


def _put_header(path):
    with open(path, "rb+") as fh:
        fh.write(matio._v73_header())


def _set_class(obj, cls):
    obj.attrs["MATLAB_class"] = np.bytes_(cls.encode())


def test_v73_function_handle_and_objects_are_refused(tmp_path):
    path = tmp_path / "fh.mat"
    with _h5_with_header(path) as f:
        s = f.create_group("s")
        _set_class(s, "struct")
        ok = s.create_dataset("ok", data=np.ones((1, 1)))
        _set_class(ok, "double")
        fh = s.create_group("fh")
        _set_class(fh, "function_handle")
        o = f.create_dataset("str", data=np.zeros((1, 6), np.uint32))
        _set_class(o, "string")
        o.attrs["MATLAB_object_decode"] = np.int32(3)
    _put_header(path)
    with pytest.raises(MatFileError) as err:
        loadmat(path, ["s"])
    assert "'s.fh'" in err.value.reason and "function handle" in err.value.reason
    with pytest.raises(MatFileError) as err:
        loadmat(path, ["str"])
    assert "'str'" in err.value.reason and "'string'" in err.value.reason


def test_hdf5_files_matlab_did_not_write(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(MatFileError, match="HDF5 file that MATLAB did not write"):
        loadmat(plain)
    no_class = tmp_path / "noclass.mat"
    with _h5_with_header(no_class) as f:
        f["x"] = np.ones(3)
    _put_header(no_class)
    with pytest.raises(MatFileError, match="'x'.*no MATLAB_class"):
        loadmat(no_class)
    header_no_hdf5 = tmp_path / "cut.mat"
    header_no_hdf5.write_bytes(matio._v73_header() + bytes(100))
    with pytest.raises(MatFileError, match="no HDF5 data"):
        loadmat(header_no_hdf5)


def test_v73_links_and_external_storage_are_refused(tmp_path):
    path = tmp_path / "links.mat"
    with _h5_with_header(path) as f:
        s = f.create_group("s")
        _set_class(s, "struct")
        s["x"] = h5py.ExternalLink(str(tmp_path / "other.mat"), "/x")
        e = f.create_dataset("e", shape=(4, 1), dtype="f8", external=[(str(tmp_path / "raw.bin"), 0, 32)])
        _set_class(e, "double")
        f["soft"] = h5py.SoftLink("/e")
    _put_header(path)
    (tmp_path / "raw.bin").write_bytes(bytes(32))
    for name, reason in (("s", "external link"), ("e", "external files"), ("soft", "soft or external link")):
        with pytest.raises(MatFileError, match=reason):
            loadmat(path, [name])


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"MATLAB 5.0 MAT-file", "too short"),
    (b"hello, this is a text file, not a MAT file at all. " * 4, "not a MAT file"),
])
def test_files_that_are_not_mat_files(tmp_path, content, reason):
    path = tmp_path / "x.mat"
    path.write_bytes(content)
    with pytest.raises(MatFileError, match=reason) as err:
        loadmat(path)
    assert err.value.path == str(path)


def test_missing_file_folder_and_v4(tmp_path):
    with pytest.raises(MatFileError, match="no such file"):
        loadmat(tmp_path / "absent.mat")
    with pytest.raises(MatFileError):
        loadmat(tmp_path)
    v4 = tmp_path / "v4.mat"
    scipy.io.savemat(v4, {"a": np.ones((2, 2))}, format="4")
    with pytest.raises(MatFileError, match="v4"):
        loadmat(v4)


def test_matfileerror_pickles():
    err = pickle.loads(pickle.dumps(MatFileError("/x.mat", "broken")))
    assert (err.path, err.reason, str(err)) == ("/x.mat", "broken", "/x.mat: broken")


# ---------------------------------------------------------------- round trips
def round_trip_cases() -> dict:
    cases = {}
    for dt in (np.float64, np.float32, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
               np.int64, np.uint64):
        sign = 1 if np.dtype(dt).kind == "u" else -1
        cases[f"num_{np.dtype(dt).name}"] = (np.arange(6, dtype=dt) * sign).reshape(2, 3)
        cases[f"empty_{np.dtype(dt).name}"] = np.zeros((0, 3), dtype=dt)
    cases.update(
        scalar=np.array([[3.5]]),
        special=np.array([[np.nan, np.inf, -np.inf, -0.0, 1e-300]]),
        int_limits=np.array([[np.iinfo(np.int64).min, np.iinfo(np.int64).max]]),
        uint_max=np.array([[np.iinfo(np.uint64).max]]),
        nd=np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        fortran=np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        column=np.arange(3.0).reshape(3, 1),
        empty_nd=np.zeros((2, 0, 3)),
        logical=np.array([[True, False, True]]),
        logical_empty=np.zeros((2, 0), bool),
        complex=np.array([[1 + 2j, -3.5j], [0, 1]]),
        complex64=np.array([[1 + 2j, np.nan]], dtype=np.complex64),
        text="hello world",
        text_empty="",
        text_unicode="naïve – ü €",
        charmat=np.array([["a", "b", "c"], ["d", "e", "f"]]),
        charcol=np.array([["x"], ["y"]]),
        cellstr=cell(["ab", "", "cde"]),
        cell_column=cell([np.array([[1.0]]), "x", np.zeros((0, 0))], shape=(3, 1)),
        cell_empty=np.empty((0, 0), dtype=object),
        cell_empty_1x0=np.empty((1, 0), dtype=object),
        cell_2x2=cell([np.array([[1.0]]), "b", "c", np.array([[True]])], shape=(2, 2)),
        cell_nested=cell([cell([np.array([[1.0]]), cell(["a"])]), MatStruct(a=np.array([[1.0]]))]),
        struct=MatStruct(a=np.array([[1.0]]), b="text", c=MatStruct(d=np.zeros((0, 0)), e=cell(["x"]))),
        struct_no_fields=MatStruct(),
        struct_array_row=StructArray.from_structs(
            [MatStruct(x=np.array([[float(i)]]), y=str(i)) for i in range(3)]),
        struct_array_column=StructArray.from_structs(
            [MatStruct(x=np.array([[float(i)]]), y=str(i)) for i in range(3)], shape=(3, 1)),
        struct_array_2x2=StructArray.from_structs([MatStruct(x=np.array([[i]], np.int32)) for i in range(4)],
                                                  shape=(2, 2)),
        struct_array_0x0=StructArray((0, 0), ["p", "q"]),
        struct_array_1x0=StructArray((1, 0), ["p"]),
        struct_array_in_struct=MatStruct(parts=StructArray.from_structs(
            [MatStruct(box=np.array([[1.0, 2, 3, 4]])), MatStruct(box=np.zeros((0, 0)))])),
        heterogeneous_structs_in_cell=cell([MatStruct(a=np.array([[1.0]])),
                                            MatStruct(b="x", c=np.array([[2]], np.int8))]),
        sparse=sp.csc_matrix(np.array([[0, 1.5, 0], [2, 0, 0]])),
        sparse_logical=sp.csc_matrix(np.array([[True, False], [False, True]])),
        sparse_empty=sp.csc_matrix((3, 4)),
        sparse_complex=sp.csc_matrix(np.array([[0, 1 + 1j], [2, 0]])),
        simplenn_like=MatStruct(layers=cell([MatStruct(
            type="conv", name="conv1", weights=cell([np.ones((3, 3, 2, 4), np.float32), np.zeros((4, 1), np.float32)]),
            pad=np.array([[1.0, 1, 1, 1]]), precious=np.array([[False]]), opts=np.empty((0, 0), dtype=object))])),
    )
    return cases


CASES = round_trip_cases()


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_every_type(tmp_path, version):
    path = tmp_path / "rt.mat"
    assert savemat(path, CASES, version=version) == str(path)
    back = loadmat(path)
    assert sorted(back) == sorted(CASES)
    for name, value in CASES.items():
        assert_same(value, back[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_v5_and_v73_writes_load_equal(tmp_path, name):
    savemat(tmp_path / "a.mat", {name: CASES[name]}, version="5")
    savemat(tmp_path / "b.mat", {name: CASES[name]}, version="7.3")
    assert_same(loadmat(tmp_path / "a.mat"), loadmat(tmp_path / "b.mat"))


@pytest.mark.parametrize("version", VERSIONS)
def test_real_files_survive_a_rewrite(shared_data, checkpoints_dir, tmp_path, version):
    for source in (shared_data / FOX / "truth_part01.mat",
                   shared_data / "original/data_input_VOC/bird/truth_part01.mat",
                   checkpoints_dir / "checkpoint_single_epoch3.mat"):
        original = loadmat(source)
        savemat(tmp_path / "copy.mat", original, version=version)
        assert_same(original, loadmat(tmp_path / "copy.mat"), ordered=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_plain_python_values(tmp_path, version):
    path = tmp_path / "py.mat"
    savemat(path, {
        "f": 2.5, "i": 3, "b": True, "z": 1 - 2j, "n": None, "s": "abc",
        "lst": [1, "two", [3.0]], "tup": (np.float32(1.5),), "empty_list": [], "d": {"k": 1, "nested": {"m": False}},
        "row": np.arange(3), "zero_d": np.array(7, np.int16), "np_scalar": np.float32(0.25),
        "strings": np.array(["ab", "c"]), "big_endian": np.array([[1.0, 2.0]], dtype=">f8"),
    }, version=version)
    got = loadmat(path)
    assert_same(got.f, np.array([[2.5]]))
    assert_same(got.i, np.array([[3.0]]))          # like a MATLAB literal: double
    assert_same(got.b, np.array([[True]]))
    assert_same(got.z, np.array([[1 - 2j]]))
    assert_same(got.n, np.zeros((0, 0)))           # []
    assert got.s == "abc"
    assert_same(got.lst, cell([np.array([[1.0]]), "two", cell([np.array([[3.0]])])]))
    assert_same(got.tup, cell([np.array([[1.5]], np.float32)]))
    assert_same(got.empty_list, np.empty((0, 0), dtype=object))  # {}
    assert_same(got.d, MatStruct(k=np.array([[1.0]]), nested=MatStruct(m=np.array([[False]]))))
    assert_same(got.row, np.arange(3).reshape(1, 3))  # 1-D -> 1 x N row
    assert_same(got.zero_d, np.array([[7]], np.int16))
    assert_same(got.np_scalar, np.array([[0.25]], np.float32))
    assert_same(got.strings, cell(["ab", "c"]))       # '<Un' strings (n > 1) -> cellstr
    assert_same(got.big_endian, np.array([[1.0, 2.0]]))


@pytest.mark.parametrize("version", VERSIONS)
def test_struct_array_special_shapes(tmp_path, version):
    path = tmp_path / "sa.mat"
    ragged = StructArray((1, 2), ["a"])
    ragged[0, 0] = MatStruct(a=np.array([[1.0]]))
    ragged[0, 1] = MatStruct(a=np.array([[2.0]]), b="only here")
    one = StructArray.from_structs([MatStruct(a=np.array([[1.0]]))])
    savemat(path, {"ragged": ragged, "one": one}, version=version)
    got = loadmat(path)
    assert got.ragged.fieldnames == ["a", "b"]
    assert_same(got.ragged[0, 0].b, np.zeros((0, 0)))  # MATLAB fills a missing field with []
    assert got.ragged[0, 1].b == "only here"
    assert_same(got.one, MatStruct(a=np.array([[1.0]])))  # a 1 x 1 struct array is a scalar struct


def test_struct_without_fields_v73(tmp_path):
    savemat(tmp_path / "e.mat", {"e": StructArray((0, 0), []), "one": MatStruct()})
    got = loadmat(tmp_path / "e.mat")
    assert_same(got.e, StructArray((0, 0), []))  # MATLAB's struct([])
    assert_same(got.one, MatStruct())
    with pytest.raises(MatFileError, match="without fields"):
        savemat(tmp_path / "v5.mat", {"e": StructArray((0, 0), [])}, version="5")


# ---------------------------------------------------------------- what the v7.3 writer puts in the file
def test_v73_layout_is_matlabs(tmp_path):
    path = tmp_path / "layout.mat"
    savemat(path, {"s": MatStruct(name="ab", flag=np.array([[True, False]]), e=np.zeros((0, 3), np.int8),
                                  c=cell([np.array([[1.0]])]), sa=StructArray.from_structs([MatStruct(v="x")] * 2),
                                  sparse=sp.csc_matrix(np.eye(2)), z=np.array([[1 + 2j]]))})
    head = path.read_bytes()[:512]
    assert head.startswith(b"MATLAB 7.3 MAT-file, Platform: ") and b"Created on: " in head[:116]
    assert head[:116].rstrip(b" ").endswith(b"HDF5 schema 1.00 .")
    assert head[116:124] == bytes(8) and head[124:128] == b"\x00\x02IM" and head[128:] == bytes(384)
    assert path.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"
    with h5py.File(path, "r") as f:
        s = f["s"]
        assert s.attrs["MATLAB_class"] == b"struct"
        fields = [b"".join(x).decode() for x in s.attrs["MATLAB_fields"]]
        assert fields == ["name", "flag", "e", "c", "sa", "sparse", "z"]
        assert s["name"].dtype == np.uint16 and s["name"].shape == (2, 1)  # 1 x 2 char, dims reversed
        assert s["name"].attrs["MATLAB_class"] == b"char" and s["name"].attrs["MATLAB_int_decode"] == 2
        assert s["flag"].dtype == np.uint8 and s["flag"].attrs["MATLAB_class"] == b"logical"
        assert s["e"].attrs["MATLAB_empty"] == 1 and s["e"][()].tolist() == [0, 3]
        assert s["e"].attrs["MATLAB_class"] == b"int8"
        assert s["c"].attrs["MATLAB_class"] == b"cell" and h5py.check_ref_dtype(s["c"].dtype)
        assert f[s["c"][0, 0]].attrs["MATLAB_class"] == b"double"
        sa = s["sa"]
        assert sa.attrs["MATLAB_class"] == b"struct" and "MATLAB_class" not in sa["v"].attrs
        assert sa["v"].shape == (2, 1) and f[sa["v"][1, 0]].attrs["MATLAB_class"] == b"char"
        assert s["sparse"].attrs["MATLAB_sparse"] == 2 and sorted(s["sparse"]) == ["data", "ir", "jc"]
        assert s["z"].dtype.names == ("real", "imag")
        refs = f["#refs#"]
        assert refs["a"].attrs["MATLAB_class"] == b"canonical empty" and refs["a"].attrs["MATLAB_empty"] == 1


def test_v5_file_is_a_matlab_5_file(tmp_path):
    savemat(tmp_path / "x.mat", {"x": np.ones((2, 2))}, version="5")
    head = (tmp_path / "x.mat").read_bytes()[:128]
    assert head.startswith(b"MATLAB 5.0 MAT-file") and head[126:128] == b"IM"


# ---------------------------------------------------------------- bad values, atomic writes
@pytest.mark.parametrize("variables, where", [
    ({"ok": 1.0, "bad": {1, 2}}, "'bad'"),
    ({"s": MatStruct(inner=cell([1.0, object()]))}, "'s.inner{2}'"),
    ({"h": np.zeros(3, np.float16)}, "float16"),
    ({"b": b"bytes"}, "'b'"),
    ({"sp": sp.csc_matrix(np.eye(2, dtype=np.float32))}, "sparse"),
    ({"1x": 1.0}, "'1x'"),
    ({"s": {"bad field": 1.0}}, "bad field"),
    ({"big": 2 ** 60}, "not exact"),
    ({"emoji": "🙂"}, "Basic Multilingual Plane"),
    ({"sa": StructArray((1, 2), [])}, "without fields"),
])
@pytest.mark.parametrize("version", VERSIONS)
def test_unsupported_values_leave_nothing_behind(tmp_path, variables, where, version):
    path = tmp_path / "out.mat"
    with pytest.raises(MatFileError) as err:
        savemat(path, variables, version=version)
    assert where in str(err.value) and err.value.path == str(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, version):
    path = tmp_path / "keep.mat"
    savemat(path, {"old": np.array([[1.0]])}, version=version)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    # fail in the middle of writing, after the temporary file exists and holds data
    if version == "7.3":
        monkeypatch.setattr(matio._H5Writer, "char", boom)
    else:
        real = scipy.io.savemat

        def half_then_boom(fh, mdict, **kwargs):
            real(fh, {k: mdict[k] for k in list(mdict)[:1]}, **kwargs)
            raise RuntimeError("disk full")
        monkeypatch.setattr(matio.scipy.io, "savemat", half_then_boom)
    with pytest.raises(MatFileError, match="disk full") as err:
        savemat(path, {"new": np.array([[2.0]]), "text": "abc"}, version=version)
    assert err.value.path == str(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.mat"]
    np.testing.assert_array_equal(loadmat(path).old, [[1.0]])


def test_savemat_bad_arguments(tmp_path):
    with pytest.raises(MatFileError, match="version"):
        savemat(tmp_path / "x.mat", {"a": 1.0}, version="6")
    with pytest.raises(MatFileError, match="mapping"):
        savemat(tmp_path / "x.mat", [("a", 1.0)])
    with pytest.raises(MatFileError, match="does not exist"):
        savemat(tmp_path / "no" / "x.mat", {"a": 1.0})
    assert os.listdir(tmp_path) == []


def test_savemat_replaces_an_existing_file(tmp_path):
    path = tmp_path / "x.mat"
    savemat(path, {"a": 1.0})
    savemat(path, {"b": "two"}, version="5")
    assert list(loadmat(path)) == ["b"] and os.listdir(tmp_path) == ["x.mat"]


def test_struct_array_pickles_with_its_fieldnames():
    sa = StructArray.from_structs([MatStruct(a=1), MatStruct(a=2)], shape=(2, 1))
    back = pickle.loads(pickle.dumps(sa))
    assert isinstance(back, StructArray) and back.fieldnames == ["a"] and back.shape == (2, 1)
    assert back[1, 0] == {"a": 2}
    assert pickle.loads(pickle.dumps(StructArray((0, 0), ["x", "y"]))).fieldnames == ["x", "y"]
