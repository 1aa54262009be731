"""tinyrobust sweep: grid expansion, validation before any trial, resume, failed trials, the choice
rule, the missing-Ray and unreachable-cluster messages. The engine tests use the in-process executor
(the same execute_trial a Ray task runs); one slow test runs real local Ray."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tinyrobust.sweep import LocalExecutor, choose, load_sweep, parse_sweep, run_sweep
from tinyrobust.sweep.trial import RESULT_FILE

from conftest import assert_one_line_error, run_cli, tiny_config_dict

TINY_EVAL = {
    "attacks": ["apgd", "square"],
    "params": {"apgd": {"steps": 3}, "square": {"queries": 20}},
    "eps": 2,
    "n": 10,
    "jacobian_n": 10,
}


def tiny_sweep(**over):
    base = tiny_config_dict(
        data={"dataset": "cifar10", "val_size": 30}, train={"epochs": 2, "max_batches_per_epoch": 2}
    )
    raw = {
        "name": "t",
        "base": base,
        "grid": {"seed": [0, 1]},
        "evaluation": dict(TINY_EVAL),
        "resources": {"concurrent": 2, "threads_per_trial": 1},
    }
    raw.update(over)
    return raw


# ------------------------------------------------------------------ expansion and validation


def test_grid_expansion_variables_variants_dedup_include():
    raw = tiny_sweep(
        grid={
            "model.quant.weight": ["int4", "ternary"],
            "lambda": {"logspace": [0.001, 0.1, 3]},
            "jr_mode": {
                "none": {"jr.weight": 0.0, "jr.layers": {}},
                "whole": {"jr.weight": "${lambda}", "jr.layers": {}},
                "per_layer": {"jr.weight": 0.0, "jr.layers": {"block1": "${lambda}", "block5": "${lambda}"}},
            },
        },
        include=[{"model.quant.weight": "int2", "jr_mode": "none"}],
    )
    spec = parse_sweep(raw)
    # 2 quantizers x (1 no-JR twin, deduplicated over lambda + 3 lambdas x 2 JR modes) + 1 include
    assert len(spec.trials) == 2 * (1 + 3 * 2) + 1
    lams = sorted({t.values["lambda"] for t in spec.trials if "lambda" in t.values})
    assert lams == [0.001, 0.01, 0.1]
    t = next(
        t
        for t in spec.trials
        if t.values.get("jr_mode") == "per_layer"
        and t.values["lambda"] == 0.01
        and t.values["model.quant.weight"] == "ternary"
    )
    assert t.cfg.jr.weight == 0.0 and t.cfg.jr.layers == {"block1": 0.01, "block5": 0.01}
    assert t.cfg.model.quant.weight == "ternary"
    none = [t for t in spec.trials if t.values.get("jr_mode") == "none"]
    assert len(none) == 3 and all("lambda" not in t.values for t in none)
    assert len({t.name for t in spec.trials}) == len(spec.trials)
    # names are stable digests of the config: the same file gives the same trial folders
    assert [t.name for t in parse_sweep(raw).trials] == [t.name for t in spec.trials]


def test_random_search_is_seeded():
    raw = tiny_sweep(
        grid={"seed": [0]}, random={"samples": 4, "seed": 3, "space": {"jr.weight": {"loguniform": [0.001, 0.1]}}}
    )
    a, b = parse_sweep(raw), parse_sweep(raw)
    vals = [t.cfg.jr.weight for t in a.trials]
    assert len(a.trials) == 4 and all(0.001 <= v <= 0.1 for v in vals)
    assert vals == [t.cfg.jr.weight for t in b.trials]


@pytest.mark.parametrize(
    "over, names",
    [
        ({"grdi": {"seed": [0]}}, "grdi"),  # unknown top-level key
        ({"grid": {"jr.weigth": [0.01]}}, "jr.weigth"),  # misspelt config key
        ({"grid": {}}, "grid"),  # empty grid
        ({"grid": {"jr.weight": []}}, "grid.jr.weight"),  # empty axis
        ({"grid": {"jr.weight": [0.01, -1.0]}}, "jr.weight"),  # out of range in one trial
        ({"grid": {"train.epochs": [0]}}, "train.epochs"),
        ({"grid": {"jr.layers": [{"block9": 0.1}]}}, "jr.layers.block9"),  # no such block (needs the model)
        ({"grid": {"lam": [0.1]}}, "grid.lam"),  # variable nobody uses
        ({"evaluation": {**TINY_EVAL, "attacks": ["nope"]}}, "nope"),
        ({"evaluation": {**TINY_EVAL, "n": 0}}, "evaluation.n"),
        ({"evaluation": {**TINY_EVAL, "n": 31}}, "evaluation.n"),  # more than the validation images
        ({"resources": {"concurrent": 0}}, "resources.concurrent"),
        ({"choice": {"twin": {"jr_mode": "none"}}}, "choice.twin.jr_mode"),
    ],
)
def test_bad_sweep_file_fails_before_any_trial(fake_cifar, tmp_path, capsys, over, names):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep(**over)))
    out = tmp_path / "out"
    code, _, err = run_cli(["sweep", "--config", path, "--out", out, "--local", "--quiet"], capsys)
    assert_one_line_error(code, err, "tinyrobust sweep")
    assert names in err
    assert not (out / "runs").exists()


def test_missing_ray_says_how_to_install(fake_cifar, tmp_path, capsys, monkeypatch):
    import sys

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep()))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    code, _, err = run_cli(["sweep", "--config", path, "--out", tmp_path / "out", "--quiet"], capsys)
    assert_one_line_error(code, err, "tinyrobust sweep")
    assert "pip install 'tinyrobust[sweep]'" in err


def test_unreachable_address_is_one_line(fake_cifar, tmp_path, capsys):
    pytest.importorskip("ray")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep()))
    code, _, err = run_cli(
        ["sweep", "--config", path, "--out", tmp_path / "out", "--quiet", "--address", "127.0.0.1:9"], capsys
    )  # discard port: nothing listens
    assert_one_line_error(code, err, "tinyrobust sweep")
    assert "127.0.0.1:9" in err and "cannot reach" in err


def test_shipped_sweep_file_is_valid():
    spec = load_sweep(Path(__file__).parents[1] / "configs/sweeps/jr_lambda_cifar10.yaml")
    grid = [t for t in spec.trials if "lambda" in t.values and t.values["jr_mode"] != "per_layer"]
    lams = sorted({t.values["lambda"] for t in grid})
    assert len(lams) >= 5 and lams[0] == pytest.approx(0.001) and lams[-1] == pytest.approx(0.1)
    # per-layer JR's grid reaches further (the widening rule, docs/jacobian.md)
    per_layer = sorted({t.values["lambda"] for t in spec.trials if t.values["jr_mode"] == "per_layer"})
    assert per_layer[0] == pytest.approx(0.001) and per_layer[-1] >= 0.1
    modes = {t.values["jr_mode"] for t in spec.trials}
    assert modes == {"none", "whole", "per_layer", "both"}
    assert {t.cfg.model.quant.weight for t in spec.trials} == {"int4", "ternary_stats"}
    assert all(t.cfg.data.val_size == 5000 for t in spec.trials)
    assert spec.choice["rule"] and spec.choice["max_clean_drop"] == 0.05


def test_shipped_adversarial_method_sweep_is_valid():
    spec = load_sweep(Path(__file__).parents[1] / "configs/sweeps/adv_method_cifar10.yaml")
    methods = {t.values["method"]: t.cfg.train.adversarial for t in spec.trials}
    assert set(methods) == {"fgsm_rs", "pgd3", "trades3"}
    assert methods["pgd3"].method == "pgd" and methods["pgd3"].steps == 3 and methods["trades3"].method == "trades"
    assert all(t.cfg.model.name == "qnn_wide" and t.cfg.model.quant.weight == "ternary_stats" for t in spec.trials)
    assert spec.evaluation["eps"] == 8 and spec.choice["twin"] == {"method": "fgsm_rs"}


def test_choice_rule_respects_the_twin():
    raw = tiny_sweep(
        grid={"lambda": [0.01, 0.1], "jr_mode": {"none": {"jr.weight": 0.0}, "whole": {"jr.weight": "${lambda}"}}},
        choice={"rule": "best robust within 5 points", "twin": {"jr_mode": "none"}, "max_clean_drop": 0.05},
    )
    spec = parse_sweep(raw)
    by = {(t.values["jr_mode"], t.values.get("lambda")): t for t in spec.trials}
    res = {
        by[("none", None)].key: {"status": "done", "val_clean_accuracy": 0.80, "val_robust_accuracy": 0.20},
        by[("whole", 0.01)].key: {"status": "done", "val_clean_accuracy": 0.77, "val_robust_accuracy": 0.25},
        by[("whole", 0.1)].key: {"status": "done", "val_clean_accuracy": 0.70, "val_robust_accuracy": 0.40},
    }
    (c,) = choose(spec, res)
    assert c["chosen"] == by[("whole", 0.01)].name  # 0.1 is more robust but 10 points less clean
    assert c["final"] and (c["scored"], c["trials"]) == (3, 3)
    res[by[("whole", 0.1)].key]["status"] = "failed"
    (c,) = choose(spec, res)
    assert c["chosen"] == by[("whole", 0.01)].name and not c["final"] and c["scored"] == 2  # provisional
    res[by[("whole", 0.01)].key]["val_clean_accuracy"] = 0.60
    assert choose(spec, res)[0]["chosen"] is None


def test_results_table_pairs_each_trial_with_its_twin_and_backfills_older_trials(tmp_path):
    """robust_minus_twin is paired on the same validation images; a trial scored before val_robust was
    recorded gets it from its attack parts, only when they reproduce its recorded robust accuracy."""
    import json

    from tinyrobust.sweep.engine import write_tables
    from tinyrobust.sweep.trial import read_result

    raw = tiny_sweep(
        grid={"lambda": [0.01], "jr_mode": {"none": {"jr.weight": 0.0}, "whole": {"jr.weight": "${lambda}"}}},
        choice={"rule": "r", "twin": {"jr_mode": "none"}, "max_clean_drop": 0.05},
    )
    spec = parse_sweep(raw)
    twin, jr = sorted(spec.trials, key=lambda t: t.values["jr_mode"] != "none")
    old = tmp_path / "old"  # the twin, scored before val_robust existed: parts only
    (old / "sweep_attacks").mkdir(parents=True)
    for a, robust in (("apgd", "1101100000"), ("square", "1011100000")):
        (old / "sweep_attacks" / f"{a}_at_eps2.json").write_text(json.dumps({"entry": {"robust": robust}}))
    base = {"status": "done", "attacks": ["apgd", "square"], "eps": 2, "n": 10, "val_clean_accuracy": 0.8}
    (old / "sweep_trial.json").write_text(json.dumps({**base, "val_robust_accuracy": 0.3}))
    assert read_result(old)["val_robust"] == "1001100000"  # worst case: both attacks
    (old / "sweep_trial.json").write_text(json.dumps({**base, "val_robust_accuracy": 0.4}))
    assert "val_robust" not in read_result(old)  # the parts do not give the recorded figure: no pairing
    (old / "sweep_trial.json").write_text(json.dumps({**base, "val_robust_accuracy": 0.3}))
    results = {
        twin.key: read_result(old),
        jr.key: {**base, "val_robust_accuracy": 0.5, "val_robust": "1111100000"},
    }
    write_tables(spec, tmp_path, results)
    rows = {r["trial"]: r for r in json.loads((tmp_path / "results.json").read_text())["trials"]}
    assert rows[jr.name]["robust_minus_twin"] == pytest.approx(0.2)
    lo, hi = rows[jr.name]["robust_minus_twin_ci95"]
    assert lo < 0.2 < hi and rows[twin.name]["robust_minus_twin"] is None


def test_tradeoff_lines_follow_lambda_and_mark_twin_floor_and_choice(tmp_path):
    """The trade-off picture's data: one line per JR mode ordered by lambda, per weight quantizer; the twin
    apart with the rule's floor; the chosen trial the rule picks; unscored trials left out."""
    from tinyrobust.sweep.engine import write_tables
    from tinyrobust.sweep.tradeoff import tradeoff_panels

    raw = tiny_sweep(
        grid={
            "model.quant.weight": ["int4", "ternary_stats"],
            "lambda": [0.1, 0.01],
            "jr_mode": {
                "none": {"jr.weight": 0.0},
                "whole": {"jr.weight": "${lambda}"},
                "per_layer": {"jr.weight": 0.0, "jr.layers": {"block1": "${lambda}"}},
            },
        },
        choice={"rule": "r", "group_by": ["model.quant.weight"], "twin": {"jr_mode": "none"}, "max_clean_drop": 0.05},
    )
    spec = parse_sweep(raw)
    by = {(t.values["model.quant.weight"], t.values["jr_mode"], t.values.get("lambda")): t for t in spec.trials}
    score = {  # (clean, robust) for int4; ternary_stats has only its twin and one trial scored
        ("int4", "none", None): (0.80, 0.20),
        ("int4", "whole", 0.01): (0.77, 0.26),
        ("int4", "whole", 0.1): (0.70, 0.40),
        ("int4", "per_layer", 0.1): (0.79, 0.22),
        ("int4", "per_layer", 0.01): (0.80, 0.21),
        ("ternary_stats", "none", None): (0.70, 0.15),
        ("ternary_stats", "whole", 0.1): (0.60, 0.30),
    }
    results = {
        by[k].key: {
            "status": "done",
            "val_clean_accuracy": c,
            "val_robust_accuracy": r,
            "val_robust_ci95": [r - 0.03, r + 0.03],
        }
        for k, (c, r) in score.items()
    }
    panels = {p["group"]["model.quant.weight"]: p for p in tradeoff_panels(spec, results)}
    int4, tern = panels["int4"], panels["ternary_stats"]
    assert int4["twin"]["trial"] == by[("int4", "none", None)].name
    assert int4["floor"] == pytest.approx(0.75)
    assert set(int4["lines"]) == {"whole", "per_layer"}
    assert [q["at"]["lambda"] for q in int4["lines"]["per_layer"]] == [0.01, 0.1]  # ordered by lambda, not grid
    assert [q["clean"] for q in int4["lines"]["whole"]] == [0.77, 0.70]
    assert int4["chosen"]["trial"] == by[("int4", "whole", 0.01)].name  # 0.40 is 10 points below the twin
    assert tern["chosen"] is None and list(tern["lines"]) == ["whole"] and len(tern["lines"]["whole"]) == 1
    write_tables(spec, tmp_path, results)
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tradeoff.png" in (tmp_path / "results.md").read_text()


def test_no_tradeoff_picture_before_any_trial_is_scored(tmp_path):
    from tinyrobust.sweep.engine import write_tables

    write_tables(parse_sweep(tiny_sweep()), tmp_path, {})
    assert not (tmp_path / "tradeoff.png").exists() and "tradeoff.png" not in (tmp_path / "results.md").read_text()


def test_tables_only_rewrites_the_table_from_scored_trials_without_running_any(tmp_path, capsys, monkeypatch):
    import json

    import tinyrobust.sweep.engine as engine

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep()))
    spec = load_sweep(path)
    out = tmp_path / "out"
    code, _, err = run_cli(["sweep", "--config", path, "--out", out, "--tables-only"], capsys)
    assert_one_line_error(code, err, "tinyrobust sweep")
    assert "holds no trials" in err
    done = out / "runs" / spec.trials[0].name
    done.mkdir(parents=True)
    (done / "sweep_trial.json").write_text(json.dumps({"status": "done", "val_clean_accuracy": 0.5}))
    monkeypatch.setattr(engine, "run_sweep", lambda *a, **k: pytest.fail("--tables-only must not run trials"))
    code, stdout, _ = run_cli(["sweep", "--config", path, "--out", out, "--tables-only"], capsys)
    assert code == 0 and "1 of 2 trials scored" in stdout
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert [r["status"] for r in rows] == ["done", "pending"] and rows[0]["val_clean_accuracy"] == 0.5


# ------------------------------------------------------------------ running (in-process executor)


def _write(tmp_path, raw) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_sweep_runs_resumes_and_records_failures(fake_cifar, one_thread, tmp_path, monkeypatch):
    import tinyrobust.train.loop as loop

    spec = load_sweep(_write(tmp_path, tiny_sweep(grid={"seed": [0, 1, 2]})))
    out = tmp_path / "out"
    real_train, real_save = loop.train_run, loop.save_checkpoint
    calls = []

    def flaky_train(cfg, run_dir, **kw):
        calls.append(cfg.seed)
        if cfg.seed == 1:
            raise RuntimeError("boom in trial seed 1")
        return real_train(cfg, run_dir, **kw)

    def killed_after_first_epoch(path, state):  # seed 2: "killed" right after epoch 1's checkpoint
        real_save(path, state)
        if "-" in Path(path).parent.name and state["epoch"] == 1 and calls[-1] == 2:
            raise KeyboardInterrupt  # a trial's kill: execute_trial lets it through, like Ctrl-C

    monkeypatch.setattr(loop, "train_run", flaky_train)
    monkeypatch.setattr(loop, "save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, executor=LocalExecutor(), progress=False)
    by_seed = {t.cfg.seed: out / "runs" / t.name for t in spec.trials}
    assert json.loads((by_seed[0] / RESULT_FILE).read_text())["status"] == "done"
    failed = json.loads((by_seed[1] / RESULT_FILE).read_text())
    assert failed["status"] == "failed" and "boom in trial seed 1" in failed["error"]
    assert (by_seed[2] / "checkpoint.pt").is_file() and not (by_seed[2] / "summary.json").exists()
    epoch1 = (by_seed[2] / "metrics.jsonl").read_text().splitlines()[0]
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in table] == ["done", "failed", "pending"]

    # rerun: seed 0 is not redone, seed 1 now works, seed 2 resumes from its epoch-1 checkpoint
    calls.clear()
    monkeypatch.setattr(
        loop, "train_run", lambda cfg, run_dir, **kw: (calls.append(cfg.seed), real_train(cfg, run_dir, **kw))[1]
    )
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    res = run_sweep(spec, out, executor=LocalExecutor(), progress=False)
    assert res["skipped"] == 1 and res["done"] == 3 and res["failed"] == 0
    assert sorted(calls) == [1, 2]
    lines = (by_seed[2] / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == epoch1  # epoch 1 kept, not trained again
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in table] == ["done"] * 3
    for r in table:
        assert 0 <= float(r["val_robust_accuracy"]) <= float(r["val_clean_accuracy"]) <= 1
        assert float(r["median_jacobian_sq_frobenius"]) > 0 and float(r["weight_kb"]) > 0
        assert r["seed"] in ("0", "1", "2")
    md = (out / "results.md").read_text()
    assert "Validation images only" in md and md.count("| done |") == 3
    # a third run does nothing
    calls.clear()
    res = run_sweep(spec, out, executor=LocalExecutor(), progress=False)
    assert res["skipped"] == 3 and calls == []


@pytest.mark.slow
def test_sweep_on_local_ray(fake_cifar, tmp_path, capsys):
    """Two trials on a real local Ray (2 CPUs, one thread each), through the command line."""
    pytest.importorskip("ray")
    ev = {"attacks": ["apgd"], "params": {"apgd": {"steps": 3}}, "n": 10, "jacobian_n": 10}
    path = _write(tmp_path, tiny_sweep(grid={"seed": [0, 1]}, evaluation=ev))
    out = tmp_path / "out"
    code, stdout, err = run_cli(["sweep", "--config", path, "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert "2 trials done" in stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["done", "done"]
    for r in rows:
        env = json.loads((out / "runs" / r["trial"] / "env.json").read_text())
        assert env["threads"] == 1


def test_trial_id_depends_only_on_settings_that_differ_from_the_defaults():
    from tinyrobust.config import config_from_dict
    from tinyrobust.sweep.spec import config_key

    a = config_from_dict({"name": "a", "jr": {"weight": 0.01}})
    b = config_from_dict({"name": "b", "jr": {"weight": 0.01}, "train": {"threads": 2}})  # 2 is the default
    c = config_from_dict({"name": "a", "jr": {"weight": 0.02}})
    assert config_key(a) == config_key(b) != config_key(c)


def test_a_ray_trial_runs_in_its_own_process_and_failures_come_back(tmp_path):
    """What a Ray task runs: execute_trial in a fresh process (no Ray threads beside the training);
    a trial that fails, or whose process dies, comes back as a failed result and is written down."""
    from tinyrobust.sweep.trial import execute_trial_in_subprocess, read_result

    payload = {
        "key": "k1",
        "values": {"seed": 0},
        "config": {"name": "x", "model": {"name": "no_such_model"}},
        "run_dir": str(tmp_path / "bad"),
        "evaluation": {},
        "threads": 1,
    }
    res = execute_trial_in_subprocess(payload)  # fails inside execute_trial (no data here): its own record
    assert res["status"] == "failed" and res["error"] and "traceback" in res
    assert read_result(tmp_path / "bad") == res
    assert not (tmp_path / "bad" / "sweep_payload.json").exists()  # it may name machine paths

    # the process itself dies before execute_trial can record anything (bad thread count)
    payload = {**payload, "run_dir": str(tmp_path / "dead"), "threads": "many"}
    res = execute_trial_in_subprocess(payload)
    assert res["status"] == "failed" and "trial process ended with code 1" in res["error"]
    assert "ValueError" in res["error"] and read_result(tmp_path / "dead") == res
    # tried again and dying differently: the new reason, not the earlier try's recorded failure
    res = execute_trial_in_subprocess({**payload, "threads": "none"})
    assert "'none'" in res["error"] and read_result(tmp_path / "dead") == res
