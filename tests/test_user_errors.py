"""Issue 18's probes of bad input: each error names its file and says what to do, without a
traceback; nothing wrong is ever reported as a result."""
from __future__ import annotations

import numpy as np
import pytest
from data_prep_fixtures import write_ilsvrc_category

from data_prep.ilsvrc import read_annotation_ilsvrc
from data_prep.readers import DataConf, DatasetError
from legacy_compat import MatStruct, StructArray, loadmat
from legacy_compat.matio import MatFileError, savemat


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
