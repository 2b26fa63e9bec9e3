"""reproduce.realimages (pretrain on ILSVRC categories, fine-tune on held-out ones) and the pieces it adds:
the patience rule, the landmarks-only ablation, the resumable records."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from data_prep_fixtures import ilsvrc_category_from

from reproduce.experiments import realimages as ri
from reproduce.experiments.ablation import PART_NOT_AVAILABLE, ROWS, VARIANTS, format_table, has_part_regions, summarise
from reproduce.experiments.pretrain import stopping_epoch

FOX, LIZARD, GOLDFISH = "n02118333", "n01674464", "n01443537"


def test_patience_rule_stops_past_the_best_epoch():
    assert stopping_epoch([], 3) is None
    assert stopping_epoch([0.9, 0.8, 0.7], 3) is None                    # still improving
    assert stopping_epoch([0.9, 0.5, 0.6, 0.55], 3) is None             # best at 2, only 2 epochs past it
    assert stopping_epoch([0.9, 0.5, 0.6, 0.55, 0.5], 3) == 2           # a tie is no improvement
    assert stopping_epoch([0.9, 0.5, 0.6, 0.4, 0.45], 1) == 4


def _record(variant: str, seed: int, li: float) -> dict:
    figs = {"binary_error": 0.1, "location_instability": li, "part_interpretability": math.nan}
    rec = {"variant": variant, "seed": seed, "before": dict(figs), "after": {**figs, "location_instability": li / 2}}
    if variant != "ordinary":
        rec["before_masks_off"] = dict(figs)
        rec["after_masks_off"] = {**figs, "location_instability": li}
    return rec


def test_landmarks_only_ablation_table_says_part_interpretability_is_not_available():
    assert not has_part_regions("ilsvrcanimalpart") and not has_part_regions("cub200")
    assert has_part_regions("toy") and has_part_regions("vocpart")
    table = format_table(summarise([_record(v, s, 0.2 + 0.01 * s) for s in (0, 1) for v in VARIANTS]))
    assert PART_NOT_AVAILABLE == "part interpretability: not available (landmarks only)"
    assert f"  {PART_NOT_AVAILABLE}" in table.splitlines()
    assert "nan" not in table and table.count("n/a") == len(ROWS)
    assert "0.205±0.007 -> 0.103±0.004" in table                           # location instability, mean±std


def test_summary_files_are_written_from_the_records_found(tmp_path, capsys):
    results = tmp_path / "results"
    for s in (0, 1):
        for v in VARIANTS:
            path = ri.run_file(results, FOX, v, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**_record(v, s, 0.3 if v == "icnn" else 0.2), "category": FOX}))
    written = ri.write_summary(results, [FOX, LIZARD], [0, 1], {"command": "x"})
    assert [p.name for p in written] == ["realimages.json", "realimages.csv", "realimages.png"]
    data = json.loads((results / "realimages.json").read_text())
    assert data["finished_runs"] == 6 and data["planned_runs"] == 12 and list(data["runs"]) == [FOX]
    rows = list(csv.DictReader((results / "realimages.csv").open()))
    assert [r["row"] for r in rows] == [label for label, _, _ in ROWS]
    icnn = next(r for r in rows if r["row"] == "ICNN as published")
    assert float(icnn["before_location_instability_mean"]) == pytest.approx(0.3)
    assert float(icnn["after_location_instability_mean"]) == pytest.approx(0.15)
    assert (results / "realimages.png").read_bytes()[:4] == b"\x89PNG"
    assert ri.main(["--table", "--markdown", "--results", str(results), "--categories", FOX, LIZARD]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| category | net | seeds | binary error | location instability |" and len(table) == 7
    assert table[5] == f"| {FOX} | ICNN as published | 0 1 | 0.100±0.000 -> 0.100±0.000 | 0.300±0.000 -> 0.150±0.000 |"


def test_held_out_categories_must_not_be_pretrained_on(tmp_path, capsys):
    rc = ri.main(["--categories", FOX, "--pretrain-categories", FOX, LIZARD, "--out", str(tmp_path / "o"),
                  "--results", str(tmp_path / "r"), "--no-progress"])
    assert rc != 0 and "must not be among --pretrain-categories" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _data_root(shared: Path, tmp: Path) -> Path:
    """../shared/data's fox and lizard, and a goldfish made of the lizard's images and boxes in turn (its
    844 images; its truth file is there): pretraining needs two categories, the fox is held out."""
    shared, root = shared.resolve(), tmp / "data"
    (root / "detanimalpart").mkdir(parents=True)
    (root / "data_input").mkdir()
    (root / "neg").symlink_to(shared / "neg")
    truth = "data_input_DET-2015-subset-ILSVRC2013train"               # data_prep.setup's layout
    (root / "data_input" / truth).symlink_to(shared / "original" / truth)
    for cat in (FOX, LIZARD):
        (root / "detanimalpart" / f"{cat}_obj").symlink_to(shared / "detanimalpart" / f"{cat}_obj")
    ilsvrc_category_from(shared / "detanimalpart" / f"{LIZARD}_obj", root / "detanimalpart" / f"{GOLDFISH}_obj", 844)
    return root


@pytest.mark.slow
def test_end_to_end_on_shared_data_then_resumes_from_the_records(shared_data, tmp_path, capsys):
    """The whole command at tiny cost (the tiny net at 64 x 64, 1 epoch): the trunk and pretrain.json,
    one record per run, the summary files; run again, nothing is trained (the records are found)."""
    results, out = tmp_path / "results", tmp_path / "out"
    argv = ["--data-root", str(_data_root(shared_data, tmp_path)), "--categories", FOX, "--pretrain-categories",
            LIZARD, GOLDFISH, "--model", "tiny", "--seeds", "0", "--epochs", "1", "--pretrain-max-epochs", "1",
            "--pretrain-lr-scale", "0.2", "--out", str(out), "--results", str(results), "--device", "cpu",
            "--no-progress"]
    assert ri.main(argv) == 0
    text = capsys.readouterr().out
    assert PART_NOT_AVAILABLE in text
    pre = json.loads((results / "pretrain.json").read_text())
    assert pre["epochs_trained"] == 1 and pre["best_epoch"] == 1 and pre["stopped_by"] == "epoch cap"
    assert pre["images"] == {"train": 2869, "val": 319}          # produceIMDB: lizard 1500, goldfish 2 x 844; 90 %
    assert 0 < pre["rss_anon_peak_bytes"] < 3 * 2**30 and (results / "trunk-tiny-seed0.mat").is_file()
    for v in VARIANTS:
        rec = json.loads(ri.run_file(results, FOX, v, 0).read_text())
        assert rec["epochs"] == 1 and rec["category"] == FOX
        assert 0 <= rec["after"]["binary_error"] <= 1 and rec["after"]["location_instability"] > 0
        assert math.isnan(rec["after"]["part_interpretability"])
        assert ("after_masks_off" in rec) == (v != "ordinary")
    assert json.loads((results / "realimages.json").read_text())["finished_runs"] == 3
    assert (results / "realimages.png").is_file()

    stamp = {p: p.stat().st_mtime_ns for p in (results / "runs").iterdir()}
    assert ri.main(argv) == 0
    text = capsys.readouterr().out
    assert "trunk" in text and "exists: reused" in text and "every run is done" in text
    assert {p: p.stat().st_mtime_ns for p in (results / "runs").iterdir()} == stamp


def test_a_category_that_cannot_be_measured_is_recorded_and_reported(tmp_path):
    """The elephant's truth has landmarks on an object readAnnotation skips for minArea, where the
    original's evaluation fails: the command records why, goes on, and the summary says so."""
    results = tmp_path / "results"
    file = ri.not_measured_file(results, "n02503517")
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"reason": "image 35 has part landmarks but no object record"}))
    assert ri.not_measured(results) == {"n02503517": "image 35 has part landmarks but no object record"}
    ri.write_summary(results, ["n02503517", FOX], [0], {})
    data = json.loads((results / "realimages.json").read_text())
    assert data["not_measured"] == {"n02503517": "image 35 has part landmarks but no object record"}
    assert data["finished_runs"] == 0 and data["runs"] == {}
