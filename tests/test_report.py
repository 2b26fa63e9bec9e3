"""reproduce.report: the HTML report of a run (the figures it shows, the page, the page in a real browser)."""
from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import demo
from legacy_compat.runlock import lock_holder
from reproduce.experiments import report
from reproduce.experiments.pipeline import Experiment


# ------------------------------------------------------------------ choose_images (no net)
def test_choose_images_keeps_to_the_qualifying_images_and_shares_them():
    rng = np.random.default_rng(0)
    dep_max = rng.random((6, 40))
    tau = np.full(6, 0.5)                                   # about 20 images qualify per filter
    order = report.choose_images(dep_max, tau, 5)
    assert order.shape == (6, 5)
    for d in range(6):
        assert (dep_max[d, order[d]] >= 0.5).all()          # only qualifying images (peak >= tau)
        assert len(set(order[d])) == 5
        assert (np.diff(dep_max[d, order[d]]) <= 0).all()   # by peak, highest first
    assert len(np.unique(order)) < 6 * 5                    # shared between filters: fewer occlusion passes


def test_choose_images_takes_the_top_ones_when_too_few_qualify():
    dep_max = np.array([[0.1, 0.9, 0.3, 0.8, 0.2], [5.0, 4.0, 3.0, 2.0, 1.0]])
    order = report.choose_images(dep_max, np.array([0.95, 4.5]), 3)   # 0 and 1 image reach tau
    assert order[0].tolist() == [1, 3, 2] and order[1].tolist() == [0, 1, 2]


# ------------------------------------------------------------------ the page (synthetic figures)
class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images = [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "filter" in (a.get("class") or ""):
            self.sections.append(a)
        elif tag == "img" and self.sections:
            self.images.setdefault(self.sections[-1]["id"], []).append(a["src"])


def _facts(label: str, n: int, interpretable: bool) -> report.RunFacts:
    exp = Experiment(dataset="toy", categories=["toy01"], model="tiny", interpretable=interpretable)
    filters = [report.FilterFacts(index=i + 1, instability=0.01 * ((7 * i) % n), part_value=0.1,
                                  part="head" if i % 2 else None, thumbnails=[f"img/f{i + 1}-{k}.jpg" for k in range(8)],
                                  peaks=[1.0] * 8) for i in range(n)]
    return report.RunFacts(label, exp, Path("/x") / label, 3, 4, 0.1, 0.05, float("nan"), 0.1, filters,
                           parts=["head"])


def test_the_page_has_one_section_per_filter_in_matlab_order_and_the_second_run_beside_it():
    page = report.render_html([_facts("interpretable CNN", 5, True), _facts("ordinary CNN", 5, False)], Path("/x"))
    parser = _Sections()
    parser.feed(page)
    assert [s["id"] for s in parser.sections] == [f"filter-{i}" for i in range(1, 6)]
    assert [float(s["data-instability"]) for s in parser.sections] == [0.01 * ((7 * i) % 5) for i in range(5)]
    assert all(len(v) == 16 for v in parser.images.values())           # 8 thumbnails of each of the two nets
    assert "id='sbs'" in page and "side by side with the ordinary CNN" in page
    assert "http" not in page.replace("http-equiv", "")                # nothing fetched from the network
    single = report.render_html([_facts("interpretable CNN", 5, True)], Path("/x"))
    assert "id='sbs'" not in single and "run-b" not in single.split("<main")[1]


# ------------------------------------------------------------------ errors before any work
def test_a_folder_without_checkpoints_is_named(tmp_path):
    with pytest.raises(report.ReportError, match=re.escape(str(tmp_path))):
        report.locate_runs(tmp_path)
    with pytest.raises(report.ReportError, match="no such folder"):
        report.locate_runs(tmp_path / "absent")
    assert report.main([str(tmp_path / "absent")]) != 0


def test_the_run_and_the_ordinary_cnn_beside_it_are_found(tmp_path):
    for name in ("toy01", "toy01-ordinary", "toy01-no-filter-loss"):
        (tmp_path / "mat" / name).mkdir(parents=True)
        (tmp_path / "mat" / name / "net-epoch-2.pt").write_bytes(b"")
    (tmp_path / "mat" / "toy02").mkdir()                                 # an imdb folder, no checkpoint
    first, second = report.locate_runs(tmp_path)
    assert first.exp_dir == tmp_path / "mat" / "toy01" and second.exp_dir == tmp_path / "mat" / "toy01-ordinary"
    first, second = report.locate_runs(tmp_path / "mat" / "toy01-ordinary")   # a checkpoint folder itself
    assert first.exp_dir.name == "toy01-ordinary" and second.exp_dir.name == "toy01"
    (tmp_path / "mat" / "other").mkdir()
    (tmp_path / "mat" / "other" / "net-epoch-1.pt").write_bytes(b"")
    with pytest.raises(report.ReportError, match="several runs .*--name"):
        report.locate_runs(tmp_path)
    assert report.locate_runs(tmp_path, name="other")[0].exp_dir.name == "other"


# ------------------------------------------------------------------ a real toy run, end to end
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 1-epoch toy demo run with the ordinary CNN beside it, and its report (demo.py --report)."""
    out = tmp_path_factory.mktemp("report_run")
    argv = ["--quick", "--toy-images", "40", "--epochs", "1", "--baseline", "--no-draw", "--report",
            "--out", str(out / "out"), "--data-root", str(out / "data")]
    rc = demo.main(argv)
    assert rc == 0
    return out / "out"


def _sections(index: Path) -> list[dict]:
    parser = _Sections()
    parser.feed(index.read_text())
    return parser.sections, parser.images


def test_demo_report_shows_every_filter_and_the_figures_the_run_measured(toy_run):
    index = toy_run / "report" / "index.html"
    sections, images = _sections(index)
    assert [s["id"] for s in sections] == [f"filter-{i}" for i in range(1, 65)]      # tiny: 64 conv_mask filters
    for s in sections:
        srcs = images[s["id"]]
        assert len(srcs) == 20                                 # 10 top images of each net
        assert all((index.parent / src).is_file() for src in srcs)
    total = sum(p.stat().st_size for p in index.parent.rglob("*") if p.is_file())
    assert total < 20e6
    # the summary's figures are the run's: the mean of the per-filter instabilities is computeStability's
    per = np.array([float(s["data-instability"]) for s in sections])
    text = index.read_text()
    summary = re.search(r"location instability, masks on.*?<td class='num'>([0-9.]+)</td>", text).group(1)
    assert math.isclose(np.nanmean(per), float(summary), abs_tol=6e-5)
    parts = np.array([float(s["data-part-value"]) for s in sections])         # P_f, the toy has part regions
    summary = re.search(r"part interpretability \(mean over filters\)</th><td class='num'>([0-9.]+)</td>", text).group(1)
    assert np.isfinite(parts).all() and math.isclose(parts.mean(), float(summary), abs_tol=6e-5)
    assert "curves-a.png" in text and (index.parent / "curves-a.png").is_file()
    command = lock_holder(toy_run)["command"]                     # the command that produced the run
    assert command and html.escape(command) in text


def test_the_command_line_rebuilds_the_report_in_place(toy_run, tmp_path, capsys):
    shutil.copytree(toy_run.parent, tmp_path / "copy", symlinks=True)          # the fixture's run stays as it is
    run = tmp_path / "copy" / "out"
    before = sorted(p.name for p in (run / "report").iterdir())
    argv = [str(run), "--no-progress", "--top", "8", "--data-root", str(tmp_path / "copy" / "data")]
    assert report.main(argv) == 0
    assert "report: " in capsys.readouterr().out
    sections, images = _sections(run / "report" / "index.html")
    assert len(sections) == 64 and all(len(v) == 16 for v in images.values())
    assert sorted(p.name for p in (run / "report").iterdir()) == before
    assert not list(run.glob(".tmp-*"))                          # nothing half-written left behind


# ------------------------------------------------------------------ the page in headless Chromium
_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {ids: Array.prototype.map.call(document.querySelectorAll('section.filter'), function (s) { return s.id; }),
             visible: document.querySelectorAll('section.filter:not(.hidden)').length,
             images: imgs.length,
             broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.src; }),
             sbs: document.body.classList.contains('sbs')};
  var pre = document.createElement('pre'); pre.id = 'check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script></body>"""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return exe


def _browse(exe: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           *extra, url], capture_output=True, text=True, timeout=120)


def test_the_report_in_headless_chromium(toy_run, tmp_path):
    exe = _chromium()
    site = tmp_path / "report"
    shutil.copytree(toy_run / "report", site)
    page = site / "check.html"
    page.write_text((site / "index.html").read_text().replace("</body>", _CHECK))

    def state(query: str) -> dict:
        dom = _browse(exe, page.as_uri() + query, "--dump-dom").stdout
        found = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
        assert found, dom[-2000:]
        return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    sections, images = _sections(site / "index.html")
    plain = state("")
    assert plain["ids"] == [f"filter-{i}" for i in range(1, 65)] and plain["visible"] == 64
    assert all(len(v) >= 16 for v in images.values())                       # >= 8 of each of the two nets
    assert plain["images"] == sum(map(len, images.values())) + 2              # the thumbnails and two curves
    assert plain["broken"] == []
    stable = state("?sort=instability&sbs=1")
    assert stable["sbs"] and sorted(stable["ids"]) == sorted(plain["ids"]) and stable["ids"] != plain["ids"]
    value = {s["id"]: float(s["data-instability"]) for s in sections}
    shown = [value[i] for i in stable["ids"] if math.isfinite(value[i])]
    assert shown == sorted(shown)                                 # most stable first
    shot = tmp_path / "report.png"
    _browse(exe, (site / "index.html").as_uri() + "?sbs=1", f"--screenshot={shot}", "--window-size=1280,1400")
    assert shot.is_file() and shot.stat().st_size > 10_000
