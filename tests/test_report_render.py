"""report.render: a full report.md / report.html from synthetic robustness.json files (no training, no attacks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tinyrobust.errors import ConfigError, TinyRobustError
from tinyrobust.report import render
from tinyrobust.report.grid import load_grid

from conftest import REPORT_CLEAN as CLEAN
from conftest import make_res

GRID = {
    "dataset": "cifar10",
    "surrogates": ["flt", "ref"],
    "eps": [2, 8],
    "attacks": {"white": ["pgd"], "black": ["square", "transfer"]},
    "budgets": {"quick": {"epochs": 1, "attack_n": 10, "cascade": True}},
    "models": [
        {
            "key": "prop",
            "label": "proposed qnn",
            "role": "proposed",
            "config": {"model": {"name": "qnn", "quant": {"weight": "int4", "act": "int4"}}},
        },
        {"key": "ref", "label": "ResNet-8 float", "role": "reference", "config": {"model": {"name": "mlc_resnet8"}}},
        {"key": "flt", "label": "qnn float", "role": "float", "config": {"model": {"name": "qnn"}}},
    ],
}


def fake_out(tmp_path: Path, masked_prop: bool = False) -> tuple[Path, object]:
    """An output folder as reproduce leaves it: weights, summaries and schema-2 attack results."""
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "cifar10.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    grid = load_grid(tmp_path / "g" / "cifar10.yaml")
    out = tmp_path / "out"
    shas = {}
    for key in ("prop", "ref", "flt"):
        run = out / "runs" / key
        run.mkdir(parents=True)
        (run / "model.safetensors").write_bytes(key.encode() * 10)
        shas[key] = hashlib.sha256(key.encode() * 10).hexdigest()
        (run / "summary.json").write_text(
            json.dumps(
                {
                    "parameters": 1000,
                    "weight_kb": {"prop": 10.0}.get(key, 90.0),
                    "test_accuracy": 0.8,
                    "epochs": 1,
                    "data_source": "cifar-10-batches-py",
                }
            )
        )
    sur = {k: {"run": f"runs/{k}", "sha256": shas[k]} for k in ("flt", "ref")}
    res = {
        "prop": make_res(
            CLEAN,
            {"pgd": {0, 1}, "square": {2}, "transfer@flt": {3}, "transfer@ref": {4}},
            ["pgd", "square", "transfer@flt", "transfer@ref"],
            sha=shas["prop"],
            masked=masked_prop,
            surrogates=sur,
        ),
        "ref": make_res(
            CLEAN,
            {"pgd": {0, 1, 2, 3}, "square": {4}, "transfer@flt": {5}},
            ["pgd", "square", "transfer@flt"],
            sha=shas["ref"],
            surrogates={"flt": sur["flt"]},
        ),
        "flt": make_res(
            CLEAN,
            {"pgd": {0}, "transfer@ref": {1}},
            ["pgd", "square", "transfer@ref"],
            sha=shas["flt"],
            surrogates={"ref": sur["ref"]},
        ),
    }
    for key, r in res.items():
        (out / "attacks" / key).mkdir(parents=True)
        (out / "attacks" / key / "robustness.json").write_text(json.dumps(r))
    (out / "reproduce.json").write_text(
        json.dumps(
            {
                "seed": 0,
                "command": "tinyrobust reproduce --dataset cifar10 --budget quick --out o",
                "machine": {
                    "platform": "Linux-test",
                    "processor": "x86_64",
                    "cpu_count": 2,
                    "accelerator": "NVIDIA H200",
                },
            }
        )
    )
    return out, grid


@pytest.fixture
def no_footprint(monkeypatch):
    """The footprint section loads real runs; these runs are fakes."""
    monkeypatch.setattr(render, "footprint", lambda grid, out: (["model", "weight KB"], [["x", "1.0"]]))


def test_report_from_synthetic_results(tmp_path, no_footprint):
    out, grid = fake_out(tmp_path)
    md_path = render.write_report(grid, "quick", out)
    md = md_path.read_text()
    for text in (
        "## Headline: worst-case robust accuracy",
        "**pgd, square**",
        "Left out of the common set (shown as n/a below): **transfer@flt** (flt: the model is this "
        "transfer attack's surrogate)",
        "## Proposed model minus each other model",
        "Newcombe",
        "## Black-box: per-image worst case",
        "## Secondary: family means",
        "+8.3",
        "### transfer@ref",
        "n/a (the model is this transfer attack's surrogate)",
        "machine: Linux-test, x86_64, 2 CPUs, accelerator NVIDIA H200",
        "command: `tinyrobust reproduce --dataset cifar10 --budget quick --out o`",
        "## Memory footprint",
    ):
        assert text in md, text
    # headline row of the proposed model: worst case over pgd+square = 6/10 with its Wilson interval and n
    assert "| proposed qnn | proposed | 90.0 [59.6, 98.2] | 60.0 [31.3, 83.2] | 60.0 [31.3, 83.2] | 10 |" in md
    # paired delta proposed - reference: 6/10 - 4/10
    assert "| ResNet-8 float | reference | +20.0 [" in md
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "H200" in page
    assert (out / "worst_case_vs_eps.png").is_file() and (out / "accuracy_vs_eps.png").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["comparison"]["common"] == ["pgd", "square"]


def test_masked_model_is_never_headlined_by_its_family_mean(tmp_path, no_footprint):
    out, grid = fake_out(tmp_path, masked_prop=True)
    md = render.write_report(grid, "quick", out).read_text()
    head = md.split("## Headline", 1)[1].split("## Proposed model minus", 1)[0]
    # headline: the worst case (60.0), marked; the white-box mean (pgd alone: 70.0) is not in it
    row = next(line for line in head.splitlines() if line.startswith("| proposed qnn"))
    assert row.startswith("| proposed qnn (gradient masking suspected) | proposed |") and "60.0 [" in row
    assert "70.0" not in row
    family = md.split("## Secondary: family means", 1)[1]
    assert "| proposed qnn | proposed | 70.0 (gradient masking suspected) | 60.0 |" in family
    assert "(gradient masking suspected)" in family.split("### Proposed minus reference, family means", 1)[1]


def test_stale_results_are_refused_naming_them(tmp_path, no_footprint):
    out, grid = fake_out(tmp_path)
    (out / "runs" / "prop" / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(
        TinyRobustError,
        match=r"attacks/prop/robustness.json is stale: it was computed on other "
        r"weights than runs/prop/model.safetensors",
    ):
        render.write_report(grid, "quick", out)


def test_stale_surrogate_is_refused(tmp_path, no_footprint):
    out, grid = fake_out(tmp_path)
    res = json.loads((out / "attacks" / "prop" / "robustness.json").read_text())
    res["meta"]["surrogates"]["flt"]["sha256"] = "0" * 64
    (out / "attacks" / "prop" / "robustness.json").write_text(json.dumps(res))
    with pytest.raises(TinyRobustError, match="attacks/prop/robustness.json is stale: its transfer@flt"):
        render.write_report(grid, "quick", out)


def test_report_refuses_mismatched_subsets_in_one_line(tmp_path, no_footprint):
    out, grid = fake_out(tmp_path)
    res = json.loads((out / "attacks" / "flt" / "robustness.json").read_text())
    res["meta"]["subset"]["indices"][0] = 5
    (out / "attacks" / "flt" / "robustness.json").write_text(json.dumps(res))
    with pytest.raises(TinyRobustError) as exc:
        render.write_report(grid, "quick", out)
    assert "attacked on different test images" in str(exc.value) and "\n" not in str(exc.value)


def test_partial_results_render(tmp_path, no_footprint):
    """A model not attacked yet is listed as such; the others are still compared."""
    out, grid = fake_out(tmp_path)
    (out / "attacks" / "flt" / "robustness.json").unlink()
    md = render.write_report(grid, "quick", out).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| qnn float | float | not attacked |"))
    header = next(line for line in md.splitlines() if line.startswith("| model | role | clean % [95% CI]"))
    assert row.count("|") == header.count("|") and row.endswith("| 0 |")  # every column, n = 0


def test_masked_model_without_black_box_in_the_common_set_gets_no_headline_number(tmp_path, no_footprint):
    """Only gradient attacks in common: a masked model's worst case is void, so the headline shows none."""
    out, grid = fake_out(tmp_path, masked_prop=True)
    for key in ("prop", "ref", "flt"):
        path = out / "attacks" / key / "robustness.json"
        res = json.loads(path.read_text())
        res["skipped"]["square"] = "not run at this budget"
        res["attacks"].pop("square")
        res["cascade"] = [a for a in res["cascade"] if a != "square"]
        res["attack_order"] = list(res["cascade"])
        path.write_text(json.dumps(res))
    md = render.write_report(grid, "quick", out).read_text()
    head = md.split("## Headline", 1)[1].split("## Proposed model minus", 1)[0]
    row = next(line for line in head.splitlines() if line.startswith("| proposed qnn"))
    assert "not headlined" in row and "[" not in row.split("|")[4]
    assert "| qnn float | float |" in head  # well-behaved models keep their numbers
    deltas = md.split("## Proposed model minus", 1)[1].split("##", 1)[0]
    assert deltas.count("not headlined") == 2 * len(grid.eps) and "[+" not in deltas and "[-" not in deltas


def test_pareto_section_plots_and_extra_runs_from_the_grid(tmp_path, no_footprint):
    """The robustness-vs-memory front: a section with one row per point, one PNG per quantity embedded
    in the HTML, and extra run folders (e.g. sweep trials) listed in the grid's pareto_runs."""
    out, _ = fake_out(tmp_path)
    trial = tmp_path / "sweeps" / "lam" / "trial_0"  # trained, not attacked: a clean point only
    trial.mkdir(parents=True)
    (trial / "summary.json").write_text(json.dumps({"weight_kb": 5.0, "test_accuracy": 0.95, "test_examples": 100}))
    grid_file = tmp_path / "g" / "cifar10.yaml"
    raw = yaml.safe_load(grid_file.read_text())
    raw["pareto_runs"] = ["../sweeps/lam/trial_*"]
    grid_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    grid = load_grid(grid_file)
    md = render.write_report(grid, "quick", out).read_text()
    sec = md.split("## Robustness vs memory: Pareto front", 1)[1].split("## Memory footprint", 1)[0]
    assert "| run | weights / acts | JR | weight KB | clean % [95% CI] | eps 2/255 % [95% CI] |" in sec
    row = next(line for line in sec.splitlines() if line.startswith("| trial_0 |"))
    assert "n/a (no robustness.json in the run folder)" in row and row.endswith("| clean |")
    row = next(line for line in sec.splitlines() if line.startswith("| prop |"))
    assert "60.0 [31.3, 83.2] n=10" in row and row.endswith("| 2/255, 8/255 |")
    assert "| ref (reference) |" in sec and "410 KB" in sec
    for name in ("pareto_clean.png", "pareto_eps2.png", "pareto_eps8.png"):
        assert (out / name).is_file() and f"![{name}]({name})" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "Robustness vs memory: Pareto front" in page
    report = json.loads((out / "report.json").read_text())
    assert {p["key"] for p in report["pareto"]["points"]} == {"prop", "ref", "flt", "trial_0"}
    assert str(tmp_path) not in json.dumps(report["pareto"])  # no machine paths


def test_pareto_runs_must_be_a_list_of_paths(tmp_path):
    (tmp_path / "g").mkdir()
    path = tmp_path / "g" / "cifar10.yaml"
    path.write_text(yaml.safe_dump({**GRID, "pareto_runs": "sweeps/x"}, sort_keys=False))
    with pytest.raises(ConfigError, match="pareto_runs must be a list"):
        load_grid(path)


def test_pareto_runs_from_the_command_line(tmp_path, no_footprint, monkeypatch, capsys):
    """``reproduce --stages report --pareto-runs GLOB``: patterns taken from the working directory."""
    from tinyrobust.cli import main

    out, _ = fake_out(tmp_path)
    for i, kb in enumerate((4.0, 6.0)):
        trial = tmp_path / "sw" / f"t{i}"
        trial.mkdir(parents=True)
        (trial / "summary.json").write_text(json.dumps({"weight_kb": kb, "test_accuracy": 0.5 + i / 10}))
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "--dataset", "cifar10", "--budget", "quick", "--out", "out", "--grid-dir", "g"]
    assert main(argv + ["--stages", "report", "--pareto-runs", "sw/t*", "--quiet"]) == 0
    points = json.loads((out / "report.json").read_text())["pareto"]["points"]
    assert [p["source"] for p in points if p["role"] == "extra"] == ["../sw/t0", "../sw/t1"]


def test_keyword_report_states_the_caveats_of_the_paper_comparison(tmp_path, no_footprint):
    out, grid = fake_out(tmp_path)
    grid.dataset = "speech_commands_logmel"
    md = render.write_report(grid, "quick", out).read_text()
    assert "| +79.5 |" in md and "Caveats: the paper trains on MFCCs" in md and "act on the log-mel pixels" in md
    grid.domain = "waveform"  # the same models attacked on WAVs: that domain's caveat, not the pixel one
    md = render.write_report(grid, "quick", out).read_text()
    assert "states no waveform-domain attack" in md and "act on the log-mel pixels" not in md
    assert md.startswith("# tinyrobust reproduce: speech_commands_logmel (waveform domain, grid ")
    grid.domain, grid.dataset = "feature", "cifar10"
    assert "Caveats" not in render.write_report(grid, "quick", out).read_text()


def test_one_archive_extracted_into_two_cache_folders_is_named_once(tmp_path):
    """Runs made on two machines read the same test archive through differently keyed cache folders."""
    _, grid = fake_out(tmp_path)
    models = [
        {
            "attacks": {"meta": {"dataset_source": f"$D/test.tar.xz extracted to $C/test-{k}/test (official)"}},
            "summary": None,
        }
        for k in ("5049fa92", "fe2581e9")
    ]
    models[0]["attacks"]["clean_correct"] = models[1]["attacks"]["clean_correct"] = [1, 0]
    models[0]["attacks"]["meta"]["threat_model"] = "L-inf"
    line = render._context(grid, "quick", tmp_path / "out", {"models": models})[0]
    assert line.endswith("read from $D/test.tar.xz (extracted once into the cache) (official)")


def test_masking_details_use_the_grids_eps_unit():
    """The attack code writes eps as k/255; the waveform grid's report says samples, also in check details."""
    data = {"eps_labels": {"0.00389105": "1 sample", "0.0077821": "2 samples", "2": "2/255"}}
    text = "limit 2: 0.00389105/255: 4 (2.0%), 0.0077821/255: 2 (1.0%), 2/255: 1, 10.00389105/255: 0"
    assert (
        render._relabel_eps(text, data)
        == "limit 2: 1 sample: 4 (2.0%), 2 samples: 2 (1.0%), 2/255: 1, 10.00389105/255: 0"
    )
    assert render._relabel_eps(text, {}) == text


def test_seed_tables_show_mean_std_and_each_seeds_paired_interval():
    from tinyrobust.report.compare import compare

    def m(key, role, group, seed, broken):
        res = make_res(CLEAN, {"pgd": broken}, ["pgd", "square"])
        return {"key": key, "label": key.upper(), "role": role, "group": group, "seed": seed, "attacks": res}

    models = [
        m("prop", "proposed", "prop", 0, {0, 1}),
        m("prop_s1", "variant", "prop", 1, {0}),
        m("ref", "reference", "ref", 0, {0, 1, 2, 3}),
        m("ref_s1", "variant", "ref", 1, {0, 1, 2}),
    ]
    data = {"eps": [2.0, 8.0], "models": models, "comparison": compare(models, [2.0, 8.0])}
    (head, rows), (dhead, drows) = render._seed_tables(data)
    assert head[:3] == ["grid entry", "seeds", "clean % mean +- std"] and rows[0][:4] == [
        "PROP",
        "0, 1",
        "90.0 +- 0.0",
        "75.0 +- 7.1",
    ]
    assert drows[0][0] == "REF" and drows[0][1].startswith("+20.0 +- 0.0 (seed 0: +20.0 [")
    assert render._seed_tables({"eps": [2.0], "models": [], "comparison": {}}) == (
        (["grid entry", "seeds", "clean % mean +- std", "eps 2/255 %"], []),
        (["proposed minus", "eps 2/255 points"], []),
    )


def test_grid_report_notes_are_printed_under_the_headline(tmp_path, no_footprint):
    """A grid's report_notes (protocol facts the numbers do not show) appear under the headline table."""
    import dataclasses

    out, grid = fake_out(tmp_path)
    grid = dataclasses.replace(grid, report_notes=["1 sample was dropped; the run before it flagged masking."])
    md = render.write_report(grid, "quick", out).read_text()
    head = md.split("## Headline", 1)[1].split("## Proposed model minus", 1)[0]
    assert "Grid note: 1 sample was dropped; the run before it flagged masking." in head
    (tmp_path / "plain").mkdir()
    plain_out, plain_grid = fake_out(tmp_path / "plain")
    assert "Grid note" not in render.write_report(plain_grid, "quick", plain_out).read_text()


def test_results_taken_from_another_grid_are_said_so_under_the_headline(tmp_path, no_footprint):
    """A model whose attack units came from another grid's result (``reused``) is named under the
    headline with the count and the source, so a reader knows which numbers were not attacked here."""
    out, grid = fake_out(tmp_path)
    path = out / "attacks" / "ref" / "robustness.json"
    res = json.loads(path.read_text())
    res["reused"] = {"from": "other/attacks/ref/robustness.json", "units": ["pgd@2", "square@2"]}
    path.write_text(json.dumps(res))
    md = render.write_report(grid, "quick", out).read_text()
    head = md.split("## Headline", 1)[1].split("## Proposed model minus", 1)[0]
    assert "ResNet-8 float: 2 units from other/attacks/ref/robustness.json" in head
    (tmp_path / "plain").mkdir()
    plain_out, plain_grid = fake_out(tmp_path / "plain")
    assert "another grid's result" not in render.write_report(plain_grid, "quick", plain_out).read_text()


def test_report_command_is_the_whole_grids_and_stage_seconds_are_summed():
    """A grid run in parts (one model per process) records its last part: the report shows the command
    for the whole grid (without --models/--stages/--quiet) and names the part; seconds per stage sum up."""
    last = "tinyrobust reproduce --grid g --budget full --out o --stages attack --jobs 1 --quiet --models=qnn_int4"
    assert render.whole_grid_command(last) == "tinyrobust reproduce --grid g --budget full --out o --jobs 1"
    assert render.whole_grid_command("tinyrobust reproduce --grid g --out o") == "tinyrobust reproduce --grid g --out o"
    on_ray = "tinyrobust reproduce --grid g --out o --jobs 8 --address 10.0.0.5:6379"
    assert render.whole_grid_command(on_ray) == "tinyrobust reproduce --grid g --out o --jobs 8"
    got = render.stage_totals({"train@1": 3600, "attack@2": 900, "train@3": 1800, "attack+report@4": 1})
    assert got == "attack 0.25 h in 1 call(s); attack+report 0.00 h in 1 call(s); train 1.50 h in 2 call(s)"
    assert render.stage_totals({}) == "n/a"
