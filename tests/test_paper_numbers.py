from reproduce.experiments.published_numbers import format_rows, paper_rows, rows_for


def test_table_has_every_published_cell():
    rows = paper_rows()
    loc = [r for r in rows if r.metric == "location_instability"]
    acc = [r for r in rows if r.metric == "accuracy_percent"]
    assert len(loc) == 16 and len(acc) == 4
    # the interpretable CNN is more stable in every published location-instability row
    assert all(r.interpretable < r.ordinary for r in loc)


def test_fox_vgg16_row_and_average():
    rows = rows_for("ilsvrcanimalpart", "vgg-vd-16", "n02118333")
    fox = [r for r in rows if r.category == "n02118333"]
    assert [(r.ordinary, r.interpretable) for r in fox] == [(0.137, 0.069)]
    assert {r.category for r in rows} == {"n02118333", "average"}
    text = format_rows(rows)
    assert "0.137" in text and "0.069" in text and "98.58" in text


def test_other_category_gets_only_averages_and_toy_gets_none():
    rows = rows_for("ilsvrcanimalpart", "alexnet", "n01443537")
    assert {r.category for r in rows} == {"average"}
    assert rows_for("toy", "tiny", "toy01") == []
    assert "no figures" in format_rows([])
    cub = rows_for("cub200", "vgg-m", "cub200")
    assert [(r.ordinary, r.interpretable) for r in cub] == [(0.148, 0.065)]
