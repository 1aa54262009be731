"""report.pareto: the robustness-vs-memory front (dominance, ties), honest weight KB, and the table
built from synthetic schema-2 robustness.json files (conftest.make_res)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tinyrobust.config import config_from_dict, dump_config
from tinyrobust.report import pareto
from tinyrobust.report.compare import compare

from conftest import REPORT_CLEAN, REPORT_EPS, make_res, tiny_config_dict

ORDER = ["pgd", "square"]


def test_front_keeps_only_undominated_points():
    pts = [
        (10.0, 0.50),  # 0: smallest: on the front
        (20.0, 0.40),  # 1: more KB, less accuracy than 0: dominated
        (20.0, 0.70),  # 2: on the front
        (30.0, 0.70),  # 3: same accuracy as 2 with more KB: dominated
        (20.0, 0.60),  # 4: same KB as 2, less accuracy: dominated
        (40.0, 0.90),  # 5: on the front
        None,  # 6: no value: never on it
    ]
    assert pareto.pareto_front(pts) == [True, False, True, False, False, True, False]
    assert pareto.dominates((10, 0.5), (20, 0.4)) and not pareto.dominates((10, 0.5), (10, 0.5))


def test_ties_are_both_on_the_front():
    assert pareto.pareto_front([(10.0, 0.5), (10.0, 0.5), (5.0, 0.2)]) == [True, True, True]
    assert pareto.pareto_front([(10.0, 0.5), (10.0, 0.5), (5.0, 0.5)]) == [False, False, True]
    assert pareto.pareto_front([]) == []


def _run(folder: Path, cfg: dict, summary: dict, res: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(config_from_dict(cfg)))
    (folder / "model.safetensors").write_bytes(folder.name.encode())
    (folder / "summary.json").write_text(json.dumps(summary))
    if res is not None:
        res["meta"]["model_sha256"] = hashlib.sha256(folder.name.encode()).hexdigest()
        (folder / "robustness.json").write_text(json.dumps(res))
    return folder


def test_weight_kb_is_recomputed_when_summary_has_the_older_count(tmp_path):
    from tinyrobust.data import dataset_info
    from tinyrobust.export.footprint import footprint_table
    from tinyrobust.models import build_model

    cfg = tiny_config_dict()
    old = _run(tmp_path / "old", cfg, {"weight_kb": 1.0, "layers": [{"weight_bytes": 1024}]})
    kb, how = pareto.weight_kb(old, json.loads((old / "summary.json").read_text()))
    c = config_from_dict(cfg)
    info = dataset_info("cifar10")
    model = build_model(
        "qnn", num_classes=10, input_shape=info.input_shape, mean=info.mean, std=info.std, quant=c.model.quant
    )
    fp = footprint_table(model, info.input_shape)
    assert how == "recomputed" and kb == pytest.approx(fp["weight_kb"]) and kb > fp["weight_kb_bare"]
    # a summary written by this version holds the same figure
    assert pareto.weight_kb(old, {"weight_kb": fp["weight_kb"]}) == (pytest.approx(fp["weight_kb"]), "summary")
    # a folder that cannot be rebuilt keeps its older figure, marked
    kb, how = pareto.weight_kb(tmp_path / "nowhere", {"weight_kb": 3.0})
    assert kb == 3.0 and how.startswith("older count") and "no config.yaml" in how


# weight KB of the synthetic runs (the real count, from the model, is tested above)
KB = {"prop": 70.0, "ref": 303.0, "t1": 20.0, "t2": 21.0, "t3": 25.0, "x": 5.0}


@pytest.fixture
def fake_kb(monkeypatch):
    monkeypatch.setattr(pareto, "recompute_weight_kb", lambda run_dir: KB[Path(run_dir).name])


def _data(tmp_path: Path) -> dict:
    """render.collect's shape for two grid models (proposed int4+JR, float reference)."""
    prop = make_res(REPORT_CLEAN, {"pgd": {0, 1}, "square": {2}}, ORDER)  # 6/10
    ref = make_res(REPORT_CLEAN, {"pgd": {0, 1, 2, 3}, "square": {4}}, ORDER)  # 4/10
    q4 = {"model": {"name": "qnn", "quant": {"weight": "int4", "act": "int4"}}, "jr": {"weight": 0.01}}
    models = [
        {
            "key": "prop",
            "label": "proposed",
            "role": "proposed",
            "config": q4,
            "attacks": prop,
            "summary": {
                "weight_kb": 70.0,
                "test_accuracy": 0.7,
                "test_examples": 1000,
                "layers": [{"weight_bytes_bare": 1, "bn_folded_biases": 0}],
            },
        },
        {
            "key": "ref",
            "label": "MLC/T ResNet-8 float",
            "role": "reference",
            "config": {"model": {"name": "mlc_resnet8"}},
            "attacks": ref,
            "summary": {
                "weight_kb": 303.0,
                "test_accuracy": 0.8,
                "test_examples": 1000,
                "layers": [{"weight_bytes_bare": 1, "bn_folded_biases": 0}],
            },
        },
    ]
    return {"eps": [1.0, 2.0, 8.0], "models": models, "comparison": compare(models, REPORT_EPS)}


def test_points_and_table_from_synthetic_results(tmp_path, fake_kb):
    data = _data(tmp_path)
    data["eps"] = REPORT_EPS
    fresh = {"layers": [{"weight_bytes_bare": 1, "bn_folded_biases": 0}], "test_examples": 1000}
    ternary = tiny_config_dict(model={"name": "qnn", "quant": {"weight": "ternary", "act": "int4"}})
    # a sweep trial attacked with the report's protocol: 8/10 robust at 20 KB, beats everything
    good = _run(
        tmp_path / "sweep" / "t1",
        ternary,
        {**fresh, "weight_kb": 20.0, "test_accuracy": 0.6},
        make_res(REPORT_CLEAN, {"pgd": {0}, "square": set()}, ORDER),
    )
    # attacked with other PGD parameters: listed, but kept off the robust plots
    other = _run(
        tmp_path / "sweep" / "t2",
        ternary,
        {**fresh, "weight_kb": 21.0, "test_accuracy": 0.65},
        make_res(REPORT_CLEAN, {"pgd": {0}}, ORDER, params={"pgd": {"steps": 99}}),
    )
    # trained, not attacked: a clean point only
    plain = _run(tmp_path / "sweep" / "t3", ternary, {**fresh, "weight_kb": 25.0, "test_accuracy": 0.9})
    runs = pareto.resolve_extra_runs(["sweep/t*"], tmp_path)
    assert runs == [good, other, plain]
    front = pareto.collect_points(data, tmp_path / "out", runs)
    assert front["quantities"] == ["clean", "2", "8"]
    by = {p["key"]: p for p in front["points"]}
    assert by["t1"]["robust"]["2"]["robust_accuracy"] == pytest.approx(0.8) and by["t1"]["front"]["2"]
    assert not by["prop"]["front"]["2"] and not by["ref"]["front"]["2"]  # t1: less KB, more robust
    assert by["t2"]["robust"] == {} and "pgd ran with other parameters" in by["t2"]["robust_note"]
    assert by["t3"]["robust_note"] == "no robustness.json in the run folder"
    # clean: t1 (20 KB, 60%), t2 (21 KB, 65%) and t3 (25 KB, 90%) each buy accuracy with KB; t3 dominates
    # prop (70 KB, 70%) and ref (303 KB, 80%)
    assert [p["key"] for p in front["points"] if p["front"]["clean"]] == ["t1", "t2", "t3"]
    assert by["prop"]["jr"] and not by["t1"]["jr"] and by["t1"]["weights"] == "ternary"
    assert by["t1"]["source"] == "../sweep/t1"  # relative: committed results carry no machine paths

    head, rows = pareto.table(front)
    assert head == [
        "run",
        "weights / acts",
        "JR",
        "weight KB",
        "clean % [95% CI]",
        "eps 2/255 % [95% CI]",
        "eps 8/255 % [95% CI]",
        "on the front",
    ]
    assert [r[0] for r in rows] == ["t1", "t2", "t3", "prop", "ref (reference)"]  # by KB
    t1 = rows[0]
    assert t1[1:4] == ["ternary / int4", "no", "20.0"]
    assert t1[4] == "60.0 [56.9, 63.0] n=1000" and t1[5] == "80.0 [49.0, 94.3] n=10" and t1[7] == "clean, 2/255, 8/255"
    assert rows[1][5].startswith("n/a (pgd ran with other parameters") and rows[1][7] == "clean"
    assert rows[3][1:3] == ["int4 / int4", "yes"] and rows[3][5] == "60.0 [31.3, 83.2] n=10"
    md = "\n".join(pareto.notes(front))
    assert "pgd, square" in md and "410 KB" in md and "2/255 and 8/255" in md


def test_only_the_grids_pareto_eps_are_drawn_and_plots_are_written(tmp_path, fake_kb):
    data = _data(tmp_path)
    data["eps"] = [2.0, 4.0]  # no 8/255 in this grid: clean and 2/255 only
    data["comparison"] = compare(
        [{**m, "attacks": make_res(REPORT_CLEAN, {"pgd": {0}}, ["pgd"], eps=[2.0, 4.0])} for m in data["models"]],
        [2.0, 4.0],
    )
    front = pareto.collect_points(data, tmp_path, [])
    assert front["quantities"] == ["clean", "2"]
    pngs = pareto.plots(front)
    assert set(pngs) == {"pareto_clean.png", "pareto_eps2.png"}
    assert all(b.startswith(b"\x89PNG") and len(b) > 1000 for b in pngs.values())


def test_extra_run_on_other_images_is_refused_with_a_reason(tmp_path, fake_kb):
    data = _data(tmp_path)
    data["eps"] = REPORT_EPS
    res = make_res(REPORT_CLEAN, {"pgd": {0}, "square": set()}, ORDER, indices=range(200, 210))
    run = _run(tmp_path / "x", tiny_config_dict(), {"weight_kb": 5.0, "test_accuracy": 0.5}, res)
    p = next(p for p in pareto.collect_points(data, tmp_path, [run])["points"] if p["key"] == "x")
    assert p["robust"] == {} and "other test images" in p["robust_note"]
    stale = json.loads((run / "robustness.json").read_text())
    stale["meta"]["subset"]["indices"] = list(range(100, 110))
    stale["meta"]["model_sha256"] = "0" * 64
    (run / "robustness.json").write_text(json.dumps(stale))
    p = next(p for p in pareto.collect_points(data, tmp_path, [run])["points"] if p["key"] == "x")
    assert "stale" in p["robust_note"]


def test_pareto_eps_in_the_grids_unit():
    """2/255 and 8/255 where the grid has them; the waveform grid gets 2 and 8 samples (its eps in samples say which
    eps those are), whether or not it also has 1 sample; a grid with neither: its smallest and largest eps."""
    from tinyrobust.report.compare import ekey
    from tinyrobust.report.pareto import eps_label, pareto_eps

    assert pareto_eps([1, 2, 4, 8]) == [2, 8] and pareto_eps([8]) == [8]
    samples = {k: k * 255 / 65535 for k in (1, 2, 4, 8)}
    in_unit = {ekey(v): float(k) for k, v in samples.items()}
    assert pareto_eps(list(samples.values()), in_unit) == [samples[2], samples[8]]
    assert pareto_eps([samples[k] for k in (2, 4, 8)], in_unit) == [samples[2], samples[8]]
    assert pareto_eps([samples[k] for k in (1, 4)], in_unit) == [samples[1], samples[4]]  # neither: the ends
    assert pareto_eps([1, 4]) == [1, 4] and pareto_eps([]) == []
    assert eps_label({"labels": {"0.0077821": "2 samples"}}, "0.0077821") == "2 samples"
    assert eps_label({}, "2") == "2/255"


def test_a_masked_run_is_drawn_but_kept_off_the_robust_fronts(tmp_path, fake_kb):
    """The proposed run, most robust and smallest here, is flagged for gradient masking: its worst case is
    an upper bound, so the robust fronts leave it out (the reference takes its place) while the clean front
    keeps it; the plots still draw it."""
    data = _data(tmp_path)
    data["models"][0]["attacks"] = make_res(REPORT_CLEAN, {"pgd": {0, 1}, "square": {2}}, ORDER, masked=True)
    data["comparison"] = compare(data["models"], REPORT_EPS)
    front = pareto.collect_points(data, tmp_path / "out", [])
    by = {p["key"]: p for p in front["points"]}
    assert by["prop"]["masked"] and by["prop"]["robust"]["2"]["robust_accuracy"] == pytest.approx(0.6)
    assert not by["prop"]["front"]["2"] and by["ref"]["front"]["2"]
    assert by["prop"]["front"]["clean"]
    head, rows = pareto.table(front)
    assert rows[0][0] == "prop (gradient masking suspected)" and rows[0][-1] == "clean"
    assert "kept off the robust fronts" in "\n".join(pareto.notes(front))
    assert set(pareto.plots(front)) == {"pareto_clean.png", "pareto_eps2.png", "pareto_eps8.png"}
