"""Issue 11, attack side: the cascade and its per-image strings, worst case with a Wilson interval,
transfer from several surrogates (never from itself), resume keys that include the weights, masking
checks that fail on models built to trip them, BPDA through quantizers, standard AutoAttack, and
nested test subsets. Tiny models on synthetic 8x8 images, one thread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attack_toys import SHAPE, K, RoundedInput, make_data, train
from tinyrobust.attacks import Target, format_table, run_attacks
from tinyrobust.attacks import runner as runner_mod
from tinyrobust.attacks.bpda import BPDA, BPDAModel, smooth_stand_in
from tinyrobust.attacks.evaluate import dataset_source
from tinyrobust.attacks.masking import CHECKS
from tinyrobust.attacks.torch_attacks import AutoAttackAPGD
from tinyrobust.data.loader import nested_stratified_order
from tinyrobust.errors import AttackError
from tinyrobust.stats import wilson

NO_PROBES = {"masking_checks": False, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # conftest: one torch thread


@pytest.fixture(scope="module")
def model():
    return train(0)


@pytest.fixture(scope="module")
def surrogate():
    return train(1)


@pytest.fixture(scope="module")
def data():
    return make_data(40, 2)


def _strings(res, eps):
    return {a: e["results"][eps]["robust"] for a, e in res["attacks"].items()}


def test_cascade_runs_each_attack_on_the_survivors_and_transfers_last(model, surrogate, data):
    x, y = data
    names = ["transfer@s", "fgsm", "pgd", "cw", "square"]
    res = run_attacks(
        model,
        x,
        y,
        names,
        [1, 8],
        surrogates={"s": surrogate},
        cascade=True,
        seed=2,
        white_box_in_full=False,
        params={
            "pgd": {"steps": 3},
            "cw": {"steps": 5, "binary_search_steps": 1},
            "square": {"queries": 30},
            "transfer": {"steps": 3},
        },
        **NO_PROBES,
    )
    json.dumps(res)
    assert res["cascade"] == ["fgsm", "pgd", "cw", "square", "transfer@s"]  # transfers last
    clean = res["clean_correct"]
    assert len(clean) == len(x) and set(clean) <= {"0", "1"}
    for eps in ("1", "8"):
        strings = _strings(res, eps)
        alive = [c == "1" for c in clean]
        for name in res["cascade"]:
            s = strings[name]
            assert len(s) == len(x)
            for i, ch in enumerate(s):
                if not clean[i] == "1":
                    assert ch == "0"  # clean-wrong
                elif alive[i]:
                    assert ch in "01"  # attacked
                else:
                    assert ch == "."  # broken earlier: not attacked again
            assert res["attacks"][name]["results"][eps]["n_attacked"] == sum(alive)
            alive = [a and c == "1" for a, c in zip(alive, s)]
        wc = res["worst_case"][eps]
        assert wc["robust"] == "".join("1" if a else "0" for a in alive)
        k = wc["robust"].count("1")
        assert wc["robust_accuracy"] == k / len(x) and wc["ci95"] == pytest.approx(list(wilson(k, len(x))), abs=1e-6)
        assert wc["attacks"] == res["cascade"]
    assert res["worst_case"]["8"]["robust_accuracy"] < res["clean_accuracy"]
    assert res["attacks"]["transfer@s"]["surrogate"] == "s"
    table = format_table(res)
    assert "95% CI (Wilson)" in table and "cascade" in table


def test_leading_white_box_attacks_run_in_full_so_the_winner_is_measured(model, data):
    res = run_attacks(
        model,
        *data,
        ["fgsm", "pgd", "square"],
        [8],
        cascade=True,
        params={"pgd": {"steps": 3}, "square": {"queries": 30}},
        **NO_PROBES,
    )
    s = _strings(res, "8")
    assert "." not in s["fgsm"] and "." not in s["pgd"]
    both = sum(a == b == "1" for a, b in zip(s["fgsm"], s["pgd"]))
    assert res["attacks"]["square"]["results"]["8"]["n_attacked"] == both
    winner = res["white_box_winner"]["8"]
    assert set(winner["compared"]) == {"fgsm", "pgd"} and winner["robust_accuracy"] == min(winner["compared"].values())


def test_without_cascade_every_attack_sees_every_clean_correct_image(model, data):
    res = run_attacks(model, *data, ["fgsm", "pgd"], [4], params={"pgd": {"steps": 3}}, **NO_PROBES)
    n_correct = res["n_clean_correct"]
    for name, s in _strings(res, "4").items():
        assert "." not in s and res["attacks"][name]["results"]["4"]["n_attacked"] == n_correct
    assert res["cascade"] is None and res["white_box_winner"]["4"]["attack"] in ("fgsm", "pgd")


def test_several_surrogates_and_never_a_transfer_from_itself(model, surrogate, data):
    twin = train(0)  # same seed, same weights as the target: a copy of itself
    res = run_attacks(
        model,
        *data,
        ["transfer"],
        [8],
        surrogates={"other": surrogate, "twin": twin},
        params={"transfer": {"steps": 3}},
        **NO_PROBES,
    )
    assert list(res["attacks"]) == ["transfer@other"]
    assert "own weights" in res["skipped"]["transfer@twin"]
    assert res["surrogate_sha256_weights"]["other"] != res["model_sha256_weights"]
    with pytest.raises(AttackError, match="surrogate named 'nope'"):
        run_attacks(model, *data, ["transfer@nope"], [8], surrogates={"other": surrogate}, **NO_PROBES)


def test_resume_reuses_finished_attacks_but_not_after_the_weights_change(model, surrogate, data, tmp_path, monkeypatch):
    calls = []
    real = runner_mod._run_one
    monkeypatch.setattr(runner_mod, "_run_one", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    kw = dict(params={"pgd": {"steps": 3}, "transfer": {"steps": 3}}, resume_dir=tmp_path, **NO_PROBES)
    first = run_attacks(model, *data, ["pgd", "transfer@s"], [4], surrogates={"s": surrogate}, **kw)
    assert calls == ["pgd", "transfer@s"]
    again = run_attacks(model, *data, ["pgd", "transfer@s"], [4], surrogates={"s": surrogate}, **kw)
    assert calls == ["pgd", "transfer@s"] and again["attacks"] == first["attacks"]  # nothing redone
    # the attack cost counts the reused parts' recorded seconds; wall_time_s is this call's only
    parts = [r["wall_time_s"] for e in first["attacks"].values() for r in e["results"].values()]
    assert len(parts) == 2 and again["attack_seconds"] == first["attack_seconds"] == pytest.approx(sum(parts), abs=2e-3)
    assert first["attack_seconds"] <= first["wall_time_s"]

    retrained_surrogate = train(2)
    run_attacks(model, *data, ["pgd", "transfer@s"], [4], surrogates={"s": retrained_surrogate}, **kw)
    assert calls[2:] == ["transfer@s"]  # only the part that depends on the surrogate

    perturbed = train(0)
    with torch.no_grad():
        perturbed[0].weight.add_(1e-3)
    run_attacks(perturbed, *data, ["pgd", "transfer@s"], [4], surrogates={"s": retrained_surrogate}, **kw)
    assert calls[3:] == ["pgd", "transfer@s"]  # new weights: nothing stale reused


class Softmaxed(nn.Module):
    """Returns probabilities instead of logits (a classic masking mistake)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x) * 20, dim=1)


class SecretlyRandom(nn.Module):
    """Random at inference but does not declare ``stochastic``: the check must measure it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.05 * torch.randn_like(x))


def _checks(model, data, names, attacks=("pgd",), **kw):
    params = {"pgd": {"steps": 5}, "square": {"queries": 300}, "masking": {"checks": ",".join(names), "many_steps": 20}}
    res = run_attacks(
        model,
        *data,
        list(attacks),
        [2, 8],
        params={k: v for k, v in params.items() if k in attacks or k == "masking"},
        progress=False,
        **kw,
    )
    return res, {c["check"]: c["passed"] for c in res["masking_checks"]["checks"]}


def test_each_new_check_passes_on_a_normal_model_and_fails_on_one_built_to_trip_it(model, data):
    names = [
        "deterministic_outputs",
        "zero_gradients",
        "outputs_not_probabilities",
        "black_box_only_breaks",
        "more_steps_not_worse",
    ]
    res, ok = _checks(model, data, names, attacks=("pgd", "square"))
    assert ok == {n: True for n in names}, res["masking_checks"]
    assert res["masking_probes"]["more_steps"]["eps"] in (0.5, 1, 2, 4, 8)
    assert res["masking_probes"]["more_steps"]["scan_few_steps"]

    res, ok = _checks(SecretlyRandom(model), data, ["deterministic_outputs"], eot_samples=2)
    assert ok == {"deterministic_outputs": False} and res["eot_samples"] == 2 and res["randomness_measured"]

    _, ok = _checks(RoundedInput(model), data, ["zero_gradients", "black_box_only_breaks"], attacks=("pgd", "square"))
    assert ok == {"zero_gradients": False, "black_box_only_breaks": False}

    _, ok = _checks(Softmaxed(model), data, ["outputs_not_probabilities"])
    assert ok == {"outputs_not_probabilities": False}


def test_unknown_check_or_attack_name_is_one_line_listing_the_valid_ones(model, data):
    with pytest.raises(AttackError) as err:
        run_attacks(model, *data, ["pgd"], [2], params={"masking": {"checks": "zero_gradients,bogus"}}, progress=False)
    assert "bogus" in str(err.value) and all(c in str(err.value) for c in CHECKS) and "\n" not in str(err.value)
    with pytest.raises(AttackError, match="apgd.*autoattack"):
        run_attacks(model, *data, ["autoatack"], [2], **NO_PROBES)
    with pytest.raises(AttackError, match=r"\(0, 255\]"):
        run_attacks(model, *data, ["pgd"], [300], **NO_PROBES)


def _tiny_quant_model():
    from tinyrobust.quant.quantizers import conv2d, linear, relu

    torch.manual_seed(0)
    m = nn.Sequential(conv2d(3, 8, 3, weight="int4"), relu("int2"), nn.Flatten(), linear(8 * 64, K, weight="int4"))
    x, y = map(torch.from_numpy, make_data(256, 1))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval()


@pytest.mark.parametrize("surrogate_kind", ["soft", "float"])
def test_bpda_forwards_through_the_real_model_and_backwards_through_a_smooth_stand_in(data, surrogate_kind):
    real = _tiny_quant_model()
    stand_in, replaced = smooth_stand_in(real, surrogate_kind, temperature=4.0)
    assert replaced == 1
    x = torch.from_numpy(data[0][:8]).requires_grad_(True)
    bpda = BPDAModel(real, stand_in)
    out = bpda(x)
    assert torch.equal(out.detach(), real(x).detach())  # scored on the real model
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    (smooth_grad,) = torch.autograd.grad(stand_in(x)[:, 0].sum(), x)
    assert torch.allclose(grad, smooth_grad) and grad.abs().sum() > 0
    res = run_attacks(
        real, *data, ["bpda"], [8], params={"bpda": {"steps": 10, "surrogate": surrogate_kind}}, **NO_PROBES
    )
    assert res["attacks"]["bpda"]["results"]["8"]["robust_accuracy"] < res["clean_accuracy"]
    with pytest.raises(AttackError, match="bpda.surrogate"):
        smooth_stand_in(real, "bogus")


def test_bpda_handles_the_frozen_model_too(data):
    from tinyrobust.models.freeze import freeze

    real = _tiny_quant_model()
    frozen = freeze(real)
    x = torch.from_numpy(data[0][:8])
    stand_in, replaced = smooth_stand_in(frozen, "float")
    ref, _ = smooth_stand_in(real, "float")
    assert replaced == 1
    assert torch.allclose(stand_in(x), ref(x), atol=1e-4)  # same stand-in from either module tree
    assert torch.equal(BPDAModel(frozen, stand_in)(x), frozen(x))


def test_bpda_on_a_float_model_is_plain_apgd(model, data):
    t = Target(model, SHAPE)
    x, y = data[0][:12], data[1][:12]
    torch.manual_seed(0)
    a = BPDA(t, 4 / 255, steps=5).generate(x, y)
    torch.manual_seed(0)
    b = AutoAttackAPGD(t, 4 / 255, steps=5).generate(x, y)
    assert np.array_equal(a, b)


def test_standard_autoattack_runs_all_stages_and_counts_queries(model, data):
    import sys

    res = run_attacks(
        model,
        data[0][:16],
        data[1][:16],
        ["autoattack"],
        [8],
        params={"autoattack": {"steps": 5, "square_queries": 30}},
        **NO_PROBES,
    )
    r = res["attacks"]["autoattack"]["results"]["8"]
    assert r["robust_accuracy"] < res["clean_accuracy"] and r["queries"] > 0
    assert res["attacks"]["autoattack"]["family"] == "ensemble"
    assert "torchvision" not in sys.modules  # torchattacks' AutoAttack path does not need it


def test_standard_autoattack_keeps_no_graph_across_apgd_steps(model, data, monkeypatch):
    """torchattacks' APGD/APGD-T store their best adversarial with grad enabled, chaining every step's
    input into one autograd graph (12 GB on waveforms); our stages run them under no_grad, same result."""
    import torchattacks

    best_has_graph = []
    for cls in (torchattacks.APGD, torchattacks.APGDT):
        real = cls.attack_single_run

        def spy(self, x, y, *a, _real=real, **k):
            out = _real(self, x, y, *a, **k)
            best_has_graph.append(out[3].grad_fn is not None)  # x_best_adv
            return out

        monkeypatch.setattr(cls, "attack_single_run", spy)
    kw = dict(params={"autoattack": {"steps": 5, "square_queries": 30}}, **NO_PROBES)
    res = run_attacks(model, data[0][:16], data[1][:16], ["autoattack"], [8], **kw)
    assert best_has_graph and not any(best_has_graph)
    assert res["attacks"]["autoattack"]["results"]["8"]["robust_accuracy"] < res["clean_accuracy"]
    # the upstream behaviour the guard is for: called with grad enabled, the best adversarial has a graph
    best_has_graph.clear()
    t = Target(model, SHAPE, K)
    x, y = torch.from_numpy(data[0][:16]), torch.from_numpy(data[1][:16])
    torchattacks.APGD(t.model, eps=8 / 255, steps=5)(x, y)
    assert best_has_graph == [True]


def test_nested_subsets_share_their_prefix_and_stay_stratified():
    labels = np.repeat(np.arange(10), 100)
    big, small = nested_stratified_order(labels, 500, seed=3), nested_stratified_order(labels, 200, seed=3)
    assert np.array_equal(big[:200], small) and len(set(big)) == 500
    assert np.bincount(labels[small], minlength=10).tolist() == [20] * 10
    uneven = np.repeat([0, 1, 2], [50, 30, 20])
    assert np.bincount(uneven[nested_stratified_order(uneven, 10)]).tolist() == [5, 3, 2]
    assert not np.array_equal(nested_stratified_order(labels, 50, 0), nested_stratified_order(labels, 50, 1))


def test_dataset_source_is_written_relative_to_the_data_dir(tmp_path):
    src = f"{tmp_path}/cifar-10-batches-py (official python pickle)"
    assert dataset_source(src, tmp_path) == "$TINYROBUST_DATA/cifar-10-batches-py (official python pickle)"
    assert dataset_source(None, tmp_path) is None


def test_a_killed_attack_keeps_the_eps_it_finished(model, data, tmp_path, monkeypatch):
    """Each eps of an eps-bounded attack is saved as soon as it is done: a run killed inside the attack
    (here: at its second eps) redoes only the eps it had not finished, with the same result."""
    kw = dict(params={"pgd": {"steps": 3}}, resume_dir=tmp_path, cascade=True, seed=3, **NO_PROBES)
    full = run_attacks(model, *data, ["fgsm", "pgd"], [2, 8], **kw)
    for f in tmp_path.iterdir():
        f.unlink()

    real, calls = runner_mod._generate, []

    def dies_at_pgd_eps8(spec, attacker, target, x, y, eps, p):
        calls.append((spec.name, round(eps * 255)))
        if (spec.name, round(eps * 255)) == ("pgd", 8):
            raise KeyboardInterrupt  # the kill
        return real(spec, attacker, target, x, y, eps, p)

    monkeypatch.setattr(runner_mod, "_generate", dies_at_pgd_eps8)
    with pytest.raises(KeyboardInterrupt):
        run_attacks(model, *data, ["fgsm", "pgd"], [2, 8], **kw)
    monkeypatch.setattr(runner_mod, "_generate", lambda *a: calls.append((a[0].name, round(a[5] * 255))) or real(*a))
    calls.clear()
    again = run_attacks(model, *data, ["fgsm", "pgd"], [2, 8], **kw)
    assert calls == [("pgd", 8)]  # fgsm (whole attack) and pgd at 2/255 were kept

    def strip(r):
        return {
            a: {k: {m: v for m, v in res.items() if m != "wall_time_s"} for k, res in e["results"].items()}
            for a, e in r["attacks"].items()
        }

    assert strip(again) == strip(full)


def test_one_eps_calls_fill_the_parts_a_call_with_every_eps_reuses(model, data, tmp_path, monkeypatch):
    """``reproduce --jobs`` attacks each eps of a model in its own call: those per-eps parts are keyed
    without the call's eps list, so the call with every eps attacks nothing again and gives the same
    results as one call from scratch; a part saved under the old key (eps list included) still counts."""
    import json

    kw = dict(params={"pgd": {"steps": 3}}, cascade=True, seed=3, **NO_PROBES)
    whole = run_attacks(model, *data, ["fgsm", "pgd"], [2, 8], **kw)
    real, calls = runner_mod._generate, []
    monkeypatch.setattr(runner_mod, "_generate", lambda *a: calls.append((a[0].name, round(a[5] * 255))) or real(*a))
    for e in (8, 2):  # the two units, in either order
        run_attacks(model, *data, ["fgsm", "pgd"], [e], resume_dir=tmp_path, **kw)
    assert sorted(calls) == [("fgsm", 2), ("fgsm", 8), ("pgd", 2), ("pgd", 8)]
    calls.clear()
    again = run_attacks(model, *data, ["fgsm", "pgd"], [2, 8], resume_dir=tmp_path, **kw)
    assert calls == []

    def strip(r):
        return {
            a: {k: {m: v for m, v in res.items() if m != "wall_time_s"} for k, res in e["results"].items()}
            for a, e in r["attacks"].items()
        }

    assert strip(again) == strip(whole) and again["worst_case"] == whole["worst_case"]

    # a part written before the key change (key with the eps list [2, 8]) is reused by the same call
    (tmp_path / "pgd.json").unlink()  # the whole attack's record, so the per-eps parts are read
    part = tmp_path / "pgd_at_eps8.json"
    saved = json.loads(part.read_text())
    key = json.loads(saved["key"])
    saved["key"] = json.dumps({**key, "eps": [2.0, 8.0]}, sort_keys=True, default=str)
    part.write_text(json.dumps(saved))
    run_attacks(model, *data, ["fgsm", "pgd"], [2, 8], resume_dir=tmp_path, **kw)
    assert calls == []
    (tmp_path / "pgd.json").unlink()
    saved["key"] = json.dumps({**key, "eps": [8.0]}, sort_keys=True, default=str)  # another call's list: stale
    part.write_text(json.dumps(saved))
    run_attacks(model, *data, ["fgsm", "pgd"], [2, 8], resume_dir=tmp_path, **kw)
    assert calls == [("pgd", 8)]


def test_square_inside_autoattack_counts_as_a_black_box_break(model, data):
    """A model whose gradients are useless (input rounding) survives the gradient attacks and falls to
    AutoAttack's Square stage: the per-image check must see that (stage letters in robustness.json)
    even though no standalone black-box attack ran, and a normal model still passes."""
    params = {
        "pgd": {"steps": 5},
        "autoattack": {"steps": 5, "n_target_classes": 3, "square_queries": 300},
        "masking": {"checks": "black_box_only_breaks"},
    }
    kw = dict(params=params, cascade=True, progress=False)
    res = run_attacks(RoundedInput(model), *data, ["pgd", "autoattack"], [8], **kw)
    entry = res["attacks"]["autoattack"]["results"]["8"]
    assert set(entry["stages"]) <= set("ctfs-") and "s" in entry["stages"]
    assert [c["passed"] for c in res["masking_checks"]["checks"]] == [False]

    res = run_attacks(model, *data, ["pgd", "autoattack"], [8], **kw)
    assert [c["passed"] for c in res["masking_checks"]["checks"]] == [True], res["masking_checks"]


def test_autoattack_alone_still_checks_its_square_stage(model, data):
    """`tinyrobust attack --attacks autoattack` alone: the check must run on AutoAttack's own stages (it
    was skipped as "needs a white-box and a black-box attack" and a masked model passed)."""
    params = {
        "autoattack": {"steps": 5, "n_target_classes": 3, "square_queries": 300},
        "masking": {"checks": "black_box_only_breaks"},
    }
    res = run_attacks(RoundedInput(model), *data, ["autoattack"], [8], params=params, progress=False)
    assert "s" in res["attacks"]["autoattack"]["results"]["8"]["stages"]
    assert [c["passed"] for c in res["masking_checks"]["checks"]] == [False], res["masking_checks"]


def test_a_prior_result_at_more_eps_gives_the_units_it_shares_and_nothing_else(model, surrogate, data, monkeypatch):
    """A grid that shares a run with another grid attacks it at a subset of that grid's eps: the other
    grid's result (the prior) gives every (attack, eps) unit whose inputs are provably the same, and the
    result equals a call from scratch (each unit is seeded on its own); units with other parameters, other
    survivors under cascade, another surrogate or other weights are attacked again."""
    kw = dict(cascade=True, seed=3, surrogates={"s": surrogate}, progress=False)
    params = {"pgd": {"steps": 3}, "transfer": {"steps": 3}, "masking": {"steps_eps_candidates": "2,8"}}
    names = ["fgsm", "pgd", "transfer"]
    four = run_attacks(model, *data, names, [1, 2, 4, 8], params=params, **kw)
    fresh = run_attacks(model, *data, names, [2, 8], params=params, **kw)
    real, calls = runner_mod._generate, []
    monkeypatch.setattr(runner_mod, "_generate", lambda *a: calls.append((a[0].name, a[5])) or real(*a))
    prior = runner_mod.PriorResult(four, "other/robustness.json")
    got = run_attacks(model, *data, names, [2, 8], params=params, prior=prior, **kw)
    assert calls == []  # every attack unit and the PGD masking probes came from the prior
    assert got["reused"]["units"] == [f"{a}@{e}" for a in ("fgsm", "pgd", "transfer@s") for e in ("2", "8")] + [
        "masking_probes"
    ]

    def strip(r):
        return {
            a: {k: {m: v for m, v in res.items() if m != "wall_time_s"} for k, res in e["results"].items()}
            for a, e in r["attacks"].items()
        }

    assert strip(got) == strip(fresh)
    assert got["worst_case"] == fresh["worst_case"]
    assert got["masking_checks"]["checks"][:-1] == fresh["masking_checks"]["checks"]  # and one more check:
    assert got["masking_checks"]["passed"] is True  # the source result's verdict
    assert got["masking_checks"]["checks"][-1] == {
        "check": "source_result_checks",
        "passed": True,
        "detail": "other/robustness.json (eps 1, 2, 4, 8) passed its checks",
    }
    # a source flagged at its own eps (e.g. 1/255 only) flags the result built from it
    flagged = json.loads(json.dumps(four))
    flagged["masking_checks"]["passed"] = False
    flagged["masking_checks"]["checks"][3] = {"check": "black_box_only_breaks", "passed": False, "detail": "1/255: 9"}
    got = run_attacks(model, *data, names, [2, 8], params=params, prior=runner_mod.PriorResult(flagged, "other"), **kw)
    assert got["masking_checks"]["passed"] is False
    assert got["masking_checks"]["verdict"] == "gradient masking suspected: failed source_result_checks"
    assert "black_box_only_breaks: 1/255: 9" in got["masking_checks"]["checks"][-1]["detail"]
    assert {k: v for k, v in got["masking_probes"].items() if k != "wall_time_s"} == {
        k: v for k, v in fresh["masking_probes"].items() if k != "wall_time_s"
    }

    # other PGD steps: pgd is attacked again, and so is every later unit whose survivors changed with it
    more = {**params, "pgd": {"steps": 4}}
    got = run_attacks(model, *data, names, [2, 8], params=more, prior=runner_mod.PriorResult(four, "x"), **kw)
    assert ("pgd", 2 / 255) in calls and ("pgd", 8 / 255) in calls and "fgsm@2" in got["reused"]["units"]
    assert not any(u.startswith("pgd@") for u in got["reused"]["units"])
    scratch = run_attacks(model, *data, names, [2, 8], params=more, **kw)
    assert got["worst_case"] == scratch["worst_case"]

    # another surrogate: its transfer is attacked again
    calls.clear()
    other = run_attacks(
        model,
        *data,
        names,
        [2, 8],
        params=params,
        prior=runner_mod.PriorResult(four, "x"),
        **{**kw, "surrogates": {"s": train(2)}},
    )
    assert sorted(c[0] for c in calls) == ["transfer", "transfer"]
    assert not any(u.startswith("transfer") for u in other["reused"]["units"])

    # other weights: nothing is taken, and the result says why
    calls.clear()
    moved = train(3)
    got = run_attacks(moved, *data, names, [2, 8], params=params, prior=runner_mod.PriorResult(four, "x"), **kw)
    assert "reused" not in got and any("not reused (other weights)" in n for n in got["notes"])
    assert len(calls) >= 4


def test_a_prior_file_refused_before_the_attack_is_explained_in_the_result_notes(model, data, tmp_path):
    """A prior file that is unreadable, or attacked another dataset, weights file or images, is refused
    when it is loaded; the result says so in its notes (not only on stderr) and attacks every unit."""
    from tinyrobust.attacks.evaluate import SCHEMA, _load_prior

    meta = {"model_sha256": "abc", "dataset": "cifar10", "domain": "feature", "target": "t"}
    meta["subset"] = {"indices": [0, 1, 2]}
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"schema": SCHEMA, "meta": meta}))
    kw = dict(model_sha="abc", dataset="cifar10", domain="feature", indices=[0, 1, 2], target="t")
    assert not _load_prior(good, **kw).refused
    (tmp_path / "broken.json").write_text("{not json")
    for name, why, args in [
        ("missing.json", "unreadable", kw),
        ("broken.json", "not JSON", kw),
        ("good.json", "other dataset", {**kw, "dataset": "svhn"}),
        ("good.json", "other weights file", {**kw, "model_sha": "def"}),
        ("good.json", "other images", {**kw, "indices": [0, 1, 3]}),
    ]:
        prior = _load_prior(tmp_path / name, **args)
        assert prior.refused.startswith(why), (name, prior.refused)
        got = run_attacks(model, *data, ["fgsm"], [8], seed=0, progress=False, prior=prior)
        assert "reused" not in got
        assert any(n.startswith(f"{prior.label}: not reused ({why}") for n in got["notes"]), got["notes"]
        assert got["attacks"]["fgsm"]["results"]["8"]["robust_accuracy"] is not None
