"""reproduce.bench: the suite's plumbing on its cheapest benchmark (no timing assertions)."""
from __future__ import annotations

import json

import pytest

from reproduce.bench import suite as bench


def test_conv_mask_benchmark_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--only", "conv_mask", "--repeats", "1", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["format"] == "icnn-bench" and [b["name"] for b in payload["benchmarks"]] == ["conv_mask"]
    entry = payload["benchmarks"][0]
    assert entry["error"] is None and entry["skipped"] is None
    ratios = [f for f in entry["figures"] if f["unit"] == "x"]
    assert len(ratios) == 2 and all(f["target"] == 1.15 and f["value"] > 0 for f in ratios)
    assert entry["raw"]["ratio_single"] == pytest.approx(entry["raw"]["conv_mask_single_s"] / entry["raw"]["conv2d_s"])
    assert payload["machine"]["cpu_count"] >= 1
    table = capsys.readouterr().out
    assert "conv_mask / Conv2d" in table and "<= 1.15" in table


def test_a_failing_benchmark_is_reported_and_the_others_run(tmp_path, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom")
    monkeypatch.setitem(bench.RUNNERS, "demo", broken)
    monkeypatch.setitem(bench.RUNNERS, "imdb", lambda a: bench.BenchResult("imdb", skipped="no fox data"))
    assert bench.main(["--only", "demo", "imdb", "--out", str(tmp_path / "b.json")]) == 1
    entries = {b["name"]: b for b in json.loads((tmp_path / "b.json").read_text())["benchmarks"]}
    assert entries["demo"]["error"] == "RuntimeError: boom" and entries["imdb"]["skipped"] == "no fox data"
    table = capsys.readouterr().out
    assert "ERROR: RuntimeError: boom" in table and "skipped: no fox data" in table


def test_train_step_runs_the_training_machinery_on_both_nets():
    r = bench.bench_train_step(model="tiny", batch=2, repeats=1)
    assert r["params_icnn"] - r["params_plain"] == 64 + 64      # the two conv_mask layers' betas (per input channel)
    assert r["ratio"] == pytest.approx(r["icnn_step_s"] / r["plain_step_s"])
