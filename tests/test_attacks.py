"""Attacks on tiny models trained in a second on synthetic data: every attack runs and returns
sane numbers, budgets are validated, EOT is really used, and a model whose gradients are
masked (input rounding) is caught by the masking checks while a normal one passes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from attack_toys import SHAPE, K, RoundedInput, make_data, train  # noqa: F401
from tinyrobust.attacks import (
    ATTACKS,
    Target,
    attack_run,
    check_masking,
    expand_attack_names,
    format_table,
    list_attacks,
    run_attacks,
)
from tinyrobust.attacks.cli_command import add_parser, parse_eps, parse_overrides
from tinyrobust.attacks.cli_command import run as cli_run
from tinyrobust.data.datasets import ArrayDataset, DatasetInfo
from tinyrobust.errors import AttackError

# Budgets small enough for a test, large enough for each attack to do something.
CHEAP = {
    "pgd": {"steps": 5},
    "apgd": {"steps": 10},
    "bpda": {"steps": 10},
    "autoattack": {"steps": 5, "square_queries": 50},
    "cw": {"steps": 10, "binary_search_steps": 2},
    "square": {"queries": 50},
    "transfer": {"steps": 5},
    "hopskipjump": {"max_iter": 2, "max_eval": 50, "init_eval": 10, "init_size": 20},
    "boundary": {"max_iter": 10, "num_trial": 5, "sample_size": 5, "init_size": 20},
    "zoo": {"max_iter": 2, "nb_parallel": 16},
}
NO_PROBES = {"masking_checks": False, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # conftest: one torch thread


class Noisy(nn.Module):
    """A stochastic model (like stochastic quantizers at inference) that counts its forward passes."""

    stochastic = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x + 0.05 * torch.randn_like(x))


@pytest.fixture(scope="module")
def model():
    return train(0)


@pytest.fixture(scope="module")
def data():
    return make_data(48, 2)


def test_family_expansion_and_unknown_names():
    assert expand_attack_names("white") == ["fgsm", "pgd", "apgd", "bpda", "cw"]
    assert expand_attack_names("ensemble") == ["autoattack"]
    assert "transfer" in expand_attack_names("black")
    assert "transfer" not in expand_attack_names("all", surrogate_available=False)
    assert expand_attack_names("pgd,white,pgd")[0] == "pgd"
    assert len(expand_attack_names("all")) == len(ATTACKS.names())
    for bad in ("pgd,foo", "", " , "):
        with pytest.raises(AttackError) as err:
            expand_attack_names(bad)
        assert "square" in str(err.value) and "white" in str(err.value) and "black" in str(err.value)


@pytest.mark.parametrize("eps", [[0], [-1, 2], [256], [float("nan")], ["a"], []])
def test_bad_eps_rejected(model, data, eps):
    with pytest.raises(AttackError, match=r"epsilon|no epsilon"):
        run_attacks(model, *data, ["fgsm"], eps, **NO_PROBES)


def test_bad_inputs_and_params_rejected(model, data):
    x, y = data
    with pytest.raises(AttackError, match="valid: steps, step_scale, random_starts"):
        run_attacks(model, x, y, ["pgd"], [8], params={"pgd": {"stepz": 3}}, **NO_PROBES)
    with pytest.raises(AttackError, match="pgd.steps: expected an integer"):
        run_attacks(model, x, y, ["pgd"], [8], params={"pgd": {"steps": "many"}}, **NO_PROBES)
    with pytest.raises(AttackError, match="not being run"):
        run_attacks(model, x, y, ["pgd"], [8], params={"square": {"queries": 5}}, **NO_PROBES)
    with pytest.raises(AttackError, match=r"\[0, 1\]"):
        run_attacks(model, x * 255, y, ["fgsm"], [8], **NO_PROBES)
    with pytest.raises(AttackError, match="unknown attack"):
        run_attacks(model, x, y, ["nope"], [8], **NO_PROBES)


def test_transfer_needs_a_surrogate(model, data):
    with pytest.raises(AttackError, match="surrogate"):
        run_attacks(model, *data, ["transfer"], [8], **NO_PROBES)
    res = run_attacks(
        model, *data, ["pgd", "transfer"], [8], surrogate=model, params={"pgd": {"steps": 2}}, **NO_PROBES
    )  # a transfer from itself is white-box: skipped, with the reason
    assert "transfer" not in res["attacks"] and "own weights" in res["skipped"]["transfer"]
    assert "n/a" in format_table(res)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_runs_and_reports_sane_fields(model, data, name):
    x, y = data[0][:16], data[1][:16]
    surrogate = train(1) if name == "transfer" else None
    res = run_attacks(
        model, x, y, [name], [4, 8], surrogate=surrogate, params={name: CHEAP.get(name, {})}, seed=1, **NO_PROBES
    )
    json.dumps(res)  # JSON-able
    spec, entry = ATTACKS.get(name), res["attacks"][name]
    assert entry["family"] == spec.family and entry["threat_model"] == spec.describe(entry["params"])
    for key in ("4", "8"):
        r = entry["results"][key]
        assert 0 <= r["robust_accuracy"] <= res["clean_accuracy"]
        assert 0 <= r["attack_success_rate"] <= 1
        if r["n_broken"]:
            assert r["l2_median"] > 0 and r["linf_median"] > 0
            assert r["linf_mean"] <= float(key) + 1e-3  # eps-bounded, or counted only within eps
        if spec.family == "black" and spec.uses_eps:
            assert r["queries"] > 0 and r["queries_per_image"] > 0
    if spec.uses_eps:
        assert entry["results"]["8"]["robust_accuracy"] < res["clean_accuracy"]  # the attack works
    else:
        u = entry["unbounded"]
        assert u["accuracy_after_attack"] <= entry["results"]["8"]["robust_accuracy"]
        assert u["wall_time_s"] >= 0 and (spec.family == "white" or u["queries_per_image"] > 0)
    assert set(res["worst_case"]) == {"4", "8"}


def test_pgd_is_monotone_in_eps_and_beats_fgsm(model, data):
    res = run_attacks(model, *data, ["fgsm", "pgd"], [1, 2, 4, 8], **NO_PROBES)
    pgd = [res["attacks"]["pgd"]["results"][k]["robust_accuracy"] for k in ("1", "2", "4", "8")]
    fgsm = [res["attacks"]["fgsm"]["results"][k]["robust_accuracy"] for k in ("1", "2", "4", "8")]
    assert pgd == sorted(pgd, reverse=True)
    assert all(p <= f for p, f in zip(pgd, fgsm))
    assert pgd[-1] < 0.2 < res["clean_accuracy"]
    assert [res["worst_case"][k]["robust_accuracy"] for k in ("1", "2", "4", "8")] == pgd
    assert "robust accuracy" in format_table(res)


def test_results_are_reproducible(model, data):
    args = (model, *data, ["pgd", "square"], [4])
    kw = dict(params={"square": {"queries": 50}}, seed=3, **NO_PROBES)
    a, b = run_attacks(*args, **kw), run_attacks(*args, **kw)
    for name in ("pgd", "square"):
        assert a["attacks"][name]["results"]["4"] | {"wall_time_s": 0} == b["attacks"][name]["results"]["4"] | {
            "wall_time_s": 0
        }


def test_eot_averages_gradients_over_samples(model, data):
    x = torch.from_numpy(data[0][:8])
    y = torch.from_numpy(data[1][:8])
    noisy = Noisy(model)

    def fn(v):
        logits = noisy(v)
        return nn.functional.cross_entropy(logits, y, reduction="none"), logits

    single, eot = Target(noisy, SHAPE, K, eot_samples=1), Target(noisy, SHAPE, K, eot_samples=4)
    torch.manual_seed(0)
    expected = torch.stack([single.value_and_grad(x, fn)[1] for _ in range(4)]).mean(0)
    torch.manual_seed(0)
    assert torch.allclose(eot.value_and_grad(x, fn)[1], expected, atol=1e-6)
    onehot = np.eye(K, dtype=np.float32)[y.numpy()]  # what ART attacks pass
    torch.manual_seed(0)
    expected = np.mean([single.art.loss_gradient(x.numpy(), onehot) for _ in range(4)], axis=0)
    torch.manual_seed(0)
    assert np.allclose(eot.art.loss_gradient(x.numpy(), onehot), expected, atol=1e-6)
    assert not np.allclose(single.art.loss_gradient(x.numpy(), onehot), expected, atol=1e-6)

    calls = {}
    for k in (1, 3):
        noisy.calls = 0
        res = run_attacks(noisy, *data, ["pgd"], [4], params={"pgd": {"steps": 10}}, eot_samples=k, **NO_PROBES)
        calls[k] = noisy.calls
        assert res["eot_samples"] == k and res["stochastic"]
    assert calls[3] >= calls[1] + 2 * 10  # 10 gradient steps, each with two extra passes
    assert run_attacks(model, *data, ["fgsm"], [4], eot_samples=3, **NO_PROBES)["eot_samples"] == 1


def test_masking_checks_flag_a_masked_model_and_pass_a_normal_one(model, data):
    kw = dict(params={"square": {"queries": 200}}, progress=False)
    normal = run_attacks(model, *data, ["pgd", "square"], [2, 4, 8], **kw)["masking_checks"]
    assert normal["passed"], normal
    assert all(c["passed"] for c in normal["checks"])

    masked = run_attacks(RoundedInput(model), *data, ["pgd", "square"], [2, 4, 8], **kw)
    verdict = masked["masking_checks"]
    assert not verdict["passed"]
    assert "gradient masking suspected" in verdict["verdict"]
    failed = {c["check"] for c in verdict["checks"] if c["passed"] is False}
    assert {"large_eps_breaks_model", "white_box_beats_black_box"} <= failed
    assert "FAIL large_eps_breaks_model" in format_table(masked)


def test_check_masking_on_hand_made_results():
    def entry(family, accs):
        return {"family": family, "results": {k: {"robust_accuracy": v} for k, v in accs.items()}}

    base = {"n": 100, "eps": [2.0, 8.0]}
    ok = check_masking(
        {
            **base,
            "attacks": {"pgd": entry("white", {"2": 0.5, "8": 0.1}), "square": entry("black", {"2": 0.6, "8": 0.2})},
        }
    )
    assert ok["passed"] and [c["passed"] for c in ok["checks"]] == [True, None, True, None, None, None, None, None]
    bad = check_masking(
        {
            **base,
            "attacks": {"pgd": entry("white", {"2": 0.3, "8": 0.5}), "square": entry("black", {"2": 0.3, "8": 0.1})},
        }
    )
    assert not bad["passed"] and "monotone_in_eps" in bad["verdict"] and "white_box_beats_black_box" in bad["verdict"]
    within_tolerance = check_masking({**base, "attacks": {"pgd": entry("white", {"2": 0.30, "8": 0.32})}})
    assert within_tolerance["passed"]


def test_cli_parsing_and_list(capsys):
    assert parse_overrides(["pgd.steps=50", "masking.large_eps=128", "zoo.learning_rate=0.5", "x.y=abc"]) == {
        "pgd": {"steps": 50},
        "masking": {"large_eps": 128},
        "zoo": {"learning_rate": 0.5},
        "x": {"y": "abc"},
    }
    for bad in ("pgd=5", "steps=5", "pgd.steps"):
        with pytest.raises(AttackError, match="ATTACK.KEY=VALUE"):
            parse_overrides([bad])
    assert parse_eps("1, 2,8") == [1.0, 2.0, 8.0]
    with pytest.raises(AttackError, match="comma-separated"):
        parse_eps("1,two")

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    assert cli_run(parser.parse_args(["attack", "--list"])) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ATTACKS) and listing == list_attacks() + "\n"
    with pytest.raises(AttackError, match="--run"):
        cli_run(parser.parse_args(["attack"]))


@pytest.fixture
def fake_run(monkeypatch, model, data):
    """Stand-ins for tinyrobust.runs / tinyrobust.data that return the data layer's REAL types
    (DatasetInfo, ArrayDataset), so a field the real types lack cannot hide behind the fake.
    Returns a dict whose "info" a test may replace (DatasetInfo is frozen)."""
    x, y = data
    images = np.round(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8)  # uint8 NHWC like ArrayDataset
    state = {
        "info": DatasetInfo(
            name="toy", num_classes=K, input_shape=SHAPE, mean=(0.0,) * 3, std=(1.0,) * 3, kind="image", augment=False
        )
    }
    runs = types.ModuleType("tinyrobust.runs")
    other = train(1)  # a separately trained model: what a folder named "surrogate..." holds
    runs.load_run = lambda run_dir: SimpleNamespace(
        model=other if Path(run_dir).name.startswith("surrogate") else model,
        config={"data": {"dataset": "toy"}, "model": {"name": "tiny-cnn"}},
        run_dir=Path(run_dir),
        dataset_info=state["info"],
    )
    data_mod = types.ModuleType("tinyrobust.data")
    data_mod.load_dataset = lambda name, split, data_dir=None: ArrayDataset(
        name="toy",
        split=split,
        x=images,
        y=y,
        classes=[str(k) for k in range(K)],
        source=f"{data_dir or '/nowhere'}/toy-images.tar.gz (synthetic)",
    )
    loader = types.ModuleType("tinyrobust.data.loader")
    loader.stratified_subset = lambda labels, n, seed: np.random.default_rng(seed).permutation(len(labels))[:n]
    loader.nested_stratified_order = loader.stratified_subset
    loader.to_tensors = lambda ds, idx: (
        torch.from_numpy(ds.x[idx]).permute(0, 3, 1, 2).float() / 255,
        torch.from_numpy(ds.y[idx]),
    )
    for name, mod in (("tinyrobust.runs", runs), ("tinyrobust.data", data_mod), ("tinyrobust.data.loader", loader)):
        monkeypatch.setitem(sys.modules, name, mod)
    return state


def test_attack_run_writes_robustness_json(fake_run, tmp_path):
    res = attack_run(
        tmp_path / "run",
        "fgsm,black",
        [8],
        n=20,
        out=tmp_path / "out",
        params={
            "square": {"queries": 20},
            "hopskipjump": CHEAP["hopskipjump"],
            "boundary": CHEAP["boundary"],
            "zoo": CHEAP["zoo"],
            "masking": {"many_steps": 30},
        },
        progress=False,
    )
    written = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert written["meta"]["model"] == "tiny-cnn" and written["meta"]["subset"]["n"] == 20
    assert written["meta"]["data_kind"] == "image" and "pixel units /255" in written["meta"]["threat_model"]
    assert "transfer" not in written["attacks"] and any("transfer" in n for n in written["notes"])
    assert written["masking_checks"]["checks"] and res["n"] == 20
    again = attack_run(
        tmp_path / "run", ["fgsm"], [8], n=20, out=tmp_path / "out2", progress=False, data_dir=tmp_path / "data"
    )
    assert again["meta"]["subset"]["indices_sha1"] == res["meta"]["subset"]["indices_sha1"]
    # the dataset source is really recorded, and without the machine's data path
    assert again["meta"]["dataset_source"] == "$TINYROBUST_DATA/toy-images.tar.gz (synthetic)"


def test_attack_run_rejects_a_dataset_that_does_not_fit(fake_run, tmp_path):
    fake_run["info"] = dataclasses.replace(fake_run["info"], num_classes=10)
    with pytest.raises(AttackError, match="outputs 4 classes"):
        attack_run(tmp_path, ["fgsm"], [8], n=8, progress=False)
    fake_run["info"] = dataclasses.replace(fake_run["info"], input_shape=(1, 28, 28))
    with pytest.raises(AttackError, match=r"shape \(3, 8, 8\) but .* expects \(1, 28, 28\)"):
        attack_run(tmp_path, ["fgsm"], [8], n=8, progress=False)


def test_cli_attack_end_to_end(fake_run, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "attack",
            "--run",
            str(tmp_path),
            "--attacks",
            "fgsm,pgd",
            "--eps",
            "2,8",
            "--n",
            "16",
            "--set",
            "pgd.steps=5",
            "--set",
            "masking.many_steps=30",
        ]
    )
    assert cli_run(args) == 0
    out = capsys.readouterr().out
    assert "clean accuracy" in out and "verdict:" in out and "robustness.json" in out
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["attacks"]["pgd"]["params"]["steps"] == 5
    with pytest.raises(AttackError, match="unknown parameter pgd.stepz"):
        cli_run(parser.parse_args(["attack", "--run", str(tmp_path), "--attacks", "pgd", "--set", "pgd.stepz=5"]))


def test_cli_cascade_and_several_surrogates(fake_run, tmp_path, capsys):
    """--surrogate KEY=RUN (repeatable) gives one transfer@KEY each, never a transfer from the target
    itself; --cascade attacks each image only until one attack breaks it; bad --surrogate: one line."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    run, sur = tmp_path / "run", tmp_path / "surrogate_a"
    argv = [
        "attack",
        "--run",
        str(run),
        "--attacks",
        "fgsm,pgd,transfer",
        "--eps",
        "8",
        "--n",
        "16",
        "--set",
        "pgd.steps=3",
        "--set",
        "transfer.steps=3",
        "--cascade",
        "--out",
        str(tmp_path / "o"),
        "--surrogate",
        f"a={sur}",
        "--surrogate",
        f"self={run}",
    ]
    assert cli_run(parser.parse_args(argv)) == 0
    saved = json.loads((tmp_path / "o" / "robustness.json").read_text())
    assert saved["cascade"] == ["fgsm", "pgd", "transfer@a"] and "transfer@self" in saved["skipped"]
    assert "." in saved["attacks"]["transfer@a"]["results"]["8"]["robust"] or (
        saved["attacks"]["transfer@a"]["results"]["8"]["n_attacked"] < saved["n_clean_correct"]
    )
    with pytest.raises(AttackError, match="KEY=RUN"):
        cli_run(parser.parse_args(argv[:-4] + ["--surrogate", str(sur), "--surrogate", "b="]))
