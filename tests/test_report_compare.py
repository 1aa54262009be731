"""report.compare: the headline's common attack set, exactness under the cascade, and the refusals.

Works on synthetic robustness.json dicts (schema 2, OWNERS.md item 3) built by ``conftest.make_res``."""

from __future__ import annotations

import pytest

from tinyrobust.errors import TinyRobustError
from tinyrobust.report.compare import common_set, compare, cumulative

from conftest import REPORT_CLEAN, REPORT_EPS, make_res

EPS = REPORT_EPS


def model(key: str, role: str, res: dict) -> dict:
    return {"key": key, "label": key, "role": role, "attacks": res}


CLEAN = REPORT_CLEAN  # 9 clean-correct of 10


def three_models(**over):
    """Proposed faces both transfers; each float surrogate faces only the other's transfer (last)."""
    p = make_res(
        CLEAN,
        {"pgd": {0, 1}, "square": {2}, "transfer@flt": {3}, "transfer@ref": {4}},
        ["pgd", "square", "transfer@flt", "transfer@ref"],
        **over,
    )
    r = make_res(
        CLEAN,
        {"pgd": {0, 1, 2, 3}, "square": {4}, "transfer@flt": {5}},
        ["pgd", "square", "transfer@flt"],
        skipped={"transfer@ref": "surrogate is the target itself"},
    )
    f = make_res(CLEAN, {"pgd": {0}, "square": set(), "transfer@ref": {1}}, ["pgd", "square", "transfer@ref"])
    return [model("prop", "proposed", p), model("ref", "reference", r), model("flt", "float", f)]


def test_common_set_leaves_out_transfers_a_model_cannot_face():
    models = three_models()
    common, left = common_set(models)
    assert common == ["pgd", "square"]
    assert left == {"transfer@flt": ["flt"], "transfer@ref": ["ref"]}
    cmp = compare(models, EPS)
    # worst case over pgd+square only: proposed loses 0,1,2 -> 6/10; reference loses 0..4 -> 4/10
    assert cmp["models"]["prop"]["worst_case"]["2"]["robust_accuracy"] == pytest.approx(0.6)
    assert cmp["models"]["ref"]["worst_case"]["2"]["robust_accuracy"] == pytest.approx(0.4)
    assert cmp["models"]["flt"]["worst_case"]["8"]["robust_accuracy"] == pytest.approx(0.8)
    lo, hi = cmp["models"]["prop"]["worst_case"]["2"]["ci95"]
    assert lo < 0.6 < hi and cmp["models"]["prop"]["worst_case"]["2"]["n"] == 10
    # skipped reasons: recorded one, and the implicit one of a surrogate for its own transfer
    assert cmp["skipped"]["ref"]["transfer@ref"] == "surrogate is the target itself"
    assert "surrogate" in cmp["skipped"]["flt"]["transfer@flt"]
    d = next(d for d in cmp["deltas"] if d["other"] == "ref" and d["eps"] == "2")
    assert d["delta"] == pytest.approx(0.2) and d["n"] == 10 and d["ci95"][0] < 0.2 < d["ci95"][1]
    assert [d["other"] for d in cmp["deltas"]][:2] == ["ref", "ref"]  # references first


def test_black_box_summary_is_a_per_image_worst_case_with_bounds():
    cmp = compare(three_models(), EPS)
    b = cmp["models"]["prop"]["black_worst_case"]["2"]
    assert cmp["black_common"] == ["square"]
    # square tried images 2..8 (0, 1 broken by pgd first) and broke 2: exact value unknown for 0 and 1
    assert b["robust_accuracy"] == pytest.approx(0.6) and b["undetermined"] == 2
    assert b["upper"] == pytest.approx(0.8)


def test_cumulative_accuracy_after_each_attack():
    res = three_models()[0]["attacks"]
    c = cumulative(res, "square", 2.0)
    assert c["robust_accuracy"] == pytest.approx(0.6) and c["broke"] == 1 and c["tried"] == 7
    assert cumulative(res, "transfer@ref", 2.0)["robust_accuracy"] == pytest.approx(0.4)
    assert cumulative(res, "bpda", 2.0) is None


def test_nested_subsets_are_compared_on_the_shared_first_images():
    p = make_res(CLEAN, {"pgd": {0, 9}, "square": set()}, ["pgd", "square"], indices=range(10))
    r = make_res("11111", {"pgd": {1, 2}, "square": set()}, ["pgd", "square"], indices=range(5))
    cmp = compare([model("p", "proposed", p), model("r", "reference", r)], EPS)
    assert cmp["n_shared"] == 5
    d = cmp["deltas"][0]
    assert d["n"] == 5 and d["delta"] == pytest.approx(4 / 5 - 3 / 5)
    assert cmp["models"]["p"]["worst_case"]["2"]["n"] == 10  # own accuracy on its own n

    # a third model attacked on more images pairs with the proposed one on all 10, not on the smallest n
    q = make_res(CLEAN, {"pgd": {0}, "square": set()}, ["pgd", "square"], indices=range(10))
    cmp = compare([model("p", "proposed", p), model("r", "reference", r), model("q", "ablation", q)], EPS)
    assert {d["other"]: d["n"] for d in cmp["deltas"]} == {"r": 5, "q": 10}


def test_refuses_different_image_subsets():
    p = make_res(CLEAN, {"pgd": {0}}, ["pgd"], indices=range(10))
    r = make_res(CLEAN, {"pgd": {0}}, ["pgd"], indices=[0, 1, 2, 7, 4, 5, 6, 3, 8, 9])
    with pytest.raises(TinyRobustError, match=r"models p and r were attacked on different test images \(image 3"):
        compare([model("p", "proposed", p), model("r", "reference", r)], EPS)


def test_refuses_different_attack_parameters():
    p = make_res(CLEAN, {"pgd": {0}}, ["pgd"], params={"pgd": {"steps": 10}})
    r = make_res(CLEAN, {"pgd": {0}}, ["pgd"], params={"pgd": {"steps": 20}})
    with pytest.raises(TinyRobustError, match="different attack parameters: pgd ran on p and r with steps=10 vs 20"):
        compare([model("p", "proposed", p), model("r", "reference", r)], EPS)


def test_refuses_an_attack_missing_without_a_reason():
    p = make_res(CLEAN, {"pgd": {0}, "square": {1}}, ["pgd", "square"])
    r = make_res(CLEAN, {"pgd": {0}}, ["pgd"])
    with pytest.raises(TinyRobustError, match="model r was not attacked with square .model p was."):
        compare([model("p", "proposed", p), model("r", "reference", r)], EPS)
    r["skipped"] = {"square": "not run at this budget"}  # recorded: left out of the common set instead
    cmp = compare([model("p", "proposed", p), model("r", "reference", r)], EPS)
    assert cmp["common"] == ["pgd"] and cmp["left_out"] == {"square": ["r"]}


def test_refuses_other_eps():
    p = make_res(CLEAN, {"pgd": {0}}, ["pgd"])
    r = make_res(CLEAN, {"pgd": {0}}, ["pgd"], eps=[2.0])
    with pytest.raises(TinyRobustError, match="model r was not attacked at eps 8"):
        compare([model("p", "proposed", p), model("r", "reference", r)], EPS)


def test_refuses_when_the_common_set_is_not_a_cascade_prefix():
    """A model-specific attack that ran first broke images the common attacks then never tried."""
    p = make_res(CLEAN, {"transfer@x": {0}, "pgd": {1}, "square": set()}, ["transfer@x", "pgd", "square"])
    r = make_res(CLEAN, {"pgd": {1}, "square": set()}, ["pgd", "square"], skipped={"transfer@x": "no surrogate"})
    with pytest.raises(TinyRobustError, match=r"not a prefix of model p's cascade .*transfer@x ran earlier"):
        compare([model("p", "proposed", p), model("r", "reference", r)], EPS)
    # the same order without a cascade (every attack tried every image) is exact, so it is accepted
    p = make_res(
        CLEAN, {"transfer@x": {0}, "pgd": {1}, "square": set()}, ["transfer@x", "pgd", "square"], cascade=False
    )
    cmp = compare([model("p", "proposed", p), model("r", "reference", r)], EPS)
    assert cmp["models"]["p"]["worst_case"]["2"]["robust_accuracy"] == pytest.approx(0.8)


def test_refuses_old_results():
    p = make_res(CLEAN, {"pgd": {0}}, ["pgd"])
    p.pop("schema")
    with pytest.raises(TinyRobustError, match="schema 1"):
        compare([model("p", "proposed", p)], EPS)


def test_masked_model_is_flagged_not_hidden():
    models = three_models(masked=True)
    cmp = compare(models, EPS)
    assert cmp["models"]["prop"]["masked"] and not cmp["models"]["ref"]["masked"]


def test_seed_summary_gives_mean_std_and_per_seed_paired_deltas():
    """Entries trained with several seeds: mean +- std (n - 1) over seeds, and the proposed entry minus each
    other multi-seed entry paired seed by seed on shared images."""

    def m(key, role, group, seed, broken):
        res = make_res(REPORT_CLEAN, {"pgd": broken}, ["pgd", "square"])
        return {"key": key, "label": key, "role": role, "group": group, "seed": seed, "attacks": res}

    models = [
        m("prop", "proposed", "prop", 0, {0, 1}),  # 7 of 10 robust
        m("prop_s1", "variant", "prop", 1, {0}),  # 8
        m("ref", "reference", "ref", 0, {0, 1, 2, 3}),  # 5
        m("ref_s1", "variant", "ref", 1, {0, 1, 2}),  # 6
        m("flt", "float", "flt", 0, {0}),  # one seed: no summary
    ]
    sd = compare(models, REPORT_EPS)["seeds"]
    assert set(sd["groups"]) == {"prop", "ref"}
    p = sd["groups"]["prop"]["worst_case"]["2"]
    assert p["mean"] == pytest.approx(0.75) and p["std"] == pytest.approx(0.0707107, abs=1e-6) and p["n_seeds"] == 2
    assert sd["groups"]["ref"]["worst_case"]["8"]["mean"] == pytest.approx(0.55)
    assert sd["groups"]["prop"]["clean"]["mean"] == pytest.approx(0.9) and sd["groups"]["prop"]["clean"]["std"] == 0
    (d2, d8) = [d for d in sd["deltas"] if d["other"] == "ref"]
    assert [x["seed"] for x in d2["per_seed"]] == [0, 1] and [x["delta"] for x in d2["per_seed"]] == pytest.approx(
        [0.2, 0.2]
    )
    assert d2["mean"] == pytest.approx(0.2) and d2["std"] == pytest.approx(0.0) and len(d2["per_seed"][0]["ci95"]) == 2
    assert not [d for d in sd["deltas"] if d["other"] == "flt"]
