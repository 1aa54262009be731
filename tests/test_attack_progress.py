"""benchmarks/attack_progress.py: reads resume parts into the per-attack table and the stage's cost."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("attack_progress", REPO / "benchmarks" / "attack_progress.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _part(path: Path, entry: dict) -> None:
    path.write_text(json.dumps({"key": "{}", "entry": entry, "masks": {}}))


def test_cascade_rows_transfers_from_the_parts_and_summed_seconds(tmp_path):
    ap = _module()
    parts = tmp_path / "m" / "robustness_parts"
    parts.mkdir(parents=True)
    _part(parts / "fgsm_at_eps1.json", {"robust": "1110", "n_attacked": 4, "n_broken": 1, "wall_time_s": 2.0})
    _part(
        parts / "transfer_at_qnn_kws_float_at_eps1.json",
        {"robust": "0110", "n_attacked": 3, "n_broken": 1, "wall_time_s": 5.0},
    )
    _part(parts / "_masking_probes.json", {"large_eps": {}, "wall_time_s": 10.0})
    m = ap.model_progress(tmp_path / "m", ["fgsm", "pgd"])  # transfer@... is not in the order: found in the parts
    assert [r["attack"] for r in m["rows"]] == ["fgsm", "transfer@qnn_kws_float"]
    assert [r["robust_after_this_attack"] for r in m["rows"]] == [0.75, 0.5]  # survivors of the cascade so far
    assert m["masking_probe_seconds"] == 10.0 and m["attack_seconds"] == 17.0 and not m["finished"]


def test_eps_labelled_in_the_grids_unit(tmp_path):
    ap = _module()
    assert ap.eps_labeller(tmp_path, None)(2.0) == "2/255"
    assert ap.eps_labeller(tmp_path, "speech_commands_wav")(8 / 257) == "8 samples"


def test_list_schedule_gives_each_model_to_the_first_free_worker():
    ap = _module()
    sch = ap.list_schedule({"a": 10.0, "b": 4.0, "c": 3.0, "d": 5.0}, 2)
    assert sch["per_worker"] == [["a"], ["b", "c", "d"]] and sch["makespan_s"] == 12.0
    assert ap.list_schedule({"a": 10.0, "b": 4.0}, 1)["makespan_s"] == 14.0
    assert ap.list_schedule({}, 2)["makespan_s"] == 0.0


def test_work_units_are_one_eps_of_one_model_then_each_models_probes():
    """The stage is scheduled as --jobs workers share it: per model and eps the seconds of every attack at
    that eps, in grid order, then the masking probes; a costly model no longer sits on one worker."""
    ap = _module()

    def rows(*triples):
        return [{"attack": a, "eps": e, "seconds": s} for a, e, s in triples]

    models = {
        "big": {
            "rows": rows(("pgd", 1.0, 6.0), ("autoattack", 1.0, 30.0), ("pgd", 2.0, 4.0)),
            "masking_probe_seconds": 2.0,
        },
        "small": {"rows": rows(("pgd", 1.0, 3.0), ("pgd", 2.0, None)), "masking_probe_seconds": None},
    }
    units = ap.work_units(models)
    assert units == {
        "big eps 1": 36.0,
        "big eps 2": 4.0,
        "small eps 1": 3.0,
        "small eps 2": 0.0,
        "big probes": 2.0,
        "small probes": 0.0,
    }
    sch = ap.list_schedule(units, 2)
    assert sch["makespan_s"] == 36.0 and sch["per_worker"][1] == [
        "big eps 2",
        "small eps 1",
        "small eps 2",
        "big probes",
        "small probes",
    ]
