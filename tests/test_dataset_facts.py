"""The dataset rows' fields (data_prep.facts.DATASETS): what each dataset has, which the code asks
instead of comparing names (issue 26), and the helpers over them."""
from __future__ import annotations

import pytest

from data_prep.facts import (
    DATASETS,
    DEFAULT_DATASET,
    IMAGES_DATASET,
    all_categories,
    category_samples_objects,
    dataset_facts,
    datasets_with,
    default_category,
    has_parts,
)
from reproduce.experiments.grid import config_slug
from reproduce.experiments.pipeline import Experiment


def test_each_row_says_what_its_dataset_has():
    assert datasets_with("generated") == ("toy",)
    assert datasets_with("own_folder") == (IMAGES_DATASET,) == ("images",)
    assert datasets_with("attribute_labels") == ("celeba",) == datasets_with("image_limit")
    assert datasets_with("one_net_per_category") == ("voc2010_crop",)
    assert datasets_with("whole_images") == ("celeba", "voc2010_crop")
    assert datasets_with("manual_download") == ("helen", "celeba", "voc2010_crop")
    assert datasets_with("made_for_input_size") == ("toy", "images")
    assert {n: f.part_regions for n, f in DATASETS.items() if f.part_regions} == {
        "vocpart": "pascal-part", "toy": "generated-masks", "images": "label-maps"}
    assert [n for n in DATASETS if not has_parts(n)] == ["voc2010_crop", "images"]
    assert DEFAULT_DATASET == "ilsvrcanimalpart"
    assert dataset_facts("celeba").whole_images == 162_770 + 19_867


def test_default_category_and_sampled_objects():
    assert default_category("ilsvrcanimalpart") == "n02118333"       # demo.m's fox, not the first category
    assert default_category("cub200") == "cub200" and default_category("vocpart") == "bird"
    assert default_category("toy") == "toy01" == all_categories("toy")[0]
    assert category_samples_objects("cub200")                        # readAnnotation_sampling, 500 drawn
    assert not category_samples_objects("bird") and not category_samples_objects("n02118333")
    assert DATASETS["ilsvrcanimalpart"].category_data_file.format(category="x") == "x_obj/img/data.mat"
    with pytest.raises(ValueError, match="unknown dataset"):
        default_category("nope")


def test_config_slug_reads_the_experiment():
    exp = Experiment("toy", ["toy01"], model="tiny", dropout=0.5, epochs=3, seed=2)
    assert config_slug(exp) == "drop0.5_ep3_seed2"
    multi = Experiment("vocpart", ["bird", "cat"], model="vgg-m", loss="ourloss_softmaxlog", pretrained="none",
                       batch_size=8, fix_slicemag_quirk=True)
    assert config_slug(multi) == "drop0.8_epdefault_seed0_softmax_bs8_scratch_fixslice"
    assert config_slug(Experiment("toy", ["toy01"], pretrained="/x/my net.mat")).endswith("_pre-my_net")
