"""reproduce.paper: the experiment runner (grid, results file, resume, table beside the paper's)."""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from reproduce.evaluation.net_features import target_layer_index
from reproduce.experiments import ablation_cells, comparison_tables, grid, results_store
from reproduce.experiments import paper as pp
from reproduce.experiments.ablation import summarise
from reproduce.experiments.published_numbers import paper_rows
from reproduce.layers.geometry import get_conv_net_para
from reproduce.models.builder import network_init
from reproduce.models.registry import MODELS

TOY = ["--dataset", "toy", "--categories", "toy01", "--models", "tiny", "--epochs", "1", "--device", "cpu",
       "--toy-option", "n_pos=16", "--toy-option", "n_neg=16", "--no-progress", "--seed", "3"]
TAG = grid.toy_tag({"n_pos": 16, "n_neg": 16})          # small toy data: its own runs and imdb cache
SLUG = "tiny_drop0.8_ep1_seed3" + TAG


def _record(dataset, name, model, cnn, instab, err, config="c"):
    return {"id": f"{dataset}/{name}/{model}_{config}/{cnn}", "dataset": dataset, "scope": "single-class",
            "categories": [name], "name": name, "model": model, "cnn": cnn, "config": config,
            "binary_error": err, "location_instability": instab, "accuracy_percent": 100 * (1 - err)}


def test_toy_grid_writes_results_resumes_and_forces(tmp_path, capsys):
    out = tmp_path / "paper"
    argv = TOY + ["--out", str(out), "--data-root", str(tmp_path / "data")]
    assert pp.main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "icnn-paper-results"
    runs = {r["cnn"]: r for r in results["runs"]}
    assert set(runs) == {"ordinary", "interpretable"}
    for cnn, r in runs.items():
        assert r["id"] == f"toy/toy01/{SLUG}/{cnn}"
        assert r["epochs"] == 1 and r["settings"]["num_epochs"] == 1 and r["settings"]["seed"] == 3
        assert 0.0 <= r["binary_error"] <= 1.0
        assert r["accuracy_percent"] == pytest.approx(100 * (1 - r["binary_error"]))
        assert math.isfinite(r["location_instability"]) and 0 < r["location_instability"] < 1
        assert r["binary_error"] == pytest.approx(r["last_val"]["binerr"])
        assert r["command"].startswith("python -m reproduce.paper --dataset toy")
        assert r["seconds"]["total"] >= r["seconds"]["learn"] > 0
        assert r["machine"]["device"] == "cpu" and r["layer_id"] == 4
        assert 0 < r["location_instability_at_start"] < 1                # the control: the net before training
    # the ordinary CNN's checkpoints are in their own folder, both beside one shared imdb cache
    assert (out / f"runs/toy/toy01/{SLUG}/net-epoch-1.pt").is_file()
    assert (out / f"runs/toy/toy01/{SLUG}-ordinary/net-epoch-1.pt").is_file()
    assert (out / f"imdb/toy-64px{TAG}/mat/toy01/imdb/data.npy").is_file()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["cnn"] for r in rows] == ["ordinary", "interpretable"]
    assert float(rows[1]["location_instability"]) == pytest.approx(runs["interpretable"]["location_instability"])
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert "not in the paper" in printed and "control: before training" in printed

    # again: nothing is run, the records stay as they were
    assert pp.main(argv) == 0
    assert "in the results file already" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == results

    # a record without the control figure (an older file) gets it added, by evaluation alone
    old = dict(results, runs=[{k: v for k, v in r.items() if k != "location_instability_at_start"}
                              for r in results["runs"]])
    (out / "results.json").write_text(json.dumps(old))
    assert pp.main(argv) == 0
    assert capsys.readouterr().out.count("added the location instability at the start") == 2
    back = {r["cnn"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    for cnn in runs:
        assert back[cnn]["location_instability_at_start"] == pytest.approx(runs[cnn]["location_instability_at_start"])
        assert back[cnn]["finished"] == runs[cnn]["finished"]

    # --part-interpretability: recorded runs get the measure (trained and at the start), in JSON and CSV
    assert pp.main(argv + ["--part-interpretability"]) == 0
    assert capsys.readouterr().out.count("added the part interpretability") == 2
    measured = {r["cnn"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    for r in measured.values():
        assert 0.0 <= r["part_interpretability"] <= 1.0 and 0.0 <= r["part_interpretability_at_start"] <= 1.0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert float(rows[1]["part_interpretability"]) == pytest.approx(measured["interpretable"]["part_interpretability"])
    (out / "results.json").write_text(json.dumps(results))           # as before, for the checks below

    # --force on the interpretable CNN alone: trained again from scratch, its record replaced
    (out / f"runs/toy/toy01/{SLUG}/net-epoch-1.pt").write_bytes(b"not a checkpoint")
    assert pp.main(argv + ["--cnn", "interpretable", "--force"]) == 0
    again = {r["cnn"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert again["ordinary"] == runs["ordinary"]
    assert again["interpretable"]["location_instability"] == pytest.approx(
        runs["interpretable"]["location_instability"], rel=1e-5)         # same seed, same numbers
    assert len(again) == 2

    # --table reads the file alone
    assert pp.main(["--table", "--out", str(out)]) == 0
    assert f"toy/toy01/{SLUG}/interpretable" in capsys.readouterr().out


def test_comparison_uses_the_category_row_and_averages_over_categories():
    recs = [_record("ilsvrcanimalpart", "n02118333", "alexnet", "ordinary", 0.2, 0.1),
            _record("ilsvrcanimalpart", "n02118333", "alexnet", "interpretable", 0.1, 0.2),
            _record("ilsvrcanimalpart", "n01674464", "alexnet", "ordinary", 0.4, 0.3),
            _record("ilsvrcanimalpart", "n01674464", "alexnet", "interpretable", 0.3, 0.0)]
    rows = comparison_tables.comparison_rows(recs)
    fox = [r for r in rows if r.what == "n02118333"]
    assert len(fox) == 1 and fox[0].table == "Table 3 (fox column)"
    assert fox[0].measured == {"ordinary": 0.2, "interpretable": 0.1}
    assert fox[0].paper == {"ordinary": 0.143, "interpretable": 0.087}
    avg = {r.metric: r for r in rows if r.what.startswith("mean")}
    assert avg["location_instability"].what == "mean of 2/30 categories"
    assert avg["location_instability"].measured["ordinary"] == pytest.approx(0.3)
    assert avg["location_instability"].measured["interpretable"] == pytest.approx(0.2)
    assert avg["accuracy_percent"].table == "Table 7"
    assert avg["accuracy_percent"].measured["ordinary"] == pytest.approx(80.0)
    assert avg["accuracy_percent"].measured["interpretable"] == pytest.approx(90.0)
    assert avg["accuracy_percent"].paper == {"ordinary": 96.28, "interpretable": 95.38}
    text = comparison_tables.format_comparison(rows)
    assert "0.143" in text and "96.28" in text and "90.00" in text


def test_every_published_row_can_be_compared():
    recs = []
    for p in paper_rows():
        name = "n02118333" if p.dataset == "ilsvrcanimalpart" else ("bird" if p.dataset == "vocpart" else "cub200")
        for cnn in grid.CNN_KINDS:
            recs.append(_record(p.dataset, name, p.model, cnn, 0.1, 0.05))
    uniq = {r["id"]: r for r in recs}.values()
    rows = comparison_tables.comparison_rows(list(uniq))
    shown = {(r.table, r.model, r.metric) for r in rows}
    assert {(p.table, p.model, p.metric) for p in paper_rows()} <= shown
    assert not [r for r in rows if r.table == "not in the paper"]


def test_toy_options_make_other_runs():
    assert TAG.startswith("_toy") and len(TAG) == 12
    assert grid.toy_tag({}) == "" and grid.toy_tag({"categories": ("toy01",), "progress": False}) == ""
    assert grid.toy_tag({"n_pos": 16, "n_neg": 17}) != TAG


def test_plan_grid_expands_all_and_multiclass(tmp_path):
    args = pp.build_parser().parse_args(["--dataset", "vocpart", "--categories", "all", "--models", "vgg-m",
                                         "alexnet", "--out", str(tmp_path), "--epochs", "2"])
    runs = grid.plan_grid(args)
    assert len(runs) == 6 * 2 * 2
    assert [r.cnn for r in runs[:2]] == ["ordinary", "interpretable"]
    assert runs[0].exp_dir.name == "vgg-m_drop0.8_ep2_seed0-ordinary"
    assert runs[1].exp_dir.name == "vgg-m_drop0.8_ep2_seed0"
    assert runs[0].imdb_dir == runs[1].imdb_dir == tmp_path / "imdb/vocpart-224px/mat/bird/imdb"
    assert {r.imdb_dir.parts[-4] for r in runs} == {"vocpart-224px", "vocpart-227px"}
    multi = grid.plan_grid(pp.build_parser().parse_args(["--dataset", "vocpart", "--multiclass",
                                                       "--out", str(tmp_path)]))
    assert len(multi) == 2 and multi[0].categories == ["bird", "cat", "cow", "dog", "horse", "sheep"]
    assert multi[0].run_id == ("vocpart/_bird_cat_cow_dog_horse_sheep/vgg-vd-16_drop0.8_epdefault_seed0_logistic/"
                               "ordinary")
    with pytest.raises(grid.RunnerError, match="not in dataset"):
        grid.plan_grid(pp.build_parser().parse_args(["--categories", "bird"]))
    with pytest.raises(SystemExit):                                # refused when parsed
        pp.build_parser().parse_args(["--models", "resnet"])


def test_shared_data_layout_is_recognised(shared_data, tmp_path):
    args = pp.build_parser().parse_args(["--models", "alexnet-narrow", "--data-root", str(shared_data),
                                         "--offline", "--out", str(tmp_path), "--device", "cpu"])
    exp = grid.plan_grid(args)[0]
    paths = grid.resolve_paths(exp)
    assert paths.truth_file("n02118333", 2) == \
        shared_data / "original/data_input_DET-2015-subset-ILSVRC2013train/n02118333/truth_part02.mat"
    assert paths.neg_dir == shared_data / "neg"
    with pytest.raises(grid.RunnerError, match="truth_part01.mat"):
        grid.resolve_paths(exp, truth_dir=str(tmp_path))


def test_bad_results_file_and_help(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text("{\"runs\": 3}")
    assert pp.main(["--table", "--results", str(bad)]) == 2
    assert "not a reproduce.paper results file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        pp.main(["--help"])
    assert exc.value.code == 0
    assert "location instability" in capsys.readouterr().out


def test_a_diverged_run_is_flagged(tmp_path):
    args = pp.build_parser().parse_args(["--dataset", "toy", "--models", "tiny", "--out", str(tmp_path),
                                         "--device", "cpu", "--epochs", "2"])
    exp = grid.plan_grid(args)[0]
    stats = {"train": [{"lossForClassification": 0.5, "binerr": 0.1}] * 2,
             "val": [{"lossForClassification": 0.4, "binerr": 0.2}, {"lossForClassification": float("nan"),
                                                                       "binerr": 0.0}]}
    result = SimpleNamespace(binary_error=0.0, stability=0.1, stats=stats, evaluation=None,
                             seconds={"learn": 1.0, "show_results": 0.5})
    rec = results_store.run_record(exp, result, "python -m reproduce.paper", 1.6)
    assert rec["epochs"] == 2 and rec["accuracy_percent"] == 100.0
    assert rec["curves"]["val_binerr"] == [0.2, 0.0] and rec["curves"]["train_lossForClassification"] == [0.5, 0.5]
    assert rec["warnings"] and "diverged" in rec["warnings"][0]
    assert "diverged" in comparison_tables.format_runs([rec])
    stats["val"][-1]["lossForClassification"] = 0.3
    assert results_store.run_record(exp, result, "x", 1.6)["warnings"] == []


def test_alexnet_narrow_measures_its_conv_mask_layer_in_224_pixel_units():

    net, opts, meta = network_init(1, "alexnet-narrow", 0.5, seed=0)
    assert MODELS["alexnet-narrow"].image_size == 224 and meta["image_size"] == (224, 224, 3)
    convnet = get_conv_net_para(net)
    target = target_layer_index(convnet, MODELS["alexnet-narrow"].layer_id)
    layer = net.layers[target - 1]
    assert layer.layer_type == "conv_mask" and layer.name == "conv6"
    assert meta["data_sizes"][target] == (13, 13)                   # the map the stability is measured on
    x = torch.randn(1, 3, 224, 224) * 60
    torch.testing.assert_close(net.layers[0](x), x / 64)             # scale0: vl_nnnormalize with alpha 0
    assert opts.batch_size == 32 and opts.learning_rate[0] == pytest.approx(0.01)



def test_ablation_through_the_runner(tmp_path, capsys):
    """--ablation: reproduce.ablation for the grid's cell (one seed, one epoch, 16-image toy data)."""
    out = tmp_path / "paper"
    argv = TOY + ["--out", str(out), "--data-root", str(tmp_path / "data"), "--ablation", "--seeds", "3",
                  "--dropout", "0.5"]
    assert pp.main(argv) == 0
    folder = out / "ablation" / "toy-tiny-toy01"
    saved = json.loads((folder / "ablation.json").read_text())
    assert {r["variant"] for r in saved["runs"]} == {"ordinary", "icnn-no-filter-loss", "icnn"}
    for r in saved["runs"]:
        assert r["seed"] == 3 and r["epochs"] == 1
        for when in ("before", "after"):
            assert 0.0 <= r[when]["part_interpretability"] <= 1.0 and 0 < r[when]["location_instability"] < 1
    icnn = next(r for r in saved["runs"] if r["variant"] == "icnn")
    assert icnn["after"]["binary_error"] == pytest.approx(icnn["last_epoch_val_binerr"])
    rows = list(csv.DictReader((folder / "ablation.csv").open()))
    assert [r["variant"] for r in rows] == ["ordinary", "icnn-no-filter-loss", "icnn-no-filter-loss", "icnn", "icnn"]
    assert "ICNN as published" in capsys.readouterr().out


def test_pretrain_finetune_is_planned_from_the_grid(tmp_path, monkeypatch, capsys):
    """--pretrain-finetune: the grid's category is held out, the dataset's other categories pretrain the
    trunk (reproduce.pretrain; its steps are tested in test_ablation and by its command)."""
    seen = {}

    def fake(plan, say=print):
        seen.update(vars(plan), pre=list(plan.pretrain_categories), category=plan.finetune_category)
        m = {"binary_error": 0.1, "location_instability": 0.2, "part_interpretability": 0.3}
        recs = [{"variant": v, "seed": 3, "before": m, "after": m, "before_masks_off": m, "after_masks_off": m}
                for v in ("ordinary", "icnn-no-filter-loss", "icnn")]
        return {"records": recs, "summary": summarise(recs)}
    monkeypatch.setattr(ablation_cells, "pretrain_and_finetune", fake)   # as reproduce.paper calls it
    out = tmp_path / "paper"
    assert pp.main(TOY + ["--out", str(out), "--pretrain-finetune", "--seeds", "3", "4"]) == 0
    assert seen["dataset"] == "toy" and seen["category"] == "toy01" and seen["pre"] == ["toy02", "toy03"]
    assert seen["seeds"] == [3, 4] and seen["model"] == "tiny"
    assert (out / "pretrain" / "toy-tiny-toy01" / "ablation.csv").is_file()
